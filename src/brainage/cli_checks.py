"""Command-line options checked before any work starts: each failure is one line naming the option,
its value and the cause (``--preset tinny: unknown preset …``), not a traceback after hours of work.

The checks call the library's own (presets, models, checkpoints, devices); the checks that need the
data (``--control-group``, ``--train-groups``, ``--folds``) are made by :func:`brainage.training.train`
and :func:`brainage.training.evaluate` themselves, before the first fold or file is written.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer

from brainage.errors import BrainAgeError, InputError
from brainage.utils import usable_cores

if TYPE_CHECKING:
    from brainage.demo import DemoConfig

#: ``--device`` values: ``auto`` is CUDA, then Apple MPS, then the CPU; ``cuda:N`` picks a GPU.
DEVICES = ("auto", "cpu", "cuda", "mps")
#: ``--precision`` values that training accepts.
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
#: Help text of every ``--workers`` option and of every ``--device`` option: one grammar for all commands.
WORKERS_HELP = "Worker processes; default: all usable cores."
DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda[:N] or mps."


class OptionError(BrainAgeError):
    """An option whose value cannot be used: ``<option> <value>: <cause>``."""

    def __init__(self, option: str, value: Any, cause: str) -> None:
        self.option, self.value, self.cause = option, value, cause
        super().__init__(f"{option} {value}: {cause}" if value is not None else f"{option}: {cause}")

    def __reduce__(self) -> tuple[type, tuple[str, Any, str]]:
        """Pickled with its arguments (it crosses process pools like the other errors)."""
        return (type(self), (self.option, self.value, self.cause))


@contextmanager
def naming(option: str, value: Any = None) -> Iterator[None]:
    """Re-raise a library check's error (:class:`BrainAgeError` or ``ValueError``) as one line that
    starts with the option and its value."""
    try:
        yield
    except OptionError:
        raise
    except InputError as error:  # the path is the option's value: say it once
        raise OptionError(option, error.path, error.cause) from None
    except (BrainAgeError, ValueError) as error:
        raise OptionError(option, value, str(error)) from None


def workers_or_all(workers: int | None) -> int:
    """``--workers`` as given, else every usable core (:func:`brainage.utils.usable_cores`)."""
    return workers if workers is not None else usable_cores()


def check_device(device: str, option: str = "--device") -> str:
    """``device`` if it names a device kind (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``); whether
    it is present is decided where it is used (a missing GPU falls back to the CPU with a warning)."""
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
        raise OptionError(option, device, f"unknown device; choose {', '.join(DEVICES)} or cuda:N")
    return device


def check_accelerator(accelerator: str | None) -> None:
    """``--accelerator``: ``auto`` or a kind Lightning knows (``cpu``, ``cuda``, ``gpu``, ``mps`` …)."""
    if accelerator is None:
        return
    from lightning.pytorch.accelerators import AcceleratorRegistry

    known = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
    if accelerator not in known:
        raise OptionError("--accelerator", accelerator, f"unknown accelerator; choose {', '.join(known)}")


def check_precision(precision: str | None) -> None:
    """``--precision``: one of :data:`PRECISIONS`."""
    if precision is not None and precision not in PRECISIONS:
        raise OptionError("--precision", precision, f"unknown precision; choose {', '.join(PRECISIONS)}")


def check_exists(path: Path | None, option: str, what: str = "file or folder") -> None:
    """``path`` (an option's file or folder) exists; None (not given) passes."""
    if path is not None and not path.exists():
        raise OptionError(option, path, f"no such {what}")


def check_choice(value: str, option: str, choices: Iterable[str]) -> None:
    """``value`` is one of ``choices``."""
    allowed = list(choices)
    if value not in allowed:
        raise OptionError(option, value, f"choose {', '.join(allowed)}")


def check_models(paths: Iterable[str | Path] | None, option: str) -> list[Path]:
    """The checkpoints that ``paths`` (checkpoints or run folders) name, found without loading
    them (:func:`brainage.predict.resolve_checkpoints`)."""
    from brainage.predict import resolve_checkpoints

    given = list(paths or [])
    if not given:
        return []
    with naming(option, " ".join(map(str, given))):
        return resolve_checkpoints(given)


def check_model_name(name: str | None, option: str = "--model") -> None:
    """``name`` is a network of :data:`brainage.models.MODELS` (or an old name of one)."""
    if name is None:
        return
    from brainage.models import available_models, current_model_name

    if current_model_name(name) not in available_models():
        raise OptionError(option, name, f"unknown model; available: {', '.join(available_models())}")


def check_train_options(model: str | None, accelerator: str | None, precision: str | None) -> None:
    """``brainage train``'s options that need no data: the network's name, the accelerator, the precision."""
    check_model_name(model)
    check_accelerator(accelerator)
    check_precision(precision)


def check_preset(name: str, option: str = "--preset") -> Any:
    """The cohort preset called ``name`` (:func:`brainage.cohort.get_preset`)."""
    from brainage.cohort import get_preset

    with naming(option, name):
        return get_preset(name)


def demo_config(model: str | None = None, epochs: int | None = None, **given: Any) -> DemoConfig:
    """The demo's configuration from ``brainage demo``'s options (``given``: :class:`DemoConfig` fields,
    None for left out), checked whole before the demo synthesizes anything: the preset, the pipeline,
    the training settings (:class:`brainage.training.TrainConfig`) and the network's name."""
    import dataclasses

    from brainage.demo import DemoConfig, training_for

    check_model_name(model)
    for option in ("preset", "pipeline"):  # each on its own, so that the error names its option
        if given.get(option) is not None:
            with naming(f"--{option}", given[option]):
                DemoConfig(**{option: given[option]})
    config = dataclasses.replace(DemoConfig(), **{key: value for key, value in given.items() if value is not None})
    if model is not None or epochs is not None:
        config = dataclasses.replace(config, train=training_for(config.preset, model, epochs))
    with naming("--model/--epochs"):
        config.train_config()
    return config


def output_path(out: Path | None, positional: Path | None, command: str) -> Path:
    """``-o/--out``, or the deprecated positional output of ``command`` (with a warning); one of them."""
    if positional is None:
        if out is None:
            raise OptionError("--out", None, f"missing: give the folder that `brainage {command}` writes, -o/--out DIR")
        return out
    if out is not None:
        raise OptionError("--out", out, f"the output is also given as a positional argument ({positional}): give -o/--out only")
    from brainage.console import err_console

    err_console.print(f"[yellow]warning:[/] `brainage {command} DIR` is deprecated and will be removed; use `brainage {command} --out DIR`", soft_wrap=True)
    return positional


P = ParamSpec("P")
R = TypeVar("R")


def reports_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`BrainAgeError` into one red line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except BrainAgeError as error:
            from brainage.console import err_console

            err_console.print(f"[bold red]error:[/] {error}", soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper
