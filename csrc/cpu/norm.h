/* Per-phase RMSNorm (docs/ops/norm.md). x is [M, D] row-major in storage dtype dt,
 * D = N * P, phase i of a row is x[i*P : (i+1)*P]. N = 1 is plain RMSNorm.
 * _f32 computes in float32 (dt float32/bfloat16/float16), _f64 in float64
 * (dt float64); weight and the saved rstd are in that compute precision. */
#ifndef TPT_NORM_H
#define TPT_NORM_H
#include "common.h"
#ifdef __cplusplus
extern "C" {
#endif

/* y_i = x_i * r_i * w_i, r_i = 1/sqrt(mean(x_i^2) + eps); rstd[m, i] = r_i.
 * Rows [row_begin, row_end). Returns TPT_OK or TPT_ERR_NOMEM. */
int phase_rmsnorm_forward_f32(void* y, float* rstd, const void* x, const float* weight, tpt_dtype dt,
                              int64_t row_begin, int64_t row_end, int64_t D, int64_t N, double eps);
int phase_rmsnorm_forward_f64(void* y, double* rstd, const void* x, const double* weight, tpt_dtype dt,
                              int64_t row_begin, int64_t row_end, int64_t D, int64_t N, double eps);

/* g = dy * w;  dx_i = r_i * (g_i - x_i * r_i^2 * mean(g_i * x_i));
 * dweight_partials[b, :] = sum over the rows of block b of dy * x * r.
 * Row blocks [block_begin, block_end) of TPT_ROW_BLOCK rows, M rows in all. */
int phase_rmsnorm_backward_f32(void* dx, float* dweight_partials, const void* dy, const void* x,
                               const float* weight, const float* rstd, tpt_dtype dt,
                               int64_t block_begin, int64_t block_end, int64_t M, int64_t D, int64_t N);
int phase_rmsnorm_backward_f64(void* dx, double* dweight_partials, const void* dy, const void* x,
                               const double* weight, const double* rstd, tpt_dtype dt,
                               int64_t block_begin, int64_t block_end, int64_t M, int64_t D, int64_t N);

#ifdef __cplusplus
}
#endif
#endif
