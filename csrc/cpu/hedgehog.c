/* Hedgehog feature map and linear attention kernels: hedgehog.inc compiled in both precisions. */
#include "hedgehog.h"

#define TPT_PRECISION 32
#include "hedgehog.inc"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "hedgehog.inc"
