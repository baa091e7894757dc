"""The docker compose stack, checked without Docker: structure, mounts, variables, image."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.conftest import ROOT

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
    provisioning = (ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text()
    grafana_env = compose()["services"]["grafana"]["environment"]
    for var in set(re.findall(r"\$\{([A-Z0-9_]+)\}", provisioning)):
        assert var in grafana_env, var


def test_image_is_small_non_root_pinned_and_checks_metrics() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim", dockerfile, re.M)
    assert re.search(r"^USER collector$", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile and "/metrics" in dockerfile
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
