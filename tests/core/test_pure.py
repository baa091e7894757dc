"""collector/core/ does no I/O: its modules import nothing that could."""

from __future__ import annotations

import ast
from pathlib import Path

import collector.core

CORE = Path(collector.core.__file__).parent
# Modules that reach sockets, files, processes, the event loop, the database or
# the metrics registry. urllib.parse and json are fine: they only transform data.
FORBIDDEN = {
    "asyncio", "asyncpg", "apscheduler", "concurrent", "ctypes", "fcntl", "glob", "http", "io",
    "mmap", "multiprocessing", "os", "pathlib", "prometheus_client", "selectors", "shutil", "signal",
    "socket", "sqlite3", "ssl", "subprocess", "tempfile", "threading", "urllib.request", "websockets",
}  # fmt: skip
# The only parts of the collector the core may use.
ALLOWED_OWN = ("collector.core", "collector.exceptions", "collector.proto")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def _forbidden(name: str) -> bool:
    parts = name.split(".")
    return any(".".join(parts[:i]) in FORBIDDEN for i in range(1, len(parts) + 1))


def test_core_imports_no_io() -> None:
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) > 10
    found = {
        f"{path.name}: {name}"
        for path in modules
        for name in _imports(path)
        if _forbidden(name) or (name.split(".")[0] == "collector" and not name.startswith(ALLOWED_OWN))
    }
    assert not found


def test_the_check_sees_what_it_forbids() -> None:
    assert _forbidden("asyncio") and _forbidden("urllib.request") and _forbidden("os.path")
    assert not _forbidden("urllib.parse") and not _forbidden("json")


# The layers below the processes: what they may not import (arrows run downward only).
PROCESSES = ("collector.supervisor", "collector.feed", "collector.writer", "collector.replay",
             "collector.export", "collector.simulator", "collector.feedserver", "collector.cli")  # fmt: skip
LOWER = ("core", "journal", "ipc", "db")


def test_the_lower_layers_never_import_a_process() -> None:
    root = CORE.parent
    found = {
        f"{path.relative_to(root)}: {name}"
        for layer in LOWER
        for path in sorted((root / layer).glob("*.py"))
        for name in _imports(path)
        if name.startswith(PROCESSES)
    }
    assert not found
