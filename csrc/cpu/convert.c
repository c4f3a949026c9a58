/* float32 -> bfloat16 row stores (ROW_OUT) in hardware, on CPUs with AVX512-BF16
 * (tpt_bf16_native, common.h), giving the bits of the integer rounding
 * (tpt_float_to_bf16) that every other CPU runs.
 *
 * VCVTNE2PS2BF16 rounds to nearest even and quiets a NaN as
 * tpt_bf16_rounded_bits does, in one instruction for 32 values, where the
 * integer form takes about five vector operations per 16 on the two ports
 * that the row arithmetic needs too. It differs in one case only: it reads a
 * float32 subnormal as zero (always, whatever MXCSR says), where the integer
 * form rounds it to the bfloat16 subnormal. So each group of 32 values is
 * tested for subnormals first (VFPCLASSPS), and a group that has one is
 * converted by the integer form instead; rows of normal activations never take
 * that branch. tests/test_build.py (the conversion checks and the kernel
 * hashes of the dispatched build) compares both forms bit for bit. */
#include "common.h"

#ifdef TPT_BF16_NATIVE_BUILD
#include <immintrin.h>

int tpt_bf16_native_flag;

/* Decided once, when the library is loaded, before any kernel runs. */
__attribute__((constructor)) static void tpt_detect_bf16_native(void) {
    __builtin_cpu_init();
    tpt_bf16_native_flag = __builtin_cpu_supports("x86-64-v4") && __builtin_cpu_supports("avx512bf16");
}

#define TPT_TARGET_BF16 __attribute__((target("arch=x86-64-v4,avx512bf16")))
#define TPT_SUBNORMAL 0x20 /* VFPCLASSPS category: denormal */

/* 32 bfloat16 (low 16 from lo, high 16 from hi, in that order in memory as a __m512i), or 0 if a value is
 * subnormal: then the caller converts the group by the integer form. The kernels' bfloat16 pair loops
 * (tpt_bf16_store_pair) keep the integer form: they fuse the rounding into the row arithmetic, and going
 * through scratch to this conversion measured 152 -> 145 ns a norm row in L2, not worth a second loop. */
TPT_TARGET_BF16 static inline int tpt_cvt32(__m512i* out, __m512 lo, __m512 hi) {
    if (!_mm512_kortestz(_mm512_fpclass_ps_mask(lo, TPT_SUBNORMAL), _mm512_fpclass_ps_mask(hi, TPT_SUBNORMAL)))
        return 0;
    *out = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
    return 1;
}

TPT_TARGET_BF16
void tpt_bf16_store_row_native(uint16_t* dst, const float* src, int64_t n) {
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512i r;
        if (tpt_cvt32(&r, _mm512_loadu_ps(src + i), _mm512_loadu_ps(src + i + 16))) _mm512_storeu_si512(dst + i, r);
        else for (int k = 0; k < 32; k++) dst[i + k] = tpt_float_to_bf16(src[i + k]);
    }
    for (; i < n; i++) dst[i] = tpt_float_to_bf16(src[i]);
}
#endif
