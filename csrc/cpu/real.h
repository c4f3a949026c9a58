/* The compute precision of a generic kernel file (<family>.inc).
 *
 * Each family's .c includes its .inc twice, once with TPT_PRECISION 32 (for
 * float32, bfloat16 and float16 storage) and once with TPT_PRECISION 64 (for
 * float64). The .inc includes this header first, which (re)defines `real`,
 * the SFX() name suffix, row helpers (ROW_IN, ROW_BUF, ROW_OUT, ROW_BF16_PAIRS), SIGMOID (plain arithmetic, the same bits on every CPU) and FMA (tpt_fmaf/tpt_fma) for
 * that precision. One kernel
 * source, two precisions, no copies. No include guard on purpose. */
#include "common.h"
#include <tgmath.h>

#undef real
#undef SFX
#undef ROW_IN
#undef ROW_BUF
#undef ROW_OUT
#undef SIGMOID
#undef FMA
#undef ROW_BF16_PAIRS
#if TPT_PRECISION == 32
#define real float
#define SFX(name) name##_f32
#define ROW_IN tpt_row_in_f32
#define ROW_BUF tpt_row_buf_f32
#define ROW_OUT tpt_row_out_f32
#define SIGMOID tpt_sigmoid_f32
#define FMA tpt_fmaf
/* whether a row of n elements of dtype dt is read and written as bfloat16 pairs
 * (tpt_bf16_load_pair / tpt_bf16_store_pair, common.h) rather than through scratch */
#define ROW_BF16_PAIRS(dt, n) ((dt) == TPT_BFLOAT16 && (n) % 2 == 0)
#elif TPT_PRECISION == 64
#define real double
#define SFX(name) name##_f64
#define ROW_IN tpt_row_in_f64
#define ROW_BUF tpt_row_buf_f64
#define ROW_OUT tpt_row_out_f64
#define SIGMOID tpt_sigmoid_f64
#define FMA tpt_fma
#define ROW_BF16_PAIRS(dt, n) 0
#else
#error "define TPT_PRECISION as 32 or 64 before including real.h"
#endif

#ifndef TPT_LANES
/* Independent accumulators per reduction: they let the compiler vectorise
 * sums without reassociating them, so results are the same at every -O. */
#define TPT_LANES 16
#endif

/* The helpers below are defined once per precision per translation unit
 * (block.c includes several families' .inc files). */
#if (TPT_PRECISION == 32 && !defined(TPT_REAL_HELPERS_32)) || (TPT_PRECISION == 64 && !defined(TPT_REAL_HELPERS_64))
#if TPT_PRECISION == 32
#define TPT_REAL_HELPERS_32
#else
#define TPT_REAL_HELPERS_64
#endif

