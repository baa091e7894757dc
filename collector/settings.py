"""All settings, from ``COLLECTOR_*`` environment variables (or a ``.env`` file).

Built once at the entry point and passed down as explicit arguments.
Precedence: environment variables, then ``.env`` in the working directory,
then the defaults below. The README lists every setting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from collector.calendar import parse_hours
from collector.exceptions import ConfigError
from collector.records import Mode

__all__ = ["Settings", "UniverseFilter", "load_settings"]

DEFAULT_INSTRUMENTS_URL = "https://assets.upstox.com/market-quote/instruments/exchange/complete.json.gz"


class UniverseFilter(BaseModel):
    """A rule selecting instruments from the master, subscribed in ``mode``.

    Every given criterion must match. Example, the F&O stock futures of the
    nearest expiry without index underlyings::

        {"mode": "full", "segments": ["NSE_FO"], "instrument_types": ["FUT"],
         "exclude_underlyings": ["NIFTY", "BANKNIFTY", "FINNIFTY", "MIDCPNIFTY"],
         "nearest_expiries": 1}
    """

    model_config = {"extra": "forbid"}

    mode: Mode = "ltpc"
    segments: list[str] | None = None
    instrument_types: list[str] | None = None
    underlyings: list[str] | None = None
    exclude_underlyings: list[str] = []
    underlying_types: list[str] | None = None
    nearest_expiries: int | None = Field(default=None, ge=1)


class Settings(BaseSettings):
    """The collector's configuration. Secrets are ``SecretStr`` and never logged."""

    # An empty variable means "use the default" (docker compose passes unset ones as "").
    model_config = SettingsConfigDict(
        env_prefix="COLLECTOR_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    # Storage
    database_url: SecretStr = SecretStr("postgresql://collector@127.0.0.1:5432/collector")
    migrate_on_start: bool = True
    # Upstox
    upstox_api_url: str = "https://api.upstox.com"
    upstox_token: SecretStr | None = None
    upstox_token_file: Path | None = None
    instruments_url: str = DEFAULT_INSTRUMENTS_URL
    subscriptions: dict[Mode, list[str]] = {}
    universe: list[UniverseFilter] = []
    connections: int = Field(default=2, ge=1, le=5)
    upstox_plus: bool = False
    chunk_size: int = Field(default=500, ge=1, le=5000)
    # Liveness and reconnects
    ping_interval_s: float = Field(default=20.0, gt=0)
    ping_timeout_s: float = Field(default=20.0, gt=0)
    stall_timeout_s: float = Field(default=60.0, gt=0)
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_cap_s: float = Field(default=60.0, gt=0)
    # Journal (one per connection) and writer
    journal_dir: Path = Path("var/journal")
    journal_max_bytes: int = Field(default=8 * 1024**3, ge=16 * 1024 * 1024)
    journal_fsync: Literal["always", "periodic", "never"] = "periodic"
    journal_fsync_interval_s: float = Field(default=1.0, gt=0)
    journal_segment_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    max_batch_rows: int = Field(default=5_000, ge=1, le=1_000_000)
    flush_interval_s: float = Field(default=0.1, gt=0)
    shutdown_timeout_s: float = Field(default=15.0, ge=2)
    # Scheduler
    candle_refresh_interval_s: float = Field(default=60.0, gt=0)
    retention_days: int | None = Field(default=None, ge=1)
    instrument_sync_time: str = "06:15"
    market_hours: dict[str, Any] = {}
    # Observability
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("database_url")
    @classmethod
    def _dsn(cls, value: SecretStr) -> SecretStr:
        # Checked here so that a bad URL is a one-line startup error; never echo it (it holds a password).
        try:
            parts = urlsplit(value.get_secret_value())
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise ValueError(f"not a usable URL ({exc})") from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("market_hours")
    @classmethod
    def _hours(cls, value: dict[str, Any]) -> dict[str, Any]:
        parse_hours(value)
        return value

    @field_validator("upstox_api_url", "instruments_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://", "file://", "/")) and "://" in value:
            raise ValueError("must be an http(s):// URL")
        return value

    @field_validator("instrument_sync_time")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        hh, _, mm = value.partition(":")
        if not (hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
            raise ValueError("must be HH:MM (IST)")
        return value

    @model_validator(mode="after")
    def _limits(self) -> Settings:
        if self.connections > 2 and not self.upstox_plus:
            raise ValueError("connections: more than 2 needs COLLECTOR_UPSTOX_PLUS=true (Upstox Plus)")
        return self


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning validation errors into a ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if not str(p).isdigit()]
        name = "COLLECTOR_" + (loc[0].upper() if loc else "SETTINGS")
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(name, msg) from None
    except SettingsError as exc:
        # A JSON setting that is not JSON: pydantic-settings names the field in its message.
        m = re.search(r'field "(\w+)"', str(exc))
        name = "COLLECTOR_" + (m.group(1).upper() if m else "SETTINGS")
        raise ConfigError(name, "not valid JSON") from None
