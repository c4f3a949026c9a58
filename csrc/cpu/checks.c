/* The argument rules and messages of csrc/cpu/checks.h. */
#include "checks.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Writes the formatted message and returns 1: a rule was broken. */
static int fail(char* msg, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, TPT_MSG_SIZE, fmt, ap);
    va_end(ap);
    return 1;
}

/* "[a, b, c]" into out (truncated to TPT_MSG_SIZE / 4 chars, far more than any message needs). */
#define SHAPE_TEXT (TPT_MSG_SIZE / 4)
static const char* shape_text(char out[SHAPE_TEXT], tpt_shape s) {
    size_t used = (size_t)snprintf(out, SHAPE_TEXT, "[");
    for (int64_t d = 0; d < s.ndim && used < SHAPE_TEXT; d++)
        used += (size_t)snprintf(out + used, SHAPE_TEXT - used, "%s%" PRId64, d ? ", " : "", s.sizes[d]);
    if (used < SHAPE_TEXT) snprintf(out + used, SHAPE_TEXT - used, "]");
    return out;
}

static int same_sizes(tpt_shape a, tpt_shape b) {
    if (a.ndim != b.ndim) return 0;
    for (int64_t d = 0; d < a.ndim; d++)
        if (a.sizes[d] != b.sizes[d]) return 0;
    return 1;
}

static int64_t last_dim(tpt_shape s) { return s.sizes[s.ndim - 1]; }

int tpt_check_dtype(char* msg, const char* arg, int supported, const char* got, const char* expected) {
    if (supported) return 0;
    return fail(msg, "argument '%s' has dtype %s; expected %s", arg, got, expected);
}

int tpt_check_phases(char* msg, const char* arg, tpt_shape x, int64_t n_phases) {
    if (x.ndim < 1) return fail(msg, "argument '%s' must have at least 1 dimension, got a scalar", arg);
    if (n_phases < 1) return fail(msg, "n_phases must be >= 1, got %" PRId64, n_phases);
    const int64_t D = last_dim(x);
    if (D % n_phases)
        return fail(msg, "the last dim of '%s' (D=%" PRId64 ") is not divisible by n_phases=%" PRId64, arg, D,
                    n_phases);
    return 0;
}

int tpt_check_eps(char* msg, double eps) {
    if (isfinite(eps) && eps > 0) return 0;
    /* %g writes "-nan" for a NaN with its sign bit set; the value is just NaN */
    if (isnan(eps)) return fail(msg, "eps must be finite and > 0, got nan");
    return fail(msg, "eps must be finite and > 0, got %g", eps);
}

int tpt_check_vector(char* msg, const char* arg, tpt_shape p, int64_t length) {
    if (p.ndim == 1 && p.sizes[0] == length) return 0;
    char got[SHAPE_TEXT];
    return fail(msg, "argument '%s' must have shape [%" PRId64 "], got %s", arg, length, shape_text(got, p));
}

int tpt_check_same_shape(char* msg, const char* arg, tpt_shape t, const char* ref_name, tpt_shape ref) {
    if (same_sizes(t, ref)) return 0;
    char got[SHAPE_TEXT], want[SHAPE_TEXT];
    return fail(msg, "argument '%s' has shape %s; expected the shape of %s %s", arg, shape_text(got, t), ref_name,
                shape_text(want, ref));
}

int tpt_check_numel(char* msg, const char* arg, int64_t numel, int64_t expected) {
    if (numel == expected) return 0;
    return fail(msg, "argument '%s' has %" PRId64 " elements; expected %" PRId64, arg, numel, expected);
}

int tpt_check_even_phase_width(char* msg, int64_t D, int64_t n_phases) {
    const int64_t P = D / n_phases;
    if (P % 2 == 0) return 0;
    return fail(msg, "the phase width P=%" PRId64 " (D=%" PRId64 ", n_phases=%" PRId64
                ") is odd; the rotation needs (even, odd) channel pairs", P, D, n_phases);
}

int tpt_check_same_precision(char* msg, const char* h_arg, const char* h_dtype, int h_is_64, const char* a_arg,
                             const char* a_dtype, int a_is_64) {
    if (!h_is_64 == !a_is_64) return 0;
    return fail(msg, "arguments '%s' and '%s' must both be float64 or both not, got %s and %s", h_arg, a_arg,
                h_dtype, a_dtype);
}

