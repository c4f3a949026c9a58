/* The per-element arithmetic of the Gabriel's-horn injection, shared by the C
 * kernels (horn.inc) and the CUDA kernels (csrc/cuda/horn.cuh). A
 * per-precision math header (csrc/README.md); r(p) is tpt_horn_r_* (horn.h).
 * The row sums are formed by each side in the same lane order (TPT_LANES). */
#if (TPT_PRECISION == 32 && !defined(TPT_HORN_MATH_32)) || (TPT_PRECISION == 64 && !defined(TPT_HORN_MATH_64))
#if TPT_PRECISION == 32
#define TPT_HORN_MATH_32
#else
#define TPT_HORN_MATH_64
#endif

/* mean = sum / D */
TPT_HD real SFX(tpt_horn_mean)(real sum, int64_t D) { return sum / (real)D; }

/* y = x - mean(x) + r */
TPT_HD real SFX(tpt_horn_value)(real x, real mean, real r) { return x - mean + r; }

/* the backward's projection off the DC direction: dy - mean(dy) */
TPT_HD real SFX(tpt_horn_centered)(real dy, real mean) { return dy - mean; }
#endif
