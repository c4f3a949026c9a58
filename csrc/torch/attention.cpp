// Registration of the causal flash attention ops (kernels: csrc/cpu/attention.c).
#include "glue.h"
#include "../cpu/attention.h"

#include <tuple>

namespace tpt {
namespace {

namespace kernels {
TPT_KERNEL_PAIR(attention_forward)
TPT_KERNEL_PAIR(attention_backward)
#ifdef TPT_WITH_CUDA
TPT_KERNEL_PAIR(tpt_cuda_attention_forward)
TPT_KERNEL_PAIR(tpt_cuda_attention_backward)
#endif
}  // namespace kernels

constexpr const char* kAttention = "causal_attention";
constexpr const char* kBackward = "causal_attention_backward";

struct Dims {
  tpt_dtype dt;
  int64_t B, H, Hkv, T, Tk, hd, kv_head_stride;
};

// The stride between the [Tk, hd] heads of t [B, Hkv, Tk, hd] when each head is contiguous and the heads sit at
// one stride (a slice [:, :, :Tk] of a KV cache buffer is); 0 when t has another layout.
int64_t head_stride(const Tensor& t) {
  const int64_t B = t.size(0), G = t.size(1), Tk = t.size(2), hd = t.size(3);
  if (hd > 1 && t.stride(3) != 1) return 0;
  if (Tk > 1 && t.stride(2) != hd) return 0;
  const int64_t s = G > 1 ? t.stride(1) : B > 1 ? t.stride(0) : Tk * hd;
  if (B > 1 && t.stride(0) != G * s) return 0;
  return s >= Tk * hd ? s : 0;
}

// The shared checks; q is made contiguous, k and v keep a KV cache's head stride or are made contiguous.
Dims check_attention(Tensor& q, Tensor& k, Tensor& v, int64_t offset, double scale, const char* op) {
  Dims d;
  d.dt = storage_dtype(q, op, "q");
  check_device(q, op, "q");
  storage_dtype(k, op, "k");
  storage_dtype(v, op, "v");
  check_same_device(k, q, op, "k");
  check_same_device(v, q, op, "v");
  const std::string q_type = dtype_name(q.scalar_type());
  TPT_RULE(op, tpt_check_same_dtype, "k", dtype_name(k.scalar_type()).c_str(), "q", q_type.c_str());
  TPT_RULE(op, tpt_check_same_dtype, "v", dtype_name(v.scalar_type()).c_str(), "q", q_type.c_str());
  TPT_RULE(op, tpt_check_attention, shape_of(q), shape_of(k), shape_of(v), offset);
  TPT_RULE(op, tpt_check_attention_scale, scale);
  d.B = q.size(0), d.H = q.size(1), d.T = q.size(2), d.hd = q.size(3), d.Hkv = k.size(1), d.Tk = k.size(2);
  q = torch::stable::contiguous(q);
  const int64_t k_stride = head_stride(k);
  if (k_stride == 0 || k_stride != head_stride(v)) {
    k = torch::stable::contiguous(k);
    v = torch::stable::contiguous(v);
    d.kv_head_stride = d.Tk * d.hd;
  } else {
    d.kv_head_stride = k_stride;
  }
  return d;
}

// (out [B, H, T, hd] in q's dtype, lse [B, H, T] in the compute precision); tasks are (b, h, query tile).
std::tuple<Tensor, Tensor> causal_attention(Tensor q, Tensor k, Tensor v, int64_t offset, double scale) {
  const Dims d = check_attention(q, k, v, offset, scale, kAttention);
  Tensor out = torch::stable::new_empty(q, {d.B, d.H, d.T, d.hd});
  Tensor lse = torch::stable::new_empty(q, {d.B, d.H, d.T}, compute_type(d.dt));
#ifdef TPT_WITH_CUDA
  if (q.is_cuda()) {
    const CudaLaunch launch(q);
    check_status(by_precision(d.dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_attention_forward<real>(
                       out.mutable_data_ptr(), lse.mutable_data_ptr<real>(), q.const_data_ptr(), k.const_data_ptr(),
                       v.const_data_ptr(), d.dt, d.B, d.H, d.Hkv, d.T, d.Tk, d.hd, d.kv_head_stride, offset, scale,
                       launch.stream);
                 }),
                 kAttention);
    return {out, lse};
  }
#endif
  parallel_rows(kAttention, tpt_attention_forward_tasks(d.B, d.Hkv, d.T), 1, [&](int64_t begin, int64_t end) {
    return by_precision(d.dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::attention_forward<real>(out.mutable_data_ptr(), lse.mutable_data_ptr<real>(),
                                              q.const_data_ptr(), k.const_data_ptr(), v.const_data_ptr(), d.dt,
                                              begin, end, d.H, d.Hkv, d.T, d.Tk, d.hd, d.kv_head_stride, offset,
                                              scale);
    });
  });
  return {out, lse};
}

