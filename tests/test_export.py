"""ONNX export: the graph predicts what PyTorch predicts, and a failed check writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from typer.testing import CliRunner

from brainage.cli import app
from brainage.export import ExportMismatchError, export_onnx
from brainage.predict import BrainAgeModel
from brainage.preprocess import config_from_dict, load_cache

runner = CliRunner()


def test_onnx_runtime_predicts_what_pytorch_predicts(untrained_checkpoints: list[Path], tiny_cache_seed: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", *map(str, untrained_checkpoints), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "max abs difference" in result.output and "Exported 2 model(s)" in result.output

    cache = load_cache(tiny_cache_seed)
    volumes = np.stack([np.asarray(cache.volume(i), dtype=np.float32) for i in (0, 5, 17)])
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ages = np.array([70.0, np.nan, 85.0], dtype=np.float32)
    brain_age, corrected = session.run(["brain_age", "brain_age_corrected"], {"volume": volumes[:, None], "age": ages})
    expected = BrainAgeModel.load(untrained_checkpoints, device="cpu").predict_volumes(volumes, ages)
    assert np.isnan(corrected[1]) and np.isnan(expected[1, 1]) and np.isfinite(corrected[[0, 2]]).all()  # no age, no correction
    np.testing.assert_allclose(brain_age, expected[:, 0], atol=1e-3)
    np.testing.assert_allclose(corrected[[0, 2]], expected[[0, 2], 1], atol=1e-3)
    assert np.ptp(expected[:, 0]) > 0.1  # the three scans differ, so agreeing is not trivial

    metadata = {entry.key: entry.value for entry in onnx.load(str(out)).metadata_props}
    assert config_from_dict(json.loads(metadata["preprocessing"])) == cache.config  # how to prepare a scan for it


def test_a_check_beyond_the_tolerance_fails_loudly_and_writes_nothing(tiny_run: Path, tiny_cohort: Path, tmp_path: Path) -> None:
    scan = sorted(tiny_cohort.glob("OAS2_RAW_PART1/*/RAW/mpr-1.nifti.hdr"))[0]
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportMismatchError, match=f"on {scan}.*tolerance -1.*was not written"):
        export_onnx(tiny_run / "fold_0" / "model.ckpt", out, scan=scan, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []
