# -*- coding: utf-8 -*-
"""Loading normalised rows into PostgreSQL with COPY, in bounded memory; the reject report.

TableLoader takes a table's Items from a producer (migration_workers) and streams
them into COPY FROM STDIN while the producer prepares the next ones.

Rows go in segments (SEGMENT_ROWS rows or SEGMENT_BYTES bytes, one COPY each)
under a savepoint. When PostgreSQL refuses a row (a CHECK or foreign key, a
duplicate key, an input it cannot parse: SQLSTATE classes 22 and 23) the
segment is rolled back to its savepoint and sent again without that row, which
becomes a reject with PostgreSQL's message, the constraint it broke and that
constraint's columns (from the catalog, TablePlan.constraints). Errors that name
their COPY line are resolved directly; others (foreign keys are checked at the
end of the statement) by halving the segment. Any other error (permissions,
connection, disk) aborts the run.

RejectLog writes every reject to the JSON report as it comes and keeps the first
KEEP_IN_RESULT for the module's result.
"""

from __future__ import annotations

import datetime
import json
import os
import re

from ansible_collections.claude_kit.stack.plugins.module_utils.claude_pg import psycopg2, sql
from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_encoding import copy_data, copy_unescape, show_value

SEGMENT_ROWS = 25_000
SEGMENT_BYTES = 4 << 20
KEEP_IN_RESULT = 100

_LINE_RE = re.compile(r"COPY [^,]*, line (\d+)(?:, column ([^:]+))?")
_TYPE_RE = re.compile(r'[A-Za-z_][A-Za-z0-9_ .,()\[\]"]*\Z')


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


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

    def add(self, table, key, column, value, reason, stage, constraint=None, columns=None):
        """One rejected value. column: the column of the value, if one; columns: every column
        concerned (a constraint's), by default [column]; constraint: the constraint refusing it."""
        entry = {"table": table, "key": key, "column": column, "columns": columns if columns is not None else [column] if column else [],
                 "constraint": constraint, "value": value, "reason": reason, "stage": stage}
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


# -- PostgreSQL's errors -------------------------------------------------------------------


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


def _diag(exc, field):
    return getattr(getattr(exc, "diag", None), field, None)


def _type_sql(type_name):
    """A column type as format_type() printed it (from the catalog), checked before it goes into SQL."""
    if not _TYPE_RE.match(type_name) or type_name.count('"') % 2:
        raise KitModuleError(f"unexpected type name {type_name!r} in the catalog")
    return type_name


def _key_value(converter, token):
    """A key token for reports: integers as numbers (as SQLite holds them), the rest as text."""
    value = copy_unescape(token)
    return int(value) if converter.kind == "integer" and value is not None else value


