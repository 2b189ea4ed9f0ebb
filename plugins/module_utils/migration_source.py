# -*- coding: utf-8 -*-
"""The SQLite side of the migration: a consistent copy, its checksum, the catalog, reading.

Reading is streamed in batches (fetchmany, never fetchall) so that memory does
not grow with the table. Text is read with sqlite3's fast str factory; SQLite
can hold bytes that are not UTF-8, which that factory refuses with an error
that breaks the cursor, so on that error the reader re-reads the batch from the
last good rowid with a byte-preserving factory (bytearray), lets the converters
reject the bad value, and goes back to the fast factory.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import sqlite3
import threading
import urllib.parse

from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError

BATCH_ROWS = 5000
# A database file's companions, which must stay beside it: its WAL and shared-memory
# index, and a rollback journal (a hot journal left behind would be applied to
# whatever file next takes the name).
COMPANIONS = ("-wal", "-shm", "-journal")


class SourceError(KitModuleError):
    """A problem with the SQLite file (missing, unreadable, not a database)."""


def quote_sqlite(name):
    """An SQLite identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def sha256_file(path, block=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            data = handle.read(block)
            if not data:
                break
            digest.update(data)
    return digest.hexdigest()


def _uri(path, immutable=False):
    query = "mode=ro" + ("&immutable=1" if immutable else "")
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?" + query


def open_readonly(path, immutable=False):
    """Open an SQLite file read-only (mode=ro URI), autocommit, usable from a helper thread."""
    if not os.path.isfile(path):
        raise SourceError(f"SQLite file {path} does not exist")
    try:
        conn = sqlite3.connect(_uri(path, immutable), uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise SourceError(f"cannot read {path} as an SQLite database: {exc}") from None
    return conn


def utc_stamp(now=None):
    """YYYYmmddTHHMMSSZ of now (UTC): names the backup copy and the archived source of a run."""
    return (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def backup_name(source, backup_dir, stamp=None):
    """Where the copy of source goes: backup_dir/NAME.STAMP.backup (STAMP: utc_stamp()), not yet existing."""
    base = os.path.join(backup_dir, f"{os.path.basename(source)}.{stamp or utc_stamp()}.backup")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}.{n}"
    return path


class BackgroundHash:
    """sha256 of a file computed in a helper thread (hashlib releases the GIL on large
    blocks), so hashing the copy overlaps with the migration that reads it."""

    def __init__(self, path):
        self._result = {}
        self._thread = threading.Thread(target=self._run, args=(path,), name="sha256", daemon=True)
        self._thread.start()

    def _run(self, path):
        try:
            self._result["sha256"] = sha256_file(path)
        except OSError as exc:
            self._result["error"] = exc

    def result(self):
        self._thread.join()
        if "error" in self._result:
            raise SourceError(f"cannot read the copy to hash it: {self._result['error']}")
        return self._result["sha256"]


def backup(source, dest, digest=True):
    """Copy source to dest with SQLite's online backup API (consistent while others write).

    The copy is made under a temporary name and renamed into place, so dest is
    either absent or complete. Returns dest's sha256 (None with digest=False).
    """
    src = open_readonly(source)
    partial = dest + ".partial"
    try:
        if os.path.exists(partial):
            os.unlink(partial)
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)  # pages=-1: one step, under one read lock, so the copy is one snapshot
        finally:
            dst.close()
        os.replace(partial, dest)
    except (sqlite3.Error, OSError) as exc:
        if os.path.exists(partial):
            os.unlink(partial)
        raise SourceError(f"cannot back up {source} to {dest}: {exc}") from None
    finally:
        src.close()
    return sha256_file(dest) if digest else None


def archive(source, stamp):
    """Rename the SQLite file source, and those of its COMPANIONS that exist, to
    SOURCE.migrated-STAMP (+ the companion's suffix), in the same directory
    (os.rename: atomic, the file's identity kept). Returns the new path of source.
    Refuses, before renaming anything, to replace an existing file."""
    target = f"{source}.migrated-{stamp}"
    moves = [(source, target)] + [(source + end, target + end) for end in COMPANIONS if os.path.lexists(source + end)]
    taken = [new for _old, new in moves if os.path.lexists(new)]
    if taken:
        raise SourceError(f"cannot archive {source}: {', '.join(taken)} exists already")
    try:
        for old, new in moves:
            os.rename(old, new)
    except OSError as exc:
        raise SourceError(f"cannot archive {source} as {target}: {exc}") from None
    return target


def list_tables(conn):
    """User tables of the SQLite database, by name."""
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
    ).fetchall()
    return [row[0] for row in rows]


