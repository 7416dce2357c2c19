"""Command-line interface: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import typer

from brainage import __version__
from brainage.console import err_console
from brainage.errors import BrainAgeError

app = typer.Typer(
    name="brainage",
    help="Predict brain age from structural T1-weighted MRI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., object])


def reports_errors(func: F) -> F:
    """Turn a :class:`BrainAgeError` into one red line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except BrainAgeError as error:
            err_console.print(f"[bold red]error:[/] {error}", soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


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
