#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Module pg_row_counts: row counts and record age range per table."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_row_counts
short_description: Row counts, oldest and newest record of PostgreSQL tables
description:
  - For each listed table (by default every table of I(schema)) returns the number of rows and,
    where the table has the I(timestamp_column), its oldest and newest value. That is the guide's
    "Migration Verification" table, with the columns table_name, record_count, oldest_record
    and newest_record.
  - I(mode=exact) counts every row with C(count(*)). I(mode=estimate) reads the planner's
    estimate from the catalog (C(pg_class.reltuples)) instead, which is instant on large tables
    but only as fresh as the last ANALYZE or VACUUM.
  - I(digest=true) also returns a digest of each table's rows, which does not depend on the rows'
    order or on the server's version; two servers holding the same rows give the same digest
    (playbooks/upgrade.yml compares a cluster before and after a major-version upgrade with it).
  - Read-only (it runs in a read-only transaction); never reports a change. Supports check mode.
  - Table names are checked against the catalog and always quoted; an unknown table fails the
    task before anything is read.
version_added: "1.0.0"
author:
  - claude-kit maintainers (@claude-kit)
options:
  db:
    description: Database to read.
    type: str
    required: true
  schema:
    description: Schema of the tables (and of unqualified names in I(tables)).
    type: str
    default: public
  tables:
    description:
      - Tables to report, as C(name) or C(schema.name), in the order given.
      - Empty reports every ordinary and partitioned table of I(schema), by name.
    type: list
    elements: str
    default: []
  mode:
    description: C(exact) counts rows; C(estimate) reads the catalog's estimate.
    type: str
    default: exact
    choices: [exact, estimate]
  timestamp_column:
    description: Column whose min and max are reported where a table has it; empty skips them.
    type: str
    default: created_at
  digest:
    description:
      - Also read every row and return a digest of the table's contents in C(digest).
      - The digest is the sum, as an exact number, of the first 64 bits (signed) of the MD5 of
        each row's text form, read with fixed output settings (UTC, ISO dates, shortest exact
        floats, hex bytea), so neither the rows' physical order nor the session's settings change it.
      - Needs I(mode=exact); it reads the whole table, like C(count(*)).
    type: bool
    default: false
extends_documentation_fragment:
  - claude_kit.stack.claude_pg
attributes:
  check_mode:
    support: full
    description: Reads only, in check mode as well.
  diff_mode:
    support: none
    description: Nothing to compare.
requirements:
  - psycopg2 on the managed host
"""

EXAMPLES = r"""
- name: Count the rows of the guide's tables
  claude_kit.stack.pg_row_counts:
    db: claude_daemon
    tables: [usage_data, alerts, predictions]
  become: true
  become_user: postgres
  register: counts

- name: Print the verification table
  ansible.builtin.debug:
    msg: "{{ counts.report }}"

- name: Counts and digests of every table, to compare with another server's
  claude_kit.stack.pg_row_counts:
    db: claude_daemon
    digest: true
  become: true
  become_user: postgres
  register: before

- name: Fast estimates of every table, over TCP as the app role
  claude_kit.stack.pg_row_counts:
    db: claude_daemon
    mode: estimate
    login_host: db.example.org
    login_user: claude_app
    login_password: "{{ vault_postgresql_app_password }}"
    ssl_mode: verify-full
    ca_cert: /etc/claude-kit/tls/ca.crt
"""

RETURN = r"""
tables:
  description: One entry per table, in the order of I(tables) (or by name).
  returned: always
  type: list
  elements: dict
  contains:
    table_name:
      description: Table name as given (or the bare name when listing a schema).
      type: str
    record_count:
      description: Number of rows; with I(mode=estimate) the catalog's estimate, null if the table was never analyzed.
      type: int
    estimated:
      description: Whether record_count is an estimate.
      type: bool
    oldest_record:
      description: Smallest I(timestamp_column) value as ISO 8601 text; null if the column is missing or the table empty.
      type: str
    newest_record:
      description: Largest I(timestamp_column) value as ISO 8601 text; null if the column is missing or the table empty.
      type: str
    digest:
      description: The digest of the table's rows (see I(digest)), as decimal text; only with I(digest=true).
      type: str
  sample:
    - {"table_name": "alerts", "record_count": 2, "estimated": false,
       "oldest_record": "2026-11-01T10:00:00", "newest_record": "2026-11-02T09:30:00"}
total_records:
  description: Sum of record_count over the tables (estimates count as given; never-analyzed ones as 0).
  returned: always
  type: int
  sample: 2
report:
  description: The guide's verification table as aligned text lines, ready for debug output.
  returned: always
  type: list
  elements: str
  sample:
    - "table_name | record_count | oldest_record       | newest_record"
    - "alerts     |            2 | 2026-11-01T10:00:00 | 2026-11-02T09:30:00"
