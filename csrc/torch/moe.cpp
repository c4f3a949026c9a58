// Registration of the token-choice MoE ops (kernels: csrc/cpu/moe.c).
#include "glue.h"
#include "../cpu/moe.h"

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace tpt {
namespace {

namespace kernels {
TPT_KERNEL_PAIR(moe_route_forward)
TPT_KERNEL_PAIR(moe_route_losses)
TPT_KERNEL_PAIR(moe_route_backward)
TPT_KERNEL_PAIR(moe_permute_backward)
TPT_KERNEL_PAIR(moe_unpermute_forward)
TPT_KERNEL_PAIR(moe_unpermute_backward)
#ifdef TPT_WITH_CUDA
TPT_KERNEL_PAIR(tpt_cuda_moe_route_forward)
TPT_KERNEL_PAIR(tpt_cuda_moe_route_losses)
TPT_KERNEL_PAIR(tpt_cuda_moe_route_backward)
TPT_KERNEL_PAIR(tpt_cuda_moe_permute_backward)
TPT_KERNEL_PAIR(tpt_cuda_moe_unpermute_forward)
TPT_KERNEL_PAIR(tpt_cuda_moe_unpermute_backward)
#endif
}  // namespace kernels

constexpr const char* kRoute = "moe_route";
constexpr const char* kRouteBackward = "moe_route_backward";
constexpr const char* kPermute = "moe_permute";
constexpr const char* kPermuteBackward = "moe_permute_backward";
constexpr const char* kUnpermute = "moe_unpermute";
constexpr const char* kUnpermuteBackward = "moe_unpermute_backward";

// An int64 index tensor (slots, slot_token, experts, counts) on x's device, made contiguous.
Tensor index_tensor(const Tensor& t, const Tensor& x, const char* op, const char* arg) {
  const ScalarType st = t.scalar_type();
  TPT_RULE(op, tpt_check_dtype, arg, st == ScalarType::Long, dtype_name(st).c_str(), "int64");
  check_same_device(t, x, op, arg);
  return torch::stable::contiguous(t);
}

// slots [M, k] (int64) and, unless null, slot_token [M*k] as one routing (tpt_check_moe_layout; CUDA
// tensors are checked through host copies).
void check_layout(const Tensor& slots, const Tensor* slot_token, const char* op) {
  const int64_t M = slots.size(0), k = slots.size(1);
  if (slot_token) TPT_RULE(op, tpt_check_vector, "slot_token", shape_of(*slot_token), M * k);
  const Tensor host_slots = on_host(slots);
  const std::optional<Tensor> host_tokens = slot_token ? std::optional<Tensor>(on_host(*slot_token)) : std::nullopt;
  TPT_RULE(op, tpt_check_moe_layout, host_slots.const_data_ptr<int64_t>(),
           host_tokens ? host_tokens->const_data_ptr<int64_t>() : nullptr, M, k);
}

// A fresh row output of tens of MB ([M*k, D] above all) is mapped page by page
// on its first write, and those 4 KiB page faults took more time than the copy
// itself. Asking for transparent huge pages on its 2 MiB-aligned interior
// takes 512 times fewer faults; it changes no value, and pages already in use
// (a reused allocation) stay as they are. Below 2 MiB there is no huge page to ask for.
Tensor advise_huge_pages(Tensor t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (!t.is_cpu()) return t;  // device memory: not the host's pages
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(t.numel()) * t.element_size();
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1), last = end & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice only: may fail
#endif
  return t;
}

int score_code(const std::string& score, const char* op) {
  TPT_RULE(op, tpt_check_moe_score, score.c_str());
  return score == "sigmoid" ? TPT_MOE_SIGMOID : TPT_MOE_SOFTMAX;
}

// logits [M, E] -> (gates [M, k], experts [M, k], slots [M, k], slot_token [M*k], counts [E], aux_loss, z_loss).
// Gates are in the compute precision, the losses in logits' dtype.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> moe_route(
    Tensor logits, int64_t k, std::optional<double> capacity_factor, bool normalize, std::string score,
    std::optional<Tensor> bias) {
  const tpt_dtype dt = storage_dtype(logits, kRoute, "logits");
  check_device(logits, kRoute, "logits");
  TPT_RULE(kRoute, tpt_check_moe_logits, shape_of(logits));
  const int64_t M = logits.size(0), E = logits.size(1);
  TPT_RULE(kRoute, tpt_check_moe_k, k, E);
  if (capacity_factor) TPT_RULE(kRoute, tpt_check_moe_capacity_factor, *capacity_factor);
  const int code = score_code(score, kRoute);
  const ScalarType ct = compute_type(dt);
  std::optional<Tensor> b;
  if (bias) b = param_vector(*bias, E, ct, logits, kRoute, "bias");

  logits = torch::stable::contiguous(logits);
  Tensor gates = torch::stable::new_empty(logits, {M, k}, ct);
  Tensor experts = torch::stable::new_empty(logits, {M, k}, ScalarType::Long);
  Tensor slots = torch::stable::new_empty(logits, {M, k}, ScalarType::Long);
  Tensor slot_token = torch::stable::new_empty(logits, {M * k}, ScalarType::Long);
  Tensor counts = torch::stable::new_empty(logits, {E}, ScalarType::Long);
  const int64_t n_blocks = tpt_num_row_blocks(M);
  // zeros: with M = 0 the one partial row is the (empty) sum
  Tensor prob_partials = torch::stable::new_zeros(logits, {std::max<int64_t>(n_blocks, 1), E}, ct);
  Tensor lse_sq_partials = torch::stable::new_zeros(logits, {std::max<int64_t>(n_blocks, 1), 1}, ct);
#ifdef TPT_WITH_CUDA
  if (logits.is_cuda()) {
    const CudaLaunch launch(logits);
    Tensor workspace = torch::stable::new_empty(logits, {tpt_cuda_moe_route_workspace(M, E, k)}, ct);
    Tensor cursor = torch::stable::new_empty(logits, {E}, ScalarType::Long);
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_moe_route_forward<real>(
                       gates.mutable_data_ptr<real>(), experts.mutable_data_ptr<int64_t>(),
                       prob_partials.mutable_data_ptr<real>(), lse_sq_partials.mutable_data_ptr<real>(),
                       workspace.mutable_data_ptr<real>(), logits.const_data_ptr(),
                       b ? b->const_data_ptr<real>() : nullptr, dt, M, E, k, normalize, code, launch.stream);
                 }),
                 kRoute);
    const int64_t capacity = capacity_factor ? moe_capacity(*capacity_factor, M, E, k) : -1;
    check_status(tpt_cuda_moe_route_assign(slots.mutable_data_ptr<int64_t>(), slot_token.mutable_data_ptr<int64_t>(),
                                           counts.mutable_data_ptr<int64_t>(), cursor.mutable_data_ptr<int64_t>(),
                                           experts.const_data_ptr<int64_t>(), M, E, k, capacity, launch.stream),
                 kRoute);
    const Tensor prob_sums = sum_partials(prob_partials, ct), lse_sq_sum = sum_partials(lse_sq_partials, ct);
    Tensor aux_loss = torch::stable::new_empty(logits, std::vector<int64_t>{}, ct);
    Tensor z_loss = torch::stable::new_empty(logits, std::vector<int64_t>{}, ct);
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_moe_route_losses<real>(
                       gates.mutable_data_ptr<real>(), aux_loss.mutable_data_ptr<real>(),
                       z_loss.mutable_data_ptr<real>(), slots.const_data_ptr<int64_t>(),
                       counts.const_data_ptr<int64_t>(), prob_sums.const_data_ptr<real>(),
                       lse_sq_sum.const_data_ptr<real>(), M, E, k, launch.stream);
                 }),
                 kRoute);
    const ScalarType lt = logits.scalar_type();
    return {gates, experts, slots, slot_token, counts, torch::stable::to(aux_loss, lt), torch::stable::to(z_loss, lt)};
  }
