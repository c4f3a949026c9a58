// Registration of the Hedgehog feature map and linear attention ops (kernels: csrc/cpu/hedgehog.c).
#include "glue.h"
#include "../cpu/hedgehog.h"

#include <tuple>

namespace tpt {
namespace {

namespace kernels {
TPT_KERNEL_PAIR(hedgehog_feature_map_forward)
TPT_KERNEL_PAIR(hedgehog_feature_map_backward)
TPT_KERNEL_PAIR(linear_attention_forward)
TPT_KERNEL_PAIR(linear_attention_backward)
TPT_KERNEL_PAIR(linear_attention_step)
#ifdef TPT_WITH_CUDA
TPT_KERNEL_PAIR(tpt_cuda_hedgehog_feature_map_forward)
TPT_KERNEL_PAIR(tpt_cuda_hedgehog_feature_map_backward)
TPT_KERNEL_PAIR(tpt_cuda_linear_attention_forward)
TPT_KERNEL_PAIR(tpt_cuda_linear_attention_backward)
TPT_KERNEL_PAIR(tpt_cuda_linear_attention_step)
#endif
}  // namespace kernels

constexpr const char* kFeatureMap = "hedgehog_feature_map";
constexpr const char* kFeatureMapBackward = "hedgehog_feature_map_backward";
constexpr const char* kAttention = "linear_attention";
constexpr const char* kPrefill = "linear_attention_prefill";
constexpr const char* kAttentionBackward = "linear_attention_backward";
constexpr const char* kStep = "linear_attention_step";

// u [..., F] -> phi [..., 2F] in u's dtype.
Tensor hedgehog_feature_map(Tensor u) {
  const tpt_dtype dt = storage_dtype(u, kFeatureMap, "u");
  check_device(u, kFeatureMap, "u");
  TPT_RULE(kFeatureMap, tpt_check_hedgehog_u, shape_of(u));
  u = torch::stable::contiguous(u);
  const int64_t F = u.size(-1), rows = u.numel() / F;
  std::vector<int64_t> sizes(u.sizes().begin(), u.sizes().end());
  sizes.back() = 2 * F;
  Tensor phi = torch::stable::new_empty(u, sizes);
#ifdef TPT_WITH_CUDA
  if (u.is_cuda()) {
    const CudaLaunch launch(u);
    Tensor workspace = torch::stable::new_empty(u, {tpt_cuda_feature_map_workspace(rows, F, 0)}, compute_type(dt));
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_hedgehog_feature_map_forward<real>(
                       phi.mutable_data_ptr(), workspace.mutable_data_ptr<real>(), u.const_data_ptr(), dt, rows, F,
                       launch.stream);
                 }),
                 kFeatureMap);
  } else
#endif
  parallel_rows(kFeatureMap, rows, row_grain(3 * F), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      return kernels::hedgehog_feature_map_forward<decltype(tag)>(phi.mutable_data_ptr(), u.const_data_ptr(), dt,
                                                                  begin, end, F);
    });
  });
  return phi;
}

// du [..., F] (u's dtype) from dphi [..., 2F]; the softmaxes are recomputed from u.
Tensor hedgehog_feature_map_backward(Tensor dphi, Tensor u) {
  const char* op = kFeatureMapBackward;
  const tpt_dtype dt = storage_dtype(u, op, "u");
  check_device(u, op, "u");
  TPT_RULE(op, tpt_check_hedgehog_u, shape_of(u));
  storage_dtype(dphi, op, "dphi");
  check_same_device(dphi, u, op, "dphi");
  std::vector<int64_t> sizes(u.sizes().begin(), u.sizes().end());
  const int64_t F = sizes.back();
  sizes.back() = 2 * F;
  TPT_RULE(op, tpt_check_shape, "dphi", shape_of(dphi), "[..., 2F]", sizes.data(), static_cast<int64_t>(sizes.size()));
  u = torch::stable::contiguous(u);
  dphi = torch::stable::contiguous(torch::stable::to(dphi, u.scalar_type()));
  Tensor du = torch::stable::empty_like(u);
#ifdef TPT_WITH_CUDA
  if (u.is_cuda()) {
    const CudaLaunch launch(u);
    const int64_t rows = u.numel() / F;
    Tensor workspace = torch::stable::new_empty(u, {tpt_cuda_feature_map_workspace(rows, F, 1)}, compute_type(dt));
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_hedgehog_feature_map_backward<real>(
                       du.mutable_data_ptr(), workspace.mutable_data_ptr<real>(), dphi.const_data_ptr(),
                       u.const_data_ptr(), dt, rows, F, launch.stream);
                 }),
                 op);
  } else
