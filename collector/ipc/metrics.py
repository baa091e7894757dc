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
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, values
from prometheus_client.metrics_core import Metric

__all__ = ["mark_dead", "serving_registry", "use_multiprocess"]

_MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A metrics file starts with its used size (8 bytes, prometheus_client's mmap_dict): an empty one is being made.
_HEADER_BYTES = 8


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
    registry = CollectorRegistry()
    registry.register(_ReadyFiles(directory))
    return registry


class _ReadyFiles:
    """prometheus_client's multiprocess merge, over the files that can be read right now.

    A process starting creates its file empty and sizes it a moment later, and
    the supervisor deletes the gauge file of a child that exited: the library
    reads every file it listed, and either made the whole scrape fail (HTTP 500,
    ``up`` 0: a child's start alone made CollectorDown pending).
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector

        for _ in range(3):
            try:
                return MultiProcessCollector.merge(self._ready(), accumulate=True)  # type: ignore[no-untyped-call, no-any-return]
            except FileNotFoundError:  # deleted between listing and reading: list again
                continue
        return MultiProcessCollector.merge(self._ready(), accumulate=True)  # type: ignore[no-untyped-call, no-any-return]

    def _ready(self) -> list[str]:
        ready = []
        for path in self._directory.glob("*.db"):
            try:
                if path.stat().st_size >= _HEADER_BYTES:
                    ready.append(str(path))
            except FileNotFoundError:
                continue
        return ready


def mark_dead(pid: int, directory: Path) -> None:
    """Drop the live gauges of a process that exited (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
