// Registration of the Givens phase rotation ops (kernels: csrc/cpu/rotate.c).
#include "glue.h"
#include "../cpu/rotate.h"

namespace tpt {
namespace {

namespace kernels {
TPT_KERNEL_PAIR(phase_rotate_forward)
TPT_KERNEL_PAIR(phase_rotate_backward)
#ifdef TPT_WITH_CUDA
TPT_KERNEL_PAIR(tpt_cuda_phase_rotate_forward)
TPT_KERNEL_PAIR(tpt_cuda_phase_rotate_backward)
#endif
}  // namespace kernels

constexpr const char* kForward = "phase_rotate";
constexpr const char* kBackward = "phase_rotate_backward";

// The phase width P = D / N; the rotation pairs channels, so P must be even.
int64_t check_pairs(int64_t D, int64_t n_phases, const char* op) {
  TPT_RULE(op, tpt_check_even_phase_width, D, n_phases);
  return D / n_phases;
}

// y = R(theta + i*2pi/N) x on the channel pairs of each phase i.
Tensor phase_rotate(Tensor x, Tensor theta, int64_t n_phases) {
  const tpt_dtype dt = storage_dtype(x, kForward, "x");
  check_device(x, kForward, "x");
  const int64_t D = check_phases(x, n_phases, kForward, "x");
  const int64_t P = check_pairs(D, n_phases, kForward);
  const ScalarType ct = compute_type(dt);
  Tensor th = param_vector(theta, P / 2, ct, x, kForward, "theta");

  x = torch::stable::contiguous(x);
  Tensor y = torch::stable::empty_like(x);
  const int64_t M = D ? x.numel() / D : 0;
#ifdef TPT_WITH_CUDA
  if (x.is_cuda()) {
    const CudaLaunch launch(x);
    Tensor table = torch::stable::new_empty(x, {D}, ct);
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_phase_rotate_forward<real>(
                       y.mutable_data_ptr(), table.mutable_data_ptr<real>(), x.const_data_ptr(),
                       th.const_data_ptr<real>(), dt, M, D, n_phases, launch.stream);
                 }),
                 kForward);
  } else
#endif
  parallel_rows(kForward, M, row_grain(D), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::phase_rotate_forward<real>(y.mutable_data_ptr(), x.const_data_ptr(), th.const_data_ptr<real>(),
                                                 dt, begin, end, D, n_phases);
    });
  });
  return y;
}

// (dx, dtheta) from dy and the saved output y; dtheta takes theta's dtype.
std::tuple<Tensor, Tensor> phase_rotate_backward(Tensor dy, Tensor y, Tensor theta, int64_t n_phases) {
  const tpt_dtype dt = storage_dtype(y, kBackward, "y");
  check_device(y, kBackward, "y");
  const int64_t D = check_phases(y, n_phases, kBackward, "y");
  const int64_t P = check_pairs(D, n_phases, kBackward);
  storage_dtype(dy, kBackward, "dy");
  TPT_RULE(kBackward, tpt_check_same_shape, "dy", shape_of(dy), "y", shape_of(y));
  check_same_device(dy, y, kBackward, "dy");
  const ScalarType ct = compute_type(dt);
  Tensor th = param_vector(theta, P / 2, ct, y, kBackward, "theta");

  y = torch::stable::contiguous(y);
  dy = torch::stable::contiguous(torch::stable::to(dy, y.scalar_type()));
  Tensor dx = torch::stable::empty_like(y);
  const int64_t M = D ? y.numel() / D : 0;
  const int64_t n_blocks = tpt_num_row_blocks(M);
  Tensor partials = torch::stable::new_zeros(y, {std::max<int64_t>(n_blocks, 1), P / 2}, ct);
#ifdef TPT_WITH_CUDA
  if (y.is_cuda()) {
    const CudaLaunch launch(y);
    Tensor table = torch::stable::new_empty(y, {D}, ct);
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_phase_rotate_backward<real>(
                       dx.mutable_data_ptr(), partials.mutable_data_ptr<real>(), table.mutable_data_ptr<real>(),
                       dy.const_data_ptr(), y.const_data_ptr(), th.const_data_ptr<real>(), dt, M, D, n_phases,
                       launch.stream);
                 }),
                 kBackward);
  } else
#endif
  parallel_rows(kBackward, n_blocks, 1, [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::phase_rotate_backward<real>(dx.mutable_data_ptr(), partials.mutable_data_ptr<real>(),
                                                  dy.const_data_ptr(), y.const_data_ptr(), th.const_data_ptr<real>(),
                                                  dt, begin, end, M, D, n_phases);
    });
  });
  return {dx, sum_partials(partials, theta.scalar_type())};
}

}  // namespace
}  // namespace tpt

STABLE_TORCH_LIBRARY_FRAGMENT(tpt, m) {
  m.def("phase_rotate(Tensor x, Tensor theta, int n_phases) -> Tensor");
  m.def("phase_rotate_backward(Tensor dy, Tensor y, Tensor theta, int n_phases) -> (Tensor, Tensor)");
}

namespace {
void register_rotate(torch::stable::detail::StableLibrary& m) {
  m.impl("phase_rotate", TORCH_BOX(&tpt::phase_rotate));
  m.impl("phase_rotate_backward", TORCH_BOX(&tpt::phase_rotate_backward));
}
}  // namespace

TPT_REGISTER_IMPLS(register_rotate)