"""

# Imports follow the documentation, as Ansible wants them (ansible-test validate-modules).
import datetime

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.claude_kit.stack.plugins.module_utils.claude_pg import (
    check_identifier,
    connect,
    pg_argument_spec,
    split_qualified,
    sql,
)
from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import (
    VERIFICATION_COLUMNS,
    KitModuleError,
    end_module,
    render_table,
)


def format_value(value):
    """Render a min/max value for the result: ISO 8601 for dates and times, str otherwise."""
    if value is None:
        return None
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


# Output settings under which a row's text form is the same on every server and
# in every session (the digest reads rows as text).
DIGEST_SETTINGS = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
)


def set_digest_settings(cur):
    """Fix the output settings for this transaction (SET LOCAL; allowed in a read-only one)."""
    for name, value in DIGEST_SETTINGS:
        cur.execute("SELECT set_config(%s, %s, true)", (name, value))


def digest_query(ident):
    """SELECT of a table's digest; the table an identifier, always quoted. ROW(r.*), not a bare
    r: a bare alias means the column of that name where the table has one."""
    return sql.SQL(
        "SELECT coalesce(sum(('x' || left(md5(ROW(r.*)::text), 16))::bit(64)::bigint::numeric), 0)::text FROM {} AS r"
    ).format(ident)


def estimate_from_reltuples(reltuples):
    """pg_class.reltuples -> a row count; -1 (PostgreSQL 14+) means never analyzed -> None."""
    if reltuples is None or reltuples < 0:
        return None
    return int(round(reltuples))


def check_options(params):
    """(schema, [(schema, table)] asked for, timestamp column or ""), checked."""
    try:
        schema = check_identifier(params["schema"], "schema")
        wanted = [split_qualified(name, schema) for name in params["tables"]]
        ts_col = check_identifier(params["timestamp_column"], "timestamp_column") if params["timestamp_column"] else ""
    except ValueError as exc:
        raise KitModuleError(str(exc)) from None
    if params.get("digest") and params["mode"] != "exact":
        raise KitModuleError("digest needs mode=exact (a digest reads every row; mode=estimate reads none)")
    return schema, wanted, ts_col


def list_tables(cur, schema):
    """[(schema, table)] of the ordinary and partitioned tables of schema, by name."""
    cur.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        (schema,),
    )
    return cur.fetchall()


def table_facts(cur, db, tschema, table, ts_col):
    """(reltuples, whether the table has ts_col); fails when the table does not exist."""
    cur.execute(
        "SELECT c.reltuples, EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid"
        " AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        (ts_col, tschema, table),
    )
    found = cur.fetchone()
    if found is None:
        raise KitModuleError(f"table {tschema}.{table} does not exist in database {db}")
    return found[0], bool(ts_col) and found[1]


def count_table(cur, ident, mode, reltuples, ts_col):
    """(row count, oldest, newest) of a table; oldest and newest None without ts_col."""
    col = sql.Identifier(ts_col) if ts_col else None
    if mode == "exact":
        select = [sql.SQL("count(*)")] + ([sql.SQL("min({c})").format(c=col), sql.SQL("max({c})").format(c=col)] if col else [])
        cur.execute(sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(select), ident))
        fetched = cur.fetchone()
        return (fetched[0], fetched[1], fetched[2]) if col else (fetched[0], None, None)
    oldest = newest = None
    if col:  # min/max use an index on the column where there is one.
        cur.execute(sql.SQL("SELECT min({c}), max({c}) FROM {t}").format(c=col, t=ident))
        oldest, newest = cur.fetchone()
    return estimate_from_reltuples(reltuples), oldest, newest


def table_row(cur, params, tschema, table, label, ts_col):
    reltuples, has_ts = table_facts(cur, params["db"], tschema, table, ts_col)
    ident = sql.Identifier(tschema, table)
    count, oldest, newest = count_table(cur, ident, params["mode"], reltuples, ts_col if has_ts else "")
    row = dict(table_name=label, record_count=count, estimated=params["mode"] == "estimate",
               oldest_record=format_value(oldest), newest_record=format_value(newest))
    if params.get("digest"):
        cur.execute(digest_query(ident))
        row["digest"] = cur.fetchone()[0]
    return row


def row_counts(module):
    params = module.params
    schema, wanted, ts_col = check_options(params)
    conn = connect(module, params["db"])
    conn.set_session(readonly=True)
    cur = conn.cursor()
    try:
        if params.get("digest"):
            set_digest_settings(cur)
        labels = list(params["tables"]) if wanted else None
        wanted = wanted or list_tables(cur, schema)
        labels = labels or [table for _schema, table in wanted]
        rows = [table_row(cur, params, tschema, table, label, ts_col) for (tschema, table), label in zip(wanted, labels)]
    finally:
        conn.rollback()
        conn.close()
    return dict(
        changed=False,
        tables=rows,
        total_records=sum(row["record_count"] or 0 for row in rows),
        report=render_table(VERIFICATION_COLUMNS, rows, right_aligned=("record_count",)),
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pg_argument_spec(),
            db=dict(type="str", required=True),
            schema=dict(type="str", default="public"),
            tables=dict(type="list", elements="str", default=[]),
            mode=dict(type="str", default="exact", choices=["exact", "estimate"]),
            timestamp_column=dict(type="str", default="created_at"),
            digest=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    end_module(module, lambda: row_counts(module))


if __name__ == "__main__":
    main()
