/* Accuracy and bits of csrc/cpu/trig.h. Over fixed arguments (rotation
 * angles in [-8, 8], wider ones up to 1e5, the neighbourhoods of multiples of
 * pi/2, tiny values, signed zeros) it measures tpt_sincos_f64 in ulps against
 * long double sinl/cosl, and counts the tpt_sincos_f32 results that are not
 * the correctly rounded float. It prints those figures and a hash of every
 * output bit; tests/test_build.py compiles it once per x86-64 level and
 * compares the lines. Exits 1 when a float64 error exceeds 1 ulp or more than
 * one float32 result in 1e6 is not correctly rounded. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "trig.h"

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static double uniform(double lo, double hi) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return lo + (hi - lo) * ((double)(rng_state >> 11) / 9007199254740992.0);
}

static uint64_t hash = 0xcbf29ce484222325ull;

static void hash_bytes(const void* p, size_t n) {
    const unsigned char* b = p;
    for (size_t i = 0; i < n; i++) hash = (hash ^ b[i]) * 0x100000001b3ull;
}

/* |got - exact| in units of the last place of the double nearest to exact */
static double ulp_error(double got, long double exact) {
    const double nearest = (double)exact;
    if (nearest == 0) return got == 0 ? 0 : INFINITY;
    const double ulp = nextafter(fabs(nearest), INFINITY) - fabs(nearest);
    return (double)(fabsl((long double)got - exact) / ulp);
}

static double max_err_f64 = 0;
static long n_f32 = 0, n_f32_misrounded = 0;

static void check(double x) {
    double s, c;
    tpt_sincos_f64(x, &s, &c);
    hash_bytes(&s, sizeof s);
    hash_bytes(&c, sizeof c);
    const double es = ulp_error(s, sinl((long double)x)), ec = ulp_error(c, cosl((long double)x));
    if (es > max_err_f64) max_err_f64 = es;
    if (ec > max_err_f64) max_err_f64 = ec;

    const float xf = (float)x;
    float sf, cf;
    tpt_sincos_f32(xf, &sf, &cf);
    hash_bytes(&sf, sizeof sf);
    hash_bytes(&cf, sizeof cf);
    n_f32 += 2;
    n_f32_misrounded += (sf != (float)sinl((long double)xf)) + (cf != (float)cosl((long double)xf));
}

int main(void) {
    for (long i = 0; i < 2000000; i++) check(uniform(-8, 8));
    for (long i = 0; i < 200000; i++) check(uniform(-1e5, 1e5));
    for (int k = -64; k <= 64; k++) {
        double x = k * 1.5707963267948966;
        for (int step = 0; step < 64; step++) {
            check(x);
            x = nextafter(x, INFINITY);
        }
    }
    for (double t = 1e-300; t < 1; t *= 1.7) {
        check(t);
        check(-t);
    }
    check(0.0);
    check(-0.0);
    printf("float64 max error %.3f ulp\n", max_err_f64);
    printf("float32 not correctly rounded: %ld of %ld\n", n_f32_misrounded, n_f32);
    printf("hash %016llx\n", (unsigned long long)hash);
    return max_err_f64 > 1.0 || n_f32_misrounded * 1000000 > n_f32 ? 1 : 0;
}
