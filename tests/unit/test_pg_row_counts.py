"""pg_row_counts: value formatting, estimates and the verification table."""

import datetime
import hashlib

import pytest
from conftest import load
import test_sqlite_to_postgres_pg as base
from test_sqlite_to_postgres_pg import connect, query

from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError

from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import VERIFICATION_COLUMNS, render_table

rc = load("plugins/modules/pg_row_counts.py", "pg_row_counts")
# The fixtures of test_sqlite_to_postgres_pg, which pytest finds here by name.
pg_template, pg_db = base.pg_template, base.pg_db


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


def test_digest_needs_exact_mode():
    params = dict(schema="public", tables=[], timestamp_column="created_at", mode="estimate", digest=True)
    with pytest.raises(KitModuleError, match="digest needs mode=exact"):
        rc.check_options(params)
    params["mode"] = "exact"
    assert rc.check_options(params) == ("public", [], "created_at")


def python_digest(row_texts):
    """The digest as its documentation defines it, computed here independently of the SQL."""
    total = 0
    for text in row_texts:
        value = int(hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()[:16], 16)
        total += value - (1 << 64) if value >= 1 << 63 else value
    return str(total)


def digest_of(pg, db, table, session_settings=()):
    conn = connect(pg, db)
    try:
        cur = conn.cursor()
        for setting in session_settings:  # what a session might have set; the digest must not see it
            cur.execute(setting)
        rc.set_digest_settings(cur)
        params = dict(db=db, mode="exact", digest=True)
        return rc.table_row(cur, params, "public", table, table, "created_at")
    finally:
        conn.rollback()
        conn.close()


def test_digest_matches_its_definition_and_sees_any_change(pg_db, pg_server):
    # Columns named r and t: the digest's query must still read whole rows.
    query(pg_server, pg_db, "CREATE TABLE \"odd name\" (id int PRIMARY KEY, ts timestamptz, f float8, b bytea, "
                            "j jsonb, iv interval, t text, r text)")
    query(pg_server, pg_db, "INSERT INTO \"odd name\" SELECT g, timestamptz '2026-01-01 10:00+02' + g * interval '1 hour', "
                            "g / 3.0, decode(md5(g::text), 'hex'), jsonb_build_object('g', g), g * interval '1 day', "
                            "'é' || g, 'r' FROM generate_series(1, 300) g")
    row = digest_of(pg_server, pg_db, "odd name")
    assert row["record_count"] == 300
    # The rows' text forms under the documented settings, read by a plain query here.
    texts = [r[0] for r in query(pg_server, pg_db, "SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; "
                                                   "SET LOCAL extra_float_digits = 1; SET LOCAL bytea_output = 'hex'; "
                                                   "SELECT ROW(o.*)::text FROM \"odd name\" AS o")]
    assert row["digest"] == python_digest(texts)
    # Neither the physical order nor the session's own settings change it.
    query(pg_server, pg_db, "CLUSTER \"odd name\" USING \"odd name_pkey\"; UPDATE \"odd name\" SET t = t WHERE id % 2 = 0")
    assert digest_of(pg_server, pg_db, "odd name", ["SET TimeZone = 'Asia/Kolkata'", "SET DateStyle = 'SQL, DMY'",
                                                    "SET extra_float_digits = 0", "SET bytea_output = 'escape'",
                                                    "SET IntervalStyle = 'iso_8601'"])["digest"] == row["digest"]
    # One changed value, one row more, one row fewer: each gives another digest.
    query(pg_server, pg_db, "UPDATE \"odd name\" SET f = f + 1e-12 WHERE id = 7")
    changed = digest_of(pg_server, pg_db, "odd name")["digest"]
    assert changed != row["digest"]
    query(pg_server, pg_db, "INSERT INTO \"odd name\" (id) VALUES (301)")
    assert digest_of(pg_server, pg_db, "odd name")["digest"] not in (row["digest"], changed)
    query(pg_server, pg_db, "DELETE FROM \"odd name\" WHERE id IN (300, 301)")
    assert digest_of(pg_server, pg_db, "odd name")["digest"] not in (row["digest"], changed)
