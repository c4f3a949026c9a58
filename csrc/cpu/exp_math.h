/* exp(t) for t <= 0 from plain arithmetic, shared by the kernels that
 * exponentiate max-shifted values (the MoE router's softmax, Hedgehog's
 * feature map), on the CPU and on the GPU. A per-precision math header (see
 * csrc/README.md): written once for the precision `real`, included after
 * real.h (C) or cuda/real.cuh (CUDA); defined once per precision per
 * translation unit. */

#if (TPT_PRECISION == 32 && !defined(TPT_EXP_ROW_32)) || (TPT_PRECISION == 64 && !defined(TPT_EXP_ROW_64))
#if TPT_PRECISION == 32
#define TPT_EXP_ROW_32
#else
#define TPT_EXP_ROW_64
#endif

/* exp(t) for t <= 0 (or NaN) from plain arithmetic, as tpt_sigmoid_* computes
 * its exp(-|x|) (common.h): libm's exp is picked per CPU at load time and its
 * last bit differs between machines. t = n*ln2 + r, |r| <= ln2/2, exp(r) by a
 * polynomial, 2^n written into the exponent bits; 0 below the smallest normal
 * result (a softmax term that small is lost in the sum of terms >= 1). */
TPT_HD real SFX(tpt_exp_nonpos)(real t) {
#if TPT_PRECISION == 32
    const int in_range = t >= -87.0f;
    const float tc = in_range ? t : -87.0f;
    const float round_magic = 12582912.0f; /* 1.5 * 2^23 */
    const float n = (tc * 1.44269504f + round_magic) - round_magic;
    const float r = (tc - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const float e = in_range ? p * tpt_bits_to_float((uint32_t)((int32_t)n + 127) << 23) : 0.0f;
#else
    const int in_range = t >= -708.0; /* 2^n stays normal: one scale suffices */
    const double tc = in_range ? t : -708.0;
    const double round_magic = 6755399441055744.0; /* 1.5 * 2^52 */
    const double n = (tc * 1.4426950408889634 + round_magic) - round_magic;
    const double r = (tc - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
    double p = 1.6059043836821613e-10;  /* 1/13!, then the Taylor series down to 1/2! */
    p = p * r + 2.08767569878681e-09;
    p = p * r + 2.505210838544172e-08;
    p = p * r + 2.755731922398589e-07;
    p = p * r + 2.7557319223985893e-06;
    p = p * r + 2.48015873015873e-05;
    p = p * r + 0.0001984126984126984;
    p = p * r + 0.001388888888888889;
    p = p * r + 0.008333333333333333;
    p = p * r + 0.041666666666666664;
    p = p * r + 0.16666666666666666;
    p = p * r + 0.5;
    p = p * r * r + r + 1.0;
    double scale;
    const uint64_t bits = (uint64_t)((int64_t)n + 1023) << 52;
    memcpy(&scale, &bits, 8);
    const double e = in_range ? p * scale : 0.0;
#endif
    return t == t ? e : t;
}
#endif
