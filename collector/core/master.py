"""The instrument master's rules: what a file must be, which rows are used, and the guard. No I/O.

Upstox publishes the master as gzipped JSON, a list of one object per
contract (shared/docs/upstox-v3.md, section 4). :func:`parse_master` turns
bytes into rows ready for the ``instruments`` table and judges them
(docs/settings.md, "The instrument master"):

- **Refused whole** (:class:`MasterRejected`): an empty file, bytes that are
  neither gzip nor JSON, a broken gzip stream (a truncated download), JSON
  that is not a list, more than ``MAX_BYTES``, no usable row, or more than
  ``MAX_BAD_SHARE`` of the rows unusable: that is a changed format, not a few
  bad rows (``force`` stores the usable ones anyway).
- **Skipped and counted**: a row that is not an object, has no
  ``instrument_key`` of the form ``SEGMENT|identifier`` or no ``segment``, or
  has a field of the wrong type (``strike_price`` "abc", ``expiry``
  "tomorrow"); a repeated key (the first row is kept). One line gives the
  counts and an example of each.
- **Held**, the truncated-master guard (:func:`judge`): a new day's master
  with fewer rows than ``min_ratio`` of the last accepted day's is stored but
  not made current. ``force`` accepts it.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from collector.core.times import EPOCH, MAX_EPOCH_MS
from collector.exceptions import CollectorError

__all__ = [
    "COLUMNS",
    "MAX_BAD_SHARE",
    "MAX_BYTES",
    "REJECT_REASONS",
    "MasterRejected",
    "MasterStatus",
    "ParsedMaster",
    "display",
    "judge",
    "parse_master",
]

COLUMNS = (
    "instrument_key", "segment", "exchange", "name", "trading_symbol", "short_name", "instrument_type",
    "isin", "exchange_token", "lot_size", "minimum_lot", "freeze_quantity", "tick_size", "expiry",
    "strike_price", "weekly", "underlying_symbol", "underlying_key", "underlying_type", "asset_symbol",
    "asset_key", "asset_type",
)  # fmt: skip
# A million rows, ten times a day's complete master of ~100 000, are ~540 MB of JSON;
# past a gigabyte it is not a master but a bomb.
MAX_BYTES = 1 << 30
# Refuse a file when more of its rows than this cannot be used: a renamed field or
# a new date format breaks a whole segment at once, and storing the rest would
# silently drop that segment from the universe.
MAX_BAD_SHARE = 0.10
_INT4 = 2**31

RejectReason = Literal["unreadable", "bad_rows"]
REJECT_REASONS: tuple[RejectReason, ...] = ("unreadable", "bad_rows")
MasterStatus = Literal["accepted", "forced", "held"]


class MasterRejected(CollectorError, ValueError):
    """The instrument master was refused whole; nothing was stored.

    ``reason`` is a fixed metric label: "unreadable" (not a master at all) or
    "bad_rows" (too many rows unusable).
    """

    def __init__(self, source: str, problem: str, *, reason: RejectReason) -> None:
        super().__init__(f"{source}: {problem}; nothing was stored")
        self.reason: RejectReason = reason


def display(source: str) -> str:
    """The source as it may be printed: a URL without credentials or query."""
    if source.startswith(("http://", "https://")):
        parts = urlsplit(source)
        return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
    return source


def _gunzip(data: bytes, name: str, max_bytes: int) -> bytes:
    out: list[bytes] = []
    size = 0
    while data:  # a gzip file may hold several members; Upstox's has one
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            chunk = d.decompress(data, max_bytes + 1 - size)
        except zlib.error as exc:
            raise MasterRejected(name, f"a broken gzip stream ({exc})", reason="unreadable") from None
        size += len(chunk)
        if d.unconsumed_tail or size > max_bytes:
            raise MasterRejected(
                name, f"more than {max_bytes} bytes decompressed: not a master", reason="unreadable"
            )
        if not d.eof:
            raise MasterRejected(
                name, "the gzip stream ends early (a truncated download?)", reason="unreadable"
            )
        out.append(chunk)
        data = d.unused_data
    return b"".join(out)


def _json(data: bytes, name: str, what: str) -> Any:
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        problem = f"{what} ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except UnicodeDecodeError:
        problem = f"{what} (not UTF-8 text)"
    except RecursionError:
        problem = "JSON nested too deeply: not a master"
    raise MasterRejected(name, problem, reason="unreadable")


class _Bad(Exception):
    """A field value of the wrong type or out of range."""


def _text(v: Any) -> str:
    if type(v) is str:
        # PostgreSQL text holds neither NUL nor lone surrogates (a "\ud800" escape in JSON).
        if "\x00" in v or (not v.isascii() and not _utf8(v)):
            raise _Bad
        return v
    if type(v) is int or (type(v) is float and math.isfinite(v)):
        return str(v)
    raise _Bad


def _utf8(v: str) -> bool:
    try:
        v.encode()
    except UnicodeEncodeError:
        return False
    return True


def _integer(v: Any) -> int:
    """An integer given as one, as a float without a fraction, or as text."""
    if type(v) is int:
        return v
    if type(v) is float and v.is_integer():
        return int(v)
    if type(v) is str:
        try:
            return int(v)
        except ValueError:
            raise _Bad from None
    raise _Bad  # bool, list, object, NaN, 1.5


def _int(v: Any) -> int:
    n = _integer(v)
    if not -_INT4 <= n < _INT4:
        raise _Bad  # the column is a PostgreSQL integer
    return n


def _float(v: Any) -> float:
    if type(v) is float:
        x = v
    elif type(v) is int or type(v) is str:
        try:
            x = float(v)
        except (ValueError, OverflowError):
            raise _Bad from None
    else:
        raise _Bad
    if not math.isfinite(x):
        raise _Bad
    return x


def _expiry(v: Any) -> datetime:
    # Epoch milliseconds: an integer (beyond the int4 range, unlike the other numbers).
    ms = _integer(v)
    if not 0 <= ms <= MAX_EPOCH_MS:
        raise _Bad
    return EPOCH + timedelta(milliseconds=ms)


def _bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    if type(v) is int and v in (0, 1):
        return bool(v)
    raise _Bad


_CONVERT: dict[str, Callable[[Any], Any]] = dict.fromkeys(COLUMNS, _text)
_CONVERT.update(
    lot_size=_int, minimum_lot=_int, freeze_quantity=_float, tick_size=_float, strike_price=_float,
    expiry=_expiry, weekly=_bool,
)  # fmt: skip
_FIELDS = tuple((c, _CONVERT[c]) for c in COLUMNS[2:])  # key and segment are checked first


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(slots=True)
class ParsedMaster:
    """A master's usable rows (in ``COLUMNS`` order) and what was skipped, with an example each."""

    source: str
    records: list[tuple[Any, ...]]
    entries: int
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def skipped_rows(self) -> int:
        return sum(self.skipped.values())

    @property
    def bad_rows(self) -> int:
        """Rows that could not be used (a repeated key is not bad: its first row is stored)."""
        return self.skipped_rows - self.skipped["repeated instrument_key"]

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, example)

    def summary(self) -> str:
        """One line: what was skipped, with counts and the first example of each; "" if nothing."""
        if not self.skipped:
            return ""
        parts = [f"{n} {reason} ({self.examples[reason]})" for reason, n in self.skipped.most_common()]
        return f"skipped {self.skipped_rows} of {self.entries} rows: " + ", ".join(parts)

    def check(self, *, force: bool = False) -> None:
        """Refuse a master with no usable row, or (unless ``force``) too many unusable ones."""
        if not self.entries:
            raise MasterRejected(self.source, "an empty list: no instruments", reason="unreadable")
        if not self.records:
            raise MasterRejected(self.source, f"no usable row; {self.summary()}", reason="bad_rows")
        if not force and self.bad_rows > MAX_BAD_SHARE * self.entries:
            raise MasterRejected(
                self.source,
                f"more than {MAX_BAD_SHARE:.0%} of the rows are unusable (a changed format?), "
                f"{self.summary()}; --force stores the usable ones",
                reason="bad_rows",
            )


