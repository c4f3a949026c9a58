/* Shared by every kernel family: storage dtypes, bfloat16/float16 conversion, row I/O in the compute
 * precision, and the fixed row blocks that make reductions deterministic.
 * It compiles as C11 and as CUDA C: TPT_HD marks the per-element helpers
 * host+device so that CUDA kernels can share this arithmetic. */
#ifndef TPT_COMMON_H
#define TPT_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define TPT_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
/* always inlined, so each TPT_MULTIVERSION clone gets its own copy (see TPT_INLINE) */
#define TPT_HD static inline __attribute__((always_inline))
#else
#define TPT_HD static inline
#endif

/* C99's restrict, spelled as C++ (and so CUDA) compilers take it */
#if defined(__CUDACC__) || defined(__cplusplus)
#define TPT_RESTRICT __restrict__
#else
#define TPT_RESTRICT restrict
#endif

/* Portable runtime dispatch: one clone per x86-64 microarchitecture level,
 * picked when the library loads. Never -march=native. -DTPT_NO_MULTIVERSION
 * builds one plain version for the -march given (tests/test_build.py builds
 * each level that way to check that all give the same bits). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__) && \
    !defined(TPT_NO_MULTIVERSION)
#define TPT_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TPT_MULTIVERSION
#endif

/* float32 -> bfloat16 in hardware (AVX512-BF16) where the CPU has it: the row
 * store below (tpt_row_out_f32) calls tpt_bf16_store_row_native (convert.c)
 * when tpt_bf16_native() is true, with the same bits as the integer rounding. Built with the clones: a
 * TPT_NO_MULTIVERSION build (tests/test_build.py's per-level builds, the
 * ThreadSanitizer build) runs the integer rounding everywhere, so comparing
 * it with the dispatched build on a CPU with AVX512-BF16 compares the two. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__) && \
    !defined(TPT_NO_MULTIVERSION)
#define TPT_BF16_NATIVE_BUILD
#endif

/* A static helper of a TPT_MULTIVERSION kernel is compiled once, for the
 * baseline ISA, wherever gcc keeps it out of line, and every clone calls that
 * one. A helper that does heavy work is either TPT_INLINE (always inlined,
 * so each clone gets its own copy) or TPT_MULTIVERSION itself (each clone
 * calls the helper's clone of its own level directly). */
#if defined(__GNUC__) && !defined(__CUDACC__)
#define TPT_INLINE static inline __attribute__((always_inline))
#else
#define TPT_INLINE static inline
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Element type of a tensor in memory. Arithmetic is float32 for every type
 * but float64, which computes in float64 (gradcheck needs it). */
typedef enum { TPT_FLOAT32 = 0, TPT_FLOAT64 = 1, TPT_BFLOAT16 = 2, TPT_FLOAT16 = 3 } tpt_dtype;

/* Status returned by kernels that can fail. */
enum { TPT_OK = 0, TPT_ERR_NOMEM = 1, TPT_ERR_INDEX = 2, TPT_ERR_CUDA = 3 /* a CUDA launch failed */ };

TPT_HD int64_t tpt_dtype_size(tpt_dtype dt) { return dt == TPT_FLOAT64 ? 8 : dt == TPT_FLOAT32 ? 4 : 2; }

/* Rows per block of a reduction over rows (dweight, dtheta, ...): each block
 * yields one partial, and partials are summed in block order, so the result
 * does not depend on how blocks are spread over threads. */
#define TPT_ROW_BLOCK 128

TPT_HD int64_t tpt_num_row_blocks(int64_t rows) { return (rows + TPT_ROW_BLOCK - 1) / TPT_ROW_BLOCK; }

TPT_HD float tpt_bits_to_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
TPT_HD uint32_t tpt_float_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* a * b + c rounded once. An explicit fused multiply-add is correctly rounded by definition, so it gives the
 * same bits on every CPU: the x86-64-v3/v4 clones compile it to vfmadd (vectorised), the baseline clone calls
 * libm's fmaf/fma (exact, slow; only CPUs without FMA, from before 2013, run that clone), CUDA has fmaf/fma.
 * The build keeps -ffp-contract=off all the same: an implicit a*b+c contraction would exist in the v3/v4
 * clones only and change bits between CPUs. A kernel uses these where a sum's order is fixed anyway. */
