"""Shared test utilities: tolerances per dtype, exact (float64) references, grads of a function, thread control."""
from __future__ import annotations

import contextlib

import torch

# (rtol, atol) for comparing an op with its reference computed the same way
# (compile and layout tests; parity tests hold each element to its own bound
# with assert_close_to_exact). Low-precision outputs are rounded once from float32; the two sides may
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
    gouts = [g.to(o.dtype) for g, o in zip(output_grads(out, seed), outs)]  # exact: already rounded to o.dtype
    torch.autograd.backward(outs, gouts)
    return out, [t.grad for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]


# Unit roundoff u = 2^-p of each storage dtype (p significand bits): rounding
# a real number to the dtype moves it by at most u times its magnitude.
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.bfloat16: 2.0**-8,
    torch.float16: 2.0**-11,
}

# c of assert_close_to_exact, per dtype (see there for the derivation).
ROUNDOFF_FACTOR = {
    torch.float64: 64.0,
    torch.float32: 64.0,
    torch.bfloat16: 3.0,
    torch.float16: 3.0,
}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision the kernels compute in for a storage dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def output_grads(outputs, seed: int = 0):
    """The output gradients grads() draws for ``outputs`` (a tensor or a tuple), in float64."""
    outs = outputs if isinstance(outputs, tuple) else (outputs,)
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen, dtype=torch.float32).to(o.dtype).double() for o in outs]


def exact_grads(fn, inputs, like, seed: int = 0):
    """grads(fn, inputs) in float64 from the same values: the exact counterpart
    of an op's grads() computed in a lower precision.

    Every floating input is cast to float64 (exact), and the output gradients
    are output_grads(like): those grads() drew for ``like``, the op under
    test's outputs (a tensor or a tuple), rounded to their dtypes.
    """
    inputs = [t.detach().double().requires_grad_(t.requires_grad)
              if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    gouts = output_grads(like, seed)
    assert [o.shape for o in outs] == [g.shape for g in gouts]
    torch.autograd.backward(outs, gouts)
    return out, [t.grad for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]


def assert_close_to_exact(actual: torch.Tensor, expected: torch.Tensor, scale=0.0, stored=0.0,
                          stored_dtype: torch.dtype | None = None, name: str = "") -> None:
    """Element by element, |actual - expected| <= bound, where

        bound = c_a u_a (|expected| + tiny_a) + c_s u_s stored + c_k u_k scale

    ``expected`` is the exact result (float64, from the values the op saw:
    exact_grads); u_a, u_s, u_k are the unit roundoffs of actual's dtype, of
    ``stored_dtype`` (default: actual's) and of the compute precision
    (compute_dtype(actual.dtype)), each c its ROUNDOFF_FACTOR; tiny_a is the
    smallest normal number of actual's dtype (u_a * tiny_a is half the
    spacing of its subnormals). The three terms are the three sources of error:
    - the result's own rounding into its dtype;
    - ``stored``: the size of the terms that use a value the op rounded to
      ``stored_dtype`` and read back (a backward reading the saved output y
      of a rotation or h_new of a block): each moves by u_s times its size;
    - ``scale``: the size of everything summed into the element, computed in
      the compute precision from exact inputs.
    The caller derives ``scale`` and ``stored`` (tensors broadcasting to
    expected, or numbers) for its op:
    - for a formula of a few terms (dx = r*(g - x*r^2*mean(g*x))), the sum of
      their magnitudes: each term's rounding error is at most u times it;
    - for a reduction over rows (dweight, dtheta, a table gradient), the root
      of the sum of the squares of its terms: the size of a sum of
      independent rounding errors, one per term. The sum of magnitudes is a
      worst-case bound that grows like the number of terms, not like its
      square root, and would let a reduction that drops a block of rows pass;
    - 0 for a product of exact inputs, whose relative error |expected| bounds.

    Why these constants.
    - bfloat16, float16 (c = 3): one rounding costs at most u times the
      value; the result is rounded once, and each stored value once. c = 2
      plus a margin, which also puts a sum of independent rounding errors
      (uniform, standard deviation u/sqrt(3) per unit term) 5 standard
      deviations inside the bound.
    - float32, float64 (c = 64), also the compute precision of every dtype: a
      sum of k terms in sequence carries about sqrt(k) * u times the size of
      its terms (independent errors of either sign). The longest sequences
      here are 4096 terms (a 4096-wide row; 128 rows of a block times their
      phases and pairs): sqrt(4096) = 64. So at magnitude 1 a float32 result
      is held to 4e-6, a fifth of a fixed 2e-5, and far tighter below it.
    """
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    stored_dtype = stored_dtype or actual.dtype
    compute = compute_dtype(actual.dtype)
    expected = expected.double()
    error = (actual.double() - expected).abs()
    bound = (ROUNDOFF_FACTOR[actual.dtype] * UNIT_ROUNDOFF[actual.dtype]
             * (expected.abs() + torch.finfo(actual.dtype).smallest_normal)
             + ROUNDOFF_FACTOR[stored_dtype] * UNIT_ROUNDOFF[stored_dtype] * stored
             + ROUNDOFF_FACTOR[compute] * UNIT_ROUNDOFF[compute] * scale)
    bad = ~(error <= bound)  # NaN fails
    if bad.any():
        excess = torch.where(bad, error / bound, torch.zeros_like(error))
        i = int(excess.flatten().argmax())
        raise AssertionError(
            f"{name or 'result'} ({actual.dtype}): {int(bad.sum())} of {error.numel()} elements exceed their "
            f"bound; worst at flat index {i}: actual {actual.flatten()[i].item()!r}, expected "
            f"{expected.flatten()[i].item()!r}, error {error.flatten()[i].item():.3g} > bound "
            f"{bound.flatten()[i].item():.3g} ({excess.flatten()[i].item():.3g}x)")


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


def compiled_backward_graph(fn, inputs) -> str:
    """The backward graph (as text) that AOTAutograd traces for torch.compile(fn, fullgraph=True) in training.

    fn's outputs are summed and backpropagated to the inputs that require grad.
    """
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def record_backward(gm, example_inputs):
        graphs.append(str(gm.graph))
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=lambda gm, example_inputs: make_boxed_func(gm.forward),
                           bw_compiler=record_backward)
    compiled = torch.compile(fn, backend=backend, fullgraph=True, dynamic=False)
    out = compiled(*inputs)
    sum(o.sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    assert len(graphs) == 1, f"expected one backward graph, got {len(graphs)}"
    return graphs[0]