int tpt_check_positions(char* msg, const char* arg, tpt_shape x) {
    if (x.ndim >= 2) return 0;
    char got[SHAPE_TEXT];
    return fail(msg, "argument '%s' must be [..., T, D] (at least 2 dims: positions along dim -2), got %s", arg,
                shape_text(got, x));
}

int tpt_check_offset(char* msg, int64_t offset, int64_t T) {
    if (offset < 0)
        return fail(msg, "offset must be >= 0 (the absolute position of the first token), got %" PRId64, offset);
    /* positions run to offset + T - 1, and r(p) = 1/(p + 1) forms p + 1 */
    if (offset > INT64_MAX - T)
        return fail(msg, "offset=%" PRId64 " with T=%" PRId64 " positions overflows int64: offset + T must be <= %"
                    PRId64, offset, T, INT64_MAX);
    return 0;
}

int tpt_check_table(char* msg, tpt_shape table) {
    if (table.ndim == 2) return 0;
    char got[SHAPE_TEXT];
    return fail(msg, "argument 'table' must be [V, D], got %s", shape_text(got, table));
}

int tpt_check_ids_shape(char* msg, tpt_shape ids) {
    if (ids.ndim == 1 || ids.ndim == 2) return 0;
    char got[SHAPE_TEXT];
    return fail(msg, "argument 'ids' must be [T] or [B, T], got %s", shape_text(got, ids));
}

int tpt_check_ids_range(char* msg, const int64_t* ids, int64_t n, int64_t V) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return fail(msg, "argument 'ids' holds %" PRId64 " at flat index %" PRId64
                        ", out of range for a table of %" PRId64 " rows", ids[i], i, V);
    return 0;
}

int tpt_check_vocab_size(char* msg, int64_t vocab_size) {
    if (vocab_size >= 0) return 0;
    return fail(msg, "vocab_size must be >= 0, got %" PRId64, vocab_size);
}

int tpt_check_embedding_grad(char* msg, tpt_shape dy, tpt_shape ids, int64_t D) {
    int ok = dy.ndim == ids.ndim + 1 && last_dim(dy) == D;
    for (int64_t d = 0; ok && d < ids.ndim; d++) ok = dy.sizes[d] == ids.sizes[d];
    if (ok) return 0;
    char got[SHAPE_TEXT], want[SHAPE_TEXT];
    return fail(msg, "argument 'dy' has shape %s; expected the shape of ids %s plus [%" PRId64 "]",
                shape_text(got, dy), shape_text(want, ids), D);
}

int tpt_check_gate_up(char* msg, tpt_shape gate_up) {
    if (gate_up.ndim < 1) return fail(msg, "argument 'gate_up' must have at least 1 dimension, got a scalar");
    const int64_t D = last_dim(gate_up);
    if (D % 2)
        return fail(msg, "the last dim of 'gate_up' (%" PRId64
                    ") must be even: its first half is the gate, its second half the up projection", D);
    return 0;
}

int tpt_check_swiglu_grad(char* msg, tpt_shape dh, tpt_shape gate_up) {
    int ok = dh.ndim == gate_up.ndim && last_dim(dh) == last_dim(gate_up) / 2;
    for (int64_t d = 0; ok && d < gate_up.ndim - 1; d++) ok = dh.sizes[d] == gate_up.sizes[d];
    if (ok) return 0;
    char got[SHAPE_TEXT], want[SHAPE_TEXT];
    return fail(msg, "argument 'dh' has shape %s; expected the shape of gate_up %s with its last dim halved",
                shape_text(got, dh), shape_text(want, gate_up));
}

int tpt_check_head_counts(char* msg, int64_t n_q_heads, int64_t n_kv_heads) {
    if (n_q_heads < 1) return fail(msg, "argument 'n_q_heads' must be >= 1, got %" PRId64, n_q_heads);
    if (n_kv_heads < 1) return fail(msg, "argument 'n_kv_heads' must be >= 1, got %" PRId64, n_kv_heads);
    return 0;
}

