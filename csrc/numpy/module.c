/* tpt_ops._np: the C kernels of csrc/cpu on NumPy arrays (pure C, NumPy C API).
 *
 * Each function takes C-contiguous-able float32 or float64 arrays (other
 * parameters are cast to the input's dtype), runs the same kernels as the
 * torch ops on one thread with the GIL released, and returns new arrays.
 * Wrong dtypes raise TypeError, wrong shapes ValueError, naming the function
 * and the argument. Wrapped with docs by tpt_ops/numpy.py. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>

#include "cpu/block.h"
#include "cpu/horn.h"
#include "cpu/norm.h"
#include "cpu/rope.h"
#include "cpu/rotate.h"
#include "cpu/swiglu.h"

/* ---- argument helpers ---------------------------------------------------- */

/* A new reference to obj as a C-contiguous float array. type: NPY_NOTYPE
 * accepts float32 or float64 as they are; NPY_FLOAT/NPY_DOUBLE casts a float
 * array to that type. NULL with TypeError otherwise. */
static PyArrayObject* float_array(PyObject* obj, const char* fn, const char* arg, int type) {
    PyArrayObject* probe = (PyArrayObject*)PyArray_FROM_OF(obj, 0);
    if (!probe) return NULL;
    int actual = PyArray_TYPE(probe);
    Py_DECREF(probe);
    if (actual != NPY_FLOAT && actual != NPY_DOUBLE) {
        PyErr_Format(PyExc_TypeError, "tpt_ops.numpy.%s: argument '%s' must be float32 or float64, got %s",
                     fn, arg, PyArray_DescrFromType(actual)->typeobj->tp_name);
        return NULL;
    }
    return (PyArrayObject*)PyArray_FROM_OTF(obj, type == NPY_NOTYPE ? actual : type,
                                            NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
}

/* Rows M and width D of x (>= 1 dims), with D divisible by n_phases. */
static int phase_shape(PyArrayObject* x, long n_phases, const char* fn, npy_intp* M, npy_intp* D) {
    if (PyArray_NDIM(x) < 1) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument 'x' must have at least 1 dimension", fn);
        return -1;
    }
    if (n_phases < 1) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: n_phases must be >= 1, got %ld", fn, n_phases);
        return -1;
    }
    *D = PyArray_DIM(x, PyArray_NDIM(x) - 1);
    if (*D % n_phases) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: the last dim of 'x' (D=%ld) is not divisible by n_phases=%ld",
                     fn, (long)*D, n_phases);
        return -1;
    }
    *M = *D ? PyArray_SIZE(x) / *D : 0;
    return 0;
}

static int check_length(PyArrayObject* a, npy_intp length, const char* fn, const char* arg) {
    if (PyArray_NDIM(a) != 1 || PyArray_DIM(a, 0) != length) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument '%s' must have shape (%ld,)", fn, arg, (long)length);
        return -1;
    }
    return 0;
}

static int check_same_shape(PyArrayObject* a, PyArrayObject* x, const char* fn, const char* arg, const char* x_name) {
    if (!PyArray_SAMESHAPE(a, x)) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument '%s' must have the shape of '%s'", fn, arg, x_name);
        return -1;
    }
    return 0;
}

static PyArrayObject* new_like(PyArrayObject* x) {
    return (PyArrayObject*)PyArray_NewLikeArray(x, NPY_CORDER, NULL, 0);
}

static PyArrayObject* new_array(int nd, npy_intp* dims, int type) {
    return (PyArrayObject*)PyArray_ZEROS(nd, dims, type, 0);
}

/* Sums the [n_blocks, n] partials of a row reduction into out, in block order. */
static void sum_partials(PyArrayObject* out, PyArrayObject* partials, npy_intp n_blocks, npy_intp n) {
    if (PyArray_TYPE(out) == NPY_DOUBLE)
        tpt_sum_partials_f64(PyArray_DATA(out), PyArray_DATA(partials), n_blocks, n, 0, n);
    else
        tpt_sum_partials_f32(PyArray_DATA(out), PyArray_DATA(partials), n_blocks, n, 0, n);
}

static PyObject* kernel_status(int status, const char* fn) {
    if (status == TPT_OK) return Py_None;
    PyErr_Format(PyExc_MemoryError, "tpt_ops.numpy.%s: out of memory", fn);
    return NULL;
}

#define DT(arr) (PyArray_TYPE(arr) == NPY_DOUBLE ? TPT_FLOAT64 : TPT_FLOAT32)

/* ---- per-phase RMSNorm (csrc/cpu/norm.h) ---------------------------------- */