#endif
  parallel_rows(op, u.numel() / F, row_grain(6 * F), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      return kernels::hedgehog_feature_map_backward<decltype(tag)>(du.mutable_data_ptr(), dphi.const_data_ptr(),
                                                                   u.const_data_ptr(), dt, begin, end, F);
    });
  });
  return du;
}

// The shared checks of the attention ops; phi_k and v are made contiguous in phi_q's dtype.
struct Dims {
  tpt_dtype dt;
  int64_t B, H, Hkv, T, K, Dv;
};

Dims check_attention(Tensor& phi_q, Tensor& phi_k, Tensor& v, double eps, const char* op) {
  Dims d;
  d.dt = storage_dtype(phi_q, op, "phi_q");
  check_device(phi_q, op, "phi_q");
  storage_dtype(phi_k, op, "phi_k");
  storage_dtype(v, op, "v");
  check_same_device(phi_k, phi_q, op, "phi_k");
  check_same_device(v, phi_q, op, "v");
  TPT_RULE(op, tpt_check_linear_attention, shape_of(phi_q), shape_of(phi_k), shape_of(v));
  TPT_RULE(op, tpt_check_eps, eps);
  d.B = phi_q.size(0), d.H = phi_q.size(1), d.T = phi_q.size(2), d.K = phi_q.size(3);
  d.Hkv = phi_k.size(1), d.Dv = v.size(3);
  const ScalarType st = phi_q.scalar_type();
  phi_q = torch::stable::contiguous(phi_q);
  phi_k = torch::stable::contiguous(torch::stable::to(phi_k, st));
  v = torch::stable::contiguous(torch::stable::to(v, st));
  return d;
}

// Forward tasks (b, h): about 64 KiB of token rows a task is far below one head, so one head a task.
std::tuple<Tensor, Tensor, Tensor> attention_forward(Tensor phi_q, Tensor phi_k, Tensor v, bool causal, double eps,
                                                     bool with_state, const char* op) {
  const Dims d = check_attention(phi_q, phi_k, v, eps, op);
  const ScalarType ct = compute_type(d.dt);
  Tensor y = torch::stable::new_empty(phi_q, {d.B, d.H, d.T, d.Dv});
  advise_huge_pages(y);
  Tensor S = torch::stable::new_zeros(phi_q, {with_state ? d.B : 0, d.Hkv, d.K, d.Dv}, ct);
  Tensor z = torch::stable::new_zeros(phi_q, {with_state ? d.B : 0, d.Hkv, d.K}, ct);
#ifdef TPT_WITH_CUDA
  if (phi_q.is_cuda()) {
    const CudaLaunch launch(phi_q);
    Tensor workspace =
        torch::stable::new_empty(phi_q, {tpt_cuda_linear_attention_workspace(d.B * d.H, d.T, d.K, d.Dv, 0)}, ct);
    check_status(by_precision(d.dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_linear_attention_forward<real>(
                       y.mutable_data_ptr(), with_state ? S.mutable_data_ptr<real>() : nullptr,
                       with_state ? z.mutable_data_ptr<real>() : nullptr, workspace.mutable_data_ptr<real>(),
                       phi_q.const_data_ptr(), phi_k.const_data_ptr(), v.const_data_ptr(), d.dt, d.B, d.H, d.Hkv,
                       d.T, d.K, d.Dv, causal, eps, launch.stream);
                 }),
                 op);
  } else