def table_columns(conn, table):
    """[(name, declared type, position in the primary key or 0)] of an SQLite table."""
    return [(row[1], row[2] or "", row[5]) for row in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))]


def rowid_alias(conn, table, column_names):
    """A name that selects the table's rowid, or None (WITHOUT ROWID, or every alias shadowed)."""
    taken = {name.lower() for name in column_names}
    for alias in ("rowid", "_rowid_", "oid"):
        if alias in taken:
            continue
        try:
            conn.execute(f"SELECT {alias} FROM {quote_sqlite(table)} LIMIT 0")
        except sqlite3.OperationalError:
            return None
        return alias
    return None


def _decode_error(exc):
    return isinstance(exc, sqlite3.OperationalError) and "decode" in str(exc).lower()


class TableReader:
    """Reads columns of one table in batches of tuples (the columns, then the rowid if any).

    rowid: the SQL name of the rowid ("rowid", "_rowid_" or "oid"), or None for a
    WITHOUT ROWID table. rowid_column: a column among columns that is the rowid
    (an INTEGER PRIMARY KEY); then no extra column is read. where: extra SQL
    conditions with ? placeholders and their params (the verification reads
    primary key ranges).
    """

    def __init__(self, conn, table, columns, rowid=None, where="", params=(), batch_rows=BATCH_ROWS, rowid_column=None):
        self.conn = conn
        self.table = table
        self.columns = list(columns)
        self.rowid = quote_sqlite(rowid_column) if rowid_column else rowid
        self.rowid_index = self.columns.index(rowid_column) if rowid_column else len(self.columns)
        self.extra_rowid = bool(rowid) and not rowid_column
        self.where = where
        self.params = tuple(params)
        self.batch_rows = batch_rows
        self.rows_read = 0

    def _sql(self, after_rowid):
        select = [quote_sqlite(c) for c in self.columns]
        conds = [f"({self.where})"] if self.where else []
        params = list(self.params)
        order = ""
        if self.rowid:
            if self.extra_rowid:
                select.append(self.rowid)
            order = f" ORDER BY {self.rowid}"
            if after_rowid is not None:
                conds.append(f"{self.rowid} > ?")
                params.append(after_rowid)
        sql = f"SELECT {', '.join(select)} FROM {quote_sqlite(self.table)}"
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        return sql + order, params

    def batches(self):
        conn = self.conn
        if not self.rowid:
            # Without a rowid there is no place to resume from: read bytes-preserving throughout.
            conn.text_factory = bytearray
            try:
                cur = conn.execute(*self._sql(None))
                while True:
                    rows = cur.fetchmany(self.batch_rows)
                    if not rows:
                        return
                    self.rows_read += len(rows)
                    yield rows
            finally:
                conn.text_factory = str
            return
        last = None
        conn.text_factory = str
        cur = conn.execute(*self._sql(None))
        while True:
            try:
                rows = cur.fetchmany(self.batch_rows)
            except sqlite3.OperationalError as exc:
                if not _decode_error(exc):
                    raise
                conn.text_factory = bytearray
                try:
                    rows = conn.execute(*self._sql(last)).fetchmany(self.batch_rows)
                finally:
                    conn.text_factory = str
                if not rows:
                    return
                last = rows[-1][self.rowid_index]
                self.rows_read += len(rows)
                yield rows
                cur = conn.execute(*self._sql(last))
                continue
            if not rows:
                return
            last = rows[-1][self.rowid_index]
            self.rows_read += len(rows)
            yield rows