static int check_head_dim(char* msg, int64_t hd) {
    if (hd % 2 == 0) return 0;
    return fail(msg, "head_dim (%" PRId64 ") is odd; rotate-half RoPE needs an even head_dim", hd);
}

int tpt_check_qkv(char* msg, tpt_shape qkv, int64_t n_q_heads, int64_t n_kv_heads) {
    char got[SHAPE_TEXT];
    if (qkv.ndim != 3)
        return fail(msg, "argument 'qkv' must be 3-d [B, T, (n_q_heads + 2*n_kv_heads)*head_dim], got %s",
                    shape_text(got, qkv));
    if (tpt_check_head_counts(msg, n_q_heads, n_kv_heads)) return 1;
    const int64_t D = qkv.sizes[2], heads = n_q_heads + 2 * n_kv_heads;
    if (D % heads)
        return fail(msg, "the last dim of 'qkv' (%" PRId64 ") is not divisible by n_q_heads + 2*n_kv_heads = %" PRId64,
                    D, heads);
    return check_head_dim(msg, D / heads);
}

int tpt_check_rope_table(char* msg, const char* arg, tpt_shape table, int64_t T, int64_t hd) {
    if (table.ndim == 2 && table.sizes[0] == T && table.sizes[1] == hd) return 0;
    char got[SHAPE_TEXT];
    return fail(msg, "argument '%s' must have shape [T, head_dim] = [%" PRId64 ", %" PRId64 "], got %s", arg, T, hd,
                shape_text(got, table));
}

int tpt_check_dq(char* msg, tpt_shape dq, int64_t n_q_heads) {
    char got[SHAPE_TEXT];
    if (dq.ndim != 4 || dq.sizes[1] != n_q_heads)
        return fail(msg, "argument 'dq' has shape %s; expected [B, n_q_heads, T, head_dim] with n_q_heads=%" PRId64,
                    shape_text(got, dq), n_q_heads);
    return check_head_dim(msg, dq.sizes[3]);
}

int tpt_check_dkv(char* msg, const char* arg, tpt_shape t, int64_t B, int64_t n_kv_heads, int64_t T, int64_t hd) {
    const int64_t want_sizes[4] = {B, n_kv_heads, T, hd};
    const tpt_shape want = {want_sizes, 4};
    if (same_sizes(t, want)) return 0;
    char got[SHAPE_TEXT];
    return fail(msg, "argument '%s' has shape %s; expected [B, n_kv_heads, T, head_dim] = [%" PRId64 ", %" PRId64
                ", %" PRId64 ", %" PRId64 "]", arg, shape_text(got, t), B, n_kv_heads, T, hd);
}

int tpt_check_moe_logits(char* msg, tpt_shape logits) {
    if (logits.ndim == 2) return 0;
    char got[SHAPE_TEXT];
    return fail(msg, "argument 'logits' must be 2-d [M, E], got %s", shape_text(got, logits));
}

int tpt_check_moe_k(char* msg, int64_t k, int64_t E) {
    if (k >= 1 && k <= E) return 0;
    return fail(msg, "k must be in [1, E] with E=%" PRId64 " experts, got %" PRId64, E, k);
}

int tpt_check_moe_capacity_factor(char* msg, double capacity_factor) {
    if (isfinite(capacity_factor) && capacity_factor > 0) return 0;
    if (isnan(capacity_factor))
        return fail(msg, "capacity_factor must be finite and > 0 (None: no capacity limit), got nan");
    return fail(msg, "capacity_factor must be finite and > 0 (None: no capacity limit), got %g", capacity_factor);
}

int tpt_check_moe_score(char* msg, const char* score) {
    if (strcmp(score, "softmax") == 0 || strcmp(score, "sigmoid") == 0) return 0;
    return fail(msg, "score must be 'softmax' or 'sigmoid', got '%s'", score);
}

int tpt_check_moe_slots(char* msg, tpt_shape slots) {
    if (slots.ndim == 2) return 0;
    char got[SHAPE_TEXT];
    return fail(msg, "argument 'slots' must be 2-d [M, k], got %s", shape_text(got, slots));
}

