"""Benchmark of `brainage prepare`: scans/s of both pipelines, per-stage times, cache loading, peak RAM.

    python bench/prepare.py                       # 4 synthetic scans of OASIS-2 geometry, 1368-scan cache
    python bench/prepare.py --scans 8 --load-scans 1368 --workers 2
    python bench/prepare.py --source ~/data/oasis2 --scans 8

Without ``--source`` it synthesizes a few subjects with the OASIS-2 preset's geometry
(256 × 256 × 128 voxels of 1 × 1 × 1.25 mm). Cache loading is measured on a cache of
``--load-scans`` volumes at 64³ (copies of prepared volumes, so the format is the real one),
read cold from its files (page cache as the OS left it) and warm. Each measurement runs in a
fresh process so that its peak resident memory is its own (Linux). Prints tables; not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _peak_mb() -> float:
    """Peak resident memory of this process (VmHWM, reset by exec unlike ru_maxrss) and its workers."""
    status = Path("/proc/self/status").read_text()
    own_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    return max(own_kb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def _child(args: list[str]) -> dict:
    """Run this script with ``args`` in a fresh process; return the JSON it prints last."""
    done = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_prepare(manifest_csv: str, out: str, pipeline: str, workers: int) -> dict:
    from brainage.io import read_manifest
    from brainage.preprocess import prepare

    manifest = read_manifest(manifest_csv)
    first = prepare(manifest, out, pipeline, workers=workers)
    second = prepare(manifest, out, pipeline, workers=workers)
    return {
        "pipeline": pipeline,
        "scans": first.done,
        "failed": len(first.problems),
        "s": round(first.seconds, 1),
        "scans/s": round(first.scans_per_second, 3),
        "rerun scans/s": round(second.scans_per_second, 1),
        "qc min": round(first.manifest["qc_score"].min(), 2),
        "qc max": round(first.manifest["qc_score"].max(), 2),
        "peak MB": round(_peak_mb()),
    }


def measure_stages(path: str) -> dict:
    """Seconds per stage of the standard pipeline on one scan (N4 included, though off by default)."""
    from brainage.io import load_scan
    from brainage.preprocess import StandardConfig, stages
    from brainage.preprocess.pipelines import register_to_template
    from brainage.preprocess.qc import registration_score, save_qc_png

    config = StandardConfig()
    times: dict[str, float] = {}

    def timed(name, func, *args):
        start = time.perf_counter()
        result = func(*args)
        times[name] = round(time.perf_counter() - start, 2)
        return result

    scan = timed("load", load_scan, path)
    data, affine = timed("reorient", stages.reorient_ras, scan.data, scan.affine)
    timed("n4 (optional)", stages.n4_bias_correct, data, affine, config.n4_shrink_factor)
    stages.skull_strip(data[::4, ::4, ::4].copy(), 64)  # load deepbet's weights outside the timing
    masks = {shape: timed(f"skull strip {shape}³", stages.skull_strip, data, shape) for shape in (128, 192, 256)}
    mask = masks[config.strip_shape]
    brain = np.where(mask, data, 0).astype(np.float32)
    registration = (brain, affine, config.registration_voxel_size, config.registration)
    timed("registration, every voxel", register_to_template, *registration, 1.0)
    world_to_source = timed(f"registration, {config.registration_sampling:.0%} of voxels", register_to_template, *registration, config.registration_sampling)

    def finish():
        volume = stages.resample(brain, affine, config.affine, config.shape, world_to_source)
        inside = stages.resample(mask.astype(np.float32), affine, config.affine, config.shape, world_to_source)
        return stages.robust_zscore(volume, inside > 0.5, config.clip_percentiles)

    volume = timed("resample + normalise", finish)
    timed("qc score + png", lambda: (registration_score(volume, config.affine), save_qc_png(volume, Path(tempfile.mkdtemp()) / "qc.png")))
    dice = {f"mask Dice {shape}³ vs 256³": round(2 * (masks[shape] & masks[256]).sum() / (masks[shape].sum() + masks[256].sum()), 3)
            for shape in (128, 192)}
    return {**times, **dice, "peak RAM MB": round(_peak_mb())}


def measure_load(cache: str) -> dict:
    from brainage.preprocess import load_cache

    rss0 = _peak_mb()
    result = {}
    for label in ("first pass", "second pass"):
        start = time.perf_counter()
        prepared = load_cache(cache)
        opened = time.perf_counter() - start
        total = 0.0
        for i in range(len(prepared)):
            total += float(prepared.volume(i).sum(dtype=np.float64))  # touches every voxel
        seconds = time.perf_counter() - start
        result[label] = {"scans": len(prepared), "open s": round(opened, 3), "open+read s": round(seconds, 2),
                         "scans/s": round(len(prepared) / seconds), "GB": round(len(prepared) * np.prod(prepared.shape) * prepared.volume(0).itemsize / 1e9, 2)}
    result["peak RAM MB"] = round(_peak_mb())
    result["peak RAM growth MB"] = round(_peak_mb() - rss0)
    return result


def fake_large_cache(source: Path, out: Path, n: int) -> None:
    """A cache of ``n`` scans in the real format, made by copying the volumes of a small one."""
    manifest = pd.read_csv(source / "manifest.csv", dtype=str)
    (out / "volumes").mkdir(parents=True)
    shutil.copy(source / "cache.json", out / "cache.json")
    rows = []
    for i in range(n):
        row = manifest.iloc[i % len(manifest)].copy()
        row["scan_id"] = f"{row['scan_id']}-{i}"
        row["cache_file"] = f"volumes/{i:05d}.npy"
        shutil.copy(source / manifest["cache_file"].iat[i % len(manifest)], out / row["cache_file"])
        rows.append(row)
    pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)


def grid_table() -> pd.DataFrame:
    """Candidate output grids: share of the brain inside the grid and of the grid inside the brain,
    detail kept (r of the 1 mm template with itself resampled to the grid and back), cache size of
    1368 fp16 scans, and one fp32 CPU forward + backward pass of the seed CNN per scan (batch 4)."""
    import torch

    from brainage.models import build_model
    from brainage.preprocess import make_config, stages
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    template = t1.get_fdata(dtype=np.float32)
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata() > 0
    rows = []
    for label, config in [
        ("seed 64³ @ 4 mm, zero origin", make_config("seed")),
        ("MNI 64³ @ 4 mm", make_config("standard", shape=(64, 64, 64), voxel_size=4.0)),
        ("MNI 64³ @ 3 mm (default)", make_config("standard", shape=(64, 64, 64), voxel_size=3.0)),
        ("MNI 64×80×64 @ 2.5 mm", make_config("standard", shape=(64, 80, 64), voxel_size=2.5)),
        ("MNI 80×96×80 @ 2 mm", make_config("standard", shape=(80, 96, 80), voxel_size=2.0)),
    ]:
        coarse = stages.resample(template, t1.affine, config.affine, config.shape)
        inside = stages.resample(brain.astype(np.float32), t1.affine, config.affine, config.shape) > 0.5
        back = stages.resample(coarse, config.affine, t1.affine, template.shape)
        covered = stages.resample(np.ones(config.shape, np.float32), config.affine, t1.affine, template.shape, order=0) > 0
        model = build_model("seed").train()
        x = torch.randn(4, 1, *config.shape)
        start = time.perf_counter()
        for _ in range(2):
            model(x).sum().backward()
        step = (time.perf_counter() - start) / 8
        rows.append({
            "grid": label,
            "kvoxels": round(np.prod(config.shape) / 1000),
            "brain in grid %": round(100 * (brain & covered).sum() / brain.sum(), 1),
            "grid in brain %": round(100 * inside.mean(), 1),
            "detail r": round(float(np.corrcoef(back[brain], template[brain])[0, 1]), 3),
            "cache MB": round(1368 * np.prod(config.shape) * 2 / 1e6),
            "CNN s/scan": round(step, 3),
        })
    return pd.DataFrame(rows)


def main() -> None:
    os.environ.setdefault("COLUMNS", "150")  # wide tables when printing to a file
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="a cohort to take scans from (default: synthesize OASIS-2-sized scans)")
    parser.add_argument("--scans", type=int, default=4, help="scans per pipeline")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--load-scans", type=int, default=1368, help="size of the cache whose loading is timed")
    parser.add_argument("--skip-grid", action="store_true", help="skip the output-grid comparison")
    parser.add_argument("--only-grid", action="store_true", help="only the output-grid comparison")
    parser.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement in a child
    args = parser.parse_args()
    if args.stage:
        kind, *rest = args.stage
        result = {"prepare": lambda: measure_prepare(rest[0], rest[1], rest[2], int(rest[3])),
                  "stages": lambda: measure_stages(rest[0]),
                  "load": lambda: measure_load(rest[0])}[kind]()
        print(json.dumps(result))
        return

    from brainage.cohort import OASIS2, Preset, synthesize
    from brainage.console import print_table
    from brainage.io import discover, write_manifest

    if args.only_grid:
        print_table(grid_table(), title="output grid candidates (MNI152 template at 1 mm as the reference)", floatfmt="{:.3f}")
        return
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        work = Path(tmp)
        if args.source:
            manifest = discover(args.source).manifest
        else:
            subjects = max(1, (args.scans + 1) // 2)
            preset = Preset("oasis2-geometry", subjects, 0, 0, ((1, subjects),), ((2, subjects),), OASIS2.shape, OASIS2.zooms, OASIS2.resolution)
            synthesize(work / "cohort", preset, seed=0, workers=args.workers)
            manifest = discover(work / "cohort").manifest
        manifest = manifest.head(args.scans)
        write_manifest(manifest, work / "manifest.csv")
        rows = [_child(["--stage", "prepare", str(work / "manifest.csv"), str(work / pipeline), pipeline, str(args.workers)])
                for pipeline in ("seed", "standard")]
        print_table(pd.DataFrame(rows), title=f"prepare, {args.scans} scans of {manifest['path'].iloc[0]}'s geometry, {args.workers} worker(s)")
        stage = _child(["--stage", "stages", str(manifest["path"].iloc[0])])
        print_table([{"stage": key, "value": value} for key, value in stage.items()],
                    title="standard pipeline, seconds per stage (one scan, one process)")
        fake_large_cache(work / "seed", work / "large", args.load_scans)
        load = _child(["--stage", "load", str(work / "large")])
        table = pd.DataFrame([{"read": key, **value} for key, value in load.items() if isinstance(value, dict)])
        print_table(table, title=f"load_cache + read every voxel; peak RAM {load['peak RAM MB']} MB (growth {load['peak RAM growth MB']} MB)")
    if not args.skip_grid:
        print_table(grid_table(), title="output grid candidates (MNI152 template at 1 mm as the reference)", floatfmt="{:.3f}")


if __name__ == "__main__":
    main()
