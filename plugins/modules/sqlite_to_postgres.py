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
    key, column, value and reason, in C(rejects) (the first 100) and in the JSON file
    C(reject_report) (all of them).
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
version_added: "1.0.0"
author: claude-kit maintainers
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
extends_documentation_fragment:
  - claude_pg
attributes:
  check_mode:
    support: full
    description: Normalises every row and predicts the result; writes nothing to PostgreSQL and keeps no file.
  diff_mode:
    support: none
    description: The result lists what was (or would be) written instead.
notes:
  - Pass C(backup_path) of the result as I(src) of M(migration_verify) afterwards, to compare exactly the
    data that was migrated.
  - SQLite's own foreign keys are usually not enforced; rows whose parent is missing are rejected by
    PostgreSQL's foreign keys and show up in the report with PostgreSQL's message.
requirements:
  - psycopg2 on the managed host
  - Python 3.9 or later on the managed host
seealso:
  - module: migration_verify
"""

EXAMPLES = r"""
- name: Migrate the daemon's SQLite database into PostgreSQL
  sqlite_to_postgres:
    src: /var/lib/claude-daemon/claude-daemon.db
    db: claude_daemon
    backup_dir: /var/backups/claude-daemon
  become: true
  become_user: postgres
  register: migration

- name: What would be migrated, and which rows would be rejected
  sqlite_to_postgres:
    src: /var/lib/claude-daemon/claude-daemon.db
    db: claude_daemon
  check_mode: true
  register: preview

- name: Add what the daemon wrote to its fallback file while PostgreSQL was down, as the app role
  sqlite_to_postgres:
    src: /var/lib/claude-daemon/claude-daemon.db
    db: claude_daemon
    mode: append
    on_reject: skip
    login_host: db.example.org
    login_user: claude_app
    login_password: "{{ vault_postgresql_app_password }}"
    ssl_mode: verify-full
    ca_cert: /etc/ssl/certs/claude-ca.pem
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
      description: Column of the value, if known.
      type: str
    value:
      description: The source value, repr, at most 200 characters.
      type: str
    reason:
      description: Why it was rejected.
      type: str
    stage:
      description: C(conversion) (normalisation) or C(postgresql) (the server refused the row).
      type: str
  sample:
    - {"table": "alerts", "key": {"id": "a-17"}, "column": "timestamp", "value": "'2026-02-30 10:00:00'",
       "reason": "'2026-02-30 10:00:00' is not a valid date and time (day is out of range for month)", "stage": "conversion"}
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

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.claude_pg import check_identifier, connect, pg_argument_spec, psycopg2, sql
from ansible.module_utils.migration_digest import digest_both
from ansible.module_utils.migration_load import (
    LoadError,
    ParallelProducer,
    Producer,
    REBUILD_MIN_ROWS,
    RejectLog,
    TableLoader,
    Timer,
    advance_sequences,
    can_check_keys_after,
    check_foreign_keys,
    chunk_ranges,
    cpu_workers,
    drop_secondary_indexes,
    gc_paused,
    now_utc,
    produce,
    rebuild_indexes,
)
from ansible.module_utils.migration_plan import PlanError, build_plans, configure_session
from ansible.module_utils.migration_source import BackgroundHash, SourceError, backup, backup_name, open_readonly


class MigrationFailed(Exception):
    def __init__(self, msg, result):
        super().__init__(msg)
        self.msg = msg
        self.result = result


