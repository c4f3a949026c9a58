"""One source of argument rules: the eager op (csrc/cpu/checks.c through the C++ glue), its fake kernel
(tpt_ops/ops/_checks.py) and the NumPy face (checks.c through csrc/numpy) give the same message per rule."""
import math

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import tpt_ops  # noqa: F401  (registers the fake kernels)
import tpt_ops.numpy as tnp

ops = torch.ops.tpt
x12, w12, th2 = torch.randn(4, 12), torch.randn(12), torch.randn(2)
COS, SIN = torch.rand(5, 8), torch.rand(5, 8)
dq, dkv = torch.randn(2, 2, 5, 8), torch.randn(2, 1, 5, 8)
MOE_SLOTS = torch.tensor([[0, 4], [1, -1], [5, 2], [3, 6]])  # 4 tokens, k = 2, 7 kept rows
MOE_TOKENS = torch.tensor([0, 1, 2, 3, 0, 2, 3, -1])
HH_Q, HH_K, HH_V = torch.rand(2, 4, 5, 6), torch.rand(2, 2, 5, 6), torch.randn(2, 2, 5, 3)
HH_S, HH_Z = torch.zeros(2, 2, 6, 3), torch.zeros(2, 2, 6)
AT_Q, AT_K, AT_V = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
AT_OUT, AT_LSE = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5)

