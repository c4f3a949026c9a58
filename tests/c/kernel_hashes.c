/* Runs every kernel family's forward and backward on fixed pseudo-random
 * inputs, for float32, float64, bfloat16 and float16 storage, and prints one
 * line "<kernel> <dtype> <hash of the output bits>" per kernel call.
 *
 *   kernel_hashes serial    each kernel over all its rows in one call
 *   kernel_hashes threads   each kernel from 3 pthreads over the disjoint row
 *                           ranges (or 128-row blocks, or attention tasks)
 *                           that the torch glue's parallel_rows gives them,
 *                           the status of every task collected as the glue
 *                           collects it
 *
 * Both modes print the same hashes. tests/test_build.py compiles this file
 * with the kernels once per x86-64 level and compares the hashes (the bits do
 * not depend on the CPU), compares the two modes (nor on the split of the
 * rows), and runs the threads mode under ThreadSanitizer.
 *
 * Sizes: 300 rows = two full 128-row blocks and a partial one; row widths
 * that are not multiples of any vector width, so every loop runs its tail.
 * Hedgehog: grouped-query heads (4 query heads over 2 key/value heads), 150
 * tokens = two full 64-token chunks and a partial one, feature width 2 * 19
 * and value width 21, both with vector tails. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "hedgehog.h"
#include "attention.h"
#include "horn.h"
#include "moe.h"
#include "norm.h"
#include "rope.h"
#include "rotate.h"
#include "swiglu.h"

/* D, P and F even: bfloat16 rows of the row kernels take their pair loops (ROW_BF16_PAIRS), 35 to 105 words
 * a row, so the vector bodies and their tails */
enum { M = 300, N_PHASES = 3, P = 70, D = N_PHASES * P, T = 100, OFFSET = 3, VOCAB = 50, F = 78 };
enum { ROPE_B = 2, ROPE_T = M / ROPE_B, ROPE_H = 4, ROPE_HKV = 2, ROPE_HD = 38 };
enum { ROPE_W = (ROPE_H + 2 * ROPE_HKV) * ROPE_HD };
enum { MOE_E = 13, MOE_K = 3, MOE_A = M * MOE_K };
static const double MOE_CAPACITY_FACTOR = 0.9, MOE_DAUX = 0.7, MOE_DZ = -0.3;
enum { HH_B = 2, HH_H = 4, HH_HKV = 2, HH_T = 150, HH_F = 19, HH_K = 2 * HH_F, HH_DV = 21 };
/* attention: queries at positions 30 .. 129 of 130 keys, a head dim that is not a multiple of 16 */
enum { AT_B = 2, AT_H = 6, AT_HKV = 2, AT_T = 100, AT_OFFSET = 30, AT_TK = AT_OFFSET + AT_T, AT_HD = 24 };
enum { AT_Q_ELEMS = AT_B * AT_H * AT_T * AT_HD, AT_K_ELEMS = AT_B * AT_HKV * AT_TK * AT_HD };
enum { HH_Q_ROWS = HH_B * HH_H * HH_T, HH_K_ROWS = HH_B * HH_HKV * HH_T, HH_ROWS = HH_Q_ROWS + HH_K_ROWS };
enum { N_THREADS = 3 };
static const double EPS = 1e-6;

/* ---- deterministic inputs ---- */

static uint64_t rng_state;

static double uniform(double lo, double hi) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return lo + (hi - lo) * ((double)(rng_state >> 11) / 9007199254740992.0);
}

static void* checked_malloc(size_t bytes) {
    void* p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "kernel_hashes: out of memory\n");
        exit(2);
    }
    return p;
}

/* n elements of storage dtype dt, uniform in [lo, hi) */
static void* storage_array(tpt_dtype dt, int64_t n, double lo, double hi) {
    char* p = checked_malloc((size_t)(n * tpt_dtype_size(dt)));
    for (int64_t i = 0; i < n; i++) {
        const double v = uniform(lo, hi);
        if (dt == TPT_FLOAT64) ((double*)p)[i] = v;
        else if (dt == TPT_FLOAT32) ((float*)p)[i] = (float)v;
        else if (dt == TPT_BFLOAT16) ((uint16_t*)p)[i] = tpt_float_to_bf16((float)v);
        else ((uint16_t*)p)[i] = tpt_float_to_f16((float)v);
    }
    return p;
}

/* the compute precision of storage dtype dt (what parameters are kept in) */
static tpt_dtype compute_dtype(tpt_dtype dt) { return dt == TPT_FLOAT64 ? TPT_FLOAT64 : TPT_FLOAT32; }

static void* param_array(tpt_dtype dt, int64_t n, double lo, double hi) {
    return storage_array(compute_dtype(dt), n, lo, hi);
}

static void* zeros(tpt_dtype dt, int64_t n) {
    void* p = checked_malloc((size_t)(n * tpt_dtype_size(dt)));
    memset(p, 0, (size_t)(n * tpt_dtype_size(dt)));
    return p;
}

/* ---- one dtype's inputs and outputs ---- */

