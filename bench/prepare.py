"""Benchmark of `brainage prepare`: the earlier and the current default side by side, per stage, and their agreement.

    python bench/prepare.py --scans 16 --workers 2     # 16 synthetic scans of OASIS-2 geometry, 1368-scan cache
    python bench/prepare.py --pipelines seed standard-v1 standard --scans 4
    python bench/prepare.py --source ~/data/oasis2 --scans 8

Without ``--source`` it synthesizes subjects with the OASIS-2 preset's geometry (256 × 256 × 128
voxels of 1 × 1 × 1.25 mm), one session each of 3 or 4 repeats, the share of 4-repeat sessions as
near OASIS-2's as ``--scans`` allows (16: four sessions of 4), with the cohort's small motion between
repeats. Each pipeline's ``prepare`` runs in a
fresh process (so its peak memory and its CPU time are its own): CPU seconds per scan count that
process and its workers from their start (imports, model and template loading included), which a
loaded machine changes little, unlike scans/s. Per-stage CPU seconds come from the cache
manifest's ``cpu_s_*`` columns. Agreement with the first pipeline (``standard-v1``, the earlier
default): Dice of the native brain masks, mean displacement of the 8 corners of the output grid
under the two registrations, and QC flags, on every scan, and the displacement on the repeats that
were aligned to their session's first scan alone; the same pipeline with another registration seed
gives the displacement that sampling alone causes. Cache loading is measured on ``--load-scans`` copies
of prepared volumes. Prints tables; not a test.
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
    """Peak resident memory of this process (VmHWM, reset by exec unlike ru_maxrss)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished child processes."""
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def _child(args: list[str]) -> dict:
    """Run this script with ``args`` in a fresh process; return the JSON it prints last."""
    done = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_prepare(manifest_csv: str, out: str, pipeline: str, workers: int) -> dict:
    """One pipeline from a cold process: wall, CPU of this process and its workers, peak memory."""
    from brainage.io import read_manifest
    from brainage.preprocess import prepare

    manifest = read_manifest(manifest_csv)
    first = prepare(manifest, out, pipeline, workers=workers)
    cpu = _cpu_seconds()
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    second = prepare(manifest, out, pipeline, workers=workers)
    return {
        "pipeline": pipeline,
        "scans": first.done,
        "aligned": first.aligned,
        "failed": len(first.problems),
        "wall s": round(first.seconds, 1),
        "scans/s": round(first.scans_per_second, 3),
        "CPU s/scan": round(cpu / max(first.done, 1), 2),
        "rerun scans/s": round(second.scans_per_second, 1),
        "qc min": round(first.manifest["qc_score"].min(), 3),
        "qc max": round(first.manifest["qc_score"].max(), 3),
        "flagged": int(first.manifest["qc_flagged"].sum()),
        "peak MB per worker": round(workers_peak) if workers > 1 else round(_peak_mb()),
        "peak MB main": round(_peak_mb()),
    }


def stage_table(caches: dict[str, Path], totals: dict[str, float]) -> pd.DataFrame:
    """Mean CPU seconds per scan of each stage (from the manifests), and the rest of each run's CPU
    (process start, imports, loading models and templates, hashing, writing)."""
    from brainage.preprocess import load_cache
    from brainage.preprocess.cache import TIME_COLUMNS

    rows = {}
    for name, root in caches.items():
        manifest = load_cache(root).manifest
        means = {column.removeprefix("cpu_s_"): float(manifest[column].mean()) for column in TIME_COLUMNS}
        means["other (start-up, imports, models, I/O)"] = totals[name] - sum(means.values())
        means["total"] = totals[name]
        rows[name] = means
    return pd.DataFrame(rows).rename_axis("CPU s per scan").reset_index()


def _corners(config) -> np.ndarray:
    shape = np.asarray(config.shape) - 1
    return np.array([[i, j, k, 1.0] for i in (0, shape[0]) for j in (0, shape[1]) for k in (0, shape[2])]) @ config.affine.T


def agreement(reference: Path, other: Path, seed_floor: bool) -> dict:
    """Mask Dice, mean output-grid corner displacement (mm) and QC flags of ``other`` against ``reference``."""
    from brainage.preprocess import load_cache
    from brainage.preprocess.cache import _read_spatial

    def spatial(cache, row):
        return _read_spatial(cache.root / row["spatial_file"])

    a, b = load_cache(reference), load_cache(other)
    rows_b = b.manifest.set_index("scan_id")
    aligned = rows_b.loc[a.manifest["scan_id"], "reference_scan"].notna().to_numpy()
    corners = _corners(a.config)
    dice, shift, floor = [], [], []
    for _, row in a.manifest.iterrows():
        first, second = spatial(a, row), spatial(b, rows_b.loc[row["scan_id"]])
        dice.append(2 * (first.mask & second.mask).sum() / (first.mask.sum() + second.mask.sum()))
        moved = (corners @ first.world_to_source.T - corners @ second.world_to_source.T)[:, :3]
        shift.append(float(np.linalg.norm(moved, axis=1).mean()))
        if seed_floor:
            again = _register_with_seed(row["path"], first.mask, a.config, seed=2)
            floor.append(float(np.linalg.norm((corners @ first.world_to_source.T - corners @ again.T)[:, :3], axis=1).mean()))
    flags = a.manifest.set_index("scan_id")["qc_flagged"]
    result = {
        "scans": len(dice),
        "mask Dice min": round(min(dice), 4),
        "mask Dice mean": round(float(np.mean(dice)), 4),
        "corner shift mean mm": round(float(np.mean(shift)), 2),
        "corner shift max mm": round(max(shift), 2),
        "aligned scans": int(aligned.sum()),
        "aligned: Dice min": round(min(np.compress(aligned, dice)), 4) if aligned.any() else float("nan"),
        "aligned: corner shift mean mm": round(float(np.mean(np.compress(aligned, shift))), 2) if aligned.any() else float("nan"),
        "QC flags identical": bool((flags == rows_b.loc[flags.index, "qc_flagged"]).all()),
        "QC score max |diff|": round(float((a.manifest.set_index("scan_id")["qc_score"] - rows_b.loc[flags.index, "qc_score"]).abs().max()), 3),
    }
    if seed_floor:
        result["same pipeline, seed 2: corner shift mean mm"] = round(float(np.mean(floor)), 2)
    return result


def _register_with_seed(path: str, mask: np.ndarray, config, seed: int) -> np.ndarray:
    """``config``'s registration of the masked brain with another sampling seed (one ITK thread)."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    from brainage.io import load_scan
    from brainage.preprocess import stages
    from brainage.preprocess.pipelines import register_brain

    scan = load_scan(path)
    data, affine = stages.reorient_ras(scan.data, scan.affine)
    return register_brain(np.where(mask, data, 0.0).astype(np.float32), affine, config, seed)


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
        result[label] = {
            "scans": len(prepared),
            "open s": round(opened, 3),
            "open+read s": round(seconds, 2),
            "scans/s": round(len(prepared) / seconds),
            "GB": round(len(prepared) * np.prod(prepared.shape) * prepared.volume(0).itemsize / 1e9, 2),
        }
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
    from nilearn import datasets

    from brainage.models import build_model
    from brainage.preprocess import make_config, stages

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
        rows.append(
            {
                "grid": label,
                "kvoxels": round(np.prod(config.shape) / 1000),
                "brain in grid %": round(100 * (brain & covered).sum() / brain.sum(), 1),
                "grid in brain %": round(100 * inside.mean(), 1),
                "detail r": round(float(np.corrcoef(back[brain], template[brain])[0, 1]), 3),
                "cache MB": round(1368 * np.prod(config.shape) * 2 / 1e6),
                "CNN s/scan": round(step, 3),
            }
        )
    return pd.DataFrame(rows)


