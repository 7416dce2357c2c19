"""The documentation cannot drift: the CLI reference is generated; the README stays a front door (at
most 200 lines); every command shown in README.md, docs/*.md and the tutorial exists with the options
it uses (``brainage``, ``make``, ``bench/`` scripts);
the tutorial's .py and .ipynb hold the same cells; docs/api.md shows every public name, and its
examples run."""

from __future__ import annotations

import importlib
import inspect
import re
import runpy
import subprocess
import sys
from functools import cache
from pathlib import Path

import jupytext
import nbformat
import pytest
import typer
from typer.testing import CliRunner

from brainage.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOTEBOOK = ROOT / "examples" / "tutorial.ipynb"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][A-Za-z0-9-]*)")
COMMAND = re.compile(r"(?:^|(?<=[\s\"'(]))(?:\.venv/bin/)?brainage(?=\s|$)([^\"'#`]*)")
PLACEHOLDER = re.compile(r"[a-z][a-z-]*")
API_MD = ROOT / "docs" / "api.md"
#: The README is a front door: what it is, the two commands, the demo's table, one short section per input, links.
README_MAX_LINES = 200
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: Modules whose public names (``__all__``, else the functions and classes they define) api.md shows.
PUBLIC_MODULES = (
    "brainage.cohort", "brainage.io", "brainage.preprocess", "brainage.models", "brainage.data", "brainage.training",
    "brainage.evaluation", "brainage.baselines", "brainage.predict", "brainage.saliency", "brainage.report",
    "brainage.export", "brainage.demo", "brainage.errors", "brainage.console", "brainage.utils", "brainage.checkpoint",
    "brainage.inference", "brainage.figures", "brainage.reliability", "brainage.zoo", "brainage.bootstrap",
)  # fmt: skip  # names grouped in rows


def _code_lines(text: str) -> list[tuple[str, bool]]:
    """``(line, fenced)``: lines of fenced code blocks (continuations joined, ``$ `` prompts and
    comments removed), then inline code spans."""
    lines = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\s*\$\s+", "", line)
            lines.append((re.split(r"\s#\s", line)[0].strip(), True))
    outside = FENCE.sub("", text)
    lines += [(span.replace("\\|", "|").strip(), False) for span in INLINE.findall(outside)]
    return [(line, fenced) for line, fenced in lines if line]


def _documents() -> list[tuple[str, str]]:
    """``(name, Markdown)`` of README.md, docs/*.md and the tutorial notebook's Markdown cells."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cells = "\n\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    return [*((path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")) for path in DOCS), ("examples/tutorial.ipynb", cells)]


def _shown(programs: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(document, line)`` for every code line of the documents that runs one of ``programs``
    (after environment assignments such as ``CUDA_VISIBLE_DEVICES=2``)."""
    shown = []
    for name, text in _documents():
        for line, _ in _code_lines(text):
            words = _without_assignments(line).split()
            if words and words[0] in programs:
                shown.append((name, " ".join(words)))
    return shown


def _brainage_commands() -> list[tuple[str, str]]:
    """``(document, command)`` for every ``brainage …`` command: anywhere in a line of a code block
    (``srun brainage …``, ``sbatch --wrap "brainage …"``), at the start of an inline code span (the
    word inside a quoted message is not a command)."""
    return [
        (name, f"brainage{match[1]}".strip())
        for name, text in _documents()
        for line, fenced in _code_lines(text)
        for match in (COMMAND.finditer(line) if fenced else [COMMAND.match(_without_assignments(line))])
        if match
    ]


def _without_assignments(line: str) -> str:
    """The line without leading environment assignments (``CUDA_VISIBLE_DEVICES=2 brainage …``)."""
    return re.sub(r"^(?:[A-Z_]+=\S*\s+)+", "", line)


def _options(name: str | None) -> set[str]:
    """Every option spelling of ``brainage name`` (of ``brainage`` itself when ``name`` is None)."""
    group = typer.main.get_command(app)
    command = group.commands[name] if name else group
    return {option for param in command.params for option in (*param.opts, *param.secondary_opts)} | {"--help"}


