/* The per-element arithmetic of the Givens phase rotation, shared by the C
 * kernels (rotate_row.inc) and the CUDA kernels (csrc/cuda/rotate.cuh,
 * block.cuh). A per-precision math header (csrc/README.md). sin and cos
 * come from trig.h, also shared. */
#include "trig.h"

#if (TPT_PRECISION == 32 && !defined(TPT_ROTATE_MATH_32)) || (TPT_PRECISION == 64 && !defined(TPT_ROTATE_MATH_64))
#if TPT_PRECISION == 32
#define TPT_ROTATE_MATH_32
#else
#define TPT_ROTATE_MATH_64
#endif

/* The phase shift 2pi/N, rounded once from double, as the reference forms it. */
TPT_HD real SFX(tpt_phase_step)(int64_t N) { return (real)(6.283185307179586476925286766559 / (double)N); }

/* phi = theta_j + i * step */
TPT_HD real SFX(tpt_phase_angle)(real theta_j, int64_t i, real step) {
    const real shift = (real)i * step;
    return theta_j + shift;
}

/* (ya, yb) = R(phi) (a, b) with c = cos(phi), s = sin(phi):
 *   ya = a c - b s,  yb = a s + b c */
TPT_HD void SFX(tpt_rotate_pair)(real a, real b, real c, real s, real* ya, real* yb) {
    *ya = a * c + b * -s; /* not a*c - b*s: GCC 12 fuses that lane pattern into vfmaddsub even with -ffp-contract=off */
    *yb = a * s + b * c;
}

/* (dxa, dxb) = R(-phi) (ge, go): the pair's input gradient from its output gradient */
TPT_HD void SFX(tpt_rotate_pair_backward)(real ge, real go, real c, real s, real* dxa, real* dxb) {
    *dxa = ge * c + go * s;
    *dxb = go * c + ge * -s; /* as in tpt_rotate_pair: keeps vfmsubadd out */
}

/* The pair's term in dphi from its output gradient (ge, go) and output (ya, yb):
 * d ya/d phi = -yb, d yb/d phi = ya. */
TPT_HD real SFX(tpt_rotate_angle_grad)(real ge, real go, real ya, real yb) { return go * ya - ge * yb; }
#endif
