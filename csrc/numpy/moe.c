/* NumPy face of the token-choice MoE kernels (csrc/cpu/moe.h). */
#include "face.h"
#include "cpu/moe.h"

#include <string.h>

/* obj as an owned C-contiguous int64 array (TypeError naming fn and arg for any other dtype). */
static PyArrayObject* index_array(np_refs* refs, PyObject* obj, const char* fn, const char* arg) {
    PyArrayObject* a = np_own(refs, PyArray_FROM_OF(obj, 0));
    if (!a) return NULL;
    char name[64], msg[TPT_MSG_SIZE];
    const int is_int64 = PyArray_ISINTEGER(a) && PyArray_ISSIGNED(a) && PyArray_ITEMSIZE(a) == 8;
    if (tpt_check_dtype(msg, arg, is_int64, np_dtype_name(a, name), "int64")) {
        np_raise(PyExc_TypeError, fn, msg);
        return NULL;
    }
    return np_own(refs, PyArray_FROM_OTF((PyObject*)a, NPY_INT64, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED));
}

static PyArrayObject* new_array(np_refs* refs, int nd, const npy_intp* dims, int type) {
    return np_own(refs, PyArray_EMPTY(nd, (npy_intp*)dims, type, 0));
}

/* score as the kernels' code, or -1 with a ValueError set. */
static int score_code(const char* score, const char* fn) {
    char msg[TPT_MSG_SIZE];
    if (tpt_check_moe_score(msg, score)) {
        np_raise(PyExc_ValueError, fn, msg);
        return -1;
    }
    return strcmp(score, "sigmoid") == 0 ? TPT_MOE_SIGMOID : TPT_MOE_SOFTMAX;
}

/* 0 when slots (and slot_token, unless NULL) describe one routing, else -1 with a ValueError set. */
static int check_layout(PyArrayObject* slots, PyArrayObject* slot_token, const char* fn) {
    char msg[TPT_MSG_SIZE];
    const npy_intp M = PyArray_DIM(slots, 0), k = PyArray_DIM(slots, 1);
    if ((slot_token && tpt_check_vector(msg, "slot_token", np_shape(slot_token), M * k)) ||
        tpt_check_moe_layout(msg, PyArray_DATA(slots), slot_token ? PyArray_DATA(slot_token) : NULL, M, k)) {
        np_raise(PyExc_ValueError, fn, msg);
        return -1;
    }
    return 0;
}

