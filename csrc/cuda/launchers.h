/* The CUDA kernels' C API: plain C launchers taking device pointers, sizes,
 * the storage dtype and the stream to launch on; each returns TPT_OK or
 * TPT_ERR_CUDA (the launch failed) and never synchronises. The arguments are
 * the C kernels' (csrc/cpu/<family>.h) with whole sizes in place of row
 * ranges (the GPU takes every row at once) and, where a kernel needs scratch,
 * a workspace of the compute precision that the caller allocates on the
 * device (sizes below). Reductions over rows write fixed TPT_ROW_BLOCK
 * partials, combined in block order by tpt_cuda_sum_partials_*: the same bits
 * on every run, with no float atomics. */
#ifndef TPT_CUDA_LAUNCHERS_H
#define TPT_CUDA_LAUNCHERS_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../cpu/common.h"
#include "../cpu/rope.h"

#ifdef __cplusplus
extern "C" {
#endif

/* buf[a] = x[slot_token[a]] (zeros where slot_token[a] < 0), A rows of D elements, copied as stored. */
int tpt_cuda_moe_permute_forward(void* buf, const void* x, const int64_t* slot_token, tpt_dtype dt, int64_t A,
                                 int64_t D, cudaStream_t stream);

/* moe_route_assign (moe.h) on the device: cursor is E int64 of workspace. */
int tpt_cuda_moe_route_assign(int64_t* slots, int64_t* slot_token, int64_t* counts, int64_t* cursor,
                              const int64_t* experts, int64_t M, int64_t E, int64_t k, int64_t capacity,
                              cudaStream_t stream);

/* Workspace sizes, in elements of the compute precision. */
int64_t tpt_cuda_moe_route_workspace(int64_t M, int64_t E, int64_t k);
int64_t tpt_cuda_moe_route_backward_workspace(int64_t M, int64_t E);
int64_t tpt_cuda_feature_map_workspace(int64_t rows, int64_t F, int backward);
int64_t tpt_cuda_linear_attention_workspace(int64_t tasks, int64_t T, int64_t K, int64_t Dv, int backward);
int64_t tpt_cuda_attention_backward_workspace(int64_t B, int64_t H, int64_t T);

#define real float
#define TPT_LAUNCHER(name) tpt_cuda_##name##_f32
#include "launchers_real.h"
#undef real
#undef TPT_LAUNCHER
#define real double
#define TPT_LAUNCHER(name) tpt_cuda_##name##_f64
#include "launchers_real.h"
#undef real
#undef TPT_LAUNCHER

#ifdef __cplusplus
}
#endif
#endif
