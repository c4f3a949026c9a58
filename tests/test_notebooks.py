"""The notebooks run headless, top to bottom, with small settings."""
import os
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed")
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed")
pytest.importorskip("ipykernel", reason="ipykernel is not installed")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SMALL = {  # keep the training notebook to seconds
    "TPT_NB_STEPS": "20", "TPT_NB_DMODEL": "24", "TPT_NB_MAX_BYTES": "200000",
    "TPT_NB_ARGS": "--n-layers 1 --d-ff 48 --seq-len 32 --batch-size 4 --eval-batches 2",
    "TPT_NB_MOE_D_FF": "24",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart.ipynb", "3pt_vs_baseline.ipynb", "moe_balancing.ipynb",
                                  "hedgehog_conversion.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch):
    for key, value in {**SMALL, "TPT_NB_OUT": str(tmp_path / "runs"), "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(key, value)
    # the kernel must import this checkout's tpt_ops
    root = str(NOTEBOOKS.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError when a cell fails
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
