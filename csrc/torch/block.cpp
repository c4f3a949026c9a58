// Registration of the fused 3PT block ops (kernels: csrc/cpu/block.c).
// add_norm is add_rotate_norm without the rotation: both go through one
// forward and one backward below, the rotation switched by theta's presence.
#include "glue.h"
#include "../cpu/block.h"

#include <optional>

namespace tpt {
namespace {

namespace kernels {
TPT_KERNEL_PAIR(add_rotate_norm_forward)
TPT_KERNEL_PAIR(add_rotate_norm_backward)
#ifdef TPT_WITH_CUDA
TPT_KERNEL_PAIR(tpt_cuda_add_rotate_norm_forward)
TPT_KERNEL_PAIR(tpt_cuda_add_rotate_norm_backward)
#endif
}  // namespace kernels

// Checks shared by both ops; returns D.
int64_t check_block_inputs(const char* op, const Tensor& h, const Tensor& a, int64_t n_phases) {
  storage_dtype(h, op, "h");
  storage_dtype(a, op, "a");
  check_device(h, op, "h");
  check_same_device(a, h, op, "a");
  TPT_RULE(op, tpt_check_same_shape, "a", shape_of(a), "h", shape_of(h));
  return check_phases(h, n_phases, op, "h");
}

Tensor rotation_theta(const char* op, const std::optional<Tensor>& theta, const Tensor& h, int64_t D,
                      int64_t n_phases, ScalarType ct) {
  TPT_RULE(op, tpt_check_even_phase_width, D, n_phases);
  return param_vector(*theta, D / n_phases / 2, ct, h, op, "theta");
}

std::tuple<Tensor, Tensor, Tensor> block_forward(const char* op, Tensor h, Tensor a,
                                                 const std::optional<Tensor>& theta, Tensor weight,
                                                 int64_t n_phases, double eps) {
  const int64_t D = check_block_inputs(op, h, a, n_phases);
  TPT_RULE(op, tpt_check_eps, eps);
  const tpt_dtype dt_h = storage_dtype(h, op, "h"), dt_a = storage_dtype(a, op, "a");
  TPT_RULE(op, tpt_check_same_precision, "h", dtype_name(h.scalar_type()).c_str(), dt_h == TPT_FLOAT64, "a",
           dtype_name(a.scalar_type()).c_str(), dt_a == TPT_FLOAT64);
  const ScalarType ct = compute_type(dt_h);
  Tensor w = param_vector(weight, D, ct, h, op, "weight");
  std::optional<Tensor> th;
  if (theta) th = rotation_theta(op, theta, h, D, n_phases, ct);

  h = torch::stable::contiguous(h);
  a = torch::stable::contiguous(a);
  std::vector<int64_t> rstd_shape(h.sizes().begin(), h.sizes().end());
  rstd_shape.back() = n_phases;
  Tensor h_new = torch::stable::empty_like(h);
  Tensor normed = torch::stable::empty_like(h);
  Tensor rstd = torch::stable::new_empty(h, rstd_shape, ct);
  const int64_t M = D ? h.numel() / D : 0;
#ifdef TPT_WITH_CUDA
  if (h.is_cuda()) {
    const CudaLaunch launch(h);
    Tensor table = torch::stable::new_empty(h, {th ? D : 0}, ct);
    check_status(by_precision(dt_h, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_add_rotate_norm_forward<real>(
                       h_new.mutable_data_ptr(), normed.mutable_data_ptr(), rstd.mutable_data_ptr<real>(),
                       table.mutable_data_ptr<real>(), h.const_data_ptr(), dt_h, a.const_data_ptr(), dt_a,
                       th ? th->const_data_ptr<real>() : nullptr, w.const_data_ptr<real>(), M, D, n_phases, eps,
                       launch.stream);
                 }),
                 op);
  } else
#endif
  parallel_rows(op, M, row_grain(D), [&](int64_t begin, int64_t end) {
    return by_precision(dt_h, [&](auto tag) {
      using real = decltype(tag);
      return kernels::add_rotate_norm_forward<real>(h_new.mutable_data_ptr(), normed.mutable_data_ptr(),
                                                    rstd.mutable_data_ptr<real>(), h.const_data_ptr(), dt_h,
                                                    a.const_data_ptr(), dt_a,
                                                    th ? th->const_data_ptr<real>() : nullptr,
                                                    w.const_data_ptr<real>(), begin, end, D, n_phases, eps);
    });
  });
  return {h_new, normed, rstd};
}

// (dsum, dtheta or undefined, dweight)
std::tuple<Tensor, std::optional<Tensor>, Tensor> block_backward(const char* op, Tensor dh_new, Tensor dnormed,
                                                                 Tensor h_new, const std::optional<Tensor>& theta,
                                                                 Tensor weight, Tensor rstd, int64_t n_phases) {
  const int64_t D = check_block_inputs(op, h_new, dh_new, n_phases);
  check_block_inputs(op, h_new, dnormed, n_phases);
  const tpt_dtype dt = storage_dtype(h_new, op, "h_new");
  const ScalarType ct = compute_type(dt);
  Tensor w = param_vector(weight, D, ct, h_new, op, "weight");
  std::optional<Tensor> th;
  if (theta) th = rotation_theta(op, theta, h_new, D, n_phases, ct);
  const int64_t M = D ? h_new.numel() / D : 0, P = D / n_phases;
  TPT_RULE(op, tpt_check_numel, "rstd", rstd.numel(), M * n_phases);

  h_new = torch::stable::contiguous(h_new);
  dh_new = torch::stable::contiguous(torch::stable::to(dh_new, h_new.scalar_type()));
  dnormed = torch::stable::contiguous(torch::stable::to(dnormed, h_new.scalar_type()));
  rstd = torch::stable::contiguous(torch::stable::to(rstd, ct));
  Tensor dsum = torch::stable::empty_like(h_new);
  const int64_t n_blocks = tpt_num_row_blocks(M), rows = std::max<int64_t>(n_blocks, 1);
  Tensor dw_partials = torch::stable::new_zeros(h_new, {rows, D}, ct);
  Tensor dth_partials = torch::stable::new_zeros(h_new, {rows, theta ? P / 2 : 0}, ct);
#ifdef TPT_WITH_CUDA
  if (h_new.is_cuda()) {
    const CudaLaunch launch(h_new);
    Tensor table = torch::stable::new_empty(h_new, {th ? D : 0}, ct);
    Tensor coef = torch::stable::new_empty(h_new, {M * n_phases}, ct);
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_add_rotate_norm_backward<real>(
                       dsum.mutable_data_ptr(), dth_partials.mutable_data_ptr<real>(),
                       dw_partials.mutable_data_ptr<real>(), table.mutable_data_ptr<real>(),
                       coef.mutable_data_ptr<real>(), dh_new.const_data_ptr(), dnormed.const_data_ptr(),
                       h_new.const_data_ptr(), th ? th->const_data_ptr<real>() : nullptr, w.const_data_ptr<real>(),
                       rstd.const_data_ptr<real>(), dt, M, D, n_phases, launch.stream);
                 }),
                 op);
  } else
