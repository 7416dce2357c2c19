"""The one inference path: preprocessed volumes → brain age, for training's out-of-fold
predictions, ``brainage predict``, the report and the ONNX export alike.

:class:`BrainAgeEnsemble` averages each member's prediction of a volume and of its left–right
mirror image (where the member was trained so), de-normalises with the member's training age
statistics, applies the member's age-bias correction where the age is known, and averages the
members.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from brainage.checkpoint import BrainAgeCheckpoint
from brainage.models import AgeRegressor

#: The axis of a prepared volume that runs left–right (caches store RAS-oriented volumes).
LEFT_RIGHT_AXIS = 0
#: Columns of :meth:`BrainAgeEnsemble.forward`'s output.
OUTPUT_COLUMNS = ("brain_age", "brain_age_corrected", "member_sd")


def resolve_accelerator(accelerator: str = "auto") -> str:
    """``"auto"`` → CUDA, else Apple MPS, else CPU; anything else is returned as given."""
    if accelerator != "auto":
        return accelerator
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _correction_terms(checkpoint: BrainAgeCheckpoint) -> tuple[float, float, float]:
    """``(s, c, d)`` with corrected = (brain_age − s·age − c) / d; NaN when there is no usable correction."""
    corrector = checkpoint.corrector
    if corrector is None or not corrector.applicable:
        return math.nan, math.nan, math.nan
    if corrector.method == "residual":
        return corrector.slope_, corrector.intercept_, 1.0
    return 0.0, corrector.intercept_, corrector.slope_


class BrainAgeEnsemble(nn.Module):
    """Preprocessed volumes ``(B, 1, X, Y, Z)`` and ages ``(B,)`` (NaN where unknown; None: all unknown) → ``(B, 3)``:
    brain age, bias-corrected brain age (NaN where the age is unknown or a member has no usable
    correction) and the SD of the members' brain ages (0 for one member)."""

    # buffers, one row per member, registered in __init__
    age_mean: torch.Tensor
    age_std: torch.Tensor
    age_slope: torch.Tensor
    offset: torch.Tensor
    scale: torch.Tensor

    def __init__(self, checkpoints: Sequence[BrainAgeCheckpoint]) -> None:
        super().__init__()
        self.members = nn.ModuleList(checkpoint.model for checkpoint in checkpoints)
        self.flips = [bool(checkpoint.tta_flip) for checkpoint in checkpoints]

        def column(values: Iterable[float]) -> torch.Tensor:
            return torch.tensor(list(values), dtype=torch.float32)

        terms = [_correction_terms(checkpoint) for checkpoint in checkpoints]
        self.register_buffer("age_mean", column(c.age_mean for c in checkpoints))
        self.register_buffer("age_std", column(c.age_std for c in checkpoints))
        self.register_buffer("age_slope", column(t[0] for t in terms))
        self.register_buffer("offset", column(t[1] for t in terms))
        self.register_buffer("scale", column(t[2] for t in terms))

    def member_ages(self, volumes: torch.Tensor) -> torch.Tensor:
        """``(B, members)`` brain age in years of each member (flip-averaged where it was trained so)."""
        size = volumes.shape[0]
        mirrored = torch.cat([volumes, torch.flip(volumes, dims=(2 + LEFT_RIGHT_AXIS,))])
        ages = []
        for k, (member, flip) in enumerate(zip(self.members, self.flips, strict=False)):
            assert isinstance(member, AgeRegressor)  # narrows nn.ModuleList's items for the type checker
            if flip:
                z = member.predict_z(member(mirrored))
                z = (z[:size] + z[size:]) / 2
            else:
                z = member.predict_z(member(volumes))
            ages.append(z.float() * self.age_std[k] + self.age_mean[k])
        return torch.stack(ages, dim=1)

    def forward(self, volumes: torch.Tensor, age: torch.Tensor | None = None) -> torch.Tensor:
        ages = self.member_ages(volumes)
        age = torch.full_like(ages[:, :1], math.nan) if age is None else age.to(ages.dtype)[:, None]
        corrected = (ages - self.age_slope * age - self.offset) / self.scale + 0 * age  # NaN where age is NaN
        spread = ages.std(dim=1, unbiased=False)
        return torch.stack([ages.mean(dim=1), corrected.mean(dim=1), spread], dim=1)


@torch.inference_mode()
def predict_batches(
    network: BrainAgeEnsemble, batches: Iterable[Any], ages: Sequence[float] | np.ndarray | None = None, device: torch.device | str = "cpu"
) -> np.ndarray:
    """``(N, 3)`` :data:`OUTPUT_COLUMNS` for every volume of ``batches`` (a tensor, or a tuple whose
    first item is the images), in order, in fp32 and eval mode; ``ages`` (years, NaN where unknown)
    of the N volumes decide the bias correction (all NaN when None)."""
    network = network.to(device).eval()
    outputs, start = [], 0
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        size = len(images)
        age = torch.full((size,), math.nan) if ages is None else torch.as_tensor(np.asarray(ages, dtype=np.float32)[start : start + size])
        outputs.append(network(images.to(device=device, dtype=torch.float32).contiguous(), age.to(device)).double().cpu())
        start += size
    return torch.cat(outputs).numpy() if outputs else np.empty((0, len(OUTPUT_COLUMNS)))
