/* Causal flash attention kernels: attention.inc compiled in both precisions. */
#include "attention.h"

#define TPT_PRECISION 32
#include "attention.inc"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "attention.inc"
