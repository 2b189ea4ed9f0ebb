"""The identifier whitelist, value checks, placeholders and the SQLite translation."""

import datetime as dt
import decimal
import sqlite3

import psycopg2
import pytest

from claude_daemon import schema, sqlbuild
from claude_daemon.schema import InvalidIdentifier, InvalidValue

from .daemon_helpers import APP, APP_PASSWORD, make_config

PG_KIND = {"serial": "integer", "int": "integer", "varchar": "character varying", "text": "text",
           "timestamp": "timestamp without time zone", "bool": "boolean", "json": "jsonb",
           "decimal": "numeric", "date": "date"}


def test_whitelist_matches_the_real_schema(pg_db):
    """schema.TABLES is what files/schema.sql creates: same columns, types, lengths, nullability."""
    rows = pg_db.psql(
        "SELECT table_name, column_name, data_type, coalesce(character_maximum_length, -1), "
        "coalesce(numeric_precision, -1), coalesce(numeric_scale, -1), is_nullable, coalesce(column_default, '') "
        "FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name IN ('users', 'usage_data', 'alerts', 'predictions') ORDER BY table_name, ordinal_position")
    actual = {}
    for line in rows.strip().splitlines():
        table, name, kind, length, precision, scale, nullable, default = line.split("|")
        actual.setdefault(table, {})[name] = (kind, int(length), int(precision), int(scale), nullable, default)
    assert set(actual) == set(schema.TABLES)
    for table, cols in schema.TABLES.items():
        assert list(actual[table]) == list(cols), table
        for name, col in cols.items():
            kind, length, precision, scale, nullable, default = actual[table][name]
            assert kind == PG_KIND[col.kind], (table, name)
            if col.kind == "varchar":
                assert length == col.length, (table, name)
            if col.kind == "decimal":
                assert (precision, scale) == (col.precision, col.scale), (table, name)
            assert (nullable == "NO") == (col.not_null or col.primary_key), (table, name)
            assert default.startswith("nextval(") == (col.kind == "serial"), (table, name)


INJECTED_TABLES = ["alerts; DROP TABLE users", 'alerts"', "public.alerts", "pg_catalog.pg_roles", "ALERTS",
                   "alerts --", "", None, 42]
INJECTED_COLUMNS = ["id = id OR 1=1 --", 'title"', "title; DROP TABLE alerts", "(SELECT 1)", "Title", "level "]
INJECTED_ORDERS = ["timestamp; DROP TABLE alerts", "timestamp DESC NULLS FIRST", "(SELECT 1)", "timestamp DESC --",
                   "id, (SELECT pg_sleep(1))", "1", "random()", "timestamp DESCENDING", "title COLLATE \"C\"",
                   "nope", [("id", "DESC; DROP TABLE alerts")], [("id; --", "ASC")]]


@pytest.mark.parametrize("name", INJECTED_TABLES)
def test_unknown_tables_are_refused(name):
    with pytest.raises(InvalidIdentifier):
        schema.table(name)


@pytest.mark.parametrize("name", INJECTED_COLUMNS)
def test_unknown_columns_are_refused(name):
    with pytest.raises(InvalidIdentifier):
        schema.column("alerts", name)


@pytest.mark.parametrize("spec", INJECTED_ORDERS)
def test_bad_order_by_is_refused(spec):
    with pytest.raises(InvalidIdentifier):
        schema.parse_order_by("alerts", spec)


def test_order_by_is_parsed():
    assert schema.parse_order_by("alerts", "timestamp desc, id") == [("timestamp", "DESC"), ("id", "ASC")]
    assert schema.parse_order_by("alerts", [("level", "ASC")]) == [("level", "ASC")]
    assert schema.parse_order_by("alerts", None) == []


@pytest.mark.parametrize("where", [{"id": ("LIKE", "%")}, {"id": ("= 1 OR 1=1 --", "x")}, {"id": ("OR", 1)},
                                   {"metadata": {"a": 1}}, {"title; --": "x"}, ["id", "x"]])
def test_bad_where_is_refused(where):
    with pytest.raises((InvalidIdentifier, InvalidValue)):
        sqlbuild.normalize_where("alerts", where)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_injection_attempts_through_the_api_change_nothing(backend, pg, tmp_path, databases):
    env = pg.env(DATABASE_PATH=tmp_path / "f.db") if backend == "postgresql" else {
        "DB_TYPE": "sqlite", "DATABASE_PATH": str(tmp_path / "f.db")}
    db = databases(make_config(env))
    evil = "x'); DROP TABLE alerts; --"
    db.insert("alerts", {"id": "a1", "level": "info", "title": evil, "message": "$1 %s %(x)s ?",
                         "timestamp": dt.datetime(2024, 1, 1)})
    for name in INJECTED_TABLES:
        with pytest.raises(InvalidIdentifier):
            db.select(name)
    for name in INJECTED_COLUMNS:
        with pytest.raises(InvalidIdentifier):
            db.select("alerts", {name: "x"})
        with pytest.raises(InvalidIdentifier):
            db.update("alerts", {name: "x"}, {"id": "a1"})
        with pytest.raises(InvalidIdentifier):
            db.insert("alerts", {name: "x"})
    for spec in INJECTED_ORDERS:
        with pytest.raises(InvalidIdentifier):
            db.select("alerts", order_by=spec)
    with pytest.raises(InvalidValue):
        db.update("alerts", {"title": "everything"}, {})  # no WHERE: refused, never the whole table
    rows = db.select("alerts", {"title": evil})
    assert [r["title"] for r in rows] == [evil] and rows[0]["message"] == "$1 %s %(x)s ?"
    assert db.select("alerts", {"id": "a1' OR '1'='1"}) == []
    assert len(db.select("alerts")) == 1


