"""Pose invariance: how much a trained model's brain age moves when the head is re-posed.

    .venv/bin/python bench/pose.py RUN_OR_CKPT [SCAN ...] [--scans 3] [--poses 8] [--max-rotation 15] [--max-shift 15]

Each scan is written again in ``--poses`` poses (the first the identity, the others with every
rotation uniform in ±``--max-rotation`` degrees and every shift in ±``--max-shift`` mm, the same
poses for every scan), two ways: ``header`` (only the NIfTI affine changed, voxels identical: the
scanner followed the head) and ``voxels`` (the head resampled inside the original grid:
``repose_voxels`` of ``bench/pose_resample.py``). Every file is predicted through the public API,
``BrainAgeModel.load(run).predict(paths)``, from the raw file (no cache), and the table gives per
scan and way the SD of the predicted brain age across the poses (target ≤ 0.5 y), its range, and
the QC score (registration correlation with the template) beside it: its lowest over the poses and
at the identity. ``SD moved`` leaves the identity out: in ``voxels`` mode every other pose is also
interpolated (``--order``), which blurs it, so a shift of all moved poses away from the untouched
identity shows as SD but not as SD moved. ``--modes ... carried`` adds the ``voxels`` files
prepared with the identity's brain mask and registration carried through the known pose (a perfect
registration; no QC score): what is left is the network's response to the resampled voxels alone,
so comparing it with ``voxels`` tells the blur of a resampled file from mask and registration
differences. Without SCAN, the first ``--scans`` scans (of different subjects) of the cache the
run was trained on are used. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pose_resample import grid_centre, random_poses, write_poses  # bench/, the script's own folder
from scipy import ndimage

from brainage.console import console, print_problems, print_table
from brainage.io import load_scan
from brainage.predict import BrainAgeModel, resolve_checkpoints, training_caches
from brainage.preprocess import load_cache, preprocess_scan, stages
from brainage.preprocess.pipelines import Spatial, find_spatial

TARGET_SD = 0.5
MODES = ("header", "voxels", "carried")


def _carried(scan: str, files: list[Path], poses: list, model: BrainAgeModel) -> list[float]:
    """Brain age of each re-posed ``voxels`` file, prepared with the identity's mask and registration
    carried through its pose instead of its own."""
    original = load_scan(scan)
    data, affine = stages.reorient_ras(original.data, original.affine)
    spatial = find_spatial(data, affine, model.config)
    centre = grid_centre(original.data.shape, original.affine)  # what repose_voxels turned about
    volumes = []
    for pose, path in zip(poses, files, strict=False):
        moved = load_scan(path)
        moved_data, moved_affine = stages.reorient_ras(moved.data, moved.affine)
        world = pose.matrix(centre)
        to_original = np.linalg.inv(affine) @ np.linalg.inv(world) @ moved_affine  # moved voxel → original voxel
        mask = ndimage.affine_transform(spatial.mask.astype(np.float32), to_original[:3, :3], offset=to_original[:3, 3],
                                        output_shape=moved_data.shape, order=1) > 0.5  # fmt: skip  # arguments grouped by meaning
        carried = Spatial(mask=mask, world_to_source=world @ spatial.world_to_source)
        volumes.append(preprocess_scan(path, model.config, spatial=carried).volume)
    return [float(age) for age in model.predict_volumes(np.stack(volumes))[:, 0]]


def _default_scans(run: Path, count: int) -> list[str]:
    """The first scan of each of the first ``count`` subjects of the run's training cache."""
    caches = training_caches(resolve_checkpoints(run))
    if not caches:
        raise SystemExit(f"{run}: no training cache recorded or found; name the scans to re-pose")
    manifest = load_cache(caches[0]).manifest
    return manifest.drop_duplicates("subject_id")["path"].head(count).astype(str).tolist()


