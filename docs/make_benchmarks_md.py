"""Render docs/benchmarks.md (and the marked results block of README.md) from the results files in
docs/results/: every measured number on those pages comes from a file that a bench script wrote,
beside its command, commit, date and machine, so a table can never be older than its data.

    .venv/bin/python docs/make_benchmarks_md.py            # rewrite both files
    .venv/bin/python docs/make_benchmarks_md.py --check    # exit 1 when either is stale

``tests/test_benchmarks_md.py`` fails when either file differs from what this script makes. The
how-to-run text is the template below; a section with no results file says "not measured yet at
this commit". Output depends only on the results files (sorted by name), never on the clock.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainage.utils import atomic_write

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from results import display  # noqa: E402  (bench/ is a folder of scripts, not a package: its path goes first)

RESULTS = ROOT / "docs" / "results"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
#: README.md's blocks between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` are rendered
#: (``demo``: the demo's headline table; ``retest``: the test–retest table).
NOT_MEASURED = "Not measured yet at this commit."
REGENERATE = ".venv/bin/python docs/make_benchmarks_md.py"


@dataclass(frozen=True)
class Section:
    """A heading of docs/benchmarks.md, its how-to-run text, and the results files it renders
    (names matching ``pattern`` in docs/results/)."""

    heading: str
    text: str
    pattern: str


SECTIONS = (
    Section(
        "Accuracy: the demo cohort on evaluation seeds",
        """The recipe is frozen on the development seed (`--seed`, 0 by default: the only cohort on which
settings may be chosen), then runs once on each evaluation seed: a fresh synthetic cohort (new
people, new folds) per seed. Every MAE has a subject-level bootstrap 95 % CI (people resampled with
all their sessions and scans, `brainage.bootstrap`), and the network's difference from the best
baseline a paired one (the same resampled people for both); "ahead" means that CI lies below zero
(above zero for gap fidelity). Columns: MAE against age; MAE true, against the cohort's true brain
age; gap fidelity, the partial correlation of predicted with true brain age given age; MAE
controls, against age on the Nondemented; Δ MAE, the network's MAE minus the best baseline's (the
lowest MAE at that level), and likewise Δ MAE true and Δ gap fidelity against the best baseline on
each; each with its 95 % CI in brackets. MAE against age after the bias correction is pulled towards
age by construction; how well brain age is read is the MAE against the true brain age and the gap
fidelity. Per seed, a table per person gives the Demented − Nondemented gap, Cohen's d and Welch's
p of every predictor (the bias-corrected row corrected on the controls of the other folds).

```bash
.venv/bin/python bench/accuracy.py --out bench-out/eval-demo --preset demo --eval-seeds 1 2 3
```""",
        "accuracy-demo-*.json",
    ),
    Section(
        "Accuracy: the OASIS-2-sized cohort on evaluation seeds",
        """The same at full size (150 people, 373 sessions, 1368 scans per cohort), the default model
trained on one random repeat of each session per epoch. Its folds take hours on CPU and resume
where they stopped, so a results file's wall times are those of the command that wrote it (small
where its runs were reused), not of the training:

```bash
.venv/bin/python bench/accuracy.py --out bench-out/eval-oasis2 --preset oasis2 --eval-seeds 1 2 --repeats-per-session 1
```""",
        "accuracy-oasis2-*.json",
    ),
    Section(
        "Leave one anatomy out",
        """The population generator (`v2`) makes people from several real base heads and ageing variants.
`bench/transfer.py` trains the default model on the people of every head but one and predicts the
people of the held-out head, each head in turn, and likewise for each ageing variant. Per session it
reports MAE against age and against the true brain age, gap fidelity, r(prediction, age) and the
Demented − Nondemented gap, each with a subject-level CI. Out of fold on the training heads
(`in-generator`) stands beside the held-out people, as predicted (`raw`) and bias-corrected on their
own controls (`corrected`). Where r(prediction, age) is about zero, the network has not learnt age,
and a corrected MAE against age near nothing is then the correction putting age in the prediction's
place: read the gap fidelity and the MAE against the true brain age. At the script's defaults (a
demo-sized population, a 32-voxel grid, 20 epochs) that is the case even in the generator: the run
below is too small to say anything about transfer.