#endif
  parallel_rows(op, d.B * d.H, 1, [&](int64_t begin, int64_t end) {
    return by_precision(d.dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::linear_attention_forward<real>(
          y.mutable_data_ptr(), with_state ? S.mutable_data_ptr<real>() : nullptr,
          with_state ? z.mutable_data_ptr<real>() : nullptr, phi_q.const_data_ptr(), phi_k.const_data_ptr(),
          v.const_data_ptr(), d.dt, begin, end, d.H, d.Hkv, d.T, d.K, d.Dv, causal, eps);
    });
  });
  return {y, S, z};
}

// y [B, H, T, Dv] in phi_q's dtype.
Tensor linear_attention(Tensor phi_q, Tensor phi_k, Tensor v, bool causal, double eps) {
  return std::get<0>(attention_forward(phi_q, phi_k, v, causal, eps, false, kAttention));
}

// (y, S [B, Hkv, K, Dv], z [B, Hkv, K]) of the causal form; S and z in the compute precision.
std::tuple<Tensor, Tensor, Tensor> linear_attention_prefill(Tensor phi_q, Tensor phi_k, Tensor v, double eps) {
  return attention_forward(phi_q, phi_k, v, true, eps, true, kPrefill);
}

// (dq, dk, dv), each in its input's dtype, from dy [B, H, T, Dv]; tasks are key/value heads (b, g).
std::tuple<Tensor, Tensor, Tensor> linear_attention_backward(Tensor dy, Tensor phi_q, Tensor phi_k, Tensor v,
                                                             bool causal, double eps) {
  const char* op = kAttentionBackward;
  const ScalarType k_type = phi_k.scalar_type(), v_type = v.scalar_type();
  const Dims d = check_attention(phi_q, phi_k, v, eps, op);
  storage_dtype(dy, op, "dy");
  check_same_device(dy, phi_q, op, "dy");
  const int64_t dy_sizes[4] = {d.B, d.H, d.T, d.Dv};
  TPT_RULE(op, tpt_check_shape, "dy", shape_of(dy), "[B, H, T, Dv]", dy_sizes, 4);
  dy = torch::stable::contiguous(torch::stable::to(dy, phi_q.scalar_type()));
  Tensor dq = torch::stable::empty_like(phi_q);
  Tensor dk = torch::stable::empty_like(phi_k);
  Tensor dv = torch::stable::empty_like(v);
  for (const Tensor* grad : {&dq, &dk, &dv}) advise_huge_pages(*grad);
#ifdef TPT_WITH_CUDA
  if (phi_q.is_cuda()) {
    const CudaLaunch launch(phi_q);
    Tensor workspace = torch::stable::new_empty(
        phi_q, {tpt_cuda_linear_attention_workspace(d.B * d.Hkv, d.T, d.K, d.Dv, 1)}, compute_type(d.dt));
    check_status(by_precision(d.dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_linear_attention_backward<real>(
                       dq.mutable_data_ptr(), dk.mutable_data_ptr(), dv.mutable_data_ptr(),
                       workspace.mutable_data_ptr<real>(), dy.const_data_ptr(), phi_q.const_data_ptr(),
                       phi_k.const_data_ptr(), v.const_data_ptr(), d.dt, d.B, d.H, d.Hkv, d.T, d.K, d.Dv, causal, eps,
                       launch.stream);
                 }),
                 op);
  } else
#endif
  parallel_rows(op, d.B * d.Hkv, 1, [&](int64_t begin, int64_t end) {
    return by_precision(d.dt, [&](auto tag) {
      return kernels::linear_attention_backward<decltype(tag)>(
          dq.mutable_data_ptr(), dk.mutable_data_ptr(), dv.mutable_data_ptr(), dy.const_data_ptr(),
          phi_q.const_data_ptr(), phi_k.const_data_ptr(), v.const_data_ptr(), d.dt, begin, end, d.H, d.Hkv, d.T,
          d.K, d.Dv, causal, eps);
    });
  });
  return {dq, torch::stable::to(dk, k_type), torch::stable::to(dv, v_type)};
}

