/* Token-choice MoE CUDA kernels, written once for the precision `real`
 * (real.cuh). The router runs one token's row a thread on moe_math.h (the C
 * kernels' row code, so the same bits); the block sums of the scores are
 * fixed-order column sums; the data path is gathers, one thread an element. */
#include "real.cuh"
#include "../cpu/moe.h"
#include "../cpu/moe_math.h"

/* Per token t (one thread): l, p, s rows and best in the workspace row of 3E + k reals, lse in lse[t]. */
static __global__ void SFX(route_forward_kernel)(real* gates, int64_t* experts, real* rows, real* lse,
                                                 const void* logits, const real* bias, tpt_dtype dt, int64_t M,
                                                 int64_t E, int64_t k, int normalize, int score) {
    TPT_FOR_EACH(t, M) {
        real* l = rows + t * (3 * E + k);
        real *p = l + E, *s = score == TPT_MOE_SIGMOID ? l + 2 * E : p, *best = l + 3 * E;
        for (int64_t e = 0; e < E; e++) l[e] = SFX(tpt_load)(logits, dt, t * E + e);
        lse[t] = SFX(moe_scores)(s, p, l, E, score);
        int64_t* chosen = experts + t * k;
        SFX(moe_top_k)(chosen, best, s, bias, E, k);
        SFX(moe_gates)(gates + t * k, chosen, s, k, normalize);
    }
}

/* prob_partials[b, e] = sum over block b's tokens in order of s[t, e]; column E: lse_sq_partials[b]. */
static __global__ void SFX(route_partials_kernel)(real* prob_partials, real* lse_sq_partials, const real* rows,
                                                  const real* lse, int64_t M, int64_t E, int64_t k, int score) {
    const int64_t n_blocks = tpt_num_row_blocks(M), s_off = score == TPT_MOE_SIGMOID ? 2 * E : E;
    TPT_FOR_EACH(idx, n_blocks * (E + 1)) {
        const int64_t b = idx / (E + 1), e = idx % (E + 1);
        const int64_t end = (b + 1) * TPT_ROW_BLOCK < M ? (b + 1) * TPT_ROW_BLOCK : M;
        real acc = 0;
        if (e < E) {
            for (int64_t t = b * TPT_ROW_BLOCK; t < end; t++) acc += rows[t * (3 * E + k) + s_off + e];
            prob_partials[b * E + e] = acc;
        } else {
            for (int64_t t = b * TPT_ROW_BLOCK; t < end; t++) acc += lse[t] * lse[t];
            lse_sq_partials[b] = acc;
        }
    }
}

/* The losses (moe_math.h) by one thread; the other threads zero the dropped gates. */
static __global__ void SFX(route_losses_kernel)(real* gates, real* aux_loss, real* z_loss, const int64_t* slots,
                                                const int64_t* counts, const real* prob_sums, const real* lse_sq_sum,
                                                int64_t M, int64_t E, int64_t k) {
    TPT_FOR_EACH(i, M * k) if (slots[i] < 0) gates[i] = 0;
    if (blockIdx.x == 0 && threadIdx.x == 0) SFX(moe_losses)(aux_loss, z_loss, counts, prob_sums, *lse_sq_sum, M, E);
}

/* aux_grad [E] = the balance loss's gradient of each expert's scores (moe_math.h), one thread */
static __global__ void SFX(route_aux_grad_kernel)(real* aux_grad, const real* daux, const int64_t* counts, int64_t M,
                                                  int64_t E) {
    SFX(moe_aux_grad)(aux_grad, *daux, counts, M, E);
}