static PyObject* np_phase_rmsnorm_forward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"x", "weight", "n_phases", "eps", NULL};
    const char* fn = "phase_rmsnorm_forward";
    PyObject *xo, *wo;
    long n_phases = 1;
    double eps = 1e-6;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|ld", names, &xo, &wo, &n_phases, &eps)) return NULL;
    PyArrayObject *x = NULL, *w = NULL, *y = NULL, *rstd = NULL;
    PyObject* result = NULL;
    npy_intp M, D;
    if (!(x = float_array(xo, fn, "x", NPY_NOTYPE))) goto done;
    if (!(w = float_array(wo, fn, "weight", PyArray_TYPE(x)))) goto done;
    if (phase_shape(x, n_phases, fn, &M, &D) || check_length(w, D, fn, "weight")) goto done;
    npy_intp rstd_dims[NPY_MAXDIMS];
    for (int d = 0; d < PyArray_NDIM(x); d++) rstd_dims[d] = PyArray_DIM(x, d);
    rstd_dims[PyArray_NDIM(x) - 1] = n_phases;
    if (!(y = new_like(x)) || !(rstd = new_array(PyArray_NDIM(x), rstd_dims, PyArray_TYPE(x)))) goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = DT(x) == TPT_FLOAT64
        ? phase_rmsnorm_forward_f64(PyArray_DATA(y), PyArray_DATA(rstd), PyArray_DATA(x), PyArray_DATA(w), TPT_FLOAT64, 0, M, D, n_phases, eps)
        : phase_rmsnorm_forward_f32(PyArray_DATA(y), PyArray_DATA(rstd), PyArray_DATA(x), PyArray_DATA(w), TPT_FLOAT32, 0, M, D, n_phases, eps);
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) result = Py_BuildValue("OO", y, rstd);
done:
    Py_XDECREF(x); Py_XDECREF(w); Py_XDECREF(y); Py_XDECREF(rstd);
    return result;
}

static PyObject* np_phase_rmsnorm_backward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"dy", "x", "weight", "rstd", "n_phases", NULL};
    const char* fn = "phase_rmsnorm_backward";
    PyObject *dyo, *xo, *wo, *ro;
    long n_phases = 1;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|l", names, &dyo, &xo, &wo, &ro, &n_phases)) return NULL;
    PyArrayObject *dy = NULL, *x = NULL, *w = NULL, *rstd = NULL, *dx = NULL, *dw = NULL, *partials = NULL;
    PyObject* result = NULL;
    npy_intp M, D;
    if (!(x = float_array(xo, fn, "x", NPY_NOTYPE))) goto done;
    const int type = PyArray_TYPE(x);
    if (!(dy = float_array(dyo, fn, "dy", type)) || !(w = float_array(wo, fn, "weight", type)) ||
        !(rstd = float_array(ro, fn, "rstd", type)))
        goto done;
    if (phase_shape(x, n_phases, fn, &M, &D) || check_length(w, D, fn, "weight") ||
        check_same_shape(dy, x, fn, "dy", "x"))
        goto done;
    if (PyArray_SIZE(rstd) != M * n_phases) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument 'rstd' must have %ld elements", fn, (long)(M * n_phases));
        goto done;
    }
    npy_intp n_blocks = tpt_num_row_blocks(M);
    npy_intp pdims[2] = {n_blocks, D};
    if (!(dx = new_like(x)) || !(dw = new_array(1, &D, type)) || !(partials = new_array(2, pdims, type))) goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = type == NPY_DOUBLE
        ? phase_rmsnorm_backward_f64(PyArray_DATA(dx), PyArray_DATA(partials), PyArray_DATA(dy), PyArray_DATA(x),
                                     PyArray_DATA(w), PyArray_DATA(rstd), TPT_FLOAT64, 0, n_blocks, M, D, n_phases)
        : phase_rmsnorm_backward_f32(PyArray_DATA(dx), PyArray_DATA(partials), PyArray_DATA(dy), PyArray_DATA(x),
                                     PyArray_DATA(w), PyArray_DATA(rstd), TPT_FLOAT32, 0, n_blocks, M, D, n_phases);
    if (status == TPT_OK) sum_partials(dw, partials, n_blocks, D);
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) result = Py_BuildValue("OO", dx, dw);
done:
    Py_XDECREF(dy); Py_XDECREF(x); Py_XDECREF(w); Py_XDECREF(rstd);
    Py_XDECREF(dx); Py_XDECREF(dw); Py_XDECREF(partials);
    return result;
}

/* ---- Givens phase rotation (csrc/cpu/rotate.h) ---------------------------- */

/* Phase width P = D / n_phases must be even; theta has P/2 entries. */
static int check_pairs(npy_intp D, long n_phases, const char* fn) {
    if ((D / n_phases) % 2) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: the phase width P=%ld is odd; the rotation needs channel pairs",
                     fn, (long)(D / n_phases));
        return -1;
    }
    return 0;
}

static PyObject* np_phase_rotate_forward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"x", "theta", "n_phases", NULL};
    const char* fn = "phase_rotate_forward";
    PyObject *xo, *to;
    long n_phases = 1;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOl", names, &xo, &to, &n_phases)) return NULL;
    PyArrayObject *x = NULL, *theta = NULL, *y = NULL;
    PyObject* result = NULL;
    npy_intp M, D;
    if (!(x = float_array(xo, fn, "x", NPY_NOTYPE)) || !(theta = float_array(to, fn, "theta", PyArray_TYPE(x)))) goto done;
    if (phase_shape(x, n_phases, fn, &M, &D) || check_pairs(D, n_phases, fn) ||
        check_length(theta, D / n_phases / 2, fn, "theta"))
        goto done;
    if (!(y = new_like(x))) goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = DT(x) == TPT_FLOAT64
        ? phase_rotate_forward_f64(PyArray_DATA(y), PyArray_DATA(x), PyArray_DATA(theta), TPT_FLOAT64, 0, M, D, n_phases)
        : phase_rotate_forward_f32(PyArray_DATA(y), PyArray_DATA(x), PyArray_DATA(theta), TPT_FLOAT32, 0, M, D, n_phases);
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) result = Py_BuildValue("O", y);
done:
    Py_XDECREF(x); Py_XDECREF(theta); Py_XDECREF(y);
    return result;
}

