"""One CLI grammar (issue 28 point 5): the same option names and defaults in every command, every
option checked before any work starts with one line naming it, and a package that imports on Windows."""

from __future__ import annotations

import ast
import inspect
import os
import re
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner, Result

import brainage
from brainage.cli import app
from brainage.cli_checks import DEVICE_HELP, WORKERS_HELP, workers_or_all
from brainage.cli_predict import bids_command

runner = CliRunner()
COMMANDS: dict[str, click.Command] = typer.main.get_command(app).commands  # type: ignore[attr-defined]  # a Typer app with commands is a click Group
#: Modules that exist on POSIX systems only: imported at module level they break ``import brainage`` on Windows.
POSIX_ONLY = {"fcntl", "termios", "pwd", "grp", "resource", "posix", "tty", "pty", "crypt", "syslog"}
#: Commands that write files, and so take ``-o/--out`` (bids writes to its BIDS-App positional output_dir).
WRITERS = ("train", "combine", "predict", "prepare", "synth", "report", "export", "demo")


def _unguarded_imports(body: list[ast.stmt]) -> list[tuple[int, str]]:
    """Modules imported by ``body`` when the module is imported: top-level statements and the
    branches of top-level ``if``s, but not a ``try`` whose handler catches the ImportError."""
    found = []
    for node in body:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            found += _unguarded_imports(node.body) + _unguarded_imports(node.orelse)
        elif isinstance(node, ast.Try):
            caught = {ast.unparse(handler.type) for handler in node.handlers if handler.type is not None}
            if not caught & {"ImportError", "ModuleNotFoundError", "(ImportError, ModuleNotFoundError)"}:
                found += _unguarded_imports(node.body)
    return found


def test_no_module_imports_a_posix_only_module_at_import_time() -> None:
    package = Path(brainage.__file__).parent
    modules = sorted(package.rglob("*.py"))
    assert len(modules) > 30  # the whole package, not an empty glob
    offending = [
        f"{path.relative_to(package)}:{line} imports {name}"
        for path in modules
        for line, name in _unguarded_imports(ast.parse(path.read_text(encoding="utf-8")).body)
        if name in POSIX_ONLY
    ]
    assert not offending, "import these inside the function that needs them (or guard them): " + "; ".join(offending)


def test_the_import_check_catches_what_it_is_for() -> None:
    source = "import os\nimport fcntl\nif True:\n    from resource import getrusage\ntry:\n    import termios\nexcept ImportError:\n    termios = None\n"
    assert {name for _, name in _unguarded_imports(ast.parse(source).body)} & POSIX_ONLY == {"fcntl", "resource"}


def test_the_troubleshooting_check_tells_documented_from_undocumented_messages() -> None:
    assert _documented("--device gpu: unknown device; choose auto, cpu, cuda, mps or cuda:N")
    assert not _documented("--device gpu: no such device")


def _option(command: click.Command, name: str) -> click.Parameter | None:
    return next((param for param in command.params if name in getattr(param, "opts", ())), None)


def test_workers_device_and_out_mean_the_same_in_every_command() -> None:
    with_workers = {name for name, command in COMMANDS.items() if _option(command, "--workers")}
    assert with_workers >= {"inspect", "predict", "bids", "prepare", "synth", "demo"}  # a new command with workers is checked too
    for name in with_workers:
        workers = _option(COMMANDS[name], "--workers")
        assert workers is not None and workers.default is None and WORKERS_HELP in (getattr(workers, "help", None) or ""), name
    with_device = {name for name, command in COMMANDS.items() if _option(command, "--device")}
    assert with_device >= {"predict", "bids", "prepare"}
    for name in with_device:
        device = _option(COMMANDS[name], "--device")
        assert device is not None and device.default == "auto" and DEVICE_HELP in (getattr(device, "help", None) or ""), name
    for name in WRITERS:
        out = _option(COMMANDS[name], "--out")
        assert out is not None and {"-o", "--out"} <= set(out.opts), name
    output_dir = inspect.signature(bids_command).parameters["output_dir"].default  # typer's ArgumentInfo: its help in every Typer version
    assert "BIDS App specification" in (output_dir.help or "")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert workers_or_all(None) == cores and workers_or_all(3) == 3


