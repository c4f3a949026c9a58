// Helpers shared by the registration files: argument checks that raise a
// clear error naming the op and the argument, the dtype mapping from torch to
// the C kernels, and row-parallel launch over torch's thread pool.
//
// Everything here uses the LibTorch stable ABI (torch/csrc/stable), so one
// build of the extension serves every torch >= 2.10.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <algorithm>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cpu/common.h"

namespace tpt {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

template <typename... Args>
[[noreturn]] void fail(const char* op, const Args&... args) {
  std::ostringstream oss;
  oss << "tpt." << op << ": ";
  ((oss << args), ...);
  throw std::runtime_error(oss.str());
}

#define TPT_CHECK(cond, op, ...) \
  do {                           \
    if (!(cond)) ::tpt::fail(op, __VA_ARGS__); \
  } while (0)

inline std::string shape_str(const Tensor& t) {
  std::ostringstream oss;
  oss << "[";
  for (int64_t d = 0; d < t.dim(); d++) oss << (d ? ", " : "") << t.size(d);
  oss << "]";
  return oss.str();
}

inline const char* dtype_name(ScalarType st) {
  switch (st) {
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Half: return "float16";
    case ScalarType::Long: return "int64";
    case ScalarType::Int: return "int32";
    default: return "an unsupported dtype";
  }
}

// The kernels' storage dtype of a floating tensor; any other dtype is an error.
inline tpt_dtype storage_dtype(const Tensor& t, const char* op, const char* arg) {
  switch (t.scalar_type()) {
    case ScalarType::Float: return TPT_FLOAT32;
    case ScalarType::Double: return TPT_FLOAT64;
    case ScalarType::BFloat16: return TPT_BFLOAT16;
    case ScalarType::Half: return TPT_FLOAT16;
    default:
      fail(op, "argument '", arg, "' has dtype ", dtype_name(t.scalar_type()),
           "; expected float32, float64, bfloat16 or float16");
  }
}

// float64 computes in float64, every other storage dtype in float32.
inline ScalarType compute_type(tpt_dtype dt) {
  return dt == TPT_FLOAT64 ? ScalarType::Double : ScalarType::Float;
}

inline void check_cpu(const Tensor& t, const char* op, const char* arg) {
  TPT_CHECK(t.is_cpu(), op, "argument '", arg, "' must be a CPU tensor");
}

inline void check_same_device(const Tensor& a, const Tensor& b, const char* op, const char* arg) {
  TPT_CHECK(a.device() == b.device(), op, "argument '", arg,
            "' is on a different device from the input");
}

// The last dim of x: D = N * P with N >= 1 phases of equal width.
inline int64_t check_phases(const Tensor& x, int64_t n_phases, const char* op, const char* arg) {
  TPT_CHECK(x.dim() >= 1, op, "argument '", arg, "' must have at least 1 dimension, got a scalar");
  TPT_CHECK(n_phases >= 1, op, "n_phases must be >= 1, got ", n_phases);
  const int64_t D = x.size(-1);
  TPT_CHECK(D % n_phases == 0, op, "the last dim of '", arg, "' (D=", D,
            ") is not divisible by n_phases=", n_phases);
  return D;
}

// A 1-d parameter of the given length, converted to the compute precision.
inline Tensor param_vector(const Tensor& p, int64_t length, ScalarType compute, const Tensor& x,
                           const char* op, const char* arg) {
  storage_dtype(p, op, arg);
  check_same_device(p, x, op, arg);
  TPT_CHECK(p.dim() == 1 && p.size(0) == length, op, "argument '", arg, "' must have shape [",
            length, "], got ", shape_str(p));
  return torch::stable::contiguous(torch::stable::to(p, compute));
}

inline void check_status(int status, const char* op) {
  TPT_CHECK(status == TPT_OK, op, status == TPT_ERR_NOMEM ? "out of memory" : "kernel failed");
}

// Run f(begin, end) over [0, n) on torch's thread pool, at least `grain`
// items a task. A kernel's status is collected so that no exception crosses
// the pool; the first failure is raised after the loop.
template <typename F>
void parallel_rows(const char* op, int64_t n, int64_t grain, const F& f) {
  if (n <= 0) return;
  std::vector<int> status(1, TPT_OK);
  int* first = status.data();
  torch::stable::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    int s = f(begin, end);
    if (s != TPT_OK) *first = s;
  });
  check_status(*first, op);
}

// Rows a task for a row kernel: about 64 KiB of row data.
inline int64_t row_grain(int64_t D) { return D > 0 ? std::max<int64_t>(1, 16384 / D) : 1; }

// Sum the [n_blocks, n] partials of a row reduction in block order.
inline Tensor sum_partials(const Tensor& partials, ScalarType out_type) {
  const int64_t n_blocks = partials.size(0), n = partials.size(1);
  Tensor out = torch::stable::new_empty(partials, {n});
  if (partials.scalar_type() == ScalarType::Double)
    tpt_sum_partials_f64(out.mutable_data_ptr<double>(), partials.const_data_ptr<double>(), n_blocks, n, 0, n);
  else
    tpt_sum_partials_f32(out.mutable_data_ptr<float>(), partials.const_data_ptr<float>(), n_blocks, n, 0, n);
  return torch::stable::to(out, out_type);
}

}  // namespace tpt
