/* Hedgehog linear attention: the two-softmax feature map and normalised
 * linear attention, chunked (docs/ops/hedgehog.md).
 *
 * Feature map rows are [rows, F] in, [rows, 2F] out, in storage dtype dt.
 * Attention tensors are contiguous: phi_q [B, H, T, K], phi_k [B, Hkv, T, K],
 * v [B, Hkv, T, Dv], y [B, H, T, Dv] in dt (K = 2F the feature width); query
 * head h reads key/value head h / (H / Hkv). The decoding state is per
 * key/value head, S [B, Hkv, K, Dv] and z [B, Hkv, K], in the compute
 * precision (float32, float64 for dt float64), whatever dt is. _f32 computes
 * in float32 (dt float32, bfloat16 or float16), _f64 in float64 (dt float64).
 * Work is split over "tasks": (b, h) pairs for the forward, (b, g) pairs (one
 * key/value head and its query heads) for the backward and the step; each task
 * is computed by one thread in a fixed order, so results do not depend on
 * how tasks are spread over threads. */
#ifndef TPT_HEDGEHOG_H
#define TPT_HEDGEHOG_H
#include "common.h"
#ifdef __cplusplus
extern "C" {
#endif

/* Tokens per chunk of the causal form. */
#define TPT_HEDGEHOG_CHUNK 64

/* phi[r] = concat(softmax(u[r]), softmax(-u[r])) for rows [row_begin, row_end),
 * each softmax over the row's F values with its maximum subtracted, exp in
 * plain arithmetic (tpt_exp_nonpos, common.h). */
int hedgehog_feature_map_forward_f32(void* phi, const void* u, tpt_dtype dt, int64_t row_begin, int64_t row_end,
                                     int64_t F);
int hedgehog_feature_map_forward_f64(void* phi, const void* u, tpt_dtype dt, int64_t row_begin, int64_t row_end,
                                     int64_t F);

/* du from dphi [rows, 2F], p = softmax(u) and m = softmax(-u) recomputed:
 *   du = p * (dp - sum(dp * p)) - m * (dm - sum(dm * m)),  (dp, dm) the halves of dphi. */
int hedgehog_feature_map_backward_f32(void* du, const void* dphi, const void* u, tpt_dtype dt, int64_t row_begin,
                                      int64_t row_end, int64_t F);
int hedgehog_feature_map_backward_f64(void* du, const void* dphi, const void* u, tpt_dtype dt, int64_t row_begin,
                                      int64_t row_end, int64_t F);

/* y for the (b, h) tasks [task_begin, task_end) of B * H:
 *   causal:     y_i = q_i S_i / (q_i . z_i + eps),  S_i = sum_{j<=i} k_j v_j^T,  z_i = sum_{j<=i} k_j
 *   non-causal: the same with the sums over all j,
 * computed per chunk of TPT_HEDGEHOG_CHUNK tokens (causal) from the state of
 * the earlier chunks plus the masked intra-chunk scores (hedgehog.md). When
 * S_out is not NULL (causal only), the first query head of each group writes
 * the final state of its key/value head into S_out [B, Hkv, K, Dv] and
 * z_out [B, Hkv, K]. */
int linear_attention_forward_f32(void* y, float* S_out, float* z_out, const void* phi_q, const void* phi_k,
                                 const void* v, tpt_dtype dt, int64_t task_begin, int64_t task_end, int64_t H,
                                 int64_t Hkv, int64_t T, int64_t K, int64_t Dv, int causal, double eps);
int linear_attention_forward_f64(void* y, double* S_out, double* z_out, const void* phi_q, const void* phi_k,
                                 const void* v, tpt_dtype dt, int64_t task_begin, int64_t task_end, int64_t H,
                                 int64_t Hkv, int64_t T, int64_t K, int64_t Dv, int causal, double eps);

/* dq [B, H, T, K], dk [B, Hkv, T, K], dv [B, Hkv, T, Dv] (dt) from dy for the
 * (b, g) tasks [task_begin, task_end) of B * Hkv. A forward pass over the
 * chunks, with the state shared by the group's query heads, recomputes num and
 * den per head and gives a_i = dy_i / den_i, c_i = -(dy_i . y_i) / den_i and
 *   dq_i = S_i a_i + c_i z_i;
 * it keeps only den_i and c_i. A reverse pass carries, per head,
 * R_j = sum_{i>=j} q_i a_i^T and r_j = sum_{i>=j} c_i q_i and sums
 *   dk_j = R_j v_j + r_j,   dv_j = R_j^T k_j
 * over the group's heads in head order, chunk by chunk (sums over all i in
 * the non-causal form). */
int linear_attention_backward_f32(void* dq, void* dk, void* dv, const void* dy, const void* phi_q,
                                  const void* phi_k, const void* v, tpt_dtype dt, int64_t task_begin,
                                  int64_t task_end, int64_t H, int64_t Hkv, int64_t T, int64_t K, int64_t Dv,
                                  int causal, double eps);
int linear_attention_backward_f64(void* dq, void* dk, void* dv, const void* dy, const void* phi_q,
                                  const void* phi_k, const void* v, tpt_dtype dt, int64_t task_begin,
                                  int64_t task_end, int64_t H, int64_t Hkv, int64_t T, int64_t K, int64_t Dv,
                                  int causal, double eps);

/* One decoding token for the (b, g) tasks [task_begin, task_end) of B * Hkv:
 *   S' = S + k v^T,  z' = z + k,  y_h = q_h S' / (q_h . z' + eps)  for the group's query heads,
 * with phi_q [B, H, K], phi_k [B, Hkv, K], v [B, Hkv, Dv], y [B, H, Dv] in dt
 * and S, z, S_new, z_new in the compute precision. */
int linear_attention_step_f32(void* y, float* S_new, float* z_new, const void* phi_q, const void* phi_k,
                              const void* v, const float* S, const float* z, tpt_dtype dt, int64_t task_begin,
                              int64_t task_end, int64_t H, int64_t Hkv, int64_t K, int64_t Dv, double eps);
int linear_attention_step_f64(void* y, double* S_new, double* z_new, const void* phi_q, const void* phi_k,
                              const void* v, const double* S, const double* z, tpt_dtype dt, int64_t task_begin,
                              int64_t task_end, int64_t H, int64_t Hkv, int64_t K, int64_t Dv, double eps);

#ifdef __cplusplus
}
#endif
#endif
