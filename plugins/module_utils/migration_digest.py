# -*- coding: utf-8 -*-
"""Order-independent content digests of a table, computed the same way on both sides.

A row's canonical form is its COPY text line: the normalised values (tokens, see
migration_normalise) joined by tabs, as UTF-8. Its hash is the first 64 bits of
the line's MD5, read as a big-endian integer. A table's digest is the row count
and the sum of the row hashes modulo 2**64: independent of row order, and a row
that is missing, added, duplicated or has one changed value changes the sum
(except with probability 2**-64).

The SQLite side is normalised in Python, by the migration's own converters.
The PostgreSQL side is computed by PostgreSQL in SQL, from its output functions
(what COPY TO would print), so both sides read their data in parallel: the SQL
aggregate runs in the server while Python reads SQLite. The session settings of
migration_plan.SESSION_SETTINGS make PostgreSQL print values in the converters'
forms.

Where the digests differ, bisect() narrows the difference down by primary-key
ranges (both sides read only the rows of a range, through their primary-key
indexes) until a range holds few rows, then compares those rows by key.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import operator
import threading

from ansible_collections.claude_kit.stack.plugins.module_utils.claude_pg import sql
from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_encoding import ESCAPE_PAIRS, NULL, copy_unescape, show_value
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_normalise import normalise_batch
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_source import open_readonly, quote_sqlite
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_workers import PARALLEL_MIN_ROWS, connection_fds, fork_workers

MASK = (1 << 64) - 1
LEAF_ROWS = 256

_md5 = functools.partial(hashlib.md5, usedforsecurity=False)
_digest = operator.methodcaller("digest")
_first8 = operator.itemgetter(slice(0, 8))
_BIG = itertools.repeat("big")


def lines_hash(lines):
    """Sum (mod 2**64) of the 64-bit row hashes of COPY lines (str, no newline)."""
    return sum(map(int.from_bytes, map(_first8, map(_digest, map(_md5, map(str.encode, lines)))), _BIG)) & MASK


def line_hash(line):
    return int.from_bytes(hashlib.md5(line.encode(), usedforsecurity=False).digest()[:8], "big")


# -- PostgreSQL side ---------------------------------------------------------------------

def _token_sql(column, converter):
    """SQL for one column's COPY token: the output function's text, escaped, \\N for NULL."""
    ident = sql.Identifier(column["name"])
    if converter.kind == "boolean":
        text = sql.SQL("CASE {} WHEN true THEN 't' WHEN false THEN 'f' END").format(ident)
    elif converter.kind == "text" and getattr(converter, "pad", False):
        # char(n)::text drops the padding; the output function (COPY) keeps it.
        text = sql.SQL("CASE WHEN {c} IS NOT NULL THEN format('%s', {c}) END").format(c=ident)
    else:
        text = sql.SQL("{}::text").format(ident)
    if converter.escapes:
        for raw, escaped in ESCAPE_PAIRS:
            text = sql.SQL("replace({}, {}, {})").format(text, sql.Literal(raw), sql.Literal(escaped))
    elif converter.kind == "bytea":
        text = sql.SQL("replace({}, {}, {})").format(text, sql.Literal("\\"), sql.Literal("\\\\"))
    return sql.SQL("coalesce({}, {})").format(text, sql.Literal(NULL))


def line_sql(plan):
    """SQL for a row's COPY line over the plan's columns."""
    return sql.SQL("concat_ws({}, {})").format(
        sql.Literal("\t"), sql.SQL(", ").join(_token_sql(c, v) for c, v in zip(plan.columns, plan.converters))
    )


def _hash_sql(line):
    return sql.SQL("('x' || substr(md5({}), 1, 16))::bit(64)::bigint").format(line)


def key_sql(plan):
    """The primary key columns for ordering and ranges (text compared bytewise, as SQLite does)."""
    parts = []
    for i in plan.pk:
        ident = sql.Identifier(plan.columns[i]["name"])
        parts.append(sql.SQL('{} COLLATE "C"').format(ident) if plan.converters[i].kind == "text" else ident)
    return parts


def _row_cmp(parts, op, values):
    if len(parts) == 1:
        return sql.SQL("{} {} {}").format(parts[0], sql.SQL(op), sql.Literal(values[0]))
    return sql.SQL("({}) {} ({})").format(
        sql.SQL(", ").join(parts), sql.SQL(op), sql.SQL(", ").join(sql.Literal(v) for v in values)
    )


def pg_range_where(plan, lo, hi):
    parts = key_sql(plan)
    conds = []
    if lo is not None:
        conds.append(_row_cmp(parts, ">=", lo))
    if hi is not None:
        conds.append(_row_cmp(parts, "<", hi))
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL("")


def pg_digest(cur, plan, lo=None, hi=None, extra_minmax=()):
    """(count, hash sum, {column index: (min, max)} for timestamp columns, {name: (min, max)} for extra_minmax)."""
    select = [sql.SQL("count(*)"), sql.SQL("coalesce(sum({}), 0)::text").format(_hash_sql(line_sql(plan)))]
    ts = plan.timestamp_indexes
    for i in ts:
        ident = sql.Identifier(plan.columns[i]["name"])
        select += [sql.SQL("min({})::text").format(ident), sql.SQL("max({})::text").format(ident)]
    for name in extra_minmax:
        ident = sql.Identifier(name)
        select += [sql.SQL("min({})::text").format(ident), sql.SQL("max({})::text").format(ident)]
    query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(select), plan.ident) + pg_range_where(plan, lo, hi)
    cur.execute(query)
    row = cur.fetchone()
    count, total = row[0], int(row[1]) & MASK
    minmax = {i: (row[2 + 2 * n], row[3 + 2 * n]) for n, i in enumerate(ts)}
    base = 2 + 2 * len(ts)
    extra = {name: (row[base + 2 * n], row[base + 2 * n + 1]) for n, name in enumerate(extra_minmax)}
    return count, total, minmax, extra


# -- SQLite side -------------------------------------------------------------------------


class SideDigest:
    """Digest of the SQLite side of a table (or of a key range), streamed."""

    def __init__(self):
        self.rows_read = 0
        self.count = 0
        self.total = 0
        self.minmax = {}
        self.rejected = 0
        self.rejects = []  # first few: (key, [(column, value, reason)])
        self.excluded = 0  # rows left out because a reject report lists them

    def add(self, plan, rows, keep_rejects=10):
        rows, excluded = plan.without_excluded(rows)
        self.excluded += excluded
        self.rows_read += excluded
        batch = normalise_batch(plan.converters, rows)
        self.rows_read += batch.size
        self.count += len(batch.lines)
        self.total = (self.total + lines_hash(batch.lines)) & MASK
        for i in plan.timestamp_indexes:
            values = set(batch.column(i))  # rows that convert only: the others are not compared
            values.discard(None)
            values.discard(NULL)
            if values:
                low, high = min(values), max(values)
                old = self.minmax.get(i)
                self.minmax[i] = (low, high) if old is None else (min(old[0], low), max(old[1], high))
        if batch.bad:
            self.rejected += len(batch.bad)
            for index in sorted(batch.bad):
                if len(self.rejects) >= keep_rejects:
                    break
                problems = [(plan.columns[c]["name"], show_value(v), reason) for c, v, reason in batch.bad[index]]
                self.rejects.append((plan.key_of(rows[index]), problems))
        return batch


def sqlite_where(plan, lo, hi):
    """(SQL condition, params) of a primary key range for SQLite."""
    cols = [quote_sqlite(plan.columns[i]["source"]) for i in plan.pk]
    key = cols[0] if len(cols) == 1 else "(" + ", ".join(cols) + ")"
    marks = "?" if len(cols) == 1 else "(" + ", ".join("?" * len(cols)) + ")"
    conds, params = [], []
    if lo is not None:
        conds.append(f"{key} >= {marks}")
        params += list(lo)
    if hi is not None:
        conds.append(f"{key} < {marks}")
        params += list(hi)
    return " AND ".join(conds), params


def sqlite_digest(sconn, plan, lo=None, hi=None, keep_rejects=10):
    where, params = sqlite_where(plan, lo, hi) if (lo is not None or hi is not None) else ("", ())
    reader = plan.reader(sconn, where, params)
    side = SideDigest()
    for rows in reader.batches():
        side.add(plan, rows, keep_rejects)
    return side


def merge_sides(sides, keep_rejects=10):
    """One SideDigest from the digests of disjoint parts of a table."""
    merged = SideDigest()
    for side in sides:
        merged.rows_read += side.rows_read
        merged.count += side.count
        merged.total = (merged.total + side.total) & MASK
        merged.rejected += side.rejected
        merged.excluded += side.excluded
        merged.rejects.extend(side.rejects[: max(0, keep_rejects - len(merged.rejects))])
        for i, (low, high) in side.minmax.items():
            old = merged.minmax.get(i)
            merged.minmax[i] = (low, high) if old is None else (min(old[0], low), max(old[1], high))
    return merged


def digest_both(cur, sconn, plan, extra_minmax=()):
    """Whole-table digests of both sides, PostgreSQL's computed in a thread meanwhile."""
    thread, pg_results = _pg_digests(cur, [plan], {plan.label: extra_minmax})
    try:
        side = sqlite_digest(sconn, plan)
    finally:
        thread.join()
    if "error" in pg_results:
        raise pg_results["error"]
    return side, pg_results[0]


