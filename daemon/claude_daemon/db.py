"""The connection manager (the guide's DatabaseConnection): PostgreSQL first,
the SQLite file when PostgreSQL is unreachable, one API for both.

    db = Database(cfg); db.start()
    db.insert("alerts", {...}) -> the row as stored
    db.select("alerts", {"level": "warning"}, order_by="timestamp DESC", limit=10)
    db.update("alerts", {"acknowledged": True}, {"id": alert_id}) -> updated rows
    db.query("SELECT count(*) AS n FROM usage_data WHERE timestamp >= $1", [since])

Names are checked against schema.TABLES and quoted; values are always
parameters. query() runs read-only on both stores, so every write goes
through insert()/update() and can be recorded for the fallback copy.

Modes: "postgresql", or "sqlite" (DB_TYPE=sqlite, or the fallback while
PostgreSQL is unreachable). A connection error on any PostgreSQL operation
switches to the fallback and the operation is served by SQLite. A background
thread probes PostgreSQL every RECONCILE_INTERVAL, copies the fallback's
writes (fallback.drain) and switches back once the outbox is empty.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from . import fallback, schema, sqlbuild
from .errors import CommitInDoubt, StoreUnavailable
from .stores import PgStore, SqliteStore

log = logging.getLogger("claude_daemon.db")

POSTGRESQL, SQLITE = "postgresql", "sqlite"


def utcnow():
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Database:
    def __init__(self, cfg, pg=None, sqlite=None):
        self.cfg = cfg
        if pg is None and cfg.db_type == POSTGRESQL:
            pg = PgStore(cfg)
        self.pg = pg
        self.sqlite = sqlite or SqliteStore(cfg.database_path)
        # Until PostgreSQL has answered, the daemon serves from SQLite.
        self.mode = SQLITE
        self._lock = threading.RLock()  # mode changes and fallback writes
        self._reconcile_lock = threading.Lock()
        self._listeners = []
        self._stop = threading.Event()
        self._thread = None
        self.after_pg_commit = None  # test hook, see fallback.drain

    # -- life cycle ----------------------------------------------------------------------
    def start(self, background=True):
        try:
            self.sqlite.ping()
        except StoreUnavailable as exc:
            level = log.warning if self.pg is not None else log.error
            level("sqlite unavailable (%s)%s", exc, "; no fallback while it stays so" if self.pg else "")
        if self.pg is None:
            log.info("database mode=sqlite path=%s (DB_TYPE=sqlite)", self.cfg.database_path)
            return self
        self.pg.pool.start_reaper()
        if not self.reconcile_once():
            log.warning("postgresql unreachable at start; serving from sqlite fallback path=%s",
                        self.cfg.database_path)
        if background:
            self._thread = threading.Thread(target=self._loop, name="reconcile", daemon=True)
            self._thread.start()
        return self

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.pg is not None:
            self.pg.close()
        self.sqlite.close()

    def add_listener(self, callback):
        """callback(table) after every write; callback(None) when the whole store changed."""
        self._listeners.append(callback)

    def _notify(self, table):
        for callback in self._listeners:
            try:
                callback(table)
            except Exception:  # a listener never breaks a write
                log.exception("listener failed")

    @property
    def in_fallback(self):
        return self.pg is not None and self.mode == SQLITE

    def _enter_fallback(self, exc):
        with self._lock:
            if self.mode != POSTGRESQL:
                return
            self.mode = SQLITE
        log.warning("postgresql unavailable (%s); switching to sqlite fallback path=%s", exc,
                    self.cfg.database_path)
        self.pg.pool.discard_idle()
        self._notify(None)

    # -- reconciliation ------------------------------------------------------------------
    def _loop(self):
        while not self._stop.wait(self.cfg.reconcile_interval):
            try:
                self.reconcile_once()
            except Exception:  # the loop must survive anything
                log.exception("reconcile failed")

    def reconcile_once(self):
        """Probe PostgreSQL, copy pending fallback writes, switch back. True if on PostgreSQL now."""
        if self.pg is None:
            return False
        if not self._reconcile_lock.acquire(blocking=False):
            return self.mode == POSTGRESQL
        try:
            if self.mode == POSTGRESQL and not self._has_outbox():
                return True
            try:
                self.pg.ping()
            except StoreUnavailable as exc:
                if self.mode == POSTGRESQL:
                    self._enter_fallback(exc)
                return False
            while True:
                try:
                    counts = fallback.drain(self.pg, self.sqlite, after_commit=self.after_pg_commit)
                except StoreUnavailable as exc:
                    if not self._has_outbox(quiet=True):
                        counts = {}
                    else:
                        log.warning("fallback sync interrupted: %s", exc)
                        return False
                if counts:
                    log.info("fallback sync copied entries to postgresql %s",
                             " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
                    self._notify(None)
                switched = False
                with self._lock:
                    # Fallback writes hold this lock too, so none can slip into
                    # the outbox between this check and the switch.
                    if not self._has_outbox():
                        switched = self.mode != POSTGRESQL
                        self.mode = POSTGRESQL
                        if not switched:
                            return True
                if switched:
                    log.info("database mode=postgresql host=%s port=%s", self.cfg.db_host,
                             ",".join(str(p) for p in self.cfg.db_ports))
                    self._notify(None)
                    return True
        finally:
            self._reconcile_lock.release()

    def _has_outbox(self, quiet=False):
        try:
            return self.sqlite.outbox_count() > 0
        except StoreUnavailable as exc:
            # Nothing readable to copy; if the file comes back with entries,
            # a later run copies them.
            if not quiet:
                log.debug("outbox unreadable: %s", exc)
            return False

    def pending_sync(self):
        try:
            return self.sqlite.outbox_count()
        except StoreUnavailable:
            return None

    # -- routing -------------------------------------------------------------------------
    def _read(self, op):
        if self.pg is not None and self.mode == POSTGRESQL:
            try:
                return op(self.pg)
            except StoreUnavailable as exc:
                self._enter_fallback(exc)
        return op(self.sqlite)

    def _write(self, op):
        if self.pg is None:
            return op(self.sqlite)
        for _ in range(3):
            if self.mode == POSTGRESQL:
                try:
                    return op(self.pg)
                except CommitInDoubt as exc:
                    # Never retried on PostgreSQL: it may already be there. The
                    # outbox entry is flagged and checked before it is copied.
                    self._enter_fallback(exc)
                    with self._lock:
                        result = op(self.sqlite, record=True, in_doubt=True)
                    if result == []:
                        # An update SQLite had no row for: whether PostgreSQL
                        # applied it is unknown until the outbox is copied.
                        raise
                    return result
                except StoreUnavailable as exc:
                    self._enter_fallback(exc)
            with self._lock:
                if self.mode == SQLITE:
                    return op(self.sqlite, record=True)
        raise StoreUnavailable("database mode kept changing")  # pragma: no cover

    def current(self):
        return self.mode

    def health(self):
        """'postgresql', 'sqlite' or None (neither store works); probes the store in use."""
        if self.pg is not None and self.mode == POSTGRESQL:
            try:
                self.pg.ping()
                return POSTGRESQL
            except StoreUnavailable as exc:
                self._enter_fallback(exc)
        try:
            self.sqlite.ping()
            return SQLITE
        except StoreUnavailable:
            return None

    # -- the unified API -----------------------------------------------------------------
    def query(self, sql, params=()):
        """Read-only SQL with $1..$n placeholders, on whichever store is in use."""
        return self._read(lambda store: store.query(sql, params))

    def insert(self, table, row):
        table = schema.table(table)
        values = schema.coerce_row(table, row)
        if "created_at" in schema.TABLES[table] and values.get("created_at") is None:
            # Set here, not by the column default: the same on both stores, and
            # with microseconds it lets the fallback recognise an in-doubt copy.
            values["created_at"] = utcnow()
        result = self._write(lambda store, **kw: store.insert(table, values, **kw))
        self._notify(table)
        return result

    def select(self, table, where=None, order_by=None, limit=None):
        table = schema.table(table)
        conditions = sqlbuild.normalize_where(table, where)
        order = schema.parse_order_by(table, order_by)
        limit = sqlbuild.check_limit(limit)
        return self._read(lambda store: store.select(table, conditions, order, limit))

    def update(self, table, values, where):
        table = schema.table(table)
        values = schema.coerce_row(table, values)
        conditions = sqlbuild.normalize_where(table, where)
        if not values or not conditions:
            raise schema.InvalidValue("update needs values and a where condition")
        rows = self._write(lambda store, **kw: store.update(table, values, conditions, **kw))
        self._notify(table)
        return rows
