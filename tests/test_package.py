"""The package without its compiled extension: references and backend="reference" models work, fused ops say
how to build."""
import subprocess
import sys
import textwrap

WITHOUT_EXTENSION = """
import sys
sys.modules["tpt_ops._C"] = None  # the extension cannot be imported, as in a checkout never built
import pytest
import torch
import tpt_ops
import tpt_ops.reference
from tpt_ops.models import TPTConfig, ThreePhaseTransformer

assert not hasattr(torch.ops.tpt, "phase_rmsnorm")
config = TPTConfig(vocab_size=32, d_model=24, n_layers=2, n_q_heads=6, n_kv_heads=3, n_phases=3, d_ff=40,
                   max_seq_len=16, backend="reference")
model = ThreePhaseTransformer(config)
ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
model(ids).float().logsumexp(-1).mean().backward()
assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
assert tpt_ops.reference.swiglu(torch.ones(2, 4)).shape == (2, 2)

BUILD = "pip install --no-build-isolation -e ."
with pytest.raises(ImportError, match=r"tpt_ops.phase_rmsnorm needs the compiled extension tpt_ops._C") as info:
    tpt_ops.phase_rmsnorm(torch.ones(2, 6), torch.ones(6), 3)
assert BUILD in str(info.value)
fused = ThreePhaseTransformer(config.replace(backend="fused"))
with pytest.raises(ImportError, match=r"tpt_ops.horn_embedding needs the compiled extension") as info:
    fused(ids)
assert BUILD in str(info.value)
with pytest.raises(ImportError, match=r"tpt_ops.ops.norm needs the compiled extension") as info:
    import tpt_ops.ops.norm
assert BUILD in str(info.value)
print("ok")
"""


def test_reference_backend_works_without_the_compiled_extension():
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(WITHOUT_EXTENSION)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]
