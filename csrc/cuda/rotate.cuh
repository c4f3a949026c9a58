/* Givens phase rotation CUDA kernels, written once for the precision `real`
 * (real.cuh); the arithmetic is rotate_math.h's, so every element is the C
 * kernels' bits, and dtheta sums rows and phases in the C kernels' order. */
#include "rotate_row.cuh"

/* One thread a pair (m, k), loaded and stored as one (tpt_load_pair): y = R(phi_k) x. */
static __global__ void SFX(rotate_forward_kernel)(void* y, const real* table, const void* x, tpt_dtype dt, int64_t M,
                                                  int64_t D) {
    const int64_t pairs = D / 2;
    TPT_FOR_EACH(idx, M * pairs) {
        const int64_t k = idx % pairs;
        real a, b, ya, yb;
        SFX(tpt_load_pair)(x, dt, idx, &a, &b);
        SFX(tpt_rotate_pair)(a, b, table[k], table[pairs + k], &ya, &yb);
        SFX(tpt_store_pair)(y, dt, idx, ya, yb);
    }
}

/* One thread a pair: dx = R(-phi_k) dy. */
static __global__ void SFX(rotate_backward_kernel)(void* dx, const real* table, const void* dy, tpt_dtype dt,
                                                   int64_t M, int64_t D) {
    const int64_t pairs = D / 2;
    TPT_FOR_EACH(idx, M * pairs) {
        const int64_t k = idx % pairs;
        real ge, go, da, db;
        SFX(tpt_load_pair)(dy, dt, idx, &ge, &go);
        SFX(tpt_rotate_pair_backward)(ge, go, table[k], table[pairs + k], &da, &db);
        SFX(tpt_store_pair)(dx, dt, idx, da, db);
    }
}

/* dtheta_partials[b, j] = sum over block b's rows m, then phases i, in order, of the angle gradient of pair
 * (i, j): one thread a (block, pair). */
static __global__ void SFX(rotate_theta_partials_kernel)(real* dtheta_partials, const void* dy, const void* y,
                                                         tpt_dtype dt, int64_t M, int64_t D, int64_t N) {
    const int64_t P = D / N, H = P / 2, n_blocks = tpt_num_row_blocks(M);
    TPT_FOR_EACH(idx, n_blocks * H) {
        const int64_t b = idx / H, j = idx % H, end = (b + 1) * TPT_ROW_BLOCK < M ? (b + 1) * TPT_ROW_BLOCK : M;
        real acc = 0;
        for (int64_t m = b * TPT_ROW_BLOCK; m < end; m++)
            for (int64_t i = 0; i < N; i++) {
                const int64_t e = m * D + i * P + 2 * j;
                acc += SFX(tpt_rotate_angle_grad)(SFX(tpt_load)(dy, dt, e), SFX(tpt_load)(dy, dt, e + 1),
                                                  SFX(tpt_load)(y, dt, e), SFX(tpt_load)(y, dt, e + 1));
            }
        dtheta_partials[idx] = acc;
    }
}

extern "C" int TPT_LAUNCHER_NAME(phase_rotate_forward)(void* y, real* table, const void* x, const real* theta,
                                                       tpt_dtype dt, int64_t M, int64_t D, int64_t N,
                                                       cudaStream_t stream) {
    if (M <= 0 || D <= 0) return TPT_OK;
    SFX(rotation_table)(table, theta, D, N, stream);
    SFX(rotate_forward_kernel)<<<tpt_cuda_grid(M * D / 2), TPT_CUDA_THREADS, 0, stream>>>(y, table, x, dt, M, D);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(phase_rotate_backward)(void* dx, real* dtheta_partials, real* table, const void* dy,
                                                        const void* y, const real* theta, tpt_dtype dt, int64_t M,
                                                        int64_t D, int64_t N, cudaStream_t stream) {
    if (M <= 0 || D <= 0) return TPT_OK;
    SFX(rotation_table)(table, theta, D, N, stream);
    SFX(rotate_backward_kernel)<<<tpt_cuda_grid(M * D / 2), TPT_CUDA_THREADS, 0, stream>>>(dx, table, dy, dt, M, D);
    SFX(rotate_theta_partials_kernel)<<<tpt_cuda_grid(tpt_num_row_blocks(M) * (D / N / 2)), TPT_CUDA_THREADS, 0,
                                        stream>>>(dtheta_partials, dy, y, dt, M, D, N);
    return tpt_cuda_status();
}
