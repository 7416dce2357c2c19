"""The one place where brainage prints tables and problem lists (through Rich)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
from rich.console import Console
from rich.table import Table

from brainage.errors import Problem

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def print_table(
    rows: pd.DataFrame | Sequence[Mapping[str, object]],
    title: str | None = None,
    floatfmt: str = "{:.2f}",
) -> None:
    """Print a DataFrame (or a list of dicts) as a Rich table."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        numeric = pd.api.types.is_numeric_dtype(frame[column])
        table.add_column(str(column), justify="right" if numeric else "left")
    for values in frame.itertuples(index=False):
        table.add_row(*(_format(value, floatfmt) for value in values))
    console.print(table)


def print_problems(problems: Iterable[Problem], title: str = "Skipped") -> None:
    """List the bad items a batch went past, one line each; print nothing if there are none."""
    problems = list(problems)
    if not problems:
        return
    console.print(f"[bold yellow]{title}: {len(problems)} item(s)[/]")
    for problem in problems:
        console.print(f"  [yellow]•[/] {problem.path}: {problem.cause}", soft_wrap=True)


def _format(value: object, floatfmt: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return floatfmt.format(value)
    return str(value)