#endif
  parallel_rows(kRoute, n_blocks, 1, [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::moe_route_forward<real>(gates.mutable_data_ptr<real>(), experts.mutable_data_ptr<int64_t>(),
                                              prob_partials.mutable_data_ptr<real>(),
                                              lse_sq_partials.mutable_data_ptr<real>(), logits.const_data_ptr(),
                                              b ? b->const_data_ptr<real>() : nullptr, dt, begin, end, M, E, k,
                                              normalize, code);
    });
  });
  const int64_t capacity = capacity_factor ? moe_capacity(*capacity_factor, M, E, k) : -1;
  check_status(moe_route_assign(slots.mutable_data_ptr<int64_t>(), slot_token.mutable_data_ptr<int64_t>(),
                                counts.mutable_data_ptr<int64_t>(), experts.const_data_ptr<int64_t>(), M, E, k,
                                capacity),
               kRoute);
  const Tensor prob_sums = sum_partials(prob_partials, ct), lse_sq_sum = sum_partials(lse_sq_partials, ct);
  Tensor aux_loss = torch::stable::new_empty(logits, std::vector<int64_t>{}, ct);
  Tensor z_loss = torch::stable::new_empty(logits, std::vector<int64_t>{}, ct);
  by_precision(dt, [&](auto tag) {
    using real = decltype(tag);
    kernels::moe_route_losses<real>(gates.mutable_data_ptr<real>(), aux_loss.mutable_data_ptr<real>(),
                                    z_loss.mutable_data_ptr<real>(), slots.const_data_ptr<int64_t>(),
                                    counts.const_data_ptr<int64_t>(), prob_sums.const_data_ptr<real>(),
                                    lse_sq_sum.const_data_ptr<real>()[0], M, E, k);
  });
  const ScalarType lt = logits.scalar_type();
  return {gates, experts, slots, slot_token, counts, torch::stable::to(aux_loss, lt), torch::stable::to(z_loss, lt)};
}