#ifdef __CUDACC__
TPT_HD float tpt_fmaf(float a, float b, float c) { return fmaf(a, b, c); }
TPT_HD double tpt_fma(double a, double b, double c) { return fma(a, b, c); }
#else
TPT_HD float tpt_fmaf(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
TPT_HD double tpt_fma(double a, double b, double c) { return __builtin_fma(a, b, c); }
#endif

/* bfloat16 is the top half of a float32. */
TPT_HD float tpt_bf16_to_float(uint16_t h) { return tpt_bits_to_float((uint32_t)h << 16); }

/* Round to nearest, ties to even; NaN stays a (quiet) NaN. The rounded
 * float32 pattern, whose top half is the bfloat16: written as a select rather
 * than an early return so that conversion loops vectorise, with NaN found by a
 * float compare (f != f), in 32-bit lanes. It is its own function, apart
 * from the shift that takes the top half, because gcc folds a shift of a
 * select written in one expression into both arms and then selects in 16-bit
 * lanes: on x86-64-v4 that packed both candidates, unpacked and packed again,
 * two word permutes per 32 elements where the 32-bit select needs one (the same
 * bits, a quarter slower). */
TPT_HD uint32_t tpt_bf16_rounded_bits(float f) {
    const uint32_t u = tpt_float_to_bits(f);
    const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u); /* ties to the even upper half */
    return f != f ? u | 0x400000u : rounded;
}

TPT_HD uint16_t tpt_float_to_bf16(float f) { return (uint16_t)(tpt_bf16_rounded_bits(f) >> 16); }

/* A bfloat16 row read and written two elements at a time, as 32-bit words:
 * element 2j is the low half of word j (little-endian, as x86-64 and CUDA
 * GPUs), so the even element as float32 is the word shifted up, the odd one
 * the word with its low half cleared, and a rounded pair goes back by one
 * bitwise select, with no widening or packing shuffles. Loops over a row's
 * words vectorise in 32-bit lanes on every level; each element is converted
 * exactly as tpt_bf16_to_float / tpt_float_to_bf16 would, so the bits are
 * theirs. The words are copied (memcpy) since a bfloat16 row need not be
 * 4-byte aligned. */
TPT_HD uint32_t tpt_bf16_load_pair(const void* row, int64_t j) {
    uint32_t w;
    memcpy(&w, (const char*)row + 4 * j, 4);
    return w;
}
TPT_HD float tpt_bf16_even(uint32_t w) { return tpt_bits_to_float(w << 16); }
TPT_HD float tpt_bf16_odd(uint32_t w) { return tpt_bits_to_float(w & 0xffff0000u); }
TPT_HD void tpt_bf16_store_pair(void* row, int64_t j, float even, float odd) {
    const uint32_t w = (tpt_bf16_rounded_bits(odd) & 0xffff0000u) | (tpt_bf16_rounded_bits(even) >> 16);
    memcpy((char*)row + 4 * j, &w, 4);
}

/* IEEE binary16 -> float32, exact (subnormals, inf and NaN included).
 * Every case is computed and one is selected, with no early return, so that
 * row loops vectorise in every target_clones variant (integer shifts and one
 * exact float subtraction: the same bits on every CPU). */
TPT_HD float tpt_f16_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t magnitude = (uint32_t)(h & 0x7fffu) << 13; /* exponent and mantissa at float32's places */
    const uint32_t normal = magnitude + (112u << 23);          /* rebias the exponent from 15 to 127 */
    const uint32_t inf_or_nan = magnitude | 0x7f800000u;
    /* subnormal m * 2^-24: (1 + m/1024) * 2^-14 - 2^-14, both terms exact, so is their difference */
    const uint32_t subnormal = tpt_float_to_bits(tpt_bits_to_float(magnitude | 0x38800000u) - 6.103515625e-05f);
    const uint32_t expo = h & 0x7c00u;
    return tpt_bits_to_float(sign | (expo == 0x7c00u ? inf_or_nan : expo == 0 ? subnormal : normal));
}

