/* The combine step of the row reductions: reduce.cuh compiled in both precisions. */
#define TPT_PRECISION 32
#include "reduce.cuh"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "reduce.cuh"
