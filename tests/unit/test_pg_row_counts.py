"""pg_row_counts: value formatting, estimates and the verification table."""

import datetime

from conftest import load

from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import VERIFICATION_COLUMNS, render_table

rc = load("plugins/modules/pg_row_counts.py", "pg_row_counts")


def test_format_value():
    assert rc.format_value(None) is None
    assert rc.format_value(datetime.datetime(2026, 11, 1, 10, 0, 5)) == "2026-11-01T10:00:05"
    assert rc.format_value(datetime.date(2026, 11, 1)) == "2026-11-01"
    assert rc.format_value(42) == "42"


def test_estimate_from_reltuples():
    # PostgreSQL 14+ stores -1 for a table that was never analyzed: unknown, not zero rows.
    assert rc.estimate_from_reltuples(-1) is None
    assert rc.estimate_from_reltuples(0) == 0
    assert rc.estimate_from_reltuples(1234.6) == 1235


def test_render_report_aligns_columns():
    # pg_row_counts and migration_verify print the guide's table with exactly these arguments.
    lines = render_table(
        VERIFICATION_COLUMNS,
        [
            {"table_name": "usage_data", "record_count": 1000000, "oldest_record": "2026-01-01T00:00:00", "newest_record": "2026-11-01T00:00:00"},
            {"table_name": "alerts", "record_count": 7, "oldest_record": None, "newest_record": None},
        ],
        right_aligned=("record_count",),
    )
    assert lines[0].split(" | ") == ["table_name", "record_count", "oldest_record      ", "newest_record"]
    assert lines[1] == "usage_data |      1000000 | 2026-01-01T00:00:00 | 2026-11-01T00:00:00"
    assert lines[2] == "alerts     |            7 |                     |"
    assert len({line.index("|") for line in lines}) == 1
