/* The per-element arithmetic of the per-phase RMSNorm, shared by the C
 * kernels (norm_row.inc) and the CUDA kernels (csrc/cuda/norm.cuh, block.cuh).
 * A per-precision math header (csrc/README.md): written once for `real`,
 * after real.h (C) or cuda/real.cuh (CUDA), defined once per precision per
 * translation unit. The sums these take (sum_sq, dot) are formed by each side
 * in the same lane order (TPT_LANES), so the results agree bit for bit. */
#if (TPT_PRECISION == 32 && !defined(TPT_NORM_MATH_32)) || (TPT_PRECISION == 64 && !defined(TPT_NORM_MATH_64))
#if TPT_PRECISION == 32
#define TPT_NORM_MATH_32
#else
#define TPT_NORM_MATH_64
#endif

/* r = 1 / sqrt(mean(x^2) + eps) from sum_sq = sum x^2 over the phase's P channels */
TPT_HD real SFX(tpt_rms_scale)(real sum_sq, int64_t P, real eps) { return 1 / sqrt(sum_sq / (real)P + eps); }

/* y = x * r * w */
TPT_HD real SFX(tpt_norm_value)(real x, real r, real w) { return x * r * w; }

/* c = r^2 * mean(g * x), from dot = sum g * x over the phase (g = dy * w) */
TPT_HD real SFX(tpt_norm_grad_coef)(real r, real dot, int64_t P) { return r * r * dot / (real)P; }

/* dx = r * (g - x * c) */
TPT_HD real SFX(tpt_norm_grad)(real r, real g, real x, real c) { return r * (g - x * c); }

/* the term of one row in dweight: dy * x * r */
TPT_HD real SFX(tpt_norm_weight_grad)(real dy, real x, real r) { return dy * x * r; }
#endif
