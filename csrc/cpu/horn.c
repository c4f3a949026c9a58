/* Gabriel's-horn kernels: horn.inc in both precisions, plus the id checks
 * and grouping that do not depend on the precision. */
#include "horn.h"
#include <stdlib.h>

int64_t horn_first_bad_id(const int64_t* ids, int64_t n, int64_t V) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) return i;
    return -1;
}

void horn_embedding_group(int64_t* order, int64_t* id_offsets, const int64_t* ids, int64_t n, int64_t V) {
    for (int64_t v = 0; v <= V; v++) id_offsets[v] = 0;
    for (int64_t i = 0; i < n; i++) id_offsets[ids[i] + 1]++;
    for (int64_t v = 0; v < V; v++) id_offsets[v + 1] += id_offsets[v];
    /* fill each group in token order; id_offsets[v] walks to id_offsets[v+1], then is restored */
    for (int64_t i = 0; i < n; i++) order[id_offsets[ids[i]]++] = i;
    for (int64_t v = V; v > 0; v--) id_offsets[v] = id_offsets[v - 1];
    id_offsets[0] = 0;
}

int64_t horn_embedding_max_chunks(int64_t n, int64_t V) { return tpt_num_row_blocks(n) + V; }

int64_t horn_embedding_chunks(int64_t* chunk_begin, int64_t* id_chunks, int64_t* block_chunks,
                              const int64_t* id_offsets, int64_t V) {
    int64_t c = 0;
    for (int64_t v = 0; v < V; v++) {
        id_chunks[v] = c;
        for (int64_t k = id_offsets[v]; k < id_offsets[v + 1];) {
            const int64_t block_end = (k / TPT_ROW_BLOCK + 1) * TPT_ROW_BLOCK;
            /* every block's first position starts a chunk, so the blocks' chunk ranges tile the chunks */
            if (k % TPT_ROW_BLOCK == 0) block_chunks[k / TPT_ROW_BLOCK] = c;
            chunk_begin[c++] = k;
            k = block_end < id_offsets[v + 1] ? block_end : id_offsets[v + 1];
        }
    }
    id_chunks[V] = c;
    chunk_begin[c] = id_offsets[V];
    block_chunks[tpt_num_row_blocks(id_offsets[V])] = c;
    return c;
}

#define TPT_PRECISION 32
#include "horn.inc"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "horn.inc"
