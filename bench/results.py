"""One results file per benchmark run: the numbers beside the command, the commit and the machine
that made them, so that ``docs/benchmarks.md`` is rendered from data (``docs/make_benchmarks_md.py``)
and a table can never be older than its run.

A results file is JSON: ``command`` (argv as run), ``commit`` (``{"sha", "dirty"}``), ``date`` (UTC,
ISO 8601), ``machine`` (:func:`machine`), ``precision``, ``wall_s`` (seconds per step) and ``tables``
(a list of ``{"title", "records", "notes"}``, each record one row). Written atomically.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brainage.utils import atomic_write

ROOT = Path(__file__).resolve().parents[1]


def commit(root: Path = ROOT) -> dict[str, Any]:
    """``{"sha": HEAD, "dirty": whether tracked files differ from it}`` (None where git is not there)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": bool(status.strip())}


def _cpu() -> tuple[str, set[str]]:
    """The CPU model and its feature flags from /proc/cpuinfo (the platform's name elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


_NUMPY_AVX512 = "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"
ISA_ENV = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "NPY_DISABLE_CPU_FEATURES": _NUMPY_AVX512},
    "native": {},
}
"""Environment that limits torch's and numpy's CPU kernels to AVX2 (fp32, as on machines without
AVX-512), or leaves them native. The variables are read when the libraries load: set them for a
child process. ITK and ANTs are built for generic x86-64 and need no limit."""


def machine() -> dict[str, Any]:
    """CPU model, cores usable by this process, memory, whether AVX-512 and AMX are reported, the
    torch version, ``ATEN_CPU_CAPABILITY`` if set, and the GPU's name if there is one."""
    model, flags = _cpu()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    described: dict[str, Any] = {
        "cpu": model,
        "cores": cores,
        "memory_gib": _memory_gib(),
        "avx512": any(flag.startswith("avx512") for flag in flags),
        "amx": any(flag.startswith("amx") for flag in flags),
        "python": platform.python_version(),
        "torch": None,
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
        "gpu": None,
    }
    try:
        import torch

        described["torch"] = torch.__version__
        if torch.cuda.is_available():
            described["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return described


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python values, NaN and infinities as None."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def write_results(
    path: str | Path,
    tables: Sequence[Mapping[str, Any]],
    wall_s: Mapping[str, float],
    precision: str,
    argv: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a results file (the module docstring's fields, then ``extra``) atomically to ``path``.

    Each table is ``{"title": str, "records": [row, ...], "notes": [str, ...]}`` (notes optional).
    """
    document = {
        "command": list(argv if argv is not None else sys.argv),
        "commit": commit(),
        "date": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "machine": machine(),
        "precision": precision,
        "wall_s": {step: round(float(seconds), 1) for step, seconds in wall_s.items()},
        "tables": [{"title": table["title"], "records": list(table["records"]), "notes": list(table.get("notes", []))} for table in tables],
        **(extra or {}),
    }
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(_plain(document), indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return path


#: Display names of the record keys that bench scripts write; other keys show as they are.
LABELS = {
    "predictor": "predictor", "n": "n", "mae": "MAE", "mae_true": "MAE true", "gap_fidelity": "gap fidelity",
    "diff": "Δ MAE vs best baseline", "best_baseline": "best baseline", "ahead": "ahead", "seed": "seed", "level": "level",
    "mae_controls": "MAE controls", "diff_true": "Δ MAE true vs best baseline", "best_baseline_true": "best baseline (MAE true)",
    "ahead_true": "ahead (MAE true)", "diff_fidelity": "Δ gap fidelity vs best baseline", "best_baseline_fidelity": "best baseline (fidelity)",
    "ahead_fidelity": "ahead (fidelity)", "n_case": "Demented people", "n_control": "Nondemented people",
    "difference": "D − ND gap", "cohen_d": "Cohen's d", "p": "p (Welch)",
    "delta_fidelity": "Δ gap fidelity", "delta_mae_controls": "Δ MAE controls", "delta_mae_true": "Δ MAE true", "delta_group_gap": "Δ D − ND gap",
    "within_sd": "within-session SD", "repeatability": "repeatability (2.77 SD)", "icc2": "ICC(2,1)", "icc3": "ICC(3,1)",
    "n_sessions": "sessions", "n_scans": "scans", "k": "repeats per session in the ICC", "n_icc_sessions": "sessions in the ICC",
}  # fmt: skip  # one row per group of related keys


#: Keys shown to 2 significant digits (p values) rather than 2 decimals.
SIGNIFICANT = frozenset({"p", "p_value"})


def _cell(value: Any, digits: int = 2, significant: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if significant else f"{value:.{digits}f}"
    return str(value)


def display(records: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Records as text cells: a value with ``_low``/``_high`` beside it as ``value [low, high]`` (one
    column), floats to 2 decimals (p values to 2 significant digits), booleans as yes/no, missing values as a dash; keys renamed by
    :data:`LABELS`. Columns that no record has a value for are left out."""
    keys = list(dict.fromkeys(key for record in records for key in record))
    shown = [key for key in keys if not (key.endswith(("_low", "_high")) and key.rsplit("_", 1)[0] in keys)]
    shown = [key for key in shown if any(record.get(key) is not None for record in records)]
    rows = []
    for record in records:
        row = {}
        for key in shown:
            cell = _cell(record.get(key), significant=key in SIGNIFICANT)
            if f"{key}_low" in keys and cell != "–" and _cell(record.get(f"{key}_low")) != "–":
                cell += f" [{_cell(record.get(f'{key}_low'))}, {_cell(record.get(f'{key}_high'))}]"
            row[LABELS.get(key, key)] = cell
        rows.append(row)
    return rows