# (op, args): every rule of checks.h that a fake kernel can see (ids values it cannot)
CASES = [
    ("phase_rmsnorm", (torch.randn(4, 10), torch.randn(10), 3, 1e-6)),
    ("phase_rmsnorm", (x12, w12, 0, 1e-6)),
    ("phase_rmsnorm", (torch.tensor(1.0), torch.randn(1), 1, 1e-6)),
    ("phase_rmsnorm", (x12, torch.randn(11), 3, 1e-6)),
    ("phase_rmsnorm", (x12.to(torch.int16), w12, 3, 1e-6)),
    ("phase_rmsnorm", (x12.to(torch.uint8), w12, 3, 1e-6)),
    ("phase_rmsnorm", (x12.to(torch.bool), w12, 3, 1e-6)),
    ("phase_rmsnorm", (x12.to(torch.complex64), w12, 3, 1e-6)),
    ("phase_rmsnorm", (x12.to(torch.float8_e4m3fn), w12, 3, 1e-6)),
    ("phase_rmsnorm", (x12, w12.to(torch.float8_e5m2), 3, 1e-6)),
    ("phase_rmsnorm", (x12, w12, 3, 0.0)),
    ("phase_rmsnorm", (x12, w12, 3, -1e-6)),
    ("phase_rmsnorm", (x12, w12, 3, math.nan)),
    ("phase_rmsnorm", (x12, w12, 3, math.inf)),
    ("phase_rmsnorm_backward", (torch.randn(4, 13), x12, w12, torch.randn(4, 3), 3)),
    ("phase_rotate", (torch.randn(4, 15), th2, 3)),
    ("phase_rotate", (x12, torch.randn(3), 3)),
    ("phase_rotate_backward", (torch.randn(4, 13), x12, th2, 3)),
    ("add_rotate_norm", (x12, torch.randn(4, 6), th2, w12, 3, 1e-6)),
    ("add_rotate_norm", (torch.randn(4, 15), torch.randn(4, 15), th2, torch.randn(15), 3, 1e-6)),
    ("add_rotate_norm", (x12, x12.double(), th2, w12, 3, 1e-6)),
    ("add_rotate_norm", (x12, x12, th2, w12, 3, math.nan)),
    ("add_norm", (x12, x12, w12, 3, 0.0)),
    ("add_norm", (x12, x12, w12, 3, -math.inf)),
    ("horn_inject", (torch.randn(12), 3, 0)),
    ("horn_inject", (torch.randn(2, 4, 12), 3, -1)),
    ("horn_inject", (torch.randn(2, 4, 12), 3, 2**63 - 4)),
    ("horn_embedding", (torch.tensor([[0, 1, 2]]), torch.randn(5, 12), 3, 2**63 - 3)),
    ("horn_embedding", (torch.tensor([0.0]), torch.randn(5, 12), 3, 0)),
    ("horn_embedding", (torch.zeros(1, 2, 3, dtype=torch.long), torch.randn(5, 12), 3, 0)),
    ("horn_embedding", (torch.tensor([0]), torch.randn(5, 12, 1), 3, 0)),
    ("swiglu", (torch.tensor(1.0),)),
    ("swiglu", (torch.randn(4, 7),)),
    ("swiglu_backward", (torch.randn(4, 5), x12)),
    ("qkv_rope", (torch.randn(5, 32), COS, SIN, 2, 1)),
    ("qkv_rope", (torch.randn(2, 5, 32), COS, SIN, 0, 1)),
    ("qkv_rope", (torch.randn(2, 5, 30), COS, SIN, 2, 1)),
    ("qkv_rope", (torch.randn(2, 5, 28), COS, SIN, 2, 1)),
    ("qkv_rope", (torch.randn(2, 5, 32), COS[:4], SIN, 2, 1)),
    ("qkv_rope_backward", (dq, dkv, dkv, COS, SIN, 3, 1)),
    ("qkv_rope_backward", (dq, dq, dkv, COS, SIN, 2, 1)),
    ("qkv_rope_backward", (dq[..., :7], dkv[..., :7], dkv[..., :7], COS, SIN, 2, 1)),
    ("moe_route", (x12, 0, None, True, "softmax", None)),
    ("moe_route", (x12, 13, None, True, "softmax", None)),
    ("moe_route", (w12, 1, None, True, "softmax", None)),
    ("moe_route", (x12, 2, 0.0, True, "softmax", None)),
    ("moe_route", (x12, 2, math.nan, True, "softmax", None)),
    ("moe_route", (x12, 2, None, True, "relu", None)),
    ("moe_route", (x12, 2, None, True, "softmax", torch.zeros(11))),
    ("moe_route", (x12.to(torch.int16), 2, None, True, "softmax", None)),
    ("moe_permute", (torch.randn(3, 5), MOE_SLOTS, MOE_TOKENS)),
    ("moe_permute", (torch.randn(4, 5), MOE_SLOTS.int(), MOE_TOKENS)),
    ("moe_permute", (torch.randn(4, 5), MOE_SLOTS, MOE_TOKENS[:7])),
    ("moe_permute_backward", (torch.randn(7, 5), MOE_SLOTS)),
    ("moe_unpermute", (torch.randn(8, 5), torch.rand(4, 3), MOE_SLOTS, MOE_TOKENS)),
    ("moe_unpermute_backward", (torch.randn(4, 6), torch.randn(8, 5), torch.rand(4, 2), MOE_SLOTS, MOE_TOKENS)),
    ("hedgehog_feature_map", (torch.tensor(1.0),)),
    ("hedgehog_feature_map", (torch.randn(3, 0),)),
    ("hedgehog_feature_map_backward", (torch.randn(3, 7), torch.randn(3, 4))),
    ("linear_attention", (HH_Q[0], HH_K, HH_V, True, 1e-12)),
    ("linear_attention", (HH_Q, HH_K, HH_V[:, :, :4], True, 1e-12)),
    ("linear_attention", (HH_Q[:, :, :4], HH_K, HH_V, True, 1e-12)),
    ("linear_attention", (HH_Q[..., :4], HH_K, HH_V, True, 1e-12)),
    ("linear_attention", (HH_Q[:, :3], HH_K, HH_V, True, 1e-12)),
    ("linear_attention", (HH_Q, HH_K, HH_V, False, 0.0)),
    ("linear_attention", (HH_Q, HH_K, HH_V, True, math.nan)),
    ("linear_attention", (HH_Q.int(), HH_K, HH_V, True, 1e-12)),
    ("linear_attention_prefill", (HH_Q, HH_K[:, :, :, :5], HH_V, 1e-12)),
    ("linear_attention_backward", (torch.randn(2, 4, 5, 2), HH_Q, HH_K, HH_V, True, 1e-12)),
    ("linear_attention_step", (HH_Q, HH_K, HH_V, HH_S, HH_Z, 1e-12)),
    ("linear_attention_step", (HH_Q[:, :, :1], HH_K[:, :, :1], HH_V[:, :, :1], HH_S[..., :2], HH_Z, 1e-12)),
    ("linear_attention_step", (HH_Q[:, :, :1], HH_K[:, :, :1], HH_V[:, :, :1], HH_S, HH_Z[:, :1], 1e-12)),
    ("causal_attention", (AT_Q[0], AT_K, AT_V, 0, 0.5)),
    ("causal_attention", (AT_Q, AT_K, AT_V[:, :1], 0, 0.5)),
    ("causal_attention", (AT_Q[:1], AT_K, AT_V, 0, 0.5)),
    ("causal_attention", (AT_Q[..., :4], AT_K, AT_V, 0, 0.5)),
    ("causal_attention", (AT_Q[:, :3], AT_K, AT_V, 0, 0.5)),
    ("causal_attention", (AT_Q, AT_K[:, :, :4], AT_V[:, :, :4], 0, 0.5)),
    ("causal_attention", (AT_Q, AT_K, AT_V, -1, 0.5)),
    ("causal_attention", (AT_Q[:, :, :3], AT_K, AT_V, 3, 0.5)),
    ("causal_attention", (AT_Q[:, :, :3], AT_K, AT_V, 1, 0.5)),
    ("causal_attention", (AT_Q, AT_K, AT_V, 0, 0.0)),
    ("causal_attention", (AT_Q, AT_K, AT_V, 0, math.nan)),
    ("causal_attention", (AT_Q, AT_K, AT_V, 0, -math.inf)),
    ("causal_attention", (AT_Q, AT_K.bfloat16(), AT_V, 0, 0.5)),
    ("causal_attention", (AT_Q, AT_K, AT_V.double(), 0, 0.5)),
    ("causal_attention", (AT_Q.int(), AT_K, AT_V, 0, 0.5)),
    ("causal_attention_backward", (AT_OUT[..., :4], AT_Q, AT_K, AT_V, AT_OUT, AT_LSE, 0, 0.5)),
    ("causal_attention_backward", (AT_OUT, AT_Q, AT_K, AT_V, AT_OUT[:, :2], AT_LSE, 0, 0.5)),
    ("causal_attention_backward", (AT_OUT, AT_Q, AT_K, AT_V, AT_OUT, AT_LSE[..., :4], 0, 0.5)),
]


