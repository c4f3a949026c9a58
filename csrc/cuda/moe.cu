/* Token-choice MoE CUDA kernels: moe.cuh in both precisions, plus the
 * routing layout and the row copy, which do not depend on the precision. */
#include "common.cuh"
#include "../cpu/moe.h"

/* moe_route_assign (moe.c) in one thread block, one thread an expert: each
 * expert walks the assignments in priority order (admission) and then in
 * token order (its rows), so the layout is the C function's, with no atomics. */
static __global__ void route_assign_kernel(int64_t* slots, int64_t* slot_token, int64_t* counts, int64_t* cursor,
                                           const int64_t* experts, int64_t M, int64_t E, int64_t k,
                                           int64_t capacity) {
    __shared__ int64_t n_kept;
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
        int64_t count = 0;
        for (int64_t j = 0; j < k; j++)
            for (int64_t t = 0; t < M; t++)
                if (experts[t * k + j] == e) {
                    const int admit = capacity < 0 || count < capacity;
                    count += admit;
                    slots[t * k + j] = admit ? 0 : -1;
                }
        counts[e] = count;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int64_t total = 0;
        for (int64_t e = 0; e < E; e++) {
            cursor[e] = total;
            total += counts[e];
        }
        n_kept = total;
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
        int64_t row = cursor[e];
        for (int64_t t = 0; t < M; t++)
            for (int64_t j = 0; j < k; j++)
                if (experts[t * k + j] == e && slots[t * k + j] >= 0) {
                    slots[t * k + j] = row;
                    slot_token[row++] = t;
                }
    }
    for (int64_t a = n_kept + threadIdx.x; a < M * k; a += blockDim.x) slot_token[a] = -1;
}

extern "C" int tpt_cuda_moe_route_assign(int64_t* slots, int64_t* slot_token, int64_t* counts, int64_t* cursor,
                                         const int64_t* experts, int64_t M, int64_t E, int64_t k, int64_t capacity,
                                         cudaStream_t stream) {
    route_assign_kernel<<<1, 1024, 0, stream>>>(slots, slot_token, counts, cursor, experts, M, E, k, capacity);
    return tpt_cuda_status();
}

/* buf[a] = x[slot_token[a]] as stored, 16 bytes a thread where rows allow, else one element. */
static __global__ void permute_forward_kernel(void* buf, const void* x, const int64_t* slot_token, int64_t A,
                                              int64_t row_units, int64_t unit) {
    TPT_FOR_EACH(idx, A * row_units) {
        const int64_t a = idx / row_units, u = idx % row_units, t = slot_token[a];
        if (unit == 16) {
            const uint4 zero = {0, 0, 0, 0};
            ((uint4*)buf)[idx] = t >= 0 ? ((const uint4*)x)[t * row_units + u] : zero;
        } else if (t >= 0) {
            tpt_copy_element(buf, idx, x, t * row_units + u, unit);
        } else {
            tpt_zero_element(buf, idx, unit); /* +0.0 in every storage dtype */
        }
    }
}

extern "C" int tpt_cuda_moe_permute_forward(void* buf, const void* x, const int64_t* slot_token, tpt_dtype dt,
                                            int64_t A, int64_t D, cudaStream_t stream) {
    if (A <= 0 || D <= 0) return TPT_OK;
    const int64_t esize = tpt_dtype_size(dt), row_bytes = D * esize;
    const int wide = row_bytes % 16 == 0 && (uintptr_t)buf % 16 == 0 && (uintptr_t)x % 16 == 0;
    const int64_t unit = wide ? 16 : esize, row_units = row_bytes / unit;
    permute_forward_kernel<<<tpt_cuda_grid(A * row_units), TPT_CUDA_THREADS, 0, stream>>>(buf, x, slot_token, A,
                                                                                           row_units, unit);
    return tpt_cuda_status();
}

int64_t tpt_cuda_moe_route_workspace(int64_t M, int64_t E, int64_t k) { return M * (3 * E + k + 1); }
int64_t tpt_cuda_moe_route_backward_workspace(int64_t M, int64_t E) { return M * 5 * E + E; }

#define TPT_PRECISION 32
#include "moe.cuh"
#undef TPT_PRECISION
#define TPT_PRECISION 64
#include "moe.cuh"