def _privileges(cur, plans, mode):
    """Problems with the role's privileges, found before anything is written."""
    problems, may_lock = [], True
    for plan in plans:
        cur.execute(
            "SELECT has_table_privilege(%s::oid, 'INSERT'), has_table_privilege(%s::oid, 'SELECT'),"
            " has_table_privilege(%s::oid, 'UPDATE') OR has_table_privilege(%s::oid, 'DELETE')"
            " OR has_table_privilege(%s::oid, 'TRUNCATE'), has_table_privilege(%s::oid, 'TRUNCATE')",
            (plan.oid,) * 6,
        )
        may_insert, may_select, lockable, may_truncate = cur.fetchone()
        if not may_insert or not may_select:
            problems.append(f"role {cur.connection.info.user} may not INSERT into and SELECT from table {plan.label}")
        if mode == "replace" and not may_truncate:
            problems.append(f"mode=replace needs TRUNCATE on table {plan.label}, which role {cur.connection.info.user} lacks")
        may_lock = may_lock and lockable
        for column, sequence in plan.serials:
            cur.execute(
                "SELECT has_sequence_privilege(%s, 'UPDATE') OR has_sequence_privilege(%s, 'USAGE'),"
                " has_sequence_privilege(%s, 'SELECT')",
                (sequence,) * 3,
            )
            advance, read = cur.fetchone()
            if not (advance and read):
                problems.append(f"sequence {sequence} of {plan.label}.{column} needs SELECT and UPDATE or USAGE")
        if mode == "append" and (not plan.pk or plan.pk_unmatched):
            problems.append(f"mode=append needs a primary key that the SQLite table has as well; table {plan.label} has none")
    return problems, may_lock


def _table_entry(plan, status):
    return {
        "table": plan.label,
        "status": status,
        "rows_read": 0,
        "rows_written": 0,
        "rows_skipped": 0,
        "rows_rejected": 0,
        "seconds": 0.0,
        "indexes_rebuilt": [],
        "workers": 1,
        "columns": plan.mapping(),
        "missing_columns": plan.missing,
        "extra_columns": plan.extra,
    }


