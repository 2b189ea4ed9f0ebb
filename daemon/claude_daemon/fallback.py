"""Copying the writes made during a fallback into PostgreSQL, exactly once.

While PostgreSQL is unreachable every insert/update goes to the SQLite file
and, in the same SQLite transaction, into its `fallback_outbox` with a fresh
UUID (the sync_id). When PostgreSQL answers again, drain() copies the outbox
in order, in batches, one PostgreSQL transaction per batch. For each entry,
that transaction both

  1. inserts the sync_id into fallback_sync_log (files/0002_fallback_sync.sql;
     primary key, ON CONFLICT DO NOTHING) and
  2. applies the write, but only if step 1 inserted a row.

Only after that transaction has committed are the batch's entries deleted
from the outbox. A crash (or kill -9) before the commit leaves nothing in PostgreSQL
and the entries in the outbox: they are applied on the next run. A crash
after the commit but before the delete leaves their sync_ids in the log: the
next run finds them there and skips them. Either way each write lands once.
Two daemons draining the same entries at once are serialised by the primary
key in the same way.

SERIAL ids: usage_data/predictions rows are inserted without their SQLite id
and PostgreSQL assigns one; the log keeps (origin, local_id) -> remote_id so
that a later update of such a row, made during the same fallback, finds it.
Alerts keep their text id; one that already exists in PostgreSQL is a
conflict: PostgreSQL's row is kept and the fallback's is preserved in the
log's payload column (outcome 'conflict'), never silently dropped.

Writes whose COMMIT was cut off by a connection loss ("in doubt": they may or
may not be in PostgreSQL) are also put in the outbox, flagged. On replay an
in-doubt insert is skipped when an identical row (every column the daemon
wrote, including its microsecond created_at) is already there.
"""

from __future__ import annotations

import collections
import json
import logging

import psycopg2
import psycopg2.errors
import psycopg2.extras

from . import schema, sqlbuild
from .stores import _adapt_pg, is_connection_error

log = logging.getLogger("claude_daemon.fallback")

BATCH_SIZE = 200

_LOG_CLAIM = (
    "INSERT INTO fallback_sync_log (sync_id, origin, table_name, operation, local_id, outcome, written_at) "
    "VALUES (%s, %s, %s, %s, %s, 'applied', %s) ON CONFLICT (sync_id) DO NOTHING RETURNING sync_id"
)
_LOG_RESULT = (
    "UPDATE fallback_sync_log SET outcome = %s, remote_id = %s, detail = %s, payload = %s WHERE sync_id = %s"
)


def _conditions(table, where):
    out = []
    for name, op, value in where:
        col = schema.column(table, name)
        if op not in ("=", "<>", "<", "<=", ">", ">="):
            raise schema.InvalidIdentifier(f"invalid operator {op!r} in outbox entry")
        out.append((col.name, op, None if value is None else schema.coerce(table, col.name, value)))
    return out


def _find_same(cur, table, values):
    """The id of a row equal to `values` on every given column, or None."""
    parts, params = [], []
    for name, value in values.items():
        parts.append(f"{schema.quote(name)} IS NOT DISTINCT FROM %s")
        params.append(_adapt_pg(table, name, value))
    where = " AND ".join(parts) if parts else "TRUE"
    cur.execute(f"SELECT {schema.quote('id')} FROM {schema.quote(table)} WHERE {where} LIMIT 1", params)
    row = cur.fetchone()
    return None if row is None else row["id"]


