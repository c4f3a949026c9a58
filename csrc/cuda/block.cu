/* Fused add (+ rotate) + norm CUDA kernels: block.cuh compiled in both precisions. */
#define TPT_PRECISION 32
#include "block.cuh"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "block.cuh"
