/* Causal flash attention CUDA kernels, written once for the precision `real`
 * (real.cuh), on attention_math.h. Tiles of AT_TILE query rows and AT_TILE
 * keys live in shared memory; the block's threads are spread over the
 * independent elements of each tile step (a score, an output element), each
 * of which one thread sums in a fixed order, so no element is summed by more
 * than one thread (no atomics) and the results are the same bits run to run.
 * The tiles are smaller than the C kernel's (attention.h), so the online
 * softmax rescales at other points: close to the C kernel, not its bits.
 *
 * Forward: one block a (b, h, query tile), the key tiles in order with a
 * running maximum and denominator per row, lse saved. Backward: D_i =
 * dout_i . out_i a row (16 lanes, tpt_dot's order) into the workspace; dq one
 * block a (b, h, query tile) over its key tiles in order; dk and dv one block
 * a (b, key/value head, key tile) over the group's query heads in head order,
 * each head's query tiles that see the key tile in order (the C kernel's
 * order of the dk and dv sums). */
#include "real.cuh"
#include "../cpu/attention.h"
#include "../cpu/attention_math.h"

#undef AT_TILE
#if TPT_PRECISION == 32
#define AT_TILE 32
#else
#define AT_TILE 16 /* float64 tiles of the same bytes */
#endif
#ifndef AT_THREADS
#define AT_THREADS 256
#endif

/* dst[r * ld + d] = row r0 + r of a [rows, hd] head in dt for r < n, 0 for n <= r < AT_TILE (no barrier). */
__device__ static void SFX(at_load_tile)(real* dst, int64_t ld, const void* head, tpt_dtype dt, int64_t r0, int64_t n,
                                         int64_t hd) {
    for (int64_t x = threadIdx.x; x < AT_TILE * hd; x += blockDim.x) {
        const int64_t r = x / hd, d = x % hd;
        dst[r * ld + d] = r < n ? SFX(tpt_load)(head, dt, (r0 + r) * hd + d) : (real)0;
    }
}

/* a . b over hd elements, d in order (the C kernel's tile products sum over d in order too) */
__device__ static real SFX(at_dot)(const real* a, const real* b, int64_t hd) {
    real acc = 0;
    for (int64_t d = 0; d < hd; d++) acc += a[d] * b[d];
    return acc;
}

/* The keys of the tile at k0 with nk keys that the query at `position` sees (causal). */
__device__ static int64_t SFX(at_visible_keys)(int64_t position, int64_t k0, int64_t nk) {
    const int64_t n = position - k0 + 1;
    return n < 0 ? 0 : n > nk ? nk : n;
}

/* Shared memory of each kernel, in bytes (the layouts are in the kernels). */
static inline size_t SFX(at_forward_shared)(int64_t hd) {
    return sizeof(real) * (size_t)(AT_TILE * (4 * hd + 1) + AT_TILE * AT_TILE + 3 * AT_TILE);
}
static inline size_t SFX(at_dq_shared)(int64_t hd) {
    return sizeof(real) * (size_t)(AT_TILE * (5 * hd + 2) + AT_TILE * AT_TILE + 2 * AT_TILE);
}
static inline size_t SFX(at_dkdv_shared)(int64_t hd) {
    return sizeof(real) * (size_t)(AT_TILE * (6 * hd + 2) + 2 * AT_TILE * AT_TILE + 2 * AT_TILE);
}

