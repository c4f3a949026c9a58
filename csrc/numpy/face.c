/* The helpers of face.h. */
#include "face.h"

PyArrayObject* np_own(np_refs* refs, PyObject* obj) {
    if (obj) {
        /* NP_MAX_REFS is sized for the largest function; running past it is a bug in this face */
        if (refs->n == NP_MAX_REFS) Py_FatalError("tpt_ops.numpy: more owned references than NP_MAX_REFS");
        refs->objs[refs->n++] = obj;
    }
    return (PyArrayObject*)obj;
}

void np_release(np_refs* refs) {
    while (refs->n > 0) Py_DECREF(refs->objs[--refs->n]);
}

PyObject* np_raise(PyObject* exc, const char* fn, const char* msg) {
    PyErr_Format(exc, "tpt_ops.numpy.%s: %s", fn, msg);
    return NULL;
}

const char* np_dtype_name(PyArrayObject* a, char out[64]) {
    PyObject* name = PyObject_Str((PyObject*)PyArray_DESCR(a));
    const char* text = name ? PyUnicode_AsUTF8(name) : NULL;
    snprintf(out, 64, "%s", text ? text : "of an unnamed type");
    Py_XDECREF(name);
    PyErr_Clear(); /* a failure here only shortens the message */
    return out;
}

/* obj as an array in its own dtype, for the dtype checks (a new reference). */
static PyArrayObject* probe(np_refs* refs, PyObject* obj) { return np_own(refs, PyArray_FROM_OF(obj, 0)); }

PyArrayObject* np_float_array(np_refs* refs, PyObject* obj, const char* fn, const char* arg, int type) {
    PyArrayObject* a = probe(refs, obj);
    if (!a) return NULL;
    const int actual = PyArray_TYPE(a);
    char name[64], msg[TPT_MSG_SIZE];
    if (tpt_check_dtype(msg, arg, actual == NPY_FLOAT || actual == NPY_DOUBLE, np_dtype_name(a, name),
                        "float32 or float64")) {
        np_raise(PyExc_TypeError, fn, msg);
        return NULL;
    }
    const int flags = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST;
    return np_own(refs, PyArray_FROM_OTF((PyObject*)a, type == NPY_NOTYPE ? actual : type, flags));
}

PyArrayObject* np_ids_array(np_refs* refs, PyObject* obj, int64_t V, const char* fn) {
    PyArrayObject* a = probe(refs, obj);
    if (!a) return NULL;
    char name[64], msg[TPT_MSG_SIZE];
    if (tpt_check_dtype(msg, "ids", PyArray_ISINTEGER(a), np_dtype_name(a, name), "an integer dtype")) {
        np_raise(PyExc_TypeError, fn, msg);
        return NULL;
    }
    if (tpt_check_ids_shape(msg, np_shape(a))) {
        np_raise(PyExc_ValueError, fn, msg);
        return NULL;
    }
    /* a forced cast wraps uint64 ids past INT64_MAX to negative ones, which the range check refuses */
    PyArrayObject* ids = np_own(refs, PyArray_FROM_OTF((PyObject*)a, NPY_INT64,
                                                       NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST));
    if (!ids) return NULL;
    if (tpt_check_ids_range(msg, PyArray_DATA(ids), PyArray_SIZE(ids), V)) {
        np_raise(PyExc_ValueError, fn, msg);
        return NULL;
    }
    return ids;
}

PyArrayObject* np_new_like(np_refs* refs, PyArrayObject* x) {
    return np_own(refs, PyArray_NewLikeArray(x, NPY_CORDER, NULL, 0));
}

PyArrayObject* np_zeros(np_refs* refs, int nd, const npy_intp* dims, int type) {
    return np_own(refs, PyArray_ZEROS(nd, (npy_intp*)dims, type, 0));
}

void np_dims_with_last(npy_intp* out, PyArrayObject* x, npy_intp last) {
    for (int d = 0; d < PyArray_NDIM(x); d++) out[d] = PyArray_DIM(x, d);
    out[PyArray_NDIM(x) - 1] = last;
}

void np_sum_partials(PyArrayObject* out, PyArrayObject* partials, npy_intp n_blocks, npy_intp n) {
    NP_BY_PRECISION(np_dtype(out), tpt_sum_partials, PyArray_DATA(out), PyArray_DATA(partials), n_blocks, n, 0, n);
}
