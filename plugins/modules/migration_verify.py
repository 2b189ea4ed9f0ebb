#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Module migration_verify: compare an SQLite database with the PostgreSQL tables it was migrated to."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: migration_verify
short_description: Prove that PostgreSQL tables hold exactly the data of an SQLite database
description:
  - For every table present in both databases (or those in I(tables)), compares the SQLite file
    I(src) with PostgreSQL. The task fails when anything differs, with a report naming the table and
    the rows.
  - Per table it compares the row count, the minimum and maximum of every timestamp and date column,
    and a content digest. The digest is computed over the NORMALISED values, with the same converters
    as M(claude_kit.stack.sqlite_to_postgres), so a value changed after the migration is caught, not only a missing
    row. It does not depend on row order.
  - "The digest of a table is the sum, modulo 2**64, of a 64-bit hash (the first half of MD5) of each
    row's canonical line: the row's values as PostgreSQL's COPY prints them. PostgreSQL computes its
    side in SQL from its own output functions, in parallel with Python normalising the SQLite side."
  - Where the digests differ, it halves primary key ranges on both sides (bisection, through the
    primary key indexes) until a range holds at most 256 rows, then compares those rows by key and
    returns the first I(max_differences) differing keys with the differing columns. This needs an
    integer or text primary key stored as such in SQLite; otherwise the table is reported as
    differing without keys.
  - Large tables are read by several processes at once (one per CPU, at most 4), each over a range
    of SQLite rowids, while PostgreSQL computes its side. So that they all read the same data, the
    task fails if the file or its WAL changed (size or modification time) during the comparison.
    Compare a copy nobody writes to, such as the migration's C(backup_path).
  - Also returns the guide's "Migration Verification" table (table_name, record_count, oldest_record,
    newest_record, from PostgreSQL's I(timestamp_column)).
  - Rows of SQLite that cannot be normalised (those M(claude_kit.stack.sqlite_to_postgres) rejects) count as
    differences, unless I(allow_rejected) is set.
  - Read-only on both sides, in check mode too. PostgreSQL is read in a read-only REPEATABLE READ
    transaction, SQLite is opened with C(mode=ro). Never reports a change.
version_added: "1.0.0"
author:
  - claude-kit maintainers (@claude-kit)
options:
  src:
    description:
      - The SQLite database file on the managed host. Pass C(backup_path) of the M(claude_kit.stack.sqlite_to_postgres)
        result to compare with exactly the data that was migrated.
    type: path
    required: true
    aliases: [path]
  db:
    description: PostgreSQL database.
    type: str
    required: true
  schema:
    description: Schema of the tables.
    type: str
    default: public
  tables:
    description: Tables to compare; empty compares every table present in both.
    type: list
    elements: str
    default: []
  max_differences:
    description: How many differing keys to find and return per table.
    type: int
    default: 10
  reject_report:
    description:
      - The reject report of the migration (C(reject_report) of M(claude_kit.stack.sqlite_to_postgres)). The rows it lists,
        whether the conversion or PostgreSQL refused them, are left out of the comparison and counted
        in C(sqlite_excluded). Use it after a migration with I(on_reject=skip).
    type: path
  allow_rejected:
    description:
      - Do not count SQLite rows that cannot be normalised as differences (after a migration with
        I(on_reject=skip)); they are still counted in C(sqlite_rejected).
    type: bool
    default: false
  timestamp_column:
    description: Column of the verification table's oldest_record and newest_record.
    type: str
    default: created_at
extends_documentation_fragment:
  - claude_kit.stack.claude_pg
attributes:
  check_mode:
    support: full
    description: Reads only, in check mode as well.
  diff_mode:
    support: none
    description: The differences are in the result.
requirements:
  - psycopg2 on the managed host
seealso:
  - module: claude_kit.stack.sqlite_to_postgres
"""

EXAMPLES = r"""
- name: Migrate
  claude_kit.stack.sqlite_to_postgres:
    src: /var/lib/claude-daemon/claude-daemon.db
    db: claude_daemon
  become: true
  become_user: postgres
  register: migration

