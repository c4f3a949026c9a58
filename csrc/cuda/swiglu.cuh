/* Fused SwiGLU CUDA kernels, written once for the precision `real`
 * (real.cuh), on swiglu_math.h: element-wise, the C kernels' bits. */
#include "real.cuh"
#include "../cpu/swiglu_math.h"

/* One thread an element (m, j): h = g sigmoid(g) u (an odd F). */
static __global__ void SFX(swiglu_forward_kernel)(void* h, const void* gate_up, tpt_dtype dt, int64_t M, int64_t F) {
    TPT_FOR_EACH(idx, M * F) {
        const int64_t m = idx / F, j = idx % F, row = m * 2 * F;
        SFX(tpt_store)(h, dt, idx, SFX(tpt_swiglu)(SFX(tpt_load)(gate_up, dt, row + j),
                                                   SFX(tpt_load)(gate_up, dt, row + F + j)));
    }
}

/* One thread an element: [d_g, d_u] at (m, j) and (m, F + j); each thread reads its g, u before writing them,
 * so d_gate_up may be gate_up. */
static __global__ void SFX(swiglu_backward_kernel)(void* d_gate_up, const void* dh, const void* gate_up, tpt_dtype dt,
                                                   int64_t M, int64_t F) {
    TPT_FOR_EACH(idx, M * F) {
        const int64_t m = idx / F, j = idx % F, row = m * 2 * F;
        real d_g, d_u;
        SFX(tpt_swiglu_grad)(SFX(tpt_load)(gate_up, dt, row + j), SFX(tpt_load)(gate_up, dt, row + F + j),
                             SFX(tpt_load)(dh, dt, idx), &d_g, &d_u);
        SFX(tpt_store)(d_gate_up, dt, row + j, d_g);
        SFX(tpt_store)(d_gate_up, dt, row + F + j, d_u);
    }
}

/* Two adjacent elements (m, j), (m, j + 1) a thread, in pair loads and stores: for an even F, where the pairs of
 * g, u and h all start at even elements. */
static __global__ void SFX(swiglu_forward_pairs_kernel)(void* h, const void* gate_up, tpt_dtype dt, int64_t M,
                                                        int64_t F) {
    const int64_t half = F / 2;
    TPT_FOR_EACH(idx, M * half) {
        const int64_t m = idx / half, j = 2 * (idx % half), row = m * 2 * F;
        real g0, g1, u0, u1;
        SFX(tpt_load_pair)(gate_up, dt, (row + j) / 2, &g0, &g1);
        SFX(tpt_load_pair)(gate_up, dt, (row + F + j) / 2, &u0, &u1);
        SFX(tpt_store_pair)(h, dt, idx, SFX(tpt_swiglu)(g0, u0), SFX(tpt_swiglu)(g1, u1));
    }
}

static __global__ void SFX(swiglu_backward_pairs_kernel)(void* d_gate_up, const void* dh, const void* gate_up,
                                                         tpt_dtype dt, int64_t M, int64_t F) {
    const int64_t half = F / 2;
    TPT_FOR_EACH(idx, M * half) {
        const int64_t m = idx / half, j = 2 * (idx % half), row = m * 2 * F;
        real g0, g1, u0, u1, dh0, dh1, dg0, dg1, du0, du1;
        SFX(tpt_load_pair)(gate_up, dt, (row + j) / 2, &g0, &g1);
        SFX(tpt_load_pair)(gate_up, dt, (row + F + j) / 2, &u0, &u1);
        SFX(tpt_load_pair)(dh, dt, idx, &dh0, &dh1);
        SFX(tpt_swiglu_grad)(g0, u0, dh0, &dg0, &du0);
        SFX(tpt_swiglu_grad)(g1, u1, dh1, &dg1, &du1);
        SFX(tpt_store_pair)(d_gate_up, dt, (row + j) / 2, dg0, dg1);
        SFX(tpt_store_pair)(d_gate_up, dt, (row + F + j) / 2, du0, du1);
    }
}

extern "C" int TPT_LAUNCHER_NAME(swiglu_forward)(void* h, const void* gate_up, tpt_dtype dt, int64_t M, int64_t F,
                                                 cudaStream_t stream) {
    if (M <= 0 || F <= 0) return TPT_OK;
    if (F % 2 == 0)
        SFX(swiglu_forward_pairs_kernel)<<<tpt_cuda_grid(M * F / 2), TPT_CUDA_THREADS, 0, stream>>>(h, gate_up, dt, M,
                                                                                                 F);
    else
        SFX(swiglu_forward_kernel)<<<tpt_cuda_grid(M * F), TPT_CUDA_THREADS, 0, stream>>>(h, gate_up, dt, M, F);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(swiglu_backward)(void* d_gate_up, const void* dh, const void* gate_up, tpt_dtype dt,
                                                  int64_t M, int64_t F, cudaStream_t stream) {
    if (M <= 0 || F <= 0) return TPT_OK;
    if (F % 2 == 0)
        SFX(swiglu_backward_pairs_kernel)<<<tpt_cuda_grid(M * F / 2), TPT_CUDA_THREADS, 0, stream>>>(
            d_gate_up, dh, gate_up, dt, M, F);
    else
        SFX(swiglu_backward_kernel)<<<tpt_cuda_grid(M * F), TPT_CUDA_THREADS, 0, stream>>>(d_gate_up, dh, gate_up, dt,
                                                                                           M, F);
    return tpt_cuda_status();
}
