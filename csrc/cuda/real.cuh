/* The compute precision of a CUDA kernel file (<family>.cuh), as csrc/cpu/real.h
 * is for a C .inc: a family's .cu defines TPT_PRECISION (32: float32, bfloat16
 * and float16 storage; 64: float64) and includes its .cuh twice; the .cuh
 * includes this first, then the family's math header from csrc/cpu. It
 * (re)defines `real`, SFX(), SIGMOID, FMA and TPT_LANES as real.h does, and the
 * device-side row access: element loads/stores with the storage conversion
 * of common.h, and TPT_LANE_SUM, the row reduction in the C kernels' order.
 * No include guard on purpose. */
#include "common.cuh"

#undef real
#undef SFX
#undef SIGMOID
#undef FMA
#undef TPT_LAUNCHER_NAME
/* the launcher of launchers.h for this precision: tpt_cuda_<name>_f32 or _f64 */
#define TPT_LAUNCHER_NAME(name) SFX(tpt_cuda_##name)
#if TPT_PRECISION == 32
#define real float
#define SFX(name) name##_f32
#define SIGMOID tpt_sigmoid_f32
#define FMA tpt_fmaf
#elif TPT_PRECISION == 64
#define real double
#define SFX(name) name##_f64
#define SIGMOID tpt_sigmoid_f64
#define FMA tpt_fma
#else
#error "define TPT_PRECISION as 32 or 64 before including real.cuh"
#endif

#ifndef TPT_LANES
#define TPT_LANES 16 /* the same lanes as csrc/cpu/real.h: the GPU sums rows in the C kernels' order */
#endif

#if (TPT_PRECISION == 32 && !defined(TPT_CUDA_REAL_32)) || (TPT_PRECISION == 64 && !defined(TPT_CUDA_REAL_64))
#if TPT_PRECISION == 32
#define TPT_CUDA_REAL_32
#else
#define TPT_CUDA_REAL_64
#endif

/* Element i of a tensor of storage dtype dt, in the compute precision. */
__device__ __forceinline__ real SFX(tpt_load)(const void* p, tpt_dtype dt, int64_t i) {
#if TPT_PRECISION == 32
    if (dt == TPT_FLOAT32) return ((const float*)p)[i];
    const uint16_t h = ((const uint16_t*)p)[i];
    return dt == TPT_BFLOAT16 ? tpt_bf16_to_float(h) : tpt_f16_to_float(h);
#else
    (void)dt;
    return ((const double*)p)[i];
#endif
}

/* Stores v as element i of a tensor of storage dtype dt (round to nearest even). */
__device__ __forceinline__ void SFX(tpt_store)(void* p, tpt_dtype dt, int64_t i, real v) {
#if TPT_PRECISION == 32
    if (dt == TPT_FLOAT32) ((float*)p)[i] = v;
    else ((uint16_t*)p)[i] = dt == TPT_BFLOAT16 ? tpt_float_to_bf16(v) : tpt_float_to_f16(v);
#else
    (void)dt;
    ((double*)p)[i] = v;
#endif
}

/* Elements 2i and 2i + 1 of a tensor of storage dtype dt, in one load of both (8 bytes for float32, 4 for
 * bfloat16/float16, 16 for float64) where the pair is aligned to that size, else in two. */
__device__ __forceinline__ void SFX(tpt_load_pair)(const void* p, tpt_dtype dt, int64_t i, real* a, real* b) {
#if TPT_PRECISION == 32
    const char* at = (const char*)p + 2 * i * tpt_dtype_size(dt);
    if (dt == TPT_FLOAT32 && (uintptr_t)at % 8 == 0) {
        const float2 v = *(const float2*)at;
        *a = v.x;
        *b = v.y;
        return;
    }
    if (dt != TPT_FLOAT32 && (uintptr_t)at % 4 == 0) {
        const uint32_t w = *(const uint32_t*)at; /* little-endian: element 2i in the low half */
        const uint16_t lo = (uint16_t)(w & 0xffffu), hi = (uint16_t)(w >> 16);
        *a = dt == TPT_BFLOAT16 ? tpt_bf16_to_float(lo) : tpt_f16_to_float(lo);
        *b = dt == TPT_BFLOAT16 ? tpt_bf16_to_float(hi) : tpt_f16_to_float(hi);
        return;
    }
#else
    const char* at = (const char*)p + 2 * i * 8;
    if ((uintptr_t)at % 16 == 0) {
        const double2 v = *(const double2*)at;
        *a = v.x;
        *b = v.y;
        return;
    }
#endif
    *a = SFX(tpt_load)(p, dt, 2 * i);
    *b = SFX(tpt_load)(p, dt, 2 * i + 1);
}