def message(call) -> str:
    with pytest.raises(Exception) as info:
        call()
    return str(info.value).splitlines()[0]


def fake_call(op: str, args):
    mode = FakeTensorMode()
    fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    with mode:
        return getattr(ops, op)(*fake_args)


@pytest.mark.parametrize("op,args", CASES, ids=[f"{op}-{i}" for i, (op, _) in enumerate(CASES)])
def test_fake_kernel_raises_the_eager_message(op, args):
    eager = message(lambda: getattr(ops, op)(*args))
    assert eager.startswith(f"tpt.{op}: ")
    assert message(lambda: fake_call(op, args)) == eager


f32 = np.float32
# (NumPy function, its args, torch op, its args): the rules both faces have
PAIRS = [
    (tnp.phase_rmsnorm_forward, (np.zeros((4, 10), f32), np.ones(10, f32), 3), "phase_rmsnorm",
     (torch.zeros(4, 10), torch.ones(10), 3, 1e-6)),
    (tnp.phase_rmsnorm_forward, (np.zeros((4, 12), f32), np.ones(11, f32), 3), "phase_rmsnorm",
     (x12, torch.ones(11), 3, 1e-6)),
    (tnp.phase_rmsnorm_forward, (np.zeros((4, 12), f32), np.ones(12, f32), 3, 0.0), "phase_rmsnorm",
     (x12, w12, 3, 0.0)),
    (tnp.phase_rmsnorm_forward, (np.zeros((4, 12), f32), np.ones(12, f32), 3, math.nan), "phase_rmsnorm",
     (x12, w12, 3, math.nan)),
    (tnp.phase_rmsnorm_backward, (np.zeros((4, 13), f32), np.zeros((4, 12), f32), np.ones(12, f32),
                                  np.ones((4, 3), f32), 3), "phase_rmsnorm_backward",
     (torch.zeros(4, 13), x12, w12, torch.ones(4, 3), 3)),
    (tnp.phase_rotate_forward, (np.zeros((4, 15), f32), np.zeros(2, f32), 3), "phase_rotate",
     (torch.zeros(4, 15), th2, 3)),
    (tnp.phase_rotate_forward, (np.zeros((4, 12), f32), np.zeros(3, f32), 3), "phase_rotate",
     (x12, torch.zeros(3), 3)),
    (tnp.add_rotate_norm_forward, (np.zeros((4, 12), f32), np.zeros((4, 6), f32), np.zeros(2, f32),
                                   np.ones(12, f32), 3), "add_rotate_norm",
     (x12, torch.zeros(4, 6), th2, w12, 3, 1e-6)),
    (tnp.add_rotate_norm_forward, (np.zeros((4, 12), f32), np.zeros((4, 12)), np.zeros(2, f32),
                                   np.ones(12, f32), 3), "add_rotate_norm",
     (x12, x12.double(), th2, w12, 3, 1e-6)),
    (tnp.add_norm_forward, (np.zeros((4, 12), f32), np.zeros((4, 12), f32), np.ones(12, f32), 3, -1.0), "add_norm",
     (x12, x12, w12, 3, -1.0)),
    (tnp.horn_inject_forward, (np.zeros(12, f32), 3), "horn_inject", (torch.zeros(12), 3, 0)),
    (tnp.horn_inject_forward, (np.zeros((2, 4, 12), f32), 3, -1), "horn_inject", (torch.zeros(2, 4, 12), 3, -1)),
    (tnp.horn_inject_forward, (np.zeros((2, 4, 12), f32), 3, 2**63 - 1), "horn_inject",
     (torch.zeros(2, 4, 12), 3, 2**63 - 1)),
    (tnp.horn_embedding_forward, (np.array([[0, 7]]), np.zeros((5, 12), f32), 3), "horn_embedding",
     (torch.tensor([[0, 7]]), torch.zeros(5, 12), 3, 0)),
    (tnp.horn_embedding_forward, (np.zeros((1, 2, 3), np.int64), np.zeros((5, 12), f32), 3), "horn_embedding",
     (torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(5, 12), 3, 0)),
    (tnp.horn_embedding_forward, (np.array([0]), np.zeros((5, 12, 1), f32), 3), "horn_embedding",
     (torch.tensor([0]), torch.zeros(5, 12, 1), 3, 0)),
    (tnp.swiglu_forward, (np.zeros((4, 7), f32),), "swiglu", (torch.zeros(4, 7),)),
    (tnp.swiglu_backward, (np.zeros((4, 5), f32), np.zeros((4, 12), f32)), "swiglu_backward",
     (torch.zeros(4, 5), x12)),
    (tnp.qkv_rope_forward, (np.zeros((5, 32), f32), COS.numpy(), SIN.numpy(), 2, 1), "qkv_rope",
     (torch.zeros(5, 32), COS, SIN, 2, 1)),
    (tnp.qkv_rope_forward, (np.zeros((2, 5, 32), f32), COS.numpy(), SIN.numpy(), 2, 0), "qkv_rope",
     (torch.zeros(2, 5, 32), COS, SIN, 2, 0)),
    (tnp.qkv_rope_forward, (np.zeros((2, 5, 28), f32), COS.numpy(), SIN.numpy(), 2, 1), "qkv_rope",
     (torch.zeros(2, 5, 28), COS, SIN, 2, 1)),
    (tnp.qkv_rope_forward, (np.zeros((2, 5, 32), f32), COS.numpy()[:4], SIN.numpy(), 2, 1), "qkv_rope",
     (torch.zeros(2, 5, 32), COS[:4], SIN, 2, 1)),
    (tnp.qkv_rope_backward, (dq.numpy(), dkv.numpy(), dkv.numpy()[:, :, :4], COS.numpy(), SIN.numpy(), 2, 1),
     "qkv_rope_backward", (dq, dkv, dkv[:, :, :4], COS, SIN, 2, 1)),
    (tnp.moe_route_forward, (np.zeros((4, 12), f32), 13), "moe_route", (x12, 13, None, True, "softmax", None)),
    (tnp.moe_route_forward, (np.zeros((4, 12), f32), 2, -1.0), "moe_route", (x12, 2, -1.0, True, "softmax", None)),
    (tnp.moe_route_forward, (np.zeros(12, f32), 1), "moe_route", (w12, 1, None, True, "softmax", None)),
    (tnp.moe_route_forward, (np.zeros((4, 12), f32), 2, None, True, "relu"), "moe_route",
     (x12, 2, None, True, "relu", None)),
    (tnp.moe_permute_forward, (np.zeros((3, 5), f32), MOE_SLOTS.numpy(), MOE_TOKENS.numpy()), "moe_permute",
     (torch.zeros(3, 5), MOE_SLOTS, MOE_TOKENS)),
    (tnp.moe_permute_forward, (np.zeros((4, 5), f32), MOE_SLOTS.numpy(), MOE_TOKENS.numpy()[::-1].copy()),
     "moe_permute", (torch.zeros(4, 5), MOE_SLOTS, MOE_TOKENS.flip(0))),
    (tnp.moe_permute_backward, (np.zeros((7, 5), f32), MOE_SLOTS.numpy()), "moe_permute_backward",
     (torch.zeros(7, 5), MOE_SLOTS)),
    (tnp.moe_unpermute_forward, (np.zeros((8, 5), f32), np.ones((4, 3), f32), MOE_SLOTS.numpy(), MOE_TOKENS.numpy()),
     "moe_unpermute", (torch.zeros(8, 5), torch.ones(4, 3), MOE_SLOTS, MOE_TOKENS)),
    (tnp.moe_unpermute_backward, (np.zeros((4, 6), f32), np.zeros((8, 5), f32), np.ones((4, 2), f32),
                                  MOE_SLOTS.numpy(), MOE_TOKENS.numpy()), "moe_unpermute_backward",
     (torch.zeros(4, 6), torch.zeros(8, 5), torch.ones(4, 2), MOE_SLOTS, MOE_TOKENS)),
    (tnp.hedgehog_feature_map_forward, (np.zeros((3, 0), f32),), "hedgehog_feature_map", (torch.zeros(3, 0),)),
    (tnp.linear_attention_forward, (HH_Q.numpy()[..., :4], HH_K.numpy(), HH_V.numpy()), "linear_attention",
     (HH_Q[..., :4], HH_K, HH_V, True, 1e-12)),
    (tnp.linear_attention_forward, (HH_Q.numpy()[:, :3], HH_K.numpy(), HH_V.numpy()), "linear_attention",
     (HH_Q[:, :3], HH_K, HH_V, True, 1e-12)),
    (tnp.linear_attention_forward, (HH_Q.numpy(), HH_K.numpy(), HH_V.numpy(), True, -1.0), "linear_attention",
     (HH_Q, HH_K, HH_V, True, -1.0)),
    (tnp.causal_attention_forward, (AT_Q.numpy()[..., :4], AT_K.numpy(), AT_V.numpy()), "causal_attention",
     (AT_Q[..., :4], AT_K, AT_V, 0, 0.5)),
    (tnp.causal_attention_forward, (AT_Q.numpy()[:, :3], AT_K.numpy(), AT_V.numpy()), "causal_attention",
     (AT_Q[:, :3], AT_K, AT_V, 0, 0.5)),
    (tnp.causal_attention_forward, (AT_Q.numpy()[:, :, :3], AT_K.numpy(), AT_V.numpy(), 1), "causal_attention",
     (AT_Q[:, :, :3], AT_K, AT_V, 1, 0.5)),
    (tnp.causal_attention_forward, (AT_Q.numpy(), AT_K.numpy(), AT_V.numpy(), 0, math.nan), "causal_attention",
     (AT_Q, AT_K, AT_V, 0, math.nan)),
]


