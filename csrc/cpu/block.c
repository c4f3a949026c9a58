/* Fused 3PT block kernels: block.inc in both precisions, on top of the
 * per-row math of the norm and rotate families. */
#include "block.h"
#include <stdlib.h>

#define TPT_ROW_MATH_ONLY
#define TPT_PRECISION 32
#include "norm.inc"
#include "rotate.inc"
#include "block.inc"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "norm.inc"
#include "rotate.inc"
#include "block.inc"
