/* Fused "split qkv + RoPE + head-major layout" of the attention. qkv is
 * [B, T, (H + 2*Hkv)*hd] row-major in storage dtype dt: per (b, t) row the H
 * query heads, then the Hkv key heads, then the Hkv value heads, hd each.
 * q is [B, H, T, hd], k and v are [B, Hkv, T, hd], all in dt. cos and
 * sin_signed are [T, hd] in the compute precision (rotate-half tables:
 * cos = [cos a, cos a], sin_signed = [-sin a, sin a]). _f32 computes in
 * float32 (dt float32/bfloat16/float16), _f64 in float64 (dt float64).
 * The work is over rows m = b*T + t, each row scattering to (forward) or
 * gathering from (backward) its H + 2*Hkv head rows; no reduction, so any
 * split of the rows gives the same bits. */
#ifndef TPT_ROPE_H
#define TPT_ROPE_H
#include "common.h"
#ifdef __cplusplus
extern "C" {
#endif

/* For a q or k head x at time t, with h2 = hd/2:
 *   y[j]      = x[j]      * cos[t, j]      + x[j + h2] * sin_signed[t, j]
 *   y[j + h2] = x[j + h2] * cos[t, j + h2] + x[j]      * sin_signed[t, j + h2]   (j < h2)
 * v heads are copied unrotated. Rows [row_begin, row_end) of B*T.
 * Returns TPT_OK or TPT_ERR_NOMEM. */
int qkv_rope_forward_f32(void* q, void* k, void* v, const void* qkv, const float* cos, const float* sin_signed,
                         tpt_dtype dt, int64_t row_begin, int64_t row_end, int64_t T, int64_t H, int64_t Hkv,
                         int64_t hd);
int qkv_rope_forward_f64(void* q, void* k, void* v, const void* qkv, const double* cos, const double* sin_signed,
                         tpt_dtype dt, int64_t row_begin, int64_t row_end, int64_t T, int64_t H, int64_t Hkv,
                         int64_t hd);

/* Element strides of a [B, heads, T, hd] gradient over its first three dims;
 * each head row of hd is contiguous. Attention backwards return dq, dk, dv in
 * their own layouts (often [B, T, heads, hd] in memory): read as they are,
 * they need no copy. */
typedef struct {
    int64_t b, h, t;
} tpt_head_strides;

/* Byte offset of head row (b, h, t) in a gradient with strides st. */
static inline int64_t tpt_head_offset(tpt_head_strides st, int64_t b, int64_t h, int64_t t, int64_t esize) {
    return (b * st.b + h * st.h + t * st.t) * esize;
}

/* The transpose of the rotation (it is orthogonal) on the output gradient d
 * of a q or k head:
 *   dx[j]      = d[j]      * cos[t, j]      + d[j + h2] * sin_signed[t, j + h2]
 *   dx[j + h2] = d[j + h2] * cos[t, j + h2] + d[j]      * sin_signed[t, j]        (j < h2)
 * dv is copied back; all written straight into dqkv [B, T, (H + 2*Hkv)*hd].
 * dq, dk, dv are in dt with the shapes of q, k, v and the given strides.
 * Rows [row_begin, row_end). */
int qkv_rope_backward_f32(void* dqkv, const void* dq, tpt_head_strides dq_strides, const void* dk,
                          tpt_head_strides dk_strides, const void* dv, tpt_head_strides dv_strides, const float* cos,
                          const float* sin_signed, tpt_dtype dt, int64_t row_begin, int64_t row_end, int64_t T,
                          int64_t H, int64_t Hkv, int64_t hd);
int qkv_rope_backward_f64(void* dqkv, const void* dq, tpt_head_strides dq_strides, const void* dk,
                          tpt_head_strides dk_strides, const void* dv, tpt_head_strides dv_strides, const double* cos,
                          const double* sin_signed, tpt_dtype dt, int64_t row_begin, int64_t row_end, int64_t T,
                          int64_t H, int64_t Hkv, int64_t hd);

#ifdef __cplusplus
}
#endif
#endif
