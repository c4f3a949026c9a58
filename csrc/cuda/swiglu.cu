/* Fused SwiGLU CUDA kernels: swiglu.cuh compiled in both precisions. */
#define TPT_PRECISION 32
#include "swiglu.cuh"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "swiglu.cuh"