def _tasks_worker(send, path, tasks, keep_rejects):
    """In a forked process: the digests of several (table, rowid range) tasks, sent back at the end."""
    sconn = open_readonly(path)
    out = []
    for index, plan, low, high in tasks:
        if low is None:
            side = sqlite_digest(sconn, plan, keep_rejects=keep_rejects)
        else:
            side = SideDigest()
            for rows in plan.reader(sconn, *plan.rowid_range(low, high)).batches():
                side.add(plan, rows, keep_rejects)
        out.append((index, side.__dict__))
    send.send(("ok", out))


def plan_tasks(sconn, plans, workers):
    """Split the tables into tasks for `workers` processes: [[(task index, plan, low, high), ...] per worker].

    A table of PARALLEL_MIN_ROWS rows or more (with a rowid) becomes one rowid range
    per worker, any other table one task; the largest tasks are handed out first,
    each to the worker with the fewest rows so far. Task indexes follow table and
    range order, so merging by index keeps the ranges in order."""
    tasks = []  # (rows, plan position, low, high)
    for position, plan in enumerate(plans):
        low, high, count = plan.extent(sconn)
        if low is not None and count >= PARALLEL_MIN_ROWS and workers > 1:
            step = (high + 1 - low) / workers
            bounds = [low + int(step * n) for n in range(workers)] + [high + 1]
            parts = [(bounds[n], bounds[n + 1]) for n in range(workers) if bounds[n] < bounds[n + 1]]
            parts[-1] = (parts[-1][0], None)  # open-ended: see TablePlan.rowid_range
            tasks += [(count / workers, position, lo, hi) for lo, hi in parts]
        else:
            tasks.append((count, position, None, None))
    order = sorted(range(len(tasks)), key=lambda n: -tasks[n][0])
    load = [0.0] * workers
    assigned = [[] for _worker in range(workers)]
    for n in order:
        rows, position, low, high = tasks[n]
        target = load.index(min(load))
        load[target] += rows
        assigned[target].append((n, position, low, high))
    return [sorted(part) for part in assigned if part]