/* float32 -> IEEE binary16, round to nearest even, overflow to inf, NaN to
 * the quiet NaN 0x7e00 with the sign kept. Select-based for the same reason
 * as tpt_f16_to_float. */
TPT_HD uint16_t tpt_float_to_f16(float f) {
    const uint32_t u = tpt_float_to_bits(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t absu = u & 0x7fffffffu;
    /* normal: drop 13 mantissa bits with round-to-nearest-even, rebias 127 -> 15 */
    const uint32_t normal = (absu + 0xfffu + ((absu >> 13) & 1u) - (112u << 23)) >> 13;
    /* subnormal or zero: adding 0.5 makes the FPU round the mantissa at 2^-24 granularity */
    const uint32_t subnormal = tpt_float_to_bits(tpt_bits_to_float(absu) + 0.5f) - 0x3f000000u;
    const uint32_t magnitude = absu > 0x7f800000u ? 0x7e00u     /* NaN */
                             : absu >= 0x477ff000u ? 0x7c00u    /* rounds to inf */
                             : absu < 0x38800000u ? subnormal
                                                  : normal;
    return (uint16_t)(sign | magnitude);
}

/* exp(t) for t <= 0 in float32 from plain arithmetic. libm's expf
 * is an opaque call that stops the vectoriser, and glibc picks its exp per CPU
 * at load time, so its last bit differs between machines. t = max(t, -87)
 * (exp(-87) is still a normal float), t = n*ln2 + r with n = round(t/ln2) in
 * [-126, 0], |r| <= ln2/2, exp(r) by Cephes' degree-6 polynomial, 2^n put
 * straight into the exponent bits; 0 below -87 (a softmax term that small is
 * lost in the sum of terms >= 1), and 0 for NaN, which fails the range check:
 * the sigmoids, which put NaN back themselves, call this form.
 * The rounding of t/ln2, the reduction and the polynomial are explicit fused
 * multiply-adds (tpt_fmaf: rounded once by definition, so the same bits in
 * every clone and on the GPU), 10 where separate products and sums took 20
 * operations: t - n*ln2_hi is exact (ln2_hi = ln2 rounded to float32; n*ln2_hi
 * and t are multiples of 2^-25 and the difference is under 1/2), the second
 * takes off n*ln2_lo with one rounding. At most 0.89 ulp from the exact exp
 * over every float32 t in [-87, 0] (against float64; 0.99 with the separate
 * operations). */
TPT_HD float tpt_exp_nonpos_or_zero_f32(float t) {
    const int in_range = t >= -87.0f;                   /* false for NaN too */
    const float tc = in_range ? t : -87.0f;
    const float round_magic = 12582912.0f;              /* 1.5 * 2^23: adding it rounds to an integer */
    const float shifted = tpt_fmaf(tc, 1.44269504f, round_magic); /* its bits are 0x4b400000 + n */
    const float n = shifted - round_magic;
    const float r = tpt_fmaf(n, 1.90465432e-9f, tpt_fmaf(n, -0.693147182f, tc)); /* ln2 = ln2_hi - 1.9e-9 */
    float p = 1.9875691500e-4f;
    p = tpt_fmaf(p, r, 1.3981999507e-3f);
    p = tpt_fmaf(p, r, 8.3334519073e-3f);
    p = tpt_fmaf(p, r, 4.1665795894e-2f);
    p = tpt_fmaf(p, r, 1.6666665459e-1f);
    p = tpt_fmaf(p, r, 5.0000001201e-1f);
    p = tpt_fmaf(p, r, 1.0f);
    p = tpt_fmaf(p, r, 1.0f);
    /* 2^n from the sum's bits, (n + 127) << 23 modulo 2^32, without a float -> int conversion (8% of the
     * swiglu row) */
    return in_range ? p * tpt_bits_to_float((tpt_float_to_bits(shifted) + 127u) << 23) : 0.0f;
}

/* The same with NaN for NaN. The kernels that exponentiate max-shifted values
 * (the MoE router's softmax, Hedgehog's feature map, attention's probabilities
 * from the saved lse) call it as SFX(tpt_exp_nonpos), on the CPU and the GPU. */
TPT_HD float tpt_exp_nonpos_f32(float t) { return t == t ? tpt_exp_nonpos_or_zero_f32(t) : t; }

/* The float64 form's reduction and polynomial: t = n*ln2 + r with n =
 * round(t/ln2) (ln2 in two parts, the first with 32 significant bits so n
 * times it is exact), |r| <= ln2/2, exp(r) by its Taylor series to r^13/13!
 * (the first omitted term is under 2^-57 of the result). Returns exp(r) and
 * n; the callers apply 2^n over the range they need. */
TPT_HD double tpt_exp_reduced_f64(double t, double* n_out) {
    const double round_magic = 6755399441055744.0;      /* 1.5 * 2^52: adding it rounds to an integer */
    const double n = (t * 1.4426950408889634 + round_magic) - round_magic;
    const double r = (t - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
    double p = 1.6059043836821613e-10;                  /* 1/13! */
    p = p * r + 2.08767569878681e-09;                   /* 1/12! */
    p = p * r + 2.505210838544172e-08;                  /* 1/11! */
    p = p * r + 2.755731922398589e-07;                  /* 1/10! */
    p = p * r + 2.7557319223985893e-06;                 /* 1/9!  */
    p = p * r + 2.48015873015873e-05;                   /* 1/8!  */
    p = p * r + 0.0001984126984126984;                  /* 1/7!  */
    p = p * r + 0.001388888888888889;                   /* 1/6!  */
    p = p * r + 0.008333333333333333;                   /* 1/5!  */
    p = p * r + 0.041666666666666664;                   /* 1/4!  */
    p = p * r + 0.16666666666666666;                    /* 1/3!  */
    p = p * r + 0.5;
    *n_out = n;
    return p * r * r + r + 1.0;
}

/* 2^k for an integer k in [-1022, 1023], from the exponent bits. */
TPT_HD double tpt_pow2i_f64(int64_t k) {
    double scale;
    const uint64_t bits = (uint64_t)(k + 1023) << 52;
    memcpy(&scale, &bits, 8);
    return scale;
}

/* exp(t) for t <= 0 (or NaN) in float64, for the same reasons as the
 * float32 one: 0 below -708, where 2^n would leave the normal range (one
 * scale suffices above it); NaN for NaN. */
TPT_HD double tpt_exp_nonpos_f64(double t) {
    const int in_range = t >= -708.0;
    double n;
    const double p = tpt_exp_reduced_f64(in_range ? t : -708.0, &n);
    const double e = in_range ? p * tpt_pow2i_f64((int64_t)n) : 0.0;
    return t == t ? e : t;
}

/* log(x) for x >= 1 (a softmax denominator: its largest term is exp(0)) from
 * plain arithmetic, for the exp's reason: libm's log is picked per CPU.
 * x = 2^n m with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(v) with
 * v = (m - 1) / (m + 1), |v| < 0.172, by its odd series (to v^11 in float32,
 * v^23 in float64: the first omitted term is under 2^-26 resp. 2^-60 of the
 * result), plus n ln2 with ln2 in two parts so that n * ln2_hi is exact.
 * NaN and inf come back as they are. The MoE router's lse and attention's
 * lse (on the CPU and the GPU) call it as SFX(tpt_log_ge1). */
TPT_HD float tpt_log_ge1_f32(float x) {
    const uint32_t bits = tpt_float_to_bits(x);
    float n = (float)((int32_t)(bits >> 23) - 127);
    float m = tpt_bits_to_float((bits & 0x7fffffu) | 0x3f800000u);
    if (m > 1.41421356f) {
        m = m * 0.5f;
        n = n + 1.0f;
    }
    const float v = (m - 1.0f) / (m + 1.0f), v2 = v * v;
    float series = 1.0f / 11.0f;
    for (int i = 4; i >= 0; i--) series = series * v2 + 1.0f / (float)(2 * i + 1);
    const float result = n * 0.693359375f + (n * -2.12194440e-4f + 2.0f * v * series);
    return x == x && x < INFINITY ? result : x;
}

TPT_HD double tpt_log_ge1_f64(double x) {
    uint64_t bits;
    memcpy(&bits, &x, 8);
    double n = (double)((int64_t)(bits >> 52) - 1023);
    const uint64_t mbits = (bits & 0xfffffffffffffull) | 0x3ff0000000000000ull;
    double m;
    memcpy(&m, &mbits, 8);
    if (m > 1.4142135623730951) {
        m = m * 0.5;
        n = n + 1.0;
    }
    const double v = (m - 1.0) / (m + 1.0), v2 = v * v;
    double series = 1.0 / 23.0;
    for (int i = 10; i >= 0; i--) series = series * v2 + 1.0 / (double)(2 * i + 1);
    const double result = n * 6.93147180369123816490e-01 + (n * 1.90821492927058770002e-10 + 2.0 * v * series);
    return x == x && x < INFINITY ? result : x;
}

/* sigmoid(x) = 1 / (1 + exp(-x)) in float32 from plain arithmetic, so that
 * loops calling it vectorise. It only ever needs e = exp(-|x|), in (0, 1],
 * never overflowing: sigmoid(x) = 1 / (1 + e) for x >= 0 and e / (1 + e) for
 * x < 0. Three selects (range, sign, NaN) and one division: a third fewer
 * instructions than 1 / (1 + exp(-x)) with a general exp and its
 * overflow/underflow cases. x * sigmoid(x) is within 3.23 ulp of its exact
 * value for every float32 x in [-87, 0] and 2.19 ulp for x > 0 (every 29th
 * float32), against long double; 3.19 and 2.17 with the exp of separate
 * products and sums (tests/test_swiglu.py checks 3 ulp on 2.2M gates); below
 * -87, where the exact sigmoid is under FLT_MIN, it returns 0. NaN for NaN. */
TPT_HD float tpt_sigmoid_f32(float x) {
    const float e = tpt_exp_nonpos_or_zero_f32(-fabsf(x)); /* the NaN case is the last select's */
    const float s = (x >= 0.0f ? 1.0f : e) / (1.0f + e);
    return x == x ? s : x;
}

/* sigmoid(x) in float64 from plain arithmetic, for the same reason as the
 * float32 one plus another: glibc's exp differs between CPUs in the last bit
 * for about 0.07% of arguments, so libm's exp would make the float64 kernels
 * differ between machines. e = exp(-|x|) reaches down to the subnormal range:
 * 2^n applied in two exact halves, e = 0 below -746, where exp(t) rounds to 0.
 * Within 2.2 ulp of the exact sigmoid on 4 million arguments up to |x| = 800
 * (against long double); NaN for NaN. */
TPT_HD double tpt_sigmoid_f64(double x) {
    const double neg_abs = -fabs(x);
    const int in_range = neg_abs >= -746.0;             /* false for NaN too: restored at the end */
    double n;
    const double p = tpt_exp_reduced_f64(in_range ? neg_abs : -746.0, &n);
    const int64_t n_hi = (int64_t)n / 2, n_lo = (int64_t)n - n_hi; /* each in [-538, 0]: 2^n_* is normal */
    const double e = in_range ? p * tpt_pow2i_f64(n_hi) * tpt_pow2i_f64(n_lo) : 0.0;
    const double s = (x >= 0.0 ? 1.0 : e) / (1.0 + e);
    return x == x ? s : x;
}

#ifndef __CUDACC__
/* Rows ahead of the current one whose cache lines a row kernel requests
 * (tpt_prefetch_read / tpt_prefetch_write) while it computes the current row. */
#define TPT_PREFETCH_ROWS 4

/* Request the cache lines of bytes [0, n) at p into L2 (prefetcht1), to be
 * read, or to be written. On one thread the hardware prefetchers alone left
 * the row kernels waiting on memory about as long as their arithmetic took,
 * one after the other, rather than at once (RESULTS.md, "bf16 at bandwidth"). */
TPT_INLINE void tpt_prefetch_read(const void* p, int64_t n) {
    for (int64_t b = 0; b < n; b += 64) __builtin_prefetch((const char*)p + b, 0, 2);
}
TPT_INLINE void tpt_prefetch_write(void* p, int64_t n) {
    for (int64_t b = 0; b < n; b += 64) __builtin_prefetch((char*)p + b, 1, 2);
}

#ifdef TPT_BF16_NATIVE_BUILD
extern int tpt_bf16_native_flag; /* set when the library loads (convert.c) */
TPT_INLINE int tpt_bf16_native(void) { return tpt_bf16_native_flag; }
/* dst[i] = tpt_float_to_bf16(src[i]) for i < n */
void tpt_bf16_store_row_native(uint16_t* dst, const float* src, int64_t n);
#else
TPT_INLINE int tpt_bf16_native(void) { return 0; }
TPT_INLINE void tpt_bf16_store_row_native(uint16_t* dst, const float* src, int64_t n) {
    (void)dst; (void)src; (void)n;
}
#endif

/* A row of n elements of dtype dt, seen as float32: the row itself when it is
 * float32, else `scratch` filled by conversion. */
TPT_HD const float* tpt_row_in_f32(const void* src, tpt_dtype dt, float* scratch, int64_t n) {
    if (dt == TPT_FLOAT32) return (const float*)src;
    const uint16_t* h = (const uint16_t*)src;
    if (dt == TPT_BFLOAT16) for (int64_t i = 0; i < n; i++) scratch[i] = tpt_bf16_to_float(h[i]);
    else for (int64_t i = 0; i < n; i++) scratch[i] = tpt_f16_to_float(h[i]);
    return scratch;
}

/* Where to compute an output row in float32: in place when it is float32,
 * else in `scratch`, then tpt_row_out_f32 converts it into place. */
TPT_HD float* tpt_row_buf_f32(void* dst, tpt_dtype dt, float* scratch) {
    return dt == TPT_FLOAT32 ? (float*)dst : scratch;
}

TPT_HD void tpt_row_out_f32(void* dst, tpt_dtype dt, const float* buf, int64_t n) {
    uint16_t* h = (uint16_t*)dst;
    /* a row shorter than one 32-value group (a qkv_rope head of 16) stays inline: the hardware store would call
     * out only to convert it on its scalar tail */
    if (dt == TPT_BFLOAT16 && n >= 32 && tpt_bf16_native()) tpt_bf16_store_row_native(h, buf, n);
    else if (dt == TPT_BFLOAT16) for (int64_t i = 0; i < n; i++) h[i] = tpt_float_to_bf16(buf[i]);
    else if (dt == TPT_FLOAT16) for (int64_t i = 0; i < n; i++) h[i] = tpt_float_to_f16(buf[i]);
}

/* float64 rows are computed in float64 and need no conversion. */
TPT_HD const double* tpt_row_in_f64(const void* src, tpt_dtype dt, double* scratch, int64_t n) {
    (void)dt; (void)scratch; (void)n;
    return (const double*)src;
}
TPT_HD double* tpt_row_buf_f64(void* dst, tpt_dtype dt, double* scratch) {
    (void)dt; (void)scratch;
    return (double*)dst;
}
TPT_HD void tpt_row_out_f64(void* dst, tpt_dtype dt, const double* buf, int64_t n) {
    (void)dst; (void)dt; (void)buf; (void)n;
}

/* out[j] = sum over blocks b in order of partials[b*n + j]: the fixed-order
 * combine step of every deterministic row reduction. */
void tpt_sum_partials_f32(float* out, const float* partials, int64_t n_blocks, int64_t n, int64_t col_begin, int64_t col_end);
void tpt_sum_partials_f64(double* out, const double* partials, int64_t n_blocks, int64_t n, int64_t col_begin, int64_t col_end);

/* Kernel scratch starts on a 64-byte cache line: malloc aligns to 16 bytes only, and a 64-byte vector of a
 * buffer that does not start on a line straddles two, so every vector load and store of a kernel's rows and
 * tiles would be a split one (the attention forward took 80 ms instead of 73 at T=4096, head dim 32).
 * tpt_alloc_aligned: `bytes` (rounded up to a line), free()d as malloc's, NULL when out of memory.
 * tpt_alloc_lines: one block of n buffers, buffer i of sizes[i] elements of esize bytes, each on its own lines;
 * bufs[i] receives buffer i, and the block (bufs[0]) is free()d. (scratch.c) */
void* tpt_alloc_aligned(size_t bytes);
void* tpt_alloc_lines(int n, const int64_t* sizes, int64_t esize, void** bufs);
#endif

#ifdef __cplusplus
}
#endif

#endif
