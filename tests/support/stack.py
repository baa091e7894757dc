"""A running collector (its own process), a simulator (a background event loop) and a real Prometheus."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from collector.simulator.server import Simulator
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.process import CollectorProcess

T = TypeVar("T")


class Stack:
    """The simulator in a background event loop, and ``collector run`` streaming from it, on 127.0.0.1."""

    def __init__(
        self, dsn: str, workdir: Path, *, env: dict[str, str] | None = None, rate: float = 1500
    ) -> None:
        self.dsn = dsn
        self.workdir = workdir
        self.env = env or {}
        self.rate = rate
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.sim: Simulator | None = None
        self.collector: Any = None
        self.prometheus: subprocess.Popen[bytes] | None = None
        self.prometheus_port = 0

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def start(self, before: Any = None) -> None:
        """Start the simulator, call ``before(sim)`` if given, then start the collector."""
        self.thread.start()
        self.sim = Simulator(rate=self.rate, stocks=20)
        self.call(self.sim.start())
        if before is not None:
            before(self.sim)
        fo = sorted(k for k in self.sim.market.instruments if k.startswith("NSE_FO"))
        universe = [
            {"mode": "full", "segments": ["NSE_FO"], "instrument_types": ["FUT"], "nearest_expiries": 1},
            {"mode": "ltpc", "segments": ["NSE_INDEX", "NSE_EQ"]},
            {"mode": "option_greeks", "instrument_types": ["CE", "PE"], "underlyings": ["NIFTY"]},
        ]
        self.collector = CollectorProcess(
            self.workdir,
            {
                "COLLECTOR_DATABASE_URL": self.dsn,
                "COLLECTOR_UPSTOX_API_URL": self.sim.url,
                "COLLECTOR_UPSTOX_TOKEN": self.sim.token,
                "COLLECTOR_INSTRUMENTS_URL": f"{self.sim.url}/market-quote/instruments/exchange/complete.json.gz",
                "COLLECTOR_UNIVERSE": json.dumps(universe),
                "COLLECTOR_SUBSCRIPTIONS": json.dumps({"full_d30": fo[-2:]}),
                "COLLECTOR_CANDLE_REFRESH_INTERVAL_S": "2",
                **self.env,
            },
        ).start()

    @property
    def metrics_port(self) -> int:
        return int(self.collector.metrics_port)

    def metric(self, name: str, **labels: str) -> float:
        return float(self.collector.metric(name, **labels))

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=5).read().decode()  # type: ignore[no-any-return]

    def start_prometheus(self) -> None:
        binary = shutil.which("prometheus")
        assert binary, "Debian's prometheus package is required (scripts/test installs it)"
        self.prometheus_port = free_port()
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{ROOT / 'prometheus' / 'rules' / 'collector.yml'}']\n"
            "scrape_configs:\n"
            "  - job_name: collector\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{self.metrics_port}']}}]\n"
        )
        log = (self.workdir / "prometheus.log").open("wb")
        self.prometheus = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.prometheus_port}/-/ready", timeout=2)
                return
            except OSError:
                assert time.monotonic() < deadline, (self.workdir / "prometheus.log").read_text()[-2000:]
                time.sleep(0.2)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate PromQL now; raise on any error."""
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        try:
            body = json.load(urllib.request.urlopen(url, timeout=10))
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{expr}: {exc.read().decode()}") from None
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.prometheus is not None:
            self.prometheus.terminate()
            self.prometheus.wait(30)
        if self.collector is not None:
            self.collector.send(15)
            try:
                self.collector.proc.wait(60)
            finally:
                self.collector.kill()
        if self.sim is not None:
            self.call(self.sim.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
