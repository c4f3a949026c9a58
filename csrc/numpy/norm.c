/* NumPy face of the per-phase RMSNorm (csrc/cpu/norm.h). */
#include "face.h"
#include "cpu/norm.h"

NP_FUNCTION(phase_rmsnorm_forward) {
    static char* names[] = {"x", "weight", "n_phases", "eps", NULL};
    const char* fn = "phase_rmsnorm_forward";
    PyObject *xo, *wo;
    long long n_phases = 1;
    double eps = 1e-6;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|Ld", names, &xo, &wo, &n_phases, &eps)) return NULL;
    PyArrayObject* x = np_float_array(refs, xo, fn, "x", NPY_NOTYPE);
    if (!x) return NULL;
    const int type = PyArray_TYPE(x);
    PyArrayObject* w = np_float_array(refs, wo, fn, "weight", type);
    if (!w) return NULL;
    NP_RULE(tpt_check_phases, "x", np_shape(x), n_phases);
    NP_RULE(tpt_check_eps, eps);
    const npy_intp D = PyArray_DIM(x, PyArray_NDIM(x) - 1), M = D ? PyArray_SIZE(x) / D : 0;
    NP_RULE(tpt_check_vector, "weight", np_shape(w), D);
    npy_intp rstd_dims[NPY_MAXDIMS];
    np_dims_with_last(rstd_dims, x, n_phases);
    PyArrayObject *y = np_new_like(refs, x), *rstd = np_zeros(refs, PyArray_NDIM(x), rstd_dims, type);
    if (!y || !rstd) return NULL;
    const tpt_dtype dt = np_dtype(x);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, phase_rmsnorm_forward, PyArray_DATA(y), PyArray_DATA(rstd), PyArray_DATA(x),
                             PyArray_DATA(w), dt, 0, M, D, n_phases, eps);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("OO", y, rstd);
}

NP_FUNCTION(phase_rmsnorm_backward) {
    static char* names[] = {"dy", "x", "weight", "rstd", "n_phases", NULL};
    const char* fn = "phase_rmsnorm_backward";
    PyObject *dyo, *xo, *wo, *ro;
    long long n_phases = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|L", names, &dyo, &xo, &wo, &ro, &n_phases)) return NULL;
    PyArrayObject* x = np_float_array(refs, xo, fn, "x", NPY_NOTYPE);
    if (!x) return NULL;
    const int type = PyArray_TYPE(x);
    PyArrayObject *dy, *w, *rstd;
    if (!(dy = np_float_array(refs, dyo, fn, "dy", type)) || !(w = np_float_array(refs, wo, fn, "weight", type)) ||
        !(rstd = np_float_array(refs, ro, fn, "rstd", type)))
        return NULL;
    NP_RULE(tpt_check_phases, "x", np_shape(x), n_phases);
    NP_RULE(tpt_check_same_shape, "dy", np_shape(dy), "x", np_shape(x));
    npy_intp D = PyArray_DIM(x, PyArray_NDIM(x) - 1);
    const npy_intp M = D ? PyArray_SIZE(x) / D : 0;
    NP_RULE(tpt_check_vector, "weight", np_shape(w), D);
    NP_RULE(tpt_check_numel, "rstd", PyArray_SIZE(rstd), M * n_phases);
    const npy_intp n_blocks = tpt_num_row_blocks(M), partial_dims[2] = {n_blocks, D};
    PyArrayObject *dx = np_new_like(refs, x), *dw = np_zeros(refs, 1, &D, type);
    PyArrayObject* partials = np_zeros(refs, 2, partial_dims, type);
    if (!dx || !dw || !partials) return NULL;
    const tpt_dtype dt = np_dtype(x);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, phase_rmsnorm_backward, PyArray_DATA(dx), PyArray_DATA(partials), PyArray_DATA(dy),
                             PyArray_DATA(x), PyArray_DATA(w), PyArray_DATA(rstd), dt, 0, n_blocks, M, D, n_phases);
    if (status == TPT_OK) np_sum_partials(dw, partials, n_blocks, D);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("OO", dx, dw);
}
