# -*- coding: utf-8 -*-
"""Loading normalised rows into PostgreSQL with COPY, in bounded memory; the reject report.

A helper thread reads SQLite in batches and normalises them (migration_normalise)
while the caller's thread streams the previous batches into COPY FROM STDIN: the
server parses and indexes rows while Python prepares the next ones. The queue
between them is bounded, so memory stays flat whatever the table size.

Rows go in segments (SEGMENT_ROWS rows or SEGMENT_BYTES bytes, one COPY each)
under a savepoint. When PostgreSQL refuses a row (a CHECK or foreign key, a
duplicate key, an input it cannot parse: SQLSTATE classes 22 and 23) the
segment is rolled back to its savepoint and sent again without that row, which
becomes a reject with PostgreSQL's message. Errors that name their COPY line
are resolved directly; others (foreign keys are checked at the end of the
statement) by halving the segment. Any other error (permissions, connection,
disk) aborts the run.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import multiprocessing
import os
import queue
import re
import threading
import time

from ansible.module_utils.claude_pg import psycopg2, sql
from ansible.module_utils.migration_digest import close_inherited
from ansible.module_utils.migration_normalise import copy_unescape, normalise_batch, show_value
from ansible.module_utils.migration_source import BATCH_ROWS, open_readonly

SEGMENT_ROWS = 25_000
SEGMENT_BYTES = 4 << 20
QUEUE_BATCHES = 6
KEEP_IN_RESULT = 100
NEXTVAL_LIMIT = 10_000_000

_LINE_RE = re.compile(r"COPY [^,]*, line (\d+)(?:, column ([^:]+))?")


class LoadError(Exception):
    """The run cannot go on; nothing of it is committed."""


# -- the reject report -------------------------------------------------------------------


class RejectLog:
    """Rejected values: all of them streamed to a JSON file, the first KEEP_IN_RESULT kept."""

    def __init__(self, path, header):
        self.path = path
        self.kept = []
        self.entries = 0
        self.rows = {}
        self._handle = None
        self._header = header
        self._first = True
        if path:
            self._partial = path + ".partial"
            self._handle = open(self._partial, "w", encoding="utf-8")

    def _start(self):
        """Write the header, once: its callable values (the backup's sha256, hashed
        meanwhile) are resolved only when the first reject, or the end, comes."""
        if self._header is None:
            return
        header = {k: v() if callable(v) else v for k, v in self._header.items()}
        self._header = None
        head = json.dumps(header, indent=1, default=str)
        self._handle.write(head[:-2] + ',\n "rejects": [')

    def add(self, table, key, column, value, reason, stage):
        entry = {"table": table, "key": key, "column": column, "value": value, "reason": reason, "stage": stage}
        self.entries += 1
        if len(self.kept) < KEEP_IN_RESULT:
            self.kept.append(entry)
        if self._handle:
            self._start()
            self._handle.write(("\n  " if self._first else ",\n  ") + json.dumps(entry, default=str, ensure_ascii=False))
            self._first = False

    def count_row(self, table, n=1):
        self.rows[table] = self.rows.get(table, 0) + n

    @property
    def total_rows(self):
        return sum(self.rows.values())

    def close(self, summary):
        if not self._handle:
            return None
        self._start()
        self._handle.write("\n ],\n \"rejected_rows\": " + json.dumps(self.rows) + ",\n \"summary\": " + json.dumps(summary, default=str) + "\n}\n")
        self._handle.close()
        self._handle = None
        os.replace(self._partial, self.path)
        return self.path

    def abandon(self):
        if self._handle:
            self._handle.close()
            self._handle = None
            os.unlink(self._partial)


# -- producing normalised batches --------------------------------------------------------


class Item:
    """One normalised batch: data (COPY bytes) or lines, n rows in it, keys for append
    mode, rowids for reports on tables without a primary key, rows read, rejects."""

    __slots__ = ("data", "lines", "n", "keys", "rowids", "read", "rejects")

    def __init__(self, data, lines, n, keys, rowids, read, rejects):
        self.data = data
        self.lines = lines
        self.n = n
        self.keys = keys
        self.rowids = rowids
        self.read = read
        self.rejects = rejects


def _rejects_of(plan, rows, batch):
    out = []
    for index in sorted(batch.bad):
        key = plan.key_of(rows[index])
        problems = [(plan.columns[c]["name"], show_value(v), reason) for c, v, reason in batch.bad[index]]
        out.append((key, problems))
    return out


def produce(plan, sconn, want_lines=False, want_keys=False, batch_rows=None, where="", params=()):
    """Items of normalised rows of a table, or of the rows matching where (generator;
    used in the helper thread or in the worker processes)."""
    kwargs = {"batch_rows": batch_rows} if batch_rows else {}
    reader = plan.reader(sconn, where, params, **kwargs)
    keep_rowids = not plan.pk and plan.rowid
    at = plan.rowid_index
    for rows in reader.batches():
        batch = normalise_batch(plan.load_converters, rows)
        rejects = _rejects_of(plan, rows, batch) if batch.bad else []
        keys = list(zip(*[batch.column(i) for i in plan.pk])) if want_keys else None
        rowids = [rows[i][at] for i in batch.good()] if keep_rowids else None
        data = None if want_lines else (("\n".join(batch.lines) + "\n").encode("utf-8") if batch.lines else b"")
        yield Item(data, batch.lines if want_lines else None, len(batch.lines), keys, rowids, batch.size, rejects)


class Producer:
    """Runs a generator in a helper thread, through a bounded queue."""

    _END = object()

    def __init__(self, generator, maxsize=QUEUE_BATCHES):
        self._gen = generator
        self._queue = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-reader", daemon=True)
        self._thread.start()

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self):
        try:
            for item in self._gen:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(("error", exc))

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, tuple) and item[0] == "error":
                raise item[1]
            yield item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=30)


PARALLEL_MIN_ROWS = 50_000
PARALLEL_QUEUE = 2


def cpu_workers(requested=0):
    """How many processes normalise a large table: requested, or with 0 the CPUs this process may use (at most 4)."""
    if requested:
        return requested
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    return max(1, min(4, available))


def chunk_ranges(extent, batch_rows=None):
    """[low, high) rowid ranges of about batch_rows rows each (extent: TablePlan.extent), in rowid order, or None
    when the table is too small to be worth forking for (or has no rowid)."""
    low, high, count = extent
    if low is None or count < PARALLEL_MIN_ROWS:
        return None
    batch_rows = batch_rows or BATCH_ROWS
    step = max(1, int((high - low + 1) * batch_rows / count))
    ranges = [(start, start + step) for start in range(low, high + 1, step)]
    ranges[-1] = (ranges[-1][0], None)  # open-ended: see TablePlan.rowid_range
    return ranges


def _chunk_worker(send, path, plan, ranges, want_lines, want_keys, batch_rows, close_fds):
    """In a forked process: normalise every range of `ranges` and send its items (one
    message per batch, then one that closes the range: memory stays bounded even when
    a range holds far more rows than the average)."""
    try:
        close_inherited(close_fds)
        sconn = open_readonly(path, immutable=True)
        gc.disable()
        for low, high in ranges:
            where, params = plan.rowid_range(low, high)
            for i in produce(plan, sconn, want_lines, want_keys, batch_rows, where, params):
                send.send(("item", (i.data, i.lines, i.n, i.keys, i.rowids, i.read, i.rejects)))
            send.send(("range", None))
        send.send(("end", None))
    except BaseException as exc:  # reported by the parent, which fails the run
        try:
            send.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:  # the parent has gone away
            pass
    finally:
        send.close()


class ParallelProducer:
    """Items of a large table normalised by several forked processes, in rowid order.

    The normalisation is CPU-bound Python, so threads would share one CPU. Each
    worker opens the consistent copy of the SQLite file itself and takes every
    n-th rowid range; a thread per worker receives its messages into a bounded
    queue, and iteration takes the ranges back in order, so the rows reach COPY in
    the same order as with one process and memory stays bounded (at most
    PARALLEL_QUEUE + 2 batches per worker in flight). The workers only read the
    file and are forked before this producer's threads start (the only other
    thread then is the one hashing the copy, whose objects they never touch); they
    close the inherited close_fds (the PostgreSQL connection's socket) and the read
    ends of the pipes at once, so a worker whose parent dies fails on its next send.
    """

    def __init__(self, plan, path, ranges, workers, want_lines=False, want_keys=False, batch_rows=None, close_fds=()):
        ctx = multiprocessing.get_context("fork")
        self._ranges = len(ranges)
        self._workers = []
        self._stop = threading.Event()
        inherited = list(close_fds)
        for n in range(workers):
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_chunk_worker, name=f"sqlite-normalise-{n}", daemon=True,
                               args=(send, path, plan, ranges[n::workers], want_lines, want_keys, batch_rows,
                                     inherited + [receive.fileno()]))
            inherited.append(receive.fileno())
            proc.start()
            send.close()
            self._workers.append((proc, receive, queue.Queue(maxsize=PARALLEL_QUEUE)))
        self._threads = [threading.Thread(target=self._receive, args=(w,), name=f"sqlite-receive-{n}", daemon=True)
                         for n, w in enumerate(self._workers)]
        for thread in self._threads:
            thread.start()

    def _receive(self, worker):
        proc, receive, out = worker
        while not self._stop.is_set():
            try:
                message = receive.recv()
            except (EOFError, OSError):
                proc.join(timeout=5)
                message = ("error", f"worker process {proc.pid} ended without a result (exit code {proc.exitcode})")
            except BaseException as exc:  # anything else must reach the consumer too, or it would wait for ever
                message = ("error", f"receiving from worker process {proc.pid} failed: {type(exc).__name__}: {exc}")
            while not self._stop.is_set():
                try:
                    out.put(message, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if message[0] not in ("item", "range"):
                return

    def __iter__(self):
        for index in range(self._ranges):
            out = self._workers[index % len(self._workers)][2]
            while True:
                kind, payload = out.get()
                if kind == "range":
                    break
                if kind == "error":
                    raise LoadError("reading the SQLite copy failed: " + payload)
                if kind != "item":
                    raise LoadError("a worker process stopped early")
                yield Item(*payload)

    def close(self):
        self._stop.set()
        for proc, receive, _out in self._workers:
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=30)
            receive.close()
        for thread in self._threads:
            thread.join(timeout=30)


# -- COPY --------------------------------------------------------------------------------


class _Chunks:
    """A file-like object whose read() hands COPY one prepared chunk after another."""

    def __init__(self, chunks):
        self._it = iter(chunks)

    def read(self, _size=-1):
        return next(self._it, b"")

    readline = read


def _row_level(exc):
    code = getattr(exc, "pgcode", None) or ""
    return code[:2] in ("22", "23")


def _where(exc):
    """(line number, column) of a COPY error, from its context; (None, None) if it names none."""
    context = getattr(getattr(exc, "diag", None), "context", None) or ""
    match = _LINE_RE.search(context)
    if not match:
        return None, None
    return int(match.group(1)), (match.group(2) or None)


def _message(exc):
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc).strip().splitlines()[0]
    detail = getattr(diag, "message_detail", None)
    return primary + (f" ({detail})" if detail else "")


_TYPE_RE = re.compile(r'[A-Za-z_][A-Za-z0-9_ .,()\[\]"]*\Z')


def _type_sql(type_name):
    """A column type as format_type() printed it (from the catalog), checked before it goes into SQL."""
    if not _TYPE_RE.match(type_name) or type_name.count('"') % 2:
        raise LoadError(f"unexpected type name {type_name!r} in the catalog")
    return type_name


def _key_value(converter, token):
    """A key token for reports: integers as numbers (as SQLite holds them), the rest as text."""
    value = copy_unescape(token)
    return int(value) if converter.kind == "integer" and value is not None else value


class TableLoader:
    """Loads one table's items into PostgreSQL; counts written, skipped and rejected rows."""

    def __init__(self, cur, plan, rejects, mode, dry_run=False):
        self.cur = cur
        self.plan = plan
        self.rejects = rejects
        self.mode = mode
        self.dry_run = dry_run
        self.copy_sql = plan.copy_sql()
        self.written = 0
        self.skipped = 0
        self.read = 0
        self.rejected = 0

    # segments ----------------------------------------------------------------------
    def _take(self, item):
        """Count an item's rows and log its conversion rejects."""
        self.read += item.read
        for key, problems in item.rejects:
            self.rejected += 1
            self.rejects.count_row(self.plan.label)
            for column, value, reason in problems:
                self.rejects.add(self.plan.label, key, column, value, reason, "conversion")

    def run(self, items):
        items = iter(items)
        if self.dry_run:
            for item in items:
                self._take(item)
                if self.mode == "append":
                    item = self._drop_existing(item)
                self.written += item.n
        elif self.mode == "append":
            self._run_filtered(items)
        else:
            while self._stream_segment(items):
                pass

    def _stream_segment(self, items):
        """One COPY, fed straight from the items as they come; False once they are exhausted."""
        segment = []
        state = {"rows": 0, "bytes": 0, "done": False}

        def chunks():
            for item in items:
                self._take(item)
                if not item.n:
                    continue
                segment.append(item)
                yield item.data
                state["rows"] += item.n
                state["bytes"] += len(item.data)
                if state["rows"] >= SEGMENT_ROWS or state["bytes"] >= SEGMENT_BYTES:
                    return
            state["done"] = True

        source = chunks()
        cur = self.cur
        cur.execute("SAVEPOINT claude_kit_copy")
        try:
            cur.copy_expert(self.copy_sql, _Chunks(source), size=1 << 20)
        except psycopg2.Error as exc:
            if not _row_level(exc):
                raise
            for _rest in source:  # the whole segment, to send again without the refused rows
                pass
            cur.execute("ROLLBACK TO SAVEPOINT claude_kit_copy")
            cur.execute("RELEASE SAVEPOINT claude_kit_copy")
            self._resolve(segment, exc)
            return not state["done"]
        cur.execute("RELEASE SAVEPOINT claude_kit_copy")
        self.written += sum(item.n for item in segment)
        return not state["done"]

    def _run_filtered(self, items):
        """Append mode: leave out existing keys batch by batch, then COPY a segment at a time."""
        segment, rows, size = [], 0, 0
        for item in items:
            self._take(item)
            item = self._drop_existing(item)
            if not item.n:
                continue
            segment.append(item)
            rows += item.n
            size += len(item.data)
            if rows >= SEGMENT_ROWS or size >= SEGMENT_BYTES:
                self._segment(segment)
                segment, rows, size = [], 0, 0
        if segment:
            self._segment(segment)

    def _drop_existing(self, item):
        """Append mode: leave out rows whose primary key the table already has."""
        plan = self.plan
        if not item.n:
            return item
        pk_cols = [plan.columns[i] for i in plan.pk]
        arrays = [[copy_unescape(key[n]) for key in item.keys] for n in range(len(pk_cols))]
        names = [sql.Identifier(f"k{n}") for n in range(len(pk_cols))]
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{} = u.{}::{}").format(sql.Identifier(col["name"]), names[n], sql.SQL(_type_sql(col["type_name"])))
            for n, col in enumerate(pk_cols)
        )
        query = sql.SQL("SELECT {} FROM unnest({}) AS u({}) WHERE EXISTS (SELECT 1 FROM {} t WHERE {})").format(
            sql.SQL(", ").join(names),
            sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in pk_cols),
            sql.SQL(", ").join(names),
            plan.ident,
            match,
        )
        self.cur.execute(query, arrays)
        existing = {tuple(row) for row in self.cur.fetchall()}
        if not existing:
            if not self.dry_run:
                item.data = ("\n".join(item.lines) + "\n").encode("utf-8")
            return item
        keep = [n for n, key in enumerate(item.keys) if tuple(copy_unescape(k) for k in key) not in existing]
        self.skipped += len(item.lines) - len(keep)
        item.lines = [item.lines[n] for n in keep]
        item.keys = [item.keys[n] for n in keep]
        item.rowids = [item.rowids[n] for n in keep] if item.rowids is not None else None
        item.n = len(keep)
        if not self.dry_run:
            item.data = ("\n".join(item.lines) + "\n").encode("utf-8") if item.lines else b""
        return item

    def _segment(self, segment):
        cur = self.cur
        cur.execute("SAVEPOINT claude_kit_copy")
        try:
            cur.copy_expert(self.copy_sql, _Chunks([item.data for item in segment]), size=1 << 20)
        except psycopg2.Error as exc:
            if not _row_level(exc):
                raise
            cur.execute("ROLLBACK TO SAVEPOINT claude_kit_copy")
            cur.execute("RELEASE SAVEPOINT claude_kit_copy")
            self._resolve(segment, exc)
            return
        cur.execute("RELEASE SAVEPOINT claude_kit_copy")
        self.written += sum(item.n for item in segment)

    # rows PostgreSQL refuses -----------------------------------------------------------
    def _resolve(self, segment, first_error):
        lines, rowids = [], []
        for item in segment:
            part = item.data.split(b"\n")[:-1]
            lines.extend(part)
            rowids.extend(item.rowids if item.rowids is not None else [None] * len(part))
        pending = [(lines, rowids, first_error)]
        while pending:
            part, ids, error = pending.pop(0)
            if not part:
                continue
            if error is None:
                error = self._try(part)
                if error is None:
                    self.written += len(part)
                    continue
            number, column = _where(error)
            if number is not None and 1 <= number <= len(part):
                self._refused(part[number - 1], ids[number - 1], column, error)
                pending[0:0] = [(part[: number - 1], ids[: number - 1], None), (part[number:], ids[number:], None)]
            elif len(part) == 1:
                self._refused(part[0], ids[0], column, error)
            else:
                half = len(part) // 2
                pending[0:0] = [(part[:half], ids[:half], None), (part[half:], ids[half:], None)]

    def _try(self, lines):
        cur = self.cur
        cur.execute("SAVEPOINT claude_kit_copy")
        try:
            cur.copy_expert(self.copy_sql, _Chunks([b"\n".join(lines) + b"\n"]), size=1 << 20)
        except psycopg2.Error as exc:
            if not _row_level(exc):
                raise
            cur.execute("ROLLBACK TO SAVEPOINT claude_kit_copy")
            cur.execute("RELEASE SAVEPOINT claude_kit_copy")
            return exc
        cur.execute("RELEASE SAVEPOINT claude_kit_copy")
        return None

    def _refused(self, line, rowid, column, error):
        plan = self.plan
        text = line.decode("utf-8")
        tokens = text.split("\t")
        if plan.pk and not plan.pk_unmatched:
            key = {plan.pk_names[n]: _key_value(plan.converters[i], tokens[i]) for n, i in enumerate(plan.pk)}
        else:
            key = {"rowid": rowid} if rowid is not None else None
        if self.mode == "append" and getattr(error, "pgcode", "") == "23505" and getattr(error.diag, "constraint_name", None) == plan.pk_constraint:
            # Append: a key that arrived meanwhile, or twice in the source: skip it, like ON CONFLICT DO NOTHING.
            self.skipped += 1
            return
        if column and column in plan.column_names:
            value = show_value(copy_unescape(tokens[plan.column_names.index(column)]))
        else:
            value = show_value(text)
        self.rejected += 1
        self.rejects.count_row(plan.label)
        self.rejects.add(plan.label, key, column, value, "PostgreSQL refused the row: " + _message(error), "postgresql")


