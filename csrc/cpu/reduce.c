/* The combine step of every deterministic reduction over rows. */
#include "common.h"

/* out[j] = sum_b partials[b, j] for b = 0 .. n_blocks-1 in order, j in [col_begin, col_end) */
#define SUM_PARTIALS(real)                                                        \
    for (int64_t j = col_begin; j < col_end; j++) out[j] = 0;                     \
    for (int64_t b = 0; b < n_blocks; b++) {                                      \
        const real* p = partials + b * n;                                         \
        for (int64_t j = col_begin; j < col_end; j++) out[j] += p[j];             \
    }

TPT_MULTIVERSION
void tpt_sum_partials_f32(float* out, const float* partials, int64_t n_blocks, int64_t n, int64_t col_begin, int64_t col_end) {
    SUM_PARTIALS(float)
}

TPT_MULTIVERSION
void tpt_sum_partials_f64(double* out, const double* partials, int64_t n_blocks, int64_t n, int64_t col_begin, int64_t col_end) {
    SUM_PARTIALS(double)
}