@pytest.mark.parametrize("np_fn,np_args,op,args", PAIRS, ids=[f"{p[2]}-{i}" for i, p in enumerate(PAIRS)])
def test_numpy_face_raises_the_torch_message(np_fn, np_args, op, args):
    torch_body = message(lambda: getattr(ops, op)(*args)).removeprefix(f"tpt.{op}: ")
    np_message = message(lambda: np_fn(*np_args))
    prefix, _, np_body = np_message.partition(": ")
    assert prefix.startswith("tpt_ops.numpy.")
    assert np_body == torch_body


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.bool_, np.complex64, np.float16])
def test_numpy_face_names_the_refused_dtype(dtype):
    x = np.zeros((4, 12), dtype)
    with pytest.raises(TypeError, match=rf"^tpt_ops.numpy.phase_rotate_forward: argument 'x' has dtype "
                                        rf"{np.dtype(dtype).name}; expected float32 or float64$"):
        tnp.phase_rotate_forward(x, np.zeros(2, np.float32), 3)
    with pytest.raises(TypeError, match=rf"^tpt_ops.numpy.phase_rotate_forward: argument 'theta' has dtype "
                                        rf"{np.dtype(dtype).name}; expected float32 or float64$"):
        tnp.phase_rotate_forward(np.zeros((4, 12), np.float32), np.zeros(2, dtype), 3)


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8, torch.bool, torch.complex64, torch.complex128,
                                   torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16])
def test_torch_face_names_the_refused_dtype(dtype):
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(RuntimeError, match=rf"tpt.phase_rotate: argument 'theta' has dtype {name}; expected"):
        ops.phase_rotate(x12, th2.to(dtype), 3)
