"""The two stores behind the unified API: PostgreSQL (pooled) and the SQLite file.

Both expose ping / query / insert / select / update with the same arguments
and return rows as dicts of the same Python types (datetime, date, Decimal,
bool, dict), so callers cannot tell which one answered.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import os
import sqlite3
import threading
import uuid

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from . import schema, sqlbuild
from .errors import CommitInDoubt, Conflict, ReadOnlyQuery, Rejected, StoreUnavailable
from .pool import Pool

log = logging.getLogger("claude_daemon.db")

# libpq statement timeout: a query that hangs (server overloaded, locks) fails
# instead of holding a pool slot for ever.
STATEMENT_TIMEOUT_MS = 15000
# SQLSTATE classes that mean "the connection is gone", not "the query was wrong":
# 08 connection exception; 57P01-03 admin/crash shutdown, cannot connect now.
_CONNECTION_SQLSTATES = ("57P01", "57P02", "57P03")


def is_connection_error(exc, conn=None):
    if isinstance(exc, psycopg2.InterfaceError):
        return True
    if conn is not None and getattr(conn, "closed", 0):
        return True
    if isinstance(exc, psycopg2.OperationalError):
        code = exc.pgcode
        return code is None or code.startswith("08") or code in _CONNECTION_SQLSTATES
    return False


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _adapt_pg(table, name, value):
    if value is not None and schema.TABLES[table][name].kind == "json":
        return psycopg2.extras.Json(value)
    return value


def _adapt_pg_param(value):
    return psycopg2.extras.Json(value) if isinstance(value, (dict, list)) else value


class PgStore:
    name = "postgresql"

    def __init__(self, cfg):
        self.cfg = cfg
        params = {
            # One host, or every host of a replicated cluster (libpq tries them
            # in turn; target_session_attrs picks the one that takes writes).
            "host": ",".join(cfg.db_hosts),
            "port": ",".join(str(p) for p in cfg.db_ports),
            "dbname": cfg.db_name,
            "user": cfg.db_user,
            "connect_timeout": cfg.db_connect_timeout,
            "application_name": "claude-daemon",
            # Timestamps are stored without time zone and mean UTC: make
            # CURRENT_TIMESTAMP defaults UTC too, whatever the server's zone.
            "options": f"-c TimeZone=UTC -c statement_timeout={STATEMENT_TIMEOUT_MS}",
            # Notice a dead server on an idle pooled connection within ~25 s.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            # A host that vanishes (killed, cut off) sends no reset: a statement in
            # flight would wait for TCP's retransmissions (~15 min); this fails it
            # after 10 s instead, so the request falls back to SQLite.
            "tcp_user_timeout": 10000,
        }
        if cfg.db_target_session_attrs:
            params["target_session_attrs"] = cfg.db_target_session_attrs
        if cfg.db_password:
            params["password"] = cfg.db_password
        if cfg.db_sslmode:
            params["sslmode"] = cfg.db_sslmode
        if cfg.db_sslrootcert:
            params["sslrootcert"] = cfg.db_sslrootcert
        self._params = params
        self.pool = Pool(self._connect, cfg.db_pool_max, cfg.db_idle_timeout, cfg.db_connect_timeout,
                         reset=self._reset)

    def _connect(self):
        return psycopg2.connect(**self._params)

    @staticmethod
    def _reset(conn):
        if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            conn.rollback()

    def run(self, work, readonly=False):
        """Run work(cursor) in one transaction and commit.

        A connection error before COMMIT is retried once on a fresh connection
        (pooled connections go stale when the server restarts), then raised as
        StoreUnavailable. One during COMMIT raises CommitInDoubt: the write
        may have landed, so it must not simply be retried.
        """
        for attempt in (1, 2):
            try:
                conn = self.pool.acquire()
            except psycopg2.Error as exc:
                raise StoreUnavailable(_first_line(exc)) from exc
            committing = False
            try:
                with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    if readonly:
                        cur.execute("SET TRANSACTION READ ONLY")
                    result = work(cur)
                committing = True
                conn.commit()
            except psycopg2.Error as exc:
                # With target_session_attrs (several hosts, a replicated cluster),
                # a write refused as read-only reached a server that is a standby
                # now (a failover or switchover moved the primary): the
                # connection is the wrong one, not the write; a new one finds the
                # primary. In a read-only transaction the same error means
                # query() tried to write; with one host and no target it is the
                # server's own setting, reported as before.
                broken = is_connection_error(exc, conn) or (
                    self.cfg.db_target_session_attrs is not None and not readonly
                    and isinstance(exc, psycopg2.errors.ReadOnlySqlTransaction))
                self.pool.release(conn, discard=broken)
                if not broken:
                    raise _translate(exc) from exc
                self.pool.discard_idle()
                if committing:
                    raise CommitInDoubt(_first_line(exc)) from exc
                if attempt == 2:
                    raise StoreUnavailable(_first_line(exc)) from exc
                log.info("postgresql connection lost (%s); retrying once on a new connection", _first_line(exc))
                continue
            except BaseException:
                self.pool.release(conn, discard=True)
                raise
            self.pool.release(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the unified API -----------------------------------------------------------------
    def ping(self):
        self.run(lambda cur: cur.execute("SELECT 1"), readonly=True)

    def query(self, sql, params=()):
        params = list(params)
        text = sqlbuild.translate_placeholders(sql, len(params), "pyformat")
        args = {f"p{i}": _adapt_pg_param(v) for i, v in enumerate(params, 1)}

        def work(cur):
            cur.execute(text, args)
            return [dict(r) for r in cur.fetchall()] if cur.description else []

        # Read-only: every write goes through insert()/update(), which the
        # fallback can record and replay.
        return self.run(work, readonly=True)

    def insert(self, table, row, **_):
        sql, params = sqlbuild.insert(table, row, "%s", _adapt_pg)

        def work(cur):
            cur.execute(sql, params)
            return dict(cur.fetchone())

        return self.run(work)

    def select(self, table, conditions, order, limit):
        sql, params = sqlbuild.select(table, conditions, order, limit, "%s", _adapt_pg)

        def work(cur):
            cur.execute(sql, params)
            return [dict(r) for r in cur.fetchall()]

        return self.run(work, readonly=True)

    def update(self, table, values, conditions, **_):
        sql, params = sqlbuild.update(table, values, conditions, "%s", _adapt_pg)

        def work(cur):
            cur.execute(sql, params)
            return [dict(r) for r in cur.fetchall()]

        return self.run(work)

    def close(self):
        self.pool.close()


def _translate(exc):
    if isinstance(exc, psycopg2.errors.ReadOnlySqlTransaction):
        return ReadOnlyQuery("query() is read-only; write with insert() or update()")
    if isinstance(exc, psycopg2.errors.UniqueViolation):
        return Conflict(exc.diag.message_primary or "unique constraint violated")
    if isinstance(exc, (psycopg2.IntegrityError, psycopg2.DataError)):
        return Rejected(exc.diag.message_primary or _first_line(exc))
    return exc


# -- SQLite ------------------------------------------------------------------------------
SQLITE_INTERNAL_DDL = (
    # Every write made while PostgreSQL is unreachable, in order, until it has
    # been copied into PostgreSQL (see fallback.py).
    """CREATE TABLE IF NOT EXISTS fallback_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        sync_id TEXT NOT NULL UNIQUE,
        operation TEXT NOT NULL CHECK (operation IN ('insert', 'update')),
        table_name TEXT NOT NULL,
        local_id TEXT,
        payload TEXT NOT NULL CHECK (json_valid(payload)),
        in_doubt INTEGER NOT NULL DEFAULT 0 CHECK (in_doubt IN (0, 1)),
        written_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
    )""",
    "CREATE TABLE IF NOT EXISTS daemon_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
# sqlite3.OperationalError messages that mean the file cannot be used at all,
# as opposed to a mistake in a query.
_SQLITE_UNAVAILABLE = ("unable to open", "disk i/o", "readonly database", "database or disk is full",
                       "database is locked", "not a database")


def _adapt_sqlite_param(value):
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dt.datetime):
        return schema.utc_naive(value).strftime(schema.SQLITE_TS_FORMAT)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


class SqliteStore:
    name = "sqlite"

    def __init__(self, path):
        self.path = path
        self._conn = None
        self._lock = threading.RLock()
        self.origin = None  # a UUID naming this file in PostgreSQL's fallback_sync_log

    def _open_locked(self):
        if self._conn is not None:
            return self._conn
        try:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {_first_line(exc)}") from exc
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a write acknowledged during a fallback survives a power cut.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("BEGIN IMMEDIATE")
            for statement in schema.sqlite_ddl() + list(SQLITE_INTERNAL_DDL):
                conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO daemon_meta (key, value) VALUES ('origin', ?)", (str(uuid.uuid4()),))
            self.origin = conn.execute("SELECT value FROM daemon_meta WHERE key = 'origin'").fetchone()[0]
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreUnavailable(f"cannot use {self.path}: {_first_line(exc)}") from exc
        log.info("sqlite file ready path=%s", self.path)
        self._conn = conn
        return conn

    def run(self, work, write=False, readonly=False):
        """Run work(connection) in one transaction, serialised within the process."""
        with self._lock:
            conn = self._open_locked()
            try:
                try:
                    if readonly:
                        conn.execute("PRAGMA query_only = ON")
                    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                finally:
                    if readonly:
                        conn.execute("PRAGMA query_only = OFF")
            except sqlite3.IntegrityError as exc:
                msg = _first_line(exc)
                if "UNIQUE" in msg or "PRIMARY KEY" in msg:
                    raise Conflict(msg) from exc
                raise Rejected(msg) from exc
            except sqlite3.OperationalError as exc:
                msg = _first_line(exc)
                if readonly and "readonly database" in msg:
                    raise ReadOnlyQuery("query() is read-only; write with insert() or update()") from exc
                if any(s in msg.lower() for s in _SQLITE_UNAVAILABLE):
                    self._drop_locked()
                    raise StoreUnavailable(f"{self.path}: {msg}") from exc
                raise
            except sqlite3.DatabaseError as exc:
                self._drop_locked()
                raise StoreUnavailable(f"{self.path}: {_first_line(exc)}") from exc
            return result

    def _drop_locked(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None

    @staticmethod
    def _rows(table, cursor):
        names = [d[0] for d in cursor.description]
        return [{n: schema.from_sqlite(table, n, v) for n, v in zip(names, r)} for r in cursor.fetchall()]

    # -- the unified API -----------------------------------------------------------------
    def ping(self):
        self.run(lambda conn: conn.execute("SELECT 1").fetchone())

    def origin_id(self):
        with self._lock:
            self._open_locked()
            return self.origin

    def query(self, sql, params=()):
        params = [_adapt_sqlite_param(v) for v in params]
        text = sqlbuild.translate_placeholders(sql, len(params), "qmark")

        def work(conn):
            cur = conn.execute(text, params)
            if cur.description is None:
                return []
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

        return self.run(work, readonly=True)

    def insert(self, table, row, record=False, in_doubt=False):
        sql, params = sqlbuild.insert(table, row, "?", schema.to_sqlite)

        def work(conn):
            result = self._rows(table, conn.execute(sql, params))[0]
            if record:
                self._record(conn, "insert", table, str(result["id"]), {"values": row}, in_doubt)
            return result

        return self.run(work, write=True)

    def select(self, table, conditions, order, limit):
        sql, params = sqlbuild.select(table, conditions, order, limit, "?", schema.to_sqlite)
        return self.run(lambda conn: self._rows(table, conn.execute(sql, params)))

    def update(self, table, values, conditions, record=False, in_doubt=False):
        sql, params = sqlbuild.update(table, values, conditions, "?", schema.to_sqlite)

        def work(conn):
            rows = self._rows(table, conn.execute(sql, params))
            # In doubt (PostgreSQL may have applied it, SQLite may not hold the
            # row), the update is recorded anyway: replaying an UPDATE is harmless.
            if record and (rows or in_doubt):
                where = [[name, op, value] for name, op, value in conditions]
                self._record(conn, "update", table, None, {"values": values, "where": where}, in_doubt)
            return rows

        return self.run(work, write=True)

    # -- the outbox ----------------------------------------------------------------------
    @staticmethod
    def _record(conn, operation, table, local_id, payload, in_doubt):
        portable = _portable(payload)
        conn.execute(
            "INSERT INTO fallback_outbox (sync_id, operation, table_name, local_id, payload, in_doubt) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (str(uuid.uuid4()), operation, table, local_id, json.dumps(portable, sort_keys=True), int(in_doubt)),
        )

    def outbox_batch(self, limit):
        def work(conn):
            cur = conn.execute(
                "SELECT seq, sync_id, operation, table_name, local_id, payload, in_doubt, written_at "
                "FROM fallback_outbox ORDER BY seq LIMIT ?", (limit,))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

        return self.run(work)

    def outbox_count(self):
        return self.run(lambda conn: conn.execute("SELECT count(*) FROM fallback_outbox").fetchone()[0])

    def outbox_delete(self, seqs):
        def work(conn):
            conn.executemany("DELETE FROM fallback_outbox WHERE seq = ?", [(s,) for s in seqs])

        self.run(work, write=True)

    def close(self):
        with self._lock:
            self._drop_locked()


def _portable(payload):
    values = {k: schema.to_portable(v) for k, v in payload["values"].items()}
    out = {"values": values}
    if "where" in payload:
        out["where"] = [[n, op, schema.to_portable(v)] for n, op, v in payload["where"]]
    return out
