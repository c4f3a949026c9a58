/* Per-phase RMSNorm CUDA kernels, written once for the precision `real`
 * (real.cuh); the arithmetic is norm_math.h's, the row sums are in the C
 * kernels' lane order, so the results are the C kernels' bits. */
#include "real.cuh"
#include "../cpu/norm_math.h"

/* One row per group of TPT_LANES threads: r per phase, then y = x r w. */
static __global__ void SFX(norm_forward_kernel)(void* y, real* rstd, const void* x, const real* weight, tpt_dtype dt,
                                                int64_t M, int64_t D, int64_t N, real eps) {
    TPT_ROW_GROUP(m, active, lane, M);
    const int64_t P = D / N;
    for (int64_t i = 0; i < N; i++) {
        const int64_t off = m * D + i * P;
        real sum_sq;
        TPT_LANE_SUM(sum_sq, P, lane, j, SFX(tpt_load)(x, dt, off + j) * SFX(tpt_load)(x, dt, off + j));
        const real r = SFX(tpt_rms_scale)(sum_sq, P, eps);
        if (!active) continue;
        if (lane == 0) rstd[m * N + i] = r;
        for (int64_t j = lane; j < P; j += TPT_LANES)
            SFX(tpt_store)(y, dt, off + j, SFX(tpt_norm_value)(SFX(tpt_load)(x, dt, off + j), r, weight[i * P + j]));
    }
}

/* dx of one row per group: g = dy w, c = r^2 mean(g x) per phase, dx = r (g - x c). */
static __global__ void SFX(norm_backward_kernel)(void* dx, const void* dy, const void* x, const real* weight,
                                                 const real* rstd, tpt_dtype dt, int64_t M, int64_t D, int64_t N) {
    TPT_ROW_GROUP(m, active, lane, M);
    const int64_t P = D / N;
    for (int64_t i = 0; i < N; i++) {
        const int64_t off = m * D + i * P;
        const real* w = weight + i * P;
        real dot;
        TPT_LANE_SUM(dot, P, lane, j, SFX(tpt_load)(dy, dt, off + j) * w[j] * SFX(tpt_load)(x, dt, off + j));
        const real r = rstd[m * N + i], c = SFX(tpt_norm_grad_coef)(r, dot, P);
        if (!active) continue;
        for (int64_t j = lane; j < P; j += TPT_LANES) {
            const real g = SFX(tpt_load)(dy, dt, off + j) * w[j];
            SFX(tpt_store)(dx, dt, off + j, SFX(tpt_norm_grad)(r, g, SFX(tpt_load)(x, dt, off + j), c));
        }
    }
}

/* dweight_partials[b, j] = sum over block b's rows, in order, of dy x r: one thread a (block, column). */
static __global__ void SFX(norm_weight_partials_kernel)(real* dweight_partials, const void* dy, const void* x,
                                                        const real* rstd, tpt_dtype dt, int64_t M, int64_t D,
                                                        int64_t N) {
    const int64_t P = D / N, n_blocks = tpt_num_row_blocks(M);
    TPT_FOR_EACH(idx, n_blocks * D) {
        const int64_t b = idx / D, j = idx % D, end = (b + 1) * TPT_ROW_BLOCK < M ? (b + 1) * TPT_ROW_BLOCK : M;
        real acc = 0;
        for (int64_t m = b * TPT_ROW_BLOCK; m < end; m++)
            acc += SFX(tpt_norm_weight_grad)(SFX(tpt_load)(dy, dt, m * D + j), SFX(tpt_load)(x, dt, m * D + j),
                                             rstd[m * N + j / P]);
        dweight_partials[idx] = acc;
    }
}

extern "C" int TPT_LAUNCHER_NAME(phase_rmsnorm_forward)(void* y, real* rstd, const void* x, const real* weight,
                                                        tpt_dtype dt, int64_t M, int64_t D, int64_t N, double eps,
                                                        cudaStream_t stream) {
    if (M <= 0 || D <= 0) return TPT_OK;
    SFX(norm_forward_kernel)<<<tpt_cuda_blocks(M * TPT_LANES, TPT_CUDA_THREADS), TPT_CUDA_THREADS, 0, stream>>>(
        y, rstd, x, weight, dt, M, D, N, (real)eps);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(phase_rmsnorm_backward)(void* dx, real* dweight_partials, const void* dy,
                                                         const void* x, const real* weight, const real* rstd,
                                                         tpt_dtype dt, int64_t M, int64_t D, int64_t N,
                                                         cudaStream_t stream) {
    if (M <= 0 || D <= 0) return TPT_OK;
    SFX(norm_backward_kernel)<<<tpt_cuda_blocks(M * TPT_LANES, TPT_CUDA_THREADS), TPT_CUDA_THREADS, 0, stream>>>(
        dx, dy, x, weight, rstd, dt, M, D, N);
    SFX(norm_weight_partials_kernel)<<<tpt_cuda_grid(tpt_num_row_blocks(M) * D), TPT_CUDA_THREADS, 0, stream>>>(
        dweight_partials, dy, x, rstd, dt, M, D, N);
    return tpt_cuda_status();
}
