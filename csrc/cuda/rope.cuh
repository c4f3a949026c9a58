/* Fused qkv split + RoPE CUDA kernels, written once for the precision `real`
 * (real.cuh), on rope_math.h: element-wise, the C kernels' bits. The work is
 * one thread per (row m = b*T + t, head slot, j < hd/2), each writing the
 * elements j and j + hd/2 of its head; value heads are copied as stored. */
#include "real.cuh"
#include "../cpu/rope_math.h"

static __global__ void SFX(rope_forward_kernel)(void* q, void* k, void* v, const void* qkv, const real* cos,
                                                const real* sin_signed, tpt_dtype dt, int64_t M, int64_t T,
                                                int64_t H, int64_t Hkv, int64_t hd) {
    const int64_t h2 = hd / 2, heads = H + 2 * Hkv, W = heads * hd, esize = tpt_dtype_size(dt);
    TPT_FOR_EACH(idx, M * heads * h2) {
        const int64_t j = idx % h2, slot = idx / h2 % heads, m = idx / (h2 * heads), b = m / T, t = m % T;
        const int64_t in = m * W + slot * hd + j;
        if (slot >= H + Hkv) { /* a value head */
            const int64_t out = ((b * Hkv + (slot - H - Hkv)) * T + t) * hd + j;
            tpt_copy_element(v, out, qkv, in, esize);
            tpt_copy_element(v, out + h2, qkv, in + h2, esize);
            continue;
        }
        void* dst = slot < H ? q : k;
        const int64_t head = slot < H ? b * H + slot : b * Hkv + slot - H, out = (head * T + t) * hd + j;
        const real* c = cos + t * hd;
        const real* s = sin_signed + t * hd;
        const real x0 = SFX(tpt_load)(qkv, dt, in), x1 = SFX(tpt_load)(qkv, dt, in + h2);
        SFX(tpt_store)(dst, dt, out, SFX(tpt_rope_term)(x0, c[j], x1, s[j]));
        SFX(tpt_store)(dst, dt, out + h2, SFX(tpt_rope_term)(x1, c[j + h2], x0, s[j + h2]));
    }
}

static __global__ void SFX(rope_backward_kernel)(void* dqkv, const void* dq, tpt_head_strides dq_strides,
                                                 const void* dk, tpt_head_strides dk_strides, const void* dv,
                                                 tpt_head_strides dv_strides, const real* cos, const real* sin_signed,
                                                 tpt_dtype dt, int64_t M, int64_t T, int64_t H, int64_t Hkv,
                                                 int64_t hd) {
    const int64_t h2 = hd / 2, heads = H + 2 * Hkv, W = heads * hd, esize = tpt_dtype_size(dt);
    TPT_FOR_EACH(idx, M * heads * h2) {
        const int64_t j = idx % h2, slot = idx / h2 % heads, m = idx / (h2 * heads), b = m / T, t = m % T;
        const int64_t out = m * W + slot * hd + j;
        if (slot >= H + Hkv) {
            const int64_t in = tpt_head_row(dv_strides, b, slot - H - Hkv, t) + j;
            tpt_copy_element(dqkv, out, dv, in, esize);
            tpt_copy_element(dqkv, out + h2, dv, in + h2, esize);
            continue;
        }
        const void* src = slot < H ? dq : dk;
        const int64_t in = slot < H ? tpt_head_row(dq_strides, b, slot, t) + j
                                    : tpt_head_row(dk_strides, b, slot - H, t) + j;
        const real* c = cos + t * hd;
        const real* s = sin_signed + t * hd;
        const real d0 = SFX(tpt_load)(src, dt, in), d1 = SFX(tpt_load)(src, dt, in + h2);
        SFX(tpt_store)(dqkv, dt, out, SFX(tpt_rope_term)(d0, c[j], d1, s[j + h2]));
        SFX(tpt_store)(dqkv, dt, out + h2, SFX(tpt_rope_term)(d1, c[j + h2], d0, s[j]));
    }
}

extern "C" int TPT_LAUNCHER_NAME(qkv_rope_forward)(void* q, void* k, void* v, const void* qkv, const real* cos,
                                                   const real* sin_signed, tpt_dtype dt, int64_t B, int64_t T,
                                                   int64_t H, int64_t Hkv, int64_t hd, cudaStream_t stream) {
    const int64_t n = B * T * (H + 2 * Hkv) * (hd / 2);
    if (n <= 0) return TPT_OK;
    SFX(rope_forward_kernel)<<<tpt_cuda_grid(n), TPT_CUDA_THREADS, 0, stream>>>(q, k, v, qkv, cos, sin_signed, dt,
                                                                                B * T, T, H, Hkv, hd);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(qkv_rope_backward)(void* dqkv, const void* dq, tpt_head_strides dq_strides,
                                                    const void* dk, tpt_head_strides dk_strides, const void* dv,
                                                    tpt_head_strides dv_strides, const real* cos,
                                                    const real* sin_signed, tpt_dtype dt, int64_t B, int64_t T,
                                                    int64_t H, int64_t Hkv, int64_t hd, cudaStream_t stream) {
    const int64_t n = B * T * (H + 2 * Hkv) * (hd / 2);
    if (n <= 0) return TPT_OK;
    SFX(rope_backward_kernel)<<<tpt_cuda_grid(n), TPT_CUDA_THREADS, 0, stream>>>(
        dqkv, dq, dq_strides, dk, dk_strides, dv, dv_strides, cos, sin_signed, dt, B * T, T, H, Hkv, hd);
    return tpt_cuda_status();
}