int tpt_check_moe_matrix(char* msg, const char* arg, tpt_shape t, const char* rows_name, int64_t rows, int64_t cols) {
    if (t.ndim == 2 && t.sizes[0] == rows && (cols < 0 || t.sizes[1] == cols)) return 0;
    char got[SHAPE_TEXT];
    if (cols < 0)
        return fail(msg, "argument '%s' must be 2-d [%s, D] with %s=%" PRId64 ", got %s", arg, rows_name, rows_name,
                    rows, shape_text(got, t));
    return fail(msg, "argument '%s' must have shape [%s, D] = [%" PRId64 ", %" PRId64 "], got %s", arg, rows_name, rows,
                cols, shape_text(got, t));
}

int tpt_check_moe_layout(char* msg, const int64_t* slots, const int64_t* slot_token, int64_t M, int64_t k) {
    const int64_t A = M * k;
    for (int64_t i = 0; i < A; i++)
        if (slots[i] < -1 || slots[i] >= A)
            return fail(msg, "argument 'slots' holds %" PRId64 " at flat index %" PRId64 ", out of range [-1, M*k=%"
                        PRId64 ")", slots[i], i, A);
    if (!slot_token) return 0;
    for (int64_t a = 0; a < A; a++)
        if (slot_token[a] < -1 || slot_token[a] >= M)
            return fail(msg, "argument 'slot_token' holds %" PRId64 " at row %" PRId64 ", out of range [-1, M=%" PRId64
                        ")", slot_token[a], a, M);
    for (int64_t i = 0; i < A; i++) {
        if (slots[i] < 0) continue;
        if (slot_token[slots[i]] != i / k)
            return fail(msg, "slots[%" PRId64 ", %" PRId64 "] = %" PRId64 " but slot_token[%" PRId64 "] = %" PRId64
                        ": slots and slot_token must come from one moe_route call", i / k, i % k, slots[i], slots[i],
                        slot_token[slots[i]]);
    }
    for (int64_t a = 0; a < A; a++) {
        const int64_t t = slot_token[a];
        int64_t j = 0;
        while (t >= 0 && j < k && slots[t * k + j] != a) j++;
        if (t >= 0 && j == k)
            return fail(msg, "slot_token[%" PRId64 "] = %" PRId64 " but no slot of token %" PRId64
                        " holds row %" PRId64 ": slots and slot_token must come from one moe_route call", a, t, t, a);
    }
    return 0;
}

int tpt_check_moe_experts(char* msg, const int64_t* experts, int64_t n, int64_t E) {
    for (int64_t i = 0; i < n; i++)
        if (experts[i] < 0 || experts[i] >= E)
            return fail(msg, "argument 'experts' holds %" PRId64 " at flat index %" PRId64 ", out of range [0, E=%"
                        PRId64 ")", experts[i], i, E);
    return 0;
}

int tpt_check_hedgehog_u(char* msg, tpt_shape u) {
    if (u.ndim < 1) return fail(msg, "argument 'u' must have at least 1 dimension, got a scalar");
    if (last_dim(u) < 1) return fail(msg, "the last dim of 'u' (F) must be >= 1, got 0");
    return 0;
}

int tpt_check_linear_attention(char* msg, tpt_shape phi_q, tpt_shape phi_k, tpt_shape v) {
    const char* names[3] = {"phi_q", "phi_k", "v"};
    const char* layouts[3] = {"[B, H, T, 2F]", "[B, Hkv, T, 2F]", "[B, Hkv, T, Dv]"};
    const tpt_shape shapes[3] = {phi_q, phi_k, v};
    char got[SHAPE_TEXT], ref[SHAPE_TEXT];
    for (int i = 0; i < 3; i++)
        if (shapes[i].ndim != 4)
            return fail(msg, "argument '%s' must be 4-d %s, got %s", names[i], layouts[i], shape_text(got, shapes[i]));
    if (v.sizes[0] != phi_k.sizes[0] || v.sizes[1] != phi_k.sizes[1] || v.sizes[2] != phi_k.sizes[2])
        return fail(msg, "argument 'v' must be [B, Hkv, T, Dv] with the B, Hkv, T of phi_k %s, got %s",
                    shape_text(ref, phi_k), shape_text(got, v));
    if (phi_q.sizes[0] != phi_k.sizes[0] || phi_q.sizes[2] != phi_k.sizes[2])
        return fail(msg, "argument 'phi_q' must be [B, H, T, 2F] with the B, T of phi_k %s, got %s",
                    shape_text(ref, phi_k), shape_text(got, phi_q));
    if (phi_q.sizes[3] != phi_k.sizes[3])
        return fail(msg, "the feature widths of phi_q (%" PRId64 ") and phi_k (%" PRId64 ") differ", phi_q.sizes[3],
                    phi_k.sizes[3]);
    const int64_t H = phi_q.sizes[1], Hkv = phi_k.sizes[1];
    if (Hkv < 1 || H < 1 || H % Hkv)
        return fail(msg, "the query heads (H=%" PRId64 ") must be a positive multiple of the key/value heads (Hkv=%"
                    PRId64 ")", H, Hkv);
    return 0;
}