# -- foreign keys, set-based ----------------------------------------------------------------


def can_check_keys_after(cur, plans):
    """Whether the rows may be loaded with session_replication_role = replica and their
    foreign keys checked afterwards, set-based (check_foreign_keys), instead of by
    PostgreSQL's per-row triggers: only as a superuser (the setting requires it),
    and only when no table has triggers or rules of its own (which that setting
    would silence too) or a foreign key that is NOT VALID (whose old rows may break it)."""
    cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    row = cur.fetchone()
    if not row or not row[0]:
        return False, "the role is not a superuser"
    for plan in plans:
        if plan.own_triggers:
            return False, f"table {plan.label} has triggers or rules of its own"
        if any(not fk["validated"] for fk in plan.foreign_keys):
            return False, f"table {plan.label} has a NOT VALID foreign key"
    return True, None


def check_foreign_keys(cur, plan, rejects, locked, stage="foreign_key"):
    """Remove and reject the rows of plan's table that break one of its foreign keys.

    Run after loading with session_replication_role = replica. Every foreign key is
    validated, so rows that break one are rows of this run. Parent rows are locked
    FOR KEY SHARE as PostgreSQL's own check does, unless their table is locked
    already (locked: set of (schema, table)). Repeats until nothing is removed (a
    self-reference may orphan more rows). Returns the number of rows removed.
    """
    removed = 0
    while True:
        round_removed = 0
        for fk in plan.foreign_keys:
            child, parent = sql.Identifier("c"), sql.Identifier("p")
            pairs = list(zip(fk["columns"], fk["parent_columns"]))
            matches = sql.SQL(" AND ").join(
                sql.SQL("{}.{} = {}.{}").format(parent, sql.Identifier(pc), child, sql.Identifier(cc)) for cc, pc in pairs
            )
            present = sql.SQL(" AND ").join(sql.SQL("{}.{} IS NOT NULL").format(child, sql.Identifier(cc)) for cc, _ in pairs)
            broken = sql.SQL("({} AND NOT EXISTS (SELECT 1 FROM {} {} WHERE {}))").format(
                present, sql.Identifier(*fk["parent"]), parent, matches
            )
            if fk["match"] == "f" and len(pairs) > 1:  # MATCH FULL: all columns NULL or none
                some_null = sql.SQL(" OR ").join(sql.SQL("{}.{} IS NULL").format(child, sql.Identifier(cc)) for cc, _ in pairs)
                broken = sql.SQL("({} OR (({}) AND NOT ({})))").format(broken, some_null, present)
            if fk["parent"] not in locked:
                cur.execute(
                    sql.SQL("SELECT 1 FROM {} {} WHERE EXISTS (SELECT 1 FROM {} {} WHERE {}) FOR KEY SHARE OF {}").format(
                        sql.Identifier(*fk["parent"]), parent, plan.ident, child, matches, parent
                    )
                )
            key_cols = [sql.SQL("{}.{}").format(child, sql.Identifier(name)) for name in plan.pk_names] or [sql.SQL("NULL")]
            fk_cols = [sql.SQL("{}.{}::text").format(child, sql.Identifier(cc)) for cc, _ in pairs]
            n_key = len(key_cols)
            orphans = 0
            with cur.connection.cursor(name="claude_kit_fk_check") as found:  # server-side: memory stays flat
                found.itersize = 1000
                found.execute(
                    sql.SQL("SELECT {}, {} FROM {} {} WHERE {}").format(
                        sql.SQL(", ").join(key_cols), sql.SQL(", ").join(fk_cols), plan.ident, child, broken
                    )
                )
                for row in found:
                    orphans += 1
                    key = dict(zip(plan.pk_names, row[:n_key])) if plan.pk_names else None
                    shown = ", ".join("null" if v is None else v for v in row[n_key:])
                    reason = (f'violates foreign key constraint "{fk["name"]}": Key ({", ".join(fk["columns"])})=({shown})'
                              f' is not present in table "{fk["parent"][1]}"')
                    rejects.count_row(plan.label)
                    rejects.add(plan.label, key, fk["columns"][0] if len(pairs) == 1 else None, show_value(shown), reason, stage)
            if orphans:  # only then: the parents are locked, so no row of this run can lose its parent meanwhile
                cur.execute(sql.SQL("DELETE FROM {} {} WHERE {}").format(plan.ident, child, broken))
                round_removed += cur.rowcount
        removed += round_removed
        if not round_removed:
            return removed


