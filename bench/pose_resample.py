"""Re-posed copies of a scan for checking pose invariance (``bench/pose.py``): rigid head movements
applied through the affine (:func:`repose_header`) or by resampling the voxels (:func:`repose_voxels`).

A benchmark's helper, not part of the package: ``bench/pose.py`` imports it as ``pose_resample``
(``bench/`` is a folder of scripts), as do its tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from scipy.spatial.transform import Rotation

from brainage.errors import InputError
from brainage.io.images import scan_stem

#: The order of scipy's spline interpolation.
SplineOrder = Literal[0, 1, 2, 3, 4, 5]

__all__ = ["Pose", "grid_centre", "random_poses", "repose_header", "repose_voxels", "write_poses"]


@dataclass(frozen=True)
class Pose:
    """A rigid head movement in world (RAS, mm) coordinates: rotations about the x, y and z axes
    (degrees, applied in that order, about the centre of the image grid) then a shift (mm).

    ``matrix(centre)`` is the 4 × 4 world transform ``x → R (x − centre) + centre + shift``;
    ``inverse()`` undoes it.

    Example::

        pose = Pose(rotation_deg=(10, 0, -5), shift_mm=(3, 0, 12))
        print(pose.label, np.allclose(pose.matrix(np.zeros(3)) @ pose.inverse().matrix(np.zeros(3)), np.eye(4)))
    """

    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def rotation(self) -> Rotation:
        return Rotation.from_euler("xyz", self.rotation_deg, degrees=True)

    def matrix(self, centre: ArrayLike) -> np.ndarray:
        """The 4 × 4 world transform of this pose, rotating about ``centre`` (mm)."""
        centre = np.asarray(centre, dtype=float).reshape(3)
        rotation = self.rotation().as_matrix()
        transform = np.eye(4)
        transform[:3, :3] = rotation
        transform[:3, 3] = centre - rotation @ centre + np.asarray(self.shift_mm, dtype=float)
        return transform

    def inverse(self) -> Pose:
        """The pose that undoes this one (about the same centre)."""
        inverse = self.rotation().inv()
        shift = -inverse.apply(np.asarray(self.shift_mm, dtype=float))
        rx, ry, rz = (float(a) for a in inverse.as_euler("xyz", degrees=True))
        sx, sy, sz = (float(s) for s in shift)
        return Pose((rx, ry, rz), (sx, sy, sz))

    @property
    def is_identity(self) -> bool:
        return not any(self.rotation_deg) and not any(self.shift_mm)

    @property
    def label(self) -> str:
        rotation = ",".join(f"{a:+.1f}" for a in self.rotation_deg)
        shift = ",".join(f"{s:+.1f}" for s in self.shift_mm)
        return f"rot({rotation})° shift({shift})mm"


def random_poses(count: int, max_rotation_deg: float = 15.0, max_shift_mm: float = 15.0, seed: int = 0, identity: bool = True) -> list[Pose]:
    """``count`` poses, each angle uniform in ±``max_rotation_deg`` and each shift in ±``max_shift_mm``
    (the first is the identity when ``identity``).

    Example::

        poses = random_poses(5, seed=0)               # identity + 4 random poses
    """
    rng = np.random.default_rng(seed)
    poses = [Pose()] if identity and count > 0 else []
    while len(poses) < count:
        angles = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
        shifts = rng.uniform(-max_shift_mm, max_shift_mm, 3)
        rx, ry, rz = (float(a) for a in angles)
        sx, sy, sz = (float(s) for s in shifts)
        poses.append(Pose((rx, ry, rz), (sx, sy, sz)))
    return poses


def _load(path: str | Path) -> nib.spatialimages.SpatialImage:
    image = nib.load(path)
    if not isinstance(image, nib.spatialimages.SpatialImage):
        raise InputError(path, f"not a volume image ({type(image).__name__})")
    return image


def _volume(image: nib.spatialimages.SpatialImage) -> np.ndarray:
    """The image's 3-D voxels as stored (scaling applied, dtype kept when there is none)."""
    data = np.asanyarray(image.dataobj)
    shape = tuple(int(n) for n in data.shape)
    if len(shape) > 3:
        if any(n != 1 for n in shape[3:]):
            raise ValueError(f"re-posing needs a 3-D image, not {shape}")
        data = data.reshape(shape[:3])
    return data