typedef struct {
    tpt_dtype dt, ct; /* storage and compute dtypes */
    /* norm */
    void *norm_x, *norm_w, *norm_y, *norm_rstd, *norm_dy, *norm_dx, *norm_dw_partials, *norm_dw;
    /* rotate */
    void *rot_x, *rot_theta, *rot_y, *rot_dy, *rot_dx, *rot_dth_partials, *rot_dth;
    /* horn */
    void *horn_x, *horn_y, *horn_dy, *horn_dx, *emb_table, *emb_y, *emb_dy, *emb_dtable;
    int64_t *emb_ids, *emb_order, *emb_offsets, *emb_chunk_begin, *emb_id_chunks, *emb_block_chunks;
    void* emb_partials;
    /* block: h float-or-dt, a in a second dtype (autocast: bfloat16 branch on a float32 stream) */
    tpt_dtype blk_dt_a;
    void *blk_h, *blk_a, *blk_theta, *blk_w, *blk_h_new, *blk_normed, *blk_rstd;
    void *blk_dh_new, *blk_dnormed, *blk_dsum, *blk_dth_partials, *blk_dw_partials, *blk_dth, *blk_dw;
    /* swiglu */
    void *sw_gu, *sw_h, *sw_dh, *sw_dgu, *sw_dgu_inplace;
    /* rope */
    void *rope_qkv, *rope_cos, *rope_sin, *rope_q, *rope_k, *rope_v, *rope_dq, *rope_dk, *rope_dv, *rope_dqkv;
    /* moe: route with a bias and capacity dropping, then the data path over [M, D] rows */
    void *moe_logits, *moe_bias, *moe_gates, *moe_prob_partials, *moe_lse_partials, *moe_prob_sums, *moe_lse_sum;
    void *moe_aux, *moe_z, *moe_dgates, *moe_dlogits, *moe_x, *moe_buf, *moe_dbuf, *moe_dx, *moe_y, *moe_dy;
    void *moe_dout, *moe_dgates_out;
    int64_t *moe_experts, *moe_slots, *moe_slot_token, *moe_counts;
    /* hedgehog: u holds the query rows then the key rows, so the feature map writes phi_q then phi_k into phi */
    void *hh_u, *hh_phi, *hh_phi_q, *hh_phi_k, *hh_dphi, *hh_du, *hh_v;
    void *hh_y_causal, *hh_S, *hh_z, *hh_dy, *hh_dq_causal, *hh_dk_causal, *hh_dv_causal;
    void *hh_y_full, *hh_dq_full, *hh_dk_full, *hh_dv_full;
    void *hh_step_q, *hh_step_k, *hh_step_v, *hh_step_y, *hh_step_S, *hh_step_z;
    /* attention: the backward reads the forward's out and lse */
    void *at_q, *at_k, *at_v, *at_out, *at_lse, *at_dout, *at_dq, *at_dk, *at_dv;
} Case;

