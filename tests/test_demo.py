"""The demo end to end on the tiny preset (its cohort copied from the session fixture)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from brainage.cli import app
from brainage.preprocess import load_cache

runner = CliRunner()


@pytest.mark.slow
def test_the_tiny_demo_runs_end_to_end(tiny_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    shutil.copytree(tiny_cohort, out / "cohort")  # same preset and seed: the demo reuses it
    result = runner.invoke(app, ["demo", "--out", str(out), "--preset", "tiny", "--pipeline", "seed", "--epochs", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output

    trained_on = set(load_cache(out / "cache").manifest["subject_id"])
    heldout = pd.read_csv(out / "heldout_predictions.csv", dtype={"subject_id": str})
    assert len(heldout) > 0 and heldout[["age", "brain_age", "brain_age_gap_corrected"]].notna().all().all()
    assert trained_on.isdisjoint(heldout["subject_id"])  # predicted people never reached training
    assert len(trained_on) + heldout["subject_id"].nunique() == 12

    report = (out / "report.html").read_text(encoding="utf-8")
    assert '<section id="saliency">' in report and "data:image/png;base64," in report
    best = json.loads((out / "cohort" / "cohort.json").read_text())["true_brain_age_mae"]["scan"]
    for text in ("best possible", f"{best:.2f}", "held-out people", "baseline: mean", "sfcn (network)", str(out / "report.html")):
        assert text in result.output