- name: Verify PostgreSQL against the copy that was migrated
  claude_kit.stack.migration_verify:
    src: "{{ migration.backup_path }}"
    db: claude_daemon
    reject_report: "{{ migration.reject_report }}"  # rows the migration rejected (on_reject=skip) are left out
  become: true
  become_user: postgres
  register: verification

- name: Print the verification table
  ansible.builtin.debug:
    msg: "{{ verification.report }}"
"""

RETURN = r"""
tables:
  description: One entry per table, in foreign-key order.
  returned: always
  type: list
  elements: dict
  contains:
    table:
      description: Table name.
      type: str
    match:
      description: Whether the table is identical on both sides.
      type: bool
    sqlite_rows:
      description: Rows in SQLite.
      type: int
    sqlite_rejected:
      description: SQLite rows that cannot be normalised.
      type: int
    sqlite_excluded:
      description: SQLite rows left out because I(reject_report) lists them.
      type: int
    postgres_rows:
      description: Rows in PostgreSQL.
      type: int
    digest_sqlite:
      description: Digest of the SQLite side (16 hex digits).
      type: str
    digest_postgres:
      description: Digest of the PostgreSQL side.
      type: str
    timestamps:
      description: Per timestamp or date column, min and max on both sides and whether they match.
      type: dict
    differences:
      description:
        - Up to I(max_differences) rows, in key order; C(kind) is C(missing_in_postgres),
          C(extra_in_postgres), C(changed) (with the differing C(columns), both values) or
          C(not_convertible) (a SQLite row the migration rejects, with the reasons).
      type: list
      elements: dict
    note:
      description: Why differing rows could not be located, when they could not.
      type: str
    seconds:
      description:
        - Time spent comparing the table after the digests, mostly locating differing rows. The digests of
          all tables are computed together, both sides in parallel; the top-level C(seconds) includes them.
      type: float
  sample:
    - {"table": "usage_data", "match": false, "sqlite_rows": 1000, "postgres_rows": 1000,
       "differences": [{"key": {"id": "17"}, "kind": "changed",
                        "columns": [{"column": "tokens_used", "sqlite": "'1200'", "postgres": "'1300'"}]}]}
verification:
  description: The guide's verification table, from PostgreSQL.
  returned: always
  type: list
  elements: dict
  sample:
    - {"table_name": "usage_data", "record_count": 1000, "oldest_record": "2026-01-01 00:00:00", "newest_record": "2026-01-02 10:00:00"}
report:
  description: The verification table as aligned text lines, then one line per differing table.
  returned: always
  type: list
  elements: str
plan_warnings:
  description: Tables present on one side only, column mismatches (each also an Ansible warning).
  returned: always
  type: list
  elements: str
differing_tables:
  description: Names of the tables that differ.
  returned: always
  type: list
  elements: str
seconds:
  description: Duration of the whole comparison.
  returned: always
  type: float
