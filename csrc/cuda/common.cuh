/* Shared by every CUDA kernel file: launch geometry, the launch status, and
 * element copies that need no precision. Kernels are `static __global__`, so
 * a family's .cu may include another family's kernels (block.cu uses the
 * rotation table of rotate_row.cuh) without clashing symbols. */
#ifndef TPT_CUDA_COMMON_CUH
#define TPT_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "../cpu/common.h"
#include "launchers.h"

/* Threads a block of the element-wise and row kernels. */
#define TPT_CUDA_THREADS 256

/* Blocks for n items of `per_block` each, at least one. */
static inline unsigned tpt_cuda_blocks(int64_t n, int64_t per_block) {
    const int64_t b = (n + per_block - 1) / per_block;
    return (unsigned)(b > 0 ? b : 1);
}

/* TPT_OK, or TPT_ERR_CUDA when the last launch failed (bad geometry, no kernel image for this GPU). */
static inline int tpt_cuda_status(void) { return cudaGetLastError() == cudaSuccess ? (int)TPT_OK : (int)TPT_ERR_CUDA; }

/* Copies element i of a row of `esize`-byte elements as stored: bit-exact, no precision involved. */
__device__ __forceinline__ void tpt_copy_element(void* dst, int64_t di, const void* src, int64_t si, int64_t esize) {
    if (esize == 2) ((uint16_t*)dst)[di] = ((const uint16_t*)src)[si];
    else if (esize == 4) ((uint32_t*)dst)[di] = ((const uint32_t*)src)[si];
    else ((uint64_t*)dst)[di] = ((const uint64_t*)src)[si];
}

/* Element i of a row of `esize`-byte elements set to all-zero bits (+0.0 in every storage dtype). */
__device__ __forceinline__ void tpt_zero_element(void* dst, int64_t i, int64_t esize) {
    if (esize == 2) ((uint16_t*)dst)[i] = 0;
    else if (esize == 4) ((uint32_t*)dst)[i] = 0;
    else ((uint64_t*)dst)[i] = 0;
}

/* Element offset (rope.h) of head row (b, h, t) in a gradient with strides st. */
__device__ __forceinline__ int64_t tpt_head_row(tpt_head_strides st, int64_t b, int64_t h, int64_t t) {
    return b * st.b + h * st.h + t * st.t;
}

/* Grid-stride loop over [0, n). */
#define TPT_FOR_EACH(idx, n) \
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < (n); idx += (int64_t)gridDim.x * blockDim.x)

/* Blocks of an element-wise launch over n items, capped (the kernels loop with TPT_FOR_EACH). */
static inline unsigned tpt_cuda_grid(int64_t n) {
    const unsigned b = tpt_cuda_blocks(n, TPT_CUDA_THREADS);
    return b < 65536u * 16u ? b : 65536u * 16u;
}

#endif
