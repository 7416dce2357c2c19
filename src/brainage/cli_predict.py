"""The commands that serve brain age to new scans: ``predict`` and the BIDS App (``bids``).

Registered on the one Typer app by :mod:`brainage.cli`; thin like every command there.
"""

from __future__ import annotations

from pathlib import Path

import typer

from brainage.cli_checks import DEVICE_HELP, WORKERS_HELP, check_device, check_exists, check_models, reports_errors, workers_or_all
from brainage.errors import BrainAgeError


@reports_errors
def predict_command(
    model: Path = typer.Argument(..., help="A checkpoint (model.ckpt), a run folder (all its fold models, averaged) or a named model (brainage models)."),
    inputs: list[Path] = typer.Argument(
        ..., help="Scans (.nii, .nii.gz, .hdr/.img, .mgz), folders of them, CSV/TSV tables of paths (optional age, subject_id), BIDS or OASIS-2 folders."
    ),
    with_models: list[Path] = typer.Option([], "--with-model", help="Another checkpoint or run folder to average with MODEL (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="CSV file to write (atomically)."),
    sessions: bool = typer.Option(False, "--sessions", help="Average the repeat scans of each session: one row per session."),
    cache: Path | None = typer.Option(None, "--cache", help="A prepared cache to take preprocessed scans from; default: the cache the model was trained on."),
    workers: int | None = typer.Option(None, "--workers", min=1, help=f"{WORKERS_HELP} Used for preprocessing."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Scans per forward pass."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    interval: float | None = typer.Option(
        None, "--interval", min=0.01, max=0.99, help="Coverage of brain_age_lower/upper (default: the model's, 0.9); split-conformal on out-of-fold residuals."
    ),
    force: bool = typer.Option(
        False, "--force", help="Predict scans that fail an adequacy check too (the reasons stay in the inadequate column); default: no brain age for them."
    ),
    max_voxel_mm: float | None = typer.Option(
        None, "--max-voxel-mm", min=0.1, help="Refuse scans whose voxels are larger than this along any axis (slice thickness; default 3)."
    ),
    work: Path | None = typer.Option(
        None, "--work", help="Folder keeping each preprocessed scan, so a rerun (or that of a killed batch) redoes nothing finished; default: OUT.parts."
    ),
    no_work: bool = typer.Option(False, "--no-work", help="Preprocess into a temporary folder removed at the end: nothing kept, nothing to resume."),
) -> None:
    """Predict brain age (and the brain-age gap where the age is known) for new scans."""
    from brainage.console import console, print_problems, print_table
    from brainage.predict import BrainAgeModel, accuracy_table
    from brainage.predict_store import default_work
    from brainage.preprocess.adequacy import AdequacyConfig
    from brainage.utils import write_csv

    device, processes = check_device(device), workers_or_all(workers)
    check_exists(cache, "--cache", "prepared cache")
    if work is not None and no_work:
        raise BrainAgeError("--work and --no-work: give one of them")
    brain_age_model = BrainAgeModel.load([model, *with_models], device=device)
    adequacy = AdequacyConfig.with_overrides(max_voxel_mm=max_voxel_mm)
    predictions = brain_age_model.predict(
        inputs, sessions=sessions, cache=cache or "auto", workers=processes, batch_size=batch_size, interval=interval, force=force, adequacy=adequacy,
        work=None if no_work else (work or default_work(out)),
    )  # fmt: skip  # the call's options in reading order
    print_problems(brain_age_model.problems_)
    slope, r, _ = brain_age_model.age_trend_
    if slope == slope:  # a batch with ages: how its brain ages follow them (a warning went out where they do not rise)
        console.print(f"brain age follows age in this batch with slope {slope:.2f} (r = {r:.2f})", soft_wrap=True)
    console.print("preprocessing: " + ", ".join(f"{count} {outcome}" for outcome, count in brain_age_model.preprocessing_.items() if count), soft_wrap=True)
    if predictions.empty:
        raise BrainAgeError(f"no scan could be predicted; {out} was not written")
    write_csv(predictions, out)
    accuracy = accuracy_table(predictions, brain_age_model.mean_training_age)
    if len(accuracy):
        print_table(accuracy, title=f"Accuracy where the age is known (years), {'sessions' if sessions else 'scans'}")
    flagged = int(predictions["warnings"].astype(bool).sum())
    inadequate = predictions["inadequate"].astype(bool)
    unit = "session" if sessions else "scan"
    if inadequate.any():
        print_table(predictions.loc[inadequate, ["scan_id" if "scan_id" in predictions else "session_id", "inadequate"]], title="Not adequate for brain age")
    refused = "" if force else f", {int(inadequate.sum())} refused as inadequate (--force predicts them)"
    console.print(
        f"{int((~inadequate).sum()) if not force else len(predictions)} {unit}(s) predicted with {len(brain_age_model.checkpoints)} model(s), "
        f"{len(brain_age_model.problems_)} skipped{refused}, {flagged} with warnings → {out}",
        soft_wrap=True,
    )


@reports_errors
def bids_command(
    ctx: typer.Context,
    bids_dir: Path = typer.Argument(..., help="The input BIDS dataset (raw, or fMRIPrep derivatives)."),
    output_dir: Path = typer.Argument(
        ..., help="The BIDS derivatives dataset to write (created); positional, as the BIDS App specification requires (other commands: -o/--out)."
    ),
    analysis_level: str = typer.Argument(..., help="participant (predict, one TSV per session) or group (gather them)."),
    model: list[Path] = typer.Option([], "--model", help="A run folder or model.ckpt (repeatable: averaged); needed at participant level."),
    participant_label: list[str] = typer.Option(
        [], "--participant-label", help="Only these participants, without or with 'sub-' (e.g. --participant-label 01 02)."
    ),
    workers: int | None = typer.Option(None, "--workers", min=1, help=f"{WORKERS_HELP} Used for preprocessing."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """A BIDS App: brain age of a BIDS dataset as a BIDS derivatives dataset (BIDS-Apps arguments)."""
    from brainage.bids_app import run_bids_app
    from brainage.console import console, print_problems

    if ctx.args and not participant_label:
        raise BrainAgeError(f"unexpected argument(s): {' '.join(ctx.args)}")
    labels = [*participant_label, *ctx.args]  # --participant-label 01 02: the labels after the first come as extra arguments
    check_models(model, "--model")  # found before the participants are preprocessed
    result = run_bids_app(bids_dir, output_dir, analysis_level, model or None, labels, workers=workers_or_all(workers), device=check_device(device))
    print_problems(result.problems)
    console.print(f"{analysis_level}: {result.scans} scan(s), {result.sessions} session(s) → {output_dir} ({len(result.files)} files)", soft_wrap=True)


@reports_errors
def models_command(full: bool = typer.Option(False, "--full", help="Show each card's whole recipe.")) -> None:
    """List the named models (shipped in the package, or found on $BRAINAGE_MODELS) with their cards."""
    from brainage.console import console
    from brainage.zoo import describe, list_models, search_path

    models = list_models()
    if not models:
        console.print(f"no named models on the search path ({', '.join(map(str, search_path()))})", soft_wrap=True)
    for model in models:
        console.print(describe(model, full=full), soft_wrap=True, highlight=False)