static Case make_case(tpt_dtype dt) {
    Case c;
    memset(&c, 0, sizeof c);
    c.dt = dt;
    c.ct = compute_dtype(dt);
    const int64_t nb = tpt_num_row_blocks(M);
    c.norm_x = storage_array(dt, M * D, -2, 2);
    c.norm_w = param_array(dt, D, 0.5, 1.5);
    c.norm_y = zeros(dt, M * D);
    c.norm_rstd = zeros(c.ct, M * N_PHASES);
    c.norm_dy = storage_array(dt, M * D, -1, 1);
    c.norm_dx = zeros(dt, M * D);
    c.norm_dw_partials = zeros(c.ct, nb * D);
    c.norm_dw = zeros(c.ct, D);

    c.rot_x = storage_array(dt, M * D, -2, 2);
    c.rot_theta = param_array(dt, P / 2, -3.2, 3.2);
    c.rot_y = zeros(dt, M * D);
    c.rot_dy = storage_array(dt, M * D, -1, 1);
    c.rot_dx = zeros(dt, M * D);
    c.rot_dth_partials = zeros(c.ct, nb * (P / 2));
    c.rot_dth = zeros(c.ct, P / 2);

    c.horn_x = storage_array(dt, M * D, -2, 2);
    c.horn_y = zeros(dt, M * D);
    c.horn_dy = storage_array(dt, M * D, -1, 1);
    c.horn_dx = zeros(dt, M * D);
    c.emb_table = storage_array(dt, VOCAB * D, -1, 1);
    c.emb_ids = checked_malloc(M * sizeof(int64_t));
    /* id VOCAB-1 never used; id 0 is every other token, so that it spans two TPT_ROW_BLOCK chunks */
    for (int64_t m = 0; m < M; m++) c.emb_ids[m] = m % 2 ? 0 : (int64_t)uniform(1, VOCAB - 1);
    c.emb_y = zeros(dt, M * D);
    c.emb_dy = storage_array(dt, M * D, -1, 1);
    c.emb_dtable = zeros(dt, VOCAB * D);
    c.emb_order = checked_malloc(M * sizeof(int64_t));
    c.emb_offsets = checked_malloc((VOCAB + 1) * sizeof(int64_t));
    c.emb_chunk_begin = checked_malloc((horn_embedding_max_chunks(M, VOCAB) + 1) * sizeof(int64_t));
    c.emb_id_chunks = checked_malloc((VOCAB + 1) * sizeof(int64_t));
    c.emb_block_chunks = checked_malloc((tpt_num_row_blocks(M) + 1) * sizeof(int64_t));
    c.emb_partials = zeros(c.ct, horn_embedding_max_chunks(M, VOCAB) * D);

    c.blk_dt_a = dt == TPT_FLOAT32 ? TPT_BFLOAT16 : dt;
    c.blk_h = storage_array(dt, M * D, -2, 2);
    c.blk_a = storage_array(c.blk_dt_a, M * D, -1, 1);
    c.blk_theta = param_array(dt, P / 2, -3.2, 3.2);
    c.blk_w = param_array(dt, D, 0.5, 1.5);
    c.blk_h_new = zeros(dt, M * D);
    c.blk_normed = zeros(dt, M * D);
    c.blk_rstd = zeros(c.ct, M * N_PHASES);
    c.blk_dh_new = storage_array(dt, M * D, -1, 1);
    c.blk_dnormed = storage_array(dt, M * D, -1, 1);
    c.blk_dsum = zeros(dt, M * D);
    c.blk_dth_partials = zeros(c.ct, nb * (P / 2));
    c.blk_dw_partials = zeros(c.ct, nb * D);
    c.blk_dth = zeros(c.ct, P / 2);
    c.blk_dw = zeros(c.ct, D);

    /* gates over [-12, 12]: both signs and the saturating ends of the sigmoid */
    c.sw_gu = storage_array(dt, M * 2 * F, -12, 12);
    c.sw_h = zeros(dt, M * F);
    c.sw_dh = storage_array(dt, M * F, -1, 1);
    c.sw_dgu = zeros(dt, M * 2 * F);
    c.sw_dgu_inplace = zeros(dt, M * 2 * F);

    c.rope_qkv = storage_array(dt, M * ROPE_W, -2, 2);
    c.rope_cos = param_array(dt, ROPE_T * ROPE_HD, -1, 1);
    c.rope_sin = param_array(dt, ROPE_T * ROPE_HD, -1, 1);
    c.rope_q = zeros(dt, M * ROPE_H * ROPE_HD);
    c.rope_k = zeros(dt, M * ROPE_HKV * ROPE_HD);
    c.rope_v = zeros(dt, M * ROPE_HKV * ROPE_HD);
    c.rope_dq = storage_array(dt, M * ROPE_H * ROPE_HD, -1, 1);
    c.rope_dk = storage_array(dt, M * ROPE_HKV * ROPE_HD, -1, 1);
    c.rope_dv = storage_array(dt, M * ROPE_HKV * ROPE_HD, -1, 1);
    c.rope_dqkv = zeros(dt, M * ROPE_W);

    c.moe_logits = storage_array(dt, M * MOE_E, -4, 4);
    c.moe_bias = param_array(dt, MOE_E, -0.05, 0.05);
    c.moe_gates = zeros(c.ct, MOE_A);
    c.moe_prob_partials = zeros(c.ct, nb * MOE_E);
    c.moe_lse_partials = zeros(c.ct, nb);
    c.moe_prob_sums = zeros(c.ct, MOE_E);
    c.moe_lse_sum = zeros(c.ct, 1);
    c.moe_aux = zeros(c.ct, 1);
    c.moe_z = zeros(c.ct, 1);
    c.moe_experts = checked_malloc(MOE_A * sizeof(int64_t));
    c.moe_slots = checked_malloc(MOE_A * sizeof(int64_t));
    c.moe_slot_token = checked_malloc(MOE_A * sizeof(int64_t));
    c.moe_counts = checked_malloc(MOE_E * sizeof(int64_t));
    c.moe_dgates = param_array(dt, MOE_A, -1, 1);
    c.moe_dlogits = zeros(dt, M * MOE_E);
    c.moe_x = storage_array(dt, M * D, -2, 2);
    c.moe_buf = zeros(dt, MOE_A * D);
    c.moe_dbuf = storage_array(dt, MOE_A * D, -1, 1);
    c.moe_dx = zeros(dt, M * D);
    c.moe_y = zeros(dt, M * D);
    c.moe_dy = storage_array(dt, M * D, -1, 1);
    c.moe_dout = zeros(dt, MOE_A * D);
    c.moe_dgates_out = zeros(c.ct, MOE_A);

    c.hh_u = storage_array(dt, HH_ROWS * HH_F, -3, 3);
    c.hh_phi = zeros(dt, HH_ROWS * HH_K);
    c.hh_phi_q = c.hh_phi;
    c.hh_phi_k = (char*)c.hh_phi + HH_Q_ROWS * HH_K * tpt_dtype_size(dt);
    c.hh_dphi = storage_array(dt, HH_ROWS * HH_K, -1, 1);
    c.hh_du = zeros(dt, HH_ROWS * HH_F);
    c.hh_v = storage_array(dt, HH_K_ROWS * HH_DV, -2, 2);
    c.hh_y_causal = zeros(dt, HH_Q_ROWS * HH_DV);
    c.hh_S = zeros(c.ct, HH_B * HH_HKV * HH_K * HH_DV);
    c.hh_z = zeros(c.ct, HH_B * HH_HKV * HH_K);
    c.hh_dy = storage_array(dt, HH_Q_ROWS * HH_DV, -1, 1);
    c.hh_dq_causal = zeros(dt, HH_Q_ROWS * HH_K);
    c.hh_dk_causal = zeros(dt, HH_K_ROWS * HH_K);
    c.hh_dv_causal = zeros(dt, HH_K_ROWS * HH_DV);
    c.hh_y_full = zeros(dt, HH_Q_ROWS * HH_DV);
    c.hh_dq_full = zeros(dt, HH_Q_ROWS * HH_K);
    c.hh_dk_full = zeros(dt, HH_K_ROWS * HH_K);
    c.hh_dv_full = zeros(dt, HH_K_ROWS * HH_DV);
    /* the decoding token after the prefill: positive features, as the feature map gives */
    c.hh_step_q = storage_array(dt, HH_B * HH_H * HH_K, 0, 0.1);
    c.hh_step_k = storage_array(dt, HH_B * HH_HKV * HH_K, 0, 0.1);
    c.hh_step_v = storage_array(dt, HH_B * HH_HKV * HH_DV, -2, 2);
    c.hh_step_y = zeros(dt, HH_B * HH_H * HH_DV);
    c.hh_step_S = zeros(c.ct, HH_B * HH_HKV * HH_K * HH_DV);
    c.hh_step_z = zeros(c.ct, HH_B * HH_HKV * HH_K);
    c.at_q = storage_array(dt, AT_Q_ELEMS, -2, 2);
    c.at_k = storage_array(dt, AT_K_ELEMS, -2, 2);
    c.at_v = storage_array(dt, AT_K_ELEMS, -1, 1);
    c.at_out = zeros(dt, AT_Q_ELEMS);
    c.at_lse = zeros(c.ct, AT_B * AT_H * AT_T);
    c.at_dout = storage_array(dt, AT_Q_ELEMS, -1, 1);
    c.at_dq = zeros(dt, AT_Q_ELEMS);
    c.at_dk = zeros(dt, AT_K_ELEMS);
    c.at_dv = zeros(dt, AT_K_ELEMS);
    return c;
}