def _documented(message: str) -> bool:
    """Whether docs/troubleshooting.md shows ``message`` in a code span (``<…>`` and ``…`` standing for what varies)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    spans = [double or single for double, single in re.findall(r"``\s?(.+?)\s?``|`([^`\n]+)`", text)]
    spans = [span for span in spans if len(re.sub(r"<[^<>]+>|…", "", span).strip()) >= 10]  # not `<file>: <cause>`, which fits anything
    patterns = [re.escape(span).replace(re.escape("…"), ".*") for span in spans]
    return any(re.fullmatch(re.sub(r"<[^<>]+>", ".+", pattern), message) for pattern in patterns)


def _one_error_line(result: Result, expected: str) -> None:
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert result.exit_code == 2 and errors == [f"error: {expected}"], result.output
    assert "Traceback" not in result.output
    assert _documented(expected), f"docs/troubleshooting.md has no entry for: {expected}"


def test_a_control_group_typo_is_refused_before_anything_trains(tiny_cache_seed: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(tiny_cache_seed), "--out", str(run), "--folds", "2", "--epochs", "1", "--control-group", "Nondemneted"])
    _one_error_line(result, "--control-group: no scans in control group(s) Nondemneted; groups present: Converted, Demented, Nondemented")
    assert not run.exists() and not list(tmp_path.rglob("fold_*"))  # refused before the run folder, let alone a fold


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--train-groups", "Nondemneted"], "--train-groups: no scans in group(s) Nondemneted; groups present: Converted, Demented, Nondemented"),
        (["--folds", "13"], "--folds must be between 2 and the number of subjects (12), got 13"),
        (["--init", "no-such-run"], "--init no-such-run: no such checkpoint or run folder"),
        (["--model", "resnett"], "--model resnett: unknown model; available: resnet, sfcn, tutorial"),
        (["--precision", "bf32"], "--precision bf32: unknown precision; choose auto, 32-true, bf16-mixed, 16-mixed, bf16-true, 16-true, 64-true"),
        (["--bias-correction", "coel"], "bias_correction must be one of residual, cole, none, got 'coel'"),
    ],
)
def test_other_training_option_typos_are_refused_before_the_run_folder(tiny_cache_seed: Path, tmp_path: Path, options: list[str], expected: str) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(tiny_cache_seed), "--out", str(run), "--epochs", "1", *options])
    _one_error_line(result, expected)
    assert not run.exists()


def test_evaluate_refuses_a_control_group_typo_and_leaves_the_run_as_it_was(tiny_run: Path) -> None:
    before = {path: path.read_bytes() for path in tiny_run.rglob("*") if path.is_file()}
    result = runner.invoke(app, ["evaluate", str(tiny_run), "--control-group", "Nondemneted"])
    _one_error_line(result, "--control-group: no scans in control group(s) Nondemneted; groups present: Converted, Demented, Nondemented")
    assert {path: path.read_bytes() for path in tiny_run.rglob("*") if path.is_file()} == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["synth", "--out", "OUT", "--preset", "tinny"], "--preset tinny: unknown preset 'tinny'; choose one of "),
        (["synth", "--out", "OUT", "--preset", "tiny", "--layout", "oasis3"], "--layout oasis3: choose oasis2, oasis1"),
        (["demo", "--out", "OUT", "--preset", "tinny"], "--preset tinny: unknown preset 'tinny'; choose one of "),
        (["demo", "--out", "OUT", "--pipeline", "standrad"], "--pipeline standrad: unknown pipeline 'standrad'; choose from standard, tutorial"),
        (["demo", "--out", "OUT", "--model", "resnett"], "--model resnett: unknown model; available: resnet, sfcn, tutorial"),
        (["prepare", "SOURCE", "--out", "OUT", "--device", "gpu"], "--device gpu: unknown device; choose auto, cpu, cuda, mps or cuda:N"),
        (["prepare", "SOURCE", "--out", "OUT", "--demographics", "no-such.xlsx"], "--demographics no-such.xlsx: no such file or folder"),
        (["prepare", "SOURCE", "--out", "OUT", "--pipeline", "standrad"], "--pipeline standrad: unknown pipeline 'standrad'; choose from standard, "),
        (["inspect", "SOURCE", "--demographics", "no-such.xlsx"], "--demographics no-such.xlsx: no such file or folder"),
        (["bids", "SOURCE", "OUT", "participant", "--model", "no-such-run"], "--model no-such-run: no such checkpoint or run folder"),
    ],
)
def test_a_typo_in_any_command_is_refused_before_it_writes(tiny_cohort: Path, tmp_path: Path, args: list[str], expected: str) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, [{"SOURCE": str(tiny_cohort), "OUT": str(out)}.get(arg, arg) for arg in args])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {expected}"), result.output
    assert not out.exists()
    assert _documented(errors[0].removeprefix("error: ")), f"docs/troubleshooting.md has no entry for: {errors[0]}"


def test_synth_takes_its_folder_as_out_and_the_old_positional_with_a_warning(tmp_path: Path) -> None:
    old = runner.invoke(app, ["synth", str(tmp_path / "old"), "--preset", "tinny"])  # refused by the preset, after the warning
    assert "`brainage synth DIR` is deprecated" in old.output and "--preset tinny" in old.output and not (tmp_path / "old").exists()
    warning = next(line for line in old.output.splitlines() if line.startswith("warning:"))
    assert _documented(warning.removeprefix("warning: "))
    both = runner.invoke(app, ["synth", str(tmp_path / "a"), "--out", str(tmp_path / "b")])
    _one_error_line(both, f"--out {tmp_path / 'b'}: the output is also given as a positional argument ({tmp_path / 'a'}): give -o/--out only")
    _one_error_line(runner.invoke(app, ["synth"]), "--out: missing: give the folder that `brainage synth` writes, -o/--out DIR")
