/* NumPy face of the causal attention forward kernel (csrc/cpu/attention.h). */
#include "face.h"
#include "cpu/attention.h"

NP_FUNCTION(causal_attention_forward) {
    static char* names[] = {"q", "k", "v", "offset", "scale", NULL};
    const char* fn = "causal_attention_forward";
    PyObject *qo, *ko, *vo, *scale_o = Py_None;
    long long offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|LO", names, &qo, &ko, &vo, &offset, &scale_o)) return NULL;
    PyArrayObject *q, *k, *v;
    if (!(q = np_float_array(refs, qo, fn, "q", NPY_NOTYPE)) ||
        !(k = np_float_array(refs, ko, fn, "k", PyArray_TYPE(q))) ||
        !(v = np_float_array(refs, vo, fn, "v", PyArray_TYPE(q))))
        return NULL;
    NP_RULE(tpt_check_attention, np_shape(q), np_shape(k), np_shape(v), (int64_t)offset);
    const npy_intp B = PyArray_DIM(q, 0), H = PyArray_DIM(q, 1), T = PyArray_DIM(q, 2), hd = PyArray_DIM(q, 3);
    const npy_intp Hkv = PyArray_DIM(k, 1), Tk = PyArray_DIM(k, 2);
    /* scale=None: 1/sqrt(hd), as the torch op's default */
    const double scale = scale_o == Py_None ? 1.0 / sqrt((double)hd) : PyFloat_AsDouble(scale_o);
    if (scale_o != Py_None && PyErr_Occurred()) return NULL;
    NP_RULE(tpt_check_attention_scale, scale);
    const npy_intp out_dims[4] = {B, H, T, hd};
    PyArrayObject* out = np_own(refs, PyArray_EMPTY(4, (npy_intp*)out_dims, PyArray_TYPE(q), 0));
    PyArrayObject* lse = np_own(refs, PyArray_EMPTY(3, (npy_intp*)out_dims, PyArray_TYPE(q), 0));
    if (!out || !lse) return NULL;
    const tpt_dtype dt = np_dtype(q);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, attention_forward, PyArray_DATA(out), PyArray_DATA(lse), PyArray_DATA(q),
                             PyArray_DATA(k), PyArray_DATA(v), dt, 0, tpt_attention_forward_tasks(B, Hkv, T), H, Hkv,
                             T, Tk, hd, Tk * hd, (int64_t)offset, scale);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("OO", out, lse);
}
