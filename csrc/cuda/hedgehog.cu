/* Hedgehog feature map and linear attention CUDA kernels: hedgehog.cuh in
 * both precisions, plus the workspace sizes. */
#define TPT_PRECISION 32
#include "hedgehog.cuh"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "hedgehog.cuh"

/* In elements of the compute precision (the float and double layouts have the same counts). */
int64_t tpt_cuda_feature_map_workspace(int64_t rows, int64_t F, int backward) { return rows * (backward ? 5 : 3) * F; }

int64_t tpt_cuda_linear_attention_workspace(int64_t tasks, int64_t T, int64_t K, int64_t Dv, int backward) {
    return tasks * la_slice_f32(NULL, NULL, 0, T, K, Dv, backward);
}