def _receive_sides(started, count, keep_rejects):
    """The SideDigests of the count tables from the worker processes of digest_tables, merged per table in range order."""
    parts, errors = {}, []
    for proc, receive, positions in started:
        try:
            status, payload = receive.recv()
        except EOFError:
            status, payload = "error", f"worker {proc.pid} ended without a result"
        proc.join()
        if status != "ok":
            errors.append(payload)
            continue
        for n, state in payload:
            side = SideDigest()
            side.__dict__.update(state)
            parts.setdefault(positions[n], []).append((n, side))
    if errors:
        raise KitModuleError("reading the SQLite file failed: " + "; ".join(errors))
    return [merge_sides([side for _n, side in sorted(parts.get(position, []), key=lambda x: x[0])], keep_rejects)
            for position in range(count)]


def _pg_digests(cur, plans, extra_minmax):
    """A thread computing PostgreSQL's digests table after table into the dict it returns ("error": what it raised)."""
    results = {}

    def pg_side():
        try:
            for position, plan in enumerate(plans):
                results[position] = pg_digest(cur, plan, extra_minmax=extra_minmax.get(plan.label, ()))
        except BaseException as exc:  # re-raised by the caller, in its thread
            results["error"] = exc

    thread = threading.Thread(target=pg_side, name="pg-digest", daemon=True)
    thread.start()
    return thread, results


