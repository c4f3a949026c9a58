/* Gabriel's-horn CUDA kernels: horn.cuh compiled in both precisions. */
#define TPT_PRECISION 32
#include "horn.cuh"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "horn.cuh"
