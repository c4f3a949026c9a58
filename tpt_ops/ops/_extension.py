"""Loads the compiled extension ``tpt_ops._C`` once, for the whole package.

``tpt_ops._C`` defines the ``torch.ops.tpt.*`` schemas and their CPU kernels.
The family modules of :mod:`tpt_ops.ops` attach autograd and fake kernels to
those ops and call them as ``torch.ops.tpt.*``; nothing else imports the
extension. Without it (a checkout that was never built) ``import tpt_ops``,
:mod:`tpt_ops.reference` and ``backend="reference"`` models still work; a
fused op raises the :class:`ImportError` of :func:`missing_extension`.
"""
from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension)

BUILD_COMMAND = "pip install --no-build-isolation -e ."

try:
    from tpt_ops import _C  # noqa: F401  (defines torch.ops.tpt.*)
except ImportError as error:
    LOAD_ERROR: ImportError | None = error
else:
    LOAD_ERROR = None


def missing_extension(what: str) -> ImportError:
    """The error for ``what`` (an op or module) used while ``tpt_ops._C`` is not importable."""
    return ImportError(f"{what} needs the compiled extension tpt_ops._C, which could not be imported "
                       f"({LOAD_ERROR}); build it in the repository with `{BUILD_COMMAND}`, "
                       "or use backend='reference' (plain PyTorch)")


def require_extension(what: str) -> None:
    """Raises :func:`missing_extension`'s error unless ``tpt_ops._C`` loaded."""
    if LOAD_ERROR is not None:
        raise missing_extension(what) from LOAD_ERROR