// A scalar output gradient (of aux_loss or z_loss) as a value of the compute precision.
template <typename real>
real scalar_grad(const Tensor& g, ScalarType ct, const char* arg) {
  TPT_RULE(kRouteBackward, tpt_check_numel, arg, g.numel(), 1);
  return torch::stable::contiguous(torch::stable::to(g, ct)).const_data_ptr<real>()[0];
}

// dlogits (logits' dtype) from dgates [M, k] and the losses' gradients; s is recomputed from logits.
Tensor moe_route_backward(Tensor dgates, Tensor daux, Tensor dz, Tensor logits, Tensor experts, Tensor gates,
                          Tensor slots, Tensor counts, bool normalize, std::string score) {
  const char* op = kRouteBackward;
  const tpt_dtype dt = storage_dtype(logits, op, "logits");
  check_device(logits, op, "logits");
  TPT_RULE(op, tpt_check_moe_logits, shape_of(logits));
  const int code = score_code(score, op);
  const int64_t M = logits.size(0), E = logits.size(1);
  experts = index_tensor(experts, logits, op, "experts");
  slots = index_tensor(slots, logits, op, "slots");
  counts = index_tensor(counts, logits, op, "counts");
  TPT_RULE(op, tpt_check_moe_matrix, "experts", shape_of(experts), "M", M, -1);
  const int64_t k = experts.size(1);
  TPT_RULE(op, tpt_check_moe_k, k, E);
  TPT_RULE(op, tpt_check_same_shape, "slots", shape_of(slots), "experts", shape_of(experts));
  TPT_RULE(op, tpt_check_same_shape, "gates", shape_of(gates), "experts", shape_of(experts));
  TPT_RULE(op, tpt_check_same_shape, "dgates", shape_of(dgates), "experts", shape_of(experts));
  TPT_RULE(op, tpt_check_vector, "counts", shape_of(counts), E);
  TPT_RULE(op, tpt_check_moe_experts, on_host(experts).const_data_ptr<int64_t>(), M * k, E);
  storage_dtype(gates, op, "gates");
  storage_dtype(dgates, op, "dgates");
  const ScalarType ct = compute_type(dt);
  logits = torch::stable::contiguous(logits);
  gates = torch::stable::contiguous(torch::stable::to(gates, ct));
  dgates = torch::stable::contiguous(torch::stable::to(dgates, ct));
  Tensor dlogits = torch::stable::empty_like(logits);
#ifdef TPT_WITH_CUDA
  if (logits.is_cuda()) {
    const CudaLaunch launch(logits);
    TPT_RULE(op, tpt_check_numel, "daux", daux.numel(), 1);
    TPT_RULE(op, tpt_check_numel, "dz", dz.numel(), 1);
    const Tensor daux_c = torch::stable::contiguous(torch::stable::to(daux, ct));
    const Tensor dz_c = torch::stable::contiguous(torch::stable::to(dz, ct));
    Tensor workspace = torch::stable::new_empty(logits, {tpt_cuda_moe_route_backward_workspace(M, E)}, ct);
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_moe_route_backward<real>(
                       dlogits.mutable_data_ptr(), workspace.mutable_data_ptr<real>(), dgates.const_data_ptr<real>(),
                       daux_c.const_data_ptr<real>(), dz_c.const_data_ptr<real>(), logits.const_data_ptr(),
                       experts.const_data_ptr<int64_t>(), gates.const_data_ptr<real>(),
                       slots.const_data_ptr<int64_t>(), counts.const_data_ptr<int64_t>(), dt, M, E, k, normalize,
                       code, launch.stream);
                 }),
                 op);
    return dlogits;
  }
