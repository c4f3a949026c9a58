/* The fixed-order combine of row-block partials (csrc/cpu/reduce.c), written
 * once for the precision `real`. */
#include "real.cuh"

/* out[j] = 0 + partials[0, j] + partials[1, j] + ..., one thread a column */
static __global__ void SFX(sum_partials_kernel)(real* out, const real* partials, int64_t n_blocks, int64_t n) {
    TPT_FOR_EACH(j, n) {
        real acc = 0;
        for (int64_t b = 0; b < n_blocks; b++) acc += partials[b * n + j];
        out[j] = acc;
    }
}

extern "C" int TPT_LAUNCHER_NAME(sum_partials)(real* out, const real* partials, int64_t n_blocks, int64_t n,
                                               cudaStream_t stream) {
    if (n <= 0) return TPT_OK;
    SFX(sum_partials_kernel)<<<tpt_cuda_grid(n), TPT_CUDA_THREADS, 0, stream>>>(out, partials, n_blocks, n);
    return tpt_cuda_status();
}