/* ---- the kernel calls ---- */

typedef enum {
    NORM_FORWARD, NORM_BACKWARD, ROTATE_FORWARD, ROTATE_BACKWARD, HORN_INJECT_FORWARD, HORN_INJECT_BACKWARD,
    HORN_EMBEDDING_FORWARD, HORN_EMBEDDING_BACKWARD, ADD_ROTATE_NORM_FORWARD, ADD_ROTATE_NORM_BACKWARD,
    ADD_NORM_FORWARD, ADD_NORM_BACKWARD, SWIGLU_FORWARD, SWIGLU_BACKWARD, SWIGLU_BACKWARD_INPLACE,
    QKV_ROPE_FORWARD, QKV_ROPE_BACKWARD, MOE_ROUTE_FORWARD, MOE_ROUTE_BACKWARD, MOE_PERMUTE_FORWARD,
    MOE_PERMUTE_BACKWARD, MOE_UNPERMUTE_FORWARD, MOE_UNPERMUTE_BACKWARD, HEDGEHOG_FEATURE_MAP_FORWARD,
    HEDGEHOG_FEATURE_MAP_BACKWARD, LINEAR_ATTENTION_PREFILL, LINEAR_ATTENTION_CAUSAL_BACKWARD,
    LINEAR_ATTENTION_NONCAUSAL_FORWARD, LINEAR_ATTENTION_NONCAUSAL_BACKWARD, LINEAR_ATTENTION_STEP, ATTENTION_FORWARD,
    ATTENTION_BACKWARD, N_KERNELS
} Kernel;

static const char* const KERNEL_NAMES[N_KERNELS] = {
    "phase_rmsnorm_forward", "phase_rmsnorm_backward", "phase_rotate_forward", "phase_rotate_backward",
    "horn_inject_forward", "horn_inject_backward", "horn_embedding_forward", "horn_embedding_backward",
    "add_rotate_norm_forward", "add_rotate_norm_backward", "add_norm_forward", "add_norm_backward",
    "swiglu_forward", "swiglu_backward", "swiglu_backward_inplace", "qkv_rope_forward", "qkv_rope_backward",
    "moe_route_forward", "moe_route_backward", "moe_permute_forward", "moe_permute_backward",
    "moe_unpermute_forward", "moe_unpermute_backward", "hedgehog_feature_map_forward",
    "hedgehog_feature_map_backward", "linear_attention_prefill", "linear_attention_causal_backward",
    "linear_attention_noncausal_forward", "linear_attention_noncausal_backward", "linear_attention_step",
    "causal_attention_forward", "causal_attention_backward"};

/* Calls the float64 or the float32 kernel; parameters are void* here and
 * convert to either kernel's real*. */
#define CALL(c, name, ...) ((c)->dt == TPT_FLOAT64 ? name##_f64(__VA_ARGS__) : name##_f32(__VA_ARGS__))

static int is_block_kernel(Kernel k) {
    return k == NORM_BACKWARD || k == ROTATE_BACKWARD || k == ADD_ROTATE_NORM_BACKWARD || k == ADD_NORM_BACKWARD ||
           k == MOE_ROUTE_FORWARD || k == HORN_EMBEDDING_BACKWARD;
}

/* The attention kernels split over head tasks: (b, h) for the linear-attention forwards, (b, g, query tile) for the
 * softmax forward, (b, g) for the backwards and the step. */
static int is_attention_kernel(Kernel k) {
    return k == LINEAR_ATTENTION_PREFILL || k == LINEAR_ATTENTION_CAUSAL_BACKWARD ||
           k == LINEAR_ATTENTION_NONCAUSAL_FORWARD || k == LINEAR_ATTENTION_NONCAUSAL_BACKWARD ||
           k == LINEAR_ATTENTION_STEP || k == ATTENTION_FORWARD || k == ATTENTION_BACKWARD;
}

/* How many items (rows, row or token blocks, or attention tasks) the glue splits. */
static int64_t extent(Kernel k) {
    if (is_block_kernel(k)) return tpt_num_row_blocks(M);
    if (k == LINEAR_ATTENTION_PREFILL || k == LINEAR_ATTENTION_NONCAUSAL_FORWARD) return HH_B * HH_H;
    if (k == ATTENTION_FORWARD) return tpt_attention_forward_tasks(AT_B, AT_HKV, AT_T);
    if (k == ATTENTION_BACKWARD) return AT_B * AT_HKV;
    if (is_attention_kernel(k)) return HH_B * HH_HKV;
    if (k == HEDGEHOG_FEATURE_MAP_FORWARD || k == HEDGEHOG_FEATURE_MAP_BACKWARD) return HH_ROWS;
    if (k == MOE_PERMUTE_FORWARD || k == MOE_UNPERMUTE_BACKWARD) return MOE_A;
    return M;
}

/* The glue's grain: about 64 KiB of row data a task for row kernels, one block a task for block kernels, one
 * head (or head group) a task for attention kernels. */
static int64_t grain(Kernel k) {
    if (is_block_kernel(k) || is_attention_kernel(k)) return 1;
    const int64_t width = k == QKV_ROPE_FORWARD || k == QKV_ROPE_BACKWARD ? ROPE_W
                          : k == SWIGLU_FORWARD || k == SWIGLU_BACKWARD || k == SWIGLU_BACKWARD_INPLACE ? 2 * F
                          : k == MOE_ROUTE_BACKWARD                                                     ? 4 * MOE_E
                          : k == MOE_PERMUTE_BACKWARD || k == MOE_UNPERMUTE_FORWARD                     ? MOE_K * D
                          : k == MOE_UNPERMUTE_BACKWARD                                                 ? 2 * D
                          : k == HEDGEHOG_FEATURE_MAP_FORWARD                                           ? 3 * HH_F
                          : k == HEDGEHOG_FEATURE_MAP_BACKWARD                                          ? 6 * HH_F
                                                                                                        : D;
    return 16384 / width > 1 ? 16384 / width : 1;
}

