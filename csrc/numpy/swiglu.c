/* NumPy face of the fused SwiGLU (csrc/cpu/swiglu.h). */
#include "face.h"
#include "cpu/swiglu.h"

NP_FUNCTION(swiglu_forward) {
    static char* names[] = {"gate_up", NULL};
    const char* fn = "swiglu_forward";
    PyObject* go;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", names, &go)) return NULL;
    PyArrayObject* gate_up = np_float_array(refs, go, fn, "gate_up", NPY_NOTYPE);
    if (!gate_up) return NULL;
    NP_RULE(tpt_check_gate_up, np_shape(gate_up));
    const int nd = PyArray_NDIM(gate_up);
    const npy_intp F = PyArray_DIM(gate_up, nd - 1) / 2, M = F ? PyArray_SIZE(gate_up) / (2 * F) : 0;
    npy_intp dims[NPY_MAXDIMS];
    np_dims_with_last(dims, gate_up, F);
    PyArrayObject* h = np_zeros(refs, nd, dims, PyArray_TYPE(gate_up));
    if (!h) return NULL;
    const tpt_dtype dt = np_dtype(gate_up);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, swiglu_forward, PyArray_DATA(h), PyArray_DATA(gate_up), dt, 0, M, F);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("O", h);
}

NP_FUNCTION(swiglu_backward) {
    static char* names[] = {"dh", "gate_up", NULL};
    const char* fn = "swiglu_backward";
    PyObject *dho, *go;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", names, &dho, &go)) return NULL;
    PyArrayObject *gate_up, *dh;
    if (!(gate_up = np_float_array(refs, go, fn, "gate_up", NPY_NOTYPE)) ||
        !(dh = np_float_array(refs, dho, fn, "dh", PyArray_TYPE(gate_up))))
        return NULL;
    NP_RULE(tpt_check_gate_up, np_shape(gate_up));
    NP_RULE(tpt_check_swiglu_grad, np_shape(dh), np_shape(gate_up));
    const npy_intp F = PyArray_DIM(gate_up, PyArray_NDIM(gate_up) - 1) / 2;
    const npy_intp M = F ? PyArray_SIZE(gate_up) / (2 * F) : 0;
    PyArrayObject* d_gate_up = np_new_like(refs, gate_up);
    if (!d_gate_up) return NULL;
    const tpt_dtype dt = np_dtype(gate_up);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, swiglu_backward, PyArray_DATA(d_gate_up), PyArray_DATA(dh), PyArray_DATA(gate_up),
                             dt, 0, M, F);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("O", d_gate_up);
}