int tpt_check_shape(char* msg, const char* arg, tpt_shape t, const char* names, const int64_t* sizes, int64_t ndim) {
    const tpt_shape expected = {sizes, ndim};
    if (same_sizes(t, expected)) return 0;
    char got[SHAPE_TEXT], want[SHAPE_TEXT];
    return fail(msg, "argument '%s' must have shape %s = %s, got %s", arg, names, shape_text(want, expected),
                shape_text(got, t));
}

int tpt_check_one_token(char* msg, int64_t T) {
    if (T == 1) return 0;
    return fail(msg, "a decoding step takes one token (T=1), got T=%" PRId64, T);
}

int tpt_check_same_dtype(char* msg, const char* a_arg, const char* a_dtype, const char* b_arg, const char* b_dtype) {
    if (!strcmp(a_dtype, b_dtype)) return 0;
    return fail(msg, "arguments '%s' and '%s' must have one dtype, got %s and %s", a_arg, b_arg, a_dtype, b_dtype);
}

int tpt_check_attention(char* msg, tpt_shape q, tpt_shape k, tpt_shape v, int64_t offset) {
    const char* names[3] = {"q", "k", "v"};
    const char* layouts[3] = {"[B, H, T, hd]", "[B, Hkv, Tk, hd]", "[B, Hkv, Tk, hd]"};
    const tpt_shape shapes[3] = {q, k, v};
    char got[SHAPE_TEXT], ref[SHAPE_TEXT];
    for (int i = 0; i < 3; i++)
        if (shapes[i].ndim != 4)
            return fail(msg, "argument '%s' must be 4-d %s, got %s", names[i], layouts[i], shape_text(got, shapes[i]));
    if (!same_sizes(v, k))
        return fail(msg, "argument 'v' must have the shape of k %s, got %s", shape_text(ref, k), shape_text(got, v));
    if (q.sizes[0] != k.sizes[0])
        return fail(msg, "q and k must have one batch size, got B=%" PRId64 " and B=%" PRId64, q.sizes[0],
                    k.sizes[0]);
    if (q.sizes[3] != k.sizes[3])
        return fail(msg, "the head dims of q (%" PRId64 ") and k (%" PRId64 ") differ", q.sizes[3], k.sizes[3]);
    const int64_t H = q.sizes[1], Hkv = k.sizes[1], T = q.sizes[2], Tk = k.sizes[2];
    if (Hkv < 1 || H < 1 || H % Hkv)
        return fail(msg, "the query heads (H=%" PRId64 ") must be a positive multiple of the key/value heads (Hkv=%"
                    PRId64 ")", H, Hkv);
    if (Tk < T)
        return fail(msg, "k holds Tk=%" PRId64 " keys, fewer than the T=%" PRId64 " queries of q", Tk, T);
    if (offset < 0 || offset > Tk - T)
        return fail(msg, "offset=%" PRId64 " is out of range: queries at positions offset .. offset+T-1 need 0 <= "
                    "offset <= Tk - T = %" PRId64, offset, Tk - T);
    if (Tk != offset + T)
        return fail(msg, "k must hold Tk = offset + T = %" PRId64 " keys (each query sees every key up to its own "
                    "position), got Tk=%" PRId64, offset + T, Tk);
    return 0;
}

int tpt_check_attention_scale(char* msg, double scale) {
    if (isfinite(scale) && scale > 0) return 0;
    if (isnan(scale)) return fail(msg, "scale must be finite and > 0, got nan");
    return fail(msg, "scale must be finite and > 0, got %g", scale);
}
