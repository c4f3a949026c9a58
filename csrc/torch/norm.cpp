// Registration of the per-phase RMSNorm ops (kernels: csrc/cpu/norm.c).
#include "glue.h"
#include "../cpu/norm.h"

namespace tpt {
namespace {

namespace kernels {
TPT_KERNEL_PAIR(phase_rmsnorm_forward)
TPT_KERNEL_PAIR(phase_rmsnorm_backward)
#ifdef TPT_WITH_CUDA
TPT_KERNEL_PAIR(tpt_cuda_phase_rmsnorm_forward)
TPT_KERNEL_PAIR(tpt_cuda_phase_rmsnorm_backward)
#endif
}  // namespace kernels

constexpr const char* kForward = "phase_rmsnorm";
constexpr const char* kBackward = "phase_rmsnorm_backward";

// y = norm(x) * weight per phase; also returns rstd [..., N] for backward.
std::tuple<Tensor, Tensor> phase_rmsnorm(Tensor x, Tensor weight, int64_t n_phases, double eps) {
  const tpt_dtype dt = storage_dtype(x, kForward, "x");
  check_device(x, kForward, "x");
  const int64_t D = check_phases(x, n_phases, kForward, "x");
  TPT_RULE(kForward, tpt_check_eps, eps);
  const ScalarType ct = compute_type(dt);
  Tensor w = param_vector(weight, D, ct, x, kForward, "weight");

  x = torch::stable::contiguous(x);
  std::vector<int64_t> rstd_shape(x.sizes().begin(), x.sizes().end());
  rstd_shape.back() = n_phases;
  Tensor y = torch::stable::empty_like(x);
  Tensor rstd = torch::stable::new_empty(x, rstd_shape, ct);
  const int64_t M = D ? x.numel() / D : 0;
#ifdef TPT_WITH_CUDA
  if (x.is_cuda()) {
    const CudaLaunch launch(x);
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_phase_rmsnorm_forward<real>(
                       y.mutable_data_ptr(), rstd.mutable_data_ptr<real>(), x.const_data_ptr(),
                       w.const_data_ptr<real>(), dt, M, D, n_phases, eps, launch.stream);
                 }),
                 kForward);
  } else
#endif
  parallel_rows(kForward, M, row_grain(D), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::phase_rmsnorm_forward<real>(y.mutable_data_ptr(), rstd.mutable_data_ptr<real>(),
                                                  x.const_data_ptr(), w.const_data_ptr<real>(), dt, begin, end, D,
                                                  n_phases, eps);
    });
  });
  return {y, rstd};
}

// (dx, dweight) from dy, the saved x and rstd; dweight takes weight's dtype.
std::tuple<Tensor, Tensor> phase_rmsnorm_backward(Tensor dy, Tensor x, Tensor weight, Tensor rstd,
                                                  int64_t n_phases) {
  const tpt_dtype dt = storage_dtype(x, kBackward, "x");
  check_device(x, kBackward, "x");
  const int64_t D = check_phases(x, n_phases, kBackward, "x");
  TPT_RULE(kBackward, tpt_check_same_shape, "dy", shape_of(dy), "x", shape_of(x));
  check_same_device(dy, x, kBackward, "dy");
  const ScalarType ct = compute_type(dt);
  Tensor w = param_vector(weight, D, ct, x, kBackward, "weight");
  const int64_t M = D ? x.numel() / D : 0;
  TPT_RULE(kBackward, tpt_check_numel, "rstd", rstd.numel(), M * n_phases);

  x = torch::stable::contiguous(x);
  dy = torch::stable::contiguous(torch::stable::to(dy, x.scalar_type()));
  rstd = torch::stable::contiguous(torch::stable::to(rstd, ct));
  Tensor dx = torch::stable::empty_like(x);
  const int64_t n_blocks = tpt_num_row_blocks(M);
  Tensor partials = torch::stable::new_zeros(x, {std::max<int64_t>(n_blocks, 1), D}, ct);
#ifdef TPT_WITH_CUDA
  if (x.is_cuda()) {
    const CudaLaunch launch(x);
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_phase_rmsnorm_backward<real>(
                       dx.mutable_data_ptr(), partials.mutable_data_ptr<real>(), dy.const_data_ptr(),
                       x.const_data_ptr(), w.const_data_ptr<real>(), rstd.const_data_ptr<real>(), dt, M, D, n_phases,
                       launch.stream);
                 }),
                 kBackward);
  } else
#endif
  parallel_rows(kBackward, n_blocks, 1, [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::phase_rmsnorm_backward<real>(dx.mutable_data_ptr(), partials.mutable_data_ptr<real>(),
                                                   dy.const_data_ptr(), x.const_data_ptr(), w.const_data_ptr<real>(),
                                                   rstd.const_data_ptr<real>(), dt, begin, end, M, D, n_phases);
    });
  });
  return {dx, sum_partials(partials, weight.scalar_type())};
}

}  // namespace
}  // namespace tpt

STABLE_TORCH_LIBRARY_FRAGMENT(tpt, m) {
  m.def("phase_rmsnorm(Tensor x, Tensor weight, int n_phases, float eps) -> (Tensor, Tensor)");
  m.def("phase_rmsnorm_backward(Tensor dy, Tensor x, Tensor weight, Tensor rstd, int n_phases) -> (Tensor, Tensor)");
}

namespace {
void register_norm(torch::stable::detail::StableLibrary& m) {
  m.impl("phase_rmsnorm", TORCH_BOX(&tpt::phase_rmsnorm));
  m.impl("phase_rmsnorm_backward", TORCH_BOX(&tpt::phase_rmsnorm_backward));
}
}  // namespace

TPT_REGISTER_IMPLS(register_norm)