/* [B, heads, T, hd] strides; dq is read as [B, T, heads, hd] memory, as attention backwards return it. */
static tpt_head_strides head_major(int64_t heads) {
    tpt_head_strides s = {heads * ROPE_T * ROPE_HD, ROPE_T * ROPE_HD, ROPE_HD};
    return s;
}
static tpt_head_strides time_major(int64_t heads) {
    tpt_head_strides s = {ROPE_T * heads * ROPE_HD, ROPE_HD, heads * ROPE_HD};
    return s;
}

/* Items [begin, end) of kernel k. */
static int run_range(Case* c, Kernel k, int64_t begin, int64_t end) {
    const tpt_dtype dt = c->dt;
    switch (k) {
    case NORM_FORWARD:
        return CALL(c, phase_rmsnorm_forward, c->norm_y, c->norm_rstd, c->norm_x, c->norm_w, dt, begin, end, D,
                    N_PHASES, EPS);
    case NORM_BACKWARD:
        return CALL(c, phase_rmsnorm_backward, c->norm_dx, c->norm_dw_partials, c->norm_dy, c->norm_x, c->norm_w,
                    c->norm_rstd, dt, begin, end, M, D, N_PHASES);
    case ROTATE_FORWARD:
        return CALL(c, phase_rotate_forward, c->rot_y, c->rot_x, c->rot_theta, dt, begin, end, D, N_PHASES);
    case ROTATE_BACKWARD:
        return CALL(c, phase_rotate_backward, c->rot_dx, c->rot_dth_partials, c->rot_dy, c->rot_y, c->rot_theta, dt,
                    begin, end, M, D, N_PHASES);
    case HORN_INJECT_FORWARD:
        return CALL(c, horn_inject_forward, c->horn_y, c->horn_x, dt, begin, end, T, D, OFFSET);
    case HORN_INJECT_BACKWARD:
        return CALL(c, horn_inject_backward, c->horn_dx, c->horn_dy, dt, begin, end, D);
    case HORN_EMBEDDING_FORWARD:
        return CALL(c, horn_embedding_forward, c->emb_y, c->emb_ids, c->emb_table, dt, begin, end, T, D, OFFSET);
    case HORN_EMBEDDING_BACKWARD:
        return CALL(c, horn_embedding_backward, c->emb_partials, c->emb_dy, c->emb_order, c->emb_chunk_begin, dt,
                    c->emb_block_chunks[begin], c->emb_block_chunks[end], D);
    case ADD_ROTATE_NORM_FORWARD:
    case ADD_NORM_FORWARD:
        return CALL(c, add_rotate_norm_forward, c->blk_h_new, c->blk_normed, c->blk_rstd, c->blk_h, dt, c->blk_a,
                    c->blk_dt_a, k == ADD_NORM_FORWARD ? NULL : c->blk_theta, c->blk_w, begin, end, D, N_PHASES,
                    EPS);
    case ADD_ROTATE_NORM_BACKWARD:
    case ADD_NORM_BACKWARD:
        return CALL(c, add_rotate_norm_backward, c->blk_dsum, c->blk_dth_partials, c->blk_dw_partials,
                    c->blk_dh_new, c->blk_dnormed, c->blk_h_new, k == ADD_NORM_BACKWARD ? NULL : c->blk_theta,
                    c->blk_w, c->blk_rstd, dt, begin, end, M, D, N_PHASES);
    case SWIGLU_FORWARD:
        return CALL(c, swiglu_forward, c->sw_h, c->sw_gu, dt, begin, end, F);
    case SWIGLU_BACKWARD:
        return CALL(c, swiglu_backward, c->sw_dgu, c->sw_dh, c->sw_gu, dt, begin, end, F);
    case SWIGLU_BACKWARD_INPLACE:
        return CALL(c, swiglu_backward, c->sw_dgu_inplace, c->sw_dh, c->sw_dgu_inplace, dt, begin, end, F);
    case QKV_ROPE_FORWARD:
        return CALL(c, qkv_rope_forward, c->rope_q, c->rope_k, c->rope_v, c->rope_qkv, c->rope_cos, c->rope_sin, dt,
                    begin, end, ROPE_T, ROPE_H, ROPE_HKV, ROPE_HD);
    case QKV_ROPE_BACKWARD:
        return CALL(c, qkv_rope_backward, c->rope_dqkv, c->rope_dq, time_major(ROPE_H), c->rope_dk,
                    head_major(ROPE_HKV), c->rope_dv, head_major(ROPE_HKV), c->rope_cos, c->rope_sin, dt, begin, end,
                    ROPE_T, ROPE_H, ROPE_HKV, ROPE_HD);
    case MOE_ROUTE_FORWARD:
        return CALL(c, moe_route_forward, c->moe_gates, c->moe_experts, c->moe_prob_partials, c->moe_lse_partials,
                    c->moe_logits, c->moe_bias, dt, begin, end, M, MOE_E, MOE_K, 1, TPT_MOE_SOFTMAX);
    case MOE_ROUTE_BACKWARD:
        return CALL(c, moe_route_backward, c->moe_dlogits, c->moe_dgates, MOE_DAUX, MOE_DZ, c->moe_logits,
                    c->moe_experts, c->moe_gates, c->moe_slots, c->moe_counts, dt, begin, end, M, MOE_E, MOE_K, 1,
                    TPT_MOE_SOFTMAX);
    case MOE_PERMUTE_FORWARD:
        return moe_permute_forward(c->moe_buf, c->moe_x, c->moe_slot_token, dt, begin, end, D);
    case MOE_PERMUTE_BACKWARD:
        return CALL(c, moe_permute_backward, c->moe_dx, c->moe_dbuf, c->moe_slots, dt, begin, end, MOE_K, D);
    case MOE_UNPERMUTE_FORWARD:
        return CALL(c, moe_unpermute_forward, c->moe_y, c->moe_buf, c->moe_gates, c->moe_slots, dt, begin, end,
                    MOE_K, D);
    case MOE_UNPERMUTE_BACKWARD:
        return CALL(c, moe_unpermute_backward, c->moe_dout, c->moe_dgates_out, c->moe_dy, c->moe_buf, c->moe_gates,
                    c->moe_slots, c->moe_slot_token, dt, begin, end, MOE_K, D);
    case HEDGEHOG_FEATURE_MAP_FORWARD:
        return CALL(c, hedgehog_feature_map_forward, c->hh_phi, c->hh_u, dt, begin, end, HH_F);
    case HEDGEHOG_FEATURE_MAP_BACKWARD:
        return CALL(c, hedgehog_feature_map_backward, c->hh_du, c->hh_dphi, c->hh_u, dt, begin, end, HH_F);
    case LINEAR_ATTENTION_PREFILL:
        return CALL(c, linear_attention_forward, c->hh_y_causal, c->hh_S, c->hh_z, c->hh_phi_q, c->hh_phi_k,
                    c->hh_v, dt, begin, end, HH_H, HH_HKV, HH_T, HH_K, HH_DV, 1, EPS);
    case LINEAR_ATTENTION_CAUSAL_BACKWARD:
        return CALL(c, linear_attention_backward, c->hh_dq_causal, c->hh_dk_causal, c->hh_dv_causal, c->hh_dy,
                    c->hh_phi_q, c->hh_phi_k, c->hh_v, dt, begin, end, HH_H, HH_HKV, HH_T, HH_K, HH_DV, 1, EPS);
    case LINEAR_ATTENTION_NONCAUSAL_FORWARD:
        return CALL(c, linear_attention_forward, c->hh_y_full, NULL, NULL, c->hh_phi_q, c->hh_phi_k, c->hh_v, dt,
                    begin, end, HH_H, HH_HKV, HH_T, HH_K, HH_DV, 0, EPS);
    case LINEAR_ATTENTION_NONCAUSAL_BACKWARD:
        return CALL(c, linear_attention_backward, c->hh_dq_full, c->hh_dk_full, c->hh_dv_full, c->hh_dy,
                    c->hh_phi_q, c->hh_phi_k, c->hh_v, dt, begin, end, HH_H, HH_HKV, HH_T, HH_K, HH_DV, 0, EPS);
    case LINEAR_ATTENTION_STEP: /* from the prefill's state */
        return CALL(c, linear_attention_step, c->hh_step_y, c->hh_step_S, c->hh_step_z, c->hh_step_q,
                    c->hh_step_k, c->hh_step_v, c->hh_S, c->hh_z, dt, begin, end, HH_H, HH_HKV, HH_K, HH_DV, EPS);
    case ATTENTION_FORWARD:
        return CALL(c, attention_forward, c->at_out, c->at_lse, c->at_q, c->at_k, c->at_v, dt, begin, end, AT_H,
                    AT_HKV, AT_T, AT_TK, AT_HD, AT_TK * AT_HD, AT_OFFSET, 0.3);
    case ATTENTION_BACKWARD:
        return CALL(c, attention_backward, c->at_dq, c->at_dk, c->at_dv, c->at_dout, c->at_q, c->at_k, c->at_v,
                    c->at_out, c->at_lse, dt, begin, end, AT_H, AT_HKV, AT_T, AT_TK, AT_HD, AT_TK * AT_HD,
                    AT_OFFSET, 0.3);
    default:
        return -1;
    }
}