static PyObject* np_phase_rotate_backward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"dy", "y", "theta", "n_phases", NULL};
    const char* fn = "phase_rotate_backward";
    PyObject *dyo, *yo, *to;
    long n_phases = 1;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOl", names, &dyo, &yo, &to, &n_phases)) return NULL;
    PyArrayObject *dy = NULL, *y = NULL, *theta = NULL, *dx = NULL, *dtheta = NULL, *partials = NULL;
    PyObject* result = NULL;
    npy_intp M, D;
    if (!(y = float_array(yo, fn, "y", NPY_NOTYPE))) goto done;
    const int type = PyArray_TYPE(y);
    if (!(dy = float_array(dyo, fn, "dy", type)) || !(theta = float_array(to, fn, "theta", type))) goto done;
    if (phase_shape(y, n_phases, fn, &M, &D) || check_pairs(D, n_phases, fn) ||
        check_length(theta, D / n_phases / 2, fn, "theta") || check_same_shape(dy, y, fn, "dy", "y"))
        goto done;
    npy_intp H = D / n_phases / 2, n_blocks = tpt_num_row_blocks(M);
    npy_intp pdims[2] = {n_blocks, H};
    if (!(dx = new_like(y)) || !(dtheta = new_array(1, &H, type)) || !(partials = new_array(2, pdims, type))) goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = type == NPY_DOUBLE
        ? phase_rotate_backward_f64(PyArray_DATA(dx), PyArray_DATA(partials), PyArray_DATA(dy), PyArray_DATA(y),
                                    PyArray_DATA(theta), TPT_FLOAT64, 0, n_blocks, M, D, n_phases)
        : phase_rotate_backward_f32(PyArray_DATA(dx), PyArray_DATA(partials), PyArray_DATA(dy), PyArray_DATA(y),
                                    PyArray_DATA(theta), TPT_FLOAT32, 0, n_blocks, M, D, n_phases);
    if (status == TPT_OK) sum_partials(dtheta, partials, n_blocks, H);
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) result = Py_BuildValue("OO", dx, dtheta);
done:
    Py_XDECREF(dy); Py_XDECREF(y); Py_XDECREF(theta); Py_XDECREF(dx); Py_XDECREF(dtheta); Py_XDECREF(partials);
    return result;
}

/* ---- fused block ops (csrc/cpu/block.h); theta=None is add_norm ----------- */

static PyObject* np_add_rotate_norm_forward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"h", "a", "theta", "weight", "n_phases", "eps", NULL};
    const char* fn = "add_rotate_norm_forward";
    PyObject *ho, *ao, *to, *wo;
    long n_phases = 1;
    double eps = 1e-6;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOl|d", names, &ho, &ao, &to, &wo, &n_phases, &eps)) return NULL;
    PyArrayObject *h = NULL, *a = NULL, *theta = NULL, *w = NULL, *h_new = NULL, *normed = NULL, *rstd = NULL;
    PyObject* result = NULL;
    npy_intp M, D;
    if (!(h = float_array(ho, fn, "h", NPY_NOTYPE))) goto done;
    const int type = PyArray_TYPE(h);
    if (!(a = float_array(ao, fn, "a", type)) || !(w = float_array(wo, fn, "weight", type))) goto done;
    if (to != Py_None && !(theta = float_array(to, fn, "theta", type))) goto done;
    if (phase_shape(h, n_phases, fn, &M, &D) || check_length(w, D, fn, "weight") || check_same_shape(a, h, fn, "a", "h"))
        goto done;
    if (theta && (check_pairs(D, n_phases, fn) || check_length(theta, D / n_phases / 2, fn, "theta"))) goto done;
    npy_intp rstd_dims[NPY_MAXDIMS];
    for (int d = 0; d < PyArray_NDIM(h); d++) rstd_dims[d] = PyArray_DIM(h, d);
    rstd_dims[PyArray_NDIM(h) - 1] = n_phases;
    if (!(h_new = new_like(h)) || !(normed = new_like(h)) || !(rstd = new_array(PyArray_NDIM(h), rstd_dims, type)))
        goto done;
    void* th = theta ? PyArray_DATA(theta) : NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = type == NPY_DOUBLE
        ? add_rotate_norm_forward_f64(PyArray_DATA(h_new), PyArray_DATA(normed), PyArray_DATA(rstd), PyArray_DATA(h),
                                      TPT_FLOAT64, PyArray_DATA(a), TPT_FLOAT64, th, PyArray_DATA(w), 0, M, D, n_phases, eps)
        : add_rotate_norm_forward_f32(PyArray_DATA(h_new), PyArray_DATA(normed), PyArray_DATA(rstd), PyArray_DATA(h),
                                      TPT_FLOAT32, PyArray_DATA(a), TPT_FLOAT32, th, PyArray_DATA(w), 0, M, D, n_phases, eps);
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) result = Py_BuildValue("OOO", h_new, normed, rstd);
done:
    Py_XDECREF(h); Py_XDECREF(a); Py_XDECREF(theta); Py_XDECREF(w);
    Py_XDECREF(h_new); Py_XDECREF(normed); Py_XDECREF(rstd);
    return result;
}

