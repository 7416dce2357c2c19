"""The hidden truth of a synthetic cohort, matched to scans on disk: each scan's true brain age."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

#: How many folders up from a scan to look for the cohort's ``ground_truth.csv``.
SEARCH_DEPTH = 4
GROUND_TRUTH = "ground_truth.csv"


def true_brain_ages(paths: Sequence[str] | pd.Series) -> np.ndarray | None:
    """The true brain age (years) of every scan in ``paths`` that belongs to a synthetic cohort (NaN
    for the others), or None when none does. The cohort is found from its ``ground_truth.csv`` a
    few folders above a scan; scans are matched by their path inside the cohort."""
    paths = [str(path) for path in paths]
    tables: dict[Path, dict[str, float]] = {}
    values = np.full(len(paths), np.nan)
    for i, path in enumerate(paths):
        for root in list(Path(path).parents)[:SEARCH_DEPTH]:
            if root not in tables and (root / GROUND_TRUTH).is_file():
                truth = pd.read_csv(root / GROUND_TRUTH, usecols=["path", "brain_age"])
                tables[root] = dict(zip(truth["path"].astype(str), truth["brain_age"].astype(float), strict=False))
            if root in tables:
                relative = Path(path).relative_to(root).as_posix()
                values[i] = tables[root].get(relative, np.nan)
                break
    return values if np.isfinite(values).any() else None
