// Registration of the Gabriel's-horn ops (kernels: csrc/cpu/horn.c).
#include "glue.h"
#include "../cpu/horn.h"

namespace tpt {
namespace {

constexpr const char* kInject = "horn_inject";
constexpr const char* kEmbedding = "horn_embedding";

void check_offset(int64_t offset, const char* op) {
  TPT_CHECK(offset >= 0, op, "offset must be >= 0 (the absolute position of the first token), got ", offset);
}

// x: [..., T, D]; y = x - mean(x) + r(p + offset), p the index along dim -2.
Tensor horn_inject(Tensor x, int64_t n_phases, int64_t offset) {
  const tpt_dtype dt = storage_dtype(x, kInject, "x");
  check_cpu(x, kInject, "x");
  TPT_CHECK(x.dim() >= 2, kInject, "argument 'x' must be [..., T, D] (at least 2 dims: positions along dim -2), got ",
            shape_str(x));
  const int64_t D = check_phases(x, n_phases, kInject, "x");
  check_offset(offset, kInject);
  x = torch::stable::contiguous(x);
  Tensor y = torch::stable::empty_like(x);
  const int64_t M = D ? x.numel() / D : 0, T = x.size(-2);
  parallel_rows(kInject, M, row_grain(D), [&](int64_t begin, int64_t end) {
    return dt == TPT_FLOAT64 ? horn_inject_forward_f64(y.mutable_data_ptr(), x.const_data_ptr(), dt, begin, end, T, D, offset)
                             : horn_inject_forward_f32(y.mutable_data_ptr(), x.const_data_ptr(), dt, begin, end, T, D, offset);
  });
  return y;
}

// dx = dy - mean(dy)
Tensor horn_inject_backward(Tensor dy, int64_t n_phases) {
  const char* op = "horn_inject_backward";
  const tpt_dtype dt = storage_dtype(dy, op, "dy");
  check_cpu(dy, op, "dy");
  const int64_t D = check_phases(dy, n_phases, op, "dy");
  dy = torch::stable::contiguous(dy);
  Tensor dx = torch::stable::empty_like(dy);
  const int64_t M = D ? dy.numel() / D : 0;
  parallel_rows(op, M, row_grain(D), [&](int64_t begin, int64_t end) {
    return dt == TPT_FLOAT64 ? horn_inject_backward_f64(dx.mutable_data_ptr(), dy.const_data_ptr(), dt, begin, end, D)
                             : horn_inject_backward_f32(dx.mutable_data_ptr(), dy.const_data_ptr(), dt, begin, end, D);
  });
  return dx;
}

// ids [T] or [B, T] (int64 or int32), validated against V; returned as contiguous int64.
Tensor checked_ids(Tensor ids, int64_t V, const char* op) {
  const ScalarType st = ids.scalar_type();
  TPT_CHECK(st == ScalarType::Long || st == ScalarType::Int, op, "argument 'ids' has dtype ", dtype_name(st),
            "; expected int64 or int32");
  TPT_CHECK(ids.dim() == 1 || ids.dim() == 2, op, "argument 'ids' must be [T] or [B, T], got ", shape_str(ids));
  ids = torch::stable::contiguous(torch::stable::to(ids, ScalarType::Long));
  const int64_t* p = ids.const_data_ptr<int64_t>();
  const int64_t bad = horn_first_bad_id(p, ids.numel(), V);
  TPT_CHECK(bad < 0, op, "argument 'ids' holds ", bad >= 0 ? p[bad] : 0, " at flat index ", bad,
            ", out of range for a table of ", V, " rows");
  return ids;
}

// out[..., :] = horn_inject(table[ids]) in one pass; out has table's dtype.
Tensor horn_embedding(Tensor ids, Tensor table, int64_t n_phases, int64_t offset) {
  const tpt_dtype dt = storage_dtype(table, kEmbedding, "table");
  check_cpu(table, kEmbedding, "table");
  check_same_device(ids, table, kEmbedding, "ids");
  TPT_CHECK(table.dim() == 2, kEmbedding, "argument 'table' must be [V, D], got ", shape_str(table));
  const int64_t D = check_phases(table, n_phases, kEmbedding, "table"), V = table.size(0);
  check_offset(offset, kEmbedding);
  ids = checked_ids(ids, V, kEmbedding);
  table = torch::stable::contiguous(table);
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(D);
  Tensor y = torch::stable::new_empty(table, shape);
  const int64_t M = ids.numel(), T = ids.size(-1);
  const int64_t* idp = ids.const_data_ptr<int64_t>();
  parallel_rows(kEmbedding, M, row_grain(D), [&](int64_t begin, int64_t end) {
    return dt == TPT_FLOAT64
        ? horn_embedding_forward_f64(y.mutable_data_ptr(), idp, table.const_data_ptr(), dt, begin, end, T, D, offset)
        : horn_embedding_forward_f32(y.mutable_data_ptr(), idp, table.const_data_ptr(), dt, begin, end, T, D, offset);
  });
  return y;
}

// dtable [V, D] (dy's dtype): each row sums its tokens' dy - mean(dy) in token order.
Tensor horn_embedding_backward(Tensor dy, Tensor ids, int64_t vocab_size, int64_t n_phases) {
  const char* op = "horn_embedding_backward";
  const tpt_dtype dt = storage_dtype(dy, op, "dy");
  check_cpu(dy, op, "dy");
  check_same_device(ids, dy, op, "ids");
  const int64_t D = check_phases(dy, n_phases, op, "dy");
  TPT_CHECK(vocab_size >= 0, op, "vocab_size must be >= 0, got ", vocab_size);
  ids = checked_ids(ids, vocab_size, op);
  TPT_CHECK(dy.numel() == ids.numel() * D, op, "argument 'dy' has shape ", shape_str(dy),
            "; expected the shape of ids ", shape_str(ids), " plus [", D, "]");
  dy = torch::stable::contiguous(dy);
  const int64_t M = ids.numel();
  Tensor order = torch::stable::new_empty(ids, {M});
  Tensor id_offsets = torch::stable::new_empty(ids, {vocab_size + 1});
  horn_embedding_group(order.mutable_data_ptr<int64_t>(), id_offsets.mutable_data_ptr<int64_t>(),
                       ids.const_data_ptr<int64_t>(), M, vocab_size);
  Tensor dtable = torch::stable::new_empty(dy, {vocab_size, D});
  const int64_t* ord = order.const_data_ptr<int64_t>();
  const int64_t* offs = id_offsets.const_data_ptr<int64_t>();
  parallel_rows(op, vocab_size, row_grain(D), [&](int64_t begin, int64_t end) {
    return dt == TPT_FLOAT64
        ? horn_embedding_backward_f64(dtable.mutable_data_ptr(), dy.const_data_ptr(), ord, offs, dt, begin, end, D)
        : horn_embedding_backward_f32(dtable.mutable_data_ptr(), dy.const_data_ptr(), ord, offs, dt, begin, end, D);
  });
  return dtable;
}

}  // namespace
}  // namespace tpt

STABLE_TORCH_LIBRARY_FRAGMENT(tpt, m) {
  m.def("horn_inject(Tensor x, int n_phases, int offset) -> Tensor");
  m.def("horn_inject_backward(Tensor dy, int n_phases) -> Tensor");
  m.def("horn_embedding(Tensor ids, Tensor table, int n_phases, int offset) -> Tensor");
  m.def("horn_embedding_backward(Tensor dy, Tensor ids, int vocab_size, int n_phases) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(tpt, CPU, m) {
  m.impl("horn_inject", TORCH_BOX(&tpt::horn_inject));
  m.impl("horn_inject_backward", TORCH_BOX(&tpt::horn_inject_backward));
  m.impl("horn_embedding", TORCH_BOX(&tpt::horn_embedding));
  m.impl("horn_embedding_backward", TORCH_BOX(&tpt::horn_embedding_backward));
}
