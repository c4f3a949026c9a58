/* The per-element arithmetic of the qkv split + RoPE, shared by the C kernels
 * (rope.inc) and the CUDA kernels (csrc/cuda/rope.cuh). A per-precision math
 * header (csrc/README.md). */
#if (TPT_PRECISION == 32 && !defined(TPT_ROPE_MATH_32)) || (TPT_PRECISION == 64 && !defined(TPT_ROPE_MATH_64))
#if TPT_PRECISION == 32
#define TPT_ROPE_MATH_32
#else
#define TPT_ROPE_MATH_64
#endif

/* One rotate-half output (or, transposed, input-gradient) element: x c + partner s */
TPT_HD real SFX(tpt_rope_term)(real x, real c, real partner, real s) { return x * c + partner * s; }
#endif
