"""The demo's wall and CPU time per step, optionally with the CPU kernels limited to AVX2 (fp32),
as on the machines without AVX-512 that the demo must fit (issue 27, point 2).

    .venv/bin/python bench/demo_timing.py --out bench-out/demo-timing --isa avx2 --label avx2-fp32

``--isa avx2`` runs the demo in a child process with torch's and numpy's kernels limited to AVX2
(``results.ISA_ENV``, set before they load: none can change afterwards), so any machine
reproduces the slow machines' kernels; ``--isa native`` leaves them as they are. The demo starts
from an empty ``--out`` (a reused cohort or cache would hide their steps' time). Writes
``docs/results/demo-LABEL.json`` (``bench/results.py``): per step the wall seconds (``wall_s``) and
the CPU seconds, and the demo's comparison table. Run it on a quiet machine: other work inflates
the wall time (the CPU seconds over the cores used then estimate the quiet wall time). Asserts
nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from results import ISA_ENV


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder for the demo (emptied first)")
    parser.add_argument("--isa", choices=sorted(ISA_ENV), default="avx2", help="CPU kernels: avx2 (fp32, as without AVX-512) or native")
    parser.add_argument("--label", required=True, help="LABEL of docs/results/demo-LABEL.json")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: the demo's, every usable core)")
    parser.add_argument("--preset", default="demo", help="cohort preset (tiny: a check that the script runs)")
    parser.add_argument("--results", type=Path, default=None, help="results JSON (default: docs/results/demo-LABEL.json)")
    args = parser.parse_args()
    wanted = ISA_ENV[args.isa]
    if any(os.environ.get(key) != value for key, value in wanted.items()):
        raise SystemExit(subprocess.call([sys.executable, *sys.argv], env={**os.environ, **wanted}))
    run(args)


def run(args: argparse.Namespace) -> None:
    """The demo from an empty folder, timed; its results file written."""
    from results import ROOT, write_results

    from brainage.console import console, print_table
    from brainage.demo import DemoConfig, run_demo
    from brainage.training.config import resolve_precision

    if args.out.exists():
        shutil.rmtree(args.out)
    config = DemoConfig(preset=args.preset, **({"workers": args.workers} if args.workers else {}))
    result = run_demo(args.out, config)
    steps = [{"step": step, "wall_s": wall, "cpu_s": result.cpu_seconds.get(step)} for step, wall in result.seconds.items()]
    title = f"brainage demo ({args.preset} preset), step by step (CPU kernels: {args.isa}), seconds"
    print_table(result.timings(), title=title)
    table = result.table.to_dict(orient="records")
    tables = [
        {"title": title, "records": steps, "notes": [f"{config.workers} worker processes; CPU seconds of the demo's process and the workers it waited for"]},
        {"title": f"brainage demo ({args.preset} preset): the comparison table it printed (seed 0: the development cohort)", "records": table},
    ]
    precision = resolve_precision(config.train_config().precision, "cpu")
    path = write_results(args.results or ROOT / "docs" / "results" / f"demo-{args.label}.json", tables, result.seconds, precision, sys.argv)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
