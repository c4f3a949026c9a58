/* Causal flash attention CUDA kernels: attention.cuh in both precisions, plus the backward's workspace size. */
#define TPT_PRECISION 32
#include "attention.cuh"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "attention.cuh"

/* D_i = dout_i . out_i, one a query row. */
int64_t tpt_cuda_attention_backward_workspace(int64_t B, int64_t H, int64_t T) { return B * H * T; }
