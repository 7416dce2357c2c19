"""Small shared helpers: atomic file writes, a parallel map with a progress bar, a mask's bounding box."""

from __future__ import annotations

import ctypes
import glob
import itertools
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from brainage.console import console

if TYPE_CHECKING:
    import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)

T = TypeVar("T")
R = TypeVar("R")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one, else all): the
    default number of worker processes of every command."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (``.x.tmp123.nii.gz`` style is avoided: the suffix
    is preserved at the end) so libraries that infer the format from the name still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def stale_temporaries(path: str | Path) -> list[Path]:
    """The temporary files that :func:`atomic_write` of ``path`` left behind when its process was
    killed (no live writer of ``path`` may be running)."""
    path = Path(path)
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return sorted(path.parent.glob(f".{glob.escape(stem)}.*.tmp{glob.escape(suffix)}"))


#: ``prctl`` option that sends the calling process a signal when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def _worker_init(parent: int) -> None:
    """Worker initializer: the worker dies with its parent (killed by the kernel on Linux; elsewhere
    a thread watches the parent), and, as the workers share the cores, runs torch and ITK on one
    thread."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the worker could ask to die with it
        os._exit(1)
    import torch

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    torch.set_num_threads(1)


def _exit_without(parent: int) -> None:
    """End this process as soon as ``parent`` is no longer its parent."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def parallel_map(
    func: Callable[[T], R],
    items: Iterable[T],
    workers: int = 1,
    description: str = "working",
) -> Iterator[tuple[T, R | BaseException]]:
    """Apply ``func`` to every item in ``workers`` processes, showing a progress bar.

    Yields ``(item, result)`` pairs in completion order; an exception raised by ``func`` is
    yielded in place of its result so that one bad item never stops the batch.
    ``func`` must be picklable (a module-level function) when ``workers > 1``; the worker
    processes die with the calling process, even when it is killed with SIGKILL. At most
    ``2 × workers`` items are in flight, and a result is let go once yielded, so memory stays
    bounded whatever the number of items.
    """
    items = list(items)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=len(items))
        if workers <= 1:
            for item in items:
                try:
                    result: R | BaseException = func(item)
                except Exception as error:
                    result = error
                progress.advance(task)
                yield item, result
            return
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            waiting = iter(items)
            running = {pool.submit(func, item): item for item in itertools.islice(waiting, 2 * workers)}
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    item = running.pop(future)
                    for following in itertools.islice(waiting, 1):
                        running[pool.submit(func, following)] = following
                    error = future.exception()
                    progress.advance(task)
                    yield item, (error if error is not None else future.result())


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` (no index) atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def mask_bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest index of a non-empty mask along each axis (projections, faster than
    ``ndimage.find_objects`` on an OASIS-sized volume)."""
    along = [np.flatnonzero(mask.any(axis=tuple(other for other in range(mask.ndim) if other != axis))) for axis in range(mask.ndim)]
    return np.array([found[0] for found in along]), np.array([found[-1] for found in along])
