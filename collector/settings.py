"""All settings, from ``COLLECTOR_*`` environment variables (or a ``.env`` file).

Built once at the entry point and passed down as explicit arguments.
Precedence: environment variables, then ``.env`` in the working directory,
then the defaults below. docs/settings.md lists every setting.
"""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from collector.core.calendar import DEFAULT_HOURS, parse_hours
from collector.core.records import Mode
from collector.core.universe import UniverseFilter
from collector.exceptions import ConfigError
from collector.options import FeedOptions, FsyncPolicy, JournalOptions, WriterOptions

__all__ = ["Settings", "load_settings"]

DEFAULT_INSTRUMENTS_URL = "https://assets.upstox.com/market-quote/instruments/exchange/complete.json.gz"
# No duration the collector waits for makes sense beyond a day; larger ones overflow timedelta.
MAX_SECONDS = 86_400.0
MAX_RETENTION_DAYS = 36_500
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


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
    # A new day's master with fewer rows than this share of the last accepted day's is held back.
    instruments_min_ratio: float = Field(default=0.8, ge=0, le=1)
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
    token_retry_s: float = Field(default=60.0, gt=0, le=86400)
    rate_limit_retry_s: float = Field(default=30.0, gt=0, le=86400)
    open_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # Journal (one per connection) and writer
    journal_dir: Path = Path("var/journal")
    journal_max_bytes: int = Field(default=8 * 1024**3, ge=16 * 1024 * 1024)
    journal_fsync: FsyncPolicy = "periodic"
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

    # -- what the components are handed ----------------------------------------------

    def feed_options(self) -> FeedOptions:
        """A feed connection's timing and sizing."""
        return FeedOptions(
            chunk_size=self.chunk_size,
            open_timeout_s=self.open_timeout_s,
            ping_interval_s=self.ping_interval_s,
            ping_timeout_s=self.ping_timeout_s,
            stall_timeout_s=self.stall_timeout_s,
            backoff_base_s=self.backoff_base_s,
            backoff_cap_s=self.backoff_cap_s,
            token_retry_s=self.token_retry_s,
            rate_limit_retry_s=self.rate_limit_retry_s,
            journal_max_bytes=self.journal_max_bytes,
        )

    def journal_options(self) -> JournalOptions:
        """How a feed appends to its journal."""
        return JournalOptions(
            fsync=self.journal_fsync,
            fsync_interval_s=self.journal_fsync_interval_s,
            segment_bytes=self.journal_segment_bytes,
        )

    def writer_options(self) -> WriterOptions:
        """How a writer batches."""
        return WriterOptions(max_batch_rows=self.max_batch_rows, flush_interval_s=self.flush_interval_s)

    # -- checks -----------------------------------------------------------------------

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

    @field_validator("*")
    @classmethod
    def _finite(cls, value: Any, info: ValidationInfo) -> Any:
        # Every float setting: pydantic lets "inf" through a gt=0 bound, and 1e300 s overflows timedelta.
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        if info.field_name and info.field_name.endswith("_s") and value > MAX_SECONDS:
            raise ValueError(f"at most {MAX_SECONDS:.0f} seconds (a day)")
        return value

    @field_validator("retention_days")
    @classmethod
    def _days(cls, value: int | None) -> int | None:
        if value is not None and value > MAX_RETENTION_DAYS:
            raise ValueError(f"at most {MAX_RETENTION_DAYS} days")
        return value

    @field_validator("market_hours")
    @classmethod
    def _hours(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - {*DEFAULT_HOURS, "*"})
        if unknown:
            raise ValueError(f"unknown exchange {unknown[0]!r} (one of {', '.join(DEFAULT_HOURS)} or *)")
        for name, hours in parse_hours(value).items():
            if hours.close is not None and hours.close <= hours.open:
                raise ValueError(f"{name}: close must be after open (24:00 for midnight)")
        return value

    @field_validator("upstox_api_url", "instruments_url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "instruments_url" and ("://" not in value or value.startswith("file://")):
            return value  # a file: read (and judged) when the master is loaded
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise ValueError(f"not a usable URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s):// URL")
        return value

    @field_validator("subscriptions")
    @classmethod
    def _keys(cls, value: dict[Mode, list[str]]) -> dict[Mode, list[str]]:
        for mode, keys in value.items():
            for key in keys:
                segment, bar, identifier = key.partition("|")
                if not (segment and bar and identifier.strip()):
                    raise ValueError(f"{mode}: {key!r} is not an instrument key (SEGMENT|identifier)")
        return value

    @field_validator("journal_dir", "upstox_token_file")
    @classmethod
    def _path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # Only what can never work: the folder or file may be created later.
        if value is None:
            return value
        try:
            if info.field_name == "upstox_token_file" and value.is_dir():
                raise ValueError(f"{value} is a folder, not a file")
            for parent in (value, *value.parents) if info.field_name == "journal_dir" else value.parents:
                if parent.exists():
                    if not parent.is_dir():
                        raise ValueError(f"{parent} is a file, not a folder")
                    break
        except OSError as exc:
            raise ValueError(f"{value}: {exc.strerror}") from None
        return value

    @field_validator("metrics_host")
    @classmethod
    def _host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME.fullmatch(value) or len(value) > 253:
                raise ValueError(f"{value!r} is neither an IP address nor a host name") from None
        return value

    @field_validator("instrument_sync_time")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        m = re.fullmatch(r"([0-9]{1,2}):([0-9]{2})", value)
        if not (m and int(m.group(1)) < 24 and int(m.group(2)) < 60):
            raise ValueError("must be HH:MM (IST)")
        return value

    @model_validator(mode="after")
    def _limits(self) -> Settings:
        # "<field>: message": load_settings names that field's variable.
        if self.connections > 2 and not self.upstox_plus:
            raise ValueError("connections: more than 2 needs COLLECTOR_UPSTOX_PLUS=true (Upstox Plus)")
        if self.backoff_base_s > self.backoff_cap_s:
            raise ValueError("backoff_base_s: larger than COLLECTOR_BACKOFF_CAP_S")
        if self.journal_segment_bytes > self.journal_max_bytes:
            raise ValueError("journal_segment_bytes: larger than COLLECTOR_JOURNAL_MAX_BYTES")
        return self


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning validation errors into a ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:  # a check across fields (_limits) names its field first
            head, _, rest = msg.partition(": ")
            if head in Settings.model_fields:
                loc, msg = [head], rest
        name = "COLLECTOR_" + (loc[0].upper() if loc else "SETTINGS")
        # Where inside a JSON setting: COLLECTOR_UNIVERSE: [0].mode: Input should be ...
        where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:] if p != "[key]").lstrip(".")
        raise ConfigError(name, f"{where}: {msg}" if where else msg) from None
    except SettingsError as exc:
        # A JSON setting that is not JSON: pydantic-settings names the field in its message.
        m = re.search(r'field "(\w+)"', str(exc))
        name = "COLLECTOR_" + (m.group(1).upper() if m else "SETTINGS")
        raise ConfigError(name, "not valid JSON") from None