@cache
def _help(args: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_the_cli_reference_is_up_to_date() -> None:
    generator = runpy.run_path(str(ROOT / "docs" / "make_cli_md.py"))
    expected = generator["cli_reference"]()
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == expected, "docs/cli.md is stale: run .venv/bin/python docs/make_cli_md.py"


def test_the_readme_is_a_front_door_of_at_most_200_lines() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}: move the details into docs/"


def test_docs_show_brainage_commands() -> None:
    shown = _brainage_commands()
    documents = {document for document, _ in shown}
    assert {"README.md", "docs/oasis2.md", "docs/scaling.md", "examples/tutorial.ipynb"} <= documents
    assert len(shown) > 30


@pytest.mark.parametrize(("document", "line"), _brainage_commands())
def test_every_brainage_command_shown_exists_with_its_options(document: str, line: str) -> None:
    group = typer.main.get_command(app)
    words = line.split()
    name = words[1] if len(words) > 1 and PLACEHOLDER.fullmatch(words[1]) else None
    if name is not None:
        assert name in group.commands, f"{document}: `{line}` names no brainage command"
    help_text = _help((name,) if name else ())
    declared = _options(name)
    for option in OPTION.findall(" ".join(words[2 if name else 1 :])):
        assert option in declared, f"{document}: `{line}` uses {option}, which `brainage {name or ''}` does not have"
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), f"{option} missing from `brainage {name} --help`"


@pytest.mark.parametrize(("document", "line"), _shown(("make",)))
def test_every_make_target_shown_exists(document: str, line: str) -> None:
    targets = set(re.findall(r"^([\w.-]+)\s*:", (ROOT / "Makefile").read_text(), re.MULTILINE))
    for target in line.split()[1:]:
        assert target in targets, f"{document}: `{line}`: no target {target} in the Makefile"


def _scripts_shown() -> dict[str, set[str]]:
    """Python scripts of the repository run in the docs (``.venv/bin/python path.py --options``), with their options."""
    found: dict[str, set[str]] = {}
    for _, line in _shown((".venv/bin/python", "python")):
        words = line.split()
        if len(words) > 1 and words[1].endswith(".py"):
            found.setdefault(words[1], set()).update(OPTION.findall(" ".join(words[2:])))
    return found


@pytest.mark.parametrize("script", sorted(_scripts_shown()))
def test_every_script_shown_exists_with_its_options(script: str) -> None:
    assert (ROOT / script).is_file(), f"{script} is shown in the docs but does not exist"
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for option in _scripts_shown()[script]:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", result.stdout), f"{script} has no option {option}"


def test_the_tutorial_py_and_ipynb_hold_the_same_cells() -> None:
    paired = jupytext.read(ROOT / "examples" / "tutorial.py")
    notebook = nbformat.read(ROOT / "examples" / "tutorial.ipynb", as_version=4)
    assert [(cell.cell_type, cell.source) for cell in notebook.cells] == [(cell.cell_type, cell.source) for cell in paired.cells], (
        "examples/tutorial.ipynb differs from tutorial.py: run `.venv/bin/jupytext --to ipynb examples/tutorial.py`"
    )
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code), "commit the notebook with outputs stripped"


def _public_names(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == module_name
    ]


def test_api_md_shows_every_public_name_in_an_example() -> None:
    code = "\n".join(PYTHON_BLOCK.findall(API_MD.read_text(encoding="utf-8")))
    compile(code, str(API_MD), "exec")
    missing = [f"{module}.{name}" for module in PUBLIC_MODULES for name in _public_names(module) if not re.search(rf"\b{name}\b", code)]
    assert not missing, f"docs/api.md has no example of: {', '.join(missing)}"


@pytest.mark.slow
def test_the_api_examples_run_top_to_bottom(tmp_path: Path) -> None:
    script = tmp_path / "api_examples.py"
    script.write_text("\n".join(PYTHON_BLOCK.findall(API_MD.read_text(encoding="utf-8"))), encoding="utf-8")
    result = subprocess.run([sys.executable, script.name], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "model.onnx").is_file()
