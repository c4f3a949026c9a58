// Registration of the fused SwiGLU ops (kernels: csrc/cpu/swiglu.c).
#include "glue.h"
#include "../cpu/swiglu.h"

namespace tpt {
namespace {

namespace kernels {
TPT_KERNEL_PAIR(swiglu_forward)
TPT_KERNEL_PAIR(swiglu_backward)
#ifdef TPT_WITH_CUDA
TPT_KERNEL_PAIR(tpt_cuda_swiglu_forward)
TPT_KERNEL_PAIR(tpt_cuda_swiglu_backward)
#endif
}  // namespace kernels

constexpr const char* kForward = "swiglu";
constexpr const char* kBackward = "swiglu_backward";
constexpr const char* kBackwardInplace = "swiglu_backward_";

// F, half the last dim of gate_up = [..., 2F] (gate half, then up half).
int64_t check_gate_up(const Tensor& gate_up, const char* op) {
  TPT_RULE(op, tpt_check_gate_up, shape_of(gate_up));
  return gate_up.size(-1) / 2;
}

// gate_up [..., 2F] -> h = silu(gate) * up [..., F].
Tensor swiglu(Tensor gate_up) {
  const tpt_dtype dt = storage_dtype(gate_up, kForward, "gate_up");
  check_device(gate_up, kForward, "gate_up");
  const int64_t F = check_gate_up(gate_up, kForward);
  gate_up = torch::stable::contiguous(gate_up);
  std::vector<int64_t> h_shape(gate_up.sizes().begin(), gate_up.sizes().end());
  h_shape.back() = F;
  Tensor h = torch::stable::new_empty(gate_up, h_shape);
  const int64_t M = F ? gate_up.numel() / (2 * F) : 0;
#ifdef TPT_WITH_CUDA
  if (gate_up.is_cuda()) {
    const CudaLaunch launch(gate_up);
    check_status(by_precision(dt, [&](auto tag) {
                   return kernels::tpt_cuda_swiglu_forward<decltype(tag)>(h.mutable_data_ptr(),
                                                                          gate_up.const_data_ptr(), dt, M, F,
                                                                          launch.stream);
                 }),
                 kForward);
  } else
#endif
  parallel_rows(kForward, M, row_grain(2 * F), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      return kernels::swiglu_forward<decltype(tag)>(h.mutable_data_ptr(), gate_up.const_data_ptr(), dt, begin, end, F);
    });
  });
  return h;
}

// Checks the backward's arguments; returns F and the storage dtype.
int64_t check_backward(const Tensor& dh, const Tensor& gate_up, const char* op, tpt_dtype* dt) {
  *dt = storage_dtype(gate_up, op, "gate_up");
  storage_dtype(dh, op, "dh");
  check_device(gate_up, op, "gate_up");
  check_same_device(dh, gate_up, op, "dh");
  const int64_t F = check_gate_up(gate_up, op);
  TPT_RULE(op, tpt_check_swiglu_grad, shape_of(dh), shape_of(gate_up));
  return F;
}

// Writes [d_gate, d_up] into d_gate_up (contiguous, gate_up's shape), which may be gate_up itself.
void run_backward(const char* op, tpt_dtype dt, int64_t F, Tensor& d_gate_up, const Tensor& dh,
                  const Tensor& gate_up) {
  const Tensor dh_c = torch::stable::contiguous(torch::stable::to(dh, gate_up.scalar_type()));
  const int64_t M = F ? gate_up.numel() / (2 * F) : 0;
#ifdef TPT_WITH_CUDA
  if (gate_up.is_cuda()) {
    const CudaLaunch launch(gate_up);
    check_status(by_precision(dt, [&](auto tag) {
                   return kernels::tpt_cuda_swiglu_backward<decltype(tag)>(d_gate_up.mutable_data_ptr(),
                                                                           dh_c.const_data_ptr(),
                                                                           gate_up.const_data_ptr(), dt, M, F,
                                                                           launch.stream);
                 }),
                 op);
  } else
#endif
  parallel_rows(op, M, row_grain(2 * F), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      return kernels::swiglu_backward<decltype(tag)>(d_gate_up.mutable_data_ptr(), dh_c.const_data_ptr(),
                                                     gate_up.const_data_ptr(), dt, begin, end, F);
    });
  });
}

// d_gate_up = [d_gate, d_up] from dh [..., F] and the saved gate_up, in one [..., 2F] tensor.
Tensor swiglu_backward(Tensor dh, Tensor gate_up) {
  tpt_dtype dt;
  const int64_t F = check_backward(dh, gate_up, kBackward, &dt);
  gate_up = torch::stable::contiguous(gate_up);
  Tensor d_gate_up = torch::stable::empty_like(gate_up);
  run_backward(kBackward, dt, F, d_gate_up, dh, gate_up);
  return d_gate_up;
}

// The same gradient written over gate_up, for a backward that owns the
// activation (it is dead after this): no [..., 2F] allocation.
void swiglu_backward_(Tensor dh, Tensor gate_up) {
  tpt_dtype dt;
  const int64_t F = check_backward(dh, gate_up, kBackwardInplace, &dt);
  TPT_CHECK(gate_up.is_contiguous(), kBackwardInplace,
            "argument 'gate_up' must be contiguous to take its gradient in place");
  run_backward(kBackwardInplace, dt, F, gate_up, dh, gate_up);
}

}  // namespace
}  // namespace tpt

STABLE_TORCH_LIBRARY_FRAGMENT(tpt, m) {
  m.def("swiglu(Tensor gate_up) -> Tensor");
  m.def("swiglu_backward(Tensor dh, Tensor gate_up) -> Tensor");
  m.def("swiglu_backward_(Tensor dh, Tensor(a!) gate_up) -> ()");
}

namespace {
void register_swiglu(torch::stable::detail::StableLibrary& m) {
  m.impl("swiglu", TORCH_BOX(&tpt::swiglu));
  m.impl("swiglu_backward", TORCH_BOX(&tpt::swiglu_backward));
  m.impl("swiglu_backward_", TORCH_BOX(&tpt::swiglu_backward_));
}
}  // namespace

TPT_REGISTER_IMPLS(register_swiglu)
