/* Shared by the files of the NumPy face (csrc/numpy/<family>.c): owned
 * references, argument conversion, the rules of csrc/cpu/checks.h raised as
 * "tpt_ops.numpy.<fn>: ..." errors, and the float32/float64 kernel dispatch.
 *
 * A function is written as
 *
 *     NP_FUNCTION(phase_rmsnorm_forward) {
 *         const char* fn = "phase_rmsnorm_forward";
 *         ...  every new reference goes through np_own(refs, ...); errors just return NULL
 *     }
 *
 * which defines np_phase_rmsnorm_forward(self, args, kw): it releases every
 * owned reference once the body returns, so the bodies need no cleanup code.
 * The result is built with Py_BuildValue("O...", ...), which takes its own
 * references. */
#ifndef TPT_NUMPY_FACE_H
#define TPT_NUMPY_FACE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
/* one NumPy C-API table for the whole extension, filled by module.c's import_array() */
#define PY_ARRAY_UNIQUE_SYMBOL tpt_numpy_api
#ifndef TPT_NUMPY_MODULE
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "cpu/checks.h"
#include "cpu/common.h"

_Static_assert(sizeof(npy_intp) == sizeof(int64_t), "array sizes are passed to the kernels as int64_t");

/* ---- owned references ----------------------------------------------------- */

/* More than any function holds (add_rotate_norm_backward: 17, a probe and an array per input). */
#define NP_MAX_REFS 24

typedef struct {
    PyObject* objs[NP_MAX_REFS];
    int n;
} np_refs;

/* Takes over obj, a new reference or NULL (then a Python error is set), and returns it as an array. */
PyArrayObject* np_own(np_refs* refs, PyObject* obj);

void np_release(np_refs* refs);

#define NP_FUNCTION(name)                                                        \
    static PyObject* name##_body(np_refs* refs, PyObject* args, PyObject* kw);   \
    PyObject* np_##name(PyObject* self, PyObject* args, PyObject* kw) {          \
        np_refs refs = {{NULL}, 0};                                              \
        (void)self;                                                              \
        PyObject* result = name##_body(&refs, args, kw);                         \
        np_release(&refs);                                                       \
        return result;                                                           \
    }                                                                            \
    static PyObject* name##_body(np_refs* refs, PyObject* args, PyObject* kw)

/* ---- errors ---------------------------------------------------------------- */

/* Raises exc("tpt_ops.numpy.<fn>: <msg>"); returns NULL. */
PyObject* np_raise(PyObject* exc, const char* fn, const char* msg);

/* Returns NULL from the calling function (which has a local `fn`) with a
 * ValueError when a shape rule of checks.h is broken:
 *   NP_RULE(tpt_check_phases, "x", np_shape(x), n_phases); */
#define NP_RULE(rule, ...)                                             \
    do {                                                               \
        char np_msg_[TPT_MSG_SIZE];                                    \
        if (rule(np_msg_, __VA_ARGS__)) return np_raise(PyExc_ValueError, fn, np_msg_); \
    } while (0)

/* The same for a dtype rule: TypeError. */
#define NP_DTYPE_RULE(rule, ...)                                       \
    do {                                                               \
        char np_msg_[TPT_MSG_SIZE];                                    \
        if (rule(np_msg_, __VA_ARGS__)) return np_raise(PyExc_TypeError, fn, np_msg_); \
    } while (0)

/* MemoryError for a kernel that ran out of scratch memory. */
#define NP_KERNEL_STATUS(status) \
    do {                         \
        if ((status) != TPT_OK) return np_raise(PyExc_MemoryError, fn, "out of memory"); \
    } while (0)

/* ---- arguments -------------------------------------------------------------- */

/* obj as an owned C-contiguous float32 or float64 array (TypeError naming fn
 * and arg for any other dtype). type NPY_NOTYPE keeps its dtype (the input
 * that sets the compute precision); NPY_FLOAT or NPY_DOUBLE casts to it, as
 * the torch face converts parameters and gradients to the input's precision. */
PyArrayObject* np_float_array(np_refs* refs, PyObject* obj, const char* fn, const char* arg, int type);

/* ids as an owned C-contiguous int64 array of 1 or 2 dims, all in [0, V). */
PyArrayObject* np_ids_array(np_refs* refs, PyObject* obj, int64_t V, const char* fn);

/* NumPy's name of a's dtype ("float64"), for messages. */
const char* np_dtype_name(PyArrayObject* a, char out[64]);

static inline tpt_shape np_shape(PyArrayObject* a) {
    const tpt_shape s = {(const int64_t*)PyArray_DIMS(a), PyArray_NDIM(a)};
    return s;
}

static inline tpt_dtype np_dtype(PyArrayObject* a) {
    return PyArray_TYPE(a) == NPY_DOUBLE ? TPT_FLOAT64 : TPT_FLOAT32;
}

/* A new owned array: like x, or zeros of the given dims and NumPy type. */
PyArrayObject* np_new_like(np_refs* refs, PyArrayObject* x);
PyArrayObject* np_zeros(np_refs* refs, int nd, const npy_intp* dims, int type);

/* x's dims with the last one replaced by `last` (out: NPY_MAXDIMS entries). */
void np_dims_with_last(npy_intp* out, PyArrayObject* x, npy_intp last);

/* ---- kernels ----------------------------------------------------------------- */

/* name_f64(...) for float64, name_f32(...) otherwise. */
#define NP_BY_PRECISION(dt, name, ...) ((dt) == TPT_FLOAT64 ? name##_f64(__VA_ARGS__) : name##_f32(__VA_ARGS__))

/* Sums the [n_blocks, n] partials of a row reduction into out, in block order. */
void np_sum_partials(PyArrayObject* out, PyArrayObject* partials, npy_intp n_blocks, npy_intp n);

/* ---- the functions (one file per family) ------------------------------------ */

#define NP_DECLARE(name) PyObject* np_##name(PyObject* self, PyObject* args, PyObject* kw)
NP_DECLARE(phase_rmsnorm_forward);
NP_DECLARE(phase_rmsnorm_backward);
NP_DECLARE(phase_rotate_forward);
NP_DECLARE(phase_rotate_backward);
NP_DECLARE(add_rotate_norm_forward);
NP_DECLARE(add_rotate_norm_backward);
NP_DECLARE(horn_inject_forward);
NP_DECLARE(horn_inject_backward);
NP_DECLARE(horn_embedding_forward);
NP_DECLARE(horn_embedding_backward);
NP_DECLARE(swiglu_forward);
NP_DECLARE(swiglu_backward);
NP_DECLARE(qkv_rope_forward);
NP_DECLARE(qkv_rope_backward);
NP_DECLARE(moe_route_forward);
NP_DECLARE(moe_route_backward);
NP_DECLARE(moe_permute_forward);
NP_DECLARE(moe_permute_backward);
NP_DECLARE(moe_unpermute_forward);
NP_DECLARE(moe_unpermute_backward);
NP_DECLARE(hedgehog_feature_map_forward);
NP_DECLARE(linear_attention_forward);
NP_DECLARE(causal_attention_forward);
#undef NP_DECLARE

#endif
