"""The one place where brainage prints tables and problem lists (through Rich).

On a terminal a table fits the terminal's width; written anywhere else (a log file, a pipe, a
notebook's captured output) it is printed at its full natural width, so that no cell is cut
short to a default 80 columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
from rich.console import Console
from rich.table import Table

from brainage.errors import Problem

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

#: The width a table may take when stdout is not a terminal: enough for any table's natural width.
UNBOUNDED_WIDTH = 100_000


def print_table(
    rows: pd.DataFrame | Sequence[Mapping[str, object]],
    title: str | None = None,
    floatfmt: str = "{:.2f}",
) -> None:
    """Print a DataFrame (or a list of dicts) as a Rich table: fitted to a terminal, at full width
    (nothing cut or wrapped) when stdout is not a terminal."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        numeric = pd.api.types.is_numeric_dtype(frame[column])
        table.add_column(str(column), justify="right" if numeric else "left")
    for values in frame.itertuples(index=False):
        table.add_row(*(_format(value, floatfmt) for value in values))
    if console.is_terminal:
        console.print(table)
    else:  # print(width=...) cannot exceed the console's own width: a console as wide as the table needs
        Console(file=console.file, width=UNBOUNDED_WIDTH, highlight=False).print(table)


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
