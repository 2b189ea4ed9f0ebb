"""sqlite_to_postgres against a real PostgreSQL (the pg_server fixture), with files/schema.sql applied.

Also holds the helpers test_migration_verify_pg.py uses: a fresh database per test
(copied from a template that has the schema) and SQLite files shaped like the daemon's.
"""

import hashlib
import itertools
import json
import os
import shutil
import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import psycopg2
import pytest
from conftest import ROOT

from ansible_collections.claude_kit.stack.plugins.module_utils import migration_copy as mc
from ansible_collections.claude_kit.stack.plugins.module_utils import migration_ddl as ddl
from ansible_collections.claude_kit.stack.plugins.module_utils import migration_run as mig
from ansible_collections.claude_kit.stack.plugins.module_utils import migration_workers as mw
from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError

TEMPLATE = "kit_migration_template"
_counter = itertools.count(1)

SQLITE_SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT NOT NULL UNIQUE, email TEXT UNIQUE,
                    created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE usage_data (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER, timestamp DATETIME NOT NULL,
                         tokens_used INTEGER DEFAULT 0, requests_count INTEGER DEFAULT 0, avg_response_time INTEGER DEFAULT 0,
                         active_users INTEGER DEFAULT 0, error_count INTEGER DEFAULT 0, cost_usd REAL DEFAULT 0.0,
                         session_id TEXT, endpoint TEXT, created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE alerts (id TEXT PRIMARY KEY, user_id INTEGER, level TEXT NOT NULL, title TEXT NOT NULL, message TEXT,
                     timestamp DATETIME NOT NULL, acknowledged BOOLEAN DEFAULT 0, metadata TEXT,
                     created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER, date DATE NOT NULL, predicted_tokens INTEGER,
                          predicted_cost REAL, confidence REAL, model_version TEXT, created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
"""

# Timestamps in every encoding the daemon's history may hold: SQLite's CURRENT_TIMESTAMP,
# JavaScript's toISOString(), ISO with an offset, epoch seconds, epoch milliseconds.
USERS = [
    (1, "alice", "alice@example.org", "2024-01-01 10:00:00"),
    (2, "bob", None, 1704103200),
    (3, "carol", "carol@example.org", 1704103200123),
]
USAGE = [
    (1, 1, "2024-01-15T10:30:00.123Z", 1200, 3, 250, 1, 0, 0.0123, "s-1", "/v1/messages", "2024-01-15 10:30:01"),
    (2, 1, "2024-01-15 11:00:00", 300, 1, 90, 1, 0, 0.1 + 0.2, "s-1", "/v1/messages", "2024-01-15 11:00:01"),
    (3, 2, 1705316400, 0, 0, 0, 0, 0, 0, None, None, None),
    (4, 2, 1705316400500, 7, 1, 10, 1, 1, "2.5", "tab\there", "/v1/complete", "2024-01-15T12:00:00+02:00"),
    (5, 3, "2024-01-15T13:00:00", 5, 1, 10, 1, 0, 3, "ünïcödé", "/health", "2024-01-15 13:00:00"),
]
ALERTS = [
    ("a-1", 1, "info", "Usage high", "line1\nline2", "2024-01-15T10:30:00.000Z", 0, '{"threshold": 80, "tags": ["x"]}', "2024-01-15 10:30:00"),
    ("a-2", 2, "warning", "Cost", None, 1705316400, "true", None, "2024-01-15 10:31:00"),
    ("a-3", None, "error", "Errors", "back\\slash", "2024-01-15 10:32:00", "FALSE", '{"b": 1.50, "a": [1, 2]}', "2024-01-15 10:32:00"),
]
PREDICTIONS = [
    (1, 1, "2024-02-01", 100000, 12.5, 0.95, "linear-v1", "2024-01-31 00:00:00"),
    (2, 2, "2024-02-02", None, None, None, None, None),
]


def make_source(path, users=USERS, usage=USAGE, alerts=ALERTS, predictions=PREDICTIONS, extra_sql=""):
    conn = sqlite3.connect(path)
    conn.executescript(SQLITE_SCHEMA + extra_sql)
    conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?)", users)
    conn.executemany("INSERT INTO usage_data VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", usage)
    conn.executemany("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", alerts)
    conn.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", predictions)
    conn.commit()
    conn.close()
    return str(path)


@pytest.fixture(scope="session")
def pg_template(pg_server):
    pg_server.create_database(TEMPLATE)
    pg_server.psql((ROOT / "files" / "schema.sql").read_text(), TEMPLATE)
    return pg_server


def fresh_db(pg_template):
    """A fresh database with the kit's schema."""
    name = f"mig_{os.getpid()}_{next(_counter)}"
    pg_template.psql(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
    return name


@pytest.fixture
def pg_db(pg_template):
    """A fresh database with the kit's schema, for one test."""
    return fresh_db(pg_template)


def params(src, db, pg, **over):
    out = dict(
        src=src, db=db, schema="public", tables=[], mode="empty", on_reject="fail", backup_dir=None, reject_report=None,
        lock_timeout=60, foreign_key_check="auto", rebuild_indexes="auto", workers=0, archive_source=False,
        login_user="postgres", login_password="", login_host="", login_unix_socket=pg.dir,
        login_port=pg.port, ssl_mode="prefer", ca_cert=None, ssl_cert=None, ssl_key=None, connect_timeout=10,
    )
    out.update(over)
    return out


def connect(pg, db, user="postgres"):
    return psycopg2.connect(host=pg.dir, port=pg.port, user=user, dbname=db)


def migrate(pg, db, src, check_mode=False, user="postgres", **over):
    conn = connect(pg, db, user)
    try:
        return mig.migrate(params(src, db, pg, login_user=user, **over), conn, check_mode=check_mode)
    finally:
        conn.close()


def migrate_fails(pg, db, src, check_mode=False, **over):
    with pytest.raises(KitModuleError) as info:
        migrate(pg, db, src, check_mode=check_mode, **over)
    return info.value


def query(pg, db, sql, args=None):
    conn = connect(pg, db)
    try:
        cur = conn.cursor()
        cur.execute("SET TimeZone = 'UTC'")
        cur.execute(sql, args)
        rows = cur.fetchall() if cur.description else None
        conn.commit()
        return rows
    finally:
        conn.close()


def counts(pg, db):
    return {t: query(pg, db, f"SELECT count(*) FROM {t}")[0][0] for t in ("users", "usage_data", "alerts", "predictions")}


def by_table(result):
    return {t["table"]: t for t in result["tables"]}


# -- a clean migration ----------------------------------------------------------------


def test_clean_migration_normalises_every_encoding(pg_db, pg_server, tmp_path):
    src = make_source(tmp_path / "daemon.db")
    result = migrate(pg_server, pg_db, src)
    assert result["changed"] is True
    assert [t["table"] for t in result["tables"]][0] == "users"  # foreign-key order: users first
    tables = by_table(result)
    assert {k: v["rows_written"] for k, v in tables.items()} == {"users": 3, "usage_data": 5, "alerts": 3, "predictions": 2}
    assert all(t["rows_rejected"] == 0 and t["rows_read"] == t["rows_written"] for t in tables.values())
    assert result["rejected_rows"] == 0 and result["rejects"] == []
    # the consistent copy, next to the source by default, with its checksum
    assert os.path.dirname(result["backup_path"]) == str(tmp_path)
    assert len(result["backup_sha256"]) == 64
    assert json.load(open(result["reject_report"]))["rejects"] == []

    assert query(pg_server, pg_db, "SELECT id, created_at::text FROM users ORDER BY id") == [
        (1, "2024-01-01 10:00:00"), (2, "2024-01-01 10:00:00"), (3, "2024-01-01 10:00:00.123")]
    assert query(pg_server, pg_db, "SELECT id, timestamp::text, cost_usd::text, session_id, created_at::text FROM usage_data ORDER BY id") == [
        (1, "2024-01-15 10:30:00.123", "0.0123", "s-1", "2024-01-15 10:30:01"),
        (2, "2024-01-15 11:00:00", "0.3000", "s-1", "2024-01-15 11:00:01"),
        (3, "2024-01-15 11:00:00", "0.0000", None, None),
        (4, "2024-01-15 11:00:00.5", "2.5000", "tab\there", "2024-01-15 10:00:00"),  # +02:00 converted to UTC
        (5, "2024-01-15 13:00:00", "3.0000", "ünïcödé", "2024-01-15 13:00:00"),
    ]
    assert query(pg_server, pg_db, "SELECT id, acknowledged, metadata, message FROM alerts ORDER BY id") == [
        ("a-1", False, {"threshold": 80, "tags": ["x"]}, "line1\nline2"),
        ("a-2", True, None, None),
        ("a-3", False, {"a": [1, 2], "b": 1.5}, "back\\slash"),
    ]
    assert query(pg_server, pg_db, "SELECT id, date::text, confidence::text FROM predictions ORDER BY id") == [
        (1, "2024-02-01", "0.95"), (2, "2024-02-02", None)]


def test_sequences_are_set_past_the_highest_id(pg_db, pg_server, tmp_path):
    src = make_source(tmp_path / "daemon.db")
    result = migrate(pg_server, pg_db, src)
    seqs = {s["table"]: s for s in result["sequences"]}
    assert seqs["usage_data"]["action"] == "setval" and seqs["usage_data"]["next_value"] == 6
    query(pg_server, pg_db, "INSERT INTO users (username) VALUES ('dave')")
    query(pg_server, pg_db, "INSERT INTO usage_data (user_id, timestamp) VALUES (1, now())")
    assert query(pg_server, pg_db, "SELECT max(id) FROM users")[0][0] == 4
    assert query(pg_server, pg_db, "SELECT max(id) FROM usage_data")[0][0] == 6


def test_rerun_in_empty_mode_recognises_a_complete_migration(pg_db, pg_server, tmp_path):
    src = make_source(tmp_path / "daemon.db")
    migrate(pg_server, pg_db, src)
    again = migrate(pg_server, pg_db, src)
    assert again["changed"] is False
    assert {t["status"] for t in again["tables"]} == {"already_complete"}
    assert by_table(again)["usage_data"]["rows_skipped"] == 5
    assert counts(pg_server, pg_db) == {"users": 3, "usage_data": 5, "alerts": 3, "predictions": 2}


def test_empty_mode_refuses_tables_with_other_rows_before_writing(pg_db, pg_server, tmp_path):
    src = make_source(tmp_path / "daemon.db")
    query(pg_server, pg_db, "INSERT INTO users (id, username) VALUES (99, 'zed')")
    failed = migrate_fails(pg_server, pg_db, src)
    assert "users (1 rows in PostgreSQL, 3 in SQLite)" in failed.msg and "mode=append" in failed.msg
    assert counts(pg_server, pg_db) == {"users": 1, "usage_data": 0, "alerts": 0, "predictions": 0}


def test_check_mode_predicts_and_writes_nothing(pg_db, pg_server, tmp_path):
    bad_usage = USAGE + [(6, 1, "2024-02-30 10:00:00", 1, 1, 1, 1, 0, 0.5, None, None, None)]
    src = make_source(tmp_path / "daemon.db", usage=bad_usage)
    before = sorted(os.listdir(tmp_path))
    # on_reject=fail: check mode fails as the run would, and still reports the rejects
    failed = migrate_fails(pg_server, pg_db, src, check_mode=True)
    assert "1 rows cannot be migrated, so nothing would be written" in failed.msg
    assert failed.result["rejects"][0]["key"] == {"id": 6}
    result = migrate(pg_server, pg_db, src, check_mode=True, on_reject="skip")
    assert result["changed"] is True
    tables = by_table(result)
    assert tables["usage_data"]["rows_written"] == 5 and tables["usage_data"]["rows_rejected"] == 1
    assert {t["status"] for t in result["tables"]} == {"would_load"}
    assert result["rejects"][0]["key"] == {"id": 6} and result["rejects"][0]["column"] == "timestamp"
    mapping = {c["column"]: c for c in tables["usage_data"]["columns"]}
    assert mapping["cost_usd"] == {"column": "cost_usd", "source_column": "cost_usd", "source_type": "REAL", "target_type": "numeric(10,4)"}
    assert counts(pg_server, pg_db) == {"users": 0, "usage_data": 0, "alerts": 0, "predictions": 0}
    assert result["backup_path"] is None and result["reject_report"] is None
    assert sorted(os.listdir(tmp_path)) == before  # no copy and no report left behind
    assert query(pg_server, pg_db, "SELECT last_value FROM usage_data_id_seq")[0][0] == 1


# -- rejects --------------------------------------------------------------------------

BAD_USAGE = USAGE + [
    (6, 1, "2024-02-30 10:00:00", 1, 1, 1, 1, 0, 0.5, None, None, None),  # no such date
    (7, 1, "2024-01-15 10:00:00", "12abc", 1, 1, 1, 0, 0.5, None, None, None),  # text in an integer column
    (8, 1, "2024-01-15 10:00:00", 1, 1, 1, 1, 0, 1234567.0, None, None, None),  # overflows numeric(10,4)
    (9, 1, "2024-01-15 10:00:00", 1, 1, 1, 1, 0, 0.5, "x" * 300, None, None),  # too long for varchar(255)
    (10, 42, "2024-01-15 10:00:00", 1, 1, 1, 1, 0, 0.5, None, None, None),  # no user 42: the foreign key refuses it
]
BAD_ALERTS = ALERTS + [
    ("a-4", 1, "critical", "Not a level", None, "2024-01-15 10:00:00", 0, None, None),  # CHECK constraint
    ("a-5", 1, "info", "Bad JSON", None, "2024-01-15 10:00:00", 0, "{not json", None),
    ("a-6", 1, "info", "Bad bool", None, "2024-01-15 10:00:00", "maybe", None, None),
]


def _bad_source(path):
    src = make_source(path, usage=BAD_USAGE, alerts=BAD_ALERTS)
    conn = sqlite3.connect(src)  # SQLite holds what PostgreSQL cannot: bytes that are not UTF-8, NUL
    conn.execute("INSERT INTO alerts VALUES ('a-7', 1, 'info', CAST(? AS TEXT), NULL, '2024-01-15 10:00:00', 0, NULL, NULL)", (b"caf\xe9",))
    conn.execute("INSERT INTO alerts VALUES ('a-8', 1, 'info', ?, NULL, '2024-01-15 10:00:00', 0, NULL, NULL)", ("nul\x00byte",))
    conn.commit()
    conn.close()
    return src


EXPECTED_REJECTS = {
    ("usage_data", 6, "timestamp"), ("usage_data", 7, "tokens_used"), ("usage_data", 8, "cost_usd"),
    ("usage_data", 9, "session_id"), ("alerts", "a-4", "level"), ("alerts", "a-5", "metadata"),
    ("alerts", "a-6", "acknowledged"), ("alerts", "a-7", "title"), ("alerts", "a-8", "title"),
}
# The row whose user does not exist: PostgreSQL's per-row check names the constraint, whose column
# comes from the catalog; the set-based check after the load (as a superuser, foreign_key_check=auto)
# names it itself.
FK_REJECT = {"per_row": ("usage_data", 10, "user_id"), "auto": ("usage_data", 10, "user_id")}
FK_STAGE = {"per_row": "postgresql", "auto": "foreign_key"}


def _reject_set(rejects):
    return {(r["table"], list(r["key"].values())[0], r["column"]) for r in rejects}


@pytest.mark.parametrize("fk_check", ["auto", "per_row"])
def test_rejects_fail_the_run_and_nothing_is_written(pg_db, pg_server, tmp_path, fk_check):
    src = _bad_source(tmp_path / "daemon.db")
    failed = migrate_fails(pg_server, pg_db, src, foreign_key_check=fk_check)
    assert failed.result["foreign_key_check"] == ("after_load" if fk_check == "auto" else "per_row")
    assert "10 rows cannot be migrated, so nothing was written" in failed.msg
    assert "table alerts" in failed.msg or "table usage_data" in failed.msg
    assert counts(pg_server, pg_db) == {"users": 0, "usage_data": 0, "alerts": 0, "predictions": 0}
    report = json.load(open(failed.result["reject_report"]))
    assert _reject_set(report["rejects"]) == EXPECTED_REJECTS | {FK_REJECT[fk_check]}
    assert report["summary"]["committed"] is False
    by_key = {(r["table"], list(r["key"].values())[0]): r for r in report["rejects"]}
    assert "invalid UTF-8" in by_key[("alerts", "a-7")]["reason"] and by_key[("alerts", "a-7")]["value"] == "b'caf\\xe9'"
    assert "NUL" in by_key[("alerts", "a-8")]["reason"]
    assert by_key[("usage_data", 10)]["stage"] == FK_STAGE[fk_check] and "foreign key" in by_key[("usage_data", 10)]["reason"]
    assert "usage_data_user_id_fkey" in by_key[("usage_data", 10)]["reason"]
    assert by_key[("alerts", "a-4")]["stage"] == "postgresql" and "check constraint" in by_key[("alerts", "a-4")]["reason"]
    assert by_key[("usage_data", 9)]["value"].endswith("...")  # truncated repr
    # the sequences were not touched
    assert query(pg_server, pg_db, "SELECT last_value, is_called FROM usage_data_id_seq")[0] == (1, False)


@pytest.mark.parametrize("fk_check", ["auto", "per_row"])
def test_refused_rows_name_the_constraint_and_its_columns(pg_db, pg_server, tmp_path, fk_check):
    src = _bad_source(tmp_path / "daemon.db")
    failed = migrate_fails(pg_server, pg_db, src, foreign_key_check=fk_check)
    by_key = {(r["table"], list(r["key"].values())[0]): r for r in json.load(open(failed.result["reject_report"]))["rejects"]}
    check = by_key[("alerts", "a-4")]  # level 'critical': the CHECK constraint, whose column the catalog knows
    assert (check["stage"], check["column"], check["columns"], check["constraint"]) == ("postgresql", "level", ["level"], "alerts_level_check")
    assert check["value"] == "'critical'"
    orphan = by_key[("usage_data", 10)]  # no user 42: the foreign key, checked per row or after the load
    assert (orphan["column"], orphan["columns"], orphan["constraint"]) == ("user_id", ["user_id"], "usage_data_user_id_fkey")
    assert orphan["value"] == "'42'"
    converted = by_key[("usage_data", 6)]  # a conversion reject: its column, no constraint
    assert (converted["column"], converted["columns"], converted["constraint"]) == ("timestamp", ["timestamp"], None)
    assert {"columns", "constraint"} <= set(failed.result["rejects"][0])  # in the result too


def test_unique_and_multi_column_constraints_are_named(pg_db, pg_server, tmp_path):
    pg_server.psql("CREATE TABLE pairs (id int PRIMARY KEY, a int, b int, CONSTRAINT pairs_order CHECK (a < b));"
                   " CREATE UNIQUE INDEX pairs_a_once ON pairs (a)", pg_db)
    src = str(tmp_path / "pairs.db")
    conn = sqlite3.connect(src)
    conn.execute("CREATE TABLE pairs (id INTEGER PRIMARY KEY, a INTEGER, b INTEGER)")
    conn.executemany("INSERT INTO pairs VALUES (?, ?, ?)", [(1, 1, 2), (2, 5, 3), (3, 1, 9)])
    conn.commit()
    conn.close()
    result = migrate(pg_server, pg_db, src, tables=["pairs"], on_reject="skip")
    found = {r["key"]["id"]: r for r in result["rejects"]}
    assert (found[2]["constraint"], found[2]["columns"], found[2]["column"]) == ("pairs_order", ["a", "b"], None)
    assert found[2]["value"] == repr({"a": "5", "b": "3"})
    assert (found[3]["constraint"], found[3]["columns"], found[3]["column"]) == ("pairs_a_once", ["a"], "a")
    assert query(pg_server, pg_db, "SELECT id FROM pairs") == [(1,)]


def test_text_that_is_utf8_is_shown_as_text_beside_bytes_that_are_not(pg_db, pg_server, tmp_path):
    # a-7's title is not UTF-8, so its batch is read byte-preserving; the other values of that
    # batch are valid UTF-8 and are shown as text, not as b'...' (which the runbook reserves for bytes).
    src = _bad_source(tmp_path / "daemon.db")
    conn = sqlite3.connect(src)
    conn.execute("INSERT INTO alerts VALUES ('a-9', 1, 'info', 'Lots', NULL, '2024-01-15 10:00:00', 'lots', NULL, NULL)")
    conn.commit()
    conn.close()
    result = migrate(pg_server, pg_db, src, on_reject="skip")
    by_key = {(r["table"], list(r["key"].values())[0]): r for r in result["rejects"]}
    assert by_key[("alerts", "a-9")]["value"] == "'lots'" and by_key[("alerts", "a-6")]["value"] == "'maybe'"
    assert by_key[("alerts", "a-5")]["value"] == "'{not json'"
    assert by_key[("alerts", "a-7")]["value"] == "b'caf\\xe9'"  # not UTF-8: bytes


@pytest.mark.parametrize("fk_check", ["auto", "per_row"])
def test_skip_lands_the_other_rows_and_reports_the_rejected(pg_db, pg_server, tmp_path, fk_check):
    src = _bad_source(tmp_path / "daemon.db")
    report_path = str(tmp_path / "rejects.json")
    result = migrate(pg_server, pg_db, src, on_reject="skip", reject_report=report_path, foreign_key_check=fk_check)
    assert result["rejected_rows"] == 10 and result["reject_report"] == report_path
    tables = by_table(result)
    assert (tables["usage_data"]["rows_read"], tables["usage_data"]["rows_written"], tables["usage_data"]["rows_rejected"]) == (10, 5, 5)
    assert (tables["alerts"]["rows_read"], tables["alerts"]["rows_written"], tables["alerts"]["rows_rejected"]) == (8, 3, 5)
    assert counts(pg_server, pg_db) == {"users": 3, "usage_data": 5, "alerts": 3, "predictions": 2}
    assert all(t["rows_read"] == t["rows_written"] + t["rows_skipped"] + t["rows_rejected"] for t in result["tables"])
    assert _reject_set(json.load(open(report_path))["rejects"]) == EXPECTED_REJECTS | {FK_REJECT[fk_check]}
    assert query(pg_server, pg_db, "SELECT count(*) FROM usage_data WHERE user_id NOT IN (SELECT id FROM users)")[0][0] == 0


@pytest.mark.parametrize("fk_check", ["auto", "per_row"])
def test_self_referencing_orphans_are_rejected_the_same_either_way(pg_db, pg_server, tmp_path, fk_check):
    pg_server.psql("CREATE TABLE nodes (id int PRIMARY KEY, parent int REFERENCES nodes (id), label text)", pg_db)
    src = str(tmp_path / "nodes.db")
    conn = sqlite3.connect(src)
    conn.execute("CREATE TABLE nodes (id INTEGER PRIMARY KEY, parent INTEGER, label TEXT)")
    # 2's parent 99 is missing, so 2 goes, and then 3 (child of 2) and 4 (child of 3) have no parent either.
    conn.executemany("INSERT INTO nodes VALUES (?, ?, ?)", [(1, None, "root"), (2, 99, "a"), (3, 2, "b"), (4, 3, "c"), (5, 1, "d")])
    conn.commit()
    conn.close()
    result = migrate(pg_server, pg_db, src, tables=["nodes"], on_reject="skip", foreign_key_check=fk_check)
    assert query(pg_server, pg_db, "SELECT id FROM nodes ORDER BY id") == [(1,), (5,)]
    assert sorted(r["key"]["id"] for r in result["rejects"]) == [2, 3, 4]
    assert by_table(result)["nodes"]["rows_written"] == 2 and by_table(result)["nodes"]["rows_rejected"] == 3


# -- archive_source ---------------------------------------------------------------------


WAL_WRITER = textwrap.dedent(
    """
    import os, sqlite3, sys
    conn = sqlite3.connect(sys.argv[1])
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("INSERT INTO users VALUES (4, 'dave', NULL, '2024-01-02 00:00:00')")
    conn.commit()
    os._exit(0)  # a daemon that died: the row is in the WAL only, -wal and -shm stay behind
    """
)


def test_archive_source_renames_the_file_its_wal_and_shm_after_the_commit(pg_db, pg_server, tmp_path):
    src = make_source(tmp_path / "daemon.db")
    subprocess.run([sys.executable, "-c", WAL_WRITER, src], check=True)
    assert os.path.getsize(src + "-wal") and os.path.exists(src + "-shm")
    result = migrate(pg_server, pg_db, src, archive_source=True)
    stamp = result["backup_path"].rsplit(".", 2)[-2]  # NAME.STAMP.backup
    archived = result["archived_path"]
    assert archived == f"{src}.migrated-{stamp}" and result["changed"] is True
    assert counts(pg_server, pg_db)["users"] == 4  # the WAL's row was migrated
    assert not [name for name in os.listdir(tmp_path) if name.startswith("daemon.db") and ".migrated-" not in name
                and not name.endswith((".backup", ".rejects.json"))]  # no daemon.db, -wal or -shm left
    assert os.path.getsize(archived + "-wal") and os.path.exists(archived + "-shm")  # moved beside it, same stamp
    reopened = sqlite3.connect(archived)  # a consistent database still, its WAL included
    assert reopened.execute("SELECT count(*) FROM users").fetchone()[0] == 4
    reopened.close()
    failed = migrate_fails(pg_server, pg_db, src, archive_source=True)  # nothing serves the file any more
    assert "does not exist" in failed.msg


def test_archive_source_not_on_failure_check_mode_or_by_default(pg_db, pg_server, tmp_path):
    src = _bad_source(tmp_path / "daemon.db")
    failed = migrate_fails(pg_server, pg_db, src, archive_source=True)  # rejects, on_reject=fail: rolled back
    assert failed.result["archived_path"] is None and os.path.exists(src)
    check = make_source(tmp_path / "check.db")
    preview = migrate(pg_server, pg_db, check, check_mode=True, archive_source=True)
    assert preview["archived_path"] is None and os.path.exists(check)
    done = migrate(pg_server, pg_db, check)  # committed, but archive_source is false by default
    assert done["archived_path"] is None and os.path.exists(check)
    assert not [name for name in os.listdir(tmp_path) if ".migrated-" in name]


def test_archive_source_after_a_run_finished_earlier(pg_db, pg_server, tmp_path):
    # mode=empty recognises the tables as complete: the file's rows are in PostgreSQL, so it is archived.
    src = make_source(tmp_path / "daemon.db")
    migrate(pg_server, pg_db, src)
    again = migrate(pg_server, pg_db, src, archive_source=True)
    assert {t["status"] for t in again["tables"]} == {"already_complete"}
    assert again["changed"] is True and again["archived_path"] and os.path.exists(again["archived_path"])
    assert not os.path.exists(src)


def test_archive_source_refuses_to_replace_a_file(pg_db, pg_server, tmp_path, monkeypatch):
    src = make_source(tmp_path / "daemon.db")
    monkeypatch.setattr(mig, "utc_stamp", lambda: "20260101T000000Z")
    open(src + ".migrated-20260101T000000Z-wal", "w").close()
    open(src + "-wal", "w").close()  # an empty WAL: SQLite ignores it
    failed = migrate_fails(pg_server, pg_db, src, archive_source=True)
    assert "committed, but the source could not be archived" in failed.msg and "exists already" in failed.msg
    assert counts(pg_server, pg_db)["usage_data"] == 5  # committed all the same
    assert os.path.exists(src) and os.path.exists(src + "-wal")  # nothing renamed


# -- interruptions ----------------------------------------------------------------------


def test_interrupted_run_leaves_target_unchanged_and_rerun_completes(pg_db, pg_server, tmp_path, monkeypatch):
    src = make_source(tmp_path / "daemon.db")
    real_run = mc.TableLoader.run
    calls = []

    def run_then_die(self, items):
        calls.append(self.plan.table)
        if len(calls) == 3:  # users and alerts are loaded; die in the middle of the third table
            iterator = iter(items)
            next(iterator)
            raise ConnectionError("simulated crash")
        return real_run(self, items)

    monkeypatch.setattr(mc.TableLoader, "run", run_then_die)
    with pytest.raises(ConnectionError):
        migrate(pg_server, pg_db, src)
    monkeypatch.undo()
    assert calls == ["users", "alerts", "predictions"]
    assert counts(pg_server, pg_db) == {"users": 0, "usage_data": 0, "alerts": 0, "predictions": 0}
    result = migrate(pg_server, pg_db, src)
    assert result["rows_written"] == 13
    assert counts(pg_server, pg_db) == {"users": 3, "usage_data": 5, "alerts": 3, "predictions": 2}


KILL_RUNNER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {unit!r})
    import conftest  # the collection on sys.path
    import psycopg2
    from ansible_collections.claude_kit.stack.plugins.module_utils import migration_run as mig
    params = json.loads(sys.argv[1])
    conn = psycopg2.connect(host=params["login_unix_socket"], port=params["login_port"], user="postgres",
                            dbname=params["db"], application_name="kill-test")
    mig.migrate(params, conn)
    """
)


def test_killed_process_leaves_target_unchanged_and_rerun_completes(pg_db, pg_server, tmp_path):
    src = make_source(tmp_path / "daemon.db")
    conn = sqlite3.connect(src)  # 300,000 usage rows, so that the COPY runs long enough to be killed
    conn.execute(
        "INSERT INTO usage_data (user_id, timestamp, tokens_used, cost_usd, session_id, endpoint, created_at)"
        " WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000)"
        " SELECT 1 + i % 3, strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + i, 'unixepoch'), i, (i % 1000) / 100.0,"
        " 'sess-' || i, '/v1/messages', datetime(1700000000 + i, 'unixepoch') FROM n"
    )
    conn.commit()
    conn.close()
    args = json.dumps(params(src, pg_db, pg_server))
    proc = subprocess.Popen([sys.executable, "-c", KILL_RUNNER.format(unit=str(ROOT / "tests" / "unit")), args], cwd=ROOT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            active = query(pg_server, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kill-test'"
                           " AND query LIKE 'COPY%%usage_data%%' AND state = 'active'")[0][0]
            if active:
                break
            assert proc.poll() is None, "the migration ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("the COPY of usage_data never started")
        time.sleep(0.2)
        workers = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert workers, "usage_data is large enough to be normalised by worker processes"
    # The workers hold neither the PostgreSQL socket nor the other ends of their pipes:
    # the server sees the client go away, and they stop at their next send.
    deadline = time.time() + 10
    while time.time() < deadline and (alive(workers) or query(
            pg_server, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kill-test'")[0][0]):
        time.sleep(0.05)
    assert not alive(workers)
    assert not query(pg_server, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kill-test'")[0][0]
    assert counts(pg_server, pg_db) == {"users": 0, "usage_data": 0, "alerts": 0, "predictions": 0}
    assert index_definitions(pg_server, pg_db) == INDEXES  # dropped for the load, back with the rollback
    result = migrate(pg_server, pg_db, src)
    assert by_table(result)["usage_data"]["rows_written"] == 300005
    assert query(pg_server, pg_db, "SELECT count(*), count(DISTINCT id) FROM usage_data")[0] == (300005, 300005)


def children(pid):
    """Pids of the processes whose parent is pid."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def alive(pids):
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(pid)
        except OSError:
            pass
    return out


# -- parallel normalisation, indexes rebuilt after the load -------------------------------

INDEXES = {
    ("alerts", "alerts_pkey"), ("alerts", "idx_alerts_level"), ("alerts", "idx_alerts_timestamp"),
    ("predictions", "idx_predictions_date"), ("predictions", "predictions_pkey"),
    ("usage_data", "idx_usage_data_timestamp"), ("usage_data", "idx_usage_data_timestamp_user"),
    ("usage_data", "idx_usage_data_user_id"), ("usage_data", "usage_data_pkey"),
    ("users", "users_email_key"), ("users", "users_pkey"), ("users", "users_username_key"),
}


def index_definitions(pg, db, with_sql=False):
    rows = query(pg, db, "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    return {tuple(r) if with_sql else tuple(r[:2]) for r in rows}


def generated_source(path, rows=5000, messy=False):
    """The sample rows plus `rows` generated usage rows (ids 100 on). messy: timestamps as ISO
    text, epoch seconds and epoch milliseconds by turns, a tab in every 500th session id, and
    'not a date' as created_at of every 1999th row (rows no conversion can save)."""
    if messy:
        stamp = ("CASE i % 3 WHEN 0 THEN strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + i * 7.001, 'unixepoch')"
                 " WHEN 1 THEN 1700000000 + i ELSE (1700000000 + i) * 1000 END")
        session = "'sess-' || i || CASE WHEN i % 500 = 0 THEN char(9) || 'tab' ELSE '' END"
        created = "CASE WHEN i % 1999 = 0 THEN 'not a date' ELSE datetime(1700000000 + i, 'unixepoch') END"
    else:
        stamp = "strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + i * 7.001, 'unixepoch')"
        session, created = "'sess-' || i", "datetime(1700000000 + i, 'unixepoch')"
    src = make_source(path)
    conn = sqlite3.connect(src)
    conn.execute(
        "INSERT INTO usage_data (id, user_id, timestamp, tokens_used, cost_usd, session_id, endpoint, created_at)"
        " WITH RECURSIVE n(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM n WHERE i < 99 + ?)"
        f" SELECT i, 1 + i % 3, {stamp}, i * 3, (i % 997) / 100.0, {session}, '/v1/messages', {created} FROM n",
        (rows,),
    )
    conn.commit()
    conn.close()
    return src


def bulky_source(path, rows=6000):
    return generated_source(path, rows, messy=True)


def test_worker_processes_load_the_same_rows_in_the_same_order(pg_template, pg_server, tmp_path, monkeypatch):
    src = bulky_source(tmp_path / "daemon.db")
    one, many = fresh_db(pg_template), fresh_db(pg_template)
    single = migrate(pg_server, one, src, on_reject="skip", workers=1)
    monkeypatch.setattr(mw, "PARALLEL_MIN_ROWS", 100)
    monkeypatch.setattr(mw, "BATCH_ROWS", 700)  # about nine rowid ranges, handed out to three workers in turn
    parallel = migrate(pg_server, many, src, on_reject="skip", workers=3)
    assert by_table(single)["usage_data"]["workers"] == 1 and by_table(parallel)["usage_data"]["workers"] == 3
    assert [(t["table"], t["rows_read"], t["rows_written"], t["rows_rejected"]) for t in single["tables"]] == \
        [(t["table"], t["rows_read"], t["rows_written"], t["rows_rejected"]) for t in parallel["tables"]]
    assert by_table(parallel)["usage_data"]["rows_rejected"] == 3  # ids 1999, 3998, 5997: 'not a date'
    assert [(r["key"], r["column"], r["reason"]) for r in single["rejects"]] == \
        [(r["key"], r["column"], r["reason"]) for r in parallel["rejects"]]
    physical = "SELECT id, timestamp, session_id, created_at FROM usage_data ORDER BY ctid"
    assert query(pg_server, one, physical) == query(pg_server, many, physical)  # same values, same order
    # append through the workers: every key is there already
    again = migrate(pg_server, many, src, mode="append", on_reject="skip", workers=3)
    usage = by_table(again)["usage_data"]
    assert (usage["workers"], usage["rows_written"], usage["rows_skipped"], usage["rows_rejected"]) == (3, 0, 6002, 3)


def test_secondary_indexes_are_rebuilt_as_they_were(pg_template, pg_server, tmp_path, monkeypatch):
    src = bulky_source(tmp_path / "daemon.db")
    db = fresh_db(pg_template)
    before = index_definitions(pg_server, db, with_sql=True)
    monkeypatch.setattr(ddl, "REBUILD_MIN_ROWS", 1000)
    result = migrate(pg_server, db, src, on_reject="skip")
    assert by_table(result)["usage_data"]["indexes_rebuilt"] == [
        "idx_usage_data_timestamp", "idx_usage_data_timestamp_user", "idx_usage_data_user_id"]
    assert by_table(result)["alerts"]["indexes_rebuilt"] == []  # 3 rows: below the threshold
    assert index_definitions(pg_server, db, with_sql=True) == before  # same names and definitions
    # The planner can use them (they are valid and built from the loaded rows).
    plan = query(pg_server, db, "EXPLAIN SELECT id FROM usage_data WHERE user_id = 2")
    assert query(pg_server, db, "SELECT count(*) FROM pg_index WHERE NOT indisvalid")[0][0] == 0 and plan
    kept = migrate(pg_server, fresh_db(pg_template), src, on_reject="skip", rebuild_indexes="never")
    assert all(t["indexes_rebuilt"] == [] for t in kept["tables"])


def test_failed_run_keeps_the_indexes(pg_template, pg_server, tmp_path, monkeypatch):
    src = bulky_source(tmp_path / "daemon.db")
    db = fresh_db(pg_template)
    before = index_definitions(pg_server, db, with_sql=True)
    monkeypatch.setattr(ddl, "REBUILD_MIN_ROWS", 1000)
    failed = migrate_fails(pg_server, db, src)  # on_reject=fail: the 'not a date' rows fail the run
    assert failed.result["rejected_rows"] == 3
    assert index_definitions(pg_server, db, with_sql=True) == before
    assert counts(pg_server, db)["usage_data"] == 0


def test_indexes_stay_when_the_role_does_not_own_the_tables(pg_template, pg_server, tmp_path, app_role, monkeypatch):
    src = bulky_source(tmp_path / "daemon.db", rows=2000)
    db = fresh_db(pg_template)
    monkeypatch.setattr(ddl, "REBUILD_MIN_ROWS", 10)
    result = migrate(pg_server, db, src, user=app_role, on_reject="skip")
    assert all(t["indexes_rebuilt"] == [] for t in result["tables"])
    assert index_definitions(pg_server, db) == INDEXES


def test_expression_indexes_stay_so_a_row_they_refuse_is_rejected_alone(pg_template, pg_server, tmp_path, monkeypatch):
    db = fresh_db(pg_template)
    pg_server.psql("CREATE INDEX alerts_threshold ON alerts (((metadata->>'threshold')::int))", db)
    alerts = ALERTS[:1] + [(f"b-{n}", 1, "info", "t", None, "2024-01-15 10:00:00", 0, '{"threshold": %d}' % n, None)
                           for n in range(2000)] + [("b-high", 1, "info", "t", None, "2024-01-15 10:00:00", 0, '{"threshold": "high"}', None)]
    src = make_source(tmp_path / "daemon.db", alerts=alerts)
    monkeypatch.setattr(ddl, "REBUILD_MIN_ROWS", 100)
    result = migrate(pg_server, db, src, on_reject="skip")
    entry = by_table(result)["alerts"]
    assert entry["indexes_rebuilt"] == ["idx_alerts_level", "idx_alerts_timestamp"]  # not the expression index
    assert (entry["rows_written"], entry["rows_rejected"]) == (2001, 1)
    assert result["rejects"][0]["key"] == {"id": "b-high"} and "high" in result["rejects"][0]["reason"]


def test_workers_read_up_to_the_largest_rowid(pg_template, pg_server, tmp_path, monkeypatch):
    src = bulky_source(tmp_path / "daemon.db", rows=1000)
    conn = sqlite3.connect(src)
    conn.execute("INSERT INTO usage_data (id, user_id, timestamp) VALUES (9223372036854775807, 1, '2024-01-01 00:00:00')")
    conn.commit()
    conn.close()
    monkeypatch.setattr(mw, "PARALLEL_MIN_ROWS", 100)
    result = migrate(pg_server, fresh_db(pg_template), src, on_reject="skip", workers=2)
    usage = by_table(result)["usage_data"]
    assert usage["workers"] == 2 and usage["rows_read"] == 1006
    assert {"key": {"id": 9223372036854775807}, "column": "id"}.items() <= \
        next(r for r in result["rejects"] if r["column"] == "id").items()  # out of range for integer, rejected alone


def test_reject_report_names_the_copy_and_its_sha256(pg_db, pg_server, tmp_path):
    src = bulky_source(tmp_path / "daemon.db", rows=2000)
    result = migrate(pg_server, pg_db, src, on_reject="skip")
    with open(result["reject_report"], encoding="utf-8") as handle:
        report = json.load(handle)
    digest = hashlib.sha256(open(result["backup_path"], "rb").read()).hexdigest()
    assert report["backup"] == result["backup_path"] and report["backup_sha256"] == result["backup_sha256"] == digest
    assert report["rejected_rows"] == {"usage_data": 1}


def test_negative_workers_is_refused_before_anything_happens(pg_db, pg_server, tmp_path):
    src = make_source(tmp_path / "daemon.db")
    failed = migrate_fails(pg_server, pg_db, src, workers=-1)
    assert "workers must be 0" in failed.msg and failed.result["backup_path"] is None
    assert sorted(os.listdir(tmp_path)) == ["daemon.db"]


# -- append and replace -----------------------------------------------------------------


def test_append_skips_existing_keys_and_is_safe_to_rerun(pg_db, pg_server, tmp_path):
    first = make_source(tmp_path / "first.db", usage=USAGE[:3], alerts=ALERTS[:1])
    migrate(pg_server, pg_db, first)
    # The fallback file: the same history plus what the daemon wrote while PostgreSQL was away.
    later = make_source(tmp_path / "later.db")
    result = migrate(pg_server, pg_db, later, mode="append")
    tables = by_table(result)
    assert (tables["usage_data"]["rows_written"], tables["usage_data"]["rows_skipped"]) == (2, 3)
    assert (tables["alerts"]["rows_written"], tables["alerts"]["rows_skipped"]) == (2, 1)
    assert (tables["users"]["rows_written"], tables["users"]["rows_skipped"]) == (0, 3)
    assert counts(pg_server, pg_db) == {"users": 3, "usage_data": 5, "alerts": 3, "predictions": 2}
    assert all(t["rows_read"] == t["rows_written"] + t["rows_skipped"] + t["rows_rejected"] for t in result["tables"])
    again = migrate(pg_server, pg_db, later, mode="append")
    assert again["changed"] is False and again["rows_written"] == 0
    assert sum(t["rows_skipped"] for t in again["tables"]) == 13


def test_append_keeps_rows_changed_in_postgresql(pg_db, pg_server, tmp_path):
    src = make_source(tmp_path / "daemon.db")
    migrate(pg_server, pg_db, src)
    query(pg_server, pg_db, "UPDATE usage_data SET tokens_used = 1 WHERE id = 1")
    migrate(pg_server, pg_db, src, mode="append")
    assert query(pg_server, pg_db, "SELECT tokens_used FROM usage_data WHERE id = 1")[0][0] == 1


def test_replace_truncates_and_reloads_in_one_transaction(pg_db, pg_server, tmp_path):
    src = make_source(tmp_path / "daemon.db")
    query(pg_server, pg_db, "INSERT INTO users (id, username) VALUES (50, 'old'); "
          "INSERT INTO usage_data (id, user_id, timestamp) VALUES (77, 50, now())")
    result = migrate(pg_server, pg_db, src, mode="replace")
    assert result["changed"] is True
    assert counts(pg_server, pg_db) == {"users": 3, "usage_data": 5, "alerts": 3, "predictions": 2}
    assert query(pg_server, pg_db, "SELECT count(*) FROM users WHERE id = 50")[0][0] == 0
    # a failing replace leaves the old rows in place
    bad = make_source(tmp_path / "bad.db", usage=BAD_USAGE)
    migrate_fails(pg_server, pg_db, bad, mode="replace")
    assert counts(pg_server, pg_db) == {"users": 3, "usage_data": 5, "alerts": 3, "predictions": 2}


# -- columns and privileges ---------------------------------------------------------------


def test_missing_and_extra_columns(pg_db, pg_server, tmp_path):
    src = str(tmp_path / "cols.db")
    conn = sqlite3.connect(src)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT, nickname TEXT)")
    conn.execute("INSERT INTO users VALUES (1, 'alice', 'al')")
    conn.commit()
    conn.close()
    result = migrate(pg_server, pg_db, src, tables=["users"])
    users = by_table(result)["users"]
    assert users["missing_columns"] == ["email", "created_at"] and users["extra_columns"] == ["nickname"]
    assert any("nickname" in w for w in result["plan_warnings"]) and any("email, created_at" in w for w in result["plan_warnings"])
    # created_at got its default
    assert query(pg_server, pg_db, "SELECT username, created_at IS NOT NULL FROM users") == [("alice", True)]

    src2 = str(tmp_path / "nouser.db")
    conn = sqlite3.connect(src2)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    conn.execute("INSERT INTO users VALUES (1, 'a@x')")
    conn.commit()
    conn.close()
    failed = migrate_fails(pg_server, pg_db, src2, tables=["users"], mode="replace")
    assert "column username (character varying(255)) is NOT NULL without a default" in failed.msg
    assert query(pg_server, pg_db, "SELECT username FROM users") == [("alice",)]  # nothing written
    failed = migrate_fails(pg_server, pg_db, src2, tables=["nope"])
    assert "table public.nope does not exist in PostgreSQL" in failed.msg


@pytest.fixture(scope="session")
def app_role(pg_template):
    """A role with the kit's claude_app privileges: DML, USAGE/SELECT on sequences, no TEMP, no TRUNCATE, no DDL."""
    pg_template.psql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kit_app') THEN CREATE ROLE kit_app LOGIN; END IF; END $$;"
    )
    pg_template.psql(
        "REVOKE ALL ON SCHEMA public FROM PUBLIC; GRANT USAGE ON SCHEMA public TO kit_app;"
        " GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO kit_app;"
        " GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO kit_app;",
        TEMPLATE,
    )
    return "kit_app"


def test_app_role_without_ddl_temp_or_setval(pg_db, pg_server, tmp_path, app_role):
    pg_server.psql(f'REVOKE TEMPORARY ON DATABASE "{pg_db}" FROM PUBLIC', "postgres")
    src = make_source(tmp_path / "daemon.db")
    result = migrate(pg_server, pg_db, src, user=app_role)
    assert counts(pg_server, pg_db) == {"users": 3, "usage_data": 5, "alerts": 3, "predictions": 2}
    assert (result["foreign_key_check"], result["foreign_key_check_reason"]) == ("per_row", "the role is not a superuser")
    # no UPDATE on the sequences: moved with nextval()
    assert {s["table"]: (s["action"], s["next_value"]) for s in result["sequences"]}["usage_data"] == ("nextval", 6)
    conn = connect(pg_server, pg_db, app_role)
    cur = conn.cursor()
    cur.execute("INSERT INTO usage_data (user_id, timestamp) VALUES (1, now()) RETURNING id")
    assert cur.fetchone()[0] == 6
    conn.rollback()
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        cur.execute("CREATE TEMP TABLE t (x int)")
    conn.close()
    later = make_source(tmp_path / "later.db", usage=USAGE + [(9, 1, "2024-03-01 00:00:00", 1, 1, 1, 1, 0, 1, None, None, None)])
    appended = migrate(pg_server, pg_db, later, user=app_role, mode="append")
    assert by_table(appended)["usage_data"]["rows_written"] == 1
    failed = migrate_fails(pg_server, pg_db, src, user=app_role, mode="replace")
    assert "mode=replace needs TRUNCATE on table users" in failed.msg


# -- through Ansible, for real --------------------------------------------------------------


def ansible_env(**extra):
    """The environment of an ansible command: the repository's ansible.cfg, and the collection
    claude_kit.stack where this session imports it from (conftest links it if need be)."""
    import ansible_collections.claude_kit

    roots = [str(pathlib.Path(path).parents[1]) for path in ansible_collections.claude_kit.__path__]
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
                ANSIBLE_COLLECTIONS_PATH=os.pathsep.join(roots + [str(ROOT / "collections")]), **extra)