/* One block a (b, h, query tile), the last query tiles (the most key tiles) first. */
static __global__ void SFX(attention_forward_kernel)(void* out, real* lse, const void* q, const void* k, const void* v,
                                                     tpt_dtype dt, int64_t H, int64_t Hkv, int64_t T, int64_t Tk,
                                                     int64_t hd, int64_t kv_head_stride, int64_t offset, real scale) {
    extern __shared__ __align__(16) unsigned char at_shared[];
    real* qs = (real*)at_shared;         /* [AT_TILE, hd] */
    real* ks = qs + AT_TILE * hd;         /* [AT_TILE, hd + 1]: the padding keeps a warp's rows in distinct banks */
    real* vs = ks + AT_TILE * (hd + 1);   /* [AT_TILE, hd] */
    real* acc = vs + AT_TILE * hd;        /* [AT_TILE, hd] */
    real* S = acc + AT_TILE * hd;         /* [AT_TILE, AT_TILE] scores, then probabilities */
    real* row_max = S + AT_TILE * AT_TILE, *row_sum = row_max + AT_TILE, *alpha = row_sum + AT_TILE;
    const int64_t n_qtiles = (T + AT_TILE - 1) / AT_TILE, bh = blockIdx.x / n_qtiles;
    const int64_t q0 = (n_qtiles - 1 - blockIdx.x % n_qtiles) * AT_TILE, nq = T - q0 < AT_TILE ? T - q0 : AT_TILE;
    const int64_t b = bh / H, kv = b * Hkv + bh % H / (H / Hkv), esize = tpt_dtype_size(dt);
    const void* k_head = (const char*)k + kv * kv_head_stride * esize;
    const void* v_head = (const char*)v + kv * kv_head_stride * esize;
    SFX(at_load_tile)(qs, hd, (const char*)q + bh * T * hd * esize, dt, q0, nq, hd);
    for (int64_t x = threadIdx.x; x < AT_TILE * hd; x += blockDim.x) acc[x] = 0;
    for (int64_t r = threadIdx.x; r < AT_TILE; r += blockDim.x) row_max[r] = -INFINITY, row_sum[r] = 0;
    const int64_t first_position = offset + q0, n_ktiles = (first_position + nq - 1) / AT_TILE + 1;
    for (int64_t kt = 0; kt < n_ktiles; kt++) {
        const int64_t k0 = kt * AT_TILE, nk = Tk - k0 < AT_TILE ? Tk - k0 : AT_TILE;
        __syncthreads(); /* the previous tile's ks, vs and S are used */
        SFX(at_load_tile)(ks, hd + 1, k_head, dt, k0, nk, hd);
        SFX(at_load_tile)(vs, hd, v_head, dt, k0, nk, hd);
        __syncthreads();
        for (int64_t x = threadIdx.x; x < AT_TILE * AT_TILE; x += blockDim.x) {
            const int64_t r = x / AT_TILE, j = x % AT_TILE;
            const int64_t visible = SFX(at_visible_keys)(first_position + r, k0, nk);
            S[x] = j < visible ? SFX(at_dot)(qs + r * hd, ks + j * (hd + 1), hd) * scale : (real)-INFINITY;
        }
        __syncthreads();
        for (int64_t r = threadIdx.x; r < AT_TILE; r += blockDim.x) {
            real* row = S + r * AT_TILE;
            real m_new = row_max[r];
            for (int j = 0; j < AT_TILE; j++) m_new = row[j] > m_new ? row[j] : m_new;
            /* m_new is finite: key 0 is visible to every row and is in the first tile */
            real tile_sum = 0;
            for (int j = 0; j < AT_TILE; j++) {
                row[j] = SFX(at_prob)(row[j], m_new);
                tile_sum += row[j];
            }
            alpha[r] = SFX(at_prob)(row_max[r], m_new);
            row_sum[r] = row_sum[r] * alpha[r] + tile_sum;
            row_max[r] = m_new;
        }
        __syncthreads();
        for (int64_t x = threadIdx.x; x < AT_TILE * hd; x += blockDim.x) {
            const int64_t r = x / hd, d = x % hd;
            real a = acc[x] * alpha[r];
            for (int64_t j = 0; j < nk; j++) a += S[r * AT_TILE + j] * vs[j * hd + d];
            acc[x] = a;
        }
    }
    __syncthreads();
    void* out_head = (char*)out + bh * T * hd * esize;
    for (int64_t x = threadIdx.x; x < nq * hd; x += blockDim.x)
        SFX(tpt_store)(out_head, dt, q0 * hd + x, acc[x] / row_sum[x / hd]);
    for (int64_t r = threadIdx.x; r < nq; r += blockDim.x) lse[bh * T + q0 + r] = SFX(at_lse)(row_max[r], row_sum[r]);
}

/* delta[row] = dout_row . out_row over the B * H * T rows, a group of TPT_LANES threads a row (tpt_dot's order). */
static __global__ void SFX(attention_delta_kernel)(real* delta, const void* dout, const void* out, tpt_dtype dt,
                                                   int64_t rows, int64_t hd) {
    TPT_ROW_GROUP(row, active, lane, rows);
    real dot;
    TPT_LANE_SUM(dot, hd, lane, d, SFX(tpt_load)(dout, dt, row * hd + d) * SFX(tpt_load)(out, dt, row * hd + d));
    if (active && lane == 0) delta[row] = dot;
}

