/* The per-element arithmetic of causal flash attention, for the C kernels
 * (attention.inc) and the CUDA kernels (csrc/cuda/attention.cuh): the score's
 * probability from a running maximum or the saved lse (common.h's tpt_exp_nonpos), the
 * score gradient and the log of the softmax denominator. A per-precision
 * math header (csrc/README.md). */

#if (TPT_PRECISION == 32 && !defined(TPT_ATTENTION_MATH_32)) || (TPT_PRECISION == 64 && !defined(TPT_ATTENTION_MATH_64))
#if TPT_PRECISION == 32
#define TPT_ATTENTION_MATH_32
#else
#define TPT_ATTENTION_MATH_64
#endif

/* log x for 1 <= x < inf (a softmax denominator: its largest term is exp(0)) in
 * plain arithmetic, as common.h's exp: libm's log is picked per CPU.
 * x = 2^e m with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(u) with
 * u = (m - 1) / (m + 1), |u| <= 0.1716, summed as its odd series (to u^9
 * in float32, u^21 in float64: the first omitted term is below 2^-30 resp.
 * 2^-59 of the result), plus e ln2 with ln2 in two parts. Within 2 ulp
 * (tests/test_attention.py compares lse with an exact logsumexp). */
TPT_HD real SFX(at_log_ge1)(real x) {
#if TPT_PRECISION == 32
    const uint32_t bits = tpt_float_to_bits(x);
    int32_t e = (int32_t)(bits >> 23) - 127;
    float m = tpt_bits_to_float((bits & 0x7fffffu) | 0x3f800000u);
    if (m > 1.41421356f) {
        m = m * 0.5f;
        e += 1;
    }
    const float u = (m - 1.0f) / (m + 1.0f), u2 = u * u;
    float p = 1.0f / 9.0f;
    p = p * u2 + 1.0f / 7.0f;
    p = p * u2 + 1.0f / 5.0f;
    p = p * u2 + 1.0f / 3.0f;
    p = p * u2 + 1.0f;
    const float fe = (float)e;
    return fe * 0.693359375f + (fe * -2.12194440e-4f + 2.0f * u * p);
#else
    uint64_t bits;
    memcpy(&bits, &x, 8);
    int64_t e = (int64_t)(bits >> 52) - 1023;
    const uint64_t mbits = (bits & 0xfffffffffffffull) | 0x3ff0000000000000ull;
    double m;
    memcpy(&m, &mbits, 8);
    if (m > 1.4142135623730951) {
        m = m * 0.5;
        e += 1;
    }
    const double u = (m - 1.0) / (m + 1.0), u2 = u * u;
    double p = 1.0 / 21.0;
    p = p * u2 + 1.0 / 19.0;
    p = p * u2 + 1.0 / 17.0;
    p = p * u2 + 1.0 / 15.0;
    p = p * u2 + 1.0 / 13.0;
    p = p * u2 + 1.0 / 11.0;
    p = p * u2 + 1.0 / 9.0;
    p = p * u2 + 1.0 / 7.0;
    p = p * u2 + 1.0 / 5.0;
    p = p * u2 + 1.0 / 3.0;
    p = p * u2 + 1.0;
    const double fe = (double)e;
    return fe * 6.93147180369123816490e-01 + (fe * 1.90821492927058770002e-10 + 2.0 * u * p);
#endif
}

/* exp(s - m) of a scaled score s against a maximum or an lse m >= s (the exponent is <= 0, up to rounding of the
 * lse, where the result is 1 within an ulp). */
TPT_HD real SFX(at_prob)(real s, real m) { return SFX(tpt_exp_nonpos)(s - m); }

/* ds_ij = p_ij (dp_ij - D_i) with dp_ij = dout_i . v_j and D_i = dout_i . out_i */
TPT_HD real SFX(at_score_grad)(real p, real dp, real D) { return p * (dp - D); }

/* The lse of a row from its running maximum and denominator: m + log l */
TPT_HD real SFX(at_lse)(real m, real l) { return m + SFX(at_log_ge1)(l); }
#endif
