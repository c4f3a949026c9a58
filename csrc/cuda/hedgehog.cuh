/* Hedgehog feature map and chunked linear attention CUDA kernels, written
 * once for the precision `real` (real.cuh). The feature map runs one row a
 * thread on hedgehog_math.h. The attention runs one task a thread block
 * (forward: a query head (b, h); backward and step: a key/value head (b, g)
 * and its query heads), chunk by chunk as hedgehog.inc does, the block's
 * threads spread over the independent output elements of each step: every
 * output element is the same sum in the same order as in the C kernel, so
 * the results are its bits, and no element is summed by more than one
 * thread (no atomics). The chunk buffers and state live in a global
 * workspace, one slice a task. */
#include "real.cuh"
#include "../cpu/hedgehog.h"
#include "../cpu/hedgehog_math.h"

/* phi[r] = [softmax(u[r]), softmax(-u[r])], one thread a row; workspace rows of 3F. */
static __global__ void SFX(feature_map_forward_kernel)(void* phi, real* workspace, const void* u, tpt_dtype dt,
                                                       int64_t rows, int64_t F) {
    TPT_FOR_EACH(r, rows) {
        real *in = workspace + r * 3 * F, *out = in + F;
        for (int64_t e = 0; e < F; e++) in[e] = SFX(tpt_load)(u, dt, r * F + e);
        SFX(hh_softmax)(out, in, F, 1);
        SFX(hh_softmax)(out + F, in, F, -1);
        for (int64_t e = 0; e < 2 * F; e++) SFX(tpt_store)(phi, dt, r * 2 * F + e, out[e]);
    }
}

/* du[r] from dphi[r] and the recomputed softmaxes, one thread a row; workspace rows of 5F. */
static __global__ void SFX(feature_map_backward_kernel)(void* du, real* workspace, const void* dphi, const void* u,
                                                        tpt_dtype dt, int64_t rows, int64_t F) {
    TPT_FOR_EACH(r, rows) {
        real *in = workspace + r * 5 * F, *g = in + F, *pm = g + 2 * F;
        for (int64_t e = 0; e < F; e++) in[e] = SFX(tpt_load)(u, dt, r * F + e);
        for (int64_t e = 0; e < 2 * F; e++) g[e] = SFX(tpt_load)(dphi, dt, r * 2 * F + e);
        SFX(hh_softmax)(pm, in, F, 1);
        SFX(hh_softmax)(pm + F, in, F, -1);
        real dot_p = 0, dot_m = 0;
        for (int64_t e = 0; e < F; e++) {
            dot_p += g[e] * pm[e];
            dot_m += g[F + e] * pm[F + e];
        }
        for (int64_t e = 0; e < F; e++)
            SFX(tpt_store)(du, dt, r * F + e, SFX(hh_feature_grad)(pm[e], g[e], dot_p, pm[F + e], g[F + e], dot_m));
    }
}

#undef HH_C
#define HH_C TPT_HEDGEHOG_CHUNK

/* One task's slice of the workspace (sizes in la_slice). */
typedef struct {
    real *q, *k, *v, *g, *num, *den, *A, *Dm, *loc_k, *loc_v, *S, *z, *R, *r, *a_all, *c_all, *dk_acc, *dv_acc;
} SFX(la_buffers);

/* Lays out task `task`'s slice; returns its size when base is NULL (the forward needs only the first eight). */
__host__ __device__ static inline int64_t SFX(la_slice)(SFX(la_buffers) * s, real* base, int64_t task, int64_t T,
                                                        int64_t K, int64_t Dv, int backward) {
    const int64_t C = HH_C;
    const int64_t sizes[18] = {C * K, C * K, C * Dv, C * Dv, C * Dv, C, C * C, C * C, C * K,
                               C * Dv, K * Dv, K, K * Dv, K, T * Dv, T, T * K, T * Dv};
    const int n = backward ? 18 : 12;
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += sizes[i];
    if (!base) return total;
    real** fields[18] = {&s->q, &s->k, &s->v, &s->g, &s->num, &s->den, &s->A, &s->Dm, &s->loc_k,
                         &s->loc_v, &s->S, &s->z, &s->R, &s->r, &s->a_all, &s->c_all, &s->dk_acc, &s->dv_acc};
    real* p = base + task * total;
    for (int i = 0; i < 18; i++) {
        *fields[i] = i < n ? p : NULL;
        if (i < n) p += sizes[i];
    }
    return total;
}

