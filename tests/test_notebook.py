"""notebooks/results.ipynb: executes end to end on the session's tiny sweep, and is committed without outputs."""

from __future__ import annotations

import nbformat
from conftest import REPO_ROOT
from nbclient import NotebookClient

pytest_plugins = ["sweep_fixtures"]
NOTEBOOK = REPO_ROOT / "notebooks" / "results.ipynb"


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    dirty = [index for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{NOTEBOOK} cells {dirty} hold outputs: strip them with `make notebook-clean`"


def test_results_notebook_executes_on_the_tiny_sweep(tiny_sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("DNL_SWEEP_DIRS", str(tiny_sweep.sweep_dir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any cell error
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    assert "2 completed | 2 failed" in text
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) >= 4  # cascade stages, blind vs non-blind, size vs PSNR, image crops
    tables = "".join(output["data"].get("text/html", "") for output in outputs if "data" in output)
    assert "noise.sigma must be &gt;= 0" in tables or "noise.sigma must be >= 0" in tables  # the failed jobs
    assert all(level in tables for level in ("sigma15", "sigma25", "sigma50"))  # the grid table's columns
