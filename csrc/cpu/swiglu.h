/* Fused SwiGLU activation of the feed-forward network. gate_up is [M, 2F]
 * row-major in storage dtype dt: the first F channels of a row are the gate g,
 * the last F the up projection u; h is [M, F]. _f32 computes in float32
 * (dt float32/bfloat16/float16), _f64 in float64 (dt float64). No reduction
 * over rows, so any split of the rows gives the same bits. */
#ifndef TPT_SWIGLU_H
#define TPT_SWIGLU_H
#include "common.h"
#ifdef __cplusplus
extern "C" {
#endif

/* h = silu(g) * u = g * s * u,  s = sigmoid(g) = 1 / (1 + exp(-g)).
 * Rows [row_begin, row_end). Returns TPT_OK or TPT_ERR_NOMEM. */
int swiglu_forward_f32(void* h, const void* gate_up, tpt_dtype dt, int64_t row_begin, int64_t row_end, int64_t F);
int swiglu_forward_f64(void* h, const void* gate_up, tpt_dtype dt, int64_t row_begin, int64_t row_end, int64_t F);

/* d_u = dh * g * s,  d_g = dh * u * s * (1 + g * (1 - s)),  written as one
 * [M, 2F] row d_gate_up = [d_g, d_u] (no concatenation afterwards).
 * dh is [M, F] in dt. d_gate_up may be gate_up itself: the gradient then
 * overwrites the activation (a backward that owns it saves a [M, 2F] buffer).
 * Rows [row_begin, row_end). */
int swiglu_backward_f32(void* d_gate_up, const void* dh, const void* gate_up, tpt_dtype dt, int64_t row_begin,
                        int64_t row_end, int64_t F);
int swiglu_backward_f64(void* d_gate_up, const void* dh, const void* gate_up, tpt_dtype dt, int64_t row_begin,
                        int64_t row_end, int64_t F);

#ifdef __cplusplus
}
#endif
#endif