/* What the glue does on one thread before a kernel (horn_embedding_group and
 * its chunks) or after it (the fixed-order sum of the row-block or chunk partials). */
static void before(Case* c, Kernel k) {
    if (k == HORN_EMBEDDING_BACKWARD) {
        horn_embedding_group(c->emb_order, c->emb_offsets, c->emb_ids, M, VOCAB);
        horn_embedding_chunks(c->emb_chunk_begin, c->emb_id_chunks, c->emb_block_chunks, c->emb_offsets, VOCAB);
    }
    if (k == SWIGLU_BACKWARD_INPLACE)
        memcpy(c->sw_dgu_inplace, c->sw_gu, (size_t)(M * 2 * F * tpt_dtype_size(c->dt)));
    if (k == MOE_UNPERMUTE_BACKWARD) memset(c->moe_dgates_out, 0, (size_t)(MOE_A * tpt_dtype_size(c->ct)));
}

static void sum_partials(Case* c, void* out, const void* partials, int64_t n) {
    const int64_t nb = tpt_num_row_blocks(M);
    if (c->ct == TPT_FLOAT64) tpt_sum_partials_f64(out, partials, nb, n, 0, n);
    else tpt_sum_partials_f32(out, partials, nb, n, 0, n);
}

static void after(Case* c, Kernel k) {
    if (k == HORN_EMBEDDING_BACKWARD &&
        CALL(c, horn_embedding_backward_combine, c->emb_dtable, c->emb_partials, c->emb_id_chunks, c->dt, 0, VOCAB,
             D) != TPT_OK) {
        fprintf(stderr, "kernel_hashes: horn_embedding_backward_combine failed\n");
        exit(2);
    }
    if (k == NORM_BACKWARD) sum_partials(c, c->norm_dw, c->norm_dw_partials, D);
    if (k == ROTATE_BACKWARD) sum_partials(c, c->rot_dth, c->rot_dth_partials, P / 2);
    if (k == ADD_ROTATE_NORM_BACKWARD || k == ADD_NORM_BACKWARD) {
        sum_partials(c, c->blk_dw, c->blk_dw_partials, D);
        if (k == ADD_ROTATE_NORM_BACKWARD) sum_partials(c, c->blk_dth, c->blk_dth_partials, P / 2);
    }
    if (k == MOE_ROUTE_FORWARD) { /* the glue's serial steps after the row blocks */
        sum_partials(c, c->moe_prob_sums, c->moe_prob_partials, MOE_E);
        sum_partials(c, c->moe_lse_sum, c->moe_lse_partials, 1);
        const int64_t capacity = moe_capacity(MOE_CAPACITY_FACTOR, M, MOE_E, MOE_K);
        if (moe_route_assign(c->moe_slots, c->moe_slot_token, c->moe_counts, c->moe_experts, M, MOE_E, MOE_K,
                             capacity) != TPT_OK) {
            fprintf(stderr, "kernel_hashes: moe_route_assign failed\n");
            exit(2);
        }
        if (c->ct == TPT_FLOAT64)
            moe_route_losses_f64(c->moe_gates, c->moe_aux, c->moe_z, c->moe_slots, c->moe_counts, c->moe_prob_sums,
                                 *(double*)c->moe_lse_sum, M, MOE_E, MOE_K);
        else
            moe_route_losses_f32(c->moe_gates, c->moe_aux, c->moe_z, c->moe_slots, c->moe_counts, c->moe_prob_sums,
                                 *(float*)c->moe_lse_sum, M, MOE_E, MOE_K);
    }
}

