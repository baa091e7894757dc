"""Settings own every default: an option without a default of its own is a setting."""

from __future__ import annotations

import dataclasses

from collector.options import FeedOptions, JournalOptions, WriterOptions
from collector.settings import Settings

SETTING_OF = {JournalOptions: "journal_{}", FeedOptions: "{}", WriterOptions: "{}"}


def test_every_option_without_a_default_is_a_setting_of_the_same_name() -> None:
    for options, name in SETTING_OF.items():
        for f in dataclasses.fields(options):
            if f.default is dataclasses.MISSING:
                assert name.format(f.name) in Settings.model_fields, (options.__name__, f.name)


def test_the_settings_fill_in_every_such_option() -> None:
    s = Settings.model_construct(chunk_size=7, journal_fsync="never", max_batch_rows=3, flush_interval_s=0.5)
    built = {
        FeedOptions: s.feed_options(),
        JournalOptions: s.journal_options(),
        WriterOptions: s.writer_options(),
    }
    for options, name in SETTING_OF.items():
        for f in dataclasses.fields(options):
            if f.default is dataclasses.MISSING:
                assert getattr(built[options], f.name) == getattr(s, name.format(f.name))