/* dst[x] = rows [t0, t0 + n) of a [T, W] head in dt, as real; then a barrier. */
__device__ static void SFX(la_load)(real* dst, const void* head, tpt_dtype dt, int64_t t0, int64_t n, int64_t W) {
    for (int64_t x = threadIdx.x; x < n * W; x += blockDim.x) dst[x] = SFX(tpt_load)(head, dt, t0 * W + x);
    __syncthreads();
}

/* buf[x] = 0 for x < n; then a barrier. */
__device__ static void SFX(la_zero)(real* buf, int64_t n) {
    for (int64_t x = threadIdx.x; x < n; x += blockDim.x) buf[x] = 0;
    __syncthreads();
}

/* S [K, Dv] += sum_j k_j v_j^T, z += sum_j k_j over the n rows, j in order (hh_state_update). */
__device__ static void SFX(la_state_update)(real* S, real* z, const real* k, const real* v, int64_t n, int64_t K,
                                            int64_t Dv) {
    for (int64_t x = threadIdx.x; x < K * Dv + K; x += blockDim.x) {
        if (x < K * Dv) {
            const int64_t d = x / Dv, e = x % Dv;
            real acc = S[x];
            for (int64_t j = 0; j < n; j++) acc += k[j * K + d] * v[j * Dv + e];
            S[x] = acc;
        } else {
            const int64_t d = x - K * Dv;
            real acc = z[d];
            for (int64_t j = 0; j < n; j++) acc += k[j * K + d];
            z[d] = acc;
        }
    }
    __syncthreads();
}

/* R [K, Dv] += sum_i q_i a_i^T, r += sum_i c_i q_i over the n rows, i in order (hh_reverse_update). */
__device__ static void SFX(la_reverse_update)(real* R, real* r, const real* q, const real* a, const real* c, int64_t n,
                                              int64_t K, int64_t Dv) {
    for (int64_t x = threadIdx.x; x < K * Dv + K; x += blockDim.x) {
        if (x < K * Dv) {
            const int64_t d = x / Dv, e = x % Dv;
            real acc = R[x];
            for (int64_t i = 0; i < n; i++) acc += q[i * K + d] * a[i * Dv + e];
            R[x] = acc;
        } else {
            const int64_t d = x - K * Dv;
            real acc = r[d];
            for (int64_t i = 0; i < n; i++) acc += c[i] * q[i * K + d];
            r[d] = acc;
        }
    }
    __syncthreads();
}

/* out [n, n]: out[i, j] = sum_d a[i, d] b[j, d] over m values, d in order (hh_matmul on a transpose). */
__device__ static void SFX(la_scores)(real* out, const real* a, const real* b, int64_t n, int64_t m) {
    for (int64_t x = threadIdx.x; x < n * n; x += blockDim.x) {
        const int64_t i = x / n, j = x % n;
        real acc = 0;
        for (int64_t d = 0; d < m; d++) acc += a[i * m + d] * b[j * m + d];
        out[x] = acc;
    }
}

