// Registration of the Gabriel's-horn ops (kernels: csrc/cpu/horn.c).
#include "glue.h"
#include "../cpu/horn.h"

namespace tpt {
namespace {

namespace kernels {
TPT_KERNEL_PAIR(horn_inject_forward)
TPT_KERNEL_PAIR(horn_inject_backward)
TPT_KERNEL_PAIR(horn_embedding_forward)
TPT_KERNEL_PAIR(horn_embedding_backward)
TPT_KERNEL_PAIR(horn_embedding_backward_combine)
#ifdef TPT_WITH_CUDA
TPT_KERNEL_PAIR(tpt_cuda_horn_inject_forward)
TPT_KERNEL_PAIR(tpt_cuda_horn_inject_backward)
TPT_KERNEL_PAIR(tpt_cuda_horn_embedding_forward)
TPT_KERNEL_PAIR(tpt_cuda_horn_embedding_backward)
#endif
}  // namespace kernels

constexpr const char* kInject = "horn_inject";
constexpr const char* kEmbedding = "horn_embedding";

// x: [..., T, D]; y = x - mean(x) + r(p + offset), p the index along dim -2.
Tensor horn_inject(Tensor x, int64_t n_phases, int64_t offset) {
  const tpt_dtype dt = storage_dtype(x, kInject, "x");
  check_device(x, kInject, "x");
  TPT_RULE(kInject, tpt_check_positions, "x", shape_of(x));
  const int64_t D = check_phases(x, n_phases, kInject, "x"), T = x.size(-2);
  TPT_RULE(kInject, tpt_check_offset, offset, T);
  x = torch::stable::contiguous(x);
  Tensor y = torch::stable::empty_like(x);
  const int64_t M = D ? x.numel() / D : 0;
#ifdef TPT_WITH_CUDA
  if (x.is_cuda()) {
    const CudaLaunch launch(x);
    check_status(by_precision(dt, [&](auto tag) {
                   return kernels::tpt_cuda_horn_inject_forward<decltype(tag)>(
                       y.mutable_data_ptr(), x.const_data_ptr(), dt, M, T, D, offset, launch.stream);
                 }),
                 kInject);
  } else
#endif
  parallel_rows(kInject, M, row_grain(D), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      return kernels::horn_inject_forward<decltype(tag)>(y.mutable_data_ptr(), x.const_data_ptr(), dt, begin, end, T,
                                                         D, offset);
    });
  });
  return y;
}

// dx = dy - mean(dy)
Tensor horn_inject_backward(Tensor dy, int64_t n_phases) {
  const char* op = "horn_inject_backward";
  const tpt_dtype dt = storage_dtype(dy, op, "dy");
  check_device(dy, op, "dy");
  const int64_t D = check_phases(dy, n_phases, op, "dy");
  dy = torch::stable::contiguous(dy);
  Tensor dx = torch::stable::empty_like(dy);
  const int64_t M = D ? dy.numel() / D : 0;
#ifdef TPT_WITH_CUDA
  if (dy.is_cuda()) {
    const CudaLaunch launch(dy);
    check_status(by_precision(dt, [&](auto tag) {
                   return kernels::tpt_cuda_horn_inject_backward<decltype(tag)>(dx.mutable_data_ptr(),
                                                                                dy.const_data_ptr(), dt, M, D,
                                                                                launch.stream);
                 }),
                 op);
  } else
#endif
  parallel_rows(op, M, row_grain(D), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      return kernels::horn_inject_backward<decltype(tag)>(dx.mutable_data_ptr(), dy.const_data_ptr(), dt, begin, end,
                                                          D);
    });
  });
  return dx;
}

// ids [T] or [B, T] (int64 or int32), validated against V (CUDA ids through a host copy); returned as
// contiguous int64 on their device.
Tensor checked_ids(Tensor ids, int64_t V, const char* op) {
  const ScalarType st = ids.scalar_type();
  TPT_RULE(op, tpt_check_dtype, "ids", st == ScalarType::Long || st == ScalarType::Int, dtype_name(st).c_str(),
           "int64 or int32");
  TPT_RULE(op, tpt_check_ids_shape, shape_of(ids));
  ids = torch::stable::contiguous(torch::stable::to(ids, ScalarType::Long));
  TPT_RULE(op, tpt_check_ids_range, on_host(ids).const_data_ptr<int64_t>(), ids.numel(), V);
  return ids;
}

// out[..., :] = horn_inject(table[ids]) in one pass; out has table's dtype.
Tensor horn_embedding(Tensor ids, Tensor table, int64_t n_phases, int64_t offset) {
  const tpt_dtype dt = storage_dtype(table, kEmbedding, "table");
  check_device(table, kEmbedding, "table");
  check_same_device(ids, table, kEmbedding, "ids");
  TPT_RULE(kEmbedding, tpt_check_table, shape_of(table));
  const int64_t D = check_phases(table, n_phases, kEmbedding, "table"), V = table.size(0);
  ids = checked_ids(ids, V, kEmbedding);
  TPT_RULE(kEmbedding, tpt_check_offset, offset, ids.size(-1));
  table = torch::stable::contiguous(table);
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(D);
  Tensor y = torch::stable::new_empty(table, shape);
  const int64_t M = ids.numel(), T = ids.size(-1);
  const int64_t* idp = ids.const_data_ptr<int64_t>();
#ifdef TPT_WITH_CUDA
  if (table.is_cuda()) {
    const CudaLaunch launch(table);
    check_status(by_precision(dt, [&](auto tag) {
                   return kernels::tpt_cuda_horn_embedding_forward<decltype(tag)>(
                       y.mutable_data_ptr(), idp, table.const_data_ptr(), dt, M, T, D, offset, launch.stream);
                 }),
                 kEmbedding);
  } else
#endif
  parallel_rows(kEmbedding, M, row_grain(D), [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      return kernels::horn_embedding_forward<decltype(tag)>(y.mutable_data_ptr(), idp, table.const_data_ptr(), dt,
                                                            begin, end, T, D, offset);
    });
  });
  return y;
}

