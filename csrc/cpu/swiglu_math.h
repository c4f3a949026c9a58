/* The per-element arithmetic of the fused SwiGLU, shared by the C kernels
 * (swiglu.inc) and the CUDA kernels (csrc/cuda/swiglu.cuh). A per-precision
 * math header (csrc/README.md); SIGMOID is tpt_sigmoid_f32/_f64 (common.h). */
#if (TPT_PRECISION == 32 && !defined(TPT_SWIGLU_MATH_32)) || (TPT_PRECISION == 64 && !defined(TPT_SWIGLU_MATH_64))
#if TPT_PRECISION == 32
#define TPT_SWIGLU_MATH_32
#else
#define TPT_SWIGLU_MATH_64
#endif

/* h = silu(g) * u = g * sigmoid(g) * u */
TPT_HD real SFX(tpt_swiglu)(real g, real u) { return g * SIGMOID(g) * u; }

/* d_g = dh * u * s * (1 + g * (1 - s)),  d_u = dh * g * s,  s = sigmoid(g) */
TPT_HD void SFX(tpt_swiglu_grad)(real g, real u, real dh, real* d_g, real* d_u) {
    const real s = SIGMOID(g), dh_s = dh * s;
    *d_g = dh_s * u * (1 + g * (1 - s));
    *d_u = dh_s * g;
}
#endif