"""

# Imports follow the documentation, as Ansible wants them (ansible-test validate-modules).
import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.claude_kit.stack.plugins.module_utils.claude_pg import check_identifier, connect, pg_argument_spec, psycopg2
from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import (
    VERIFICATION_COLUMNS,
    KitModuleError,
    Timer,
    cpu_workers,
    end_module,
    gc_paused,
    render_table,
)
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_digest import bisect, bisectable, digest_tables
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_plan import build_plans, configure_session
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_source import open_readonly


def describe(entry):
    """One line saying how a table differs."""
    bits = []
    convertible = entry["sqlite_rows"] - entry["sqlite_rejected"] - entry["sqlite_excluded"]
    if convertible != entry["postgres_rows"]:
        shown = f" ({convertible} compared)" if entry["sqlite_rejected"] or entry["sqlite_excluded"] else ""
        bits.append(f"{entry['sqlite_rows']} rows in SQLite{shown}, {entry['postgres_rows']} in PostgreSQL")
    if entry["sqlite_rejected"]:
        bits.append(f"{entry['sqlite_rejected']} SQLite rows cannot be normalised")
    for column, mm in entry["timestamps"].items():
        if not mm["match"]:
            bits.append(f"{column} range SQLite {mm['sqlite_min']}..{mm['sqlite_max']}, PostgreSQL {mm['postgres_min']}..{mm['postgres_max']}")
    if entry["digest_sqlite"] != entry["digest_postgres"]:
        bits.append("content digests differ")
    keys = []
    for diff in entry["differences"]:
        key = ",".join(f"{k}={v}" for k, v in (diff["key"] or {}).items())
        cols = ",".join(c["column"] for c in diff.get("columns", []))
        keys.append(f"{key} {diff['kind']}" + (f" ({cols})" if cols else ""))
    if keys:
        bits.append("rows: " + "; ".join(keys))
    if entry.get("note"):
        bits.append(entry["note"])
    return f"{entry['table']}: " + "; ".join(bits)


def load_reject_keys(path):
    """{table: [key, ...]} from a reject report written by sqlite_to_postgres."""
    try:
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)
    except (OSError, ValueError) as exc:
        raise KitModuleError(f"cannot read the reject report {path}: {exc}") from None
    keys = {}
    for entry in report.get("rejects", []):
        keys.setdefault(entry.get("table"), []).append(entry.get("key"))
    return keys


def fingerprint(path):
    """Size and modification time of the database and of its WAL: a writer changes them.

    An empty WAL counts as none: opening a WAL database, even read-only, may create
    an empty one, and the last connection to close removes it.
    """
    out = []
    for name in (path, path + "-wal"):
        try:
            st = os.stat(name)
        except FileNotFoundError:
            out.append(None)
            continue
        out.append((st.st_size, st.st_mtime_ns) if st.st_size or name == path else None)
    return out


def verify_table(cur, sconn, plan, params, digests, extra):
    """Compare one table; digests: (SQLite side, PostgreSQL side) from digest_tables."""
    timer = Timer()
    ts_col = params["timestamp_column"]
    side, (count, total, minmax, extra_mm) = digests
    entry = {
        "table": plan.label,
        "match": True,
        "sqlite_rows": side.rows_read,
        "sqlite_rejected": side.rejected,
        "sqlite_excluded": side.excluded,
        "postgres_rows": count,
        "digest_sqlite": f"{side.total:016x}",
        "digest_postgres": f"{total:016x}",
        "timestamps": {},
        "differences": [],
        "note": None,
        "seconds": 0.0,
    }
    for i in plan.timestamp_indexes:
        s_min, s_max = side.minmax.get(i, (None, None))
        p_min, p_max = minmax[i]
        entry["timestamps"][plan.columns[i]["name"]] = {
            "sqlite_min": s_min, "sqlite_max": s_max, "postgres_min": p_min, "postgres_max": p_max,
            "match": (s_min, s_max) == (p_min, p_max),
        }
    verification = {"table_name": plan.label, "record_count": count, "oldest_record": None, "newest_record": None}
    if extra:
        verification["oldest_record"], verification["newest_record"] = extra_mm[ts_col]

    same_content = side.count == count and side.total == total
    if not params["allow_rejected"] and side.rejected:
        entry["match"] = False
        for key, problems in side.rejects[: params["max_differences"]]:
            entry["differences"].append({
                "key": key, "kind": "not_convertible",
                "columns": [{"column": c, "sqlite": v, "reason": r} for c, v, r in problems],
            })
    if not same_content or not all(mm["match"] for mm in entry["timestamps"].values()):
        entry["match"] = False
        room = params["max_differences"] - len(entry["differences"])
        if not same_content and room > 0:
            why = bisectable(sconn, plan)
            if why:
                entry["note"] = f"differing rows not located: {why}"
            else:
                found, _ranges = bisect(cur, sconn, plan, room, (side.rows_read, count))
                entry["differences"].extend(found)
    entry["seconds"] = timer.seconds
    return entry, verification


def _has_column(cur, plan, name):
    cur.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped)",
        (plan.oid, name),
    )
    return cur.fetchone()[0]


def check_options(params):
    try:
        check_identifier(params["schema"], "schema")
        if params["timestamp_column"]:
            check_identifier(params["timestamp_column"], "timestamp_column")
    except ValueError as exc:
        raise KitModuleError(str(exc)) from None
    if params["max_differences"] < 1:
        raise KitModuleError("max_differences must be at least 1")


def compare(cur, sconn, params, result, warn):
    """Plan the tables, digest both sides, compare table by table into result."""
    configure_session(cur)
    plans, warnings = build_plans(cur, sconn, params["schema"], params["tables"])
    if params.get("reject_report"):
        listed = load_reject_keys(params["reject_report"])
        for plan in plans:
            plan.load_excluded(listed.get(plan.label, ()))
    result["plan_warnings"] = warnings
    for message in warnings:
        warn(message)
    ts_col = params["timestamp_column"]
    extras = {plan.label: [ts_col] if ts_col and _has_column(cur, plan, ts_col) else [] for plan in plans}
    digests = digest_tables(cur, sconn, plans, params["src"], cpu_workers(), extras)
    for plan, pair in zip(plans, digests):
        entry, verification = verify_table(cur, sconn, plan, params, pair, extras[plan.label])
        result["tables"].append(entry)
        result["verification"].append(verification)


def read_both(params, conn, result, warn):
    """compare() in a read-only REPEATABLE READ transaction and with SQLite opened read-only."""
    conn.set_session(readonly=True, isolation_level="REPEATABLE READ")
    sconn = None
    try:
        # No long read transaction (in rollback-journal mode it would stop every writer until
        # the end): the file's size and times are compared before and after instead.
        sconn = open_readonly(params["src"])
        compare(conn.cursor(), sconn, params, result, warn)
    except psycopg2.Error as exc:
        raise KitModuleError(f"PostgreSQL error: {str(exc).strip()}") from None
    finally:
        conn.rollback()
        if sconn is not None:
            sconn.close()


def verify(params, conn, warn=None):
    """The comparison; returns the result, or raises KitModuleError (with the result) when anything differs."""
    timer = Timer()
    result = dict(changed=False, tables=[], verification=[], report=[], differing_tables=[], plan_warnings=[], seconds=0.0)
    try:
        check_options(params)
        before = fingerprint(params["src"])
        read_both(params, conn, result, warn or (lambda msg: None))
        if fingerprint(params["src"]) != before:
            raise KitModuleError(
                f"{params['src']} changed while it was being compared (is the daemon writing to it?):"
                " compare the copy the migration read (its backup_path) instead"
            )
    except KitModuleError as exc:
        exc.result = result
        raise
    result["seconds"] = timer.seconds
    result["report"] = render_table(VERIFICATION_COLUMNS, result["verification"], right_aligned=("record_count",))
    differing = [entry for entry in result["tables"] if not entry["match"]]
    result["differing_tables"] = [entry["table"] for entry in differing]
    if differing:
        lines = [describe(entry) for entry in differing]
        result["report"] += ["DIFFERS " + line for line in lines]
        raise KitModuleError(f"{len(differing)} of {len(result['tables'])} tables differ: " + " | ".join(lines), result)
    return result


def argument_spec():
    spec = pg_argument_spec()
    spec.update(
        src=dict(type="path", required=True, aliases=["path"]),
        db=dict(type="str", required=True),
        schema=dict(type="str", default="public"),
        tables=dict(type="list", elements="str", default=[]),
        max_differences=dict(type="int", default=10),
        allow_rejected=dict(type="bool", default=False),
        reject_report=dict(type="path"),
        timestamp_column=dict(type="str", default="created_at"),
    )
    return spec


def run(module):
    conn = connect(module, module.params["db"])
    try:
        with gc_paused():
            return verify(module.params, conn, warn=module.warn)
    finally:
        conn.close()


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    end_module(module, lambda: run(module))


if __name__ == "__main__":
    main()