static PyObject* np_add_rotate_norm_backward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"dh_new", "dnormed", "h_new", "theta", "weight", "rstd", "n_phases", NULL};
    const char* fn = "add_rotate_norm_backward";
    PyObject *dho, *dno, *ho, *to, *wo, *ro;
    long n_phases = 1;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOl", names, &dho, &dno, &ho, &to, &wo, &ro, &n_phases)) return NULL;
    PyArrayObject *dh = NULL, *dn = NULL, *h = NULL, *theta = NULL, *w = NULL, *rstd = NULL;
    PyArrayObject *dsum = NULL, *dtheta = NULL, *dw = NULL, *dth_partials = NULL, *dw_partials = NULL;
    PyObject* result = NULL;
    npy_intp M, D;
    if (!(h = float_array(ho, fn, "h_new", NPY_NOTYPE))) goto done;
    const int type = PyArray_TYPE(h);
    if (!(dh = float_array(dho, fn, "dh_new", type)) || !(dn = float_array(dno, fn, "dnormed", type)) ||
        !(w = float_array(wo, fn, "weight", type)) || !(rstd = float_array(ro, fn, "rstd", type)))
        goto done;
    if (to != Py_None && !(theta = float_array(to, fn, "theta", type))) goto done;
    if (phase_shape(h, n_phases, fn, &M, &D) || check_length(w, D, fn, "weight") ||
        check_same_shape(dh, h, fn, "dh_new", "h_new") || check_same_shape(dn, h, fn, "dnormed", "h_new"))
        goto done;
    if (theta && (check_pairs(D, n_phases, fn) || check_length(theta, D / n_phases / 2, fn, "theta"))) goto done;
    if (PyArray_SIZE(rstd) != M * n_phases) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument 'rstd' must have %ld elements", fn, (long)(M * n_phases));
        goto done;
    }
    npy_intp H = theta ? D / n_phases / 2 : 0, n_blocks = tpt_num_row_blocks(M);
    npy_intp wdims[2] = {n_blocks, D}, tdims[2] = {n_blocks, H};
    if (!(dsum = new_like(h)) || !(dw = new_array(1, &D, type)) || !(dtheta = new_array(1, &H, type)) ||
        !(dw_partials = new_array(2, wdims, type)) || !(dth_partials = new_array(2, tdims, type)))
        goto done;
    void* th = theta ? PyArray_DATA(theta) : NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = type == NPY_DOUBLE
        ? add_rotate_norm_backward_f64(PyArray_DATA(dsum), PyArray_DATA(dth_partials), PyArray_DATA(dw_partials),
                                       PyArray_DATA(dh), PyArray_DATA(dn), PyArray_DATA(h), th, PyArray_DATA(w),
                                       PyArray_DATA(rstd), TPT_FLOAT64, 0, n_blocks, M, D, n_phases)
        : add_rotate_norm_backward_f32(PyArray_DATA(dsum), PyArray_DATA(dth_partials), PyArray_DATA(dw_partials),
                                       PyArray_DATA(dh), PyArray_DATA(dn), PyArray_DATA(h), th, PyArray_DATA(w),
                                       PyArray_DATA(rstd), TPT_FLOAT32, 0, n_blocks, M, D, n_phases);
    if (status == TPT_OK) {
        sum_partials(dw, dw_partials, n_blocks, D);
        sum_partials(dtheta, dth_partials, n_blocks, H);
    }
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) {
        if (theta) result = Py_BuildValue("OOO", dsum, dtheta, dw);
        else result = Py_BuildValue("OOO", dsum, Py_None, dw);
    }
done:
    Py_XDECREF(dh); Py_XDECREF(dn); Py_XDECREF(h); Py_XDECREF(theta); Py_XDECREF(w); Py_XDECREF(rstd);
    Py_XDECREF(dsum); Py_XDECREF(dtheta); Py_XDECREF(dw); Py_XDECREF(dth_partials); Py_XDECREF(dw_partials);
    return result;
}

/* ---- Gabriel's-horn injection (csrc/cpu/horn.h) --------------------------- */

static int check_offset(long offset, const char* fn) {
    if (offset < 0) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: offset must be >= 0, got %ld", fn, offset);
        return -1;
    }
    return 0;
}

static PyObject* np_horn_inject_forward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"x", "n_phases", "offset", NULL};
    const char* fn = "horn_inject_forward";
    PyObject* xo;
    long n_phases = 1, offset = 0;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Ol|l", names, &xo, &n_phases, &offset)) return NULL;
    PyArrayObject *x = NULL, *y = NULL;
    PyObject* result = NULL;
    npy_intp M, D;
    if (!(x = float_array(xo, fn, "x", NPY_NOTYPE))) goto done;
    if (PyArray_NDIM(x) < 2) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument 'x' must be [..., T, D] (at least 2 dims)", fn);
        goto done;
    }
    if (phase_shape(x, n_phases, fn, &M, &D) || check_offset(offset, fn) || !(y = new_like(x))) goto done;
    const npy_intp T = PyArray_DIM(x, PyArray_NDIM(x) - 2);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = DT(x) == TPT_FLOAT64
        ? horn_inject_forward_f64(PyArray_DATA(y), PyArray_DATA(x), TPT_FLOAT64, 0, M, T, D, offset)
        : horn_inject_forward_f32(PyArray_DATA(y), PyArray_DATA(x), TPT_FLOAT32, 0, M, T, D, offset);
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) result = Py_BuildValue("O", y);
done:
    Py_XDECREF(x); Py_XDECREF(y);
    return result;
}

