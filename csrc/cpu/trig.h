/* sin and cos from plain arithmetic, so that they give the same bits on every
 * CPU. glibc picks its sin/cos/exp at load time by CPU (an FMA variant on
 * x86-64-v3 and up, an SSE2 one below), and on glibc 2.36 the float64
 * variants disagree in the last bit for about 0.07% of arguments; the kernels
 * are compiled with -ffp-contract=off, so these functions round the same way
 * in every target_clones clone and at every -march.
 *
 * x = k*pi/2 + r with k = round(x * 2/pi) and |r| <= pi/4 (Cody-Waite: pi/2
 * split in three, the first two parts with 33 significant bits so that k
 * times them is exact for |k| < 2^20), then Taylor polynomials of sin and cos
 * on r (the first omitted term is under 1e-19 of the result) picked and
 * signed by k mod 4. Within 0.78 ulp of the exact value in float64 and
 * correctly rounded in float32 on the 2.2 million arguments of
 * tests/c/trig_check.c (measured against long double). |x| >= 2^19*pi (no
 * exact reduction with three parts) falls back to libm; so do inf and NaN. */
#ifndef TPT_TRIG_H
#define TPT_TRIG_H

#include <math.h>
#include <stdint.h>

#include "common.h"

/* sin(r + tail) and cos(r + tail) for |r| <= pi/4, |tail| <= ulp(r)/2: to
 * first order the tail adds tail*cos(r) = tail*(1 - r^2/2) and subtracts
 * tail*sin(r) = tail*r (what it leaves out is below 1e-19 of the result). */
TPT_HD double tpt_sin_kernel(double r, double tail) {
    const double z = r * r;
    double p = 2.8114572543455206e-15;   /*  1/17! */
    p = p * z - 7.647163731819816e-13;   /* -1/15! */
    p = p * z + 1.6059043836821613e-10;  /*  1/13! */
    p = p * z - 2.505210838544172e-08;   /* -1/11! */
    p = p * z + 2.7557319223985893e-06;  /*  1/9!  */
    p = p * z - 0.0001984126984126984;   /* -1/7!  */
    p = p * z + 0.008333333333333333;    /*  1/5!  */
    p = p * z - 0.16666666666666666;     /* -1/3!  */
    return r + (r * z * p + tail * (1.0 - 0.5 * z));
}

TPT_HD double tpt_cos_kernel(double r, double tail) {
    const double z = r * r;
    double q = 1.5619206968586225e-16;   /*  1/18! */
    q = q * z - 4.779477332387385e-14;   /* -1/16! */
    q = q * z + 1.1470745597729725e-11;  /*  1/14! */
    q = q * z - 2.08767569878681e-09;    /* -1/12! */
    q = q * z + 2.755731922398589e-07;   /*  1/10! */
    q = q * z - 2.48015873015873e-05;    /* -1/8!  */
    q = q * z + 0.001388888888888889;    /*  1/6!  */
    q = q * z - 0.041666666666666664;    /* -1/4!  */
    /* 1 - z/2 rounds away up to half an ulp; (1 - w) - half_z is that error, exactly */
    const double half_z = 0.5 * z, w = 1.0 - half_z;
    return w + ((((1.0 - w) - half_z) - z * z * q) - r * tail);
}

/* *s = sin(x), *c = cos(x) */
TPT_HD void tpt_sincos_f64(double x, double* s, double* c) {
    if (!(fabs(x) < 1647099.0)) { /* 2^19 * pi; also inf and NaN */
        *s = sin(x);
        *c = cos(x);
        return;
    }
    const double round_magic = 6755399441055744.0; /* 1.5 * 2^52: adding it rounds to an integer */
    const double k = (x * 0.6366197723675814 + round_magic) - round_magic;
    /* r + tail = x - k*pi/2 to about 2^-100 of pi/2: x - k*p1 and k*p2 are
     * exact, the rounding error of their difference is kept (TwoSum, exact
     * whatever their magnitudes), and k*p3 is only ever a correction */
    const double t = x - k * 1.5707963267341256, kp2 = k * 6.077100506303966e-11;
    const double r_hi = t - kp2, kp2_part = t - r_hi;
    const double r_lo = ((t - (r_hi + kp2_part)) + (kp2_part - kp2)) - k * 2.0222662487959506e-21;
    const double r = r_hi + r_lo, tail = (r_hi - r) + r_lo;
    const double sr = tpt_sin_kernel(r, tail), cr = tpt_cos_kernel(r, tail);
    switch ((int64_t)k & 3) {
    case 0: *s = sr; *c = cr; break;
    case 1: *s = cr; *c = -sr; break;
    case 2: *s = -sr; *c = -cr; break;
    default: *s = -cr; *c = sr; break;
    }
}

/* float32 through float64: one rounding of a result already within 1 ulp of float64 */
TPT_HD void tpt_sincos_f32(float x, float* s, float* c) {
    double sd, cd;
    tpt_sincos_f64((double)x, &sd, &cd);
    *s = (float)sd;
    *c = (float)cd;
}

#endif
