/* Givens phase rotation (docs/ops/rotate.md). x is [M, D] row-major in storage dtype dt,
 * D = N * P with P even; phase i of a row is x[i*P : (i+1)*P], and inside it
 * the channel pairs (even, odd) are rotated by phi[i, j] = theta[j] + i*2pi/N.
 * _f32 computes in float32 (dt float32/bfloat16/float16), _f64 in float64
 * (dt float64); theta ([P/2]) and dtheta are in that compute precision. */
#ifndef TPT_ROTATE_H
#define TPT_ROTATE_H
#include "common.h"
#ifdef __cplusplus
extern "C" {
#endif

/* y_i[2j]   = a cos(phi) - b sin(phi),  a = x_i[2j], b = x_i[2j+1]
 * y_i[2j+1] = a sin(phi) + b cos(phi),  phi = theta[j] + i*2pi/N.
 * Rows [row_begin, row_end). Returns TPT_OK or TPT_ERR_NOMEM. */
int phase_rotate_forward_f32(void* y, const void* x, const float* theta, tpt_dtype dt,
                             int64_t row_begin, int64_t row_end, int64_t D, int64_t N);
int phase_rotate_forward_f64(void* y, const void* x, const double* theta, tpt_dtype dt,
                             int64_t row_begin, int64_t row_end, int64_t D, int64_t N);

/* From dy and the saved OUTPUT y: dx = R(-phi) dy, and
 * dtheta_partials[b, j] = sum over the rows of block b and the phases i of
 *                         dy_i[2j+1] * y_i[2j] - dy_i[2j] * y_i[2j+1].
 * dtheta_partials is [n_blocks, P/2]; the kernel zeroes the rows it writes.
 * Row blocks [block_begin, block_end) of TPT_ROW_BLOCK rows, M rows in all. */
int phase_rotate_backward_f32(void* dx, float* dtheta_partials, const void* dy, const void* y,
                              const float* theta, tpt_dtype dt,
                              int64_t block_begin, int64_t block_end, int64_t M, int64_t D, int64_t N);
int phase_rotate_backward_f64(void* dx, double* dtheta_partials, const void* dy, const void* y,
                              const double* theta, tpt_dtype dt,
                              int64_t block_begin, int64_t block_end, int64_t M, int64_t D, int64_t N);

#ifdef __cplusplus
}
#endif
#endif
