/* The rotation table of the Givens phase rotation on the device, shared by
 * rotate.cuh and block.cuh; written once for the precision `real`. */
#include "real.cuh"
#include "../cpu/rotate_math.h"

#if (TPT_PRECISION == 32 && !defined(TPT_CUDA_ROTATE_ROW_32)) || (TPT_PRECISION == 64 && !defined(TPT_CUDA_ROTATE_ROW_64))
#if TPT_PRECISION == 32
#define TPT_CUDA_ROTATE_ROW_32
#else
#define TPT_CUDA_ROTATE_ROW_64
#endif

/* table = [cos | sin] of phi_k, k = i*(P/2) + j < D/2 (rotate_row.inc's rotation_table, one thread an entry) */
static __global__ void SFX(rotation_table_kernel)(real* table, const real* theta, int64_t D, int64_t N) {
    const int64_t H = D / N / 2;
    const real step = SFX(tpt_phase_step)(N);
    TPT_FOR_EACH(k, D / 2) {
        const real phi = SFX(tpt_phase_angle)(theta[k % H], k / H, step);
        SFX(tpt_sincos)(phi, &table[D / 2 + k], &table[k]);
    }
}

static inline void SFX(rotation_table)(real* table, const real* theta, int64_t D, int64_t N, cudaStream_t stream) {
    SFX(rotation_table_kernel)<<<tpt_cuda_grid(D / 2), TPT_CUDA_THREADS, 0, stream>>>(table, theta, D, N);
}
#endif
