/* The compute precision of a generic kernel file (<family>.inc).
 *
 * Each family's .c includes its .inc twice, once with TPT_PRECISION 32 (for
 * float32, bfloat16 and float16 storage) and once with TPT_PRECISION 64 (for
 * float64). The .inc includes this header first, which (re)defines `real`,
 * the SFX() name suffix, row helpers, SIGMOID (plain arithmetic, the same bits on every CPU) and FMA
 * (common.h's explicit fused multiply-add) for that precision. One kernel
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
#if TPT_PRECISION == 32
#define real float
#define SFX(name) name##_f32
#define ROW_IN tpt_row_in_f32
#define ROW_BUF tpt_row_buf_f32
#define ROW_OUT tpt_row_out_f32
#define SIGMOID tpt_sigmoid_f32
#define FMA tpt_fmaf
#elif TPT_PRECISION == 64
#define real double
#define SFX(name) name##_f64
#define ROW_IN tpt_row_in_f64
#define ROW_BUF tpt_row_buf_f64
#define ROW_OUT tpt_row_out_f64
#define SIGMOID tpt_sigmoid_f64
#define FMA tpt_fma
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
#endif