NP_FUNCTION(moe_route_forward) {
    static char* names[] = {"logits", "k", "capacity_factor", "normalize", "score", "bias", NULL};
    const char* fn = "moe_route_forward";
    PyObject *lo, *cfo = Py_None, *bo = Py_None;
    long long k;
    int normalize = 1;
    const char* score = "softmax";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OL|OpsO", names, &lo, &k, &cfo, &normalize, &score, &bo))
        return NULL;
    PyArrayObject* logits = np_float_array(refs, lo, fn, "logits", NPY_NOTYPE);
    if (!logits) return NULL;
    const int type = PyArray_TYPE(logits);
    NP_RULE(tpt_check_moe_logits, np_shape(logits));
    const npy_intp M = PyArray_DIM(logits, 0), E = PyArray_DIM(logits, 1);
    NP_RULE(tpt_check_moe_k, k, E);
    const int has_capacity = cfo != Py_None;
    const double capacity_factor = has_capacity ? PyFloat_AsDouble(cfo) : 0.0;
    if (has_capacity && PyErr_Occurred()) return NULL;
    if (has_capacity) NP_RULE(tpt_check_moe_capacity_factor, capacity_factor);
    const int code = score_code(score, fn);
    if (code < 0) return NULL;
    PyArrayObject* bias = NULL;
    if (bo != Py_None) {
        if (!(bias = np_float_array(refs, bo, fn, "bias", type))) return NULL;
        NP_RULE(tpt_check_vector, "bias", np_shape(bias), E);
    }
    const npy_intp n_blocks = tpt_num_row_blocks(M), mk[2] = {M, k}, a_dims[1] = {M * k}, e_dims[1] = {E};
    const npy_intp partial_dims[2] = {n_blocks > 0 ? n_blocks : 1, E}, lse_dims[2] = {partial_dims[0], 1};
    PyArrayObject *gates = new_array(refs, 2, mk, type), *experts = new_array(refs, 2, mk, NPY_INT64);
    PyArrayObject *slots = new_array(refs, 2, mk, NPY_INT64), *slot_token = new_array(refs, 1, a_dims, NPY_INT64);
    PyArrayObject* counts = new_array(refs, 1, e_dims, NPY_INT64);
    PyArrayObject *prob_partials = np_zeros(refs, 2, partial_dims, type), *lse_partials = np_zeros(refs, 2, lse_dims, type);
    PyArrayObject *prob_sums = np_zeros(refs, 1, e_dims, type), *lse_sum = np_zeros(refs, 1, lse_dims + 1, type);
    PyArrayObject *aux = np_zeros(refs, 0, NULL, type), *z = np_zeros(refs, 0, NULL, type);
    if (!gates || !experts || !slots || !slot_token || !counts || !prob_partials || !lse_partials || !prob_sums ||
        !lse_sum || !aux || !z)
        return NULL;
    const tpt_dtype dt = np_dtype(logits);
    const int64_t capacity = has_capacity ? moe_capacity(capacity_factor, M, E, k) : -1;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, moe_route_forward, PyArray_DATA(gates), PyArray_DATA(experts),
                             PyArray_DATA(prob_partials), PyArray_DATA(lse_partials), PyArray_DATA(logits),
                             bias ? PyArray_DATA(bias) : NULL, dt, 0, n_blocks, M, E, k, normalize, code);
    if (status == TPT_OK)
        status = moe_route_assign(PyArray_DATA(slots), PyArray_DATA(slot_token), PyArray_DATA(counts),
                                  PyArray_DATA(experts), M, E, k, capacity);
    if (status == TPT_OK) {
        np_sum_partials(prob_sums, prob_partials, partial_dims[0], E);
        np_sum_partials(lse_sum, lse_partials, partial_dims[0], 1);
        if (dt == TPT_FLOAT64)
            moe_route_losses_f64(PyArray_DATA(gates), PyArray_DATA(aux), PyArray_DATA(z), PyArray_DATA(slots),
                                 PyArray_DATA(counts), PyArray_DATA(prob_sums), *(double*)PyArray_DATA(lse_sum), M,
                                 E, k);
        else
            moe_route_losses_f32(PyArray_DATA(gates), PyArray_DATA(aux), PyArray_DATA(z), PyArray_DATA(slots),
                                 PyArray_DATA(counts), PyArray_DATA(prob_sums), *(float*)PyArray_DATA(lse_sum), M, E,
                                 k);
    }
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("OOOOOOO", gates, experts, slots, slot_token, counts, aux, z);
}