#endif
  by_precision(dt, [&](auto tag) {
    using real = decltype(tag);
    const real daux_value = scalar_grad<real>(daux, ct, "daux"), dz_value = scalar_grad<real>(dz, ct, "dz");
    parallel_rows(op, M, row_grain(4 * E), [&](int64_t begin, int64_t end) {
      return kernels::moe_route_backward<real>(dlogits.mutable_data_ptr(), dgates.const_data_ptr<real>(), daux_value,
                                               dz_value, logits.const_data_ptr(), experts.const_data_ptr<int64_t>(),
                                               gates.const_data_ptr<real>(), slots.const_data_ptr<int64_t>(),
                                               counts.const_data_ptr<int64_t>(), dt, begin, end, M, E, k, normalize,
                                               code);
    });
  });
  return dlogits;
}

// x [M, D] -> buf [M*k, D]: buf[a] = x[slot_token[a]], zero rows where slot_token < 0.
Tensor moe_permute(Tensor x, Tensor slots, Tensor slot_token) {
  const tpt_dtype dt = storage_dtype(x, kPermute, "x");
  check_device(x, kPermute, "x");
  slots = index_tensor(slots, x, kPermute, "slots");
  slot_token = index_tensor(slot_token, x, kPermute, "slot_token");
  TPT_RULE(kPermute, tpt_check_moe_slots, shape_of(slots));
  const int64_t M = slots.size(0), k = slots.size(1);
  TPT_RULE(kPermute, tpt_check_moe_matrix, "x", shape_of(x), "M", M, -1);
  check_layout(slots, &slot_token, kPermute);
  x = torch::stable::contiguous(x);
  const int64_t D = x.size(1);
  Tensor buf = advise_huge_pages(torch::stable::new_empty(x, {M * k, D}));
  const int64_t* tokens = slot_token.const_data_ptr<int64_t>();
#ifdef TPT_WITH_CUDA
  if (x.is_cuda()) {
    const CudaLaunch launch(x);
    check_status(tpt_cuda_moe_permute_forward(buf.mutable_data_ptr(), x.const_data_ptr(), tokens, dt, M * k, D,
                                              launch.stream),
                 kPermute);
  } else
#endif
  parallel_rows(kPermute, M * k, row_grain(D), [&](int64_t begin, int64_t end) {
    return moe_permute_forward(buf.mutable_data_ptr(), x.const_data_ptr(), tokens, dt, begin, end, D);
  });
  return buf;
}

