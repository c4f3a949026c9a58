// Shared by the registration files: the argument rules of csrc/cpu/checks.h
// raised as "tpt.<op>: ..." errors, the dtype mapping from torch to the C
// kernels, the float32/float64 kernel dispatch, and row-parallel launch over
// torch's thread pool.
//
// Everything here uses the LibTorch stable ABI (torch/csrc/stable), so one
// build of the extension serves every torch >= 2.10.
//
// A build with the CUDA kernels (setup.py, when torch has CUDA and nvcc is
// found) defines TPT_WITH_CUDA, and USE_CUDA so that the stable C shim
// declares its CUDA functions (the current-stream accessor among them). Each
// op then also takes CUDA tensors: the same checks, then the launchers of
// csrc/cuda/launchers.h on torch's current stream.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../cpu/checks.h"
#include "../cpu/common.h"
#ifdef TPT_WITH_CUDA
#include "../cuda/launchers.h"
#endif

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

// Raises "tpt.<op>: <message>" when a rule of csrc/cpu/checks.h is broken:
//   TPT_RULE(op, tpt_check_phases, "x", shape_of(x), n_phases);
#define TPT_RULE(op, rule, ...)                                   \
  do {                                                            \
    char tpt_msg_[TPT_MSG_SIZE];                                  \
    if (rule(tpt_msg_, __VA_ARGS__)) ::tpt::fail(op, tpt_msg_);   \
  } while (0)

// The sizes of t as the shared checks take them; valid while t lives.
inline tpt_shape shape_of(const Tensor& t) { return {t.sizes().data(), t.dim()}; }

// torch's name of every dtype (torch.<name>), so that a refused dtype is named
// as the user wrote it; a dtype newer than this table prints its enum value.
inline std::string dtype_name(ScalarType st) {
  switch (st) {
    case ScalarType::Byte: return "uint8";
    case ScalarType::Char: return "int8";
    case ScalarType::Short: return "int16";
    case ScalarType::Int: return "int32";
    case ScalarType::Long: return "int64";
    case ScalarType::Half: return "float16";
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::ComplexHalf: return "complex32";
    case ScalarType::ComplexFloat: return "complex64";
    case ScalarType::ComplexDouble: return "complex128";
    case ScalarType::Bool: return "bool";
    case ScalarType::QInt8: return "qint8";
    case ScalarType::QUInt8: return "quint8";
    case ScalarType::QInt32: return "qint32";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::QUInt4x2: return "quint4x2";
    case ScalarType::QUInt2x4: return "quint2x4";
    case ScalarType::Bits1x8: return "bits1x8";
    case ScalarType::Bits2x4: return "bits2x4";
    case ScalarType::Bits4x2: return "bits4x2";
    case ScalarType::Bits8: return "bits8";
    case ScalarType::Bits16: return "bits16";
    case ScalarType::Float8_e5m2: return "float8_e5m2";
    case ScalarType::Float8_e4m3fn: return "float8_e4m3fn";
    case ScalarType::Float8_e5m2fnuz: return "float8_e5m2fnuz";
    case ScalarType::Float8_e4m3fnuz: return "float8_e4m3fnuz";
    case ScalarType::UInt16: return "uint16";
    case ScalarType::UInt32: return "uint32";
    case ScalarType::UInt64: return "uint64";
    case ScalarType::UInt1: return "uint1";
    case ScalarType::UInt2: return "uint2";
    case ScalarType::UInt3: return "uint3";
    case ScalarType::UInt4: return "uint4";
    case ScalarType::UInt5: return "uint5";
    case ScalarType::UInt6: return "uint6";
    case ScalarType::UInt7: return "uint7";
    case ScalarType::Int1: return "int1";
    case ScalarType::Int2: return "int2";
    case ScalarType::Int3: return "int3";
    case ScalarType::Int4: return "int4";
    case ScalarType::Int5: return "int5";
    case ScalarType::Int6: return "int6";
    case ScalarType::Int7: return "int7";
    case ScalarType::Float8_e8m0fnu: return "float8_e8m0fnu";
    case ScalarType::Float4_e2m1fn_x2: return "float4_e2m1fn_x2";
    default: return "ScalarType(" + std::to_string(static_cast<int>(st)) + ")";
  }
}

