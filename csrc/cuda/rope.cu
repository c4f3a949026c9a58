/* Fused qkv split + RoPE CUDA kernels: rope.cuh compiled in both precisions. */
#define TPT_PRECISION 32
#include "rope.cuh"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "rope.cuh"
