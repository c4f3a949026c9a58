/* Token-choice MoE kernels: moe.inc compiled in both precisions, plus the
 * routing layout and the row copy, which do not depend on the precision. */
#include "moe.h"
#include <stdlib.h>

int64_t moe_capacity(double capacity_factor, int64_t M, int64_t E, int64_t k) {
    /* the same expression, in the same order, as the Python reference: (cf * M * k) / E */
    const double slots = ceil(capacity_factor * (double)M * (double)k / (double)E);
    return slots >= (double)M ? M : (int64_t)slots;
}

int moe_route_assign(int64_t* slots, int64_t* slot_token, int64_t* counts, const int64_t* experts, int64_t M,
                     int64_t E, int64_t k, int64_t capacity) {
    int64_t* cursor = (int64_t*)malloc((size_t)(E > 0 ? E : 1) * sizeof(int64_t));
    if (!cursor) return TPT_ERR_NOMEM;
    for (int64_t e = 0; e < E; e++) counts[e] = 0;
    /* admission in priority order; slots marks kept (0) or dropped (-1) for now */
    for (int64_t j = 0; j < k; j++)
        for (int64_t t = 0; t < M; t++) {
            const int64_t e = experts[t * k + j];
            const int admit = capacity < 0 || counts[e] < capacity;
            counts[e] += admit;
            slots[t * k + j] = admit ? 0 : -1;
        }
    int64_t n_kept = 0;
    for (int64_t e = 0; e < E; e++) {
        cursor[e] = n_kept;
        n_kept += counts[e];
    }
    /* rows of each expert's segment in token order (a token picks an expert at most once) */
    for (int64_t t = 0; t < M; t++)
        for (int64_t j = 0; j < k; j++) {
            int64_t* slot = slots + t * k + j;
            if (*slot < 0) continue;
            *slot = cursor[experts[t * k + j]]++;
            slot_token[*slot] = t;
        }
    for (int64_t a = n_kept; a < M * k; a++) slot_token[a] = -1;
    free(cursor);
    return TPT_OK;
}

int moe_permute_forward(void* buf, const void* x, const int64_t* slot_token, tpt_dtype dt, int64_t row_begin,
                        int64_t row_end, int64_t D) {
    const size_t row_bytes = (size_t)(D * tpt_dtype_size(dt));
    for (int64_t a = row_begin; a < row_end; a++) {
        char* dst = (char*)buf + (size_t)a * row_bytes;
        const int64_t t = slot_token[a];
        if (t >= 0) memcpy(dst, (const char*)x + (size_t)t * row_bytes, row_bytes);
        else memset(dst, 0, row_bytes); /* +0.0 in every storage dtype */
    }
    return TPT_OK;
}

#define TPT_PRECISION 32
#include "moe.inc"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "moe.inc"