def oasis2_repeats(scans: int) -> tuple[tuple[int, int], ...]:
    """``(repeats, sessions)`` pairs of 3- and 4-repeat sessions adding up to ``scans``, the share of
    4-repeat sessions nearest OASIS-2's (a last session of 1–2 where no such sum exists)."""
    from brainage.cohort import OASIS2

    share = dict(OASIS2.repeats)[4] / sum(n for _, n in OASIS2.repeats)
    options = []
    for fours in range(scans // 4 + 1):
        threes, rest = divmod(scans - 4 * fours, 3)
        options.append((rest > 0, abs(fours / max(fours + threes, 1) - share), ((3, threes), (4, fours), (rest, 1 if rest else 0))))
    return tuple((repeats, n) for repeats, n in min(options)[2] if n)


def main() -> None:
    os.environ.setdefault("COLUMNS", "150")  # wide tables when printing to a file
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="a cohort to take scans from (default: synthesize OASIS-2-sized scans)")
    parser.add_argument("--scans", type=int, default=4, help="scans per pipeline")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--pipelines", nargs="+", default=["standard-v1", "standard"], help="named pipelines to run; the first is the reference of the agreement table"
    )
    parser.add_argument("--no-seed-floor", action="store_true", help="skip re-registering the reference with another seed")
    parser.add_argument("--load-scans", type=int, default=1368, help="size of the cache whose loading is timed")
    parser.add_argument("--skip-grid", action="store_true", help="skip the output-grid comparison")
    parser.add_argument("--only-grid", action="store_true", help="only the output-grid comparison")
    parser.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement in a child
    args = parser.parse_args()
    if args.stage:
        kind, *rest = args.stage
        result = {"prepare": lambda: measure_prepare(rest[0], rest[1], rest[2], int(rest[3])), "load": lambda: measure_load(rest[0])}[kind]()
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
            repeats = oasis2_repeats(args.scans)
            subjects = sum(n for _, n in repeats)
            preset = Preset("oasis2-geometry", subjects, 0, 0, ((1, subjects),), repeats, OASIS2.shape, OASIS2.zooms, OASIS2.resolution)
            synthesize(work / "cohort", preset, seed=0, workers=args.workers)
            manifest = discover(work / "cohort").manifest
        manifest = manifest.head(args.scans)
        write_manifest(manifest, work / "manifest.csv")
        caches = {pipeline: work / pipeline for pipeline in args.pipelines}
        runs = [_child(["--stage", "prepare", str(work / "manifest.csv"), str(caches[pipeline]), pipeline, str(args.workers)]) for pipeline in args.pipelines]
        table = pd.DataFrame(runs)
        reference = table.iloc[0]
        table["CPU ratio"] = (reference["CPU s/scan"] / table["CPU s/scan"]).round(2)
        table["wall ratio"] = (table["scans/s"] / reference["scans/s"]).round(2)
        load = os.getloadavg()
        print_table(
            table,
            title=f"prepare, {len(manifest)} scans of {manifest['path'].iloc[0]}'s geometry, {args.workers} worker(s); "
            f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs",
        )
        print_table(stage_table(caches, dict(zip(table["pipeline"], table["CPU s/scan"], strict=False))), title="CPU seconds per scan and stage")
        standard = [name for name in args.pipelines[1:] if name != "seed"]
        if args.pipelines[0] != "seed" and standard:
            rows = [
                {"pipeline": name, **agreement(caches[args.pipelines[0]], caches[name], not args.no_seed_floor and i == 0)} for i, name in enumerate(standard)
            ]
            print_table(pd.DataFrame(rows), title=f"agreement with {args.pipelines[0]} on the same scans", floatfmt="{:.4g}")
        fake_large_cache(caches[args.pipelines[-1]], work / "large", args.load_scans)
        load = _child(["--stage", "load", str(work / "large")])
        table = pd.DataFrame([{"read": key, **value} for key, value in load.items() if isinstance(value, dict)])
        print_table(table, title=f"load_cache + read every voxel; peak RAM {load['peak RAM MB']} MB (growth {load['peak RAM growth MB']} MB)")
    if not args.skip_grid:
        print_table(grid_table(), title="output grid candidates (MNI152 template at 1 mm as the reference)", floatfmt="{:.3f}")


if __name__ == "__main__":
    main()
