/* Fused 3PT block ops (docs/ops/block.md): the residual add, the Givens phase rotation
 * and the next per-phase RMSNorm in one pass over the rows.
 *   add_rotate_norm: h_new = R(phi)(h + a), normed = norm(h_new)
 *   add_norm:        h_new = h + a,         normed = norm(h_new)
 * add_norm is add_rotate_norm with theta == NULL. Rows are [M, D] row-major;
 * h and a may have different storage dtypes (autocast: a float32 residual
 * stream plus a bfloat16 branch output); outputs take h's dtype. theta,
 * weight and rstd are in the compute precision (see norm.h). */
#ifndef TPT_BLOCK_H
#define TPT_BLOCK_H
#include "common.h"
#ifdef __cplusplus
extern "C" {
#endif

/* Rows [row_begin, row_end). Unfused this is 4 reads + 3 writes of [M, D];
 * fused, 2 reads + 2 writes. */
int add_rotate_norm_forward_f32(void* h_new, void* normed, float* rstd, const void* h, tpt_dtype dt_h,
                                const void* a, tpt_dtype dt_a, const float* theta, const float* weight,
                                int64_t row_begin, int64_t row_end, int64_t D, int64_t N, double eps);
int add_rotate_norm_forward_f64(void* h_new, void* normed, double* rstd, const void* h, tpt_dtype dt_h,
                                const void* a, tpt_dtype dt_a, const double* theta, const double* weight,
                                int64_t row_begin, int64_t row_end, int64_t D, int64_t N, double eps);

/* g = dh_new + dnorm^T(dnormed)       (the two paths into h_new)
 * dsum = R(-phi) g                     (= dh = da)
 * dtheta_partials[b, j] = sum over block b's rows and phases of g_even*(-h_new_odd) + g_odd*h_new_even
 * dweight_partials[b, :] = sum over block b's rows of dnormed * h_new * r
 * Row blocks [block_begin, block_end) of TPT_ROW_BLOCK rows; M rows in all.
 * dtheta_partials is unused when theta == NULL. */
int add_rotate_norm_backward_f32(void* dsum, float* dtheta_partials, float* dweight_partials, const void* dh_new,
                                 const void* dnormed, const void* h_new, const float* theta, const float* weight,
                                 const float* rstd, tpt_dtype dt, int64_t block_begin, int64_t block_end, int64_t M,
                                 int64_t D, int64_t N);
int add_rotate_norm_backward_f64(void* dsum, double* dtheta_partials, double* dweight_partials, const void* dh_new,
                                 const void* dnormed, const void* h_new, const double* theta, const double* weight,
                                 const double* rstd, tpt_dtype dt, int64_t block_begin, int64_t block_end, int64_t M,
                                 int64_t D, int64_t N);

#ifdef __cplusplus
}
#endif
#endif