// dtable [V, D] (dy's dtype): each row sums its tokens' dy - mean(dy) in token order, in chunks that the
// fixed TPT_ROW_BLOCK-token blocks of the grouped tokens cut (the blocks are the tasks, so a frequent id is
// not one thread's work), the chunk partials combined in chunk order.
Tensor horn_embedding_backward(Tensor dy, Tensor ids, int64_t vocab_size, int64_t n_phases) {
  const char* op = "horn_embedding_backward";
  const tpt_dtype dt = storage_dtype(dy, op, "dy");
  check_device(dy, op, "dy");
  check_same_device(ids, dy, op, "ids");
  const int64_t D = check_phases(dy, n_phases, op, "dy");
  TPT_RULE(op, tpt_check_vocab_size, vocab_size);
  ids = checked_ids(ids, vocab_size, op);
  TPT_RULE(op, tpt_check_embedding_grad, shape_of(dy), shape_of(ids), D);
  dy = torch::stable::contiguous(dy);
  const int64_t M = ids.numel();
  // the grouping is a serial counting sort on the CPU, whatever the device (then moved to it)
  const Tensor host_ids = on_host(ids);
  Tensor order = torch::stable::new_empty(host_ids, {M});
  Tensor id_offsets = torch::stable::new_empty(host_ids, {vocab_size + 1});
  horn_embedding_group(order.mutable_data_ptr<int64_t>(), id_offsets.mutable_data_ptr<int64_t>(),
                       host_ids.const_data_ptr<int64_t>(), M, vocab_size);
  Tensor dtable = torch::stable::new_empty(dy, {vocab_size, D});
#ifdef TPT_WITH_CUDA
  if (dy.is_cuda()) {
    const CudaLaunch launch(dy);
    const Tensor order_d = torch::stable::to(order, dy.device()), offsets_d = torch::stable::to(id_offsets, dy.device());
    Tensor token_means = torch::stable::new_empty(dy, {M}, compute_type(dt));
    check_status(by_precision(dt, [&](auto tag) {
                   using real = decltype(tag);
                   return kernels::tpt_cuda_horn_embedding_backward<real>(
                       dtable.mutable_data_ptr(), token_means.mutable_data_ptr<real>(), dy.const_data_ptr(),
                       order_d.const_data_ptr<int64_t>(), offsets_d.const_data_ptr<int64_t>(), dt, M, vocab_size, D,
                       launch.stream);
                 }),
                 op);
    return dtable;
  }
#endif
  Tensor chunk_begin = torch::stable::new_empty(ids, {horn_embedding_max_chunks(M, vocab_size) + 1});
  Tensor id_chunks = torch::stable::new_empty(ids, {vocab_size + 1});
  const int64_t n_blocks = tpt_num_row_blocks(M);
  Tensor block_chunks = torch::stable::new_empty(ids, {n_blocks + 1});
  const int64_t n_chunks = horn_embedding_chunks(
      chunk_begin.mutable_data_ptr<int64_t>(), id_chunks.mutable_data_ptr<int64_t>(),
      block_chunks.mutable_data_ptr<int64_t>(), id_offsets.const_data_ptr<int64_t>(), vocab_size);
  Tensor partials = torch::stable::new_empty(dy, {std::max<int64_t>(n_chunks, 1), D}, compute_type(dt));
  const int64_t* ord = order.const_data_ptr<int64_t>();
  const int64_t* begins = chunk_begin.const_data_ptr<int64_t>();
  const int64_t* blocks = block_chunks.const_data_ptr<int64_t>();
  parallel_rows(op, n_blocks, 1, [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::horn_embedding_backward<real>(partials.mutable_data_ptr<real>(), dy.const_data_ptr(), ord,
                                                    begins, dt, blocks[begin], blocks[end], D);
    });
  });
  const int64_t* chunks = id_chunks.const_data_ptr<int64_t>();
  // The combine reads about one row of partials per table row: a byte vocabulary's (~1 MB) is done on this
  // thread, as a second round trip through the thread pool would cost more; large vocabularies are split.
  const int64_t combine_grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(D, 1));
  parallel_rows(op, vocab_size, combine_grain, [&](int64_t begin, int64_t end) {
    return by_precision(dt, [&](auto tag) {
      using real = decltype(tag);
      return kernels::horn_embedding_backward_combine<real>(dtable.mutable_data_ptr(),
                                                            partials.const_data_ptr<real>(), chunks, dt, begin, end, D);
    });
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

namespace {
void register_horn(torch::stable::detail::StableLibrary& m) {
  m.impl("horn_inject", TORCH_BOX(&tpt::horn_inject));
  m.impl("horn_inject_backward", TORCH_BOX(&tpt::horn_inject_backward));
  m.impl("horn_embedding", TORCH_BOX(&tpt::horn_embedding));
  m.impl("horn_embedding_backward", TORCH_BOX(&tpt::horn_embedding_backward));
}
}  // namespace

TPT_REGISTER_IMPLS(register_horn)
