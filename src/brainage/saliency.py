"""Where a network looks: voxel-wise saliency maps of predicted brain age, averaged over scans.

``network`` is any module that maps preprocessed volumes ``(B, 1, X, Y, Z)`` to brain age ``(B,)``
or to ``(B, k)`` whose first column is brain age (a :class:`brainage.predict.BrainAgeEnsemble`).

- Gradient: ``|∂ brain age / ∂ voxel|`` (years per intensity unit), one backward pass per scan.
- Occlusion (Zeiler & Fergus 2014): ``|brain age(volume with a patch set to background) −
  brain age(volume)|`` (years), a forward pass per patch position, spread over the patch's voxels.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

METHODS = ("gradient", "occlusion")


def _brain_age(network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    output = network(batch)
    return output[:, 0] if output.ndim == 2 else output


def _tensor(volume: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(volume, dtype=np.float32))[None, None].to(device)


def gradient_saliency(network: nn.Module, volumes: Iterable[np.ndarray]) -> np.ndarray:
    """Mean over ``volumes`` of the absolute gradient of brain age with respect to every voxel."""
    network.eval()
    device = next(network.parameters()).device
    total: np.ndarray | None = None
    count = 0
    for volume in volumes:
        batch = _tensor(volume, device).requires_grad_(True)
        (gradient,) = torch.autograd.grad(_brain_age(network, batch).sum(), batch)
        saliency = gradient.abs()[0, 0].double().cpu().numpy()
        total = saliency if total is None else total + saliency
        count += 1
    if total is None:
        raise ValueError("no volume to compute a saliency map from")
    return (total / count).astype(np.float32)


@torch.inference_mode()
def occlusion_saliency(network: nn.Module, volumes: Iterable[np.ndarray], patch: int = 8, batch_size: int = 16) -> np.ndarray:
    """Mean over ``volumes`` of the absolute change of brain age when a ``patch``³ cube (on a grid of
    stride ``patch``) is set to the volume's background (its minimum)."""
    network.eval()
    device = next(network.parameters()).device
    total: np.ndarray | None = None
    count = 0
    for volume in volumes:
        volume = np.asarray(volume, dtype=np.float32)
        corners = list(itertools.product(*(range(0, n, patch) for n in volume.shape)))
        reference = float(_brain_age(network, _tensor(volume, device))[0])
        saliency = np.zeros(volume.shape, dtype=np.float64)
        for start in range(0, len(corners), batch_size):
            chosen = corners[start : start + batch_size]
            batch = _tensor(volume, device).repeat(len(chosen), 1, 1, 1, 1)
            for k, (x, y, z) in enumerate(chosen):
                batch[k, 0, x : x + patch, y : y + patch, z : z + patch] = float(volume.min())
            changes = (_brain_age(network, batch) - reference).abs().double().cpu().numpy()
            for (x, y, z), change in zip(chosen, changes, strict=False):
                saliency[x : x + patch, y : y + patch, z : z + patch] = change
        total = saliency if total is None else total + saliency
        count += 1
    if total is None:
        raise ValueError("no volume to compute a saliency map from")
    return (total / count).astype(np.float32)


def saliency_map(network: nn.Module, volumes: Iterable[np.ndarray], method: str = "gradient") -> np.ndarray:
    """The mean saliency map of ``volumes`` by ``method`` (one of ``METHODS``)."""
    if method == "gradient":
        return gradient_saliency(network, volumes)
    if method == "occlusion":
        return occlusion_saliency(network, volumes)
    raise ValueError(f"unknown saliency method {method!r}; choose from {', '.join(METHODS)}")