/* ---- hashing the outputs ---- */

static uint64_t fnv1a(uint64_t h, const void* p, int64_t n_elements, tpt_dtype dt) {
    const unsigned char* b = p;
    for (int64_t i = 0; i < n_elements * tpt_dtype_size(dt); i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* int64 indices hash as 8-byte elements, the size of a float64 */
#define INDEX_BYTES TPT_FLOAT64

static uint64_t output_hash(const Case* c, Kernel k) {
    const tpt_dtype dt = c->dt, ct = c->ct;
    uint64_t h = 0xcbf29ce484222325ull;
    switch (k) {
    case NORM_FORWARD: h = fnv1a(h, c->norm_y, M * D, dt); return fnv1a(h, c->norm_rstd, M * N_PHASES, ct);
    case NORM_BACKWARD: h = fnv1a(h, c->norm_dx, M * D, dt); return fnv1a(h, c->norm_dw, D, ct);
    case ROTATE_FORWARD: return fnv1a(h, c->rot_y, M * D, dt);
    case ROTATE_BACKWARD: h = fnv1a(h, c->rot_dx, M * D, dt); return fnv1a(h, c->rot_dth, P / 2, ct);
    case HORN_INJECT_FORWARD: return fnv1a(h, c->horn_y, M * D, dt);
    case HORN_INJECT_BACKWARD: return fnv1a(h, c->horn_dx, M * D, dt);
    case HORN_EMBEDDING_FORWARD: return fnv1a(h, c->emb_y, M * D, dt);
    case HORN_EMBEDDING_BACKWARD: return fnv1a(h, c->emb_dtable, VOCAB * D, dt);
    case ADD_ROTATE_NORM_FORWARD:
    case ADD_NORM_FORWARD:
        h = fnv1a(h, c->blk_h_new, M * D, dt);
        h = fnv1a(h, c->blk_normed, M * D, dt);
        return fnv1a(h, c->blk_rstd, M * N_PHASES, ct);
    case ADD_ROTATE_NORM_BACKWARD:
        h = fnv1a(h, c->blk_dsum, M * D, dt);
        h = fnv1a(h, c->blk_dw, D, ct);
        return fnv1a(h, c->blk_dth, P / 2, ct);
    case ADD_NORM_BACKWARD: h = fnv1a(h, c->blk_dsum, M * D, dt); return fnv1a(h, c->blk_dw, D, ct);
    case SWIGLU_FORWARD: return fnv1a(h, c->sw_h, M * F, dt);
    case SWIGLU_BACKWARD: return fnv1a(h, c->sw_dgu, M * 2 * F, dt);
    case SWIGLU_BACKWARD_INPLACE: return fnv1a(h, c->sw_dgu_inplace, M * 2 * F, dt);
    case QKV_ROPE_FORWARD:
        h = fnv1a(h, c->rope_q, M * ROPE_H * ROPE_HD, dt);
        h = fnv1a(h, c->rope_k, M * ROPE_HKV * ROPE_HD, dt);
        return fnv1a(h, c->rope_v, M * ROPE_HKV * ROPE_HD, dt);
    case QKV_ROPE_BACKWARD: return fnv1a(h, c->rope_dqkv, M * ROPE_W, dt);
    case MOE_ROUTE_FORWARD:
        h = fnv1a(h, c->moe_gates, MOE_A, ct);
        h = fnv1a(h, c->moe_experts, MOE_A, INDEX_BYTES);
        h = fnv1a(h, c->moe_slots, MOE_A, INDEX_BYTES);
        h = fnv1a(h, c->moe_slot_token, MOE_A, INDEX_BYTES);
        h = fnv1a(h, c->moe_counts, MOE_E, INDEX_BYTES);
        h = fnv1a(h, c->moe_aux, 1, ct);
        return fnv1a(h, c->moe_z, 1, ct);
    case MOE_ROUTE_BACKWARD: return fnv1a(h, c->moe_dlogits, M * MOE_E, dt);
    case MOE_PERMUTE_FORWARD: return fnv1a(h, c->moe_buf, MOE_A * D, dt);
    case MOE_PERMUTE_BACKWARD: return fnv1a(h, c->moe_dx, M * D, dt);
    case MOE_UNPERMUTE_FORWARD: return fnv1a(h, c->moe_y, M * D, dt);
    case MOE_UNPERMUTE_BACKWARD: h = fnv1a(h, c->moe_dout, MOE_A * D, dt); return fnv1a(h, c->moe_dgates_out, MOE_A, ct);
    case HEDGEHOG_FEATURE_MAP_FORWARD: return fnv1a(h, c->hh_phi, HH_ROWS * HH_K, dt);
    case HEDGEHOG_FEATURE_MAP_BACKWARD: return fnv1a(h, c->hh_du, HH_ROWS * HH_F, dt);
    case LINEAR_ATTENTION_PREFILL:
        h = fnv1a(h, c->hh_y_causal, HH_Q_ROWS * HH_DV, dt);
        h = fnv1a(h, c->hh_S, HH_B * HH_HKV * HH_K * HH_DV, ct);
        return fnv1a(h, c->hh_z, HH_B * HH_HKV * HH_K, ct);
    case LINEAR_ATTENTION_CAUSAL_BACKWARD:
        h = fnv1a(h, c->hh_dq_causal, HH_Q_ROWS * HH_K, dt);
        h = fnv1a(h, c->hh_dk_causal, HH_K_ROWS * HH_K, dt);
        return fnv1a(h, c->hh_dv_causal, HH_K_ROWS * HH_DV, dt);
    case LINEAR_ATTENTION_NONCAUSAL_FORWARD: return fnv1a(h, c->hh_y_full, HH_Q_ROWS * HH_DV, dt);
    case LINEAR_ATTENTION_NONCAUSAL_BACKWARD:
        h = fnv1a(h, c->hh_dq_full, HH_Q_ROWS * HH_K, dt);
        h = fnv1a(h, c->hh_dk_full, HH_K_ROWS * HH_K, dt);
        return fnv1a(h, c->hh_dv_full, HH_K_ROWS * HH_DV, dt);
    case LINEAR_ATTENTION_STEP:
        h = fnv1a(h, c->hh_step_y, HH_B * HH_H * HH_DV, dt);
        h = fnv1a(h, c->hh_step_S, HH_B * HH_HKV * HH_K * HH_DV, ct);
        return fnv1a(h, c->hh_step_z, HH_B * HH_HKV * HH_K, ct);
    case ATTENTION_FORWARD: h = fnv1a(h, c->at_out, AT_Q_ELEMS, dt); return fnv1a(h, c->at_lse, AT_B * AT_H * AT_T, ct);
    case ATTENTION_BACKWARD:
        h = fnv1a(h, c->at_dq, AT_Q_ELEMS, dt);
        h = fnv1a(h, c->at_dk, AT_K_ELEMS, dt);
        return fnv1a(h, c->at_dv, AT_K_ELEMS, dt);
    default: return 0;
    }
}

/* ---- the glue's parallel_rows, on pthreads ---- */

typedef struct {
    Case* c;
    Kernel k;
    int64_t begin, end;
    atomic_int* status; /* the first failure of any task, TPT_OK if none */
} Task;

static void* run_task(void* arg) {
    Task* t = arg;
    const int s = run_range(t->c, t->k, t->begin, t->end);
    int expected = TPT_OK;
    if (s != TPT_OK) atomic_compare_exchange_strong(t->status, &expected, s);
    return NULL;
}

/* torch's parallel_for split of [0, n): min(threads, ceil(n / grain)) tasks of ceil(n / tasks) items. */
static int parallel_rows(Case* c, Kernel k) {
    const int64_t n = extent(k), g = grain(k);
    const int64_t max_tasks = (n + g - 1) / g;
    const int64_t tasks = max_tasks < N_THREADS ? max_tasks : N_THREADS;
    const int64_t chunk = (n + tasks - 1) / tasks;
    atomic_int status = TPT_OK;
    pthread_t threads[N_THREADS];
    Task task[N_THREADS];
    int64_t started = 0;
    for (int64_t i = 0; i < tasks && i * chunk < n; i++, started++) {
        task[i] = (Task){c, k, i * chunk, (i + 1) * chunk < n ? (i + 1) * chunk : n, &status};
        if (pthread_create(&threads[i], NULL, run_task, &task[i]) != 0) {
            fprintf(stderr, "kernel_hashes: pthread_create failed\n");
            exit(2);
        }
    }
    for (int64_t i = 0; i < started; i++) pthread_join(threads[i], NULL);
    return atomic_load(&status);
}

static const char* dtype_name(tpt_dtype dt) {
    return dt == TPT_FLOAT32 ? "float32" : dt == TPT_FLOAT64 ? "float64" : dt == TPT_BFLOAT16 ? "bfloat16" : "float16";
}

int main(int argc, char** argv) {
    const int threaded = argc == 2 && strcmp(argv[1], "threads") == 0;
    if (argc != 2 || (!threaded && strcmp(argv[1], "serial") != 0)) {
        fprintf(stderr, "usage: %s serial|threads\n", argv[0]);
        return 2;
    }
    const tpt_dtype dtypes[] = {TPT_FLOAT32, TPT_FLOAT64, TPT_BFLOAT16, TPT_FLOAT16};
    int failures = 0;
    for (int d = 0; d < 4; d++) {
        rng_state = 0x9e3779b97f4a7c15ull + (uint64_t)d;
        Case c = make_case(dtypes[d]);
        /* in enum order: every backward runs after the forward whose outputs it reads */
        for (Kernel k = 0; k < N_KERNELS; k++) {
            before(&c, k);
            const int status = threaded ? parallel_rows(&c, k) : run_range(&c, k, 0, extent(k));
            after(&c, k);
            if (status != TPT_OK) {
                fprintf(stderr, "%s %s: status %d\n", KERNEL_NAMES[k], dtype_name(c.dt), status);
                failures++;
            }
            printf("%s %s %016llx\n", KERNEL_NAMES[k], dtype_name(c.dt), (unsigned long long)output_hash(&c, k));
        }
    }
    return failures ? 1 : 0;
}
