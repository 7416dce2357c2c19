"""Tables printed where stdout is not a terminal keep every cell whole."""

from __future__ import annotations

import pandas as pd
import pytest

from brainage.console import console, print_table


def test_a_table_written_to_a_non_terminal_is_not_cut(capsys: pytest.CaptureFixture[str]) -> None:
    frame = pd.DataFrame({
        "model": ["resnet, bias-corrected (residual on 57 control subjects)", "baseline: ridge on voxels (100 principal components)"],
        "sessions": ["out-of-fold", "held-out people"],
        "mae_true_brain_age_of_the_cohort": [3.14159, 4.5],
        "gap_fidelity_partial_r_given_age": [0.7, float("nan")],
        "dementia_gap_demented_minus_nondemented": [2.65, -0.25],
    })  # fmt: skip  # one column per line, brackets hugged
    assert not console.is_terminal  # pytest captures stdout into a plain stream
    print_table(frame, title="A table far wider than 80 columns")
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert max(len(line) for line in lines) > 150  # the 80 columns Rich assumes for a non-terminal
    for cell in [*frame.columns, *frame["model"], *frame["sessions"], "3.14", "4.50", "0.70", "2.65", "-0.25"]:
        assert cell in printed, cell  # whole, on one line: neither cut with "…" nor wrapped
    assert "…" not in printed
    header = next(line for line in lines if "model" in line)
    assert all(column in header for column in frame.columns)  # one header line, no wrapped names
