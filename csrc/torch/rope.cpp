// Registration of the fused qkv split + RoPE ops (kernels: csrc/cpu/rope.c).
#include "glue.h"
#include "../cpu/rope.h"

namespace tpt {
namespace {

constexpr const char* kForward = "qkv_rope";
constexpr const char* kBackward = "qkv_rope_backward";

namespace kernels {
TPT_KERNEL_PAIR(qkv_rope_forward)
TPT_KERNEL_PAIR(qkv_rope_backward)
#ifdef TPT_WITH_CUDA
TPT_KERNEL_PAIR(tpt_cuda_qkv_rope_forward)
TPT_KERNEL_PAIR(tpt_cuda_qkv_rope_backward)
#endif
}  // namespace kernels

// A [T, head_dim] RoPE table, converted to the compute precision.
Tensor rope_table(const Tensor& table, int64_t T, int64_t hd, ScalarType compute, const Tensor& x, const char* op,
                  const char* arg) {
  storage_dtype(table, op, arg);
  check_same_device(table, x, op, arg);
  TPT_RULE(op, tpt_check_rope_table, arg, shape_of(table), T, hd);
  return torch::stable::contiguous(torch::stable::to(table, compute));
}

// qkv [B, T, (H + 2*Hkv)*hd] -> q [B, H, T, hd] and k [B, Hkv, T, hd] rotated, v [B, Hkv, T, hd] copied.
std::tuple<Tensor, Tensor, Tensor> qkv_rope(Tensor qkv, Tensor cos, Tensor sin_signed, int64_t n_q_heads,
                                            int64_t n_kv_heads) {
  const tpt_dtype dt = storage_dtype(qkv, kForward, "qkv");
  check_device(qkv, kForward, "qkv");
  TPT_RULE(kForward, tpt_check_qkv, shape_of(qkv), n_q_heads, n_kv_heads);
  const int64_t B = qkv.size(0), T = qkv.size(1), D = qkv.size(2), hd = D / (n_q_heads + 2 * n_kv_heads);
  const ScalarType ct = compute_type(dt);
  cos = rope_table(cos, T, hd, ct, qkv, kForward, "cos");
  sin_signed = rope_table(sin_signed, T, hd, ct, qkv, kForward, "sin_signed");
  qkv = torch::stable::contiguous(qkv);
  Tensor q = torch::stable::new_empty(qkv, {B, n_q_heads, T, hd});
  Tensor k = torch::stable::new_empty(qkv, {B, n_kv_heads, T, hd});
  Tensor v = torch::stable::new_empty(qkv, {B, n_kv_heads, T, hd});
  const int64_t M = hd ? B * T : 0;
#ifdef TPT_WITH_CUDA
  if (qkv.is_cuda()) {
    const CudaLaunch launch(qkv);
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_qkv_rope_forward<real>(
                       q.mutable_data_ptr(), k.mutable_data_ptr(), v.mutable_data_ptr(), qkv.const_data_ptr(),
                       cos.const_data_ptr<real>(), sin_signed.const_data_ptr<real>(), dt, B, T, n_q_heads,
                       n_kv_heads, hd, launch.stream);
                 }),
                 kForward);
  } else
#endif
  parallel_rows(kForward, M, row_grain(D), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::qkv_rope_forward<real>(q.mutable_data_ptr(), k.mutable_data_ptr(), v.mutable_data_ptr(),
                                             qkv.const_data_ptr(), cos.const_data_ptr<real>(),
                                             sin_signed.const_data_ptr<real>(), dt, begin, end, T, n_q_heads,
                                             n_kv_heads, hd);
    });
  });
  return {q, k, v};
}

// A [B, heads, T, hd] gradient in dtype st whose head rows are contiguous: as
// it is when it already is (SDPA's backward returns its gradients in
// [B, T, heads, hd] memory), else a contiguous copy.
Tensor rows_contiguous(const Tensor& grad, ScalarType st) {
  const Tensor g = torch::stable::to(grad, st);
  return g.stride(3) == 1 || g.size(3) <= 1 ? g : torch::stable::contiguous(g);
}

