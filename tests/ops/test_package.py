"""The collector as users install it: a wheel in a fresh venv, run outside the checkout.

Builds the wheel with pip (build isolation fetches setuptools as
pyproject.toml asks: from pip's cache or PyPI), installs it the way the
Dockerfile does (requirements.lock, then the wheel) into a new venv under tmp_path, and
runs ``collector migrate`` against a fresh database and ``collector simulate
--help`` from a folder that is not the checkout. The migrations must come
from inside the installed package, byte for byte the top-level migrations/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.db import fetch
from tests.support.paths import ROOT

# pip builds the wheel in an isolated environment: it fetches setuptools from a package index.
pytestmark = pytest.mark.network
MIGRATIONS = sorted((ROOT / "migrations").glob("*.sql"))


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args[:3]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout's venv, paths or collector settings."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("COLLECTOR_")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (the build writes build/ and *.egg-info beside them)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    # symlinks=True: collector/db/migrations stays the link to ../../migrations that the checkout has.
    shutil.copytree(ROOT / "collector", src / "collector", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "migrations", src / "migrations", ignore=ignore)
    assert (src / "collector" / "db" / "migrations").is_symlink()
    dist = base / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", dist, src,
        cwd=base, env=clean_env())  # fmt: skip
    [built] = dist.glob("collector-*.whl")
    return built


def test_the_wheel_carries_the_migrations_byte_for_byte(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        shipped = {
            Path(n).name: zf.read(n) for n in zf.namelist() if n.startswith("collector/db/migrations/")
        }
        names = zf.namelist()
    assert shipped == {p.name: p.read_bytes() for p in MIGRATIONS}
    assert "collector/proto/MarketDataFeedV3_pb2.py" in names
    assert not any(n.startswith(("tests/", "migrations/")) for n in names)  # only the package


def test_installed_outside_the_checkout_it_migrates_and_simulates(
    wheel: Path, database: str, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(sys.executable, "-m", "venv", venv, cwd=elsewhere, env=clean_env())
    # As the Dockerfile does: the pinned dependencies, then the wheel alone; pip check proves
    # the lock is complete and consistent for the wheel's requirements.
    pip = (venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check")
    run(*pip, "install", "-q", "--no-deps", "-r", ROOT / "requirements.lock", cwd=elsewhere, env=clean_env())
    run(*pip, "install", "-q", "--no-deps", wheel, cwd=elsewhere, env=clean_env())
    run(*pip, "check", cwd=elsewhere, env=clean_env())

    located = run(
        venv / "bin" / "python", "-c",
        "import collector, collector.db.migrate as m; print(collector.__file__); print(m.MIGRATIONS_DIR)",
        cwd=elsewhere, env=clean_env(),
    ).split()  # fmt: skip
    for path in located:
        assert Path(path).resolve().is_relative_to(venv.resolve()), path
    assert ROOT.resolve() not in Path(located[1]).resolve().parents

    out = run(venv / "bin" / "collector", "migrate", cwd=elsewhere,
              env=clean_env(COLLECTOR_DATABASE_URL=database), timeout=180)  # fmt: skip
    assert out.strip() == f"applied {len(MIGRATIONS)} migrations"
    applied = fetch(database, "SELECT version, checksum FROM schema_migrations ORDER BY version")
    assert [r["checksum"] for r in applied] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in MIGRATIONS
    ]
    assert fetch(database, "SELECT value FROM storage_info WHERE key = 'candles'")  # the schema is there

    help_text = run(venv / "bin" / "collector", "simulate", "--help", cwd=elsewhere, env=clean_env())
    assert "--port" in help_text and "--rate" in help_text
