"""Command-line interface: parses arguments and calls the library, nothing more."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from brainage import __version__
from brainage.cli_checks import DEVICE_HELP, WORKERS_HELP, check_device, check_exists, check_models, reports_errors, workers_or_all
from brainage.cli_predict import bids_command, models_command, predict_command
from brainage.console import err_console
from brainage.errors import BrainAgeError

if TYPE_CHECKING:
    from brainage.training import TrainResult

app = typer.Typer(
    name="brainage",
    help="Predict brain age from structural T1-weighted MRI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"brainage {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Predict brain age from structural T1-weighted MRI."""


# --- commands (one block per command; keep them thin) ------------------------------------------


@app.command("inspect")
@reports_errors
def inspect_source(
    source: Path = typer.Argument(..., help="An OASIS-2 folder, a BIDS folder, or a CSV of path,subject_id,age."),
    demographics: Path | None = typer.Option(
        None, "--demographics", help="OASIS-2 demographics spreadsheet (.xlsx or .csv); found beside the scans if omitted."
    ),
    check_data: bool = typer.Option(False, "--check-data", help="Also load every scan (catches NaN-only and constant images)."),
    workers: int | None = typer.Option(None, "--workers", min=1, help=f"{WORKERS_HELP} Used by --check-data."),
) -> None:
    """Show what a data source holds: subjects, sessions, scans, ages, groups, and what is wrong."""
    from brainage.console import print_problems, print_table
    from brainage.io import check_scans, discover, summarize

    check_exists(demographics, "--demographics")
    found = discover(source, demographics)
    load_problems = check_scans(found.manifest["path"], workers=workers_or_all(workers)) if check_data else None
    print_table(summarize(found, load_problems), title=f"brainage inspect: {found.kind}")
    print_problems([*found.problems, *(load_problems or [])], title="Problems")


