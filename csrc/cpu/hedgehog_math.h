/* The per-row arithmetic of the Hedgehog feature map, shared by the C kernels
 * (hedgehog.inc) and the CUDA kernels (csrc/cuda/hedgehog.cuh, where one
 * thread runs a row). A per-precision math header (csrc/README.md). */

#if (TPT_PRECISION == 32 && !defined(TPT_HEDGEHOG_MATH_32)) || (TPT_PRECISION == 64 && !defined(TPT_HEDGEHOG_MATH_64))
#if TPT_PRECISION == 32
#define TPT_HEDGEHOG_MATH_32
#else
#define TPT_HEDGEHOG_MATH_64
#endif

/* out = softmax(sign * u) over F values, max subtracted */
TPT_HD void SFX(hh_softmax)(real* TPT_RESTRICT out, const real* TPT_RESTRICT u, int64_t F, real sign) {
    real mx = sign * u[0];
    for (int64_t e = 1; e < F; e++) mx = sign * u[e] > mx ? sign * u[e] : mx;
    real sum = 0;
    for (int64_t e = 0; e < F; e++) {
        out[e] = SFX(tpt_exp_nonpos)(sign * u[e] - mx);
        sum += out[e];
    }
    for (int64_t e = 0; e < F; e++) out[e] = out[e] / sum;
}

/* du_e = p_e (dp_e - sum(dp p)) - m_e (dm_e - sum(dm m)) */
TPT_HD real SFX(hh_feature_grad)(real p, real dp, real dot_p, real m, real dm, real dot_m) {
    return p * (dp - dot_p) - m * (dm - dot_m);
}
#endif
