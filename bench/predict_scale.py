"""Benchmark of `brainage predict` at cohort scale: memory over a long batch, resume after a kill, throughput.

    python bench/predict_scale.py --out /tmp/predict-scale --label cpu2          # 1000 small scans, then 40 heads of 1 mm
    python bench/predict_scale.py --out /tmp/ps --scans 200 --speed-scans 6       # a quick check (no results file)
    python bench/predict_scale.py --out /tmp/ps --skip memory resume --model runs/demo

Each predict runs in a fresh process (this script's ``_child`` mode: ``BrainAgeModel.predict`` with a
work folder, ``cache=None``) watched from this one:

1. **memory**: ``--scans`` scans predicted uninterrupted with ``--workers``. They are copies of the
   scans of a synthetic ``tiny`` cohort (the project's generator), each with one voxel changed so
   that every content hash differs, listed in a CSV table; ``--pipeline`` (default ``seed``)
   prepares them. The resident memory of the predict process and of it with its workers is sampled
   every ``--every`` s and reported per tenth of the batch (by scans stored), so that growth with
   the number of scans shows.
2. **resume**: the same scans into a fresh work folder, killed (SIGKILL) once half of them are
   stored, then run again: how many the rerun took from the work folder and how many it prepared
   (the unfinished ones, if it redoes nothing finished), and whether its CSV equals that of (1).
3. **throughput**: ``--speed-scans`` heads of 1 × 1 × 1 mm (256 × 256 × 160 voxels, the generator's
   ``v1``, one scan per session) predicted from their cohort folder with the ``standard`` pipeline
   and ``--workers``. Scans/s from the first scan stored to the last (start-up: imports, model,
   templates and the worker pool, excluded) and from the predict call (model loaded) to the table;
   and the median CPU seconds of each stage of a worker per head (``cpu_s_<stage>`` of the scans'
   records: what a loaded machine measures fairly), with the scans/s that ``--workers`` cores would
   give at that cost (workers / CPU-s per head; the predict process's own share not counted). A
   worker's first head also loads the skull-stripping network and the templates: the median is of
   the steady cost only where each worker prepares several heads.

``--isa avx2`` limits torch's and numpy's CPU kernels in the predict processes to AVX2 (fp32), as on
a machine without AVX-512 (the target of issue 28 is measured so); ``--note`` adds a line to every
table (what else ran). Without ``--model`` the network is an untrained one of the default
architecture (what it learnt does not change memory or speed), saved as a checkpoint per pipeline. Prints the tables and
writes them to ``OUT/predict_scale.json``; with ``--label`` also to
``docs/results/predict_scale-<label>.json`` (for runs at the sizes above). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from results import ISA_ENV, ROOT, write_results

HEAD_SHAPE = (256, 256, 160)


def _rss_mb(pid: int) -> float:
    """Resident memory (MB) of one process; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux: ``/proc/PID/task/TID/children``)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def _stored(work: Path) -> list[Path]:
    """The records of the scans finished in a work folder (a record is written after its volume; a
    hidden temporary is one being written)."""
    return list((work / "volumes").glob("[!.]*.json"))


