/* The launchers of one compute precision `real` (float: float32, bfloat16 and
 * float16 storage; double: float64), named by TPT_LAUNCHER(name); included
 * twice by launchers.h. The math of each is the C kernel's (csrc/cpu/<family>.h). */

/* out[j] = sum_b partials[b, j] for b in order: the combine step of every row reduction. */
int TPT_LAUNCHER(sum_partials)(real* out, const real* partials, int64_t n_blocks, int64_t n, cudaStream_t stream);

/* norm.h; dweight_partials is [tpt_num_row_blocks(M), D]. */
int TPT_LAUNCHER(phase_rmsnorm_forward)(void* y, real* rstd, const void* x, const real* weight, tpt_dtype dt,
                                        int64_t M, int64_t D, int64_t N, double eps, cudaStream_t stream);
int TPT_LAUNCHER(phase_rmsnorm_backward)(void* dx, real* dweight_partials, const void* dy, const void* x,
                                         const real* weight, const real* rstd, tpt_dtype dt, int64_t M, int64_t D,
                                         int64_t N, cudaStream_t stream);

/* rotate.h; table is D reals of workspace (the cos and sin tables), dtheta_partials [n_blocks, P/2]. */
int TPT_LAUNCHER(phase_rotate_forward)(void* y, real* table, const void* x, const real* theta, tpt_dtype dt,
                                       int64_t M, int64_t D, int64_t N, cudaStream_t stream);
int TPT_LAUNCHER(phase_rotate_backward)(void* dx, real* dtheta_partials, real* table, const void* dy, const void* y,
                                        const real* theta, tpt_dtype dt, int64_t M, int64_t D, int64_t N,
                                        cudaStream_t stream);

/* block.h (theta NULL: add_norm); table is D reals, coef M * N reals of workspace. */
int TPT_LAUNCHER(add_rotate_norm_forward)(void* h_new, void* normed, real* rstd, real* table, const void* h,
                                          tpt_dtype dt_h, const void* a, tpt_dtype dt_a, const real* theta,
                                          const real* weight, int64_t M, int64_t D, int64_t N, double eps,
                                          cudaStream_t stream);
int TPT_LAUNCHER(add_rotate_norm_backward)(void* dsum, real* dtheta_partials, real* dweight_partials, real* table,
                                           real* coef, const void* dh_new, const void* dnormed, const void* h_new,
                                           const real* theta, const real* weight, const real* rstd, tpt_dtype dt,
                                           int64_t M, int64_t D, int64_t N, cudaStream_t stream);

/* swiglu.h (d_gate_up may be gate_up). */
int TPT_LAUNCHER(swiglu_forward)(void* h, const void* gate_up, tpt_dtype dt, int64_t M, int64_t F,
                                 cudaStream_t stream);
int TPT_LAUNCHER(swiglu_backward)(void* d_gate_up, const void* dh, const void* gate_up, tpt_dtype dt, int64_t M,
                                  int64_t F, cudaStream_t stream);

/* rope.h, over the B * T rows. */
int TPT_LAUNCHER(qkv_rope_forward)(void* q, void* k, void* v, const void* qkv, const real* cos,
                                   const real* sin_signed, tpt_dtype dt, int64_t B, int64_t T, int64_t H,
                                   int64_t Hkv, int64_t hd, cudaStream_t stream);
int TPT_LAUNCHER(qkv_rope_backward)(void* dqkv, const void* dq, tpt_head_strides dq_strides, const void* dk,
                                    tpt_head_strides dk_strides, const void* dv, tpt_head_strides dv_strides,
                                    const real* cos, const real* sin_signed, tpt_dtype dt, int64_t B, int64_t T,
                                    int64_t H, int64_t Hkv, int64_t hd, cudaStream_t stream);

/* horn.h; token_means is M reals of workspace; order and id_offsets as horn_embedding_group makes them. */
int TPT_LAUNCHER(horn_inject_forward)(void* y, const void* x, tpt_dtype dt, int64_t M, int64_t T, int64_t D,
                                      int64_t offset, cudaStream_t stream);
int TPT_LAUNCHER(horn_inject_backward)(void* dx, const void* dy, tpt_dtype dt, int64_t M, int64_t D,
                                       cudaStream_t stream);
int TPT_LAUNCHER(horn_embedding_forward)(void* y, const int64_t* ids, const void* table, tpt_dtype dt, int64_t M,
                                         int64_t T, int64_t D, int64_t offset, cudaStream_t stream);
int TPT_LAUNCHER(horn_embedding_backward)(void* dtable, real* token_means, const void* dy, const int64_t* order,
                                          const int64_t* id_offsets, tpt_dtype dt, int64_t M, int64_t V, int64_t D,
                                          cudaStream_t stream);

