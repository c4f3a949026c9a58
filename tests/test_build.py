"""The built extensions: no pybind11, stable ABI, the NumPy face is pure C."""
import shutil
import subprocess

import pytest

import tpt_ops


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) not installed")
@pytest.mark.parametrize("module", ["_C", "_np"])
def test_no_pybind11_symbols(module):
    path = getattr(tpt_ops, module).__file__
    symbols = subprocess.run(["nm", "-C", "-D", path], capture_output=True, text=True, check=True).stdout
    symbols += subprocess.run(["nm", "-C", path], capture_output=True, text=True).stdout
    assert "pybind11" not in symbols


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) not installed")
def test_torch_extension_uses_only_the_stable_c_shim():
    """Undefined symbols from torch are the aoti_torch_*/torch_* C shim, so one build serves torch >= 2.10."""
    out = subprocess.run(["nm", "-D", "--undefined-only", tpt_ops._C.__file__], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    c10_or_at = [n for n in names if n.startswith("_ZN3c10") or n.startswith("_ZN2at") or n.startswith("_ZN5torch")]
    assert not c10_or_at, c10_or_at[:5]
    assert any(n.startswith("aoti_torch_") or n.startswith("torch_") for n in names)
    assert tpt_ops._C.__file__.endswith(".abi3.so")
