/* The per-row arithmetic of the MoE router, shared by the C kernels
 * (moe.inc) and the CUDA kernels (csrc/cuda/moe.cuh, where one thread runs a
 * token's row): the softmax (common.h's exp and log), top-k, gates
 * and the row backward. A per-precision math header (csrc/README.md). */

#if (TPT_PRECISION == 32 && !defined(TPT_MOE_MATH_32)) || (TPT_PRECISION == 64 && !defined(TPT_MOE_MATH_64))
#if TPT_PRECISION == 32
#define TPT_MOE_MATH_32
#else
#define TPT_MOE_MATH_64
#endif

/* max_e l[e], kept per lane so that the compare-and-select vectorises (a
 * serial running max does not). The maximum of finite values is the same in
 * any grouping; with a NaN among them every score, gate and lse comes out NaN
 * whichever value the shift takes. */
TPT_HD real SFX(moe_row_max)(const real* l, int64_t E) {
    real mx = l[0];
    int64_t e = 0;
    if (E >= TPT_LANES) {
        real lane[TPT_LANES];
        for (int i = 0; i < TPT_LANES; i++) lane[i] = l[i];
        for (e = TPT_LANES; e + TPT_LANES <= E; e += TPT_LANES)
            for (int i = 0; i < TPT_LANES; i++) lane[i] = l[e + i] > lane[i] ? l[e + i] : lane[i];
        mx = lane[0];
        for (int i = 1; i < TPT_LANES; i++) mx = lane[i] > mx ? lane[i] : mx;
    }
    for (; e < E; e++) mx = l[e] > mx ? l[e] : mx;
    return mx;
}

/* p = softmax(l) over E (max-shifted); returns lse = log sum_e exp(l_e). */
TPT_HD real SFX(moe_softmax)(real* p, const real* l, int64_t E) {
    const real mx = SFX(moe_row_max)(l, E);
    real sum = 0;
    for (int64_t e = 0; e < E; e++) {
        p[e] = SFX(tpt_exp_nonpos)(l[e] - mx);
        sum += p[e];
    }
    for (int64_t e = 0; e < E; e++) p[e] = p[e] / sum;
    return mx + SFX(tpt_log_ge1)(sum);
}

/* The k largest of s[e] + bias[e] (bias NULL: s[e] + 0) into experts[0..k),
 * descending, equal values in expert order: an insertion pass over e in
 * increasing order, where only a strictly larger value moves ahead. */
TPT_HD void SFX(moe_top_k)(int64_t* experts, real* best, const real* s, const real* bias, int64_t E,
                                  int64_t k) {
    int64_t filled = 0;
    for (int64_t e = 0; e < E; e++) {
        const real v = s[e] + (bias ? bias[e] : 0);
        if (filled == k && !(v > best[k - 1])) continue;
        int64_t p = filled < k ? filled : k - 1;
        while (p > 0 && v > best[p - 1]) {
            best[p] = best[p - 1];
            experts[p] = experts[p - 1];
            p--;
        }
        best[p] = v;
        experts[p] = e;
        if (filled < k) filled++;
    }
}

/* s (softmax or sigmoid) and p = softmax of one row of logits; s may be p. Returns lse. */
TPT_HD real SFX(moe_scores)(real* s, real* p, const real* l, int64_t E, int score) {
    const real lse = SFX(moe_softmax)(p, l, E);
    if (score == TPT_MOE_SIGMOID)
        for (int64_t e = 0; e < E; e++) s[e] = SIGMOID(l[e]);
    return lse;
}

/* gates[j] = s[chosen[j]] / S, S = sum_j s[chosen[j]] in order j (normalize), else s[chosen[j]] */
TPT_HD void SFX(moe_gates)(real* gates, const int64_t* chosen, const real* s, int64_t k, int normalize) {
    real sum = 0;
    for (int64_t j = 0; j < k; j++) {
        gates[j] = s[chosen[j]];
        sum += gates[j];
    }
    if (normalize)
        for (int64_t j = 0; j < k; j++) gates[j] = gates[j] / sum;
}

/* aux_loss = E * sum_e f_e P_e (f_e = counts[e] / max(1, n_kept), P_e = prob_sums[e] / M) and
 * z_loss = lse_sq_sum / M, both 0 when M = 0 */
TPT_HD void SFX(moe_losses)(real* aux_loss, real* z_loss, const int64_t* counts, const real* prob_sums,
                           real lse_sq_sum, int64_t M, int64_t E) {
    int64_t n_kept = 0;
    for (int64_t e = 0; e < E; e++) n_kept += counts[e];
    real aux = 0;
    const real kept = (real)(n_kept > 1 ? n_kept : 1), tokens = (real)M;
    for (int64_t e = 0; e < E; e++) aux += ((real)counts[e] / kept) * (prob_sums[e] / tokens);
    *aux_loss = M ? (real)E * aux : 0;
    *z_loss = M ? lse_sq_sum / tokens : 0;
}

/* aux_grad[e] = daux * E * f_e / max(1, M): the balance loss's gradient of every score of expert e */
TPT_HD void SFX(moe_aux_grad)(real* aux_grad, real daux, const int64_t* counts, int64_t M, int64_t E) {
    int64_t n_kept = 0;
    for (int64_t e = 0; e < E; e++) n_kept += counts[e];
    const real kept = (real)(n_kept > 1 ? n_kept : 1), tokens = (real)(M > 1 ? M : 1);
    for (int64_t e = 0; e < E; e++) aux_grad[e] = daux * (real)E * ((real)counts[e] / kept) / tokens;
}

/* dl [E] of one token (moe.h, moe_route_backward) from its scores s, softmax p,
 * the loss-balance gradient aux_grad [E] (daux * E * f_e / M), its choices,
 * dgates, gates and slots [k], and z_scale = dz * 2 lse / M; ds [E] is scratch. */
TPT_HD void SFX(moe_route_row_backward)(real* dl, real* ds, const real* s, const real* p, const real* aux_grad,
                                       const int64_t* chosen, const real* dg, const real* g, const int64_t* slot,
                                       real z_scale, int64_t E, int64_t k, int normalize, int score) {
    for (int64_t e = 0; e < E; e++) ds[e] = aux_grad[e];
    if (normalize) {
        real sum = 0, c = 0;
        for (int64_t j = 0; j < k; j++) {
            sum += s[chosen[j]];
            if (slot[j] >= 0) c += dg[j] * g[j];
        }
        for (int64_t j = 0; j < k; j++) ds[chosen[j]] += ((slot[j] >= 0 ? dg[j] : 0) - c) / sum;
    } else {
        for (int64_t j = 0; j < k; j++)
            if (slot[j] >= 0) ds[chosen[j]] += dg[j];
    }
    if (score == TPT_MOE_SIGMOID) {
        for (int64_t e = 0; e < E; e++) dl[e] = ds[e] * s[e] * (1 - s[e]) + z_scale * p[e];
    } else {
        real dot = 0;
        for (int64_t e = 0; e < E; e++) dot += ds[e] * s[e];
        for (int64_t e = 0; e < E; e++) dl[e] = s[e] * (ds[e] - dot) + z_scale * p[e];
    }
}
#endif