/* num, den of one chunk from the state and, causal, the masked scores A (hh_chunk_num_den). */
__device__ static void SFX(la_num_den)(SFX(la_buffers) * s, int64_t n, int64_t K, int64_t Dv, int causal, real eps) {
    if (causal) SFX(la_scores)(s->A, s->q, s->k, n, K);
    __syncthreads();
    for (int64_t x = threadIdx.x; x < n * Dv + n; x += blockDim.x) {
        if (x < n * Dv) {
            const int64_t i = x / Dv, c = x % Dv;
            real acc = 0;
            for (int64_t d = 0; d < K; d++) acc += s->q[i * K + d] * s->S[d * Dv + c];
            if (causal)
                for (int64_t j = 0; j <= i; j++) acc += s->A[i * n + j] * s->v[j * Dv + c];
            s->num[x] = acc;
        } else {
            const int64_t i = x - n * Dv;
            real qz = 0;
            for (int64_t d = 0; d < K; d++) qz += s->q[i * K + d] * s->z[d];
            real den = qz;
            if (causal) {
                real row_sum = 0;
                for (int64_t j = 0; j <= i; j++) row_sum += s->A[i * n + j];
                den += row_sum;
            }
            s->den[i] = den + eps;
        }
    }
    __syncthreads();
}

/* The state of all T tokens of a key/value head (the non-causal form). */
__device__ static void SFX(la_full_state)(SFX(la_buffers) * s, const void* k_head, const void* v_head, tpt_dtype dt,
                                          int64_t T, int64_t K, int64_t Dv) {
    for (int64_t t0 = 0; t0 < T; t0 += HH_C) {
        const int64_t n = T - t0 < HH_C ? T - t0 : HH_C;
        SFX(la_load)(s->k, k_head, dt, t0, n, K);
        SFX(la_load)(s->v, v_head, dt, t0, n, Dv);
        SFX(la_state_update)(s->S, s->z, s->k, s->v, n, K, Dv);
    }
}

static __global__ void SFX(linear_attention_forward_kernel)(void* y, real* S_out, real* z_out, real* workspace,
                                                            const void* phi_q, const void* phi_k, const void* v,
                                                            tpt_dtype dt, int64_t H, int64_t Hkv, int64_t T,
                                                            int64_t K, int64_t Dv, int causal, real eps) {
    const int64_t task = blockIdx.x, b = task / H, h = task % H, group = H / Hkv, kv = b * Hkv + h / group;
    const int64_t esize = tpt_dtype_size(dt);
    SFX(la_buffers) s;
    SFX(la_slice)(&s, workspace, task, T, K, Dv, 0);
    const void* q_head = (const char*)phi_q + task * T * K * esize;
    const void* k_head = (const char*)phi_k + kv * T * K * esize;
    const void* v_head = (const char*)v + kv * T * Dv * esize;
    SFX(la_zero)(s.S, K * Dv);
    SFX(la_zero)(s.z, K);
    if (!causal) SFX(la_full_state)(&s, k_head, v_head, dt, T, K, Dv);
    for (int64_t t0 = 0; t0 < T; t0 += HH_C) {
        const int64_t n = T - t0 < HH_C ? T - t0 : HH_C;
        SFX(la_load)(s.q, q_head, dt, t0, n, K);
        SFX(la_load)(s.k, k_head, dt, t0, n, K);
        SFX(la_load)(s.v, v_head, dt, t0, n, Dv);
        SFX(la_num_den)(&s, n, K, Dv, causal, eps);
        for (int64_t x = threadIdx.x; x < n * Dv; x += blockDim.x)
            SFX(tpt_store)(y, dt, task * T * Dv + t0 * Dv + x, s.num[x] / s.den[x / Dv]);
        if (causal) SFX(la_state_update)(s.S, s.z, s.k, s.v, n, K, Dv);
    }
    if (S_out && h % group == 0) {
        for (int64_t x = threadIdx.x; x < K * Dv; x += blockDim.x) S_out[kv * K * Dv + x] = s.S[x];
        for (int64_t x = threadIdx.x; x < K; x += blockDim.x) z_out[kv * K + x] = s.z[x];
    }
}

