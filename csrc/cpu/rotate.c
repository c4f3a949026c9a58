/* Givens phase rotation kernels: rotate.inc compiled in both precisions. */
#include "rotate.h"
#include <stdlib.h>

#define TPT_PRECISION 32
#include "rotate.inc"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "rotate.inc"