def _apply(cur, entry, origin):
    """Apply one outbox entry; return (outcome, remote_id, detail)."""
    payload = json.loads(entry["payload"])
    table = schema.table(entry["table_name"])
    values = schema.coerce_row(table, payload["values"])
    in_doubt = bool(entry["in_doubt"])
    if entry["operation"] == "insert":
        if table in schema.SERIAL_TABLES:
            values.pop("id", None)  # never reuse SQLite's serial id
            if in_doubt:
                existing = _find_same(cur, table, values)
                if existing is not None:
                    return "duplicate", str(existing), "in-doubt write was already in PostgreSQL"
            sql, params = sqlbuild.insert(table, values, "%s", _adapt_pg)
            cur.execute(sql, params)
            return "applied", str(cur.fetchone()["id"]), None
        sql, params = sqlbuild.insert(table, values, "%s", _adapt_pg, on_conflict_do_nothing="id")
        cur.execute(sql, params)
        if cur.fetchone() is None:
            if in_doubt:
                return "duplicate", values["id"], "in-doubt write was already in PostgreSQL"
            return "conflict", values["id"], "id already exists in PostgreSQL; PostgreSQL's row was kept"
        return "applied", values["id"], None
    if entry["operation"] == "update":
        conditions = _conditions(table, payload["where"])
        if table in schema.SERIAL_TABLES:
            mapped = []
            for name, op, value in conditions:
                if name == "id" and value is not None:
                    cur.execute(
                        "SELECT remote_id FROM fallback_sync_log WHERE origin = %s AND table_name = %s "
                        "AND operation = 'insert' AND local_id = %s AND remote_id IS NOT NULL",
                        (origin, table, str(value)))
                    found = cur.fetchone()
                    if found is None:
                        return "no_match", None, "the row was not copied from this fallback file"
                    mapped.append((name, op, int(found["remote_id"])))
                else:
                    mapped.append((name, op, value))
            conditions = mapped
        sql, params = sqlbuild.update(table, values, conditions, "%s", _adapt_pg)
        cur.execute(sql, params)
        rows = cur.fetchall()
        if not rows:
            return "no_match", None, "no row in PostgreSQL matched the update"
        return "applied", ",".join(str(r["id"]) for r in rows)[:255], None
    raise schema.InvalidValue(f"unknown outbox operation {entry['operation']!r}")


def apply_entries(cur, entries, origin):
    """Apply a batch in the caller's transaction; return one outcome per entry."""
    outcomes = []
    for entry in entries:
        cur.execute("SAVEPOINT outbox_entry")
        cur.execute(_LOG_CLAIM, (entry["sync_id"], origin, entry["table_name"], entry["operation"],
                                 entry["local_id"], entry["written_at"]))
        if cur.fetchone() is None:  # copied by an earlier run that died before the outbox delete
            cur.execute("RELEASE SAVEPOINT outbox_entry")
            outcomes.append("skipped")
            continue
        try:
            outcome, remote_id, detail = _apply(cur, entry, origin)
        except (psycopg2.Error, ValueError) as exc:
            if isinstance(exc, psycopg2.Error) and is_connection_error(exc, cur.connection):
                raise
            # Refused by PostgreSQL: keep it, with the reason, in the log rather
            # than block every later entry behind it.
            cur.execute("ROLLBACK TO SAVEPOINT outbox_entry")
            cur.execute(_LOG_CLAIM, (entry["sync_id"], origin, entry["table_name"], entry["operation"],
                                     entry["local_id"], entry["written_at"]))
            outcome, remote_id, detail = "rejected", None, str(exc).strip().splitlines()[0][:1000]
        payload = None if outcome == "applied" else psycopg2.extras.Json(json.loads(entry["payload"]))
        cur.execute(_LOG_RESULT, (outcome, remote_id, detail, payload, entry["sync_id"]))
        cur.execute("RELEASE SAVEPOINT outbox_entry")
        if outcome not in ("applied",):
            log.warning("fallback sync outcome=%s table=%s sync_id=%s detail=%s", outcome, entry["table_name"],
                        entry["sync_id"], detail)
        outcomes.append(outcome)
    return outcomes


def drain(pg, sqlite, batch_size=None, after_commit=None):
    """Copy the whole outbox into PostgreSQL; return a Counter of outcomes.

    Raises StoreUnavailable if PostgreSQL goes away meanwhile (what was
    committed stays committed; the rest waits for the next run).
    `after_commit(batch)` runs between the PostgreSQL commit and the outbox
    delete; the tests use it to simulate a crash at exactly that point.
    """
    batch_size = batch_size or BATCH_SIZE
    origin = sqlite.origin_id()
    counts = collections.Counter()
    while True:
        batch = sqlite.outbox_batch(batch_size)
        if not batch:
            return counts
        try:
            outcomes = pg.run(lambda cur, b=batch: apply_entries(cur, b, origin))
        except psycopg2.errors.UndefinedTable as exc:
            raise RuntimeError("table fallback_sync_log is missing: apply files/0002_fallback_sync.sql "
                               "(the kit's schema migrations) so that fallback writes can be copied") from exc
        if after_commit is not None:
            after_commit(batch)
        sqlite.outbox_delete([e["seq"] for e in batch])
        counts.update(outcomes)