/* dq of one (b, h, query tile) a block: dq_i = scale sum_j ds_ij k_j over the key tiles in order. */
static __global__ void SFX(attention_dq_kernel)(void* dq, const void* dout, const void* q, const void* k,
                                                const void* v, const real* lse, const real* delta, tpt_dtype dt,
                                                int64_t H, int64_t Hkv, int64_t T, int64_t Tk, int64_t hd,
                                                int64_t kv_head_stride, int64_t offset, real scale) {
    extern __shared__ __align__(16) unsigned char at_shared[];
    real* qs = (real*)at_shared;         /* [AT_TILE, hd] */
    real* dos = qs + AT_TILE * hd;        /* [AT_TILE, hd] */
    real* ks = dos + AT_TILE * hd;        /* [AT_TILE, hd + 1] */
    real* vs = ks + AT_TILE * (hd + 1);   /* [AT_TILE, hd + 1] */
    real* dqa = vs + AT_TILE * (hd + 1);  /* [AT_TILE, hd] */
    real* dS = dqa + AT_TILE * hd;        /* [AT_TILE, AT_TILE] */
    real *lse_s = dS + AT_TILE * AT_TILE, *delta_s = lse_s + AT_TILE;
    const int64_t n_qtiles = (T + AT_TILE - 1) / AT_TILE, bh = blockIdx.x / n_qtiles;
    const int64_t q0 = (n_qtiles - 1 - blockIdx.x % n_qtiles) * AT_TILE, nq = T - q0 < AT_TILE ? T - q0 : AT_TILE;
    const int64_t b = bh / H, kv = b * Hkv + bh % H / (H / Hkv), esize = tpt_dtype_size(dt);
    const void* k_head = (const char*)k + kv * kv_head_stride * esize;
    const void* v_head = (const char*)v + kv * kv_head_stride * esize;
    SFX(at_load_tile)(qs, hd, (const char*)q + bh * T * hd * esize, dt, q0, nq, hd);
    SFX(at_load_tile)(dos, hd, (const char*)dout + bh * T * hd * esize, dt, q0, nq, hd);
    for (int64_t x = threadIdx.x; x < AT_TILE * hd; x += blockDim.x) dqa[x] = 0;
    for (int64_t r = threadIdx.x; r < AT_TILE; r += blockDim.x) {
        lse_s[r] = r < nq ? lse[bh * T + q0 + r] : (real)0;
        delta_s[r] = r < nq ? delta[bh * T + q0 + r] : (real)0;
    }
    const int64_t first_position = offset + q0, n_ktiles = (first_position + nq - 1) / AT_TILE + 1;
    for (int64_t kt = 0; kt < n_ktiles; kt++) {
        const int64_t k0 = kt * AT_TILE, nk = Tk - k0 < AT_TILE ? Tk - k0 : AT_TILE;
        __syncthreads();
        SFX(at_load_tile)(ks, hd + 1, k_head, dt, k0, nk, hd);
        SFX(at_load_tile)(vs, hd + 1, v_head, dt, k0, nk, hd);
        __syncthreads();
        for (int64_t x = threadIdx.x; x < AT_TILE * AT_TILE; x += blockDim.x) {
            const int64_t r = x / AT_TILE, j = x % AT_TILE;
            real ds = 0;
            if (j < SFX(at_visible_keys)(first_position + r, k0, nk)) {
                const real p = SFX(at_prob)(SFX(at_dot)(qs + r * hd, ks + j * (hd + 1), hd) * scale, lse_s[r]);
                ds = SFX(at_score_grad)(p, SFX(at_dot)(dos + r * hd, vs + j * (hd + 1), hd), delta_s[r]);
            }
            dS[x] = ds;
        }
        __syncthreads();
        for (int64_t x = threadIdx.x; x < AT_TILE * hd; x += blockDim.x) {
            const int64_t r = x / hd, d = x % hd;
            real a = dqa[x];
            for (int64_t j = 0; j < nk; j++) a += dS[r * AT_TILE + j] * ks[j * (hd + 1) + d];
            dqa[x] = a;
        }
    }
    __syncthreads();
    void* dq_head = (char*)dq + bh * T * hd * esize;
    for (int64_t x = threadIdx.x; x < nq * hd; x += blockDim.x) SFX(tpt_store)(dq_head, dt, q0 * hd + x, dqa[x] * scale);
}