/* Pass A of one query head (hh_backward_queries): a_i, c_i for all T and dq. */
__device__ static void SFX(la_backward_queries)(SFX(la_buffers) * s, void* dq, int64_t qh, const void* dy,
                                                const void* q_head, const void* k_head, const void* v_head,
                                                tpt_dtype dt, int64_t T, int64_t K, int64_t Dv, int causal, real eps) {
    const int64_t esize = tpt_dtype_size(dt);
    const void* dy_head = (const char*)dy + qh * T * Dv * esize;
    SFX(la_zero)(s->S, K * Dv);
    SFX(la_zero)(s->z, K);
    if (!causal) SFX(la_full_state)(s, k_head, v_head, dt, T, K, Dv);
    for (int64_t t0 = 0; t0 < T; t0 += HH_C) {
        const int64_t n = T - t0 < HH_C ? T - t0 : HH_C;
        SFX(la_load)(s->q, q_head, dt, t0, n, K);
        SFX(la_load)(s->k, k_head, dt, t0, n, K);
        SFX(la_load)(s->v, v_head, dt, t0, n, Dv);
        SFX(la_load)(s->g, dy_head, dt, t0, n, Dv);
        SFX(la_num_den)(s, n, K, Dv, causal, eps);
        real *a = s->a_all + t0 * Dv, *c = s->c_all + t0;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            real gy = 0;
            for (int64_t e = 0; e < Dv; e++) {
                const real yv = s->num[i * Dv + e] / s->den[i];
                gy += s->g[i * Dv + e] * yv;
                a[i * Dv + e] = s->g[i * Dv + e] / s->den[i];
            }
            c[i] = -gy / s->den[i];
        }
        __syncthreads();
        if (causal) SFX(la_scores)(s->Dm, a, s->v, n, Dv); /* ds_ij = a_i . v_j (+ c_i) */
        __syncthreads();
        for (int64_t x = threadIdx.x; x < n * K; x += blockDim.x) {
            const int64_t i = x / K, d = x % K;
            real sa = 0;
            for (int64_t e = 0; e < Dv; e++) sa += s->S[d * Dv + e] * a[i * Dv + e];
            real acc = sa + c[i] * s->z[d];
            if (causal)
                for (int64_t j = 0; j <= i; j++) acc += (s->Dm[i * n + j] + c[i]) * s->k[j * K + d];
            SFX(tpt_store)(dq, dt, qh * T * K + t0 * K + x, acc);
        }
        __syncthreads();
        if (causal) SFX(la_state_update)(s->S, s->z, s->k, s->v, n, K, Dv);
    }
}

/* Pass B of one query head (hh_backward_keys): adds the head's dk, dv to dk_acc, dv_acc. */
__device__ static void SFX(la_backward_keys)(SFX(la_buffers) * s, const void* q_head, const void* k_head,
                                             const void* v_head, tpt_dtype dt, int64_t T, int64_t K, int64_t Dv,
                                             int causal) {
    SFX(la_zero)(s->R, K * Dv);
    SFX(la_zero)(s->r, K);
    const int64_t n_chunks = (T + HH_C - 1) / HH_C;
    if (!causal)
        for (int64_t t0 = 0; t0 < T; t0 += HH_C) {
            const int64_t n = T - t0 < HH_C ? T - t0 : HH_C;
            SFX(la_load)(s->q, q_head, dt, t0, n, K);
            SFX(la_reverse_update)(s->R, s->r, s->q, s->a_all + t0 * Dv, s->c_all + t0, n, K, Dv);
        }
    for (int64_t chunk = n_chunks - 1; chunk >= 0; chunk--) {
        const int64_t t0 = chunk * HH_C, n = T - t0 < HH_C ? T - t0 : HH_C;
        SFX(la_load)(s->q, q_head, dt, t0, n, K);
        SFX(la_load)(s->k, k_head, dt, t0, n, K);
        SFX(la_load)(s->v, v_head, dt, t0, n, Dv);
        const real *a = s->a_all + t0 * Dv, *c = s->c_all + t0;
        if (causal) {
            SFX(la_scores)(s->A, s->q, s->k, n, K);
            SFX(la_scores)(s->Dm, a, s->v, n, Dv);
        }
        __syncthreads();
        for (int64_t x = threadIdx.x; x < n * (K + Dv); x += blockDim.x) {
            if (x < n * K) {
                const int64_t j = x / K, d = x % K;
                real rv = 0;
                for (int64_t e = 0; e < Dv; e++) rv += s->R[d * Dv + e] * s->v[j * Dv + e];
                real acc = rv + s->r[d];
                if (causal)
                    for (int64_t i = j; i < n; i++) acc += (s->Dm[i * n + j] + c[i]) * s->q[i * K + d];
                s->loc_k[x] = acc;
            } else {
                const int64_t y = x - n * K, j = y / Dv, e = y % Dv;
                real acc = 0;
                for (int64_t d = 0; d < K; d++) acc += s->k[j * K + d] * s->R[d * Dv + e];
                if (causal)
                    for (int64_t i = j; i < n; i++) acc += s->A[i * n + j] * a[i * Dv + e];
                s->loc_v[y] = acc;
            }
        }
        __syncthreads();
        for (int64_t x = threadIdx.x; x < n * K; x += blockDim.x) s->dk_acc[t0 * K + x] += s->loc_k[x];
        for (int64_t x = threadIdx.x; x < n * Dv; x += blockDim.x) s->dv_acc[t0 * Dv + x] += s->loc_v[x];
        if (causal) SFX(la_reverse_update)(s->R, s->r, s->q, a, c, n, K, Dv);
        __syncthreads();
    }
}

