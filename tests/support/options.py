"""Components' options as the collector builds them from its default settings, with a test's changes."""

from __future__ import annotations

import dataclasses
from typing import Any

from collector.options import FeedOptions, JournalOptions, WriterOptions
from collector.settings import Settings

# The defaults, never the environment or a .env file: model_construct() validates and reads nothing.
DEFAULTS = Settings.model_construct()


def feed_options(**changes: Any) -> FeedOptions:
    return dataclasses.replace(DEFAULTS.feed_options(), **changes)


def journal_options(**changes: Any) -> JournalOptions:
    return dataclasses.replace(DEFAULTS.journal_options(), **changes)


def writer_options(**changes: Any) -> WriterOptions:
    return dataclasses.replace(DEFAULTS.writer_options(), **changes)
