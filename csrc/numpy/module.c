/* tpt_ops._np: the C kernels of csrc/cpu on NumPy arrays (pure C, NumPy C API).
 *
 * Each function takes float32 or float64 arrays (any layout: they are made
 * C-contiguous). The first array argument sets the precision; parameters
 * (weight, theta, cos, sin_signed), gradients and saved statistics are cast
 * to it, as the torch face does. The functions run the same kernels and
 * argument rules (csrc/cpu/checks.h) as the torch ops, on one thread with the
 * GIL released, and return new arrays. Wrong dtypes raise TypeError, wrong
 * shapes or values ValueError, naming the function and the argument. One
 * file per family (csrc/numpy/<family>.c); wrapped with docs by
 * tpt_ops/numpy.py. */
#define TPT_NUMPY_MODULE
#include "face.h"

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
    METHOD(moe_route_forward,
           "moe_route_forward(logits, k, capacity_factor=None, normalize=True, score='softmax', bias=None) -> "
           "(gates, experts, slots, slot_token, counts, aux_loss, z_loss)"),
    METHOD(moe_route_backward,
           "moe_route_backward(dgates, daux, dz, logits, experts, gates, slots, counts, normalize=True, "
           "score='softmax') -> dlogits"),
    METHOD(moe_permute_forward, "moe_permute_forward(x, slots, slot_token) -> buf"),
    METHOD(moe_permute_backward, "moe_permute_backward(dbuf, slots) -> dx"),
    METHOD(moe_unpermute_forward, "moe_unpermute_forward(out, gates, slots, slot_token) -> y"),
    METHOD(moe_unpermute_backward, "moe_unpermute_backward(dy, out, gates, slots, slot_token) -> (dout, dgates)"),
    METHOD(hedgehog_feature_map_forward, "hedgehog_feature_map_forward(u) -> phi"),
    METHOD(linear_attention_forward, "linear_attention_forward(phi_q, phi_k, v, causal=True, eps=1e-12) -> y"),
    METHOD(causal_attention_forward, "causal_attention_forward(q, k, v, offset=0, scale=None) -> (out, lse)"),
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef np_module = {
    PyModuleDef_HEAD_INIT, "_np", "tpt_ops C kernels on NumPy arrays", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__np(void) {
    import_array();
    return PyModule_Create(&np_module);
}
