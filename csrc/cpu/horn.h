/* Gabriel's-horn DC injection (docs/ops/horn.md). The all-ones direction of each
 * token's D-vector is replaced by r(p) = 1/(p+1) of the token's absolute
 * position p:  y = x - mean(x) + r(p).  Rows are [M, D] row-major; row m is
 * token m % T of its sequence, so p = m % T + offset. _f32/_f64 compute in
 * float32 / float64 as in norm.h. */
#ifndef TPT_HORN_H
#define TPT_HORN_H
#include "common.h"
#ifdef __cplusplus
extern "C" {
#endif

/* r(p) = 1/(p+1), a TPT_HD helper, so a CUDA kernel can share it. */
TPT_HD float tpt_horn_r_f32(int64_t p) { return 1.0f / ((float)p + 1.0f); }
TPT_HD double tpt_horn_r_f64(int64_t p) { return 1.0 / ((double)p + 1.0); }

/* y = x - mean(x) + r(m % T + offset), rows [row_begin, row_end). */
int horn_inject_forward_f32(void* y, const void* x, tpt_dtype dt, int64_t row_begin, int64_t row_end, int64_t T,
                            int64_t D, int64_t offset);
int horn_inject_forward_f64(void* y, const void* x, tpt_dtype dt, int64_t row_begin, int64_t row_end, int64_t T,
                            int64_t D, int64_t offset);

/* dx = dy - mean(dy) (the projection off the DC direction). */
int horn_inject_backward_f32(void* dx, const void* dy, tpt_dtype dt, int64_t row_begin, int64_t row_end, int64_t D);
int horn_inject_backward_f64(void* dx, const void* dy, tpt_dtype dt, int64_t row_begin, int64_t row_end, int64_t D);

/* The index of the first id outside [0, V), or -1 when all are valid. */
int64_t horn_first_bad_id(const int64_t* ids, int64_t n, int64_t V);

/* y[m] = table[ids[m]] - mean(table[ids[m]]) + r(m % T + offset). ids must be valid. */
int horn_embedding_forward_f32(void* y, const int64_t* ids, const void* table, tpt_dtype dt, int64_t row_begin,
                               int64_t row_end, int64_t T, int64_t D, int64_t offset);
int horn_embedding_forward_f64(void* y, const int64_t* ids, const void* table, tpt_dtype dt, int64_t row_begin,
                               int64_t row_end, int64_t T, int64_t D, int64_t offset);

/* Stable counting sort of token indices by id: the tokens with id v are
 * order[id_offsets[v] .. id_offsets[v+1]), in token order. id_offsets has V+1
 * entries. This is what makes the table gradient deterministic. */
void horn_embedding_group(int64_t* order, int64_t* id_offsets, const int64_t* ids, int64_t n, int64_t V);

/* The table gradient's fixed partition of tokens: the grouped tokens
 * (order, from horn_embedding_group) are cut into blocks of TPT_ROW_BLOCK
 * positions, the tasks, so every task has the same work whatever the ids'
 * skew; where a block holds several ids, or an id spans blocks, it is cut
 * again, into chunks of one id within one block. Chunk c is the tokens
 * order[chunk_begin[c] .. chunk_begin[c+1]); id v owns the chunks
 * id_chunks[v] .. id_chunks[v+1]-1 (none when v is unused); block b holds the
 * chunks block_chunks[b] .. block_chunks[b+1]-1. chunk_begin needs
 * horn_embedding_max_chunks(n, V) + 1 entries, id_chunks V+1, block_chunks
 * tpt_num_row_blocks(n) + 1. Returns the number of chunks. The partition
 * depends on the ids only, never on threads. */
int64_t horn_embedding_max_chunks(int64_t n, int64_t V);
int64_t horn_embedding_chunks(int64_t* chunk_begin, int64_t* id_chunks, int64_t* block_chunks,
                              const int64_t* id_offsets, int64_t V);

/* partials[c] (D values) = sum over chunk c's tokens t, in token order, of
 * dy[t] - mean(dy[t]); chunks [chunk_first, chunk_last). */
int horn_embedding_backward_f32(float* partials, const void* dy, const int64_t* order, const int64_t* chunk_begin,
                                tpt_dtype dt, int64_t chunk_first, int64_t chunk_last, int64_t D);
int horn_embedding_backward_f64(double* partials, const void* dy, const int64_t* order, const int64_t* chunk_begin,
                                tpt_dtype dt, int64_t chunk_first, int64_t chunk_last, int64_t D);

/* dtable[v] = the sum of v's chunk partials in chunk order (zeros for an
 * unused id), rounded once to dt; vocab rows [vocab_begin, vocab_end). */
int horn_embedding_backward_combine_f32(void* dtable, const float* partials, const int64_t* id_chunks, tpt_dtype dt,
                                        int64_t vocab_begin, int64_t vocab_end, int64_t D);
int horn_embedding_backward_combine_f64(void* dtable, const double* partials, const int64_t* id_chunks, tpt_dtype dt,
                                        int64_t vocab_begin, int64_t vocab_end, int64_t D);

#ifdef __cplusplus
}
#endif
#endif
