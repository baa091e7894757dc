"""``/metrics`` merges every process's metric files: a file being made or removed never fails a scrape."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from collector.ipc.metrics import serving_registry


def write_gauge(directory: Path, pid: int, value: float) -> None:
    # What a child's MultiProcessValue writes: one mmap'd file per metric type and process.
    values = MmapedDict(str(directory / f"gauge_max_{pid}.db"))
    key = mmap_key("collector_up_test", "collector_up_test", [], [], "a gauge of a child")
    values.write_value(key, value, 0.0)
    values.close()


def test_a_file_still_being_made_does_not_fail_the_scrape(tmp_path: Path) -> None:
    write_gauge(tmp_path, 101, 1.0)
    # A child that just opened its file: it is empty until the library sizes it.
    (tmp_path / "gauge_max_102.db").touch()
    body = generate_latest(serving_registry(tmp_path)).decode()
    assert "collector_up_test 1.0" in body


def test_a_file_gone_when_read_does_not_fail_the_scrape(tmp_path: Path) -> None:
    write_gauge(tmp_path, 101, 1.0)
    # Listed, then gone when opened (the live gauge of a child that exited is deleted):
    # a link to a file that no longer exists is listed and cannot be opened, every time.
    (tmp_path / "gauge_max_102.db").symlink_to(tmp_path / "gone.db")
    assert "collector_up_test 1.0" in generate_latest(serving_registry(tmp_path)).decode()