NP_FUNCTION(moe_route_backward) {
    static char* names[] = {"dgates", "daux", "dz", "logits", "experts", "gates", "slots", "counts", "normalize",
                            "score", NULL};
    const char* fn = "moe_route_backward";
    PyObject *dgo, *lo, *eo, *go, *so, *co;
    double daux, dz;
    int normalize = 1;
    const char* score = "softmax";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OddOOOOO|ps", names, &dgo, &daux, &dz, &lo, &eo, &go, &so, &co,
                                     &normalize, &score))
        return NULL;
    PyArrayObject* logits = np_float_array(refs, lo, fn, "logits", NPY_NOTYPE);
    if (!logits) return NULL;
    const int type = PyArray_TYPE(logits);
    PyArrayObject *dgates, *gates, *experts, *slots, *counts;
    if (!(dgates = np_float_array(refs, dgo, fn, "dgates", type)) ||
        !(gates = np_float_array(refs, go, fn, "gates", type)) || !(experts = index_array(refs, eo, fn, "experts")) ||
        !(slots = index_array(refs, so, fn, "slots")) || !(counts = index_array(refs, co, fn, "counts")))
        return NULL;
    NP_RULE(tpt_check_moe_logits, np_shape(logits));
    const int code = score_code(score, fn);
    if (code < 0) return NULL;
    const npy_intp M = PyArray_DIM(logits, 0), E = PyArray_DIM(logits, 1);
    NP_RULE(tpt_check_moe_matrix, "experts", np_shape(experts), "M", M, -1);
    const npy_intp k = PyArray_DIM(experts, 1);
    NP_RULE(tpt_check_moe_k, k, E);
    NP_RULE(tpt_check_same_shape, "slots", np_shape(slots), "experts", np_shape(experts));
    NP_RULE(tpt_check_same_shape, "gates", np_shape(gates), "experts", np_shape(experts));
    NP_RULE(tpt_check_same_shape, "dgates", np_shape(dgates), "experts", np_shape(experts));
    NP_RULE(tpt_check_vector, "counts", np_shape(counts), E);
    NP_RULE(tpt_check_moe_experts, PyArray_DATA(experts), M * k, E);
    PyArrayObject* dlogits = np_new_like(refs, logits);
    if (!dlogits) return NULL;
    const tpt_dtype dt = np_dtype(logits);
    int status;
    Py_BEGIN_ALLOW_THREADS
    if (dt == TPT_FLOAT64)
        status = moe_route_backward_f64(PyArray_DATA(dlogits), PyArray_DATA(dgates), daux, dz, PyArray_DATA(logits),
                                        PyArray_DATA(experts), PyArray_DATA(gates), PyArray_DATA(slots),
                                        PyArray_DATA(counts), dt, 0, M, M, E, k, normalize, code);
    else
        status = moe_route_backward_f32(PyArray_DATA(dlogits), PyArray_DATA(dgates), (float)daux, (float)dz,
                                        PyArray_DATA(logits), PyArray_DATA(experts), PyArray_DATA(gates),
                                        PyArray_DATA(slots), PyArray_DATA(counts), dt, 0, M, M, E, k, normalize, code);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("O", dlogits);
}

NP_FUNCTION(moe_permute_forward) {
    static char* names[] = {"x", "slots", "slot_token", NULL};
    const char* fn = "moe_permute_forward";
    PyObject *xo, *so, *sto;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO", names, &xo, &so, &sto)) return NULL;
    PyArrayObject *x, *slots, *slot_token;
    if (!(x = np_float_array(refs, xo, fn, "x", NPY_NOTYPE)) || !(slots = index_array(refs, so, fn, "slots")) ||
        !(slot_token = index_array(refs, sto, fn, "slot_token")))
        return NULL;
    NP_RULE(tpt_check_moe_slots, np_shape(slots));
    const npy_intp M = PyArray_DIM(slots, 0), k = PyArray_DIM(slots, 1);
    NP_RULE(tpt_check_moe_matrix, "x", np_shape(x), "M", M, -1);
    if (check_layout(slots, slot_token, fn)) return NULL;
    const npy_intp D = PyArray_DIM(x, 1), dims[2] = {M * k, D};
    PyArrayObject* buf = new_array(refs, 2, dims, PyArray_TYPE(x));
    if (!buf) return NULL;
    Py_BEGIN_ALLOW_THREADS
    moe_permute_forward(PyArray_DATA(buf), PyArray_DATA(x), PyArray_DATA(slot_token), np_dtype(x), 0, M * k, D);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("O", buf);
}

NP_FUNCTION(moe_permute_backward) {
    static char* names[] = {"dbuf", "slots", NULL};
    const char* fn = "moe_permute_backward";
    PyObject *dbo, *so;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", names, &dbo, &so)) return NULL;
    PyArrayObject *dbuf, *slots;
    if (!(dbuf = np_float_array(refs, dbo, fn, "dbuf", NPY_NOTYPE)) || !(slots = index_array(refs, so, fn, "slots")))
        return NULL;
    NP_RULE(tpt_check_moe_slots, np_shape(slots));
    const npy_intp M = PyArray_DIM(slots, 0), k = PyArray_DIM(slots, 1);
    NP_RULE(tpt_check_moe_matrix, "dbuf", np_shape(dbuf), "M*k", M * k, -1);
    if (check_layout(slots, NULL, fn)) return NULL;
    const npy_intp D = PyArray_DIM(dbuf, 1), dims[2] = {M, D};
    PyArrayObject* dx = new_array(refs, 2, dims, PyArray_TYPE(dbuf));
    if (!dx) return NULL;
    const tpt_dtype dt = np_dtype(dbuf);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, moe_permute_backward, PyArray_DATA(dx), PyArray_DATA(dbuf), PyArray_DATA(slots), dt,
                             0, M, k, D);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("O", dx);
}