/* moe.h. route_forward's workspace: tpt_cuda_moe_route_workspace(M, E, k); prob_partials [n_blocks, E],
 * lse_sq_partials [n_blocks]. route_losses reads the summed partials on the device. route_backward's workspace:
 * tpt_cuda_moe_route_backward_workspace(M, E); daux and dz are one device value each. */
int TPT_LAUNCHER(moe_route_forward)(real* gates, int64_t* experts, real* prob_partials, real* lse_sq_partials,
                                    real* workspace, const void* logits, const real* bias, tpt_dtype dt, int64_t M,
                                    int64_t E, int64_t k, int normalize, int score, cudaStream_t stream);
int TPT_LAUNCHER(moe_route_losses)(real* gates, real* aux_loss, real* z_loss, const int64_t* slots,
                                   const int64_t* counts, const real* prob_sums, const real* lse_sq_sum, int64_t M,
                                   int64_t E, int64_t k, cudaStream_t stream);
int TPT_LAUNCHER(moe_route_backward)(void* dlogits, real* workspace, const real* dgates, const real* daux,
                                     const real* dz, const void* logits, const int64_t* experts, const real* gates,
                                     const int64_t* slots, const int64_t* counts, tpt_dtype dt, int64_t M,
                                     int64_t E, int64_t k, int normalize, int score, cudaStream_t stream);
int TPT_LAUNCHER(moe_permute_backward)(void* dx, const void* dbuf, const int64_t* slots, tpt_dtype dt, int64_t M,
                                       int64_t k, int64_t D, cudaStream_t stream);
int TPT_LAUNCHER(moe_unpermute_forward)(void* y, const void* out, const real* gates, const int64_t* slots,
                                        tpt_dtype dt, int64_t M, int64_t k, int64_t D, cudaStream_t stream);
int TPT_LAUNCHER(moe_unpermute_backward)(void* dout, real* dgates, const void* dy, const void* out,
                                         const real* gates, const int64_t* slots, const int64_t* slot_token,
                                         tpt_dtype dt, int64_t A, int64_t k, int64_t D, cudaStream_t stream);

/* hedgehog.h. Workspaces: tpt_cuda_feature_map_workspace(rows, F, backward) and
 * tpt_cuda_linear_attention_workspace(tasks, T, K, Dv, backward) with tasks B * H (forward) or B * Hkv
 * (backward); one thread block runs one task, in the C kernel's order. */
int TPT_LAUNCHER(hedgehog_feature_map_forward)(void* phi, real* workspace, const void* u, tpt_dtype dt,
                                               int64_t rows, int64_t F, cudaStream_t stream);
int TPT_LAUNCHER(hedgehog_feature_map_backward)(void* du, real* workspace, const void* dphi, const void* u,
                                                tpt_dtype dt, int64_t rows, int64_t F, cudaStream_t stream);
int TPT_LAUNCHER(linear_attention_forward)(void* y, real* S_out, real* z_out, real* workspace, const void* phi_q,
                                           const void* phi_k, const void* v, tpt_dtype dt, int64_t B, int64_t H,
                                           int64_t Hkv, int64_t T, int64_t K, int64_t Dv, int causal, double eps,
                                           cudaStream_t stream);
int TPT_LAUNCHER(linear_attention_backward)(void* dq, void* dk, void* dv, real* workspace, const void* dy,
                                            const void* phi_q, const void* phi_k, const void* v, tpt_dtype dt,
                                            int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t K, int64_t Dv,
                                            int causal, double eps, cudaStream_t stream);
int TPT_LAUNCHER(linear_attention_step)(void* y, real* S_new, real* z_new, const void* phi_q, const void* phi_k,
                                        const void* v, const real* S, const real* z, tpt_dtype dt, int64_t B,
                                        int64_t H, int64_t Hkv, int64_t K, int64_t Dv, double eps,
                                        cudaStream_t stream);

/* attention.h over all B * H query heads (forward) and B * Hkv key/value heads (backward); delta is
 * tpt_cuda_attention_backward_workspace(B, H, T) reals of workspace (D_i = dout_i . out_i). */
int TPT_LAUNCHER(attention_forward)(void* out, real* lse, const void* q, const void* k, const void* v, tpt_dtype dt,
                                    int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t Tk, int64_t hd,
                                    int64_t kv_head_stride, int64_t offset, double scale, cudaStream_t stream);
int TPT_LAUNCHER(attention_backward)(void* dq, void* dk, void* dv, real* delta, const void* dout, const void* q,
                                     const void* k, const void* v, const void* out, const real* lse, tpt_dtype dt,
                                     int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t Tk, int64_t hd,
                                     int64_t kv_head_stride, int64_t offset, double scale, cudaStream_t stream);