def grid_centre(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World position (mm) of the centre of a voxel grid: what :func:`repose_header` and
    :func:`repose_voxels` rotate about by default."""
    return (affine @ np.append((np.asarray(shape[:3], dtype=float) - 1) / 2, 1.0))[:3]


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)  # scanner coordinates, in both forms (the seed pipeline reads the qform)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return image


def repose_header(image: nib.spatialimages.SpatialImage | str | Path, pose: Pose, centre: ArrayLike | None = None) -> nib.Nifti1Image:
    """The same voxels with the head moved by ``pose`` in world space through the affine only:
    ``new affine = pose.matrix(centre) @ affine``, ``centre`` (mm) by default the world position of
    the grid's centre. What a scan of the same head in another position would be, if the scanner
    had followed the head. The grid's centre moves with the image, so undo a pose about the same
    centre: ``repose_header(moved, pose.inverse(), centre=the first centre)``.

    Example::

        moved = repose_header("scan.nii.gz", Pose((0, 10, 0), (0, 0, 5)))
        moved.to_filename("scan_moved.nii.gz")       # voxels untouched, affine changed
    """
    image = _load(image) if isinstance(image, (str, Path)) else image
    data = _volume(image)
    affine = np.asarray(image.affine, dtype=float)
    centre = grid_centre(data.shape, affine) if centre is None else centre
    return _nifti(data, pose.matrix(centre) @ affine)


def repose_voxels(image: nib.spatialimages.SpatialImage | str | Path, pose: Pose, order: SplineOrder = 1, centre: ArrayLike | None = None) -> nib.Nifti1Image:
    """The head moved by ``pose`` in world space by resampling the voxels into the original grid
    (affine unchanged; ``order`` of the spline interpolation, outside the field of view is 0, as a
    scanner would miss what moved out). Integer images stay integer (rounded, clipped). ``centre``
    as for :func:`repose_header` (the grid does not move here, so ``pose.inverse()`` undoes it).

    It is ``repose_header``'s image resampled back onto the original grid.

    Example::

        moved = repose_voxels("scan.nii.gz", Pose((0, 10, 0), (0, 0, 5)))   # same grid, new voxels
    """
    image = _load(image) if isinstance(image, (str, Path)) else image
    data = _volume(image)
    affine = np.asarray(image.affine, dtype=float)
    world = pose.matrix(grid_centre(data.shape, affine) if centre is None else centre)
    to_source = np.linalg.inv(affine) @ np.linalg.inv(world) @ affine  # output voxel → input voxel
    moved = ndimage.affine_transform(
        np.asarray(data, dtype=np.float64), to_source[:3, :3], offset=to_source[:3, 3], output_shape=data.shape,
        order=order, mode="constant", cval=0.0,
    )  # fmt: skip  # arguments grouped by meaning
    if np.issubdtype(data.dtype, np.integer):
        limits = np.iinfo(data.dtype)
        moved = np.clip(np.rint(moved), limits.min, limits.max)
    return _nifti(moved.astype(data.dtype), affine)


def write_poses(path: str | Path, poses: Sequence[Pose], out_dir: str | Path, mode: str = "header", order: SplineOrder = 1) -> list[Path]:
    """Write one NIfTI per pose of the scan ``path`` (any format nibabel reads: NIfTI, Analyze
    pairs, MGZ) into ``out_dir`` as ``<stem>_<mode>_pose<k>.nii.gz``; ``mode`` is ``"header"``
    (:func:`repose_header`) or ``"voxels"`` (:func:`repose_voxels`). Returns the paths in pose order.

    Example::

        files = write_poses(manifest.path[0], random_poses(4), "posed", mode="voxels")
        table = BrainAgeModel.load("run").predict(files)    # brain_age and qc_score per pose
    """
    if mode not in ("header", "voxels"):
        raise ValueError(f"mode must be 'header' or 'voxels', not {mode!r}")
    image = _load(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, pose in enumerate(poses):
        moved = repose_header(image, pose) if mode == "header" else repose_voxels(image, pose, order)
        target = out / f"{scan_stem(path)}_{mode}_pose{k:02d}.nii.gz"
        moved.to_filename(str(target))
        written.append(target)
    return written