/* dk and dv of one (b, key/value head g, key tile) a block: dk_j = scale sum_i ds_ij q_i, dv_j = sum_i p_ij dout_i
 * over the group's query heads in order, each head's query tiles from the first that sees the key tile, in order. */
static __global__ void SFX(attention_dkdv_kernel)(void* dk, void* dv, const void* dout, const void* q, const void* k,
                                                  const void* v, const real* lse, const real* delta, tpt_dtype dt,
                                                  int64_t H, int64_t Hkv, int64_t T, int64_t Tk, int64_t hd,
                                                  int64_t kv_head_stride, int64_t offset, real scale) {
    extern __shared__ __align__(16) unsigned char at_shared[];
    real* ks = (real*)at_shared;          /* [AT_TILE, hd] */
    real* vs = ks + AT_TILE * hd;          /* [AT_TILE, hd] */
    real* qs = vs + AT_TILE * hd;          /* [AT_TILE, hd + 1] */
    real* dos = qs + AT_TILE * (hd + 1);   /* [AT_TILE, hd + 1] */
    real* dka = dos + AT_TILE * (hd + 1);  /* [AT_TILE, hd] */
    real* dva = dka + AT_TILE * hd;        /* [AT_TILE, hd] */
    real* PT = dva + AT_TILE * hd;         /* [AT_TILE keys, AT_TILE queries]: p transposed */
    real* dST = PT + AT_TILE * AT_TILE;    /* [AT_TILE keys, AT_TILE queries]: ds transposed */
    real *lse_s = dST + AT_TILE * AT_TILE, *delta_s = lse_s + AT_TILE;
    const int64_t n_ktiles = (Tk + AT_TILE - 1) / AT_TILE, task = blockIdx.x / n_ktiles;
    const int64_t k0 = blockIdx.x % n_ktiles * AT_TILE, nk = Tk - k0 < AT_TILE ? Tk - k0 : AT_TILE;
    const int64_t b = task / Hkv, g = task % Hkv, group = H / Hkv, esize = tpt_dtype_size(dt);
    SFX(at_load_tile)(ks, hd, (const char*)k + task * kv_head_stride * esize, dt, k0, nk, hd);
    SFX(at_load_tile)(vs, hd, (const char*)v + task * kv_head_stride * esize, dt, k0, nk, hd);
    for (int64_t x = threadIdx.x; x < AT_TILE * hd; x += blockDim.x) dka[x] = 0, dva[x] = 0;
    /* query t sees key k0 + j iff k0 + j <= offset + t: the tiles before first_qtile see none of this tile */
    const int64_t first_qtile = (k0 - offset > 0 ? k0 - offset : 0) / AT_TILE;
    for (int64_t h = g * group; h < (g + 1) * group; h++) {
        const int64_t bh = b * H + h;
        for (int64_t q0 = first_qtile * AT_TILE; q0 < T; q0 += AT_TILE) {
            const int64_t nq = T - q0 < AT_TILE ? T - q0 : AT_TILE;
            __syncthreads(); /* the previous tile's qs, dos, PT and dST are used */
            SFX(at_load_tile)(qs, hd + 1, (const char*)q + bh * T * hd * esize, dt, q0, nq, hd);
            SFX(at_load_tile)(dos, hd + 1, (const char*)dout + bh * T * hd * esize, dt, q0, nq, hd);
            for (int64_t i = threadIdx.x; i < AT_TILE; i += blockDim.x) {
                lse_s[i] = i < nq ? lse[bh * T + q0 + i] : (real)0;
                delta_s[i] = i < nq ? delta[bh * T + q0 + i] : (real)0;
            }
            __syncthreads();
            for (int64_t x = threadIdx.x; x < AT_TILE * AT_TILE; x += blockDim.x) {
                const int64_t j = x / AT_TILE, i = x % AT_TILE;
                real p = 0, ds = 0;
                if (i < nq && j < SFX(at_visible_keys)(offset + q0 + i, k0, nk)) {
                    p = SFX(at_prob)(SFX(at_dot)(qs + i * (hd + 1), ks + j * hd, hd) * scale, lse_s[i]);
                    ds = SFX(at_score_grad)(p, SFX(at_dot)(dos + i * (hd + 1), vs + j * hd, hd), delta_s[i]);
                }
                PT[x] = p;
                dST[x] = ds;
            }
            __syncthreads();
            for (int64_t x = threadIdx.x; x < AT_TILE * hd; x += blockDim.x) {
                const int64_t j = x / hd, d = x % hd;
                real a_k = dka[x], a_v = dva[x];
                for (int64_t i = 0; i < nq; i++) {
                    a_k += dST[j * AT_TILE + i] * qs[i * (hd + 1) + d];
                    a_v += PT[j * AT_TILE + i] * dos[i * (hd + 1) + d];
                }
                dka[x] = a_k;
                dva[x] = a_v;
            }
        }
    }
    __syncthreads();
    const int64_t at = task * Tk * hd + k0 * hd;
    for (int64_t x = threadIdx.x; x < nk * hd; x += blockDim.x) {
        SFX(tpt_store)(dk, dt, at + x, dka[x] * scale);
        SFX(tpt_store)(dv, dt, at + x, dva[x]);
    }
}

/* Launches `kernel` with `shared` bytes of dynamic shared memory, raising the kernel's limit past the default 48 KiB
 * where needed (an error when the device has less: the launch then fails and the launcher reports it). */
#undef AT_LAUNCH
#define AT_LAUNCH(kernel, blocks, shared, stream, ...)                                                   \
    do {                                                                                                 \
        if ((shared) > 48 * 1024)                                                                        \
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(shared));    \
        kernel<<<(blocks), AT_THREADS, (shared), (stream)>>>(__VA_ARGS__);                               \
    } while (0)

extern "C" int TPT_LAUNCHER_NAME(attention_forward)(void* out, real* lse, const void* q, const void* k, const void* v,
                                                    tpt_dtype dt, int64_t B, int64_t H, int64_t Hkv, int64_t T,
                                                    int64_t Tk, int64_t hd, int64_t kv_head_stride, int64_t offset,
                                                    double scale, cudaStream_t stream) {
    if (B * H * T == 0) return TPT_OK;
    const int64_t blocks = B * H * ((T + AT_TILE - 1) / AT_TILE);
    AT_LAUNCH(SFX(attention_forward_kernel), (unsigned)blocks, SFX(at_forward_shared)(hd), stream, out, lse, q, k, v,
              dt, H, Hkv, T, Tk, hd, kv_head_stride, offset, (real)scale);
    return tpt_cuda_status();
}

extern "C" int TPT_LAUNCHER_NAME(attention_backward)(void* dq, void* dk, void* dv, real* delta, const void* dout,
                                                     const void* q, const void* k, const void* v, const void* out,
                                                     const real* lse, tpt_dtype dt, int64_t B, int64_t H,
                                                     int64_t Hkv, int64_t T, int64_t Tk, int64_t hd,
                                                     int64_t kv_head_stride, int64_t offset, double scale,
                                                     cudaStream_t stream) {
    const real sc = (real)scale;
    if (B * H * T > 0) {
        const int64_t rows = B * H * T, blocks = B * H * ((T + AT_TILE - 1) / AT_TILE);
        SFX(attention_delta_kernel)<<<tpt_cuda_blocks(rows * TPT_LANES, TPT_CUDA_THREADS), TPT_CUDA_THREADS, 0,
                                      stream>>>(delta, dout, out, dt, rows, hd);
        AT_LAUNCH(SFX(attention_dq_kernel), (unsigned)blocks, SFX(at_dq_shared)(hd), stream, dq, dout, q, k, v, lse,
                  delta, dt, H, Hkv, T, Tk, hd, kv_head_stride, offset, sc);
    }
    /* with T = 0 the keys get no gradient: the kernel writes their zeros */
    if (B * Hkv * Tk > 0) {
        const int64_t blocks = B * Hkv * ((Tk + AT_TILE - 1) / AT_TILE);
        AT_LAUNCH(SFX(attention_dkdv_kernel), (unsigned)blocks, SFX(at_dkdv_shared)(hd), stream, dk, dv, dout, q, k, v,
                  lse, delta, dt, H, Hkv, T, Tk, hd, kv_head_stride, offset, sc);
    }
    return tpt_cuda_status();
}
