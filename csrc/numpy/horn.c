/* NumPy face of the Gabriel's-horn injection (csrc/cpu/horn.h). */
#include "face.h"
#include "cpu/horn.h"

NP_FUNCTION(horn_inject_forward) {
    static char* names[] = {"x", "n_phases", "offset", NULL};
    const char* fn = "horn_inject_forward";
    PyObject* xo;
    long long n_phases = 1, offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OL|L", names, &xo, &n_phases, &offset)) return NULL;
    PyArrayObject* x = np_float_array(refs, xo, fn, "x", NPY_NOTYPE);
    if (!x) return NULL;
    NP_RULE(tpt_check_positions, "x", np_shape(x));
    NP_RULE(tpt_check_phases, "x", np_shape(x), n_phases);
    const npy_intp D = PyArray_DIM(x, PyArray_NDIM(x) - 1), M = D ? PyArray_SIZE(x) / D : 0;
    const npy_intp T = PyArray_DIM(x, PyArray_NDIM(x) - 2);
    NP_RULE(tpt_check_offset, offset, T);
    PyArrayObject* y = np_new_like(refs, x);
    if (!y) return NULL;
    const tpt_dtype dt = np_dtype(x);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, horn_inject_forward, PyArray_DATA(y), PyArray_DATA(x), dt, 0, M, T, D, offset);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("O", y);
}

NP_FUNCTION(horn_inject_backward) {
    static char* names[] = {"dy", "n_phases", NULL};
    const char* fn = "horn_inject_backward";
    PyObject* dyo;
    long long n_phases = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OL", names, &dyo, &n_phases)) return NULL;
    PyArrayObject* dy = np_float_array(refs, dyo, fn, "dy", NPY_NOTYPE);
    if (!dy) return NULL;
    NP_RULE(tpt_check_phases, "dy", np_shape(dy), n_phases);
    const npy_intp D = PyArray_DIM(dy, PyArray_NDIM(dy) - 1), M = D ? PyArray_SIZE(dy) / D : 0;
    PyArrayObject* dx = np_new_like(refs, dy);
    if (!dx) return NULL;
    const tpt_dtype dt = np_dtype(dy);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, horn_inject_backward, PyArray_DATA(dx), PyArray_DATA(dy), dt, 0, M, D);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("O", dx);
}

NP_FUNCTION(horn_embedding_forward) {
    static char* names[] = {"ids", "table", "n_phases", "offset", NULL};
    const char* fn = "horn_embedding_forward";
    PyObject *io, *to;
    long long n_phases = 1, offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOL|L", names, &io, &to, &n_phases, &offset)) return NULL;
    PyArrayObject* table = np_float_array(refs, to, fn, "table", NPY_NOTYPE);
    if (!table) return NULL;
    NP_RULE(tpt_check_table, np_shape(table));
    NP_RULE(tpt_check_phases, "table", np_shape(table), n_phases);
    const npy_intp V = PyArray_DIM(table, 0), D = PyArray_DIM(table, 1);
    PyArrayObject* ids = np_ids_array(refs, io, V, fn);
    if (!ids) return NULL;
    const int nd = PyArray_NDIM(ids);
    const npy_intp M = PyArray_SIZE(ids), T = PyArray_DIM(ids, nd - 1);
    NP_RULE(tpt_check_offset, offset, T);
    npy_intp dims[3];
    for (int d = 0; d < nd; d++) dims[d] = PyArray_DIM(ids, d);
    dims[nd] = D;
    PyArrayObject* y = np_zeros(refs, nd + 1, dims, PyArray_TYPE(table));
    if (!y) return NULL;
    const tpt_dtype dt = np_dtype(table);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, horn_embedding_forward, PyArray_DATA(y), PyArray_DATA(ids), PyArray_DATA(table), dt,
                             0, M, T, D, offset);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("O", y);
}

NP_FUNCTION(horn_embedding_backward) {
    static char* names[] = {"dy", "ids", "vocab_size", "n_phases", NULL};
    const char* fn = "horn_embedding_backward";
    PyObject *dyo, *io;
    long long vocab_size = 0, n_phases = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOLL", names, &dyo, &io, &vocab_size, &n_phases)) return NULL;
    PyArrayObject* dy = np_float_array(refs, dyo, fn, "dy", NPY_NOTYPE);
    if (!dy) return NULL;
    NP_RULE(tpt_check_phases, "dy", np_shape(dy), n_phases);
    NP_RULE(tpt_check_vocab_size, vocab_size);
    PyArrayObject* ids = np_ids_array(refs, io, vocab_size, fn);
    if (!ids) return NULL;
    const npy_intp D = PyArray_DIM(dy, PyArray_NDIM(dy) - 1), M = PyArray_SIZE(ids);
    NP_RULE(tpt_check_embedding_grad, np_shape(dy), np_shape(ids), D);
    const npy_intp dims[2] = {vocab_size, D}, n_offsets = vocab_size + 1;
    const npy_intp max_chunks = horn_embedding_max_chunks(M, vocab_size), n_chunk_begins = max_chunks + 1;
    const npy_intp partial_dims[2] = {max_chunks > 0 ? max_chunks : 1, D};
    PyArrayObject *dtable = np_zeros(refs, 2, dims, PyArray_TYPE(dy)), *order = np_zeros(refs, 1, &M, NPY_INT64);
    PyArrayObject* offsets = np_zeros(refs, 1, &n_offsets, NPY_INT64);
    PyArrayObject* chunk_begin = np_zeros(refs, 1, &n_chunk_begins, NPY_INT64);
    PyArrayObject* id_chunks = np_zeros(refs, 1, &n_offsets, NPY_INT64);
    const npy_intp n_block_entries = tpt_num_row_blocks(M) + 1;
    PyArrayObject* block_chunks = np_zeros(refs, 1, &n_block_entries, NPY_INT64);
    const tpt_dtype dt = np_dtype(dy);
    PyArrayObject* partials = np_zeros(refs, 2, partial_dims, dt == TPT_FLOAT64 ? NPY_FLOAT64 : NPY_FLOAT32);
    if (!dtable || !order || !offsets || !chunk_begin || !id_chunks || !block_chunks || !partials) return NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS
    horn_embedding_group(PyArray_DATA(order), PyArray_DATA(offsets), PyArray_DATA(ids), M, vocab_size);
    const int64_t n_chunks = horn_embedding_chunks(PyArray_DATA(chunk_begin), PyArray_DATA(id_chunks),
                                                   PyArray_DATA(block_chunks), PyArray_DATA(offsets), vocab_size);
    status = NP_BY_PRECISION(dt, horn_embedding_backward, PyArray_DATA(partials), PyArray_DATA(dy),
                             PyArray_DATA(order), PyArray_DATA(chunk_begin), dt, 0, n_chunks, D);
    if (status == TPT_OK)
        status = NP_BY_PRECISION(dt, horn_embedding_backward_combine, PyArray_DATA(dtable), PyArray_DATA(partials),
                                 PyArray_DATA(id_chunks), dt, 0, vocab_size, D);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("O", dtable);
}
