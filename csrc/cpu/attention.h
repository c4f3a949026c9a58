/* Causal softmax attention, flash style (docs/ops/attention.md).
 *
 * q [B, H, T, hd] and out [B, H, T, hd] are contiguous; k and v are
 * [B, Hkv, Tk, hd] with contiguous [Tk, hd] heads `kv_head_stride` elements
 * apart (Tk * hd when contiguous, the capacity times hd for a slice of a KV
 * cache), all in storage dtype dt. Query row i sits at absolute position
 * offset + i and attends to keys 0 .. offset + i, with Tk = offset + T
 * (offset 0: training and prefill; offset > 0: decoding over a cache). Query
 * head h reads key/value head h / (H / Hkv); nothing is repeated. lse
 * [B, H, T] is in the compute precision: _f32 computes in float32 (dt
 * float32, bfloat16 or float16), _f64 in float64 (dt float64).
 *
 * Work is split over tasks, each computed by one thread in a fixed order, so
 * results do not depend on how tasks are spread over threads: (b, key/value
 * head, query tile) for the forward (the group's query heads share the
 * tile's keys and values), (b, key/value head) for the backward, which walks
 * the key tiles in order and, per key tile, the group's query heads and their
 * query tiles: dk and dv sum over the heads and the query tiles in that
 * order, dq over the key tiles in order. */
#ifndef TPT_ATTENTION_H
#define TPT_ATTENTION_H
#include "common.h"
#ifdef __cplusplus
extern "C" {
#endif

/* Query rows per tile and keys per tile. */
#define TPT_ATTENTION_TILE_Q 64
#define TPT_ATTENTION_TILE_K 64

/* Forward tasks: B * Hkv * tiles, tiles = ceil(T / TPT_ATTENTION_TILE_Q). */
static inline int64_t tpt_attention_forward_tasks(int64_t B, int64_t Hkv, int64_t T) {
    return B * Hkv * ((T + TPT_ATTENTION_TILE_Q - 1) / TPT_ATTENTION_TILE_Q);
}

/* out and lse for the forward tasks [task_begin, task_end) (task = (b * Hkv + g) * tiles + tile: the query
 * tile of the query heads of key/value head g, which share its keys and values):
 *   s_ij = scale * q_i . k_j  for j <= offset + i,
 *   lse_i = log sum_j exp(s_ij),   out_i = sum_j exp(s_ij - lse_i) v_j,
 * over key tiles with a running maximum m_i and sum l_i (online softmax):
 * per tile m' = max(m, max_j s_ij), l' = l exp(m - m') + sum_j exp(s_ij - m'),
 * acc' = acc exp(m - m') + sum_j exp(s_ij - m') v_j; out_i = acc_i / l_i,
 * lse_i = m_i + log l_i. */
int attention_forward_f32(void* out, float* lse, const void* q, const void* k, const void* v, tpt_dtype dt,
                          int64_t task_begin, int64_t task_end, int64_t H, int64_t Hkv, int64_t T, int64_t Tk,
                          int64_t hd, int64_t kv_head_stride, int64_t offset, double scale);
int attention_forward_f64(void* out, double* lse, const void* q, const void* k, const void* v, tpt_dtype dt,
                          int64_t task_begin, int64_t task_end, int64_t H, int64_t Hkv, int64_t T, int64_t Tk,
                          int64_t hd, int64_t kv_head_stride, int64_t offset, double scale);

/* dq [B, H, T, hd], dk and dv [B, Hkv, Tk, hd] (contiguous, dt) from dout for
 * the (b, g) tasks [task_begin, task_end) of B * Hkv, the probabilities
 * recomputed from lse:
 *   p_ij = exp(s_ij - lse_i),  D_i = dout_i . out_i,  ds_ij = p_ij (dout_i . v_j - D_i),
 *   dq_i = scale sum_j ds_ij k_j,  dk_j = scale sum_i ds_ij q_i,  dv_j = sum_i p_ij dout_i,
 * key tiles outer: dk and dv summed over the group's query heads in head
 * order, each head's query tiles in order, dq over the key tiles in order. */
int attention_backward_f32(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                           const void* v, const void* out, const float* lse, tpt_dtype dt, int64_t task_begin,
                           int64_t task_end, int64_t H, int64_t Hkv, int64_t T, int64_t Tk, int64_t hd,
                           int64_t kv_head_stride, int64_t offset, double scale);
int attention_backward_f64(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                           const void* v, const void* out, const double* lse, tpt_dtype dt, int64_t task_begin,
                           int64_t task_end, int64_t H, int64_t Hkv, int64_t T, int64_t Tk, int64_t hd,
                           int64_t kv_head_stride, int64_t offset, double scale);

#ifdef __cplusplus
}
#endif
#endif
