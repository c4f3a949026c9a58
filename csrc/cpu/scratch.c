/* Kernel scratch on 64-byte cache lines (common.h). */
#include "common.h"

#include <stdlib.h>

void* tpt_alloc_aligned(size_t bytes) { return aligned_alloc(64, bytes == 0 ? 64 : (bytes + 63) / 64 * 64); }

void* tpt_alloc_lines(int n, const int64_t* sizes, int64_t esize, void** bufs) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (size_t)(sizes[i] * esize + 63) / 64 * 64;
    char* p = (char*)tpt_alloc_aligned(total);
    if (!p) return NULL;
    for (int i = 0; i < n; i++) {
        bufs[i] = p;
        p += (size_t)(sizes[i] * esize + 63) / 64 * 64;
    }
    return bufs[0];
}