def parse_master(
    data: bytes, source: str = "the instrument master", *, max_bytes: int = MAX_BYTES
) -> ParsedMaster:
    """Decode gzipped (or plain) JSON and check every row; raises :class:`MasterRejected`.

    Rows that cannot be used are skipped and counted in the result; call
    :meth:`ParsedMaster.check` to refuse a master that is mostly garbage.
    Decompression stops at ``max_bytes``.
    """
    name = display(source)
    if not data:
        raise MasterRejected(name, "the file is empty", reason="unreadable")
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, name, max_bytes)
        if not data.strip():
            raise MasterRejected(name, "the gzip stream holds nothing", reason="unreadable")
        rows = _json(data, name, "gzip holding something that is not JSON")
    else:
        rows = _json(data, name, "neither gzip nor JSON")
    if not isinstance(rows, list):
        kind = {dict: "an object", str: "a string", bool: "a boolean"}.get(type(rows), "a number")
        raise MasterRejected(
            name, f"the JSON is {'null' if rows is None else kind}, not a list of instruments",
            reason="unreadable",
        )  # fmt: skip
    parsed = ParsedMaster(name, [], len(rows))
    first_row: dict[str, int] = {}
    records = parsed.records
    for n, raw in enumerate(rows, 1):
        if type(raw) is not dict:
            parsed.skip("not an object", f"row {n}: {_short(raw)}")
            continue
        key = raw.get("instrument_key")
        if key is None or key == "":
            label = raw.get("trading_symbol") or raw.get("name")
            parsed.skip(
                "without instrument_key", f"row {n}" + (f" {_short(label)}" if label is not None else "")
            )
            continue
        try:
            key = _text(key)
            prefix, bar, ident = key.partition("|")
            if not (prefix and bar and ident) or key != key.strip():
                raise _Bad
        except _Bad:
            parsed.skip("bad instrument_key", f"row {n}: {_short(key)}")
            continue
        seg = raw.get("segment")
        if type(seg) is not str or not seg or "\x00" in seg or not _utf8(seg):
            parsed.skip("without segment", f"row {n} {key}: {_short(seg)}")
            continue
        out: list[Any] = [key, seg]
        try:
            for col, convert in _FIELDS:
                value = raw.get(col)
                out.append(None if value is None else convert(value))
        except _Bad:
            parsed.skip(f"bad {col}", f"row {n} {key}: {_short(raw.get(col))}")
            continue
        first = first_row.setdefault(key, n)
        if first != n:
            parsed.skip("repeated instrument_key", f"row {n} {key}, first at row {first}")
            continue
        records.append(tuple(out))
    return parsed


def judge(
    before: MasterStatus | None,
    day_rows: int,
    reference_rows: int | None,
    *,
    min_ratio: float,
    force: bool,
) -> MasterStatus:
    """The status of a day after a load: accepted, forced by hand, or held back by the guard.

    ``before`` is the day's status before this load, ``day_rows`` its rows
    after it (loads of a day are upserts, so they add up), ``reference_rows``
    those of the last accepted day before it (None: this is the first master).
    """
    if before is not None and before != "held":
        return before  # a current day stays current: a later load can only add rows
    if force:
        return "forced"
    if reference_rows is None or day_rows >= min_ratio * reference_rows:
        return "accepted"  # the first master has nothing to be compared with
    return "held"