static PyObject* np_horn_inject_backward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"dy", "n_phases", NULL};
    const char* fn = "horn_inject_backward";
    PyObject* dyo;
    long n_phases = 1;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Ol", names, &dyo, &n_phases)) return NULL;
    PyArrayObject *dy = NULL, *dx = NULL;
    PyObject* result = NULL;
    npy_intp M, D;
    if (!(dy = float_array(dyo, fn, "dy", NPY_NOTYPE)) || phase_shape(dy, n_phases, fn, &M, &D) || !(dx = new_like(dy)))
        goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = DT(dy) == TPT_FLOAT64 ? horn_inject_backward_f64(PyArray_DATA(dx), PyArray_DATA(dy), TPT_FLOAT64, 0, M, D)
                                   : horn_inject_backward_f32(PyArray_DATA(dx), PyArray_DATA(dy), TPT_FLOAT32, 0, M, D);
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) result = Py_BuildValue("O", dx);
done:
    Py_XDECREF(dy); Py_XDECREF(dx);
    return result;
}

/* ids as a C-contiguous int64 array of 1 or 2 dims, all in [0, V). */
static PyArrayObject* ids_array(PyObject* obj, npy_intp V, const char* fn) {
    PyArrayObject* probe = (PyArrayObject*)PyArray_FROM_OF(obj, 0);
    if (!probe) return NULL;
    const int is_int = PyArray_ISINTEGER(probe), nd = PyArray_NDIM(probe);
    Py_DECREF(probe);
    if (!is_int) {
        PyErr_Format(PyExc_TypeError, "tpt_ops.numpy.%s: argument 'ids' must be an integer array", fn);
        return NULL;
    }
    if (nd != 1 && nd != 2) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument 'ids' must be [T] or [B, T]", fn);
        return NULL;
    }
    PyArrayObject* ids = (PyArrayObject*)PyArray_FROM_OTF(obj, NPY_INT64, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
    if (!ids) return NULL;
    const int64_t* p = PyArray_DATA(ids);
    const int64_t bad = horn_first_bad_id(p, PyArray_SIZE(ids), V);
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument 'ids' holds %lld at flat index %lld, out of range for a table of %ld rows",
                     fn, (long long)p[bad], (long long)bad, (long)V);
        Py_DECREF(ids);
        return NULL;
    }
    return ids;
}

static PyObject* np_horn_embedding_forward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"ids", "table", "n_phases", "offset", NULL};
    const char* fn = "horn_embedding_forward";
    PyObject *io, *to;
    long n_phases = 1, offset = 0;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOl|l", names, &io, &to, &n_phases, &offset)) return NULL;
    PyArrayObject *ids = NULL, *table = NULL, *y = NULL;
    PyObject* result = NULL;
    npy_intp V, D;
    if (!(table = float_array(to, fn, "table", NPY_NOTYPE))) goto done;
    if (PyArray_NDIM(table) != 2) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument 'table' must be [V, D]", fn);
        goto done;
    }
    if (phase_shape(table, n_phases, fn, &V, &D) || check_offset(offset, fn)) goto done;
    V = PyArray_DIM(table, 0);
    if (!(ids = ids_array(io, V, fn))) goto done;
    npy_intp dims[3];
    for (int d = 0; d < PyArray_NDIM(ids); d++) dims[d] = PyArray_DIM(ids, d);
    dims[PyArray_NDIM(ids)] = D;
    if (!(y = new_array(PyArray_NDIM(ids) + 1, dims, PyArray_TYPE(table)))) goto done;
    const npy_intp M = PyArray_SIZE(ids), T = PyArray_DIM(ids, PyArray_NDIM(ids) - 1);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = DT(table) == TPT_FLOAT64
        ? horn_embedding_forward_f64(PyArray_DATA(y), PyArray_DATA(ids), PyArray_DATA(table), TPT_FLOAT64, 0, M, T, D, offset)
        : horn_embedding_forward_f32(PyArray_DATA(y), PyArray_DATA(ids), PyArray_DATA(table), TPT_FLOAT32, 0, M, T, D, offset);
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) result = Py_BuildValue("O", y);
done:
    Py_XDECREF(ids); Py_XDECREF(table); Py_XDECREF(y);
    return result;
}