static __global__ void SFX(linear_attention_backward_kernel)(void* dq, void* dk, void* dv, real* workspace,
                                                             const void* dy, const void* phi_q, const void* phi_k,
                                                             const void* v, tpt_dtype dt, int64_t H, int64_t Hkv,
                                                             int64_t T, int64_t K, int64_t Dv, int causal, real eps) {
    const int64_t task = blockIdx.x, b = task / Hkv, group = H / Hkv, esize = tpt_dtype_size(dt);
    SFX(la_buffers) s;
    SFX(la_slice)(&s, workspace, task, T, K, Dv, 1);
    const void* k_head = (const char*)phi_k + task * T * K * esize;
    const void* v_head = (const char*)v + task * T * Dv * esize;
    SFX(la_zero)(s.dk_acc, T * K);
    SFX(la_zero)(s.dv_acc, T * Dv);
    for (int64_t h = (task % Hkv) * group; h < (task % Hkv + 1) * group; h++) {
        const int64_t qh = b * H + h;
        const void* q_head = (const char*)phi_q + qh * T * K * esize;
        SFX(la_backward_queries)(&s, dq, qh, dy, q_head, k_head, v_head, dt, T, K, Dv, causal, eps);
        SFX(la_backward_keys)(&s, q_head, k_head, v_head, dt, T, K, Dv, causal);
    }
    for (int64_t x = threadIdx.x; x < T * K; x += blockDim.x) SFX(tpt_store)(dk, dt, task * T * K + x, s.dk_acc[x]);
    for (int64_t x = threadIdx.x; x < T * Dv; x += blockDim.x) SFX(tpt_store)(dv, dt, task * T * Dv + x, s.dv_acc[x]);
}

/* One decoding token of a key/value head (b, g) a block (linear_attention_step). */
static __global__ void SFX(linear_attention_step_kernel)(void* y, real* S_new, real* z_new, const void* phi_q,
                                                         const void* phi_k, const void* v, const real* S, const real* z,
                                                         tpt_dtype dt, int64_t H, int64_t Hkv, int64_t K, int64_t Dv,
                                                         real eps) {
    const int64_t task = blockIdx.x, b = task / Hkv, group = H / Hkv;
    real *Sn = S_new + task * K * Dv, *zn = z_new + task * K;
    for (int64_t x = threadIdx.x; x < K * Dv + K; x += blockDim.x) {
        if (x < K * Dv) {
            const int64_t d = x / Dv, e = x % Dv;
            Sn[x] = S[task * K * Dv + x] + SFX(tpt_load)(phi_k, dt, task * K + d) * SFX(tpt_load)(v, dt, task * Dv + e);
        } else {
            const int64_t d = x - K * Dv;
            zn[d] = z[task * K + d] + SFX(tpt_load)(phi_k, dt, task * K + d);
        }
    }
    __syncthreads();
    for (int64_t x = threadIdx.x; x < group * Dv; x += blockDim.x) {
        const int64_t qh = b * H + (task % Hkv) * group + x / Dv, e = x % Dv;
        real num = 0, den = 0;
        for (int64_t d = 0; d < K; d++) num += SFX(tpt_load)(phi_q, dt, qh * K + d) * Sn[d * Dv + e];
        for (int64_t d = 0; d < K; d++) den += SFX(tpt_load)(phi_q, dt, qh * K + d) * zn[d];
        den += eps;
        SFX(tpt_store)(y, dt, qh * Dv + e, num / den);
    }
}

