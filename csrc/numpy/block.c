/* NumPy face of the fused block ops (csrc/cpu/block.h); theta=None is add_norm. */
#include "face.h"
#include "cpu/block.h"

/* add_rotate_norm's theta ([D/N/2], cast to `type`) in *theta, or NULL for
 * theta=None (add_norm). -1 with the exception set on bad input. */
static int optional_theta(np_refs* refs, PyObject* obj, const char* fn, int type, npy_intp D, long long n_phases,
                          PyArrayObject** theta) {
    *theta = NULL;
    if (obj == Py_None) return 0;
    if (!(*theta = np_float_array(refs, obj, fn, "theta", type))) return -1;
    char msg[TPT_MSG_SIZE];
    if (tpt_check_even_phase_width(msg, D, n_phases) ||
        tpt_check_vector(msg, "theta", np_shape(*theta), D / n_phases / 2)) {
        np_raise(PyExc_ValueError, fn, msg);
        return -1;
    }
    return 0;
}

NP_FUNCTION(add_rotate_norm_forward) {
    static char* names[] = {"h", "a", "theta", "weight", "n_phases", "eps", NULL};
    const char* fn = "add_rotate_norm_forward";
    PyObject *ho, *ao, *to, *wo;
    long long n_phases = 1;
    double eps = 1e-6;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOL|d", names, &ho, &ao, &to, &wo, &n_phases, &eps)) return NULL;
    PyArrayObject *h, *a, *w;
    if (!(h = np_float_array(refs, ho, fn, "h", NPY_NOTYPE)) || !(a = np_float_array(refs, ao, fn, "a", NPY_NOTYPE)))
        return NULL;
    const int type = PyArray_TYPE(h);
    char h_name[64], a_name[64];
    NP_DTYPE_RULE(tpt_check_same_precision, "h", np_dtype_name(h, h_name), type == NPY_DOUBLE, "a",
                  np_dtype_name(a, a_name), PyArray_TYPE(a) == NPY_DOUBLE);
    if (!(w = np_float_array(refs, wo, fn, "weight", type))) return NULL;
    NP_RULE(tpt_check_same_shape, "a", np_shape(a), "h", np_shape(h));
    NP_RULE(tpt_check_phases, "h", np_shape(h), n_phases);
    NP_RULE(tpt_check_eps, eps);
    const npy_intp D = PyArray_DIM(h, PyArray_NDIM(h) - 1), M = D ? PyArray_SIZE(h) / D : 0;
    NP_RULE(tpt_check_vector, "weight", np_shape(w), D);
    PyArrayObject* theta;
    if (optional_theta(refs, to, fn, type, D, n_phases, &theta)) return NULL;
    npy_intp rstd_dims[NPY_MAXDIMS];
    np_dims_with_last(rstd_dims, h, n_phases);
    PyArrayObject *h_new = np_new_like(refs, h), *normed = np_new_like(refs, h);
    PyArrayObject* rstd = np_zeros(refs, PyArray_NDIM(h), rstd_dims, type);
    if (!h_new || !normed || !rstd) return NULL;
    void* th = theta ? PyArray_DATA(theta) : NULL;
    const tpt_dtype dt = np_dtype(h);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, add_rotate_norm_forward, PyArray_DATA(h_new), PyArray_DATA(normed),
                             PyArray_DATA(rstd), PyArray_DATA(h), dt, PyArray_DATA(a), dt, th, PyArray_DATA(w), 0, M,
                             D, n_phases, eps);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("OOO", h_new, normed, rstd);
}

NP_FUNCTION(add_rotate_norm_backward) {
    static char* names[] = {"dh_new", "dnormed", "h_new", "theta", "weight", "rstd", "n_phases", NULL};
    const char* fn = "add_rotate_norm_backward";
    PyObject *dho, *dno, *ho, *to, *wo, *ro;
    long long n_phases = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOL", names, &dho, &dno, &ho, &to, &wo, &ro, &n_phases))
        return NULL;
    PyArrayObject *h, *dh, *dn, *w, *rstd;
    if (!(h = np_float_array(refs, ho, fn, "h_new", NPY_NOTYPE))) return NULL;
    const int type = PyArray_TYPE(h);
    if (!(dh = np_float_array(refs, dho, fn, "dh_new", type)) || !(dn = np_float_array(refs, dno, fn, "dnormed", type)) ||
        !(w = np_float_array(refs, wo, fn, "weight", type)) || !(rstd = np_float_array(refs, ro, fn, "rstd", type)))
        return NULL;
    NP_RULE(tpt_check_same_shape, "dh_new", np_shape(dh), "h_new", np_shape(h));
    NP_RULE(tpt_check_phases, "h_new", np_shape(h), n_phases);
    NP_RULE(tpt_check_same_shape, "dnormed", np_shape(dn), "h_new", np_shape(h));
    npy_intp D = PyArray_DIM(h, PyArray_NDIM(h) - 1);
    const npy_intp M = D ? PyArray_SIZE(h) / D : 0;
    NP_RULE(tpt_check_vector, "weight", np_shape(w), D);
    PyArrayObject* theta;
    if (optional_theta(refs, to, fn, type, D, n_phases, &theta)) return NULL;
    NP_RULE(tpt_check_numel, "rstd", PyArray_SIZE(rstd), M * n_phases);
    npy_intp H = theta ? D / n_phases / 2 : 0;
    const npy_intp n_blocks = tpt_num_row_blocks(M), w_dims[2] = {n_blocks, D}, th_dims[2] = {n_blocks, H};
    PyArrayObject *dsum = np_new_like(refs, h), *dw = np_zeros(refs, 1, &D, type), *dtheta = np_zeros(refs, 1, &H, type);
    PyArrayObject *dw_partials = np_zeros(refs, 2, w_dims, type), *dth_partials = np_zeros(refs, 2, th_dims, type);
    if (!dsum || !dw || !dtheta || !dw_partials || !dth_partials) return NULL;
    void* th = theta ? PyArray_DATA(theta) : NULL;
    const tpt_dtype dt = np_dtype(h);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, add_rotate_norm_backward, PyArray_DATA(dsum), PyArray_DATA(dth_partials),
                             PyArray_DATA(dw_partials), PyArray_DATA(dh), PyArray_DATA(dn), PyArray_DATA(h), th,
                             PyArray_DATA(w), PyArray_DATA(rstd), dt, 0, n_blocks, M, D, n_phases);
    if (status == TPT_OK) {
        np_sum_partials(dw, dw_partials, n_blocks, D);
        np_sum_partials(dtheta, dth_partials, n_blocks, H);
    }
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("OOO", dsum, theta ? (PyObject*)dtheta : Py_None, dw);
}