def test_placeholders_are_translated_outside_quotes_only():
    sql = "SELECT '$1 %', \"a$2\" -- $1 %\n FROM t WHERE a = $1 AND b LIKE 'x%' AND c = $2 /* $2 */"
    assert sqlbuild.translate_placeholders(sql, 2, "qmark") == (
        "SELECT '$1 %', \"a$2\" -- $1 %\n FROM t WHERE a = ?1 AND b LIKE 'x%' AND c = ?2 /* $2 */")
    assert sqlbuild.translate_placeholders(sql, 2, "pyformat") == (
        "SELECT '$1 %%', \"a$2\" -- $1 %%\n FROM t WHERE a = %(p1)s AND b LIKE 'x%%' AND c = %(p2)s /* $2 */")
    assert sqlbuild.translate_placeholders("SELECT $2, $1, $1", 2, "qmark") == "SELECT ?2, ?1, ?1"
    for bad, n in [("SELECT $1", 0), ("SELECT $2", 2), ("SELECT 'open", 0), ("SELECT 1", 1), ("SELECT /*", 0)]:
        with pytest.raises(ValueError):
            sqlbuild.translate_placeholders(bad, n, "qmark")


def test_values_are_checked_against_their_columns():
    ok = schema.coerce_row("usage_data", {"cost_usd": "1.23456", "timestamp": "2024-05-01T12:00:00+02:00",
                                          "tokens_used": 5})
    assert ok["cost_usd"] == decimal.Decimal("1.2346")
    assert ok["timestamp"] == dt.datetime(2024, 5, 1, 10, 0)  # stored as naive UTC
    bad = [("alerts", "title", "x" * 256), ("alerts", "level", "critical"), ("alerts", "title", None),
           ("alerts", "title", "nul\x00"), ("alerts", "metadata", {"k": float("nan")}),
           ("alerts", "metadata", {"k": "\ud800"}), ("alerts", "acknowledged", "yes"),
           ("usage_data", "tokens_used", 2**31), ("usage_data", "tokens_used", True),
           ("usage_data", "cost_usd", "1e10"), ("usage_data", "cost_usd", "NaN"),
           ("usage_data", "timestamp", "yesterday"), ("predictions", "date", "2024-13-01")]
    for table, column, value in bad:
        with pytest.raises(InvalidValue):
            schema.coerce(table, column, value)


def test_sqlite_translation_enforces_what_postgresql_enforces(tmp_path):
    """What PostgreSQL would refuse, the SQLite file refuses too, so no fallback
    write can be impossible to copy later."""
    conn = sqlite3.connect(tmp_path / "t.db")
    conn.execute("PRAGMA foreign_keys = ON")
    for statement in schema.sqlite_ddl():
        conn.execute(statement)
    conn.execute("INSERT INTO alerts (id, level, title, timestamp) VALUES ('a', 'info', 't', '2024-01-01 00:00:00')")
    refused = [
        "INSERT INTO alerts (id, level, title, timestamp) VALUES ('b', 'critical', 't', '2024-01-01 00:00:00')",
        f"INSERT INTO alerts (id, level, title, timestamp) VALUES ('b', 'info', '{'x' * 256}', '2024-01-01')",
        "INSERT INTO alerts (id, level, title, timestamp) VALUES ('b', 'info', 't', 'not a time')",
        "INSERT INTO alerts (id, level, title, timestamp) VALUES ('a', 'info', 't', '2024-01-01')",
        "INSERT INTO alerts (id, level, title, timestamp, metadata) VALUES ('b', 'info', 't', '2024-01-01', '{x')",
        "INSERT INTO alerts (id, level, title, timestamp, acknowledged) VALUES ('b', 'info', 't', '2024-01-01', 2)",
        "INSERT INTO alerts (id, level, title, timestamp, user_id) VALUES ('b', 'info', 't', '2024-01-01', 99)",
        "INSERT INTO usage_data (tokens_used) VALUES (2147483648)",
        "INSERT INTO usage_data (cost_usd) VALUES (1000000)",
        "INSERT INTO predictions (date) VALUES ('2024-02-30')",
        "INSERT INTO predictions (date, confidence) VALUES ('2024-02-03', 10)",
    ]
    for statement in refused:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(statement)


def test_the_app_role_has_no_ddl(pg_db):
    """The least-privilege set-up is real: the daemon's role can write rows, not change the schema."""
    conn = psycopg2.connect(host="127.0.0.1", port=pg_db.server.port, dbname=pg_db.name, user=APP,
                            password=APP_PASSWORD)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM fallback_sync_log")  # covered by the default privileges
            for ddl in ("CREATE TABLE t (x int)", "ALTER TABLE alerts ADD COLUMN x int", "DROP TABLE alerts",
                        "TRUNCATE alerts", "CREATE TEMP TABLE t (x int)"):
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(ddl)
    finally:
        conn.close()