// (dq, dk, dv) in q's dtype from dout [B, H, T, hd] and the forward's out and lse; tasks are (b, key/value head).
std::tuple<Tensor, Tensor, Tensor> causal_attention_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                                                             Tensor lse, int64_t offset, double scale) {
  const char* op = kBackward;
  const Dims d = check_attention(q, k, v, offset, scale, op);
  const int64_t q_sizes[4] = {d.B, d.H, d.T, d.hd};
  for (auto [arg, t] : {std::pair<const char*, Tensor*>{"dout", &dout}, {"out", &out}}) {
    storage_dtype(*t, op, arg);
    check_same_device(*t, q, op, arg);
    TPT_RULE(op, tpt_check_shape, arg, shape_of(*t), "[B, H, T, hd]", q_sizes, 4);
    *t = torch::stable::contiguous(torch::stable::to(*t, q.scalar_type()));
  }
  storage_dtype(lse, op, "lse");
  check_same_device(lse, q, op, "lse");
  TPT_RULE(op, tpt_check_shape, "lse", shape_of(lse), "[B, H, T]", q_sizes, 3);
  lse = torch::stable::contiguous(torch::stable::to(lse, compute_type(d.dt)));
  Tensor dq = torch::stable::new_empty(q, {d.B, d.H, d.T, d.hd});
  Tensor dk = torch::stable::new_empty(q, {d.B, d.Hkv, d.Tk, d.hd});
  Tensor dv = torch::stable::new_empty(q, {d.B, d.Hkv, d.Tk, d.hd});
#ifdef TPT_WITH_CUDA
  if (q.is_cuda()) {
    const CudaLaunch launch(q);
    Tensor delta =
        torch::stable::new_empty(q, {tpt_cuda_attention_backward_workspace(d.B, d.H, d.T)}, compute_type(d.dt));
    check_status(by_precision(d.dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_attention_backward<real>(
                       dq.mutable_data_ptr(), dk.mutable_data_ptr(), dv.mutable_data_ptr(),
                       delta.mutable_data_ptr<real>(), dout.const_data_ptr(), q.const_data_ptr(), k.const_data_ptr(),
                       v.const_data_ptr(), out.const_data_ptr(), lse.const_data_ptr<real>(), d.dt, d.B, d.H, d.Hkv,
                       d.T, d.Tk, d.hd, d.kv_head_stride, offset, scale, launch.stream);
                 }),
                 op);
    return {dq, dk, dv};
  }
#endif
  parallel_rows(op, d.B * d.Hkv, 1, [&](int64_t begin, int64_t end) {
    return by_precision(d.dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::attention_backward<real>(dq.mutable_data_ptr(), dk.mutable_data_ptr(), dv.mutable_data_ptr(),
                                               dout.const_data_ptr(), q.const_data_ptr(), k.const_data_ptr(),
                                               v.const_data_ptr(), out.const_data_ptr(), lse.const_data_ptr<real>(),
                                               d.dt, begin, end, d.H, d.Hkv, d.T, d.Tk, d.hd, d.kv_head_stride,
                                               offset, scale);
    });
  });
  return {dq, dk, dv};
}

}  // namespace
}  // namespace tpt

STABLE_TORCH_LIBRARY_FRAGMENT(tpt, m) {
  m.def("causal_attention(Tensor q, Tensor k, Tensor v, int offset, float scale) -> (Tensor, Tensor)");
  m.def("causal_attention_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int offset, "
        "float scale) -> (Tensor, Tensor, Tensor)");
}

namespace {
void register_attention(torch::stable::detail::StableLibrary& m) {
  m.impl("causal_attention", TORCH_BOX(&tpt::causal_attention));
  m.impl("causal_attention_backward", TORCH_BOX(&tpt::causal_attention_backward));
}
}  // namespace

TPT_REGISTER_IMPLS(register_attention)
