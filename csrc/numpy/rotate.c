/* NumPy face of the Givens phase rotation (csrc/cpu/rotate.h). */
#include "face.h"
#include "cpu/rotate.h"

NP_FUNCTION(phase_rotate_forward) {
    static char* names[] = {"x", "theta", "n_phases", NULL};
    const char* fn = "phase_rotate_forward";
    PyObject *xo, *to;
    long long n_phases = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOL", names, &xo, &to, &n_phases)) return NULL;
    PyArrayObject *x, *theta;
    if (!(x = np_float_array(refs, xo, fn, "x", NPY_NOTYPE)) ||
        !(theta = np_float_array(refs, to, fn, "theta", PyArray_TYPE(x))))
        return NULL;
    NP_RULE(tpt_check_phases, "x", np_shape(x), n_phases);
    const npy_intp D = PyArray_DIM(x, PyArray_NDIM(x) - 1), M = D ? PyArray_SIZE(x) / D : 0;
    NP_RULE(tpt_check_even_phase_width, D, n_phases);
    NP_RULE(tpt_check_vector, "theta", np_shape(theta), D / n_phases / 2);
    PyArrayObject* y = np_new_like(refs, x);
    if (!y) return NULL;
    const tpt_dtype dt = np_dtype(x);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, phase_rotate_forward, PyArray_DATA(y), PyArray_DATA(x), PyArray_DATA(theta), dt, 0,
                             M, D, n_phases);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("O", y);
}

NP_FUNCTION(phase_rotate_backward) {
    static char* names[] = {"dy", "y", "theta", "n_phases", NULL};
    const char* fn = "phase_rotate_backward";
    PyObject *dyo, *yo, *to;
    long long n_phases = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOL", names, &dyo, &yo, &to, &n_phases)) return NULL;
    PyArrayObject *y, *dy, *theta;
    if (!(y = np_float_array(refs, yo, fn, "y", NPY_NOTYPE))) return NULL;
    const int type = PyArray_TYPE(y);
    if (!(dy = np_float_array(refs, dyo, fn, "dy", type)) || !(theta = np_float_array(refs, to, fn, "theta", type)))
        return NULL;
    NP_RULE(tpt_check_phases, "y", np_shape(y), n_phases);
    const npy_intp D = PyArray_DIM(y, PyArray_NDIM(y) - 1), M = D ? PyArray_SIZE(y) / D : 0;
    NP_RULE(tpt_check_even_phase_width, D, n_phases);
    NP_RULE(tpt_check_same_shape, "dy", np_shape(dy), "y", np_shape(y));
    npy_intp H = D / n_phases / 2;
    NP_RULE(tpt_check_vector, "theta", np_shape(theta), H);
    const npy_intp n_blocks = tpt_num_row_blocks(M), partial_dims[2] = {n_blocks, H};
    PyArrayObject *dx = np_new_like(refs, y), *dtheta = np_zeros(refs, 1, &H, type);
    PyArrayObject* partials = np_zeros(refs, 2, partial_dims, type);
    if (!dx || !dtheta || !partials) return NULL;
    const tpt_dtype dt = np_dtype(y);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, phase_rotate_backward, PyArray_DATA(dx), PyArray_DATA(partials), PyArray_DATA(dy),
                             PyArray_DATA(y), PyArray_DATA(theta), dt, 0, n_blocks, M, D, n_phases);
    if (status == TPT_OK) np_sum_partials(dtheta, partials, n_blocks, H);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("OO", dx, dtheta);
}