def digest_tables(cur, sconn, plans, path, workers, extra_minmax=None, keep_rejects=10):
    """[(SideDigest, pg_digest result)] for every plan, in order.

    The SQLite sides are computed by `workers` forked processes over all tables at
    once (forked before any thread starts), while one thread computes PostgreSQL's
    digests table after table over the connection: the two sides overlap across
    tables instead of waiting for each other table by table. With workers=1 the
    SQLite sides are read in this process.
    """
    started = []
    if workers > 1:
        parts = plan_tasks(sconn, plans, workers)
        jobs = [(path, [(n, plans[position], low, high) for n, position, low, high in part], keep_rejects) for part in parts]
        forked = fork_workers(_tasks_worker, jobs, connection_fds(cur.connection), name="sqlite-digest")
        started = [(proc, receive, {n: position for n, position, _l, _h in part}) for (proc, receive), part in zip(forked, parts)]
    thread, pg_results = _pg_digests(cur, plans, extra_minmax or {})
    try:
        if started:
            sides = _receive_sides(started, len(plans), keep_rejects)
        else:
            sides = [sqlite_digest(sconn, plan, keep_rejects=keep_rejects) for plan in plans]
    finally:
        thread.join()
        for proc, receive, _positions in started:
            if proc.is_alive():
                proc.terminate()
                proc.join()
            receive.close()
    if "error" in pg_results:
        raise pg_results["error"]
    return [(sides[position], pg_results[position]) for position in range(len(plans))]


# -- narrowing down ----------------------------------------------------------------------


def bisectable(sconn, plan):
    """Why key ranges cannot be used on this table, or None when they can.

    Ranges are evaluated by each side on its own values, so the SQLite keys must
    order as their normalised forms do: integers stored as integers, text as text.
    """
    if not plan.pk or plan.pk_unmatched:
        return "the table has no primary key that the SQLite table has as well"
    for i in plan.pk:
        conv = plan.converters[i]
        want = {"integer": "integer", "text": "text"}.get(conv.kind)
        if want is None or getattr(conv, "pad", False):
            return f"primary key column {conv.name} is {conv.type_name}; key ranges need integer or text keys"
        column = quote_sqlite(plan.columns[i]["source"])
        other = sconn.execute(
            f"SELECT count(*) FROM {quote_sqlite(plan.sqlite_table)} WHERE typeof({column}) != ?", (want,)
        ).fetchone()[0]
        if other:
            return f"{other} SQLite values of key column {conv.name} are not stored as {want}"
    return None


def _pg_nth_key(cur, plan, lo, hi, offset):
    parts = key_sql(plan)
    cur.execute(
        sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(sql.Identifier(plan.columns[i]["name"]) for i in plan.pk), plan.ident)
        + pg_range_where(plan, lo, hi)
        + sql.SQL(" ORDER BY {} LIMIT 1 OFFSET {}").format(sql.SQL(", ").join(parts), sql.Literal(offset))
    )
    row = cur.fetchone()
    return tuple(row) if row else None


