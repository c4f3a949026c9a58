/* Givens phase rotation CUDA kernels: rotate.cuh compiled in both precisions. */
#define TPT_PRECISION 32
#include "rotate.cuh"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "rotate.cuh"