def _labels(scans: list[str]) -> dict[str, str]:
    """The shortest unique trailing part of each scan's path (``OAS2_0001_MR1/RAW/mpr-1.nifti.hdr``)."""
    parts = [Path(scan).parts for scan in scans]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return dict(zip(scans, labels, strict=False))
    return {scan: scan for scan in scans}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a trained run folder or a model.ckpt")
    parser.add_argument("scan", nargs="*", help="scans to re-pose (default: --scans from the run's training cache)")
    parser.add_argument("--scans", type=int, default=3, help="how many scans when none are named")
    parser.add_argument("--poses", type=int, default=8, help="poses per scan, the identity included")
    parser.add_argument("--max-rotation", type=float, default=15.0, help="largest rotation about each axis (degrees)")
    parser.add_argument("--max-shift", type=float, default=15.0, help="largest shift along each axis (mm)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["header", "voxels"], help="ways of re-posing")
    parser.add_argument("--order", type=int, default=1, choices=range(6), help="spline order of the voxels mode's resampling")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random poses")
    parser.add_argument("--out", type=Path, default=None, help="folder for the re-posed files (default: a temporary one)")
    parser.add_argument("--csv", type=Path, default=None, help="also write every pose's prediction to this CSV")
    parser.add_argument("--workers", type=int, default=2, help="preprocessing processes")
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    args = parser.parse_args()

    scans = args.scan or _default_scans(args.run, args.scans)
    poses = random_poses(args.poses, args.max_rotation, args.max_shift, seed=args.seed)
    model = BrainAgeModel.load(args.run, device=args.device)
    with tempfile.TemporaryDirectory(prefix="brainage-pose-") as scratch:
        out = args.out or Path(scratch)
        clock = time.perf_counter()
        rows, carried = [], []
        for number, scan in enumerate(scans):
            for mode in dict.fromkeys("voxels" if mode == "carried" else mode for mode in args.modes):
                written_files = write_poses(scan, poses, out / f"scan{number:02d}", mode=mode, order=args.order)
                for k, path in enumerate(written_files):
                    if mode in args.modes:
                        rows.append({"scan": scan, "mode": mode, "pose": k, "label": poses[k].label, "path": str(path.resolve())})
                if mode == "voxels" and "carried" in args.modes:
                    carried.append((scan, written_files))
        files = pd.DataFrame(rows)
        written = time.perf_counter() - clock
        table = pd.DataFrame()
        if rows:
            predicted = model.predict(files["path"].tolist(), cache=None, workers=args.workers)
            table = files.merge(predicted[["path", "brain_age", "qc_score"]], on="path", how="left")
        for scan, written_files in carried:
            ages = _carried(scan, written_files, poses, model)
            extra = pd.DataFrame({"scan": scan, "mode": "carried", "pose": range(len(poses)), "label": [pose.label for pose in poses],
                                  "path": [str(path) for path in written_files], "brain_age": ages, "qc_score": np.nan})  # fmt: skip  # columns grouped in rows
            table = pd.concat([table, extra], ignore_index=True)
        seconds = time.perf_counter() - clock - written
    print_problems(model.problems_)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        table.drop(columns=["path"]).to_csv(args.csv, index=False)
    summary = []
    labels = _labels(scans)
    for (scan, mode), rows in table.groupby(["scan", "mode"], sort=False):
        ages = rows["brain_age"].dropna()
        summary.append({
            "scan": labels[scan], "mode": mode, "poses": len(ages),
            "identity": float(rows.loc[rows["pose"] == 0, "brain_age"].iloc[0]),
            "SD": float(ages.std(ddof=1)) if len(ages) > 1 else np.nan,
            "SD moved": float(rows.loc[rows["pose"] > 0, "brain_age"].std(ddof=1)) if len(ages) > 2 else np.nan,
            "range": float(np.ptp(ages)) if len(ages) else np.nan,
            "QC min": float(rows["qc_score"].min()),
            "QC identity": float(rows.loc[rows["pose"] == 0, "qc_score"].iloc[0]),
        })  # fmt: skip  # one key per line, brackets hugged
    summary = pd.DataFrame(summary)
    summary[f"SD ≤ {TARGET_SD}"] = np.where(summary["SD"] <= TARGET_SD, "yes", "no")
    print_table(
        summary,
        title=f"Brain age across {args.poses} poses (rotations ±{args.max_rotation:g}°, shifts ±{args.max_shift:g} mm, seed {args.seed}, order {args.order}), years",
    )
    for mode, rows in summary.groupby("mode", sort=False):
        console.print(
            f"{mode}: SD across poses median {rows['SD'].median():.2f} y, worst {rows['SD'].max():.2f} y "
            f"(moved poses only: median {rows['SD moved'].median():.2f} y); "
            f"{int((rows['SD'] <= TARGET_SD).sum())} of {len(rows)} scans within {TARGET_SD} y"
        )
    console.print(
        f"{len(files)} files written in {written:.0f} s, predicted in {seconds:.0f} s "
        f"({model.config.name} pipeline, {len(model.checkpoints)} checkpoint(s), {model.device})"
    )


if __name__ == "__main__":
    main()
