/* Fused add (+ rotate) + norm CUDA kernels, written once for the precision
 * `real` (real.cuh), on norm_math.h and rotate_math.h: the C kernels' bits
 * (block.inc). A row is one group of TPT_LANES threads; lane l holds the
 * elements l, l + TPT_LANES, ..., so the partner of a rotation pair
 * (2k, 2k+1) is lane l ^ 1 of the same group. */
#include "rotate_row.cuh"
#include "../cpu/norm_math.h"

/* h_new = R(phi)(h + a) (theta NULL: h + a), stored; then normed = norm(h_new as stored). */
static __global__ void SFX(block_forward_kernel)(void* h_new, void* normed, real* rstd, const real* table,
                                                 const void* h, tpt_dtype dt_h, const void* a, tpt_dtype dt_a,
                                                 const real* weight, int64_t M, int64_t D, int64_t N, real eps) {
    TPT_ROW_GROUP(m, active, lane, M);
    const int64_t P = D / N, base = m * D;
    for (int64_t j0 = 0; j0 < D; j0 += TPT_LANES) {
        const int64_t j = j0 + lane;
        const int valid = j < D;
        real v = valid ? SFX(tpt_load)(h, dt_h, base + j) + SFX(tpt_load)(a, dt_a, base + j) : 0;
        if (table) {
            const real partner = __shfl_xor_sync(0xffffffffu, v, 1, TPT_LANES);
            real ya, yb;
            if (j % 2 == 0) SFX(tpt_rotate_pair)(v, partner, table[j / 2], table[D / 2 + j / 2], &ya, &yb);
            else SFX(tpt_rotate_pair)(partner, v, table[j / 2], table[D / 2 + j / 2], &ya, &yb);
            v = j % 2 == 0 ? ya : yb;
        }
        if (valid && active) SFX(tpt_store)(h_new, dt_h, base + j, v);
    }
    __syncwarp(); /* the norm reads the row as stored, also elements other lanes of the group wrote */
    for (int64_t i = 0; i < N; i++) {
        const int64_t off = base + i * P;
        real sum_sq;
        TPT_LANE_SUM(sum_sq, P, lane, j, SFX(tpt_load)(h_new, dt_h, off + j) * SFX(tpt_load)(h_new, dt_h, off + j));
        const real r = SFX(tpt_rms_scale)(sum_sq, P, eps);
        if (!active) continue;
        if (lane == 0) rstd[m * N + i] = r;
        for (int64_t j = lane; j < P; j += TPT_LANES)
            SFX(tpt_store)(normed, dt_h, off + j,
                           SFX(tpt_norm_value)(SFX(tpt_load)(h_new, dt_h, off + j), r, weight[i * P + j]));
    }
}

/* g = dh_new + d(norm)^T dnormed at element e of phase i of row m, with the phase's coefficient c */
__device__ __forceinline__ real SFX(block_grad)(const void* dh_new, const void* dnormed, const void* h_new,
                                                const real* weight, tpt_dtype dt, int64_t e, int64_t j, real r,
                                                real c) {
    const real g = SFX(tpt_load)(dnormed, dt, e) * weight[j];
    return SFX(tpt_norm_grad)(r, g, SFX(tpt_load)(h_new, dt, e), c) + SFX(tpt_load)(dh_new, dt, e);
}

/* dsum = R(-phi) g for one row a group; saves each phase's coefficient c = r^2 mean(dnormed w h_new). */
static __global__ void SFX(block_backward_kernel)(void* dsum, real* coef, const real* table, const void* dh_new,
                                                  const void* dnormed, const void* h_new, const real* weight,
                                                  const real* rstd, tpt_dtype dt, int64_t M, int64_t D, int64_t N) {
    TPT_ROW_GROUP(m, active, lane, M);
    const int64_t P = D / N, base = m * D;
    for (int64_t i = 0; i < N; i++) {
        const int64_t off = base + i * P;
        const real* w = weight + i * P;
        real dot;
        TPT_LANE_SUM(dot, P, lane, j, SFX(tpt_load)(dnormed, dt, off + j) * w[j] * SFX(tpt_load)(h_new, dt, off + j));
        const real r = rstd[m * N + i], c = SFX(tpt_norm_grad_coef)(r, dot, P);
        if (active && lane == 0) coef[m * N + i] = c;
        /* P is even, so pairs never straddle phases, and the partner is lane ^ 1 */
        for (int64_t j0 = 0; j0 < P; j0 += TPT_LANES) {
            const int64_t j = j0 + lane, e = off + j;
            const int valid = j < P;
            real g = valid ? SFX(block_grad)(dh_new, dnormed, h_new, weight, dt, e, i * P + j, r, c) : 0;
            if (table) {
                const real partner = __shfl_xor_sync(0xffffffffu, g, 1, TPT_LANES);
                const int64_t k = (i * P + j) / 2;
                real da, db;
                if (j % 2 == 0) SFX(tpt_rotate_pair_backward)(g, partner, table[k], table[D / 2 + k], &da, &db);
                else SFX(tpt_rotate_pair_backward)(partner, g, table[k], table[D / 2 + k], &da, &db);
                g = j % 2 == 0 ? da : db;
            }
            if (valid && active) SFX(tpt_store)(dsum, dt, e, g);
        }
    }
}

