/* NumPy face of the fused qkv split + RoPE (csrc/cpu/rope.h). */
#include "face.h"
#include "cpu/rope.h"

/* Element strides of a (B, heads, T, hd) array (C-contiguous: np_float_array makes it so). */
static tpt_head_strides head_strides(PyArrayObject* a) {
    const npy_intp item = PyArray_ITEMSIZE(a);
    const tpt_head_strides st = {PyArray_STRIDE(a, 0) / item, PyArray_STRIDE(a, 1) / item,
                                 PyArray_STRIDE(a, 2) / item};
    return st;
}

NP_FUNCTION(qkv_rope_forward) {
    static char* names[] = {"qkv", "cos", "sin_signed", "n_q_heads", "n_kv_heads", NULL};
    const char* fn = "qkv_rope_forward";
    PyObject *qo, *co, *so;
    long long H, Hkv;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOLL", names, &qo, &co, &so, &H, &Hkv)) return NULL;
    PyArrayObject *qkv, *cos, *sin;
    if (!(qkv = np_float_array(refs, qo, fn, "qkv", NPY_NOTYPE))) return NULL;
    const int type = PyArray_TYPE(qkv);
    if (!(cos = np_float_array(refs, co, fn, "cos", type)) || !(sin = np_float_array(refs, so, fn, "sin_signed", type)))
        return NULL;
    NP_RULE(tpt_check_qkv, np_shape(qkv), H, Hkv);
    const npy_intp B = PyArray_DIM(qkv, 0), T = PyArray_DIM(qkv, 1), hd = PyArray_DIM(qkv, 2) / (H + 2 * Hkv);
    NP_RULE(tpt_check_rope_table, "cos", np_shape(cos), T, hd);
    NP_RULE(tpt_check_rope_table, "sin_signed", np_shape(sin), T, hd);
    const npy_intp q_dims[4] = {B, H, T, hd}, kv_dims[4] = {B, Hkv, T, hd};
    PyArrayObject *q = np_zeros(refs, 4, q_dims, type), *k = np_zeros(refs, 4, kv_dims, type);
    PyArrayObject* v = np_zeros(refs, 4, kv_dims, type);
    if (!q || !k || !v) return NULL;
    const npy_intp M = hd ? B * T : 0;
    const tpt_dtype dt = np_dtype(qkv);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, qkv_rope_forward, PyArray_DATA(q), PyArray_DATA(k), PyArray_DATA(v), PyArray_DATA(qkv),
                             PyArray_DATA(cos), PyArray_DATA(sin), dt, 0, M, T, H, Hkv, hd);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("OOO", q, k, v);
}

NP_FUNCTION(qkv_rope_backward) {
    static char* names[] = {"dq", "dk", "dv", "cos", "sin_signed", "n_q_heads", "n_kv_heads", NULL};
    const char* fn = "qkv_rope_backward";
    PyObject *dqo, *dko, *dvo, *co, *so;
    long long H, Hkv;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOLL", names, &dqo, &dko, &dvo, &co, &so, &H, &Hkv)) return NULL;
    PyArrayObject *dq, *dk, *dv, *cos, *sin;
    if (!(dq = np_float_array(refs, dqo, fn, "dq", NPY_NOTYPE))) return NULL;
    const int type = PyArray_TYPE(dq);
    if (!(dk = np_float_array(refs, dko, fn, "dk", type)) || !(dv = np_float_array(refs, dvo, fn, "dv", type)) ||
        !(cos = np_float_array(refs, co, fn, "cos", type)) || !(sin = np_float_array(refs, so, fn, "sin_signed", type)))
        return NULL;
    NP_RULE(tpt_check_head_counts, H, Hkv);
    NP_RULE(tpt_check_dq, np_shape(dq), H);
    const npy_intp B = PyArray_DIM(dq, 0), T = PyArray_DIM(dq, 2), hd = PyArray_DIM(dq, 3);
    NP_RULE(tpt_check_dkv, "dk", np_shape(dk), B, Hkv, T, hd);
    NP_RULE(tpt_check_dkv, "dv", np_shape(dv), B, Hkv, T, hd);
    NP_RULE(tpt_check_rope_table, "cos", np_shape(cos), T, hd);
    NP_RULE(tpt_check_rope_table, "sin_signed", np_shape(sin), T, hd);
    const npy_intp dims[3] = {B, T, (H + 2 * Hkv) * hd};
    PyArrayObject* dqkv = np_zeros(refs, 3, dims, type);
    if (!dqkv) return NULL;
    const npy_intp M = hd ? B * T : 0;
    const tpt_dtype dt = np_dtype(dq);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, qkv_rope_backward, PyArray_DATA(dqkv), PyArray_DATA(dq), head_strides(dq),
                             PyArray_DATA(dk), head_strides(dk), PyArray_DATA(dv), head_strides(dv),
                             PyArray_DATA(cos), PyArray_DATA(sin), dt, 0, M, T, H, Hkv, hd);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("O", dqkv);
}