```bash
.venv/bin/python bench/transfer.py --out bench-out/transfer --workers 1
```""",
        "transfer-*.json",
    ),
    Section(
        "Ageing in the generators' ground truth",
        """Before any network: how closely a synthetic cohort's own volumes follow its true brain age, per
cohort and per base head of a `v2` cohort (from `ground_truth.csv`: r of the normalised whole-brain
volume and of the ventricles' share of the intracranial volume with the true brain age, the nWBV's
mean and SD, the ventricles' coefficient of variation), and the project's tuned voxel ridge out of
fold on the prepared scans (r with age and with the true brain age). A generator whose base heads
differ in nWBV by decades of ageing, or whose people vary far more than ageing moves them, leaves
a network little to read: the `population` preset's defaults are such a generator.

```bash
.venv/bin/python bench/generator_signal.py --cohort bench-out/eval-demo/seed-1/cohort --cache bench-out/eval-demo/seed-1/cache-standard-64 --cohort bench-out/transfer/cohort --cache bench-out/transfer/cache-32 --results docs/results/generator_signal-demo-vs-population.json
```""",
        "generator_signal-*.json",
    ),
    Section(
        "Training on controls only",
        """The default model trained on the Nondemented only (`--set 'train_groups=[Nondemented]'`) against
the same model trained on every group, on the same evaluation seeds, folds and test people (other
groups are left out of training only): gap fidelity, the controls' MAE and the MAE against the true
brain age, uncorrected and bias-corrected, each with its subject-level CI; the paired differences
(controls only minus every group, Δ); per person the bias-corrected Demented − Nondemented gap.

```bash
.venv/bin/python bench/accuracy.py --out bench-out/eval-demo --preset demo --eval-seeds 1 2 3 --set 'train_groups=[Nondemented]' --label eval-seeds-1-2-3-controls-only
.venv/bin/python bench/train_groups.py --out bench-out/eval-demo --preset demo --seeds 1 2 3
```""",
        "train_groups-*.json",
    ),
    Section(
        "Test–retest",
        """A trained run predicts people it never saw (a fresh seed's cohort) from two caches of the same
scans: prepared with session reuse (repeats aligned to the session's first scan) and without
(`--no-session-reuse`: every repeat skull-stripped and registered on its own, so the spread of the
repeats holds the preprocessing's variability). Within-session SD and ICC(2,1)/ICC(3,1) with 95 %
intervals, of brain age, of the gap (brain age − age) and of the bias-corrected gap: a brain age
whose gap is not repeatable is of no use however repeatable the brain age is.

```bash
.venv/bin/python bench/retest.py --run bench-out/eval-demo/seed-1/run-standard-64-resnet-demo-settings --cohort bench-out/eval-demo/seed-2/cohort --reuse-cache bench-out/eval-demo/seed-2/cache-standard-64 --out bench-out/retest-demo --label demo-run-seed-1-cohort-seed-2
```""",
        "retest-*.json",
    ),
    Section(
        "Calibration of what `predict` serves",
        """A K-fold run's bias correction and conformal interval are fitted on out-of-fold predictions of
single fold networks, while `brainage predict RUN` serves the mean of the K networks, which errs
less. The interval it serves is split conformal around that mean with its half-width scaled by
`√(1 − E[D] / MSE)`: MSE the single networks' out-of-fold mean squared error, `E[D]` the networks'
spread around their mean, estimated on the scans that two fold networks never trained on (a fold's
validation people, used only to stop its training early, are another fold's test people;
`brainage.conformal.ConformalInterval`). Each finished evaluation-seed run predicts the cache of
another evaluation seed (new people, none of whom trained or calibrated it): coverage of the 90 %
interval per scan and per session with subject-level bootstrap CIs, the scaled interval (served)
beside the unscaled one, CV+ over the fold networks, the one widened by the networks' SD and one
fold network alone; and the controls' mean bias-corrected gap of the served mean. Target: coverage
within ±2 points of nominal, the controls' gap within ±0.2 y. Inference only, a few minutes on CPU.

```bash
.venv/bin/python bench/served_calibration.py --pair bench-out/eval-demo/seed-1/run-standard-64-resnet-demo-settings bench-out/eval-demo/seed-2/cache-standard-64 --pair bench-out/eval-demo/seed-2/run-standard-64-resnet-demo-settings bench-out/eval-demo/seed-1/cache-standard-64 --out docs/results/served_calibration-demo-eval-seeds-1-2.json
```""",
        "served_calibration-*.json",
    ),
    Section(
        "Accuracy: development runs",
        """Without `--eval-seeds` the script runs the development seed: the baselines, the tutorial's
recipe (`seed` model on the `seed` pipeline, `--seed-epochs` of its 50) and the default model on
the same subject-grouped folds, per session, with the true brain age and the ceiling (age from the
true brain age by a line fitted out of fold). Its results file goes to `--out/results.json` unless
`--results` names one here. Pre-training on another synthetic cohort, then fine-tuning every fold
(`--pretrain pretrain`, `--pretrain-people N`, `--pretrain-set FIELD=VALUE`), and any other
`TrainConfig` field of the default model (`--set lr=2e-4 ensemble=3`) run in the same resumable
command; a `brainage predict` CSV is scored against a run's truth and folds by
`bench/score_predictions.py`:

```bash
.venv/bin/python bench/accuracy.py --out bench-out/acc --preset demo
.venv/bin/python bench/accuracy.py --out bench-out/oasis2 --preset oasis2 --seed-epochs 0 --repeats-per-session 1 --pretrain pretrain --set lr=0.0002
.venv/bin/python bench/score_predictions.py bench-out/zero-shot.csv bench-out/oasis2/run-standard-64-resnet-r1
```""",
        "accuracy-dev-*.json",
    ),
    Section(
        "Demo",
        """`make demo` runs `brainage demo` (synthesis, preparation, training, held-out prediction, report)
and prints the time of each step. The target is under 10 minutes on a 2-core machine without
AVX-512 (fp32); `bench/demo_timing.py --isa avx2` runs the demo from an empty folder with torch's and
numpy's kernels limited to AVX2, as on such a machine, and writes each step's wall and CPU seconds.
Limiting the kernels reproduces the instruction set, not a slower processor's clock or memory: a
machine that is slower in plain scalar code (the synthesis step shows it) takes longer.

```bash
make demo
.venv/bin/python bench/demo_timing.py --out bench-out/demo-timing --isa avx2 --label avx2-fp32
```""",
        "demo-*.json",
    ),
    Section(
        "Preprocessing speed",
        """`prepare` per stage and pipeline on synthetic OASIS-sized scans, each pipeline in a fresh
process (its CPU time and peak memory its own), cached reruns, cache loading and the output grid:

```bash
.venv/bin/python bench/prepare.py --scans 16 --workers 2 --skip-grid
.venv/bin/python bench/prepare.py --only-grid
.venv/bin/python bench/prepare.py --source ~/data/oasis2 --scans 8
```""",
        "prepare-*.json",
    ),
    Section(
        "Prediction at cohort scale",
        """`brainage predict` on a long batch, each run a fresh process watched from outside: the resident
memory per tenth of a batch of distinct scans (flat when nothing accumulates), a batch killed with
SIGKILL at half and run again (what the rerun took from its work folder and what it prepared), and
scans per second on 1 mm heads with 2 workers, start-up excluded. The throughput is measured with
torch's and numpy's kernels limited to AVX2 (`--isa avx2`), as on a machine without AVX-512, on a
quiet machine:

```bash
.venv/bin/python bench/predict_scale.py --out bench-out/predict-scale --skip throughput --label cpu2-memory-resume
.venv/bin/python bench/predict_scale.py --out bench-out/ps-avx2 --skip memory resume --speed-scans 40 --isa avx2 --label avx2-1mm-throughput
```""",
        "predict_scale-*.json",
    ),
    Section(
        "Training speed",
        """The tutorial's network trained by brainage's Lightning trainer against a plain loop written like
the tutorial's, on the same synthetic scans (training batches only; the first epoch a warm-up):

```bash
.venv/bin/python bench/train_speed.py --side 64 --scans 48 --epochs 3 --batch-size 8
```""",
        "train_speed-*.json",
    ),
    Section(
        "Pose invariance",
        """How far a trained model's brain age moves when the head is re-posed:

```bash
.venv/bin/python bench/pose.py RUN --scans 3 --poses 8
```""",
        "pose-*.json",
    ),
)

HEADER = f"""# Benchmarks

<!-- Generated by docs/make_benchmarks_md.py from docs/results/*.json: do not edit; run {REGENERATE} -->

Benchmarks are scripts in `bench/` that print tables and write one results file per run into
`docs/results/` (`bench/results.py`: the command, the commit, the date, the machine, the precision,
the wall time per step and the tables). This page is rendered from those files by
`{REGENERATE}`; a test fails when it differs from them. A table is as recent as its file's commit:
rerun its command to measure the current code. Benchmarks are not part of the test suite and
assert nothing."""


def _machine(machine: Mapping[str, Any]) -> str:
    parts = [f"{machine.get('cpu') or 'unknown CPU'}, {machine.get('cores')} cores", f"{machine.get('memory_gib')} GiB"]
    flags = [name for name, key in (("AVX-512", "avx512"), ("AMX", "amx")) if machine.get(key)]
    parts.append(" and ".join(flags) + " reported" if flags else "neither AVX-512 nor AMX reported")
    if machine.get("aten_cpu_capability"):
        parts.append(f"ATEN_CPU_CAPABILITY={machine['aten_cpu_capability']}")
    parts.append(f"GPU: {machine['gpu']}" if machine.get("gpu") else "no GPU")
    parts.append(f"torch {machine.get('torch')}, Python {machine.get('python')}")
    return "; ".join(parts)


def _seconds(value: float) -> str:
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def markdown_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Records as a Markdown table (cells by :func:`results.display`)."""
    rows = display(records)
    if not rows:
        return "(no rows)"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(column, "–").replace("|", "\\|") for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def render_file(path: Path, heading: str = "###") -> str:
    """One results file: where it came from, then each of its tables with its notes."""
    document = json.loads(path.read_text(encoding="utf-8"))
    commit = document.get("commit") or {}
    sha = (commit.get("sha") or "unknown")[:10] + (" (with uncommitted changes)" if commit.get("dirty") else "")
    wall = document.get("wall_s") or {}
    total = f"; {_seconds(sum(wall.values()))} in all" if wall and "total" not in wall else ""  # a step list may carry its own total
    lines = [
        f"{heading} `{path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name}`",
        "",
        "```bash",
        shlex.join(document.get("command") or []),
        "```",
        "",
        f"Commit {sha}, {document.get('date')}, precision {document.get('precision') or 'not recorded'}.  ",
        f"Machine: {_machine(document.get('machine') or {})}.  ",
        "Wall time: " + (", ".join(f"{step} {_seconds(seconds)}" for step, seconds in wall.items()) + total if wall else "not recorded") + ".",
    ]
    for table in document.get("tables", []):
        lines += ["", f"**{table['title']}**", "", markdown_table(table["records"])]
        lines += [""] + [f"- {note}" for note in table.get("notes", [])] if table.get("notes") else []
    return "\n".join(lines)


def _files(results: Path, pattern: str) -> list[Path]:
    return sorted(results.glob(pattern))


def render_benchmarks(results: Path = RESULTS) -> str:
    """docs/benchmarks.md from the results files in ``results``."""
    parts, used = [HEADER], set()
    for section in SECTIONS:
        files = _files(results, section.pattern)
        used.update(files)
        parts += (
            [f"## {section.heading}", section.text, *(render_file(path) for path in files)] if files else [f"## {section.heading}", section.text, NOT_MEASURED]
        )
    others = [path for path in _files(results, "*.json") if path not in used]
    if others:
        parts += ["## Other results", *(render_file(path) for path in others)]
    return "\n\n".join(parts).rstrip() + "\n"


def _latest_table(files: list[Path], keys: tuple[str, ...] | None = None) -> tuple[Path, dict[str, Any], list[str]]:
    """The latest of ``files`` (by date, then name), its first table, and the lines that show it:
    title, commit and command, then its records (only ``keys`` of each, where given)."""
    latest = max(files, key=lambda path: (json.loads(path.read_text(encoding="utf-8")).get("date") or "", path.name))
    document = json.loads(latest.read_text(encoding="utf-8"))
    table = document["tables"][0]
    sha = ((document.get("commit") or {}).get("sha") or "unknown")[:10]
    records = [{key: record.get(key) for key in keys} for record in table["records"]] if keys else table["records"]
    return latest, table, [f"**{table['title']}** (commit {sha}, `{' '.join(document.get('command') or [])}`)", "", markdown_table(records)]


def render_readme_block(results: Path = RESULTS) -> str:
    """The README's demo block: the summary table of the latest results file of the default recipe
    on the demo's evaluation seeds (``accuracy-demo-eval-seeds-S-S-S.json``, no other label), or a
    line saying none is there yet."""
    files = [path for path in _files(results, "accuracy-demo-eval-seeds-*.json") if re.fullmatch(r"accuracy-demo-eval-seeds-[0-9-]+\.json", path.name)]
    if not files:
        return f"The demo's accuracy on evaluation seeds is {NOT_MEASURED.lower()} See [docs/benchmarks.md](docs/benchmarks.md)."
    latest, table, lines = _latest_table(files)
    lines += [""] + [f"- {note}" for note in table.get("notes", [])] if table.get("notes") else []
    lines += ["", f"Per seed and every predictor, with the machine and wall times: [docs/benchmarks.md](docs/benchmarks.md) (`{latest.name}`)."]
    return "\n".join(lines)


def render_retest_block(results: Path = RESULTS) -> str:
    """The README's test–retest block: the table of the latest ``retest-*.json`` file, or a line
    saying none is there yet."""
    files = _files(results, "retest-*.json")
    if not files:
        return f"Test–retest on a cache prepared without session reuse is {NOT_MEASURED.lower()}"
    latest, _, lines = _latest_table(files, ("preparation", "quantity", "within_sd", "icc2", "icc2_low", "icc2_high", "n_sessions", "n_scans"))
    return "\n".join([*lines, "", f"Every measure with its interval: [docs/benchmarks.md](docs/benchmarks.md) (`{latest.name}`)."])


def render_train_groups_block(results: Path = RESULTS) -> str:
    """The README's training-groups block: the summary table of the latest ``train_groups-*.json``
    file (controls only against every group on the evaluation seeds), or a line saying none is there yet."""
    files = _files(results, "train_groups-*.json")
    if not files:
        return f"Training on controls only against every group is {NOT_MEASURED.lower()}"
    latest, table, lines = _latest_table(files)
    lines += [""] + [f"- {note}" for note in table.get("notes", [])] if table.get("notes") else []
    return "\n".join([*lines, "", f"Each choice's figures per seed: [docs/benchmarks.md](docs/benchmarks.md) (`{latest.name}`)."])


def with_readme_block(readme: str, block: str, name: str = "demo") -> str:
    """``readme`` with the text between the ``<!-- results:NAME -->`` markers replaced by ``block``."""
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(readme):
        raise SystemExit(f"{README}: no {start} … {end} block to render into")
    return pattern.sub(lambda _: f"{start}\n{block}\n{end}", readme, count=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/benchmarks.md or README.md's results block is stale")
    args = parser.parse_args()
    readme = with_readme_block(README.read_text(encoding="utf-8"), render_readme_block())
    readme = with_readme_block(readme, render_retest_block(), "retest")
    expected = {BENCHMARKS: render_benchmarks(), README: with_readme_block(readme, render_train_groups_block(), "train_groups")}
    stale = [path for path, text in expected.items() if path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run {REGENERATE}")
        raise SystemExit(1 if stale else 0)
    for path in stale:
        with atomic_write(path) as tmp:
            tmp.write_text(expected[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
