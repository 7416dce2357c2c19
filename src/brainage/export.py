"""Export a trained model (one checkpoint or an ensemble) to ONNX for deployment, checked against PyTorch.

The ONNX graph is :class:`brainage.inference.BrainAgeEnsemble`, the function behind ``brainage
predict`` and the run's out-of-fold predictions: inputs ``volume`` ``(B, 1, X, Y, Z)``, a
preprocessed scan on the model's grid (``preprocessing`` in the file's metadata says how to make
one), and ``age`` ``(B,)`` in years (NaN where unknown); outputs ``brain_age`` and
``brain_age_corrected`` ``(B,)`` in years (corrected NaN where the age is unknown or the model has
no usable correction), with the same left–right flip averaging as ``brainage predict``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from brainage import __version__
from brainage.errors import BrainAgeError
from brainage.predict import BrainAgeModel
from brainage.preprocess import preprocess_scan
from brainage.preprocess.stages import zscore
from brainage.preprocess.template import template_on_grid
from brainage.utils import atomic_write

if TYPE_CHECKING:
    import onnx

OUTPUTS = ("brain_age", "brain_age_corrected")
#: Largest difference (years) between ONNX Runtime and PyTorch that an export may show.
DEFAULT_TOLERANCE = 1e-3
OPSET = 17


class ExportMismatchError(BrainAgeError):
    """ONNX Runtime and PyTorch disagree on the check scan beyond the tolerance."""


@dataclass(frozen=True)
class ExportResult:
    """The written file, what the parity check ran on and the largest difference it found (years)."""

    path: Path
    check_input: str
    max_abs_difference: float
    tolerance: float
    n_models: int


class _NamedOutputs(nn.Module):
    """The ensemble with its two output columns as separate, named graph outputs."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, volume: torch.Tensor, age: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ages = self.network(volume, age)
        return ages[:, 0], ages[:, 1]


def export_onnx(
    model: BrainAgeModel | str | Path | Iterable[str | Path],
    out: str | Path,
    scan: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Write ``model`` (a :class:`BrainAgeModel`, checkpoints or run folders) to the ONNX file ``out``.

    The export is checked before it is kept: ONNX Runtime and PyTorch predict the same volume
    (``scan`` preprocessed with the model's configuration, else the MNI152 template on the
    model's grid) and the largest absolute difference must not exceed ``tolerance`` years, or
    :class:`ExportMismatchError` is raised and nothing is written.
    """
    import onnx
    import onnxruntime

    model = model if isinstance(model, BrainAgeModel) else BrainAgeModel.load(model, device="cpu")
    network = _NamedOutputs(model.network).cpu().eval()
    if scan is not None:
        volume, check_input = preprocess_scan(scan, model.config).volume, str(scan)
    else:
        template, _ = template_on_grid(model.config.affine, model.config.shape)
        volume, check_input = zscore(np.array(template, dtype=np.float32)), "MNI152 template on the model's grid"
    batch = torch.from_numpy(np.asarray(volume, dtype=np.float32)[None, None].copy())
    age = torch.tensor([model.mean_training_age], dtype=torch.float32)  # a known age, so the correction is checked too
    with torch.inference_mode():
        expected = np.stack([output.double().numpy() for output in network(batch, age)], axis=1)

    with atomic_write(out) as tmp:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*feature will be removed.*")
            torch.onnx.export(
                network,
                (batch, age),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=["volume", "age"],
                output_names=list(OUTPUTS),
                dynamic_axes={"volume": {0: "batch"}, "age": {0: "batch"}, **{name: {0: "batch"} for name in OUTPUTS}},
            )
        graph = onnx.load(str(tmp))
        _add_metadata(graph, model)
        onnx.save(graph, str(tmp))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        actual = np.stack(session.run(list(OUTPUTS), {"volume": batch.numpy(), "age": age.numpy()}), axis=1).astype(np.float64)
        difference = _max_abs_difference(expected, actual)
        if not difference <= tolerance:
            raise ExportMismatchError(
                f"ONNX Runtime and PyTorch differ by {difference:.3g} years on {check_input} (tolerance {tolerance:g}); {out} was not written"
            )
    return ExportResult(Path(out), check_input, difference, tolerance, len(model.checkpoints))


def _add_metadata(graph: onnx.ModelProto, model: BrainAgeModel) -> None:
    """What a deployment needs beside the graph: how to preprocess, training age range, provenance."""
    low, high = model.train_age_range
    values = {
        "brainage_version": __version__,
        "preprocessing": json.dumps(model.config.to_dict()),
        "grid_affine": json.dumps(np.asarray(model.config.affine).tolist()),
        "train_age_range": json.dumps([low, high]),
        "models": json.dumps([checkpoint.model_name for checkpoint in model.checkpoints]),
        "left_right_flip_averaging": json.dumps([checkpoint.tta_flip for checkpoint in model.checkpoints]),
        "bias_correction": model.correction,
    }
    for key, value in values.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value


def _max_abs_difference(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest |expected − actual|; a NaN on one side only counts as infinitely different."""
    both_nan = np.isnan(expected) & np.isnan(actual)
    difference = np.abs(expected - actual)
    difference[both_nan] = 0.0
    difference[np.isnan(difference)] = np.inf
    return float(difference.max())