/* Stores a, b as elements 2i and 2i + 1, in one store where the pair is aligned (as tpt_load_pair). */
__device__ __forceinline__ void SFX(tpt_store_pair)(void* p, tpt_dtype dt, int64_t i, real a, real b) {
#if TPT_PRECISION == 32
    char* at = (char*)p + 2 * i * tpt_dtype_size(dt);
    if (dt == TPT_FLOAT32 && (uintptr_t)at % 8 == 0) {
        *(float2*)at = make_float2(a, b);
        return;
    }
    if (dt != TPT_FLOAT32 && (uintptr_t)at % 4 == 0) {
        const uint16_t lo = dt == TPT_BFLOAT16 ? tpt_float_to_bf16(a) : tpt_float_to_f16(a);
        const uint16_t hi = dt == TPT_BFLOAT16 ? tpt_float_to_bf16(b) : tpt_float_to_f16(b);
        *(uint32_t*)at = (uint32_t)lo | ((uint32_t)hi << 16);
        return;
    }
#else
    char* at = (char*)p + 2 * i * 8;
    if ((uintptr_t)at % 16 == 0) {
        *(double2*)at = make_double2(a, b);
        return;
    }
#endif
    SFX(tpt_store)(p, dt, 2 * i, a);
    SFX(tpt_store)(p, dt, 2 * i + 1, b);
}

/* The sum of acc over the TPT_LANES lanes of this thread's group, added in
 * lane order from 0 (as real.h's tpt_dot adds its lanes); every lane gets it.
 * Every thread of the warp must call it. */
__device__ __forceinline__ real SFX(tpt_lanes_total)(real acc) {
    real s = 0;
    for (int l = 0; l < TPT_LANES; l++) s += __shfl_sync(0xffffffffu, acc, l, TPT_LANES);
    return s;
}
#endif

/* result = sum over i in [0, n) of `term` (an expression in i), in the C
 * kernels' order (real.h's tpt_dot / tpt_sum): lane `lane` of a group of
 * TPT_LANES threads accumulates i = lane, lane + TPT_LANES, ... below
 * n - n % TPT_LANES, the lanes are added in order, then the tail in order.
 * Every lane of the group gets the result; every thread of the warp must run it. */
#undef TPT_LANE_SUM
#define TPT_LANE_SUM(result, n, lane, i, term)                                          \
    do {                                                                                 \
        const int64_t tpt_full_ = (n) - (n) % TPT_LANES;                                 \
        real tpt_acc_ = 0;                                                               \
        for (int64_t i = (lane); i < tpt_full_; i += TPT_LANES) tpt_acc_ += (term);     \
        result = SFX(tpt_lanes_total)(tpt_acc_);                                         \
        for (int64_t i = tpt_full_; i < (n); i++) result += (term);                      \
    } while (0)

/* The group of TPT_LANES threads of this thread works on row `row` of M: rows
 * past the end compute on the last row (so that the warp's shuffles see every
 * thread) and store nothing. */
#undef TPT_ROW_GROUP
#define TPT_ROW_GROUP(row, active, lane, M)                                                     \
    const int lane = (int)(threadIdx.x % TPT_LANES);                                             \
    const int64_t tpt_row_ = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / TPT_LANES;      \
    const int active = tpt_row_ < (M);                                                           \
    const int64_t row = active ? tpt_row_ : (M) - 1
