/* Per-phase RMSNorm CUDA kernels: norm.cuh compiled in both precisions. */
#define TPT_PRECISION 32
#include "norm.cuh"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "norm.cuh"