// dx [M, D] (dbuf's dtype): dx[t] = sum over the kept slots of t of dbuf[slot].
Tensor moe_permute_backward(Tensor dbuf, Tensor slots) {
  const char* op = kPermuteBackward;
  const tpt_dtype dt = storage_dtype(dbuf, op, "dbuf");
  check_device(dbuf, op, "dbuf");
  slots = index_tensor(slots, dbuf, op, "slots");
  TPT_RULE(op, tpt_check_moe_slots, shape_of(slots));
  const int64_t M = slots.size(0), k = slots.size(1);
  TPT_RULE(op, tpt_check_moe_matrix, "dbuf", shape_of(dbuf), "M*k", M * k, -1);
  check_layout(slots, nullptr, op);
  dbuf = torch::stable::contiguous(dbuf);
  const int64_t D = dbuf.size(1);
  Tensor dx = advise_huge_pages(torch::stable::new_empty(dbuf, {M, D}));
#ifdef TPT_WITH_CUDA
  if (dbuf.is_cuda()) {
    const CudaLaunch launch(dbuf);
    check_status(by_precision(dt, [&](auto tag) {
                   return kernels::tpt_cuda_moe_permute_backward<decltype(tag)>(
                       dx.mutable_data_ptr(), dbuf.const_data_ptr(), slots.const_data_ptr<int64_t>(), dt, M, k, D,
                       launch.stream);
                 }),
                 op);
  } else
#endif
  parallel_rows(op, M, row_grain(k * D), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      return kernels::moe_permute_backward<decltype(tag)>(dx.mutable_data_ptr(), dbuf.const_data_ptr(),
                                                          slots.const_data_ptr<int64_t>(), dt, begin, end, k, D);
    });
  });
  return dx;
}

// Checks out [M*k, D] against slots [M, k], gates [M, k] and slot_token; returns gates in the compute precision.
Tensor check_unpermute(Tensor& out, const Tensor& gates, Tensor& slots, Tensor& slot_token, const char* op,
                       tpt_dtype* dt) {
  *dt = storage_dtype(out, op, "out");
  check_device(out, op, "out");
  storage_dtype(gates, op, "gates");
  check_same_device(gates, out, op, "gates");
  slots = index_tensor(slots, out, op, "slots");
  slot_token = index_tensor(slot_token, out, op, "slot_token");
  TPT_RULE(op, tpt_check_moe_slots, shape_of(slots));
  const int64_t M = slots.size(0), k = slots.size(1);
  TPT_RULE(op, tpt_check_moe_matrix, "out", shape_of(out), "M*k", M * k, -1);
  TPT_RULE(op, tpt_check_same_shape, "gates", shape_of(gates), "slots", shape_of(slots));
  check_layout(slots, &slot_token, op);
  out = torch::stable::contiguous(out);
  return torch::stable::contiguous(torch::stable::to(gates, compute_type(*dt)));
}

// out [M*k, D] -> y [M, D] (out's dtype): y[t] = sum over the kept slots of t of gates[t, j] * out[slot].
Tensor moe_unpermute(Tensor out, Tensor gates, Tensor slots, Tensor slot_token) {
  tpt_dtype dt;
  const Tensor g = check_unpermute(out, gates, slots, slot_token, kUnpermute, &dt);
  const int64_t M = slots.size(0), k = slots.size(1), D = out.size(1);
  Tensor y = advise_huge_pages(torch::stable::new_empty(out, {M, D}));
#ifdef TPT_WITH_CUDA
  if (out.is_cuda()) {
    const CudaLaunch launch(out);
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_moe_unpermute_forward<real>(
                       y.mutable_data_ptr(), out.const_data_ptr(), g.const_data_ptr<real>(),
                       slots.const_data_ptr<int64_t>(), dt, M, k, D, launch.stream);
                 }),
                 kUnpermute);
  } else