def migrate(params, conn, check_mode=False, warn=None):
    """The migration; returns the result or raises MigrationFailed. conn: a fresh psycopg2 connection."""
    timer = Timer()
    warn = warn or (lambda msg: None)
    result = dict(changed=False, backup_path=None, backup_sha256=None, tables=[], rejects=[], rejected_rows=0,
                  reject_report=None, sequences=[], rows_written=0, plan_warnings=[], seconds=0.0,
                  mode=params["mode"], on_reject=params["on_reject"], foreign_key_check=None, foreign_key_check_reason=None)
    src = params["src"]
    mode = params["mode"]
    if not os.path.isfile(src):
        raise MigrationFailed(f"SQLite file {src} does not exist", result)
    try:
        check_identifier(params["schema"], "schema")
    except ValueError as exc:
        raise MigrationFailed(str(exc), result) from None
    if params["workers"] < 0:
        raise MigrationFailed(f"workers must be 0 (as many as CPUs) or more, not {params['workers']}", result)
    backup_dir = params.get("backup_dir") or os.path.dirname(os.path.abspath(src))
    if not os.path.isdir(backup_dir):
        raise MigrationFailed(f"backup_dir {backup_dir} is not a directory", result)

    if check_mode:
        conn.set_session(readonly=True)
    cur = conn.cursor()
    rejects = None
    snapshot = None
    sconn = None
    hasher = None
    try:
        configure_session(cur)
        # 1. The consistent copy (the guide's step 1), and reading from it only.
        if check_mode:
            handle, snapshot = tempfile.mkstemp(dir=backup_dir, prefix=f".{os.path.basename(src)}.check-")
            os.close(handle)
        else:
            snapshot = backup_name(src, backup_dir)
            result["backup_path"] = snapshot
        backup(src, snapshot, digest=False)
        hasher = BackgroundHash(snapshot)  # joined in finally: below
        sconn = open_readonly(snapshot, immutable=True)

        # 2. Plan and checks: every problem is reported before anything is written.
        plans, warnings = build_plans(cur, sconn, params["schema"], params["tables"])
        for message in warnings:
            result["plan_warnings"].append(message)
            warn(message)
        problems, may_lock = _privileges(cur, plans, mode)
        if problems:
            raise PlanError(problems)
        timeout = f"{int(params['lock_timeout'])}s" if params["lock_timeout"] else "0"
        cur.execute("SELECT set_config('lock_timeout', %s, true)", (timeout,))
        idents = sql.SQL(", ").join(plan.ident for plan in plans)
        locked = set()
        if mode == "empty" and not check_mode:
            lock = "SHARE ROW EXCLUSIVE" if may_lock else "ROW EXCLUSIVE"
            if not may_lock:
                message = "the role may not lock the tables against concurrent writers (that needs UPDATE or DELETE on them)"
                result["plan_warnings"].append(message)
                warn(message)
            cur.execute(sql.SQL("LOCK TABLE {} IN " + lock + " MODE").format(idents))
            if may_lock:
                locked = {(plan.schema, plan.table) for plan in plans}
        keys_after = False
        if params["foreign_key_check"] == "auto" and not check_mode:
            keys_after, why_not = can_check_keys_after(cur, plans)
        else:
            why_not = "check mode" if check_mode else "foreign_key_check=per_row"
        result["foreign_key_check"] = "after_load" if keys_after else "per_row"
        result["foreign_key_check_reason"] = None if keys_after else why_not

        entries = {plan.label: _table_entry(plan, "would_load" if check_mode else "loaded") for plan in plans}
        result["tables"] = [entries[plan.label] for plan in plans]
        complete = set()
        if mode == "empty":
            busy = []
            for plan in plans:
                cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(plan.ident))
                if not cur.fetchone()[0]:
                    continue
                side, (count, total, _mm, _x) = digest_both(cur, sconn, plan)
                same = side.count == count and side.total == total and (not side.rejected or params["on_reject"] == "skip")
                if same:
                    complete.add(plan.label)
                    entry = entries[plan.label]
                    entry.update(status="already_complete", rows_read=side.rows_read, rows_skipped=side.count, rows_rejected=side.rejected)
                else:
                    busy.append(f"{plan.label} ({count} rows in PostgreSQL, {side.count} in SQLite)")
            if busy:
                raise PlanError([
                    "mode=empty: these tables hold rows that differ from the SQLite data: " + ", ".join(busy)
                    + ". Nothing was written. Use mode=append to add the missing rows, or mode=replace to reload them"
                ])

        # 3. Load, table by table, in one transaction.
        report_path = None
        if not check_mode:
            report_path = params.get("reject_report") or snapshot + ".rejects.json"
        rejects = RejectLog(report_path, {
            "generated_at": now_utc(), "source": os.path.abspath(src), "backup": result["backup_path"],
            "backup_sha256": hasher.result, "database": params["db"], "mode": mode, "on_reject": params["on_reject"],
        })
        if mode == "replace" and not check_mode:
            cur.execute(sql.SQL("TRUNCATE {}").format(idents))
            locked = {(plan.schema, plan.table) for plan in plans}
            result["changed"] = True
        if keys_after:
            cur.execute("SELECT set_config('session_replication_role', 'replica', true)")
        workers = cpu_workers(params["workers"])
        for plan in plans:
            if plan.label in complete:
                continue
            table_timer = Timer()
            entry = entries[plan.label]
            loader = TableLoader(cur, plan, rejects, mode, dry_run=check_mode)
            append = mode == "append"
            extent = plan.extent(sconn)
            ranges = chunk_ranges(extent) if workers > 1 else None
            dropped = []
            if (params["rebuild_indexes"] == "auto" and not check_mode and mode in ("empty", "replace")
                    and extent[2] >= REBUILD_MIN_ROWS):
                # Empty here: mode=empty checked it (complete tables are skipped above), replace truncated.
                dropped = drop_secondary_indexes(cur, plan)
            if ranges:
                producer = ParallelProducer(plan, snapshot, ranges, workers, want_lines=append, want_keys=append,
                                            close_fds=[conn.fileno()])
                entry["workers"] = workers
            else:
                producer = Producer(produce(plan, sconn, want_lines=append, want_keys=append))
            try:
                loader.run(producer)
            finally:
                producer.close()
            removed = check_foreign_keys(cur, plan, rejects, locked) if keys_after and plan.foreign_keys else 0
            entry["indexes_rebuilt"] = rebuild_indexes(cur, dropped)
            entry.update(rows_read=loader.read, rows_written=loader.written - removed, rows_skipped=loader.skipped,
                         rows_rejected=loader.rejected + removed, seconds=table_timer.seconds)
        result["rows_written"] = sum(entry["rows_written"] for entry in result["tables"])
        result["rejects"] = rejects.kept
        result["rejected_rows"] = rejects.total_rows

        if keys_after:
            cur.execute("SELECT set_config('session_replication_role', 'origin', true)")
        failing = result["rejected_rows"] and params["on_reject"] == "fail"
        if failing or check_mode:
            conn.rollback()
        else:
            # 4. Sequences past the migrated ids, the copy's sha256 (a failure here still
            # rolls back), then the one commit.
            for plan in plans:
                if plan.label not in complete:
                    result["sequences"].extend(advance_sequences(cur, plan))
            result["backup_sha256"] = hasher.result()
            conn.commit()
        if failing:
            result["changed"] = False
        elif check_mode:
            result["changed"] = bool(result["rows_written"]) or (mode == "replace" and _any_rows(cur, plans))
        else:
            result["changed"] = result["changed"] or bool(result["rows_written"])
        result["backup_sha256"] = hasher.result()
        result["seconds"] = timer.seconds
        result["reject_report"] = rejects.close({"rejected_rows": result["rejected_rows"], "rows_written": result["rows_written"],
                                                "committed": not failing and not check_mode})
        if failing:
            first = result["rejects"][0]
            where = (f"Every reject is in {result['reject_report']}" if result["reject_report"]
                     else "Check mode writes no report file; the first 100 rejects are in the result")
            raise MigrationFailed(
                f"{result['rejected_rows']} rows cannot be migrated, so nothing {'would be' if check_mode else 'was'} written"
                f" (on_reject=fail). First: table {first['table']}, key {first['key']}, column {first['column']},"
                f" value {first['value']}: {first['reason']}. {where}",
                result,
            )
        return result
    except MigrationFailed:
        raise
    except PlanError as exc:
        _abort(conn, rejects)
        raise MigrationFailed("; ".join(exc.problems), result) from None
    except (SourceError, LoadError) as exc:
        _abort(conn, rejects)
        raise MigrationFailed(str(exc), result) from None
    except psycopg2.Error as exc:
        _abort(conn, rejects)
        raise MigrationFailed(f"PostgreSQL error, nothing was written: {str(exc).strip()}", result) from None
    finally:
        if hasher is not None and result["backup_sha256"] is None:
            try:
                result["backup_sha256"] = hasher.result()
            except SourceError:
                pass  # the run failed already; its own error is the one to report
        if sconn is not None:
            sconn.close()
        if check_mode and snapshot and os.path.exists(snapshot):
            os.unlink(snapshot)


def _any_rows(cur, plans):
    for plan in plans:
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(plan.ident))
        if cur.fetchone()[0]:
            return True
    return False


def _abort(conn, rejects):
    try:
        conn.rollback()
    except Exception:  # the connection may be gone; nothing was committed either way
        pass
    if rejects is not None:
        rejects.abandon()


def main():
    argument_spec = pg_argument_spec()
    argument_spec.update(
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
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    conn = connect(module, module.params["db"])
    try:
        with gc_paused():
            result = migrate(module.params, conn, check_mode=module.check_mode, warn=module.warn)
    except MigrationFailed as exc:
        module.fail_json(msg=exc.msg, **exc.result)
    finally:
        conn.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