static PyObject* np_horn_embedding_backward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"dy", "ids", "vocab_size", "n_phases", NULL};
    const char* fn = "horn_embedding_backward";
    PyObject *dyo, *io;
    long vocab_size = 0, n_phases = 1;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOll", names, &dyo, &io, &vocab_size, &n_phases)) return NULL;
    PyArrayObject *dy = NULL, *ids = NULL, *dtable = NULL, *order = NULL, *offsets = NULL;
    PyObject* result = NULL;
    npy_intp M, D;
    if (vocab_size < 0) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: vocab_size must be >= 0", fn);
        return NULL;
    }
    if (!(dy = float_array(dyo, fn, "dy", NPY_NOTYPE)) || phase_shape(dy, n_phases, fn, &M, &D) ||
        !(ids = ids_array(io, vocab_size, fn)))
        goto done;
    if (PyArray_SIZE(ids) != M) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument 'dy' must have the shape of ids plus [D]", fn);
        goto done;
    }
    npy_intp dims[2] = {vocab_size, D}, n_offsets = vocab_size + 1;
    if (!(dtable = new_array(2, dims, PyArray_TYPE(dy))) || !(order = new_array(1, &M, NPY_INT64)) ||
        !(offsets = new_array(1, &n_offsets, NPY_INT64)))
        goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    horn_embedding_group(PyArray_DATA(order), PyArray_DATA(offsets), PyArray_DATA(ids), M, vocab_size);
    status = DT(dy) == TPT_FLOAT64
        ? horn_embedding_backward_f64(PyArray_DATA(dtable), PyArray_DATA(dy), PyArray_DATA(order), PyArray_DATA(offsets),
                                      TPT_FLOAT64, 0, vocab_size, D)
        : horn_embedding_backward_f32(PyArray_DATA(dtable), PyArray_DATA(dy), PyArray_DATA(order), PyArray_DATA(offsets),
                                      TPT_FLOAT32, 0, vocab_size, D);
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) result = Py_BuildValue("O", dtable);
done:
    Py_XDECREF(dy); Py_XDECREF(ids); Py_XDECREF(dtable); Py_XDECREF(order); Py_XDECREF(offsets);
    return result;
}

/* ---- fused SwiGLU (csrc/cpu/swiglu.h) -------------------------------------- */

/* Rows M and half-width F of gate_up = [..., 2F] (>= 1 dims, even last dim). */
static int swiglu_shape(PyArrayObject* gate_up, const char* fn, npy_intp* M, npy_intp* F) {
    if (PyArray_NDIM(gate_up) < 1) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument 'gate_up' must have at least 1 dimension", fn);
        return -1;
    }
    const npy_intp D = PyArray_DIM(gate_up, PyArray_NDIM(gate_up) - 1);
    if (D % 2) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: the last dim of 'gate_up' (%ld) must be even", fn, (long)D);
        return -1;
    }
    *F = D / 2;
    *M = D ? PyArray_SIZE(gate_up) / D : 0;
    return 0;
}

static PyObject* np_swiglu_forward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"gate_up", NULL};
    const char* fn = "swiglu_forward";
    PyObject* go;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", names, &go)) return NULL;
    PyArrayObject *gate_up = NULL, *h = NULL;
    PyObject* result = NULL;
    npy_intp M, F;
    if (!(gate_up = float_array(go, fn, "gate_up", NPY_NOTYPE)) || swiglu_shape(gate_up, fn, &M, &F)) goto done;
    npy_intp dims[NPY_MAXDIMS];
    for (int d = 0; d < PyArray_NDIM(gate_up); d++) dims[d] = PyArray_DIM(gate_up, d);
    dims[PyArray_NDIM(gate_up) - 1] = F;
    if (!(h = new_array(PyArray_NDIM(gate_up), dims, PyArray_TYPE(gate_up)))) goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = DT(gate_up) == TPT_FLOAT64
        ? swiglu_forward_f64(PyArray_DATA(h), PyArray_DATA(gate_up), TPT_FLOAT64, 0, M, F)
        : swiglu_forward_f32(PyArray_DATA(h), PyArray_DATA(gate_up), TPT_FLOAT32, 0, M, F);
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) result = Py_BuildValue("O", h);
done:
    Py_XDECREF(gate_up); Py_XDECREF(h);
    return result;
}

static PyObject* np_swiglu_backward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"dh", "gate_up", NULL};
    const char* fn = "swiglu_backward";
    PyObject *dho, *go;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", names, &dho, &go)) return NULL;
    PyArrayObject *dh = NULL, *gate_up = NULL, *d_gate_up = NULL;
    PyObject* result = NULL;
    npy_intp M, F;
    if (!(gate_up = float_array(go, fn, "gate_up", NPY_NOTYPE)) ||
        !(dh = float_array(dho, fn, "dh", PyArray_TYPE(gate_up))) || swiglu_shape(gate_up, fn, &M, &F))
        goto done;
    const int nd = PyArray_NDIM(gate_up);
    int same = PyArray_NDIM(dh) == nd && PyArray_DIM(dh, nd - 1) == F;
    for (int d = 0; same && d < nd - 1; d++) same = PyArray_DIM(dh, d) == PyArray_DIM(gate_up, d);
    if (!same) {
        PyErr_Format(PyExc_ValueError,
                     "tpt_ops.numpy.%s: argument 'dh' must have the shape of 'gate_up' with its last dim halved", fn);
        goto done;
    }
    if (!(d_gate_up = new_like(gate_up))) goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = DT(gate_up) == TPT_FLOAT64
        ? swiglu_backward_f64(PyArray_DATA(d_gate_up), PyArray_DATA(dh), PyArray_DATA(gate_up), TPT_FLOAT64, 0, M, F)
        : swiglu_backward_f32(PyArray_DATA(d_gate_up), PyArray_DATA(dh), PyArray_DATA(gate_up), TPT_FLOAT32, 0, M, F);
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) result = Py_BuildValue("O", d_gate_up);
done:
    Py_XDECREF(dh); Py_XDECREF(gate_up); Py_XDECREF(d_gate_up);
    return result;
}

/* ---- fused qkv split + RoPE (csrc/cpu/rope.h) ------------------------------ */