// The kernels' storage dtype of a floating tensor; any other dtype is an error.
inline tpt_dtype storage_dtype(const Tensor& t, const char* op, const char* arg) {
  const ScalarType st = t.scalar_type();
  const bool supported = st == ScalarType::Float || st == ScalarType::Double || st == ScalarType::BFloat16 ||
                         st == ScalarType::Half;
  TPT_RULE(op, tpt_check_dtype, arg, supported, dtype_name(st).c_str(), "float32, float64, bfloat16 or float16");
  return st == ScalarType::Float ? TPT_FLOAT32
       : st == ScalarType::Double ? TPT_FLOAT64
       : st == ScalarType::BFloat16 ? TPT_BFLOAT16
                                    : TPT_FLOAT16;
}

// float64 computes in float64, every other storage dtype in float32.
inline ScalarType compute_type(tpt_dtype dt) {
  return dt == TPT_FLOAT64 ? ScalarType::Double : ScalarType::Float;
}

// f(real{}) with real the compute precision of dt: double for float64, float
// for the rest. f is a generic lambda that calls the kernels of that precision,
// e.g. kernels::phase_rmsnorm_forward<real>(...) (see TPT_KERNEL_PAIR).
template <typename F>
decltype(auto) by_precision(tpt_dtype dt, const F& f) {
  return dt == TPT_FLOAT64 ? f(double{}) : f(float{});
}

// name<real>(args...) calls the C kernel name_f64 or name_f32. Each family
// declares its kernels so in a namespace `kernels` beside its ops.
#define TPT_KERNEL_PAIR(name)                                        \
  template <typename real, typename... Args>                         \
  auto name(Args... args) {                                          \
    if constexpr (std::is_same_v<real, double>) return ::name##_f64(args...); \
    else return ::name##_f32(args...);                               \
  }

// The input that decides where an op runs: the CPU, or a CUDA device in a
// build with the CUDA kernels.
inline void check_device(const Tensor& t, const char* op, const char* arg) {
#ifdef TPT_WITH_CUDA
  TPT_CHECK(t.is_cpu() || t.is_cuda(), op, "argument '", arg, "' must be a CPU or CUDA tensor");
#else
  TPT_CHECK(t.is_cpu(), op, "argument '", arg, "' must be a CPU tensor");
#endif
}

// t itself on the CPU, else a copy there: for the checks that read values
// (ids, routing layouts) and so are the CPU's rules on every device. On a
// CUDA tensor this waits for the values, a small copy.
inline Tensor on_host(const Tensor& t) {
  return t.is_cpu() ? t : torch::stable::to(t, torch::stable::Device(torch::stable::DeviceType::CPU));
}

#ifdef TPT_WITH_CUDA
// A CUDA op's launch context: t's device made current for the call, and
// torch's current stream on it, so the kernels queue behind the work torch
// has queued there (and nothing synchronises). The guard is the C shim's
// handle (the stable headers' DeviceGuard class has hidden visibility).
class CudaLaunch {
 public:
  explicit CudaLaunch(const Tensor& t) {
    const int32_t device = t.get_device_index();
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_create_device_guard(device, &guard_));
    void* s = nullptr;
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(device, &s));
    stream = static_cast<cudaStream_t>(s);
  }
  ~CudaLaunch() { aoti_torch_delete_device_guard(guard_); }
  CudaLaunch(const CudaLaunch&) = delete;
  CudaLaunch& operator=(const CudaLaunch&) = delete;

  cudaStream_t stream = nullptr;

 private:
  DeviceGuardHandle guard_ = nullptr;
};
#endif

inline void check_same_device(const Tensor& a, const Tensor& b, const char* op, const char* arg) {
  TPT_CHECK(a.device() == b.device(), op, "argument '", arg,
            "' is on a different device from the input");
}

// The last dim of x: D = N * P with N >= 1 phases of equal width.
inline int64_t check_phases(const Tensor& x, int64_t n_phases, const char* op, const char* arg) {
  TPT_RULE(op, tpt_check_phases, arg, shape_of(x), n_phases);
  return x.size(-1);
}

// A 1-d parameter of the given length, converted to the compute precision.
inline Tensor param_vector(const Tensor& p, int64_t length, ScalarType compute, const Tensor& x,
                           const char* op, const char* arg) {
  storage_dtype(p, op, arg);
  check_same_device(p, x, op, arg);
  TPT_RULE(op, tpt_check_vector, arg, shape_of(p), length);
  return torch::stable::contiguous(torch::stable::to(p, compute));
}