/* dweight_partials[b, j] = sum over block b's rows of dnormed h_new r; one thread a (block, column). */
static __global__ void SFX(block_weight_partials_kernel)(real* dweight_partials, const void* dnormed,
                                                         const void* h_new, const real* rstd, tpt_dtype dt,
                                                         int64_t M, int64_t D, int64_t N) {
    const int64_t P = D / N, n_blocks = tpt_num_row_blocks(M);
    TPT_FOR_EACH(idx, n_blocks * D) {
        const int64_t b = idx / D, j = idx % D, end = (b + 1) * TPT_ROW_BLOCK < M ? (b + 1) * TPT_ROW_BLOCK : M;
        real acc = 0;
        for (int64_t m = b * TPT_ROW_BLOCK; m < end; m++)
            acc += SFX(tpt_norm_weight_grad)(SFX(tpt_load)(dnormed, dt, m * D + j), SFX(tpt_load)(h_new, dt, m * D + j),
                                             rstd[m * N + j / P]);
        dweight_partials[idx] = acc;
    }
}

/* dtheta_partials[b, j] = sum over block b's rows, then phases, of the angle gradient of g at pair j against
 * h_new (g recomputed from the saved coefficients, the same bits as the row kernel's). */
static __global__ void SFX(block_theta_partials_kernel)(real* dtheta_partials, const real* coef, const void* dh_new,
                                                        const void* dnormed, const void* h_new, const real* weight,
                                                        const real* rstd, tpt_dtype dt, int64_t M, int64_t D,
                                                        int64_t N) {
    const int64_t P = D / N, H = P / 2, n_blocks = tpt_num_row_blocks(M);
    TPT_FOR_EACH(idx, n_blocks * H) {
        const int64_t b = idx / H, j = idx % H, end = (b + 1) * TPT_ROW_BLOCK < M ? (b + 1) * TPT_ROW_BLOCK : M;
        real acc = 0;
        for (int64_t m = b * TPT_ROW_BLOCK; m < end; m++)
            for (int64_t i = 0; i < N; i++) {
                const int64_t c0 = i * P + 2 * j, e = m * D + c0;
                const real r = rstd[m * N + i], c = coef[m * N + i];
                const real ge = SFX(block_grad)(dh_new, dnormed, h_new, weight, dt, e, c0, r, c);
                const real go = SFX(block_grad)(dh_new, dnormed, h_new, weight, dt, e + 1, c0 + 1, r, c);
                acc += SFX(tpt_rotate_angle_grad)(ge, go, SFX(tpt_load)(h_new, dt, e), SFX(tpt_load)(h_new, dt, e + 1));
            }
        dtheta_partials[idx] = acc;
    }
}

extern "C" int TPT_LAUNCHER_NAME(add_rotate_norm_forward)(void* h_new, void* normed, real* rstd, real* table,
                                                          const void* h, tpt_dtype dt_h, const void* a,
                                                          tpt_dtype dt_a, const real* theta, const real* weight,
                                                          int64_t M, int64_t D, int64_t N, double eps,
                                                          cudaStream_t stream) {
    if (M <= 0 || D <= 0) return TPT_OK;
    if (theta) SFX(rotation_table)(table, theta, D, N, stream);
    SFX(block_forward_kernel)<<<tpt_cuda_blocks(M * TPT_LANES, TPT_CUDA_THREADS), TPT_CUDA_THREADS, 0, stream>>>(
        h_new, normed, rstd, theta ? table : NULL, h, dt_h, a, dt_a, weight, M, D, N, (real)eps);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(add_rotate_norm_backward)(void* dsum, real* dtheta_partials, real* dweight_partials,
                                                           real* table, real* coef, const void* dh_new,
                                                           const void* dnormed, const void* h_new, const real* theta,
                                                           const real* weight, const real* rstd, tpt_dtype dt,
                                                           int64_t M, int64_t D, int64_t N, cudaStream_t stream) {
    if (M <= 0 || D <= 0) return TPT_OK;
    if (theta) SFX(rotation_table)(table, theta, D, N, stream);
    SFX(block_backward_kernel)<<<tpt_cuda_blocks(M * TPT_LANES, TPT_CUDA_THREADS), TPT_CUDA_THREADS, 0, stream>>>(
        dsum, coef, theta ? table : NULL, dh_new, dnormed, h_new, weight, rstd, dt, M, D, N);
    SFX(block_weight_partials_kernel)<<<tpt_cuda_grid(tpt_num_row_blocks(M) * D), TPT_CUDA_THREADS, 0, stream>>>(
        dweight_partials, dnormed, h_new, rstd, dt, M, D, N);
    if (theta)
        SFX(block_theta_partials_kernel)<<<tpt_cuda_grid(tpt_num_row_blocks(M) * (D / N / 2)), TPT_CUDA_THREADS, 0,
                                           stream>>>(dtheta_partials, coef, dh_new, dnormed, h_new, weight, rstd, dt,
                                                     M, D, N);
    return tpt_cuda_status();
}
