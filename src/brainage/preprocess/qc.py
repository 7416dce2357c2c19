"""Quality control: a registration score per scan and a PNG of three orthogonal mid-slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from brainage.preprocess.template import template_on_grid
from brainage.utils import atomic_write


def registration_score(volume: np.ndarray, affine: np.ndarray) -> float:
    """Pearson correlation of ``volume`` with the MNI152 template inside the template's brain mask.

    Both live on the same grid (``affine``, ``volume.shape``). NaN if the grid misses the brain.
    """
    template, brain = template_on_grid(affine, volume.shape)
    if brain.sum() < 2:
        return float("nan")
    a = volume[brain].astype(np.float64)
    b = template[brain].astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def save_qc_png(volume: np.ndarray, path: str | Path, title: str = "") -> None:
    """Write a small PNG of sagittal, coronal and axial slices of a RAS volume, atomically.

    The slices cross at the centre of the image content (above-background intensity): the grid's
    middle for a registered brain, wherever the head landed for the ``seed`` grid.
    """
    from matplotlib.figure import Figure

    volume = np.asarray(volume, dtype=np.float32)
    content = volume - volume.min()
    centre = ndimage.center_of_mass(content) if content.any() else [n / 2 for n in volume.shape]
    x, y, z = (int(np.clip(round(c), 0, n - 1)) for c, n in zip(centre, volume.shape, strict=False))
    slices = (volume[x, :, :], volume[:, y, :], volume[:, :, z])
    low, high = np.percentile(volume, (1, 99))
    figure = Figure(figsize=(6, 2.2), dpi=80)
    for k, (image, label) in enumerate(zip(slices, ("sagittal", "coronal", "axial"), strict=False)):
        axis = figure.add_subplot(1, 3, k + 1)
        axis.imshow(image.T, origin="lower", cmap="gray", vmin=low, vmax=high)
        axis.set_title(label, fontsize=8)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=8)
    with atomic_write(path) as tmp:
        figure.savefig(tmp, format="png")