inline void check_status(int status, const char* op) {
  TPT_CHECK(status == TPT_OK, op,
            status == TPT_ERR_NOMEM  ? "out of memory"
            : status == TPT_ERR_CUDA ? "CUDA kernel launch failed"
                                     : "kernel failed");
}

// Run f(begin, end) over [0, n) on torch's thread pool, at least `grain`
// items a task. A kernel's status is collected so that no exception crosses
// the pool; tasks run concurrently, so the first failure is kept atomically
// and raised after the loop.
template <typename F>
void parallel_rows(const char* op, int64_t n, int64_t grain, const F& f) {
  if (n <= 0) return;
  std::atomic<int> first_failure{TPT_OK};
  torch::stable::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    const int s = f(begin, end);
    int none = TPT_OK;
    if (s != TPT_OK) first_failure.compare_exchange_strong(none, s);
  });
  check_status(first_failure.load(), op);
}

// Ask for transparent huge pages on a fresh CPU output of 4 MiB or more,
// before the kernel first writes it. glibc serves allocations above its mmap
// threshold (32 MiB at most) with fresh mappings, so each call's output is
// faulted in 4 KiB at a time on the first write: 10 ms of the 77 ms forward
// of linear attention at T=16384 (a 34 MB output) on the benchmark machine,
// 3.5 ms with 2 MiB pages (RESULTS.md, Hedgehog). Only the 2 MiB-aligned
// interior is advised; where the system's THP mode is "never" (or the call
// fails) nothing changes, and it never changes a value.
inline void advise_huge_pages(const Tensor& t) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t huge_page = uintptr_t(1) << 21;
  const uintptr_t bytes = uintptr_t(t.numel()) * t.element_size();
  if (!t.is_cpu() || bytes < 2 * huge_page) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + huge_page - 1) & ~(huge_page - 1), last = (begin + bytes) & ~(huge_page - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// Rows a task for a row kernel: about 64 KiB of row data.
inline int64_t row_grain(int64_t D) { return D > 0 ? std::max<int64_t>(1, 16384 / D) : 1; }

namespace kernels {
TPT_KERNEL_PAIR(tpt_sum_partials)
#ifdef TPT_WITH_CUDA
TPT_KERNEL_PAIR(tpt_cuda_sum_partials)
#endif
}  // namespace kernels

// Sum the [n_blocks, n] partials of a row reduction in block order.
inline Tensor sum_partials(const Tensor& partials, ScalarType out_type) {
  const int64_t n_blocks = partials.size(0), n = partials.size(1);
  Tensor out = torch::stable::new_empty(partials, {n});
  const tpt_dtype dt = partials.scalar_type() == ScalarType::Double ? TPT_FLOAT64 : TPT_FLOAT32;
#ifdef TPT_WITH_CUDA
  if (partials.is_cuda()) {
    const CudaLaunch launch(partials);
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_sum_partials<real>(out.mutable_data_ptr<real>(),
                                                               partials.const_data_ptr<real>(), n_blocks, n,
                                                               launch.stream);
                 }),
                 "sum_partials");
    return torch::stable::to(out, out_type);
  }
#endif
  by_precision(dt, [&](auto tag) {
    using real = decltype(tag);
    kernels::tpt_sum_partials<real>(out.mutable_data_ptr<real>(), partials.const_data_ptr<real>(), n_blocks, n, 0, n);
  });
  return torch::stable::to(out, out_type);
}

}  // namespace tpt

// Registers a family's kernels for each device it has kernels for, from one list: `impls` is a function
// void(torch::stable::detail::StableLibrary&) holding the family's m.impl calls, the same functions for
// CPU and CUDA tensors (each dispatches on its inputs' device). One list, so no op is left out of a device.
#ifdef TPT_WITH_CUDA
#define TPT_REGISTER_IMPLS(impls)                      \
  STABLE_TORCH_LIBRARY_IMPL(tpt, CPU, m) { impls(m); } \
  STABLE_TORCH_LIBRARY_IMPL(tpt, CUDA, m) { impls(m); }
#else
#define TPT_REGISTER_IMPLS(impls) \
  STABLE_TORCH_LIBRARY_IMPL(tpt, CPU, m) { impls(m); }
#endif