/* dlogits of token t (one thread), recomputing its scores as the forward did; rows of 5E reals. */
static __global__ void SFX(route_backward_kernel)(void* dlogits, real* rows, const real* aux_grad, const real* dgates,
                                                  const real* dz, const void* logits, const int64_t* experts,
                                                  const real* gates, const int64_t* slots, tpt_dtype dt, int64_t M,
                                                  int64_t E, int64_t k, int normalize, int score) {
    const real tokens = (real)(M > 1 ? M : 1);
    TPT_FOR_EACH(t, M) {
        real* l = rows + t * 5 * E;
        real *p = l + E, *s = score == TPT_MOE_SIGMOID ? l + 2 * E : p, *ds = l + 3 * E, *dl = l + 4 * E;
        for (int64_t e = 0; e < E; e++) l[e] = SFX(tpt_load)(logits, dt, t * E + e);
        const real lse = SFX(moe_scores)(s, p, l, E, score);
        SFX(moe_route_row_backward)(dl, ds, s, p, aux_grad, experts + t * k, dgates + t * k, gates + t * k,
                                    slots + t * k, *dz * 2 * lse / tokens, E, k, normalize, score);
        for (int64_t e = 0; e < E; e++) SFX(tpt_store)(dlogits, dt, t * E + e, dl[e]);
    }
}

/* dx[t, i] = sum over t's kept slots j in order of dbuf[slots[t, j], i] (the first as 0 + r, as the C kernel). */
static __global__ void SFX(permute_backward_kernel)(void* dx, const void* dbuf, const int64_t* slots, tpt_dtype dt,
                                                    int64_t M, int64_t k, int64_t D) {
    TPT_FOR_EACH(idx, M * D) {
        const int64_t t = idx / D, i = idx % D;
        real acc = 0;
        int empty = 1;
        for (int64_t j = 0; j < k; j++) {
            const int64_t a = slots[t * k + j];
            if (a < 0) continue;
            const real r = SFX(tpt_load)(dbuf, dt, a * D + i);
            acc = empty ? (real)0 + r : acc + r;
            empty = 0;
        }
        SFX(tpt_store)(dx, dt, idx, acc);
    }
}

/* y[t, i] = sum over t's kept slots j in order of gates[t, j] out[slots[t, j], i]. */
static __global__ void SFX(unpermute_forward_kernel)(void* y, const void* out, const real* gates, const int64_t* slots,
                                                     tpt_dtype dt, int64_t M, int64_t k, int64_t D) {
    TPT_FOR_EACH(idx, M * D) {
        const int64_t t = idx / D, i = idx % D;
        real acc = 0;
        int empty = 1;
        for (int64_t j = 0; j < k; j++) {
            const int64_t a = slots[t * k + j];
            if (a < 0) continue;
            const real term = gates[t * k + j] * SFX(tpt_load)(out, dt, a * D + i);
            acc = empty ? (real)0 + term : acc + term;
            empty = 0;
        }
        SFX(tpt_store)(y, dt, idx, acc);
    }
}

/* Buffer row a (one group): dout[a] = gates[t, j] dy[t], dgates[t, j] = dot(dy[t], out[a]) in the C kernels'
 * lane order; unused rows get zeros. The glue has checked the layout, so every used row has its j. */
static __global__ void SFX(unpermute_backward_kernel)(void* dout, real* dgates, const void* dy, const void* out,
                                                      const real* gates, const int64_t* slots,
                                                      const int64_t* slot_token, tpt_dtype dt, int64_t A, int64_t k,
                                                      int64_t D) {
    TPT_ROW_GROUP(a, active, lane, A);
    const int64_t t = slot_token[a];
    int64_t j = 0;
    while (t >= 0 && j < k && slots[t * k + j] != a) j++;
    const int used = t >= 0 && j < k;
    const int64_t src = used ? t : 0; /* an unused row still joins the group's sum, on token 0's row */
    real dot;
    TPT_LANE_SUM(dot, D, lane, i, SFX(tpt_load)(dy, dt, src * D + i) * SFX(tpt_load)(out, dt, a * D + i));
    if (!active) return;
    if (!used) {
        for (int64_t i = lane; i < D; i += TPT_LANES) SFX(tpt_store)(dout, dt, a * D + i, 0);
        return;
    }
    const real g = gates[t * k + j];
    for (int64_t i = lane; i < D; i += TPT_LANES)
        SFX(tpt_store)(dout, dt, a * D + i, g * SFX(tpt_load)(dy, dt, t * D + i));
    if (lane == 0) dgates[t * k + j] = dot;
}