/* The arguments both unpermute functions share: out [M*k, D], gates [M, k] cast to out's precision, the layout. */
static int unpermute_args(np_refs* refs, const char* fn, PyObject* oo, PyObject* go, PyObject* so, PyObject* sto,
                          PyArrayObject** out, PyArrayObject** gates, PyArrayObject** slots,
                          PyArrayObject** slot_token) {
    char msg[TPT_MSG_SIZE];
    if (!(*out = np_float_array(refs, oo, fn, "out", NPY_NOTYPE)) ||
        !(*gates = np_float_array(refs, go, fn, "gates", PyArray_TYPE(*out))) ||
        !(*slots = index_array(refs, so, fn, "slots")) || !(*slot_token = index_array(refs, sto, fn, "slot_token")))
        return -1;
    if (tpt_check_moe_slots(msg, np_shape(*slots)) ||
        tpt_check_moe_matrix(msg, "out", np_shape(*out), "M*k", PyArray_DIM(*slots, 0) * PyArray_DIM(*slots, 1), -1) ||
        tpt_check_same_shape(msg, "gates", np_shape(*gates), "slots", np_shape(*slots))) {
        np_raise(PyExc_ValueError, fn, msg);
        return -1;
    }
    return check_layout(*slots, *slot_token, fn);
}

NP_FUNCTION(moe_unpermute_forward) {
    static char* names[] = {"out", "gates", "slots", "slot_token", NULL};
    const char* fn = "moe_unpermute_forward";
    PyObject *oo, *go, *so, *sto;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO", names, &oo, &go, &so, &sto)) return NULL;
    PyArrayObject *out, *gates, *slots, *slot_token;
    if (unpermute_args(refs, fn, oo, go, so, sto, &out, &gates, &slots, &slot_token)) return NULL;
    const npy_intp M = PyArray_DIM(slots, 0), k = PyArray_DIM(slots, 1), D = PyArray_DIM(out, 1), dims[2] = {M, D};
    PyArrayObject* y = new_array(refs, 2, dims, PyArray_TYPE(out));
    if (!y) return NULL;
    const tpt_dtype dt = np_dtype(out);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, moe_unpermute_forward, PyArray_DATA(y), PyArray_DATA(out), PyArray_DATA(gates),
                             PyArray_DATA(slots), dt, 0, M, k, D);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("O", y);
}

NP_FUNCTION(moe_unpermute_backward) {
    static char* names[] = {"dy", "out", "gates", "slots", "slot_token", NULL};
    const char* fn = "moe_unpermute_backward";
    PyObject *dyo, *oo, *go, *so, *sto;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO", names, &dyo, &oo, &go, &so, &sto)) return NULL;
    PyArrayObject *out, *gates, *slots, *slot_token, *dy;
    if (unpermute_args(refs, fn, oo, go, so, sto, &out, &gates, &slots, &slot_token)) return NULL;
    if (!(dy = np_float_array(refs, dyo, fn, "dy", PyArray_TYPE(out)))) return NULL;
    const npy_intp M = PyArray_DIM(slots, 0), k = PyArray_DIM(slots, 1), D = PyArray_DIM(out, 1), mk[2] = {M, k};
    NP_RULE(tpt_check_moe_matrix, "dy", np_shape(dy), "M", M, D);
    PyArrayObject *dout = np_new_like(refs, out), *dgates = np_zeros(refs, 2, mk, PyArray_TYPE(out));
    if (!dout || !dgates) return NULL;
    const tpt_dtype dt = np_dtype(out);
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = NP_BY_PRECISION(dt, moe_unpermute_backward, PyArray_DATA(dout), PyArray_DATA(dgates), PyArray_DATA(dy),
                             PyArray_DATA(out), PyArray_DATA(gates), PyArray_DATA(slots), PyArray_DATA(slot_token),
                             dt, 0, M * k, k, D);
    Py_END_ALLOW_THREADS
    NP_KERNEL_STATUS(status);
    return Py_BuildValue("OO", dout, dgates);
}
