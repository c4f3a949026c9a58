/* Fused 3PT block kernels: block.inc compiled in both precisions. */
#include "block.h"
#include <stdlib.h>

#define TPT_PRECISION 32
#include "block.inc"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "block.inc"
