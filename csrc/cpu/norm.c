/* Per-phase RMSNorm kernels: norm.inc compiled in both precisions. */
#include "norm.h"
#include <stdlib.h>

#define TPT_PRECISION 32
#include "norm.inc"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "norm.inc"