/* sum_i a[i] * b[i], accumulated in `real` over TPT_LANES fixed lanes */
static inline real SFX(tpt_dot)(const real* a, const real* b, int64_t n) {
    real acc[TPT_LANES] = {0};
    int64_t i = 0;
    for (; i + TPT_LANES <= n; i += TPT_LANES)
        for (int l = 0; l < TPT_LANES; l++) acc[l] += a[i + l] * b[i + l];
    real s = 0;
    for (int l = 0; l < TPT_LANES; l++) s += acc[l];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* sum_i a[i] */
static inline real SFX(tpt_sum)(const real* a, int64_t n) {
    real acc[TPT_LANES] = {0};
    int64_t i = 0;
    for (; i + TPT_LANES <= n; i += TPT_LANES)
        for (int l = 0; l < TPT_LANES; l++) acc[l] += a[i + l];
    real s = 0;
    for (int l = 0; l < TPT_LANES; l++) s += acc[l];
    for (; i < n; i++) s += a[i];
    return s;
}

/* Rows summed together by SFX(tpt_sum_rows). */
#define TPT_SUM_ROWS 4

/* sums[r] = SFX(tpt_sum)(rows[r], n) for r < count <= TPT_SUM_ROWS, bit for
 * bit (each row keeps its own lanes, added in the same order). One row's sum
 * is a chain of dependent vector adds, bound by the add latency; the rows'
 * chains are independent, so a full group's are interleaved and run in
 * parallel. */
static inline void SFX(tpt_sum_rows)(real* sums, const real* const* rows, int64_t count, int64_t n) {
    if (count < TPT_SUM_ROWS) {
        for (int64_t r = 0; r < count; r++) sums[r] = SFX(tpt_sum)(rows[r], n);
        return;
    }
    const real *a = rows[0], *b = rows[1], *c = rows[2], *d = rows[3];
    real acc_a[TPT_LANES] = {0}, acc_b[TPT_LANES] = {0}, acc_c[TPT_LANES] = {0}, acc_d[TPT_LANES] = {0};
    int64_t i = 0;
    for (; i + TPT_LANES <= n; i += TPT_LANES)
        for (int l = 0; l < TPT_LANES; l++) {
            acc_a[l] += a[i + l];
            acc_b[l] += b[i + l];
            acc_c[l] += c[i + l];
            acc_d[l] += d[i + l];
        }
    real s[TPT_SUM_ROWS] = {0};
    for (int l = 0; l < TPT_LANES; l++) {
        s[0] += acc_a[l];
        s[1] += acc_b[l];
        s[2] += acc_c[l];
        s[3] += acc_d[l];
    }
    for (int64_t j = i; j < n; j++) {
        s[0] += a[j];
        s[1] += b[j];
        s[2] += c[j];
        s[3] += d[j];
    }
    for (int r = 0; r < TPT_SUM_ROWS; r++) sums[r] = s[r];
}

/* The sums of bfloat16 rows straight from storage, without a scratch row:
 * the bits of tpt_sum / tpt_dot / tpt_sum_rows over the row converted. The
 * row is read as pair words (tpt_bf16_load_pair), so the even and odd
 * elements come out in 32-bit lanes with no widening shuffles; lane l of
 * those sums is kept as even[l / 2] or odd[l / 2], so every lane still adds
 * its own elements in order. */

/* Elements [i, i + TPT_LANES) of a bfloat16 row (i even), or their squares,
 * into the lanes even (lanes 0, 2, ...) and odd (lanes 1, 3, ...). */
TPT_INLINE void SFX(tpt_bf16_add_lanes)(real* even, real* odd, const void* row, int64_t i, int squares) {
    for (int k = 0; k < TPT_LANES / 2; k++) {
        const uint32_t w = tpt_bf16_load_pair(row, i / 2 + k);
        const real e = tpt_bf16_even(w), o = tpt_bf16_odd(w);
        even[k] += squares ? e * e : e;
        odd[k] += squares ? o * o : o;
    }
}

/* The lanes' total, in lane order, then the elements [i, n) one by one. */
TPT_INLINE real SFX(tpt_bf16_lanes_total)(const real* even, const real* odd, const void* row, int64_t i, int64_t n,
                                          int squares) {
    real s = 0;
    for (int l = 0; l < TPT_LANES; l++) s += l % 2 ? odd[l / 2] : even[l / 2];
    for (; i < n; i++) {
        const real v = tpt_bf16_to_float(((const uint16_t*)row)[i]);
        s += squares ? v * v : v;
    }
    return s;
}

/* SFX(tpt_sum)(row, n), or SFX(tpt_dot)(row, row, n) when squares is set, of a bfloat16 row */
TPT_INLINE real SFX(tpt_sum_bf16)(const void* row, int squares, int64_t n) {
    real even[TPT_LANES / 2] = {0}, odd[TPT_LANES / 2] = {0};
    int64_t i = 0;
    for (; i + TPT_LANES <= n; i += TPT_LANES) SFX(tpt_bf16_add_lanes)(even, odd, row, i, squares);
    return SFX(tpt_bf16_lanes_total)(even, odd, row, i, n, squares);
}

/* SFX(tpt_sum_rows) of bfloat16 rows */
TPT_INLINE void SFX(tpt_sum_rows_bf16)(real* sums, const void* const* rows, int64_t count, int64_t n) {
    if (count < TPT_SUM_ROWS) {
        for (int64_t r = 0; r < count; r++) sums[r] = SFX(tpt_sum_bf16)(rows[r], 0, n);
        return;
    }
    real even_a[TPT_LANES / 2] = {0}, even_b[TPT_LANES / 2] = {0}, even_c[TPT_LANES / 2] = {0},
         even_d[TPT_LANES / 2] = {0};
    real odd_a[TPT_LANES / 2] = {0}, odd_b[TPT_LANES / 2] = {0}, odd_c[TPT_LANES / 2] = {0}, odd_d[TPT_LANES / 2] = {0};
    int64_t i = 0;
    for (; i + TPT_LANES <= n; i += TPT_LANES) {
        SFX(tpt_bf16_add_lanes)(even_a, odd_a, rows[0], i, 0);
        SFX(tpt_bf16_add_lanes)(even_b, odd_b, rows[1], i, 0);
        SFX(tpt_bf16_add_lanes)(even_c, odd_c, rows[2], i, 0);
        SFX(tpt_bf16_add_lanes)(even_d, odd_d, rows[3], i, 0);
    }
    sums[0] = SFX(tpt_bf16_lanes_total)(even_a, odd_a, rows[0], i, n, 0);
    sums[1] = SFX(tpt_bf16_lanes_total)(even_b, odd_b, rows[1], i, n, 0);
    sums[2] = SFX(tpt_bf16_lanes_total)(even_c, odd_c, rows[2], i, n, 0);
    sums[3] = SFX(tpt_bf16_lanes_total)(even_d, odd_d, rows[3], i, n, 0);
}
#endif