tpt_head_strides head_strides(const Tensor& grad) { return {grad.stride(0), grad.stride(1), grad.stride(2)}; }

// dqkv [B, T, (H + 2*Hkv)*hd] from the output gradients (in dq's dtype); none flows to the tables.
Tensor qkv_rope_backward(Tensor dq, Tensor dk, Tensor dv, Tensor cos, Tensor sin_signed, int64_t n_q_heads,
                         int64_t n_kv_heads) {
  const tpt_dtype dt = storage_dtype(dq, kBackward, "dq");
  storage_dtype(dk, kBackward, "dk");
  storage_dtype(dv, kBackward, "dv");
  check_device(dq, kBackward, "dq");
  check_same_device(dk, dq, kBackward, "dk");
  check_same_device(dv, dq, kBackward, "dv");
  TPT_RULE(kBackward, tpt_check_head_counts, n_q_heads, n_kv_heads);
  TPT_RULE(kBackward, tpt_check_dq, shape_of(dq), n_q_heads);
  const int64_t B = dq.size(0), T = dq.size(2), hd = dq.size(3);
  TPT_RULE(kBackward, tpt_check_dkv, "dk", shape_of(dk), B, n_kv_heads, T, hd);
  TPT_RULE(kBackward, tpt_check_dkv, "dv", shape_of(dv), B, n_kv_heads, T, hd);
  const ScalarType ct = compute_type(dt);
  cos = rope_table(cos, T, hd, ct, dq, kBackward, "cos");
  sin_signed = rope_table(sin_signed, T, hd, ct, dq, kBackward, "sin_signed");
  dq = rows_contiguous(dq, dq.scalar_type());
  dk = rows_contiguous(dk, dq.scalar_type());
  dv = rows_contiguous(dv, dq.scalar_type());
  const int64_t D = (n_q_heads + 2 * n_kv_heads) * hd;
  Tensor dqkv = torch::stable::new_empty(dq, {B, T, D});
  const int64_t M = hd ? B * T : 0;
#ifdef TPT_WITH_CUDA
  if (dq.is_cuda()) {
    const CudaLaunch launch(dq);
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_qkv_rope_backward<real>(
                       dqkv.mutable_data_ptr(), dq.const_data_ptr(), head_strides(dq), dk.const_data_ptr(),
                       head_strides(dk), dv.const_data_ptr(), head_strides(dv), cos.const_data_ptr<real>(),
                       sin_signed.const_data_ptr<real>(), dt, B, T, n_q_heads, n_kv_heads, hd, launch.stream);
                 }),
                 kBackward);
  } else
#endif
  parallel_rows(kBackward, M, row_grain(D), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::qkv_rope_backward<real>(dqkv.mutable_data_ptr(), dq.const_data_ptr(), head_strides(dq),
                                              dk.const_data_ptr(), head_strides(dk), dv.const_data_ptr(),
                                              head_strides(dv), cos.const_data_ptr<real>(),
                                              sin_signed.const_data_ptr<real>(), dt, begin, end, T, n_q_heads,
                                              n_kv_heads, hd);
    });
  });
  return dqkv;
}

}  // namespace
}  // namespace tpt

STABLE_TORCH_LIBRARY_FRAGMENT(tpt, m) {
  m.def("qkv_rope(Tensor qkv, Tensor cos, Tensor sin_signed, int n_q_heads, int n_kv_heads) -> (Tensor, Tensor, Tensor)");
  m.def("qkv_rope_backward(Tensor dq, Tensor dk, Tensor dv, Tensor cos, Tensor sin_signed, int n_q_heads, "
        "int n_kv_heads) -> Tensor");
}

namespace {
void register_rope(torch::stable::detail::StableLibrary& m) {
  m.impl("qkv_rope", TORCH_BOX(&tpt::qkv_rope));
  m.impl("qkv_rope_backward", TORCH_BOX(&tpt::qkv_rope_backward));
}
}  // namespace

TPT_REGISTER_IMPLS(register_rope)