def _sqlite_nth_key(sconn, plan, lo, hi, offset):
    cols = ", ".join(quote_sqlite(plan.columns[i]["source"]) for i in plan.pk)
    where, params = sqlite_where(plan, lo, hi)
    query = f"SELECT {cols} FROM {quote_sqlite(plan.sqlite_table)}" + (f" WHERE {where}" if where else "")
    row = sconn.execute(query + f" ORDER BY {cols} LIMIT 1 OFFSET ?", (*params, offset)).fetchone()
    return tuple(row) if row else None


def _pg_rows(cur, plan, lo, hi):
    """{key tokens: line} of a PostgreSQL range."""
    keys = [_token_sql(plan.columns[i], plan.converters[i]) for i in plan.pk]
    cur.execute(sql.SQL("SELECT {}, {} FROM {}").format(sql.SQL(", ").join(keys), line_sql(plan), plan.ident) + pg_range_where(plan, lo, hi))
    return {tuple(row[:-1]): row[-1] for row in cur.fetchall()}


def _sqlite_rows(sconn, plan, lo, hi):
    """({key tokens: line}, key order) of an SQLite range, convertible rows only."""
    where, params = sqlite_where(plan, lo, hi)
    reader = plan.reader(sconn, where, params)
    rows, order = {}, []
    for raw in reader.batches():
        raw, _excluded = plan.without_excluded(raw)
        batch = normalise_batch(plan.converters, raw)
        keys = list(zip(*[batch.column(i) for i in plan.pk]))
        for key, line in zip(keys, batch.lines):
            rows[key] = line
            order.append(key)
    return rows, order


def _sort_key(plan, key):
    out = []
    for i, token in zip(plan.pk, key):
        out.append(int(token) if plan.converters[i].kind == "integer" else copy_unescape(token).encode("utf-8"))
    return tuple(out)


def compare_rows(plan, sqlite_rows, pg_rows):
    """Differences between two {key: line} maps, in key order."""
    found = []
    for key in sorted(set(sqlite_rows) | set(pg_rows), key=lambda k: _sort_key(plan, k)):
        left, right = sqlite_rows.get(key), pg_rows.get(key)
        if left == right:
            continue
        shown_key = {plan.pk_names[n]: copy_unescape(token) for n, token in enumerate(key)}
        if right is None:
            found.append({"key": shown_key, "kind": "missing_in_postgres", "columns": []})
        elif left is None:
            found.append({"key": shown_key, "kind": "extra_in_postgres", "columns": []})
        else:
            columns = []
            for name, a, b in zip(plan.column_names, left.split("\t"), right.split("\t")):
                if a != b:
                    columns.append({"column": name, "sqlite": show_value(copy_unescape(a)), "postgres": show_value(copy_unescape(b))})
            found.append({"key": shown_key, "kind": "changed", "columns": columns})
    return found


def bisect(cur, sconn, plan, limit, counts):
    """First differing rows (up to limit), in key order, by halving key ranges.

    counts: (sqlite rows, postgres rows) of the whole table, from the first pass.
    Returns (differences, ranges examined).
    """
    found = []
    examined = [0]

    def walk(lo, hi, n_sqlite, n_pg):
        if len(found) >= limit:
            return
        examined[0] += 1
        if max(n_sqlite, n_pg) <= LEAF_ROWS:
            srows, _order = _sqlite_rows(sconn, plan, lo, hi)
            found.extend(compare_rows(plan, srows, _pg_rows(cur, plan, lo, hi))[: limit - len(found)])
            return
        if n_sqlite >= n_pg:
            mid = _sqlite_nth_key(sconn, plan, lo, hi, n_sqlite // 2)
        else:
            mid = _pg_nth_key(cur, plan, lo, hi, n_pg // 2)
        for sub_lo, sub_hi in ((lo, mid), (mid, hi)):
            if len(found) >= limit:
                return
            side = sqlite_digest(sconn, plan, sub_lo, sub_hi, keep_rejects=0)
            count, total, _mm, _extra = pg_digest(cur, plan, sub_lo, sub_hi)
            if side.count != count or side.total != total:
                walk(sub_lo, sub_hi, side.rows_read, count)

    walk(None, None, counts[0], counts[1])
    return found, examined[0]