def ansible(module, args, check=False):
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    cmd = [(shutil.which("ansible") or os.path.join(os.path.dirname(sys.executable), "ansible")), "localhost", "-c", "local", "-i", "localhost,",
           "-m", f"claude_kit.stack.{module}", "-a", json.dumps(args),
           "-e", f"ansible_python_interpreter={sys.executable}"] + (["--check"] if check else [])
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_module_through_ansible(pg_db, pg_server, tmp_path):
    src = make_source(tmp_path / "daemon.db")
    args = {"src": src, "db": pg_db, "login_unix_socket": pg_server.dir, "login_port": pg_server.port,
            "login_password": "not-a-real-secret", "backup_dir": str(tmp_path)}
    preview = ansible("sqlite_to_postgres", args, check=True)
    assert preview.get("failed") is not True, preview.get("msg")
    assert preview["changed"] is True and preview["rows_written"] == 13
    assert counts(pg_server, pg_db)["usage_data"] == 0
    done = ansible("sqlite_to_postgres", args)
    assert done.get("failed") is not True, done.get("msg")
    assert done["changed"] is True and done["rows_written"] == 13
    assert done["invocation"]["module_args"]["login_password"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert not done.get("deprecations") and not done.get("warnings")
    assert os.path.exists(done["backup_path"])
    again = ansible("sqlite_to_postgres", args)
    assert again["changed"] is False
    failed = ansible("sqlite_to_postgres", dict(args, src=str(tmp_path / "missing.db")))
    assert failed["failed"] is True and "missing.db does not exist" in failed["msg"]
