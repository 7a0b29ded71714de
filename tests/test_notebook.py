"""notebooks/policy_experiments.ipynb runs top to bottom (small sizes) and is committed clean."""
from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "policy_experiments.ipynb")

nbformat = pytest.importorskip("nbformat")


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    stale = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert stale == [], f"code cells {stale} carry outputs; clear them before committing"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("HETSCHED_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # kernel "python3" is ipykernel's native kernel: jupyter_client runs it with this
    # interpreter (sys.executable, the venv), so the project and its dependencies import
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert errors == []
    images = sum(1 for c in code for o in c.outputs if "image/png" in o.get("data", {}))
    assert images >= 5  # SLR, two layered Gantt charts, policies, two decoder Gantt charts, memory
    figs = set(os.listdir(tmp_path / "out" / "notebook"))
    assert {"slr_by_family.png", "decoder_policies.png", "memory_limits.png"} <= figs