// One decoding token: (y [B, H, 1, Dv], S', z') from phi_q [B, H, 1, K], phi_k, v [B, Hkv, 1, .] and the state.
std::tuple<Tensor, Tensor, Tensor> linear_attention_step(Tensor phi_q, Tensor phi_k, Tensor v, Tensor S, Tensor z,
                                                         double eps) {
  const char* op = kStep;
  const Dims d = check_attention(phi_q, phi_k, v, eps, op);
  TPT_RULE(op, tpt_check_one_token, d.T);
  storage_dtype(S, op, "S");
  storage_dtype(z, op, "z");
  check_same_device(S, phi_q, op, "S");
  check_same_device(z, phi_q, op, "z");
  const int64_t S_sizes[4] = {d.B, d.Hkv, d.K, d.Dv};
  TPT_RULE(op, tpt_check_shape, "S", shape_of(S), "[B, Hkv, 2F, Dv]", S_sizes, 4);
  TPT_RULE(op, tpt_check_shape, "z", shape_of(z), "[B, Hkv, 2F]", S_sizes, 3);
  const ScalarType ct = compute_type(d.dt);
  S = torch::stable::contiguous(torch::stable::to(S, ct));
  z = torch::stable::contiguous(torch::stable::to(z, ct));
  Tensor y = torch::stable::new_empty(phi_q, {d.B, d.H, 1, d.Dv});
  Tensor S_new = torch::stable::empty_like(S);
  Tensor z_new = torch::stable::empty_like(z);
#ifdef TPT_WITH_CUDA
  if (phi_q.is_cuda()) {
    const CudaLaunch launch(phi_q);
    check_status(by_precision(d.dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_linear_attention_step<real>(
                       y.mutable_data_ptr(), S_new.mutable_data_ptr<real>(), z_new.mutable_data_ptr<real>(),
                       phi_q.const_data_ptr(), phi_k.const_data_ptr(), v.const_data_ptr(), S.const_data_ptr<real>(),
                       z.const_data_ptr<real>(), d.dt, d.B, d.H, d.Hkv, d.K, d.Dv, eps, launch.stream);
                 }),
                 op);
  } else
#endif
  parallel_rows(op, d.B * d.Hkv, 1, [&](int64_t begin, int64_t end) {
    return by_precision(d.dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::linear_attention_step<real>(y.mutable_data_ptr(), S_new.mutable_data_ptr<real>(),
                                                  z_new.mutable_data_ptr<real>(), phi_q.const_data_ptr(),
                                                  phi_k.const_data_ptr(), v.const_data_ptr(),
                                                  S.const_data_ptr<real>(), z.const_data_ptr<real>(), d.dt, begin,
                                                  end, d.H, d.Hkv, d.K, d.Dv, eps);
    });
  });
  return {y, S_new, z_new};
}

}  // namespace
}  // namespace tpt

STABLE_TORCH_LIBRARY_FRAGMENT(tpt, m) {
  m.def("hedgehog_feature_map(Tensor u) -> Tensor");
  m.def("hedgehog_feature_map_backward(Tensor dphi, Tensor u) -> Tensor");
  m.def("linear_attention(Tensor phi_q, Tensor phi_k, Tensor v, bool causal, float eps) -> Tensor");
  m.def("linear_attention_prefill(Tensor phi_q, Tensor phi_k, Tensor v, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("linear_attention_backward(Tensor dy, Tensor phi_q, Tensor phi_k, Tensor v, bool causal, float eps) -> "
        "(Tensor, Tensor, Tensor)");
  m.def("linear_attention_step(Tensor phi_q, Tensor phi_k, Tensor v, Tensor S, Tensor z, float eps) -> "
        "(Tensor, Tensor, Tensor)");
}

namespace {
void register_hedgehog(torch::stable::detail::StableLibrary& m) {
  m.impl("hedgehog_feature_map", TORCH_BOX(&tpt::hedgehog_feature_map));
  m.impl("hedgehog_feature_map_backward", TORCH_BOX(&tpt::hedgehog_feature_map_backward));
  m.impl("linear_attention", TORCH_BOX(&tpt::linear_attention));
  m.impl("linear_attention_prefill", TORCH_BOX(&tpt::linear_attention_prefill));
  m.impl("linear_attention_backward", TORCH_BOX(&tpt::linear_attention_backward));
  m.impl("linear_attention_step", TORCH_BOX(&tpt::linear_attention_step));
}
}  // namespace

TPT_REGISTER_IMPLS(register_hedgehog)