# -- secondary indexes, rebuilt after the load ------------------------------------------------

REBUILD_MIN_ROWS = 10_000

# Plain secondary indexes only: not unique (a duplicate key must still be refused
# row by row while loading), on columns only (an expression or a predicate can fail
# on a row, which must then be rejected on its own, not fail the rebuild), not
# backing a constraint, not part of a partitioned index, nothing depending on them,
# and nothing about them that pg_get_indexdef() does not print (tablespace,
# comment, per-column statistics targets, CLUSTER mark, replica identity).
_DROPPABLE_SQL = """
SELECT n.nspname, ic.relname, pg_get_indexdef(i.indexrelid)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_class t ON t.oid = i.indrelid
WHERE i.indrelid = %(oid)s
  AND t.relkind = 'r' AND ic.relkind = 'i'
  AND pg_has_role(t.relowner, 'USAGE')
  AND NOT i.indisunique AND NOT i.indisprimary AND NOT i.indisexclusion
  AND i.indisvalid AND i.indisready AND i.indislive
  AND NOT i.indisclustered AND NOT i.indisreplident
  AND i.indexprs IS NULL AND i.indpred IS NULL
  AND ic.reltablespace = 0
  AND NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = i.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = i.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_description WHERE objoid = i.indexrelid AND classoid = 'pg_class'::regclass)
  AND NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = i.indexrelid AND attstattarget >= 0)
  AND NOT EXISTS (SELECT 1 FROM pg_depend WHERE refclassid = 'pg_class'::regclass AND refobjid = i.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_depend WHERE classid = 'pg_class'::regclass AND objid = i.indexrelid AND deptype = 'e')
ORDER BY ic.relname
"""