# -- the loader ------------------------------------------------------------------------------


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

    def _take(self, item):
        """Count an item's rows and log its conversion rejects."""
        self.read += item.read
        for key, problems in item.rejects:
            self.rejected += 1
            self.rejects.count_row(self.plan.label)
            for column, value, reason in problems:
                self.rejects.add(self.plan.label, key, column, value, reason, "conversion")

    # segments ----------------------------------------------------------------------
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
        error = self._copy(source)
        if error is not None:
            for _rest in source:  # the whole segment, to send again without the refused rows
                pass
            self._resolve(segment, error)
        else:
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

    def _segment(self, segment):
        error = self._copy([item.data for item in segment])
        if error is not None:
            self._resolve(segment, error)
        else:
            self.written += sum(item.n for item in segment)

    def _copy(self, chunks):
        """COPY the chunks under a savepoint; the row-level error that undid it, or None."""
        cur = self.cur
        cur.execute("SAVEPOINT claude_kit_copy")
        try:
            cur.copy_expert(self.copy_sql, _Chunks(chunks), size=1 << 20)
        except psycopg2.Error as exc:
            if not _row_level(exc):
                raise
            cur.execute("ROLLBACK TO SAVEPOINT claude_kit_copy")
            cur.execute("RELEASE SAVEPOINT claude_kit_copy")
            return exc
        cur.execute("RELEASE SAVEPOINT claude_kit_copy")
        return None

    # append mode -----------------------------------------------------------------------
    def _existing_keys(self, item):
        """The keys of the item's rows that the table has already (as text tuples)."""
        plan = self.plan
        pk_cols = [plan.columns[i] for i in plan.pk]
        arrays = [[copy_unescape(key[n]) for key in item.keys] for n in range(len(pk_cols))]
        names = [sql.Identifier(f"k{n}") for n in range(len(pk_cols))]
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{} = u.{}::{}").format(sql.Identifier(col["name"]), names[n], sql.SQL(_type_sql(col["type_name"])))
            for n, col in enumerate(pk_cols)
        )
        query = sql.SQL("SELECT {} FROM unnest({}) AS u({}) WHERE EXISTS (SELECT 1 FROM {} t WHERE {})").format(
            sql.SQL(", ").join(names),
            sql.SQL(", ").join(sql.SQL("%s::text[]") for _col in pk_cols),
            sql.SQL(", ").join(names),
            plan.ident,
            match,
        )
        self.cur.execute(query, arrays)
        return {tuple(row) for row in self.cur.fetchall()}

    def _drop_existing(self, item):
        """Append mode: leave out rows whose primary key the table already has."""
        if not item.n:
            return item
        existing = self._existing_keys(item)
        if existing:
            keep = [n for n, key in enumerate(item.keys) if tuple(copy_unescape(k) for k in key) not in existing]
            self.skipped += len(item.lines) - len(keep)
            item.lines = [item.lines[n] for n in keep]
            item.keys = [item.keys[n] for n in keep]
            item.rowids = [item.rowids[n] for n in keep] if item.rowids is not None else None
            item.n = len(keep)
        if not self.dry_run:
            item.data = copy_data(item.lines)
        return item

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
                error = self._copy([b"\n".join(part) + b"\n"])
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

    def _refused(self, line, rowid, column, error):
        """Reject a row PostgreSQL refused, naming the constraint and its columns where there is one."""
        plan = self.plan
        if self.mode == "append" and getattr(error, "pgcode", "") == "23505" and _diag(error, "constraint_name") == plan.pk_constraint:
            # Append: a key that arrived meanwhile, or twice in the source: skip it, like ON CONFLICT DO NOTHING.
            self.skipped += 1
            return
        text = line.decode("utf-8")
        tokens = text.split("\t")
        constraint = _diag(error, "constraint_name")
        columns = self._columns_of(column, constraint, error)
        self.rejected += 1
        self.rejects.count_row(plan.label)
        self.rejects.add(plan.label, self._key(tokens, rowid), columns[0] if len(columns) == 1 else None,
                         self._value(text, tokens, columns), "PostgreSQL refused the row: " + _message(error), "postgresql",
                         constraint=constraint, columns=columns)

    def _columns_of(self, column, constraint, error):
        """The columns a refusal is about: COPY's, else the constraint's (catalog), else the error's (NOT NULL)."""
        if column:
            return [column]
        if constraint and constraint in self.plan.constraints:
            return list(self.plan.constraints[constraint])
        named = _diag(error, "column_name")
        return [named] if named else []

    def _key(self, tokens, rowid):
        plan = self.plan
        if plan.pk and not plan.pk_unmatched:
            return {plan.pk_names[n]: _key_value(plan.converters[i], tokens[i]) for n, i in enumerate(plan.pk)}
        return {"rowid": rowid} if rowid is not None else None

    def _value(self, text, tokens, columns):
        """The refused value: the column's, {column: value} of several, else the whole COPY line."""
        names = self.plan.column_names
        if not columns or any(c not in names for c in columns):
            return show_value(text)
        values = [copy_unescape(tokens[names.index(c)]) for c in columns]
        return show_value(values[0] if len(values) == 1 else dict(zip(columns, values)))