static int check_head_counts(long H, long Hkv, const char* fn) {
    if (H < 1 || Hkv < 1) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: n_q_heads and n_kv_heads must be >= 1, got %ld and %ld",
                     fn, H, Hkv);
        return -1;
    }
    return 0;
}

static int check_head_dim(npy_intp hd, const char* fn) {
    if (hd % 2) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: head_dim (%ld) is odd; rotate-half RoPE needs an even head_dim",
                     fn, (long)hd);
        return -1;
    }
    return 0;
}

/* cos and sin_signed must both be [T, hd]. */
static int check_tables(PyArrayObject* cos, PyArrayObject* sin, npy_intp T, npy_intp hd, const char* fn) {
    PyArrayObject* tables[2] = {cos, sin};
    const char* names[2] = {"cos", "sin_signed"};
    for (int i = 0; i < 2; i++) {
        if (PyArray_NDIM(tables[i]) != 2 || PyArray_DIM(tables[i], 0) != T || PyArray_DIM(tables[i], 1) != hd) {
            PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument '%s' must have shape (T, head_dim) = (%ld, %ld)",
                         fn, names[i], (long)T, (long)hd);
            return -1;
        }
    }
    return 0;
}

static PyObject* np_qkv_rope_forward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"qkv", "cos", "sin_signed", "n_q_heads", "n_kv_heads", NULL};
    const char* fn = "qkv_rope_forward";
    PyObject *qo, *co, *so;
    long H, Hkv;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOll", names, &qo, &co, &so, &H, &Hkv)) return NULL;
    PyArrayObject *qkv = NULL, *cos = NULL, *sin = NULL, *q = NULL, *k = NULL, *v = NULL;
    PyObject* result = NULL;
    if (!(qkv = float_array(qo, fn, "qkv", NPY_NOTYPE))) goto done;
    const int type = PyArray_TYPE(qkv);
    if (!(cos = float_array(co, fn, "cos", type)) || !(sin = float_array(so, fn, "sin_signed", type))) goto done;
    if (PyArray_NDIM(qkv) != 3) {
        PyErr_Format(PyExc_ValueError,
                     "tpt_ops.numpy.%s: argument 'qkv' must be 3-d (B, T, (n_q_heads + 2*n_kv_heads)*head_dim)", fn);
        goto done;
    }
    if (check_head_counts(H, Hkv, fn)) goto done;
    const npy_intp B = PyArray_DIM(qkv, 0), T = PyArray_DIM(qkv, 1), D = PyArray_DIM(qkv, 2), heads = H + 2 * Hkv;
    if (D % heads) {
        PyErr_Format(PyExc_ValueError,
                     "tpt_ops.numpy.%s: the last dim of 'qkv' (%ld) is not divisible by n_q_heads + 2*n_kv_heads = %ld",
                     fn, (long)D, (long)heads);
        goto done;
    }
    const npy_intp hd = D / heads;
    if (check_head_dim(hd, fn) || check_tables(cos, sin, T, hd, fn)) goto done;
    npy_intp q_dims[4] = {B, H, T, hd}, kv_dims[4] = {B, Hkv, T, hd};
    if (!(q = new_array(4, q_dims, type)) || !(k = new_array(4, kv_dims, type)) || !(v = new_array(4, kv_dims, type)))
        goto done;
    const npy_intp M = hd ? B * T : 0;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = type == NPY_DOUBLE
        ? qkv_rope_forward_f64(PyArray_DATA(q), PyArray_DATA(k), PyArray_DATA(v), PyArray_DATA(qkv), PyArray_DATA(cos),
                               PyArray_DATA(sin), TPT_FLOAT64, 0, M, T, H, Hkv, hd)
        : qkv_rope_forward_f32(PyArray_DATA(q), PyArray_DATA(k), PyArray_DATA(v), PyArray_DATA(qkv), PyArray_DATA(cos),
                               PyArray_DATA(sin), TPT_FLOAT32, 0, M, T, H, Hkv, hd);
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) result = Py_BuildValue("OOO", q, k, v);
done:
    Py_XDECREF(qkv); Py_XDECREF(cos); Py_XDECREF(sin); Py_XDECREF(q); Py_XDECREF(k); Py_XDECREF(v);
    return result;
}

/* Element strides of a (B, heads, T, hd) array (C-contiguous: float_array makes it so). */
static tpt_head_strides head_strides(PyArrayObject* a) {
    const npy_intp item = PyArray_ITEMSIZE(a);
    tpt_head_strides st = {PyArray_STRIDE(a, 0) / item, PyArray_STRIDE(a, 1) / item, PyArray_STRIDE(a, 2) / item};
    return st;
}

