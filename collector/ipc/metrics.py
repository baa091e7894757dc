"""Several processes' metrics as one: prometheus_client's multiprocess mode.

Each process writes its values to memory-mapped files in one folder
(:func:`use_multiprocess`, before it creates any metric); the supervisor
merges them at scrape time (:func:`serving_registry`) and drops the live
gauges of a child that exited (:func:`mark_dead`). What is defined, and how
each gauge combines across processes, is :mod:`collector.metrics`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prometheus_client import CollectorRegistry, values

__all__ = ["mark_dead", "serving_registry", "use_multiprocess"]

_MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def use_multiprocess(directory: Path, *, clean: bool = False) -> None:
    """Make this process write its metrics to ``directory`` (before creating any).

    ``clean`` empties the folder first: the supervisor does so at start-up, so
    no file of an earlier run is counted.
    """
    if clean and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[_MULTIPROCESS_ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]  # untyped library


def serving_registry(directory: Path) -> CollectorRegistry:
    """The registry ``/metrics`` serves: every process's files, merged."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def mark_dead(pid: int, directory: Path) -> None:
    """Drop the live gauges of a process that exited (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
