/* The per-element arithmetic of causal flash attention for the CUDA kernels
 * (csrc/cuda/attention.cuh): the score's probability from a running maximum or
 * the saved lse (common.h's tpt_exp_nonpos), the score gradient and the log of
 * the softmax denominator. The C kernels (attention.inc) compute the
 * probabilities in base 2 with fused multiply-adds instead (at_exp2_nonpos). A
 * per-precision math header (csrc/README.md). */

#if (TPT_PRECISION == 32 && !defined(TPT_ATTENTION_MATH_32)) || (TPT_PRECISION == 64 && !defined(TPT_ATTENTION_MATH_64))
#if TPT_PRECISION == 32
#define TPT_ATTENTION_MATH_32
#else
#define TPT_ATTENTION_MATH_64
#endif

/* exp(s - m) of a scaled score s against a maximum or an lse m >= s (the exponent is <= 0, up to rounding of the
 * lse, where the result is 1 within an ulp). */
TPT_HD real SFX(at_prob)(real s, real m) { return SFX(tpt_exp_nonpos)(s - m); }

/* ds_ij = p_ij (dp_ij - D_i) with dp_ij = dout_i . v_j and D_i = dout_i . out_i */
TPT_HD real SFX(at_score_grad)(real p, real dp, real D) { return p * (dp - D); }

/* The lse of a row from its running maximum and denominator: m + log l */
TPT_HD real SFX(at_lse)(real m, real l) { return m + SFX(tpt_log_ge1)(l); }
#endif