extern "C" int TPT_LAUNCHER_NAME(moe_route_forward)(real* gates, int64_t* experts, real* prob_partials,
                                                    real* lse_sq_partials, real* workspace, const void* logits,
                                                    const real* bias, tpt_dtype dt, int64_t M, int64_t E, int64_t k,
                                                    int normalize, int score, cudaStream_t stream) {
    if (M <= 0) return TPT_OK;
    real* lse = workspace + M * (3 * E + k);
    SFX(route_forward_kernel)<<<tpt_cuda_grid(M), TPT_CUDA_THREADS, 0, stream>>>(
        gates, experts, workspace, lse, logits, bias, dt, M, E, k, normalize, score);
    SFX(route_partials_kernel)<<<tpt_cuda_grid(tpt_num_row_blocks(M) * (E + 1)), TPT_CUDA_THREADS, 0, stream>>>(
        prob_partials, lse_sq_partials, workspace, lse, M, E, k, score);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(moe_route_losses)(real* gates, real* aux_loss, real* z_loss, const int64_t* slots,
                                                   const int64_t* counts, const real* prob_sums,
                                                   const real* lse_sq_sum, int64_t M, int64_t E, int64_t k,
                                                   cudaStream_t stream) {
    SFX(route_losses_kernel)<<<tpt_cuda_grid(M * k), TPT_CUDA_THREADS, 0, stream>>>(
        gates, aux_loss, z_loss, slots, counts, prob_sums, lse_sq_sum, M, E, k);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(moe_route_backward)(void* dlogits, real* workspace, const real* dgates,
                                                     const real* daux, const real* dz, const void* logits,
                                                     const int64_t* experts, const real* gates, const int64_t* slots,
                                                     const int64_t* counts, tpt_dtype dt, int64_t M, int64_t E,
                                                     int64_t k, int normalize, int score, cudaStream_t stream) {
    if (M <= 0) return TPT_OK;
    real* aux_grad = workspace + M * 5 * E;
    SFX(route_aux_grad_kernel)<<<1, 1, 0, stream>>>(aux_grad, daux, counts, M, E);
    SFX(route_backward_kernel)<<<tpt_cuda_grid(M), TPT_CUDA_THREADS, 0, stream>>>(
        dlogits, workspace, aux_grad, dgates, dz, logits, experts, gates, slots, dt, M, E, k, normalize, score);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(moe_permute_backward)(void* dx, const void* dbuf, const int64_t* slots, tpt_dtype dt,
                                                       int64_t M, int64_t k, int64_t D, cudaStream_t stream) {
    if (M <= 0 || D <= 0) return TPT_OK;
    SFX(permute_backward_kernel)<<<tpt_cuda_grid(M * D), TPT_CUDA_THREADS, 0, stream>>>(dx, dbuf, slots, dt, M, k, D);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(moe_unpermute_forward)(void* y, const void* out, const real* gates,
                                                        const int64_t* slots, tpt_dtype dt, int64_t M, int64_t k,
                                                        int64_t D, cudaStream_t stream) {
    if (M <= 0 || D <= 0) return TPT_OK;
    SFX(unpermute_forward_kernel)<<<tpt_cuda_grid(M * D), TPT_CUDA_THREADS, 0, stream>>>(y, out, gates, slots, dt, M,
                                                                                         k, D);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(moe_unpermute_backward)(void* dout, real* dgates, const void* dy, const void* out,
                                                         const real* gates, const int64_t* slots,
                                                         const int64_t* slot_token, tpt_dtype dt, int64_t A,
                                                         int64_t k, int64_t D, cudaStream_t stream) {
    if (A <= 0 || D <= 0) return TPT_OK;
    SFX(unpermute_backward_kernel)<<<tpt_cuda_blocks(A * TPT_LANES, TPT_CUDA_THREADS), TPT_CUDA_THREADS, 0, stream>>>(
        dout, dgates, dy, out, gates, slots, slot_token, dt, A, k, D);
    return tpt_cuda_status();
}
