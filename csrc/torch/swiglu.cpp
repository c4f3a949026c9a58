// Registration of the fused SwiGLU ops (kernels: csrc/cpu/swiglu.c).
#include "glue.h"
#include "../cpu/swiglu.h"

namespace tpt {
namespace {

constexpr const char* kForward = "swiglu";
constexpr const char* kBackward = "swiglu_backward";

// F, half the last dim of gate_up = [..., 2F] (gate half, then up half).
int64_t check_gate_up(const Tensor& gate_up, const char* op) {
  TPT_CHECK(gate_up.dim() >= 1, op, "argument 'gate_up' must have at least 1 dimension, got a scalar");
  const int64_t D = gate_up.size(-1);
  TPT_CHECK(D % 2 == 0, op, "the last dim of 'gate_up' (", D,
            ") must be even: its first half is the gate, its second half the up projection");
  return D / 2;
}

// gate_up [..., 2F] -> h = silu(gate) * up [..., F].
Tensor swiglu(Tensor gate_up) {
  const tpt_dtype dt = storage_dtype(gate_up, kForward, "gate_up");
  check_cpu(gate_up, kForward, "gate_up");
  const int64_t F = check_gate_up(gate_up, kForward);
  gate_up = torch::stable::contiguous(gate_up);
  std::vector<int64_t> h_shape(gate_up.sizes().begin(), gate_up.sizes().end());
  h_shape.back() = F;
  Tensor h = torch::stable::new_empty(gate_up, h_shape);
  const int64_t M = F ? gate_up.numel() / (2 * F) : 0;
  parallel_rows(kForward, M, row_grain(2 * F), [&](int64_t begin, int64_t end) {
    return dt == TPT_FLOAT64 ? swiglu_forward_f64(h.mutable_data_ptr(), gate_up.const_data_ptr(), dt, begin, end, F)
                             : swiglu_forward_f32(h.mutable_data_ptr(), gate_up.const_data_ptr(), dt, begin, end, F);
  });
  return h;
}

// d_gate_up = [d_gate, d_up] from dh [..., F] and the saved gate_up, in one [..., 2F] tensor.
Tensor swiglu_backward(Tensor dh, Tensor gate_up) {
  const tpt_dtype dt = storage_dtype(gate_up, kBackward, "gate_up");
  storage_dtype(dh, kBackward, "dh");
  check_cpu(gate_up, kBackward, "gate_up");
  check_same_device(dh, gate_up, kBackward, "dh");
  const int64_t F = check_gate_up(gate_up, kBackward);
  std::vector<int64_t> h_shape(gate_up.sizes().begin(), gate_up.sizes().end());
  h_shape.back() = F;
  TPT_CHECK(dh.sizes().equals(h_shape), kBackward, "argument 'dh' has shape ", shape_str(dh),
            "; expected the shape of gate_up ", shape_str(gate_up), " with its last dim halved");
  gate_up = torch::stable::contiguous(gate_up);
  dh = torch::stable::contiguous(torch::stable::to(dh, gate_up.scalar_type()));
  Tensor d_gate_up = torch::stable::empty_like(gate_up);
  const int64_t M = F ? gate_up.numel() / (2 * F) : 0;
  parallel_rows(kBackward, M, row_grain(2 * F), [&](int64_t begin, int64_t end) {
    return dt == TPT_FLOAT64
        ? swiglu_backward_f64(d_gate_up.mutable_data_ptr(), dh.const_data_ptr(), gate_up.const_data_ptr(), dt,
                              begin, end, F)
        : swiglu_backward_f32(d_gate_up.mutable_data_ptr(), dh.const_data_ptr(), gate_up.const_data_ptr(), dt,
                              begin, end, F);
  });
  return d_gate_up;
}

}  // namespace
}  // namespace tpt

STABLE_TORCH_LIBRARY_FRAGMENT(tpt, m) {
  m.def("swiglu(Tensor gate_up) -> Tensor");
  m.def("swiglu_backward(Tensor dh, Tensor gate_up) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(tpt, CPU, m) {
  m.impl("swiglu", TORCH_BOX(&tpt::swiglu));
  m.impl("swiglu_backward", TORCH_BOX(&tpt::swiglu_backward));
}
