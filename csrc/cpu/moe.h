/* Token-choice mixture-of-experts routing and dispatch (docs/ops/moe.md).
 *
 * logits are [M, E] row-major (M tokens, E experts) in storage dtype dt; each
 * token picks k experts. The A = M * k rows of the expert buffer hold the kept
 * assignments grouped by expert, in expert order and within an expert in token
 * order, in rows [0, n_kept); rows >= n_kept are unused. slots [M, k] holds the
 * row of assignment (t, j), -1 when it was dropped; slot_token [A] the token of
 * each row, -1 for unused rows. _f32 computes in float32 (dt float32, bfloat16
 * or float16), _f64 in float64 (dt float64); gates, bias and the saved lse are
 * in that compute precision. Row data ([M, D] or [A, D]) is in dt. */
#ifndef TPT_MOE_H
#define TPT_MOE_H
#include "common.h"
#ifdef __cplusplus
extern "C" {
#endif

/* Score functions of the router. */
enum { TPT_MOE_SOFTMAX = 0, TPT_MOE_SIGMOID = 1 };

/* Per token t (the rows of the row blocks [block_begin, block_end), M rows in all):
 *   lse_t   = log sum_e exp(l[t, e])                    (max-shifted)
 *   s[t, e] = exp(l[t, e] - max) / sum_e exp(l[t, e] - max)  (softmax)  or  1 / (1 + exp(-l[t, e]))  (sigmoid)
 *   experts[t, :] = the k largest s[t, e] + bias[e] (bias NULL: + 0), in descending
 *                   order, ties to the lower expert index
 *   gates[t, j]   = s[t, experts[t, j]] / S  with S = sum_j s[t, experts[t, j]] in
 *                   order j = 0 .. k-1 (normalize), else s[t, experts[t, j]]
 *                   (before any dropping)
 * and per row block b: prob_partials[b, e] = sum over its rows, in order, of
 * s[t, e]; lse_sq_partials[b] = the same sum of lse_t^2. exp and log are plain
 * arithmetic (moe.inc), the same bits on every CPU. Nothing is saved: the
 * backward recomputes s from the logits, bit for bit. */
int moe_route_forward_f32(float* gates, int64_t* experts, float* prob_partials, float* lse_sq_partials,
                          const void* logits, const float* bias, tpt_dtype dt, int64_t block_begin,
                          int64_t block_end, int64_t M, int64_t E, int64_t k, int normalize, int score);
int moe_route_forward_f64(double* gates, int64_t* experts, double* prob_partials, double* lse_sq_partials,
                          const void* logits, const double* bias, tpt_dtype dt, int64_t block_begin,
                          int64_t block_end, int64_t M, int64_t E, int64_t k, int normalize, int score);

/* Slots per expert: ceil(capacity_factor * M * k / E) (evaluated left to right
 * in double), at most M. capacity_factor is finite and > 0. */
int64_t moe_capacity(double capacity_factor, int64_t M, int64_t E, int64_t k);

/* Capacity admission and the expert-contiguous layout, one serial counting pass.
 * Assignments are admitted in priority order (j = 0 of every token, then j = 1,
 * ..., each by token index); one over capacity (capacity >= 0) is dropped.
 * counts[e] = kept assignments of expert e; the kept (t, j) of expert e get the
 * rows offset[e], offset[e] + 1, ... in token order (offset the exclusive
 * cumulative sum of counts), slots[t, j] = that row or -1, slot_token[row] = t,
 * -1 for the rows >= n_kept. capacity < 0: no limit. experts must be in
 * [0, E). Returns TPT_OK or TPT_ERR_NOMEM. */
int moe_route_assign(int64_t* slots, int64_t* slot_token, int64_t* counts, const int64_t* experts, int64_t M,
                     int64_t E, int64_t k, int64_t capacity);

/* Zeroes the gates of dropped assignments (slots < 0) and forms the losses:
 *   aux_loss = E * sum_e f_e * P_e,  f_e = counts[e] / max(1, n_kept),  P_e = prob_sums[e] / M
 *   z_loss   = lse_sq_sum / M      (both 0 when M = 0). */
void moe_route_losses_f32(float* gates, float* aux_loss, float* z_loss, const int64_t* slots, const int64_t* counts,
                          const float* prob_sums, float lse_sq_sum, int64_t M, int64_t E, int64_t k);
void moe_route_losses_f64(double* gates, double* aux_loss, double* z_loss, const int64_t* slots,
                          const int64_t* counts, const double* prob_sums, double lse_sq_sum, int64_t M, int64_t E,
                          int64_t k);

/* dlogits of rows [row_begin, row_end), in dt, from dgates [M, k] and the
 * scalar gradients daux, dz of the losses; s, p = softmax(l) and lse_t are
 * recomputed from logits exactly as the forward computes them:
 *   dg_j = dgates[t, j] for kept j (slots >= 0), 0 for dropped j
 *   ds_e = (dg_j - sum_i dg_i gates[t, i]) / S  at e = experts[t, j]  (normalize; else dg_j), 0 elsewhere,
 *          + daux * E * f_e / M                  (f_e = counts[e] / max(1, n_kept), no gradient)
 *   dl_e = s_e (ds_e - sum_e' ds_e' s_e')  (softmax)  or  ds_e s_e (1 - s_e)  (sigmoid)
 *          + dz * 2 lse_t / M * p_e
 * gates are the forward's output (dropped ones 0). */
int moe_route_backward_f32(void* dlogits, const float* dgates, float daux, float dz, const void* logits,
                           const int64_t* experts, const float* gates, const int64_t* slots, const int64_t* counts,
                           tpt_dtype dt, int64_t row_begin, int64_t row_end, int64_t M, int64_t E, int64_t k,
                           int normalize, int score);
int moe_route_backward_f64(void* dlogits, const double* dgates, double daux, double dz, const void* logits,
                           const int64_t* experts, const double* gates, const int64_t* slots, const int64_t* counts,
                           tpt_dtype dt, int64_t row_begin, int64_t row_end, int64_t M, int64_t E, int64_t k,
                           int normalize, int score);

/* buf[a] = x[slot_token[a]], 0 where slot_token[a] < 0; rows a in [row_begin,
 * row_end) of D elements of dt, copied bit for bit (no precision involved). */
int moe_permute_forward(void* buf, const void* x, const int64_t* slot_token, tpt_dtype dt, int64_t row_begin,
                        int64_t row_end, int64_t D);

/* dx[t] = sum over kept j, in order j = 0 .. k-1, of dbuf[slots[t, j]] (0 when
 * none is kept): a gather over the token's k slots. Tokens [row_begin, row_end). */
int moe_permute_backward_f32(void* dx, const void* dbuf, const int64_t* slots, tpt_dtype dt, int64_t row_begin,
                             int64_t row_end, int64_t k, int64_t D);
int moe_permute_backward_f64(void* dx, const void* dbuf, const int64_t* slots, tpt_dtype dt, int64_t row_begin,
                             int64_t row_end, int64_t k, int64_t D);

/* y[t] = sum over kept j, in order, of gates[t, j] * out[slots[t, j]]: a
 * gather over the token's k slots. Tokens [row_begin, row_end). */
int moe_unpermute_forward_f32(void* y, const void* out, const float* gates, const int64_t* slots, tpt_dtype dt,
                              int64_t row_begin, int64_t row_end, int64_t k, int64_t D);
int moe_unpermute_forward_f64(void* y, const void* out, const double* gates, const int64_t* slots, tpt_dtype dt,
                              int64_t row_begin, int64_t row_end, int64_t k, int64_t D);

/* For each buffer row a in [row_begin, row_end) with t = slot_token[a] >= 0 and
 * j the choice with slots[t, j] = a:
 *   dout[a]       = gates[t, j] * dy[t]
 *   dgates[t, j]  = dot(dy[t], out[a])
 * and dout[a] = 0 for unused rows. Each row reads its token's dy row (a
 * gather); (t, j) and a correspond one to one, so every dgates entry is
 * written by exactly one row: dgates of dropped assignments must be zeroed by
 * the caller. Returns TPT_ERR_INDEX if no j of token t holds row a. */
int moe_unpermute_backward_f32(void* dout, float* dgates, const void* dy, const void* out, const float* gates,
                               const int64_t* slots, const int64_t* slot_token, tpt_dtype dt, int64_t row_begin,
                               int64_t row_end, int64_t k, int64_t D);
int moe_unpermute_backward_f64(void* dout, double* dgates, const void* dy, const void* out, const double* gates,
                               const int64_t* slots, const int64_t* slot_token, tpt_dtype dt, int64_t row_begin,
                               int64_t row_end, int64_t k, int64_t D);

#ifdef __cplusplus
}
#endif
#endif