def _watch(command: list[str], work: Path, every: float, kill_at: int | None = None) -> tuple[dict, list[dict]]:
    """Run ``command`` (a ``_child``), sampling its memory and the scans stored; SIGKILL it once
    ``kill_at`` scans are stored. Returns the JSON it printed last (empty if killed) and the samples."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    start, samples = time.monotonic(), []
    while process.poll() is None:
        main = _rss_mb(process.pid)
        total = main + sum(_rss_mb(child) for child in _descendants(process.pid))
        stored = len(_stored(work)) if (work / "volumes").is_dir() else 0
        samples.append({"t": time.monotonic() - start, "stored": stored, "main_mb": main, "total_mb": total})
        if kill_at is not None and stored >= kill_at:
            os.kill(process.pid, signal.SIGKILL)
            process.communicate()
            time.sleep(1.0)  # the workers die with their parent
            return {}, samples
        time.sleep(every)
    stdout, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"predict failed (exit {process.returncode}): {' '.join(command)}")
    return json.loads(stdout.strip().splitlines()[-1]), samples


def _child_command(checkpoint: Path, inputs: Path, work: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, __file__, "_child", str(checkpoint), str(inputs), str(work), str(out), str(workers)]


def child(checkpoint: str, inputs: str, work: str, out: str, workers: int) -> None:
    """Predict ``inputs`` with ``checkpoint`` into ``work``, write ``out``, print what happened."""
    from brainage.predict import BrainAgeModel
    from brainage.utils import write_csv

    model = BrainAgeModel.load(checkpoint, device="cpu")
    start = time.perf_counter()
    table = model.predict(inputs, cache=None, workers=workers, work=work)
    seconds = time.perf_counter() - start
    write_csv(table, out)
    print(json.dumps({"predict_s": seconds, "rows": len(table), "problems": len(model.problems_), "outcomes": model.preprocessing_}))


def _checkpoint(pipeline: str, folder: Path, model: str | None) -> Path:
    """``model`` if given, else an untrained network of the default architecture for ``pipeline``."""
    if model is not None:
        return Path(model)
    import torch

    from brainage.checkpoint import BrainAgeCheckpoint, save_checkpoint
    from brainage.evaluation import AgeBiasCorrector
    from brainage.models import build_model
    from brainage.preprocess import make_config
    from brainage.training import TrainConfig

    torch.manual_seed(0)
    network = build_model(TrainConfig().model).eval()
    corrector = AgeBiasCorrector.from_dict({"method": "residual", "slope": 0.0, "intercept": 0.0, "n_subjects": 40})
    checkpoint = BrainAgeCheckpoint(
        model=network, model_name=TrainConfig().model, age_mean=75.0, age_std=8.0, preprocessing=make_config(pipeline).to_dict(),
        corrector=corrector, train_age_range=(60.0, 98.0),
    )  # fmt: skip  # arguments grouped by meaning
    return save_checkpoint(checkpoint, folder / f"untrained-{pipeline}" / "model.ckpt")


def _copies(folder: Path, n: int) -> Path:
    """``n`` distinct scans made from a synthetic ``tiny`` cohort, and the CSV table that lists them."""
    import nibabel as nib

    from brainage.cohort import TINY, synthesize

    table = folder / "scans.csv"
    if table.is_file() and len(pd.read_csv(table)) == n:
        return table
    synthesize(folder / "tiny", TINY, seed=0, workers=1)
    bases = sorted((folder / "tiny").glob("OAS2_RAW_PART*/*/RAW/mpr-*.nifti.hdr"))
    (folder / "scans").mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        image = nib.load(bases[k % len(bases)])
        data = np.asarray(image.dataobj)[..., 0].copy()
        data[0, 0, 0] = k + 1  # a corner of the background: another content hash, the same head
        path = folder / "scans" / f"scan-{k:05d}.nii.gz"
        nib.save(nib.Nifti1Image(data, image.affine), path)
        paths.append(str(path))
    pd.DataFrame({"path": paths}).to_csv(table, index=False)
    return table


def _heads(folder: Path, n: int, workers: int) -> Path:
    """A cohort of ``n`` people, one scan each, on a 1 mm grid (the generator's ``v1``)."""
    from brainage.cohort import Preset, synthesize

    root = folder / f"heads-{n}"
    if not root.is_dir():
        preset = Preset("predict-1mm", n, 0, 0, ((1, n),), ((1, n),), HEAD_SHAPE, (1.0, 1.0, 1.0), 1.5)
        synthesize(root, preset, seed=0, workers=workers)
    return root


def stage_seconds(work: Path, workers: int) -> dict:
    """Median CPU seconds per stage of the scans stored in ``work`` (their records), their sum, and
    the scans/s that ``workers`` cores would give at that cost."""
    records = pd.DataFrame([json.loads(path.read_text()) for path in _stored(work)])
    medians = records.filter(like="cpu_s_").median().rename(lambda column: column.removeprefix("cpu_s_"))
    row = {stage: round(float(value), 3) for stage, value in medians.items() if value > 0}
    total = float(medians.sum())
    return {**row, "total": round(total, 3), f"scans/s on {workers} cores": round(workers / total, 2) if total > 0 else float("nan")}


def memory_table(samples: list[dict], n: int) -> list[dict]:
    """Peak resident memory per tenth of the batch (by scans stored)."""
    rows = []
    for tenth in range(1, 11):
        inside = [s for s in samples if (tenth - 1) * n / 10 < s["stored"] <= tenth * n / 10 or (tenth == 1 and s["stored"] == 0)]
        if inside:
            rows.append(
                {"scans stored up to": int(tenth * n / 10), "peak MB, predict process": round(max(s["main_mb"] for s in inside)),
                 "peak MB, with workers": round(max(s["total_mb"] for s in inside)), "samples": len(inside)}
            )  # fmt: skip  # a table row: keys grouped in rows
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a folder for the scans, work folders and predictions")
    parser.add_argument("--scans", type=int, default=1000, help="scans of the memory and resume runs (default 1000)")
    parser.add_argument("--speed-scans", type=int, default=40, help="1 mm heads of the throughput run (default 40)")
    parser.add_argument("--workers", type=int, default=2, help="preprocessing processes (default 2)")
    parser.add_argument("--pipeline", default="seed", help="the pipeline of the memory and resume runs (default seed)")
    parser.add_argument("--model", help="a checkpoint or run folder (default: an untrained network; its pipeline then applies)")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--skip", nargs="*", default=[], choices=["memory", "resume", "throughput"], help="parts not to run")
    parser.add_argument("--label", help="also write docs/results/predict_scale-LABEL.json")
    parser.add_argument(
        "--isa", choices=sorted(ISA_ENV), default="native", help="torch's and numpy's CPU kernels in the predict processes: native or avx2 (as without AVX-512)"
    )
    parser.add_argument("--note", action="append", default=[], help="a line added to every table's notes (e.g. what else ran)")
    args = parser.parse_args(argv)
    os.environ.update(ISA_ENV[args.isa])  # inherited by every predict process (and recorded with the machine)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    tables, wall = [], {}
    shared = ": other jobs shared the machine, so times are upper bounds" if load[0] >= 1.0 else ""
    note = f"load average {load[0]:.1f} at the start on {os.cpu_count()} cores{shared}; torch and numpy kernels: {args.isa}"
    if {"memory", "resume"} - set(args.skip):
        started = time.monotonic()
        checkpoint = _checkpoint(args.pipeline, out, args.model)
        inputs = _copies(out / "copies", args.scans)
        wall["make scans"] = time.monotonic() - started
    if "memory" not in args.skip:
        started = time.monotonic()
        work = out / "memory.csv.parts"
        report, samples = _watch(_child_command(checkpoint, inputs, work, out / "memory.csv", args.workers), work, args.every)
        wall["memory"] = time.monotonic() - started
        rows = memory_table(samples, args.scans)
        growth = rows[-1]["peak MB, predict process"] - rows[min(1, len(rows) - 1)]["peak MB, predict process"]
        tables.append(
            {"title": f"Peak resident memory over a batch of {args.scans} scans ({args.pipeline} pipeline, {args.workers} workers)", "records": rows,
             "notes": [f"predict process: {growth:+d} MB from the second tenth to the last; outcomes {report['outcomes']}", note, *args.note]}
        )  # fmt: skip  # keys grouped in rows
    if "resume" not in args.skip:
        started = time.monotonic()
        work, csv = out / "resume.csv.parts", out / "resume.csv"
        command = _child_command(checkpoint, inputs, work, csv, args.workers)
        _, _ = _watch(command, work, 0.05, kill_at=args.scans // 2)
        stored = len(_stored(work))
        report, _ = _watch(command, work, args.every)
        wall["resume"] = time.monotonic() - started
        outcomes = report["outcomes"]
        equal = "–"
        if (out / "memory.csv").is_file():
            try:
                pd.testing.assert_frame_equal(pd.read_csv(csv), pd.read_csv(out / "memory.csv"), rtol=1e-5)
                equal = "yes"
            except AssertionError:
                equal = "no"
        record = {"scans": args.scans, "stored when killed": stored, "taken from the work folder": outcomes["already in the work folder"],
                  "prepared by the rerun": outcomes["prepared now"], "failed": outcomes["failed"], "CSV equals the uninterrupted run's": equal}  # fmt: skip  # a table row: keys grouped in rows
        tables.append({"title": "Killed (SIGKILL) at half, then run again", "records": [record], "notes": [note, *args.note]})
    if "throughput" not in args.skip:
        started = time.monotonic()
        heads = _heads(out, args.speed_scans, args.workers)
        checkpoint = _checkpoint("standard", out, args.model)
        wall["make heads"] = time.monotonic() - started
        started = time.monotonic()
        work = out / f"speed-{time.time_ns()}.csv.parts"  # fresh: every head prepared now
        report, _ = _watch(_child_command(checkpoint, heads, work, out / "speed.csv", args.workers), work, args.every)
        wall["throughput"] = time.monotonic() - started
        times = sorted(record.stat().st_mtime for record in _stored(work))
        steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")
        record = {"heads": args.speed_scans, "workers": args.workers, "scans/s, first to last stored": round(steady, 3),
                  "scans/s, predict call": round(report["rows"] / report["predict_s"], 3), "predict s": round(report["predict_s"], 1),
                  "prepared": report["outcomes"]["prepared now"], "failed": report["outcomes"]["failed"]}  # fmt: skip  # a table row: keys grouped in rows
        tables.append(
            {
                "title": "Throughput on 1 × 1 × 1 mm heads (256 × 256 × 160), one scan per session, standard pipeline",
                "records": [record],
                "notes": [note, *args.note],
            }
        )
        tables.append(
            {"title": "Median CPU seconds per head in a worker, by stage", "records": [stage_seconds(work, args.workers)], "notes": [note, *args.note]}
        )
    for table in tables:
        print(f"\n{table['title']}\n{pd.DataFrame(table['records']).to_string(index=False)}\n" + "\n".join(str(line) for line in table.get("notes", [])))
    argv_used = ["python", "bench/predict_scale.py", *(argv if argv is not None else sys.argv[1:])]
    write_results(out / "predict_scale.json", tables, wall, "fp32", argv_used)
    if args.label:
        print(write_results(ROOT / "docs" / "results" / f"predict_scale-{args.label}.json", tables, wall, "fp32", argv_used))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
    else:
        main()