def drop_secondary_indexes(cur, plan):
    """Drop the table's plain secondary indexes for the load; returns [(schema, name, definition)]
    for rebuild_indexes(). Only for a table that is empty and locked in this transaction:
    building an index once from the loaded rows costs a fraction of updating it row by
    row. DROP INDEX is transactional, so an interrupted run gets them back with the rollback;
    meanwhile the table is locked ACCESS EXCLUSIVE (readers wait too)."""
    cur.execute(_DROPPABLE_SQL, {"oid": plan.oid})
    dropped = cur.fetchall()
    for schema, name, _definition in dropped:
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
    return dropped


def rebuild_indexes(cur, dropped):
    """Create the dropped indexes again from the definitions PostgreSQL printed for them."""
    for _schema, _name, definition in dropped:
        cur.execute(definition)
    return [name for _schema, name, _definition in dropped]


# -- sequences ---------------------------------------------------------------------------


def advance_sequences(cur, plan):
    """Move each serial/identity sequence of the table past the highest value in its column.

    setval() where the role may UPDATE the sequence; otherwise (the app role has
    USAGE and SELECT only) nextval() as many times as needed, up to NEXTVAL_LIMIT.
    A sequence already past the column's maximum is left alone. Returns what was done.
    """
    done = []
    for column, sequence in plan.serials:
        cur.execute(sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(column), plan.ident))
        highest = cur.fetchone()[0]
        if highest is None:
            continue
        cur.execute(
            "SELECT n.nspname, c.relname, s.seqincrement, has_sequence_privilege(c.oid, 'UPDATE')"
            " FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE s.seqrelid = %s::regclass",
            (sequence,),
        )
        seq_schema, seq_name, increment, may_update = cur.fetchone()
        cur.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(seq_schema, seq_name)))
        last, called = cur.fetchone()
        next_value = last + increment if called else last
        entry = {"table": plan.label, "column": column, "sequence": sequence, "max_value": highest}
        if increment <= 0 or next_value > highest:
            entry.update(action="none", next_value=next_value)
        elif may_update:
            cur.execute("SELECT setval(%s, %s)", (sequence, highest))
            entry.update(action="setval", next_value=highest + increment)
        else:
            calls = -(-(highest - next_value + 1) // increment)
            if calls > NEXTVAL_LIMIT:
                raise LoadError(
                    f"sequence {sequence} must move {calls} steps past {highest}; the role may not setval() it"
                    f" (no UPDATE privilege) and more than {NEXTVAL_LIMIT} nextval() calls are refused: run as the owner"
                )
            cur.execute("SELECT max(nextval(%s)) FROM generate_series(1, %s)", (sequence, calls))
            entry.update(action="nextval", next_value=cur.fetchone()[0] + increment)
        done.append(entry)
    return done


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while streaming: the rows are tuples and strings
    that never form cycles, and collecting after every few thousand of them costs ~10%."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Timer:
    def __init__(self):
        self.start = time.monotonic()

    @property
    def seconds(self):
        return round(time.monotonic() - self.start, 3)
