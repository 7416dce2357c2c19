"""The demo end to end on the tiny preset (its cohort copied from the session fixture)."""

from __future__ import annotations

import re
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
    assert len(heldout) > 0 and heldout[["age", "brain_age", "brain_age_gap"]].notna().all().all()
    # 12 people: too few controls for a bias correction; none is made up, and the CSV says why.
    assert heldout["brain_age_gap_corrected"].isna().all() and heldout["bias_correction"].str.contains("refused").all()
    assert trained_on.isdisjoint(heldout["subject_id"])  # predicted people never reached training
    assert len(trained_on) + heldout["subject_id"].nunique() == 12

    report = (out / "report.html").read_text(encoding="utf-8")
    assert '<section id="saliency">' in report and "data:image/png;base64," in report
    truth = pd.read_csv(out / "cohort" / "ground_truth.csv").drop_duplicates("MRI ID").set_index("MRI ID")
    summary = pd.read_csv(out / "run" / "summary.csv")
    session_truth = summary.query("level == 'session' and model.str.startswith('true brain age')")["mae"].iloc[0]
    trained = truth.loc[sorted(set(pd.read_csv(out / "run" / "predictions.csv")["session_id"]))]
    assert session_truth == pytest.approx((trained["brain_age"] - trained["Age"]).abs().mean(), abs=1e-6)  # on the very sessions predicted
    printed = " ".join(result.output.split())
    steps = [line for line in result.output.splitlines() if "total" in line]  # the steps table's last row: wall and CPU seconds
    assert len(steps) == 1 and len(re.findall(r"\b\d+\b", steps[0])) == 2, steps
    for text in (
        "perfect",
        f"{session_truth:.2f}",
        "held-out",
        "mean age",
        "ridge",
        "gap_fidelity: partial r",
        "Bias correction: bias correction refused",
        "report.html",
    ):
        assert text in printed, text
    assert "best possible" not in result.output