@app.command("train")
@reports_errors
def train_command(
    cache: Path = typer.Argument(..., help="A prepared cache folder (from `brainage prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write; a folder holding this same run is resumed."),
    model: str | None = typer.Option(None, "--model", help="Network by name (see brainage.models.available_models())."),
    folds: int | None = typer.Option(None, "--folds", min=2, help="K-fold by subject: out-of-fold predictions for every scan."),
    test_fraction: float | None = typer.Option(
        None, "--test-fraction", min=0.01, max=0.99, help="Without --folds: test on this fraction of the subjects, held out of training."
    ),
    val_fraction: float | None = typer.Option(None, "--val-fraction", min=0.01, max=0.99, hidden=True, help="Deprecated name of --test-fraction."),
    train_groups: list[str] | None = typer.Option(
        None, "--train-groups", help="Train on these groups only (repeatable, e.g. Nondemented); every group is still predicted."
    ),
    control_group: list[str] | None = typer.Option(
        None,
        "--control-group",
        help="Group value(s) that count as controls for the bias correction (repeatable); default: from the data (Nondemented, control, HC, CDR 0).",
    ),
    bias_correction: str | None = typer.Option(None, "--bias-correction", help="residual (default), cole, or none."),
    init: Path | None = typer.Option(None, "--init", help="Fine-tune: start every fold from this checkpoint or run folder (same model)."),
    ensemble: int | None = typer.Option(None, "--ensemble", min=1, help="Networks per fold from different seeds; predictions are their mean."),
    epochs: int | None = typer.Option(
        None, "--epochs", min=0, help="Maximum epochs; 0 with --init: keep its weights, re-fit only its output line to age on each fold's training scans."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=2, help="Scans per batch."),
    lr: float | None = typer.Option(None, "--lr", min=0.0, help="Peak learning rate of AdamW."),
    devices: str | None = typer.Option(None, "--devices", help="Lightning devices: a count, ids like 0,1, or auto."),
    num_nodes: int | None = typer.Option(None, "--num-nodes", min=1, help="Machines for multi-node DDP (launched by your scheduler)."),
    accelerator: str | None = typer.Option(None, "--accelerator", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps."),
    precision: str | None = typer.Option(None, "--precision", help="auto, 32-true, bf16-mixed or 16-mixed."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of splits, initialisation and augmentation."),
    deterministic: bool | None = typer.Option(None, "--deterministic/--no-deterministic", help="Deterministic algorithms only."),
    baselines: bool | None = typer.Option(None, "--baselines/--no-baselines", help="Fit the baselines on the same folds."),
    config_file: Path | None = typer.Option(None, "--config", help="YAML of TrainConfig fields; options given here override it."),
) -> None:
    """Train a brain-age network with subject-grouped evaluation and baselines on the same folds.

    Options left out take their value from --config, else from brainage.training.TrainConfig; the
    run's config.yaml records every value used.
    """
    import dataclasses

    from brainage.cli_checks import check_train_options
    from brainage.training import TrainConfig, load_config, train

    check_train_options(model, accelerator, precision)
    if val_fraction is not None:
        if test_fraction is not None:
            raise BrainAgeError("--val-fraction is the old name of --test-fraction: give one of them")
        err_console.print("[yellow]warning:[/] --val-fraction is deprecated and will be removed; use --test-fraction (the same fraction)", soft_wrap=True)
        test_fraction = val_fraction
    if folds is not None and test_fraction is not None:
        raise BrainAgeError("choose either --folds or --test-fraction, not both")
    base = load_config(config_file) if config_file else TrainConfig()
    given: dict[str, Any] = {
        "model": model,
        "folds": folds,
        "test_fraction": test_fraction,
        "ensemble": ensemble,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "accelerator": accelerator,
        "precision": precision,
        "seed": seed,
        "deterministic": deterministic,
        "baselines": baselines,
        "train_groups": tuple(train_groups) if train_groups else None,
        "control_group": tuple(control_group) if control_group else None,
        "bias_correction": bias_correction,
        "init": str(init) if init else None,
        "devices": (int(devices) if devices.isdigit() else devices) if devices else None,
        "num_nodes": num_nodes,
    }
    if model is not None and model != base.model:
        base = dataclasses.replace(base, model_hparams={})  # the other model's hyper-parameters do not apply
    if test_fraction is not None:
        base = dataclasses.replace(base, folds=None)
    config = dataclasses.replace(base, **{key: value for key, value in given.items() if value is not None})
    check_models([config.init] if config.init else None, "--init")  # the data's own checks (groups, folds) come first in train()
    result = train(cache, out, config)
    if result is not None:  # None on a non-zero rank of multi-process training
        _print_run(result, config.model)


@app.command("combine")
@reports_errors
def combine_command(
    runs: list[Path] = typer.Argument(..., help="Two or more finished run folders trained on the same cache and folds."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (empty, or holding this same combination)."),
) -> None:
    """Average finished runs on the same folds into one run: every network of every run is a member,
    and the out-of-fold mean is bias-corrected and evaluated as `brainage train` does.

    For instance networks trained from scratch beside networks fine-tuned with --init; the combined run folder works with predict, report and export like any other.
    """
    from brainage.training import combine

    result = combine(runs, out)
    _print_run(result, f"{len(runs)} runs combined, {len(result.checkpoints) // len(result.folds)} networks a fold")


@app.command("evaluate")
@reports_errors
def evaluate_command(
    run: Path = typer.Argument(..., help="A finished run folder (from `brainage train` or `brainage combine`)."),
    control_group: list[str] | None = typer.Option(
        None, "--control-group", help="Group value(s) that count as controls (repeatable); default: as the run was last evaluated, else from the data."
    ),
    bias_correction: str | None = typer.Option(None, "--bias-correction", help="residual, cole, or none; default: as the run was last evaluated."),
    interval: float | None = typer.Option(None, "--interval", min=0.01, max=0.99, help="Coverage of the per-scan conformal intervals, e.g. 0.9."),
) -> None:
    """Evaluate a finished run again without training: bias correction, intervals, summary and what
    the report reads, with other controls, another correction or another coverage.

    The networks and their out-of-fold predictions are kept as they are; the checkpoints get the new
    final correction and interval, so `brainage predict RUN` serves them.
    """
    from brainage.training import evaluate

    result = evaluate(run, control_group=tuple(control_group) if control_group else None, bias_correction=bias_correction, interval=interval)
    model = str(result.summary["model"].iloc[0]) if not result.summary.empty else "network"
    _print_run(result, model)


def _print_run(result: TrainResult, name: str) -> None:
    """The tables and notes `brainage train` and `brainage combine` print about a finished run."""
    from brainage.console import console, print_table

    print_table(result.folds, title="Folds by subject (scans / subjects)")
    headline = ["model", "correction", "n", "mae", "mae_true", "gap_fidelity", "dementia_gap", "dementia_p"]
    sessions = result.summary.loc[result.summary["level"] == "session", headline]
    print_table(sessions, title=f"Out-of-fold accuracy per session (repeats averaged), years: {name} beside the baselines")
    console.print(
        "mae_true: MAE against the true brain age; gap_fidelity: partial r of predicted with true brain age given age (synthetic cohorts only); "
        "dementia_gap: Demented − Nondemented mean gap per subject, p by Welch's t-test. Scan-level rows are in summary.csv.",
        soft_wrap=True,
    )
    if result.corrector is not None:
        console.print(f"Final {result.corrector.describe()}", soft_wrap=True)
    for note in result.reliability:
        console.print(note, soft_wrap=True)
    corrected = result.group_test.get("column") == "brain_age_corrected"
    print_table(result.group_gaps, title=f"Brain-age gap by group ({'bias-corrected' if corrected else 'uncorrected: no correction was fitted'}), per subject")
    test = result.group_test
    if test["test"] != "none":
        console.print(f"{test['test']}: statistic {test['statistic']:.2f}, p = {test['p_value']:.3g}")
    console.print(f"Run folder: {result.run_dir} (config.yaml, predictions.csv, summary.csv, metrics.csv, figures, fold_*/model.ckpt)")


app.command("predict")(predict_command)
app.command("bids", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})(bids_command)
app.command("models")(models_command)


@app.command("pretrain")
@reports_errors
def pretrain_command(
    people: int = typer.Option(..., "--people", min=4, help="People to synthesise and train on (20 % of them held out)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the cohort, cache and run; a folder holding this same request is resumed."),
    preset: str = typer.Option("population_pretrain", "--preset", help="Synthetic population (v2) preset: population_tiny, population or population_pretrain."),
    seed: int = typer.Option(7, "--seed", help="Cohort seed."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Maximum epochs (default: brainage train's)."),
    workers: int | None = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Pre-train a network on a synthetic population, resumably (synthesis, preparation, training)."""
    import dataclasses

    from brainage.cli_checks import check_choice
    from brainage.cohort.population import POPULATION_PRESETS
    from brainage.pretrain import PRETRAIN_CONFIG, pretrain

    check_choice(preset, "--preset", POPULATION_PRESETS)
    config = dataclasses.replace(PRETRAIN_CONFIG, epochs=epochs) if epochs else PRETRAIN_CONFIG
    result = pretrain(people, out, preset, seed, config=config, workers=workers_or_all(workers), device=check_device(device))
    if result.result is not None:
        _print_run(result.result, f"pretrain ({people} people of {preset})")
    typer.echo(f"run folder (for --init, or zoo.export_named_model): {result.run_dir}")


@app.command("prepare")
@reports_errors
def prepare_command(
    source: Path = typer.Argument(..., help="An OASIS-2 folder, a BIDS folder, or a CSV of path,subject_id,age."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder (created; an existing cache is reused)."),
    pipeline: str = typer.Option(
        "standard",
        "--pipeline",
        help="standard (skull strip + MNI registration), standard-v1 (the earlier default, to reproduce its caches) or tutorial (the tutorial's; seed before).",
    ),
    shape: tuple[int, int, int] | None = typer.Option(None, "--shape", help="Output grid shape, e.g. --shape 64 64 64."),
    voxel_size: float | None = typer.Option(None, "--voxel-size", help="Output voxel size in mm."),
    workers: int | None = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    device: str = typer.Option("auto", "--device", help=f"Where skull stripping runs: {DEVICE_HELP} A missing device falls back to the CPU."),
    demographics: Path | None = typer.Option(None, "--demographics", help="OASIS-2 demographics spreadsheet, if not beside the scans."),
    shard: str | None = typer.Option(None, "--shard", help="I/N: prepare only the I-th of N shares (1 ≤ I ≤ N), e.g. one per SLURM array task."),
    no_session_reuse: bool = typer.Option(
        False,
        "--no-session-reuse",
        help="standard: strip and register every repeat of a session itself instead of aligning it to the session's first scan (slower; independent repeats for test-retest).",
    ),
    max_voxel_mm: float | None = typer.Option(
        None, "--max-voxel-mm", min=0.1, help="Leave out scans whose voxels are larger than this along any axis (slice thickness; default 3)."
    ),
) -> None:
    """Preprocess every scan once into a cache that training reads memory-mapped."""
    from brainage.console import console, print_problems, print_table
    from brainage.preprocess import make_config, prepare
    from brainage.preprocess.adequacy import AdequacyConfig

    check_device(device)
    check_exists(demographics, "--demographics")
    try:
        config = make_config(pipeline, shape=shape, voxel_size=voxel_size, session_reuse=False if no_session_reuse else None)
    except ValueError as error:
        raise BrainAgeError(f"--pipeline {pipeline}: {error}") from None
    parts = tuple(int(part) for part in shard.split("/") if part.isdigit()) if shard else None
    if shard and parts is not None and (len(parts) != 2 or shard.count("/") != 1 or not 1 <= parts[0] <= parts[1]):
        raise BrainAgeError(f"--shard {shard}: expected I/N with 1 ≤ I ≤ N, e.g. 3/8")
    pair = (parts[0], parts[1]) if parts else None
    adequacy = AdequacyConfig.with_overrides(max_voxel_mm=max_voxel_mm)
    report = prepare(source, out, config, workers=workers_or_all(workers), shard=pair, demographics=demographics, device=device, adequacy=adequacy)
    print_table(report.summary(), title=f"brainage prepare ({config.name}) → {out}")
    flagged = report.flagged
    if len(flagged):
        print_table(
            flagged[["scan_id", "qc_score", "inadequate", "qc_file"]],
            title=f"Flagged by QC (registration score < {config.qc_threshold}, or not adequate): left out of training",
        )
    print_problems(report.problems, title="Failed")
    console.print(f"{len(report.manifest)} scan(s) in the cache {out}")


@app.command("synth")
@reports_errors
def synth_command(
    out: Path | None = typer.Option(None, "--out", "-o", help="New or empty folder to write the cohort into."),
    preset: str = typer.Option(
        "demo",
        "--preset",
        help="tiny (tests), demo, oasis2 (full size: 150 subjects, 1368 scans), oasis1 (416 people aged 18–96) or pretrain (1000 people, one scan each), all from the MNI152 template (v1); or population_tiny, population or population_pretrain (v2: several real heads, varied anatomy, ageing and scanners).",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same bytes."),
    workers: int | None = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    layout: str = typer.Option("oasis2", "--layout", help="oasis2 (OAS2_RAW_PART*/ + demographics .xlsx) or oasis1 (disc*/ + oasis_cross-sectional.csv)."),
    old_out: Path | None = typer.Argument(None, hidden=True, help="Deprecated: the folder to write as a positional argument; use -o/--out."),
) -> None:
    """Generate a synthetic OASIS-2-shaped cohort from the MNI152 template, with known brain age."""
    import time

    from brainage.cli_checks import check_choice, check_preset, output_path
    from brainage.cohort import Preset, summary_table, synthesize
    from brainage.console import console, print_problems, print_table

    out = output_path(out, old_out, "synth")
    chosen = check_preset(preset)
    check_choice(layout, "--layout", ("oasis2", "oasis1"))
    start = time.perf_counter()
    if layout == "oasis1":
        from brainage.cohort.oasis1 import synthesize_oasis1  # the same cohort, OASIS-1's files

        if not isinstance(chosen, Preset):
            raise BrainAgeError(f"--layout oasis1: {preset} is a v2 population preset; OASIS-1's files are written from the v1 presets")
        result = synthesize_oasis1(out, chosen, seed=seed, workers=workers_or_all(workers))
    else:
        result = synthesize(out, chosen, seed=seed, workers=workers_or_all(workers))
    elapsed = time.perf_counter() - start
    print_table(summary_table(result), title=f"brainage synth ({chosen.name}, seed {seed}) → {out}", floatfmt="{:.3g}")
    mae = result.summary["true_brain_age_mae"]
    console.print(f"True brain age (a perfect brain reader) vs Age: MAE {mae['scan']:.2f} y per scan, {mae['session']:.2f} y per session")
    sheet, real = result.summary["spreadsheet"]["synthetic"], result.summary["spreadsheet"]["real_oasis2"]
    console.print(
        f"Spreadsheet: r(Age, nWBV) {sheet['r_age_nwbv']:.2f} (real OASIS-2 {real['r_age_nwbv']:.2f}); ridge on nWBV + eTIV + sex "
        f"at {sheet['ridge_to_mean_mae']:.2f} × the mean age's MAE (real {real['ridge_to_mean_mae']:.2f})"
    )
    console.print(f"{len(result.ground_truth)} scan(s) written in {elapsed:.1f} s")
    print_problems(result.problems, title="Failed")
    if result.problems:
        raise typer.Exit(code=1)


@app.command("report")
@reports_errors
def report_command(
    run: Path = typer.Argument(..., help="A run folder (from `brainage train`)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="HTML file to write; default RUN/report.html."),
    saliency: str = typer.Option("gradient", "--saliency", help="gradient or occlusion (slower)."),
    saliency_scans: int = typer.Option(16, "--saliency-scans", min=1, help="Test scans the saliency map averages."),
    heldout: Path | None = typer.Option(
        None, "--heldout", help="`brainage predict` CSV of people the run never saw (with ages): their interval coverage beside the out-of-fold one."
    ),
) -> None:
    """Write one self-contained HTML report of a training run (figures embedded)."""
    from brainage.console import console
    from brainage.report import build_report

    check_exists(heldout, "--heldout")
    console.print(f"Report: {build_report(run, out, saliency=saliency, saliency_scans=saliency_scans, heldout=heldout)}", soft_wrap=True)


@app.command("export")
@reports_errors
def export_command(
    model: list[Path] = typer.Argument(..., help="Checkpoints (model.ckpt) or run folders; several are exported as one averaged model."),
    out: Path = typer.Option(..., "--out", "-o", help="ONNX file to write."),
    scan: Path | None = typer.Option(None, "--scan", help="Scan for the ONNX Runtime vs PyTorch check; default the MNI152 template on the model's grid."),
    tolerance: float = typer.Option(1e-3, "--tolerance", min=0.0, help="Largest difference (years) the check accepts."),
) -> None:
    """Export a model to ONNX, checked: ONNX Runtime must agree with PyTorch on a scan."""
    from brainage.console import console
    from brainage.export import export_onnx

    check_exists(scan, "--scan")
    result = export_onnx(model, out, scan=scan, tolerance=tolerance)
    console.print(
        f"ONNX Runtime vs PyTorch on {result.check_input}: max abs difference {result.max_abs_difference:.2e} years (tolerance {result.tolerance:g})",
        soft_wrap=True,
    )
    console.print(
        f"Exported {result.n_models} model(s) → {result.path} (input volume (B, 1, X, Y, Z); outputs brain_age, brain_age_corrected)",
        soft_wrap=True,
    )


@app.command("demo")
@reports_errors
def demo_command(
    out: Path = typer.Option(Path("brainage-demo"), "--out", "-o", help="Folder for the cohort, cache, run, predictions and report."),
    preset: str | None = typer.Option(None, "--preset", help="Synthetic cohort size: demo (default) or tiny."),
    pipeline: str | None = typer.Option(None, "--pipeline", help="Preprocessing: standard (default) or tutorial."),
    model: str | None = typer.Option(None, "--model", help="Network by name."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Maximum training epochs."),
    workers: int | None = typer.Option(None, "--workers", min=1, help=f"{WORKERS_HELP} Used for synthesis, preprocessing and prediction."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the cohort, the splits and the training."),
) -> None:
    """Synthetic cohort → prepare → train → evaluate → predict held-out people → HTML report."""
    from brainage.cli_checks import demo_config
    from brainage.console import console, print_table
    from brainage.demo import run_demo

    config = demo_config(preset=preset, pipeline=pipeline, workers=workers, seed=seed, model=model, epochs=epochs)
    result = run_demo(out, config)
    print_table(result.timings(), title="Demo steps, seconds: wall, and CPU (over the cores used: the wall time of a quiet machine)", floatfmt="{:.0f}")
    print_table(result.table, title="Per session (repeats averaged), years: network, baselines and the true brain age on the same sessions")
    console.print(
        "mae_true: MAE against the true brain age; gap_fidelity: partial r of predicted with true brain age given age; "
        "dementia_gap: Demented − Nondemented mean gap per subject, p by Welch's t-test.",
        soft_wrap=True,
    )
    console.print(f"Bias correction: {result.correction}", soft_wrap=True)
    for note in result.reliability:
        console.print(note, soft_wrap=True)
    console.print(f"Held-out predictions: {result.predictions}", soft_wrap=True)
    console.print(f"Report: {result.report}", soft_wrap=True)
