/* The argument rules of every op and their messages, in one place for both
 * faces: the torch glue (csrc/torch) and the NumPy face (csrc/numpy).
 *
 * Each tpt_check_* takes plain sizes and values, returns 0 when the rule
 * holds, and otherwise writes the message body into msg (TPT_MSG_SIZE chars)
 * and returns nonzero. The face adds its prefix ("tpt.<op>: " or
 * "tpt_ops.numpy.<fn>: ") and raises. Shapes print as [a, b]. The fake
 * kernels (tpt_ops/ops/_checks.py) repeat the same texts in Python;
 * tests/test_checks.py asserts that all three agree. */
#ifndef TPT_CHECKS_H
#define TPT_CHECKS_H
#include <stddef.h>
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

#define TPT_MSG_SIZE 512

/* The sizes of an array or tensor, as both faces see them. */
typedef struct {
    const int64_t* sizes;
    int64_t ndim;
} tpt_shape;

/* ---- any op ---------------------------------------------------------------- */

/* "argument '<arg>' has dtype <got>; expected <expected>" unless supported. */
int tpt_check_dtype(char* msg, const char* arg, int supported, const char* got, const char* expected);

/* x has >= 1 dims, n_phases >= 1 and divides the last dim D of x. */
int tpt_check_phases(char* msg, const char* arg, tpt_shape x, int64_t n_phases);

/* eps is finite and > 0 (0 divides by zero on an all-zero row; NaN or inf poison every output). */
int tpt_check_eps(char* msg, double eps);

/* p is 1-d of the given length. */
int tpt_check_vector(char* msg, const char* arg, tpt_shape p, int64_t length);

/* t has the shape of ref (named ref_name). */
int tpt_check_same_shape(char* msg, const char* arg, tpt_shape t, const char* ref_name, tpt_shape ref);

/* t holds `expected` elements (a saved statistic such as rstd). */
int tpt_check_numel(char* msg, const char* arg, int64_t numel, int64_t expected);

/* ---- rotate, block --------------------------------------------------------- */

/* The phase width P = D / n_phases is even (the rotation pairs channels). */
int tpt_check_even_phase_width(char* msg, int64_t D, int64_t n_phases);

/* a's precision matches h's (both float64 or both not): the kernel reads both in one precision. */
int tpt_check_same_precision(char* msg, const char* h_arg, const char* h_dtype, int h_is_64, const char* a_arg,
                             const char* a_dtype, int a_is_64);

/* ---- horn ------------------------------------------------------------------ */

/* x is [..., T, D]: at least 2 dims, positions along dim -2. */
int tpt_check_positions(char* msg, const char* arg, tpt_shape x);

/* offset >= 0, and the last position offset + T - 1 plus one fits in int64. */
int tpt_check_offset(char* msg, int64_t offset, int64_t T);

/* table is [V, D]. */
int tpt_check_table(char* msg, tpt_shape table);

/* ids is [T] or [B, T]. */
int tpt_check_ids_shape(char* msg, tpt_shape ids);

/* every id is in [0, V). */
int tpt_check_ids_range(char* msg, const int64_t* ids, int64_t n, int64_t V);

int tpt_check_vocab_size(char* msg, int64_t vocab_size);

/* dy is ids' shape plus [D]. */
int tpt_check_embedding_grad(char* msg, tpt_shape dy, tpt_shape ids, int64_t D);

/* ---- swiglu ---------------------------------------------------------------- */

/* gate_up = [..., 2F]: at least 1 dim, even last dim. */
int tpt_check_gate_up(char* msg, tpt_shape gate_up);

/* dh is gate_up's shape with its last dim halved. */
int tpt_check_swiglu_grad(char* msg, tpt_shape dh, tpt_shape gate_up);

/* ---- rope ------------------------------------------------------------------ */

int tpt_check_head_counts(char* msg, int64_t n_q_heads, int64_t n_kv_heads);

/* qkv is [B, T, (n_q_heads + 2*n_kv_heads)*head_dim] with an even head_dim. */
int tpt_check_qkv(char* msg, tpt_shape qkv, int64_t n_q_heads, int64_t n_kv_heads);