#endif
  parallel_rows(op, n_blocks, 1, [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::add_rotate_norm_backward<real>(dsum.mutable_data_ptr(), dth_partials.mutable_data_ptr<real>(),
                                                     dw_partials.mutable_data_ptr<real>(), dh_new.const_data_ptr(),
                                                     dnormed.const_data_ptr(), h_new.const_data_ptr(),
                                                     th ? th->const_data_ptr<real>() : nullptr,
                                                     w.const_data_ptr<real>(), rstd.const_data_ptr<real>(), dt, begin,
                                                     end, M, D, n_phases);
    });
  });
  std::optional<Tensor> dtheta;
  if (theta) dtheta = sum_partials(dth_partials, theta->scalar_type());
  return {dsum, dtheta, sum_partials(dw_partials, weight.scalar_type())};
}

constexpr const char* kRotate = "add_rotate_norm";
constexpr const char* kNorm = "add_norm";

std::tuple<Tensor, Tensor, Tensor> add_rotate_norm(Tensor h, Tensor a, Tensor theta, Tensor weight, int64_t n_phases,
                                                   double eps) {
  return block_forward(kRotate, h, a, theta, weight, n_phases, eps);
}

std::tuple<Tensor, Tensor, Tensor> add_norm(Tensor h, Tensor a, Tensor weight, int64_t n_phases, double eps) {
  return block_forward(kNorm, h, a, std::nullopt, weight, n_phases, eps);
}

std::tuple<Tensor, Tensor, Tensor> add_rotate_norm_backward(Tensor dh_new, Tensor dnormed, Tensor h_new, Tensor theta,
                                                            Tensor weight, Tensor rstd, int64_t n_phases) {
  auto [dsum, dtheta, dweight] = block_backward("add_rotate_norm_backward", dh_new, dnormed, h_new, theta, weight,
                                                rstd, n_phases);
  return {dsum, *dtheta, dweight};
}

std::tuple<Tensor, Tensor> add_norm_backward(Tensor dh_new, Tensor dnormed, Tensor h_new, Tensor weight, Tensor rstd,
                                             int64_t n_phases) {
  auto [dsum, dtheta, dweight] = block_backward("add_norm_backward", dh_new, dnormed, h_new, std::nullopt, weight,
                                                rstd, n_phases);
  return {dsum, dweight};
}

}  // namespace
}  // namespace tpt

STABLE_TORCH_LIBRARY_FRAGMENT(tpt, m) {
  m.def("add_rotate_norm(Tensor h, Tensor a, Tensor theta, Tensor weight, int n_phases, float eps) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("add_rotate_norm_backward(Tensor dh_new, Tensor dnormed, Tensor h_new, Tensor theta, Tensor weight, "
        "Tensor rstd, int n_phases) -> (Tensor, Tensor, Tensor)");
  m.def("add_norm(Tensor h, Tensor a, Tensor weight, int n_phases, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("add_norm_backward(Tensor dh_new, Tensor dnormed, Tensor h_new, Tensor weight, Tensor rstd, int n_phases) "
        "-> (Tensor, Tensor)");
}

namespace {
void register_block(torch::stable::detail::StableLibrary& m) {
  m.impl("add_rotate_norm", TORCH_BOX(&tpt::add_rotate_norm));
  m.impl("add_rotate_norm_backward", TORCH_BOX(&tpt::add_rotate_norm_backward));
  m.impl("add_norm", TORCH_BOX(&tpt::add_norm));
  m.impl("add_norm_backward", TORCH_BOX(&tpt::add_norm_backward));
}
}  // namespace

TPT_REGISTER_IMPLS(register_block)
