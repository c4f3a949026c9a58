"""Shared test utilities: tolerances per dtype, grads of a function, thread control."""
from __future__ import annotations

import contextlib

import torch

# (rtol, atol) for comparing an op with its reference computed the same way.
# Low-precision outputs are rounded once from float32; the two sides may
# round a value near a tie differently, so allow a couple of ulps.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}
DTYPES = list(TOL)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    rtol, atol = TOL[dtype or expected.dtype]
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def grads(fn, inputs, seed: int = 0):
    """Outputs of fn(*inputs) and the gradients of every input that requires grad.

    The output gradient is drawn from a fixed seed so two implementations see the same one.
    fn may return a tensor or a tuple of tensors (each gets its own output gradient).
    """
    inputs = [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
              for t in inputs]
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(seed)
    gouts = [torch.randn(o.shape, generator=gen, dtype=torch.float32).to(o.dtype) for o in outs]
    torch.autograd.backward(outs, gouts)
    return out, [t.grad for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]


@contextlib.contextmanager
def num_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)




def assert_rejected(call, msg: str, check_fake: bool = True) -> None:
    """call() raises a RuntimeError matching msg; so does its torch.compile'd
    version at trace time (the fake kernel's checks) when check_fake is set."""
    import pytest

    with pytest.raises(RuntimeError, match=msg):
        call()
    if check_fake:
        with pytest.raises(Exception, match=msg):
            torch.compile(call, fullgraph=True, dynamic=False)()


def assert_compile_matches_eager(fn, inputs) -> None:
    """torch.compile(fn, fullgraph=True) gives fn's outputs and input gradients.

    Meant for non-contiguous inputs: the compiled graph trusts the fake
    kernels' output strides, so they must match the kernels' (contiguous)
    outputs, or the graph fails or reads the results wrongly.
    """
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    with torch.no_grad():  # an inference graph, where inductor checks the custom ops' output strides
        torch.testing.assert_close(compiled(*inputs), fn(*inputs))
    expected, expected_grads = grads(fn, inputs)
    actual, actual_grads = grads(compiled, inputs)
    torch.testing.assert_close(actual, expected)
    for a, e in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e)