/* a cos/sin_signed table is [T, head_dim]. */
int tpt_check_rope_table(char* msg, const char* arg, tpt_shape table, int64_t T, int64_t hd);

/* dq is [B, n_q_heads, T, head_dim] with an even head_dim. */
int tpt_check_dq(char* msg, tpt_shape dq, int64_t n_q_heads);

/* dk or dv is [B, n_kv_heads, T, head_dim]. */
int tpt_check_dkv(char* msg, const char* arg, tpt_shape t, int64_t B, int64_t n_kv_heads, int64_t T, int64_t hd);

/* ---- moe ------------------------------------------------------------------- */

/* logits is 2-d [M, E]. */
int tpt_check_moe_logits(char* msg, tpt_shape logits);

/* 1 <= k <= E: each token picks k distinct experts. */
int tpt_check_moe_k(char* msg, int64_t k, int64_t E);

/* capacity_factor is finite and > 0 (the faces pass None as "no limit" and skip this rule). */
int tpt_check_moe_capacity_factor(char* msg, double capacity_factor);

/* score is "softmax" or "sigmoid". */
int tpt_check_moe_score(char* msg, const char* score);

/* slots is 2-d [M, k]. */
int tpt_check_moe_slots(char* msg, tpt_shape slots);

/* t is 2-d [rows_name, D] with `rows` rows, and `cols` columns unless cols < 0. */
int tpt_check_moe_matrix(char* msg, const char* arg, tpt_shape t, const char* rows_name, int64_t rows, int64_t cols);

/* slots [M, k] and slot_token [M*k] (NULL: slots alone) describe one routing:
 * every slot is -1 or a row in [0, M*k), every slot_token -1 or a token in
 * [0, M), and a kept (t, j) at row a has slot_token[a] = t and back. The
 * kernels index memory with them, so values that did not come from moe_route
 * are refused here rather than read out of bounds. */
int tpt_check_moe_layout(char* msg, const int64_t* slots, const int64_t* slot_token, int64_t M, int64_t k);

/* every expert index is in [0, E). */
int tpt_check_moe_experts(char* msg, const int64_t* experts, int64_t n, int64_t E);

/* ---- hedgehog -------------------------------------------------------------- */

/* u is [..., F]: at least 1 dim, F >= 1 (each softmax needs a value). */
int tpt_check_hedgehog_u(char* msg, tpt_shape u);

/* phi_q [B, H, T, K], phi_k [B, Hkv, T, K], v [B, Hkv, T, Dv]: 4-d each, one B
 * and T, one feature width K, H a positive multiple of Hkv >= 1. */
int tpt_check_linear_attention(char* msg, tpt_shape phi_q, tpt_shape phi_k, tpt_shape v);

/* t has exactly the given sizes (spelled out by `names`, e.g. "[B, H, T, Dv]"). */
int tpt_check_shape(char* msg, const char* arg, tpt_shape t, const char* names, const int64_t* sizes, int64_t ndim);

/* A decoding step takes one token: T = 1. */
int tpt_check_one_token(char* msg, int64_t T);

/* ---- attention ------------------------------------------------------------- */

/* Arguments a and b have one dtype (the kernel reads them in one storage type). */
int tpt_check_same_dtype(char* msg, const char* a_arg, const char* a_dtype, const char* b_arg, const char* b_dtype);

/* q [B, H, T, hd], k and v [B, Hkv, Tk, hd]: 4-d each, v of k's shape, one B
 * and head dim, H a positive multiple of Hkv, Tk >= T, 0 <= offset <= Tk - T
 * and Tk = offset + T (query i at position offset + i sees keys 0 .. offset + i). */
int tpt_check_attention(char* msg, tpt_shape q, tpt_shape k, tpt_shape v, int64_t offset);

/* scale is finite and > 0. */
int tpt_check_attention_scale(char* msg, double scale);

#ifdef __cplusplus
}
#endif
#endif
