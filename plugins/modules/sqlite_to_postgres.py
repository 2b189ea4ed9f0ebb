#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Module sqlite_to_postgres: migrate the daemon's SQLite data into PostgreSQL."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sqlite_to_postgres
short_description: Migrate an SQLite database into existing PostgreSQL tables, checked value by value
description:
  - Takes a consistent copy of the SQLite file I(src) with SQLite's online backup API (safe while the
    daemon writes to it), returns the copy's path and sha256, and migrates from that copy.
  - Migrates every table present in both databases (or those in I(tables)) in foreign-key order (a
    referenced table before the tables referencing it, from PostgreSQL's catalog). Columns are matched
    by name; SQLite columns PostgreSQL lacks, and PostgreSQL columns SQLite lacks (which get their
    default), are listed in C(plan_warnings). A NOT NULL column without default that SQLite lacks fails the
    task before anything is written.
  - Every value is normalised for the type of the TARGET column, because SQLite stores anything
    anywhere. Timestamps come as ISO 8601 text, epoch seconds or epoch milliseconds, decided per value
    (absolute value below 10**11 seconds, from 10**11 to below 10**14 milliseconds, above rejected).
    ISO text with a UTC offset is converted to UTC; text without one is taken as UTC. Booleans come as
    0/1 or t/f, true/false, yes/no, y/n (any case). JSON must parse. Numbers must fit numeric(p,s),
    integer ranges and varchar(n) exactly; nothing is rounded, truncated or set to NULL. The complete
    rules are in docs/runbooks/migrate.md.
  - A value that cannot be converted (invalid UTF-8, a NUL character, an unparsable date, text in an
    integer column, too many decimals, ...) rejects its whole row, and so does a row PostgreSQL
    refuses (a CHECK or foreign key constraint, a duplicate key). Each reject is reported with table,
    key, column, value and reason, and for a row PostgreSQL refused the constraint and its columns
    (from the catalog), in C(rejects) (the first 100) and in the JSON file C(reject_report) (all of them).
  - With I(on_reject=fail) (default) any reject fails the task and nothing is committed; the report
    still lists every reject of the run. With I(on_reject=skip) the other rows are committed.
  - The whole run is one transaction, committed at the end. A failure or an interruption (killed
    process, lost connection) leaves the target exactly as it was; run again.
  - Rows are streamed with COPY in bounded memory, whatever the table size. Worker processes (or, for
    small tables, a helper thread) read and normalise SQLite in batches while PostgreSQL loads the
    previous ones (see I(workers)).
  - Serial and identity sequences are moved past the highest migrated value.
  - Needs INSERT and SELECT on the tables and, for the sequences, UPDATE on them (setval) or USAGE
    (nextval, as the application role C(claude_app) has). Needs no superuser, no DDL and no temporary
    table. I(mode=replace) needs TRUNCATE. As the tables' owner (or a superuser) it rebuilds their
    secondary indexes after the load (see I(rebuild_indexes)).
  - In check mode, takes a temporary copy of I(src) (removed afterwards), normalises every row and
    reports tables, row counts, column type mapping and predicted conversion rejects, in a read-only
    transaction. Rows PostgreSQL itself would refuse are only found by a real run.
  - With I(archive_source=true), once the run has committed, the source file is renamed so that
    nothing serves it again (see I(archive_source)).
version_added: "1.0.0"
author:
  - claude-kit maintainers (@claude-kit)
options:
  src:
    description: The SQLite database file on the managed host.
    type: path
    required: true
    aliases: [path]
  db:
    description: Target database.
    type: str
    required: true
  schema:
    description: Schema of the target tables.
    type: str
    default: public
  tables:
    description:
      - Tables to migrate (PostgreSQL names; the SQLite table of that name, matched case-insensitively
        if need be). Each must exist on both sides.
      - Empty migrates every table present in both.
    type: list
    elements: str
    default: []
  mode:
    description:
      - C(empty) loads into empty tables and fails, before writing anything, if a table holds rows,
        unless its rows are exactly those the SQLite copy would give (a finished earlier run); that
        table is then left alone. So a repeated run is harmless.
      - C(append) adds the rows whose primary key the table does not have yet and counts the others
        as skipped, to reconcile a fallback file written while PostgreSQL was away. Always safe to run
        again. Every table needs a primary key.
      - C(replace) empties the tables (TRUNCATE, in the same transaction) and loads them.
    type: str
    default: empty
    choices: [empty, append, replace]
  on_reject:
    description:
      - C(fail) fails the task if any row is rejected; nothing is committed.
      - C(skip) commits the rows that convert and reports the rejected ones.
    type: str
    default: fail
    choices: [fail, skip]
  backup_dir:
    description: Directory for the copy of I(src), named C(NAME.YYYYmmddTHHMMSSZ.backup). Default, the directory of I(src).
    type: path
  reject_report:
    description: Path of the JSON reject report. Default, the backup's path with C(.rejects.json) appended. Not written in check mode.
    type: path
  foreign_key_check:
    description:
      - How foreign keys of the loaded rows are checked. Either way a row whose parent is missing is
        rejected (reported with the constraint and key), never loaded.
      - C(per_row) lets PostgreSQL's foreign key triggers check each row as it is copied.
      - C(auto) does the same, except when the login role is a superuser and no table has triggers or
        rules of its own, nor a NOT VALID foreign key. Then the rows are copied with
        C(session_replication_role = replica) for this transaction only (the per-row foreign key
        triggers do not fire), and each foreign key is checked once per table afterwards, with one
        anti-join; the referenced rows are locked C(FOR KEY SHARE) as PostgreSQL's check does, and the
        rows without a parent are removed and rejected. On large tables that halves PostgreSQL's work.
        Nothing about the tables is altered, and other sessions are not affected.
      - C(foreign_key_check) in the result says which was used, and C(foreign_key_check_reason) why not C(after_load).
    type: str
    default: auto
    choices: [auto, per_row]
  rebuild_indexes:
    description:
      - C(auto) drops a table's plain secondary indexes before loading it and creates them again, from
        the definitions PostgreSQL prints for them, once its rows are in; building an index once costs
        a fraction of updating it for every row. Only for a table that is empty when its load starts
        (I(mode=empty) or I(mode=replace)), with at least 10,000 rows to load, owned by the login role
        (or one of its roles, or a superuser); only indexes that are not unique, back no constraint,
        have nothing depending on them and use the default tablespace, no comment, no statistics target,
        no CLUSTER mark, no expression or predicate, not part of a partitioned index. Primary keys and unique
        indexes stay, so duplicate keys are still refused row by row.
      - It happens inside the migration's one transaction, so an interrupted run gets the indexes back with
        the rollback. Meanwhile the table is locked C(ACCESS EXCLUSIVE), so readers in other sessions (the
        daemons of other hosts, say) wait as well, until the commit. C(indexes_rebuilt) in each table's result
        lists them.
      - C(never) keeps the indexes in place (readers of I(mode=empty) tables are not blocked).
    type: str
    default: auto
    choices: [auto, never]
  workers:
    description:
      - Processes that read and normalise a table of at least 50,000 rows in parallel, each taking every
        n-th range of rowids of the consistent copy; the rows still reach PostgreSQL in rowid order, over
        the one connection, in the one transaction.
      - C(0) uses as many as CPUs this process may run on, at most 4. C(1) uses none (a helper thread
        reads while the module's thread loads). Tables without a rowid always use one.
    type: int
    default: 0
  lock_timeout:
    description:
      - Seconds to wait for the table locks (I(mode=empty) locks the tables against concurrent writers in
        SHARE ROW EXCLUSIVE mode; I(mode=replace) truncates). C(0) waits for ever.
    type: int
    default: 60
  archive_source:
    description:
      - Once the run has committed, rename I(src), and its C(-wal), C(-shm) and C(-journal) files where
        they exist, to C(SRC.migrated-YYYYmmddTHHMMSSZ) (plus the same suffix), with the stamp of the backup
        copy's name, in the same directory (an atomic rename). The daemon's SQLite file is also its fallback
        store; once migrated it must not be served again. The new path is C(archived_path).
      - Also when the run found every table already complete (I(mode=empty)) or every row already present
        (I(mode=append)), since the file's rows are in PostgreSQL all the same. Never in check mode, never when
        the run fails or rolls back (rejects with I(on_reject=fail)). A run after it finds no I(src) and fails.
      - Fails, after the commit, if the new name is taken or the directory is not writable; the migrated
        rows stay committed.
    type: bool
    default: false
extends_documentation_fragment:
  - claude_kit.stack.claude_pg
attributes:
  check_mode:
    support: full
    description: Normalises every row and predicts the result; writes nothing to PostgreSQL, keeps no file and archives nothing.
  diff_mode:
    support: none
    description: The result lists what was (or would be) written instead.
notes:
  - Pass C(backup_path) of the result as I(src) of M(claude_kit.stack.migration_verify) afterwards, to compare exactly the
    data that was migrated.
  - SQLite's own foreign keys are usually not enforced; rows whose parent is missing are rejected by
    PostgreSQL's foreign keys and show up in the report with PostgreSQL's message.
requirements:
  - psycopg2 on the managed host
  - Python 3.9 or later on the managed host
seealso:
  - module: claude_kit.stack.migration_verify
"""

EXAMPLES = r"""
- name: Migrate the daemon's SQLite database into PostgreSQL
  claude_kit.stack.sqlite_to_postgres:
    src: /var/lib/claude-daemon/claude-daemon.db
    db: claude_daemon
    backup_dir: /var/backups/claude-daemon
  become: true
  become_user: postgres
  register: migration

- name: What would be migrated, and which rows would be rejected
  claude_kit.stack.sqlite_to_postgres:
    src: /var/lib/claude-daemon/claude-daemon.db
    db: claude_daemon
  check_mode: true
  register: preview

- name: Migrate, then rename the file so that the daemon cannot fall back to it
  claude_kit.stack.sqlite_to_postgres:
    src: /var/lib/claude-daemon/claude-daemon.db
    db: claude_daemon
    backup_dir: /var/backups/claude-daemon
    archive_source: true
  become: true
  become_user: postgres

- name: Add what the daemon wrote to its fallback file while PostgreSQL was down, as the app role
  claude_kit.stack.sqlite_to_postgres:
    src: /var/lib/claude-daemon/claude-daemon.db
    db: claude_daemon
    mode: append
    on_reject: skip
    login_host: db.example.org
    login_user: claude_app
    login_password: "{{ vault_postgresql_app_password }}"
    ssl_mode: verify-full
    ca_cert: /etc/claude-kit/tls/ca.crt
"""

RETURN = r"""
backup_path:
  description: The consistent copy of I(src) the data was read from (null in check mode, where the copy is temporary).
  returned: always
  type: str
  sample: /var/backups/claude-daemon/claude-daemon.db.20261126T194001Z.backup
backup_sha256:
  description: sha256 of that copy.
  returned: always
  type: str
  sample: 3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b
archived_path:
  description: Where I(src) was renamed to (I(archive_source=true), after the commit); null when it was not.
  returned: always
  type: str
  sample: /var/lib/claude-daemon/claude-daemon.db.migrated-20261126T194001Z
tables:
  description: One entry per table, in the order migrated (foreign-key order).
  returned: always
  type: list
  elements: dict
  contains:
    table:
      description: Table name (schema-qualified outside public).
      type: str
    status:
      description: C(loaded), C(already_complete) (I(mode=empty), rows identical to the source), C(would_load) (check mode).
      type: str
    rows_read:
      description: Rows read from SQLite.
      type: int
    rows_written:
      description: Rows written (in check mode, that would be written).
      type: int
    rows_skipped:
      description: Rows not written because their key exists (append) or the table was already complete.
      type: int
    rows_rejected:
      description: Rows rejected, by conversion or by PostgreSQL.
      type: int
    seconds:
      description: Time spent on the table.
      type: float
    indexes_rebuilt:
      description: Secondary indexes dropped before the load and built again after it (see I(rebuild_indexes)).
      type: list
      elements: str
    workers:
      description: Processes that normalised the table's rows (C(1) means the helper thread).
      type: int
    columns:
      description: Column mapping, source column and declared SQLite type to target type.
      type: list
      elements: dict
    missing_columns:
      description: PostgreSQL columns SQLite lacks (they got their default).
      type: list
      elements: str
    extra_columns:
      description: SQLite columns PostgreSQL lacks (not migrated).
      type: list
      elements: str
  sample:
    - {"table": "users", "status": "loaded", "rows_read": 3, "rows_written": 3, "rows_skipped": 0, "rows_rejected": 0, "seconds": 0.01}
rejects:
  description: The first 100 rejected values; every one is in I(reject_report).
  returned: always
  type: list
  elements: dict
  contains:
    table:
      description: Table.
      type: str
    key:
      description: Primary key of the row ({column, value}), or its SQLite rowid.
      type: dict
    column:
      description: Column of the value; for a row PostgreSQL refused, the column of the constraint it broke
        (null when the constraint has several columns, or none is known).
      type: str
    columns:
      description: Every column concerned, the constraint's columns in order (empty when none is known).
      type: list
      elements: str
    constraint:
      description: The constraint (or unique index) that refused the row; null for conversion rejects and
        for values PostgreSQL could not parse.
      type: str
    value:
      description: The source value, repr, at most 200 characters (the values of the columns as a dict for a
        constraint on several columns; the whole row when no column is known). C(b'...') only for text that
        is not valid UTF-8, and for blobs.
      type: str
    reason:
      description: Why it was rejected.
      type: str
    stage:
      description: C(conversion) (normalisation), C(postgresql) (the server refused the row) or C(foreign_key)
        (no parent row, found by the check after the load).
      type: str
  sample:
    - {"table": "alerts", "key": {"id": "a-17"}, "column": "timestamp", "columns": ["timestamp"], "constraint": null,
       "value": "'2026-02-30 10:00:00'", "reason": "'2026-02-30 10:00:00' is not a valid date and time (day is out of range for month)",
       "stage": "conversion"}
    - {"table": "alerts", "key": {"id": "a-18"}, "column": "level", "columns": ["level"], "constraint": "alerts_level_check",
       "value": "'critical'", "reason": "PostgreSQL refused the row: new row for relation \"alerts\" violates check constraint
       \"alerts_level_check\" (Failing row contains ...)", "stage": "postgresql"}
rejected_rows:
  description: Number of rejected rows.
  returned: always
  type: int
reject_report:
  description: Path of the JSON file with every reject (null in check mode).
  returned: always
  type: str
sequences:
  description: Sequences moved past the migrated values (C(setval), C(nextval)) or left alone (C(none)).
  returned: always
  type: list
  elements: dict
rows_written:
  description: Total rows written (in check mode, that would be written).
  returned: always
  type: int
foreign_key_check:
  description: C(after_load) (set-based, see I(foreign_key_check)) or C(per_row).
  returned: always
  type: str
foreign_key_check_reason:
  description: Why the foreign keys were checked per row, when I(foreign_key_check=auto) did not check them after the load.
  returned: always
  type: str
plan_warnings:
  description: Column mismatches, tables not migrated, a lock that could not be taken (each also an Ansible warning).
  returned: always
  type: list
  elements: str
seconds:
  description: Duration of the whole run.
  returned: always
  type: float
"""

# Imports follow the documentation, as Ansible wants them (ansible-test validate-modules).
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.claude_kit.stack.plugins.module_utils.claude_pg import connect, pg_argument_spec
from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import end_module
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_run import MigrationRun


def argument_spec():
    spec = pg_argument_spec()
    spec.update(
        src=dict(type="path", required=True, aliases=["path"]),
        db=dict(type="str", required=True),
        schema=dict(type="str", default="public"),
        tables=dict(type="list", elements="str", default=[]),
        mode=dict(type="str", default="empty", choices=["empty", "append", "replace"]),
        on_reject=dict(type="str", default="fail", choices=["fail", "skip"]),
        backup_dir=dict(type="path"),
        reject_report=dict(type="path"),
        lock_timeout=dict(type="int", default=60),
        foreign_key_check=dict(type="str", default="auto", choices=["auto", "per_row"]),
        rebuild_indexes=dict(type="str", default="auto", choices=["auto", "never"]),
        workers=dict(type="int", default=0),
        archive_source=dict(type="bool", default=False),
    )
    return spec


def migrate(module):
    conn = connect(module, module.params["db"])
    try:
        return MigrationRun(module.params, conn, check_mode=module.check_mode, warn=module.warn).run()
    finally:
        conn.close()


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    end_module(module, lambda: migrate(module))


if __name__ == "__main__":
    main()
