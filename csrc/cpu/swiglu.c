/* Fused SwiGLU kernels: swiglu.inc compiled in both precisions. */
#include "swiglu.h"
#include <stdlib.h>

#define TPT_PRECISION 32
#include "swiglu.inc"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "swiglu.inc"
