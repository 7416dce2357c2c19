"""Preprocessing stages: small named functions, array (+ affine) in, array out.

Arrays are float32 3-D volumes; an affine maps voxel indices to RAS+ world millimetres
(nibabel's convention). Each stage does one thing and no I/O, so the pipelines in
:mod:`brainage.preprocess.pipelines` are plain compositions of them.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Literal

import nibabel as nib
import numpy as np
from scipy import ndimage

from brainage.utils import mask_bounds

# ITK/ANTs physical space is LPS; nibabel world space is RAS. F maps one onto the other (F = F⁻¹).
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def squeeze_trailing(data: np.ndarray) -> np.ndarray:
    """Drop trailing singleton axes beyond the third (e.g. OASIS' ``256×256×128×1``); what
    ``nib.squeeze_image`` does to an image, for the stages' plain arrays, refusing what is not 3-D."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {data.shape}")
    return data


def reorient_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute the voxel axes to the closest canonical (RAS+) orientation.

    Only axis permutations and flips are applied (no interpolation); the returned affine
    describes the same world positions for the reordered array. ``nib.as_closest_canonical`` does
    the same to an image object; the stages take and give arrays and affines.
    """
    current = nib.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt("RAS"))
    out = nib.orientations.apply_orientation(data, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(out, dtype=np.float32), new_affine


def n4_bias_correct(data: np.ndarray, affine: np.ndarray, shrink_factor: int = 4) -> np.ndarray:
    """N4 bias-field correction (ANTs) of the whole volume; intensities stay positive."""
    import ants

    image = to_ants(np.clip(data, 0, None), affine)
    corrected = ants.n4_bias_field_correction(image, shrink_factor=shrink_factor)
    return corrected.numpy().astype(np.float32)


def skull_strip(data: np.ndarray, shape: int = 192, threshold: float = 0.5, device: str = "cpu") -> np.ndarray:
    """Boolean brain mask from deepbet (weights ship with the package; runs offline).

    ``data`` must be RAS-oriented. deepbet finds a bounding box on a 128³ copy, then segments
    the box resampled to ``shape``³ (deepbet's default is 256; 192 is cheaper on CPU).
    The largest connected component is kept and its holes filled, as deepbet does.
    """
    model = deepbet_model(device)
    probability = model.run_model(data.copy(), shape=(shape, shape, shape))
    return _largest_filled(probability > threshold)


def skull_strip_coarse(data: np.ndarray, threshold: float = 0.5, device: str = "cpu") -> np.ndarray:
    """Boolean brain mask from deepbet's first network alone, the one deepbet runs to find the brain's box.

    It sees a 128³ nearest-neighbour copy of the whole RAS volume (deepbet's input size and
    intensity scaling; the percentiles from numpy, cheaper than torch's sort), run frozen
    for inference, and its brain probability is brought back to the volume's grid by
    trilinear interpolation; the largest connected component is kept and its holes filled.
    """
    import torch
    import torch.nn.functional as F
    from deepbet.utils import normalize

    network, target = _coarse_network(device)
    volume = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    small = F.interpolate(volume[None, None], (128, 128, 128), mode="nearest-exact")[0, 0]
    low, high = (torch.tensor(value, dtype=torch.float32) for value in np.quantile(small.numpy(), (0.005, 0.995)))
    with torch.inference_mode():
        probability = network(normalize(small, low, high)[None, None].to(target))[:, 1:]
        probability = F.interpolate(probability, data.shape, mode="trilinear", align_corners=False)[0, 0]
    return _largest_filled(probability.cpu().numpy() > threshold)


@functools.lru_cache(maxsize=2)
def _coarse_network(device: str = "cpu"):
    """deepbet's first network frozen and optimised for inference (convolution and batch norm
    fused: half the CPU time, probabilities within 2e-4 of the unfrozen network's), and its device."""
    import torch

    network = deepbet_model(device).bbox_model.eval()
    target = next(network.parameters()).device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's, like deepbet's own torch.jit.load
        return torch.jit.optimize_for_inference(torch.jit.freeze(network)), target


def _largest_filled(mask: np.ndarray) -> np.ndarray:
    import fill_voids
    from deepbet.utils import keep_largest_connected_component

    if not mask.any():
        raise ValueError("skull stripping found no brain")
    return fill_voids.fill(keep_largest_connected_component(mask)).astype(bool)


def torch_device(device: str = "cpu") -> str:
    """``device`` if torch can use it, else ``"cpu"`` with a warning; ``"auto"`` picks CUDA, then MPS, then CPU."""
    import torch

    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if device == "auto":
        return next(name for name, ok in available.items() if ok)
    kind = device.split(":")[0]
    if kind not in available:
        raise ValueError(f"unknown device {device!r}; choose cpu, cuda, mps or auto")
    if not available[kind]:
        warnings.warn(f"device {device!r} is not available here; skull stripping runs on the CPU", RuntimeWarning, stacklevel=2)
        return "cpu"
    return device


@functools.lru_cache(maxsize=2)
def deepbet_model(device: str = "cpu"):
    """deepbet's two networks, loaded once per process and device (``torch_device`` decides where)."""
    from deepbet import BrainExtraction

    target = torch_device(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load inside deepbet
        model = BrainExtraction(no_gpu=True)
    model.model.to(target)
    model.bbox_model.to(target)
    return model


def resample(
    data: np.ndarray,
    affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    world_to_source: np.ndarray | None = None,
    order: Literal[0, 1, 2, 3, 4, 5] = 1,
    antialias: float = 0.0,
) -> np.ndarray:
    """Resample ``data`` onto a target grid (voxel → world given by ``target_affine``).

    ``world_to_source`` optionally maps target-world points into the source's world first
    (a registration result, 4×4, RAS). Points outside the source get 0. ``antialias`` > 0 first
    smooths ``data`` to an FWHM of that many target voxels (:func:`antialias_sigmas`), so that a
    coarser target grid averages the source instead of point-sampling it (which aliases, and moves
    with sub-voxel shifts of the head).
    """
    mapping = np.linalg.inv(affine) @ (np.eye(4) if world_to_source is None else world_to_source) @ target_affine
    if antialias:
        data = ndimage.gaussian_filter(data.astype(np.float32, copy=False), antialias_sigmas(mapping, antialias), mode="constant")
    out = ndimage.affine_transform(data, mapping[:3, :3], offset=mapping[:3, 3], output_shape=tuple(target_shape), order=order, cval=0.0)
    return out.astype(np.float32)


def antialias_sigmas(mapping: np.ndarray, width: float = 1.0) -> np.ndarray:
    """Gaussian SDs (source voxels, per source axis) that widen each source voxel to ``width``
    target voxels.

    Row ``i`` of ``mapping[:3, :3]`` (target voxel → source voxel) holds the extent of a target
    step along source axis ``i``; its norm ``f`` is the target voxel's size in source voxels (exact
    for a rigid mapping onto an isotropic grid). A Gaussian of FWHM ``√((width·f)² − 1)`` added to
    the source voxel's own width gives an FWHM of ``width·f``: none where that is a voxel or less.
    """
    factors = width * np.linalg.norm(mapping[:3, :3], axis=1)
    return np.sqrt(np.clip(factors**2 - 1.0, 0.0, None)) / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def isotropic_grid(affine: np.ndarray, shape: tuple[int, ...], voxel_size: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An axis-aligned RAS grid of ``voxel_size`` mm that covers the field of view of a volume."""
    return _grid_over(affine, np.zeros(3, dtype=int), np.asarray(shape[:3]) - 1, voxel_size)


def box_grid(affine: np.ndarray, mask: np.ndarray, voxel_size: float, margin: float | None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An axis-aligned RAS grid of ``voxel_size`` mm over the world box of ``mask``'s bounding box
    grown by ``margin`` mm (None: the volume's whole field of view, :func:`isotropic_grid`)."""
    if margin is None:
        return isotropic_grid(affine, mask.shape, voxel_size)
    return _grid_over(affine, *mask_bounds(mask), voxel_size, margin)


def _grid_over(affine: np.ndarray, low: np.ndarray, high: np.ndarray, voxel_size: float, margin: float = 0.0) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An axis-aligned RAS grid of ``voxel_size`` mm over the world box of voxel indices
    ``low``–``high`` (inclusive) grown by ``margin`` mm."""
    corners = np.array([[i, j, k, 1.0] for i in (low[0], high[0]) for j in (low[1], high[1]) for k in (low[2], high[2])])
    world = (affine @ corners.T).T[:, :3]
    low, high = world.min(axis=0) - margin, world.max(axis=0) + margin
    grid = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    grid[:3, 3] = low
    nx, ny, nz = (int(n) for n in np.ceil((high - low) / voxel_size) + 1)
    return grid, (nx, ny, nz)


def carry_mask(
    mask: np.ndarray,
    affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, ...],
    world_to_source: np.ndarray,
) -> np.ndarray:
    """A boolean mask brought onto a target grid: ``world_to_source`` maps target-world points into
    the mask's world. Only the part of the target that the mask's box reaches is computed, at every
    second voxel (trilinear), then upsampled trilinearly and thresholded at 0.5 (on an OASIS-sized
    scan: Dice 0.993 with a trilinear resampling of every voxel, a third of its CPU time)."""
    import torch
    import torch.nn.functional as F

    crop, crop_affine = crop_to(mask, affine)
    high = np.asarray(crop.shape) - 1
    corners = np.array([[i, j, k, 1.0] for i in (0, high[0]) for j in (0, high[1]) for k in (0, high[2])])
    reach = (np.linalg.inv(target_affine) @ np.linalg.inv(world_to_source) @ crop_affine @ corners.T)[:3]
    start = np.clip(np.floor(reach.min(axis=1)).astype(int), 0, target_shape)
    size = np.clip(np.ceil(reach.max(axis=1)).astype(int) + 1, 0, target_shape) - start
    out = np.zeros(tuple(target_shape), dtype=bool)
    coarse_affine = target_affine.copy()
    coarse_affine[:3, :3] = 2 * target_affine[:3, :3]
    coarse_affine[:3, 3] = target_affine[:3, :3] @ start + target_affine[:3, 3]
    cx, cy, cz = (int(n) for n in size // 2 + 1)  # 2 (n - 1) ≥ size - 1: the upsampled grid covers the part
    coarse_shape = (cx, cy, cz)
    coarse = resample(crop.astype(np.float32), crop_affine, coarse_affine, coarse_shape, world_to_source)
    fine = F.interpolate(torch.from_numpy(coarse)[None, None], size=tuple(2 * n - 1 for n in coarse_shape), mode="trilinear", align_corners=True)[
        0, 0, : size[0], : size[1], : size[2]
    ]
    out[tuple(slice(a, a + n) for a, n in zip(start, size, strict=False))] = fine.numpy() > 0.5
    return out


def crop_to(mask: np.ndarray, affine: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """``mask`` (and each of ``arrays``, on its grid) cut to the mask's bounding box and one voxel
    around it, and the affine of the cut: interpolation sees the same values as in the whole volume
    outside of which everything is 0 (``resample``'s fill value)."""
    low, high = mask_bounds(mask)
    low, high = np.maximum(low - 1, 0), np.minimum(high + 2, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=False))
    cut_affine = affine.copy()
    cut_affine[:3, 3] = affine[:3, :3] @ low + affine[:3, 3]
    return (mask[box], *(array[box] for array in arrays), cut_affine)


def to_ants(data: np.ndarray, affine: np.ndarray):
    """An ANTs image with the same world geometry as ``(data, affine)`` (RAS → LPS)."""
    import ants

    lps = _RAS_TO_LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32),
        origin=tuple(float(v) for v in lps[:3, 3]),
        spacing=tuple(float(v) for v in spacing),
        direction=direction,
    )


def register_affine(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    transform: str = "Affine",
    sampling: float = 0.25,
    seed: int = 1,
    iterations: tuple[int, ...] = (2100, 1200, 200),
    shrink_factors: tuple[int, ...] = (4, 2, 1),
) -> np.ndarray:
    """Affine registration (ANTs, Mattes mutual information, centre-of-mass start) of moving onto fixed,
    one level per ``shrink_factors`` (smoothed by half the factor, in voxels) with at most
    ``iterations`` at each.

    The metric uses a ``sampling`` fraction of the voxels, drawn with a fixed ``seed``: the result is
    bit-identical on one ITK thread (as in ``parallel_map`` workers), within 0.01 mm otherwise. ANTs' transform files go to a temporary folder that is removed afterwards.
    Returns the 4×4 RAS matrix that maps a fixed-space world point to the moving image's world.
    """
    import ants

    ants.config._random_seed = seed  # what ants.set_ants_deterministic sets, without reseeding numpy
    with tempfile.TemporaryDirectory(prefix="brainage-ants-") as folder, _captured_stderr() as messages:
        try:
            result = ants.registration(
                fixed=to_ants(fixed, fixed_affine),
                moving=to_ants(moving, moving_affine),
                type_of_transform=transform,
                outprefix=f"{folder}/",
                aff_metric="mattes",
                aff_random_sampling_rate=sampling,
                aff_iterations=tuple(iterations),
                aff_shrink_factors=tuple(shrink_factors),
                aff_smoothing_sigmas=tuple(factor // 2 for factor in shrink_factors),
                verbose=False,
            )
        except RuntimeError as error:
            messages.seek(0)
            raise RuntimeError(_itk_cause(messages.read().decode(errors="replace"), str(error))) from None
        itk = ants.read_transform(result["fwdtransforms"][0])
    params = np.asarray(itk.parameters, dtype=float)
    center = np.asarray(itk.fixed_parameters, dtype=float)
    matrix, translation = params[:9].reshape(3, 3), params[9:12]
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + center - matrix @ center
    return _RAS_TO_LPS @ lps @ _RAS_TO_LPS


@contextmanager
def _captured_stderr() -> Iterator[IO[bytes]]:
    """Send what C/C++ code writes to the process's stderr (file descriptor 2) to a temporary file,
    yielded for reading; it is discarded afterwards. ITK prints its exceptions there before ANTs
    raises, which would put many lines before brainage's one-line error."""
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield capture
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _itk_cause(messages: str, error: str) -> str:
    """One line for a failed registration: ITK's own description if it printed one."""
    found = re.findall(r"Description: (?:ITK ERROR: )?(?:\S+\(0x[0-9a-f]+\): )?(.+)", messages + "\n" + error)
    first = error.strip().splitlines()[0] if error.strip() else "ANTs registration failed"
    first = first.split("Exception Object caught")[0].strip()
    return f"{first}: {found[-1].strip()}" if found else first


def robust_zscore(data: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Clip to brain-intensity percentiles, z-score with the brain's mean and SD.

    Statistics come from voxels inside ``mask`` only; voxels outside it are set to the lowest
    clipped brain value, so the background is the darkest thing in the volume.
    """
    if not mask.any():
        raise ValueError("empty brain mask")
    low, high = np.percentile(data[mask], percentiles)
    clipped = np.clip(data, low, high)
    inside = clipped[mask]
    mean, std = float(inside.mean()), float(inside.std())
    if std == 0:
        raise ValueError("constant intensity inside the brain mask")
    out = (clipped - mean) / std
    out[~mask] = (low - mean) / std
    return out.astype(np.float32)


def zscore(data: np.ndarray) -> np.ndarray:
    """Z-score over the whole volume (the tutorial's per-image normalisation)."""
    std = float(data.std())
    if std == 0:
        raise ValueError("constant image")
    return ((data - data.mean()) / std).astype(np.float32)
