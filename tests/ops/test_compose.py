"""The docker compose stack, checked without Docker: structure, pins, mounts, variables, image.

Docker cannot run here: what can be run is run (the image's healthcheck
command against the collector's real metrics endpoint); the rest is read.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from collector.metrics import SupervisorMetrics
from collector.settings import Settings
from collector.supervisor.serving import serve_metrics
from tests.support.docs import SETTINGS_DOC, VERSIONS_DOC, settings_paragraph, settings_table
from tests.support.paths import ROOT

COMPOSE = ROOT / "docker-compose.yml"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def test_services_and_order() -> None:
    services = compose()["services"]
    assert set(services) == {"timescaledb", "migrate", "simulator", "collector", "prometheus", "grafana"}
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert services["collector"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    for name in ("timescaledb", "simulator", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name
    # Every image is pinned to a version.
    for name, svc in services.items():
        image = svc.get("image", "")
        assert ":" in image and not image.endswith(":latest"), name


def test_pins_are_the_versions_ci_tests_and_current_majors() -> None:
    services = compose()["services"]
    # The TimescaleDB that the tests build (the tsl flavour) is the one users run.
    local = (ROOT / "scripts" / "timescaledb-local").read_text()
    version = re.search(r"^TSDB_VERSION=(\S+)$", local, re.M)
    assert version
    assert services["timescaledb"]["image"] == f"timescale/timescaledb:{version.group(1)}-pg17"
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", services["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:12\.\d+\.\d+", services["grafana"]["image"])
    versions = VERSIONS_DOC.read_text()
    for name in ("timescaledb", "prometheus", "grafana"):
        assert f"`{services[name]['image']}`" in versions, f"{VERSIONS_DOC.name}: {name}'s pinned version"


def test_the_collector_keeps_its_journal_and_has_time_to_drain() -> None:
    collector = compose()["services"]["collector"]
    journal = collector["environment"]["COLLECTOR_JOURNAL_DIR"]
    assert f"journal:{journal}" in collector["volumes"]
    assert "journal" in compose()["volumes"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"COLLECTOR_JOURNAL_DIR={journal}" in dockerfile and f"mkdir -p {journal}" in dockerfile
    # Child processes: an init reaps them; docker stop must outwait the collector's own drain.
    assert collector["init"] is True
    grace = collector["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) >= 2 * Settings().shutdown_timeout_s
    for text in (COMPOSE.read_text(), dockerfile, (ROOT / ".env.example").read_text()):
        assert "SPOOL" not in text and "spool" not in text  # the spool is gone (migration 005)


def test_only_grafana_and_prometheus_are_published() -> None:
    services = compose()["services"]
    published = {name: svc["ports"] for name, svc in services.items() if "ports" in svc}
    assert set(published) == {"grafana", "prometheus"}
    assert published["prometheus"] == ["127.0.0.1:9090:9090"]


def test_every_mounted_file_exists_and_volumes_are_named() -> None:
    doc = compose()
    for name, svc in doc["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)
            else:
                assert source in doc["volumes"], (name, source)
    # What the mounted configs refer to exists too.
    assert (ROOT / "prometheus" / "prometheus.yml").exists()
    assert list((ROOT / "prometheus" / "rules").glob("*.yml"))
    assert len(list((ROOT / "grafana" / "dashboards").glob("*.json"))) == 3


def env_example() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", text, re.M))


def test_every_setting_reaches_the_collector_as_env_has_it() -> None:
    """Issue 16: .env lines such as COLLECTOR_MARKET_HOURS never reached the container.

    The settings table (tests/support/docs.py: SETTINGS_DOC), the collector service's
    environment and .env.example are held to each other: every setting is passed,
    either through from .env (``${NAME:-...}``) or fixed by compose for the
    containers' wiring, and the fixed ones are exactly those the document names.
    """
    table = set(settings_table())
    assert table == {f"COLLECTOR_{name.upper()}" for name in Settings.model_fields}
    environment = compose()["services"]["collector"]["environment"]
    assert set(environment) == table, set(environment) ^ table
    passed = {
        name for name, value in environment.items() if re.fullmatch(rf"\$\{{{name}(:-[^}}]*)?\}}", str(value))
    }
    fixed = table - passed
    assert fixed == table & settings_paragraph("With docker compose, `.env` sets every one of these")
    # .env.example has a line for every setting .env can set; every line it has is used by compose
    # (a misspelt name would silently set nothing).
    example = set(env_example())
    assert example & table == passed, (example & table) ^ passed
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    assert example <= used, example - used
    # Empty in .env means the default (Settings ignores empty variables), so compose may pass "".
    assert Settings.model_config.get("env_ignore_empty") is True


def test_a_token_file_has_a_place_that_a_rotation_reaches() -> None:
    collector = compose()["services"]["collector"]
    mounts = {v.split(":")[1]: v for v in collector["volumes"]}
    target = "/run/secrets/collector"
    # The folder is mounted, read-only: a file bind mount would keep the replaced token's inode.
    source, _, mode = mounts[target].split(":")
    assert mode == "ro" and (ROOT / source).is_dir()
    assert (ROOT / source / "README.md").exists()
    # Never committed, never in the image's build context.
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert "/secrets/*" in gitignore and "!/secrets/README.md" in gitignore
    assert "secrets" in (ROOT / ".dockerignore").read_text().split()
    documented = f"{target}/"
    assert documented in (ROOT / ".env.example").read_text() and documented in SETTINGS_DOC.read_text()
    assert "COLLECTOR_UPSTOX_TOKEN_FILE" in env_example()


def test_every_variable_is_documented_and_secrets_have_no_default() -> None:
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z0-9_]+)=", example, re.M))
    assert used <= documented, used - documented
    for secret in (
        "POSTGRES_PASSWORD",
        "COLLECTOR_DB_PASSWORD",
        "GRAFANA_DB_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
    ):
        assert re.search(rf"^{secret}=$", example, re.M), f"{secret} must be empty in .env.example"
        assert f"${{{secret}:?" in text, f"{secret} must be required, not defaulted"
    # Grafana's provisioning reads these from its container's environment.
    provisioning = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text()
    )
    grafana_env = compose()["services"]["grafana"]["environment"]
    used_by_grafana = set(re.findall(r"\$\{?([A-Z0-9_]+)", repr(provisioning)))
    assert "GRAFANA_DB_PASSWORD" in used_by_grafana
    for var in used_by_grafana:
        assert var in grafana_env, var


def test_datasources_use_the_grafana_12_fields() -> None:
    # Grafana 12 dropped the top-level database and password of data source provisioning.
    path = ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yml"
    sources = {d["uid"]: d for d in yaml.safe_load(path.read_text())["datasources"]}
    tsdb = sources["timescaledb"]
    assert "database" not in tsdb and "password" not in tsdb
    assert tsdb["type"] == "grafana-postgresql-datasource" and tsdb["jsonData"]["timescaledb"] is True
    assert tsdb["jsonData"]["database"] == "${POSTGRES_DB}"
    # $VAR, not ${VAR}: Grafana expands ${VAR} again, so a "$" in the password would be mangled.
    assert tsdb["secureJsonData"]["password"] == "$GRAFANA_DB_PASSWORD"
    prometheus = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    assert sources["prometheus"]["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]


def test_image_is_small_non_root_pinned_and_installs_the_wheel() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert froms and all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", f) for f in froms), froms
    assert re.search(r"^USER collector$", dockerfile, re.M)
    # The package is installed from its wheel (migrations inside), not run from copied sources.
    assert "pip wheel --no-deps" in dockerfile and re.search(
        r"pip install --no-deps \S*collector-\*\.whl", dockerfile
    )
    assert re.search(r'^ENTRYPOINT \["collector"\]$', dockerfile, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "migrations" not in ignored and "collector" not in ignored and ".env" in ignored
    lock = [
        line
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lock and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", line) for line in lock), lock
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {line.split("==")[0].lower().replace("_", "-") for line in lock}
    for dep in deps:
        name = re.split(r"[<>=!~ \[]", dep)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} is not pinned in requirements.lock"


def test_init_script_creates_the_login_roles() -> None:
    script = (ROOT / "deploy" / "timescaledb" / "init-roles.sh").read_text()
    assert "IN ROLE collector_writer" in script and "IN ROLE collector_reader" in script
    roles = (ROOT / "migrations" / "004_roles.sql").read_text()
    assert "collector_writer" in roles and "collector_reader" in roles


def healthcheck_code() -> str:
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    m = re.search(r"^HEALTHCHECK .*CMD \[\"python\", \"-c\", \"(.*)\"\]$", dockerfile, re.M)
    assert m, "the image's HEALTHCHECK runs python -c"
    return m.group(1)


def run_healthcheck(registry: CollectorRegistry) -> int:
    server = serve_metrics(registry, "127.0.0.1", 0)
    try:
        code = healthcheck_code()
        assert "127.0.0.1:9108/metrics" in code
        code = code.replace("127.0.0.1:9108", f"127.0.0.1:{server.server_port}")
        return subprocess.run([sys.executable, "-c", code], timeout=30).returncode
    finally:
        server.shutdown()
        server.server_close()


def test_the_healthcheck_passes_on_the_collectors_metrics_and_only_there() -> None:
    registry = CollectorRegistry()
    SupervisorMetrics(registry, connections=2, version="test")
    assert run_healthcheck(registry) == 0
    assert run_healthcheck(CollectorRegistry()) == 1  # something else answering on the port
