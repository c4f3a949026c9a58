/* Gabriel's-horn CUDA kernels, written once for the precision `real`
 * (real.cuh), on horn_math.h; the row means sum in the C kernels' lane order,
 * so the results are the C kernels' bits. */
#include "real.cuh"
#include "../cpu/horn.h"
#include "../cpu/horn_math.h"

/* y = x - mean(x) + r over one row a group; src_row NULL: row m of x, else row src_row[m]. r_on: add r(p). */
static __global__ void SFX(horn_row_kernel)(void* y, const void* x, const int64_t* src_row, tpt_dtype dt, int64_t M,
                                            int64_t T, int64_t D, int64_t offset, int r_on) {
    TPT_ROW_GROUP(m, active, lane, M);
    const int64_t in = (src_row ? src_row[m] : m) * D;
    real sum;
    TPT_LANE_SUM(sum, D, lane, j, SFX(tpt_load)(x, dt, in + j));
    const real mean = SFX(tpt_horn_mean)(sum, D);
    if (!active) return;
    if (r_on) {
        const real r = SFX(tpt_horn_r)(m % T + offset);
        for (int64_t j = lane; j < D; j += TPT_LANES)
            SFX(tpt_store)(y, dt, m * D + j, SFX(tpt_horn_value)(SFX(tpt_load)(x, dt, in + j), mean, r));
    } else {
        for (int64_t j = lane; j < D; j += TPT_LANES)
            SFX(tpt_store)(y, dt, m * D + j, SFX(tpt_horn_centered)(SFX(tpt_load)(x, dt, in + j), mean));
    }
}

/* token_means[m] = mean(dy[m]) for one row a group */
static __global__ void SFX(horn_mean_kernel)(real* token_means, const void* dy, tpt_dtype dt, int64_t M, int64_t D) {
    TPT_ROW_GROUP(m, active, lane, M);
    real sum;
    TPT_LANE_SUM(sum, D, lane, j, SFX(tpt_load)(dy, dt, m * D + j));
    if (active && lane == 0) token_means[m] = SFX(tpt_horn_mean)(sum, D);
}

/* dtable[v, j] = sum of dy - mean(dy) over the tokens of id v, one thread a (v, j), in the C kernel's order:
 * the id's run of the grouped order cut at every multiple of TPT_ROW_BLOCK (horn_embedding_chunks in horn.c),
 * each piece summed from its first term, the pieces added to 0 in order (horn_embedding_backward and _combine
 * in horn.inc). */
static __global__ void SFX(horn_table_grad_kernel)(void* dtable, const real* token_means, const void* dy,
                                                   const int64_t* order, const int64_t* id_offsets, tpt_dtype dt,
                                                   int64_t V, int64_t D) {
    TPT_FOR_EACH(idx, V * D) {
        const int64_t v = idx / D, j = idx % D;
        real acc = 0;
        for (int64_t chunk = id_offsets[v], chunk_end; chunk < id_offsets[v + 1]; chunk = chunk_end) {
            chunk_end = min((chunk / TPT_ROW_BLOCK + 1) * TPT_ROW_BLOCK, id_offsets[v + 1]);
            int64_t t = order[chunk];
            real part = SFX(tpt_horn_centered)(SFX(tpt_load)(dy, dt, t * D + j), token_means[t]);
            for (int64_t n = chunk + 1; n < chunk_end; n++) {
                t = order[n];
                part += SFX(tpt_horn_centered)(SFX(tpt_load)(dy, dt, t * D + j), token_means[t]);
            }
            acc += part;
        }
        SFX(tpt_store)(dtable, dt, idx, acc);
    }
}

#define HORN_ROWS(M) tpt_cuda_blocks((M) * TPT_LANES, TPT_CUDA_THREADS), TPT_CUDA_THREADS, 0, stream

extern "C" int TPT_LAUNCHER_NAME(horn_inject_forward)(void* y, const void* x, tpt_dtype dt, int64_t M, int64_t T,
                                                      int64_t D, int64_t offset, cudaStream_t stream) {
    if (M <= 0 || D <= 0) return TPT_OK;
    SFX(horn_row_kernel)<<<HORN_ROWS(M)>>>(y, x, NULL, dt, M, T, D, offset, 1);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(horn_inject_backward)(void* dx, const void* dy, tpt_dtype dt, int64_t M, int64_t D,
                                                       cudaStream_t stream) {
    if (M <= 0 || D <= 0) return TPT_OK;
    SFX(horn_row_kernel)<<<HORN_ROWS(M)>>>(dx, dy, NULL, dt, M, 1, D, 0, 0);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(horn_embedding_forward)(void* y, const int64_t* ids, const void* table,
                                                         tpt_dtype dt, int64_t M, int64_t T, int64_t D,
                                                         int64_t offset, cudaStream_t stream) {
    if (M <= 0 || D <= 0) return TPT_OK;
    SFX(horn_row_kernel)<<<HORN_ROWS(M)>>>(y, table, ids, dt, M, T, D, offset, 1);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(horn_embedding_backward)(void* dtable, real* token_means, const void* dy,
                                                          const int64_t* order, const int64_t* id_offsets,
                                                          tpt_dtype dt, int64_t M, int64_t V, int64_t D,
                                                          cudaStream_t stream) {
    if (V <= 0 || D <= 0) return TPT_OK;
    if (M > 0) SFX(horn_mean_kernel)<<<HORN_ROWS(M)>>>(token_means, dy, dt, M, D);
    SFX(horn_table_grad_kernel)<<<tpt_cuda_grid(V * D), TPT_CUDA_THREADS, 0, stream>>>(dtable, token_means, dy, order,
                                                                                       id_offsets, dt, V, D);
    return tpt_cuda_status();
}
#undef HORN_ROWS
