"""Quality control: a registration score per scan, a check of its axes' orientation and a PNG of
three orthogonal mid-slices."""

from __future__ import annotations

import itertools
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


def _arrangements() -> tuple[tuple[str, tuple[int, ...], tuple[bool, ...]], ...]:
    """Every arrangement of a cube's axes but the identity: (name, permutation, flips)."""
    found: list[tuple[str, tuple[int, ...], tuple[bool, ...]]] = []
    for order in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            if order == (0, 1, 2) and not any(flips):
                continue
            name = "(" + ", ".join(("-" if flip else "") + "xyz"[axis] for axis, flip in zip(order, flips, strict=True)) + ")"
            found.append((f"as {name}", order, flips))
    return tuple(found)


#: The 47 other arrangements of a cubic grid's axes (axis permutations and flips about its centre).
ARRANGEMENTS = _arrangements()


def orientation_check(volume: np.ndarray, affine: np.ndarray) -> tuple[float, float]:
    """How much better the registered ``volume`` fits the template in another arrangement of its axes
    than as it is, and the index in :data:`ARRANGEMENTS` of the best one (NaN, NaN: undefined).

    A scan whose header swaps two axes or flips one reaches the template rotated by 90° or 180°,
    which an affine registration started from the centre of mass does not undo: then a rearranged
    copy fits clearly better. A pure left–right flip cannot be seen this way: the MNI152 template
    is symmetric (``nlin_sym``), so a mirrored brain fits it as well as the brain itself. Only
    arrangements that keep the grid's shape are tried (all 47 on a cubic grid).
    """
    template, brain = template_on_grid(affine, volume.shape)
    if brain.sum() < 2 or float(template[brain].std()) == 0:
        return float("nan"), float("nan")
    target = template[brain].astype(np.float64)
    target = (target - target.mean()) / target.std()

    def fit(candidate: np.ndarray) -> float:
        values = candidate[brain].astype(np.float64)
        spread = values.std()
        return float(np.mean(target * (values - values.mean())) / spread) if spread > 0 else float("nan")

    identity = fit(volume)
    best, index = -np.inf, float("nan")
    for k, (_, order, flips) in enumerate(ARRANGEMENTS):
        if tuple(volume.shape[axis] for axis in order) != volume.shape:
            continue
        arranged = np.transpose(volume, order)
        arranged = arranged[tuple(slice(None, None, -1) if flip else slice(None) for flip in flips)]
        score = fit(arranged)
        if score > best:
            best, index = score, float(k)
    if not np.isfinite(identity) or not np.isfinite(best):
        return float("nan"), float("nan")
    return best - identity, index


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


def save_missing_qc_png(path: str | Path, volume_file: str | Path, title: str = "") -> None:
    """:func:`save_qc_png` of the volume stored in ``volume_file`` (``.npy``), read only where the
    picture at ``path`` is missing (a scan that ``predict`` prepared, which draws none)."""
    if not Path(path).is_file():
        save_qc_png(np.load(volume_file), path, title)