static PyObject* np_qkv_rope_backward(PyObject* self, PyObject* args, PyObject* kw) {
    static char* names[] = {"dq", "dk", "dv", "cos", "sin_signed", "n_q_heads", "n_kv_heads", NULL};
    const char* fn = "qkv_rope_backward";
    PyObject *dqo, *dko, *dvo, *co, *so;
    long H, Hkv;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOll", names, &dqo, &dko, &dvo, &co, &so, &H, &Hkv)) return NULL;
    PyArrayObject *dq = NULL, *dk = NULL, *dv = NULL, *cos = NULL, *sin = NULL, *dqkv = NULL;
    PyObject* result = NULL;
    if (!(dq = float_array(dqo, fn, "dq", NPY_NOTYPE))) goto done;
    const int type = PyArray_TYPE(dq);
    if (!(dk = float_array(dko, fn, "dk", type)) || !(dv = float_array(dvo, fn, "dv", type)) ||
        !(cos = float_array(co, fn, "cos", type)) || !(sin = float_array(so, fn, "sin_signed", type)))
        goto done;
    if (check_head_counts(H, Hkv, fn)) goto done;
    if (PyArray_NDIM(dq) != 4 || PyArray_DIM(dq, 1) != H) {
        PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument 'dq' must have shape (B, n_q_heads, T, head_dim)", fn);
        goto done;
    }
    const npy_intp B = PyArray_DIM(dq, 0), T = PyArray_DIM(dq, 2), hd = PyArray_DIM(dq, 3);
    if (check_head_dim(hd, fn)) goto done;
    PyArrayObject* kv[2] = {dk, dv};
    const char* kv_names[2] = {"dk", "dv"};
    for (int i = 0; i < 2; i++) {
        if (PyArray_NDIM(kv[i]) != 4 || PyArray_DIM(kv[i], 0) != B || PyArray_DIM(kv[i], 1) != Hkv ||
            PyArray_DIM(kv[i], 2) != T || PyArray_DIM(kv[i], 3) != hd) {
            PyErr_Format(PyExc_ValueError, "tpt_ops.numpy.%s: argument '%s' must have shape (B, n_kv_heads, T, head_dim)"
                         " = (%ld, %ld, %ld, %ld)", fn, kv_names[i], (long)B, Hkv, (long)T, (long)hd);
            goto done;
        }
    }
    if (check_tables(cos, sin, T, hd, fn)) goto done;
    npy_intp dims[3] = {B, T, (H + 2 * Hkv) * hd};
    if (!(dqkv = new_array(3, dims, type))) goto done;
    const npy_intp M = hd ? B * T : 0;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = type == NPY_DOUBLE
        ? qkv_rope_backward_f64(PyArray_DATA(dqkv), PyArray_DATA(dq), head_strides(dq), PyArray_DATA(dk),
                                head_strides(dk), PyArray_DATA(dv), head_strides(dv), PyArray_DATA(cos),
                                PyArray_DATA(sin), TPT_FLOAT64, 0, M, T, H, Hkv, hd)
        : qkv_rope_backward_f32(PyArray_DATA(dqkv), PyArray_DATA(dq), head_strides(dq), PyArray_DATA(dk),
                                head_strides(dk), PyArray_DATA(dv), head_strides(dv), PyArray_DATA(cos),
                                PyArray_DATA(sin), TPT_FLOAT32, 0, M, T, H, Hkv, hd);
    Py_END_ALLOW_THREADS
    if (kernel_status(status, fn)) result = Py_BuildValue("O", dqkv);
done:
    Py_XDECREF(dq); Py_XDECREF(dk); Py_XDECREF(dv); Py_XDECREF(cos); Py_XDECREF(sin); Py_XDECREF(dqkv);
    return result;
}

/* ---- module ---------------------------------------------------------------- */

#define METHOD(name, doc) {#name, (PyCFunction)(void (*)(void))np_##name, METH_VARARGS | METH_KEYWORDS, doc}

static PyMethodDef methods[] = {
    METHOD(phase_rmsnorm_forward, "phase_rmsnorm_forward(x, weight, n_phases=1, eps=1e-6) -> (y, rstd)"),
    METHOD(phase_rmsnorm_backward, "phase_rmsnorm_backward(dy, x, weight, rstd, n_phases=1) -> (dx, dweight)"),
    METHOD(phase_rotate_forward, "phase_rotate_forward(x, theta, n_phases) -> y"),
    METHOD(phase_rotate_backward, "phase_rotate_backward(dy, y, theta, n_phases) -> (dx, dtheta)"),
    METHOD(add_rotate_norm_forward,
           "add_rotate_norm_forward(h, a, theta, weight, n_phases, eps=1e-6) -> (h_new, normed, rstd); theta=None: add_norm"),
    METHOD(add_rotate_norm_backward,
           "add_rotate_norm_backward(dh_new, dnormed, h_new, theta, weight, rstd, n_phases) -> (dsum, dtheta, dweight)"),
    METHOD(horn_inject_forward, "horn_inject_forward(x, n_phases, offset=0) -> y"),
    METHOD(horn_inject_backward, "horn_inject_backward(dy, n_phases) -> dx"),
    METHOD(horn_embedding_forward, "horn_embedding_forward(ids, table, n_phases, offset=0) -> y"),
    METHOD(horn_embedding_backward, "horn_embedding_backward(dy, ids, vocab_size, n_phases) -> dtable"),
    METHOD(swiglu_forward, "swiglu_forward(gate_up) -> h"),
    METHOD(swiglu_backward, "swiglu_backward(dh, gate_up) -> d_gate_up"),
    METHOD(qkv_rope_forward, "qkv_rope_forward(qkv, cos, sin_signed, n_q_heads, n_kv_heads) -> (q, k, v)"),
    METHOD(qkv_rope_backward,
           "qkv_rope_backward(dq, dk, dv, cos, sin_signed, n_q_heads, n_kv_heads) -> dqkv"),
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef np_module = {
    PyModuleDef_HEAD_INIT, "_np", "tpt_ops C kernels on NumPy arrays", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__np(void) {
    import_array();
    return PyModule_Create(&np_module);
}