#endif
  parallel_rows(kUnpermute, M, row_grain(k * D), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::moe_unpermute_forward<real>(y.mutable_data_ptr(), out.const_data_ptr(), g.const_data_ptr<real>(),
                                                  slots.const_data_ptr<int64_t>(), dt, begin, end, k, D);
    });
  });
  return y;
}

// (dout [M*k, D] in out's dtype, dgates [M, k] in gates' dtype) from dy [M, D].
std::tuple<Tensor, Tensor> moe_unpermute_backward(Tensor dy, Tensor out, Tensor gates, Tensor slots,
                                                  Tensor slot_token) {
  const char* op = kUnpermuteBackward;
  tpt_dtype dt;
  const Tensor g = check_unpermute(out, gates, slots, slot_token, op, &dt);
  const int64_t M = slots.size(0), k = slots.size(1), D = out.size(1);
  storage_dtype(dy, op, "dy");
  check_same_device(dy, out, op, "dy");
  TPT_RULE(op, tpt_check_moe_matrix, "dy", shape_of(dy), "M", M, D);
  dy = torch::stable::contiguous(torch::stable::to(dy, out.scalar_type()));
  Tensor dout = advise_huge_pages(torch::stable::empty_like(out));
  Tensor dgates = torch::stable::new_zeros(g, {M, k});  // dropped assignments keep their 0
#ifdef TPT_WITH_CUDA
  if (out.is_cuda()) {
    const CudaLaunch launch(out);
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_moe_unpermute_backward<real>(
                       dout.mutable_data_ptr(), dgates.mutable_data_ptr<real>(), dy.const_data_ptr(),
                       out.const_data_ptr(), g.const_data_ptr<real>(), slots.const_data_ptr<int64_t>(),
                       slot_token.const_data_ptr<int64_t>(), dt, M * k, k, D, launch.stream);
                 }),
                 op);
  } else
#endif
  parallel_rows(op, M * k, row_grain(2 * D), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::moe_unpermute_backward<real>(dout.mutable_data_ptr(), dgates.mutable_data_ptr<real>(),
                                                   dy.const_data_ptr(), out.const_data_ptr(), g.const_data_ptr<real>(),
                                                   slots.const_data_ptr<int64_t>(),
                                                   slot_token.const_data_ptr<int64_t>(), dt, begin, end, k, D);
    });
  });
  return {dout, torch::stable::to(dgates, gates.scalar_type())};
}

}  // namespace
}  // namespace tpt

STABLE_TORCH_LIBRARY_FRAGMENT(tpt, m) {
  m.def("moe_route(Tensor logits, int k, float? capacity_factor, bool normalize, str score, Tensor? bias) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("moe_route_backward(Tensor dgates, Tensor daux, Tensor dz, Tensor logits, Tensor experts, Tensor gates, "
        "Tensor slots, Tensor counts, bool normalize, str score) -> Tensor");
  m.def("moe_permute(Tensor x, Tensor slots, Tensor slot_token) -> Tensor");
  m.def("moe_permute_backward(Tensor dbuf, Tensor slots) -> Tensor");
  m.def("moe_unpermute(Tensor out, Tensor gates, Tensor slots, Tensor slot_token) -> Tensor");
  m.def("moe_unpermute_backward(Tensor dy, Tensor out, Tensor gates, Tensor slots, Tensor slot_token) -> "
        "(Tensor, Tensor)");
}

namespace {
void register_moe(torch::stable::detail::StableLibrary& m) {
  m.impl("moe_route", TORCH_BOX(&tpt::moe_route));
  m.impl("moe_route_backward", TORCH_BOX(&tpt::moe_route_backward));
  m.impl("moe_permute", TORCH_BOX(&tpt::moe_permute));
  m.impl("moe_permute_backward", TORCH_BOX(&tpt::moe_permute_backward));
  m.impl("moe_unpermute", TORCH_BOX(&tpt::moe_unpermute));
  m.impl("moe_unpermute_backward", TORCH_BOX(&tpt::moe_unpermute_backward));
}
}  // namespace

TPT_REGISTER_IMPLS(register_moe)
