/* NumPy face of the Hedgehog forward kernels (csrc/cpu/hedgehog.h). */
#include "face.h"
#include "cpu/hedgehog.h"

NP_FUNCTION(hedgehog_feature_map_forward) {
    static char* names[] = {"u", NULL};
    const char* fn = "hedgehog_feature_map_forward";
    PyObject* uo;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", names, &uo)) return NULL;
    PyArrayObject* u = np_float_array(refs, uo, fn, "u", NPY_NOTYPE);
    if (!u) return NULL;
    NP_RULE(tpt_check_hedgehog_u, np_shape(u));
    const npy_intp F = PyArray_DIM(u, PyArray_NDIM(u) - 1);
    npy_intp dims[NPY_MAXDIMS];
    np_dims_with_last(dims, u, 2 * F);
    PyArrayObject* phi = np_own(refs, PyArray_EMPTY(PyArray_NDIM(u), dims, PyArray_TYPE(u), 0));
    if (!phi) return NULL;
    const tpt_dtype dt = np_dtype(u);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, hedgehog_feature_map_forward, PyArray_DATA(phi), PyArray_DATA(u), dt, 0,
                             PyArray_SIZE(u) / F, F);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("O", phi);
}

NP_FUNCTION(linear_attention_forward) {
    static char* names[] = {"phi_q", "phi_k", "v", "causal", "eps", NULL};
    const char* fn = "linear_attention_forward";
    PyObject *qo, *ko, *vo;
    int causal = 1;
    double eps = 1e-12;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|pd", names, &qo, &ko, &vo, &causal, &eps)) return NULL;
    PyArrayObject *q, *k, *v;
    if (!(q = np_float_array(refs, qo, fn, "phi_q", NPY_NOTYPE)) ||
        !(k = np_float_array(refs, ko, fn, "phi_k", PyArray_TYPE(q))) ||
        !(v = np_float_array(refs, vo, fn, "v", PyArray_TYPE(q))))
        return NULL;
    NP_RULE(tpt_check_linear_attention, np_shape(q), np_shape(k), np_shape(v));
    NP_RULE(tpt_check_eps, eps);
    const npy_intp B = PyArray_DIM(q, 0), H = PyArray_DIM(q, 1), T = PyArray_DIM(q, 2), K = PyArray_DIM(q, 3);
    const npy_intp Hkv = PyArray_DIM(k, 1), Dv = PyArray_DIM(v, 3), dims[4] = {B, H, T, Dv};
    PyArrayObject* y = np_own(refs, PyArray_EMPTY(4, (npy_intp*)dims, PyArray_TYPE(q), 0));
    if (!y) return NULL;
    const tpt_dtype dt = np_dtype(q);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, linear_attention_forward, PyArray_DATA(y), NULL, NULL, PyArray_DATA(q),
                             PyArray_DATA(k), PyArray_DATA(v), dt, 0, B * H, H, Hkv, T, K, Dv, causal, eps);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("O", y);
}
