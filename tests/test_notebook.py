"""The tutorial notebook runs top to bottom on the ``tiny`` preset and prints what the run wrote."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "tutorial.ipynb"
KERNEL = "brainage-tests"


def _venv_kernel(folder: Path) -> KernelManager:
    """A kernel manager for this interpreter (the project's venv), whatever kernels Jupyter knows."""
    spec = folder / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "brainage tests", "language": "python"}))
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(folder)]))


def _outputs(notebook: nbformat.NotebookNode) -> tuple[str, str, list[str], int]:
    """All stdout, all stderr, every text/html output and the number of PNG outputs."""
    stdout, stderr, html, pngs = [], [], [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                (stdout if output["name"] == "stdout" else stderr).append(output["text"])
            elif output["output_type"] in ("display_data", "execute_result"):
                html += [output["data"]["text/html"]] if "text/html" in output["data"] else []
                pngs += "image/png" in output["data"]
    return "".join(stdout), "".join(stderr), html, pngs


@pytest.mark.slow
def test_the_tutorial_runs_on_tiny_and_prints_numbers_of_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAINAGE_TUTORIAL_PRESET", "tiny")
    work = tmp_path / "work"
    work.mkdir()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, km=_venv_kernel(tmp_path / "kernels"), timeout=900, resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    stdout, stderr, html, pngs = _outputs(notebook)
    assert "Traceback" not in stderr
    assert "preset tiny, pipeline seed" in stdout
    assert pngs >= 6  # ages, before/after, QC picture, training curves, predicted vs true, gap, saliency
    assert any("brain_age_gap_corrected" in table for table in html)  # the new people's predictions

    run = work / "brainage-tutorial" / "tiny" / "run"
    assert sorted(path.parent.name for path in run.glob("fold_*/model.ckpt")) == ["fold_0", "fold_1"]
    summary = pd.read_csv(run / "summary.csv")
    scans = summary[(summary["level"] == "scan") & (summary["correction"] == "none")].set_index("model")
    printed = re.search(r"network MAE (\d+\.\d\d) y against (\d+\.\d\d) y for the mean age and (\d+\.\d\d) y", stdout)
    assert printed is not None, stdout
    assert printed[1] == f"{scans.loc['sfcn', 'mae']:.2f}"
    assert printed[2] == f"{scans.loc['mean age', 'mae']:.2f}"
    best = json.loads((work / "brainage-tutorial" / "tiny" / "cohort" / "cohort.json").read_text())["true_brain_age_mae"]["scan"]
    assert printed[3] == f"{best:.2f}"