extern "C" int TPT_LAUNCHER_NAME(hedgehog_feature_map_forward)(void* phi, real* workspace, const void* u,
                                                               tpt_dtype dt, int64_t rows, int64_t F,
                                                               cudaStream_t stream) {
    if (rows <= 0 || F <= 0) return TPT_OK;
    SFX(feature_map_forward_kernel)<<<tpt_cuda_grid(rows), TPT_CUDA_THREADS, 0, stream>>>(phi, workspace, u, dt, rows,
                                                                                         F);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(hedgehog_feature_map_backward)(void* du, real* workspace, const void* dphi,
                                                                const void* u, tpt_dtype dt, int64_t rows, int64_t F,
                                                                cudaStream_t stream) {
    if (rows <= 0 || F <= 0) return TPT_OK;
    SFX(feature_map_backward_kernel)<<<tpt_cuda_grid(rows), TPT_CUDA_THREADS, 0, stream>>>(du, workspace, dphi, u, dt,
                                                                                          rows, F);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(linear_attention_forward)(void* y, real* S_out, real* z_out, real* workspace,
                                                           const void* phi_q, const void* phi_k, const void* v,
                                                           tpt_dtype dt, int64_t B, int64_t H, int64_t Hkv, int64_t T,
                                                           int64_t K, int64_t Dv, int causal, double eps,
                                                           cudaStream_t stream) {
    if (B * H <= 0 || T <= 0) return TPT_OK;
    SFX(linear_attention_forward_kernel)<<<(unsigned)(B * H), TPT_CUDA_THREADS, 0, stream>>>(
        y, S_out, z_out, workspace, phi_q, phi_k, v, dt, H, Hkv, T, K, Dv, causal, (real)eps);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(linear_attention_backward)(void* dq, void* dk, void* dv, real* workspace,
                                                            const void* dy, const void* phi_q, const void* phi_k,
                                                            const void* v, tpt_dtype dt, int64_t B, int64_t H,
                                                            int64_t Hkv, int64_t T, int64_t K, int64_t Dv, int causal,
                                                            double eps, cudaStream_t stream) {
    if (B * Hkv <= 0 || T <= 0) return TPT_OK;
    SFX(linear_attention_backward_kernel)<<<(unsigned)(B * Hkv), TPT_CUDA_THREADS, 0, stream>>>(
        dq, dk, dv, workspace, dy, phi_q, phi_k, v, dt, H, Hkv, T, K, Dv, causal, (real)eps);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(linear_attention_step)(void* y, real* S_new, real* z_new, const void* phi_q,
                                                        const void* phi_k, const void* v, const real* S, const real* z,
                                                        tpt_dtype dt, int64_t B, int64_t H, int64_t Hkv, int64_t K,
                                                        int64_t Dv, double eps, cudaStream_t stream) {
    if (B * Hkv <= 0) return TPT_OK;
    SFX(linear_attention_step_kernel)<<<(unsigned)(B * Hkv), TPT_CUDA_THREADS, 0, stream>>>(
        y, S_new, z_new, phi_q, phi_k, v, S, z, dt, H, Hkv, K, Dv, (real)eps);
    return tpt_cuda_status();
}
