/* Fused qkv split + RoPE kernels: rope.inc compiled in both precisions. */
#include "rope.h"
#include <stdlib.h>

#define TPT_PRECISION 32
#include "rope.inc"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "rope.inc"
