# -*- coding: utf-8 -*-
"""One run of the sqlite_to_postgres module, step by step.

MigrationRun.run() takes the steps in order, one method each:

1. open_source        the consistent copy of the SQLite file (backup API), read from then on
2. plan               tables present on both sides, in foreign-key order (migration_plan)
3. check_privileges   every problem is reported before anything is written
4. prepare_tables     lock timeout and locks, how foreign keys are checked, tables already
                      complete (mode=empty, by their digests), TRUNCATE (mode=replace)
5. load               per table: drop_indexes, the COPY (migration_copy) fed by a producer
                      (migration_workers), check_keys, rebuild_indexes (migration_ddl)
6. finish             on_reject=fail with rejects, or check mode: roll back; else
                      advance_sequences, await_backup_sha256, commit; the reject report
7. archive_source     with archive_source=true, once committed: rename the source file

The whole run is one PostgreSQL transaction: any failure before the commit leaves the
target as it was. A failure raises KitModuleError carrying the result so far.
"""

from __future__ import annotations

import os
import tempfile

from ansible_collections.claude_kit.stack.plugins.module_utils.claude_pg import check_identifier, psycopg2, sql
from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError, Timer, cpu_workers, gc_paused
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_copy import RejectLog, TableLoader, now_utc
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_ddl import (
    advance_sequences,
    can_check_keys_after,
    check_foreign_keys,
    drop_secondary_indexes,
    rebuild_indexes,
)
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_digest import digest_both
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_plan import PlanError, build_plans, configure_session
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_source import (
    BackgroundHash,
    SourceError,
    archive,
    backup,
    backup_name,
    open_readonly,
    utc_stamp,
)
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_workers import connection_fds, table_producer


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


def _table_privileges(cur, plan, mode):
    """(problems, whether the role may lock the table against writers) for one table."""
    who = cur.connection.info.user
    cur.execute(
        "SELECT has_table_privilege(%s::oid, 'INSERT'), has_table_privilege(%s::oid, 'SELECT'),"
        " has_table_privilege(%s::oid, 'UPDATE') OR has_table_privilege(%s::oid, 'DELETE')"
        " OR has_table_privilege(%s::oid, 'TRUNCATE'), has_table_privilege(%s::oid, 'TRUNCATE')",
        (plan.oid,) * 6,
    )
    may_insert, may_select, lockable, may_truncate = cur.fetchone()
    problems = []
    if not may_insert or not may_select:
        problems.append(f"role {who} may not INSERT into and SELECT from table {plan.label}")
    if mode == "replace" and not may_truncate:
        problems.append(f"mode=replace needs TRUNCATE on table {plan.label}, which role {who} lacks")
    if mode == "append" and (not plan.pk or plan.pk_unmatched):
        problems.append(f"mode=append needs a primary key that the SQLite table has as well; table {plan.label} has none")
    return problems, lockable


def _sequence_privileges(cur, plan):
    """Problems with the rights on the table's sequences (advanced after the load)."""
    problems = []
    for column, sequence in plan.serials:
        cur.execute(
            "SELECT has_sequence_privilege(%s, 'UPDATE') OR has_sequence_privilege(%s, 'USAGE'),"
            " has_sequence_privilege(%s, 'SELECT')",
            (sequence,) * 3,
        )
        advance, read = cur.fetchone()
        if not (advance and read):
            problems.append(f"sequence {sequence} of {plan.label}.{column} needs SELECT and UPDATE or USAGE")
    return problems


class MigrationRun:
    """One run: params (the module's options), conn (a fresh psycopg2 connection, not
    autocommit). run() returns the result or raises KitModuleError with the result so far."""

    def __init__(self, params, conn, check_mode=False, warn=None):
        self.params = params
        self.conn = conn
        self.check_mode = check_mode
        self.warn = warn or (lambda msg: None)
        self.mode = params["mode"]
        self.timer = Timer()
        self.result = dict(changed=False, backup_path=None, backup_sha256=None, archived_path=None, tables=[], rejects=[],
                           rejected_rows=0, reject_report=None, sequences=[], rows_written=0, plan_warnings=[], seconds=0.0,
                           mode=self.mode, on_reject=params["on_reject"], foreign_key_check=None, foreign_key_check_reason=None)
        self.cur = self.snapshot = self.sconn = self.hasher = self.rejects = None
        self.stamp = utc_stamp()  # names the backup copy and the archived source alike
        self.plans, self.entries, self.complete, self.locked = [], {}, set(), set()
        self.may_lock = self.keys_after = self.committed = False

    def run(self):
        self.check_options()
        try:
            with gc_paused():
                self.open_source()
                self.plan()
                self.check_privileges()
                self.prepare_tables()
                self.load()
                self.finish()
        except KitModuleError as exc:
            self.abort()
            exc.result = self.result
            raise
        except psycopg2.Error as exc:
            self.abort()
            raise KitModuleError(f"PostgreSQL error, nothing was written: {str(exc).strip()}", self.result) from None
        except BaseException:
            self.abort()
            raise
        finally:
            self.close()
        self.archive_source()
        return self.result

    def fail(self, msg):
        raise KitModuleError(msg, self.result)

    def note(self, message):
        """A plan warning: in the result and as an Ansible warning."""
        self.result["plan_warnings"].append(message)
        self.warn(message)

    # 0. options that need no connection ------------------------------------------------------
    def check_options(self):
        params, src = self.params, self.params["src"]
        if not os.path.isfile(src):
            self.fail(f"SQLite file {src} does not exist")
        try:
            check_identifier(params["schema"], "schema")
        except ValueError as exc:
            self.fail(str(exc))
        if params["workers"] < 0:
            self.fail(f"workers must be 0 (as many as CPUs) or more, not {params['workers']}")
        self.backup_dir = params.get("backup_dir") or os.path.dirname(os.path.abspath(src))
        if not os.path.isdir(self.backup_dir):
            self.fail(f"backup_dir {self.backup_dir} is not a directory")

    # 1. ------------------------------------------------------------------------------------
    def open_source(self):
        """The consistent copy (the guide's step 1), hashed in a thread meanwhile, and reading from it only.
        In check mode a temporary copy, removed by close()."""
        src = self.params["src"]
        if self.check_mode:
            self.conn.set_session(readonly=True)
        self.cur = self.conn.cursor()
        configure_session(self.cur)
        if self.check_mode:
            handle, self.snapshot = tempfile.mkstemp(dir=self.backup_dir, prefix=f".{os.path.basename(src)}.check-")
            os.close(handle)
        else:
            self.snapshot = self.result["backup_path"] = backup_name(src, self.backup_dir, self.stamp)
        backup(src, self.snapshot, digest=False)
        self.hasher = BackgroundHash(self.snapshot)  # joined by close() at the latest
        self.sconn = open_readonly(self.snapshot, immutable=True)

    # 2. ------------------------------------------------------------------------------------
    def plan(self):
        self.plans, warnings = build_plans(self.cur, self.sconn, self.params["schema"], self.params["tables"])
        for message in warnings:
            self.note(message)

    # 3. ------------------------------------------------------------------------------------
    def check_privileges(self):
        problems, self.may_lock = [], True
        for plan in self.plans:
            found, lockable = _table_privileges(self.cur, plan, self.mode)
            problems += found + _sequence_privileges(self.cur, plan)
            self.may_lock = self.may_lock and lockable
        if problems:
            raise PlanError(problems)

    # 4. ------------------------------------------------------------------------------------
    def prepare_tables(self):
        self.lock_tables()
        self.choose_key_check()
        status = "would_load" if self.check_mode else "loaded"
        self.entries = {plan.label: _table_entry(plan, status) for plan in self.plans}
        self.result["tables"] = [self.entries[plan.label] for plan in self.plans]
        if self.mode == "empty":
            self.find_complete_tables()
        self.open_reject_log()
        if self.mode == "replace" and not self.check_mode:
            self.cur.execute(sql.SQL("TRUNCATE {}").format(self.idents()))
            self.locked = {(plan.schema, plan.table) for plan in self.plans}
            self.result["changed"] = True
        if self.keys_after:
            self.cur.execute("SELECT set_config('session_replication_role', 'replica', true)")

    def idents(self):
        return sql.SQL(", ").join(plan.ident for plan in self.plans)

    def lock_tables(self):
        """The lock timeout; mode=empty locks the tables against concurrent writers."""
        timeout = f"{int(self.params['lock_timeout'])}s" if self.params["lock_timeout"] else "0"
        self.cur.execute("SELECT set_config('lock_timeout', %s, true)", (timeout,))
        if self.mode != "empty" or self.check_mode:
            return
        if not self.may_lock:
            self.note("the role may not lock the tables against concurrent writers (that needs UPDATE or DELETE on them)")
        lock = "SHARE ROW EXCLUSIVE" if self.may_lock else "ROW EXCLUSIVE"
        self.cur.execute(sql.SQL("LOCK TABLE {} IN " + lock + " MODE").format(self.idents()))
        if self.may_lock:
            self.locked = {(plan.schema, plan.table) for plan in self.plans}

    def choose_key_check(self):
        """Foreign keys checked after the load, set-based, where allowed; else per row by PostgreSQL."""
        if self.params["foreign_key_check"] == "auto" and not self.check_mode:
            self.keys_after, why_not = can_check_keys_after(self.cur, self.plans)
        else:
            why_not = "check mode" if self.check_mode else "foreign_key_check=per_row"
        self.result["foreign_key_check"] = "after_load" if self.keys_after else "per_row"
        self.result["foreign_key_check_reason"] = None if self.keys_after else why_not

    def has_rows(self, plan):
        self.cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(plan.ident))
        return self.cur.fetchone()[0]

    def find_complete_tables(self):
        """mode=empty: a table holding exactly the rows of the SQLite copy (same digest) is
        complete (a finished earlier run) and left alone; one holding other rows stops the run."""
        busy = []
        for plan in self.plans:
            if not self.has_rows(plan):
                continue
            side, (count, total, _mm, _x) = digest_both(self.cur, self.sconn, plan)
            if side.count == count and side.total == total and (not side.rejected or self.params["on_reject"] == "skip"):
                self.complete.add(plan.label)
                self.entries[plan.label].update(status="already_complete", rows_read=side.rows_read, rows_skipped=side.count,
                                                rows_rejected=side.rejected)
            else:
                busy.append(f"{plan.label} ({count} rows in PostgreSQL, {side.count} in SQLite)")
        if busy:
            raise PlanError([
                "mode=empty: these tables hold rows that differ from the SQLite data: " + ", ".join(busy)
                + ". Nothing was written. Use mode=append to add the missing rows, or mode=replace to reload them"
            ])

    def open_reject_log(self):
        path = None if self.check_mode else self.params.get("reject_report") or self.snapshot + ".rejects.json"
        self.rejects = RejectLog(path, {
            "generated_at": now_utc(), "source": os.path.abspath(self.params["src"]), "backup": self.result["backup_path"],
            "backup_sha256": self.hasher.result, "database": self.params["db"], "mode": self.mode,
            "on_reject": self.params["on_reject"],
        })

    # 5. ------------------------------------------------------------------------------------
    def load(self):
        workers = cpu_workers(self.params["workers"])
        for plan in self.plans:
            if plan.label not in self.complete:
                self.load_table(plan, workers)
        self.result["rows_written"] = sum(entry["rows_written"] for entry in self.result["tables"])
        self.result["rejects"] = self.rejects.kept
        self.result["rejected_rows"] = self.rejects.total_rows
        if self.keys_after:
            self.cur.execute("SELECT set_config('session_replication_role', 'origin', true)")

    def load_table(self, plan, workers):
        timer, entry = Timer(), self.entries[plan.label]
        loader = TableLoader(self.cur, plan, self.rejects, self.mode, dry_run=self.check_mode)
        extent = plan.extent(self.sconn)
        dropped = self.drop_indexes(plan, extent[2])
        producer, entry["workers"] = table_producer(plan, self.sconn, self.snapshot, extent, workers,
                                                    want_keys=self.mode == "append", close_fds=connection_fds(self.conn))
        try:
            loader.run(producer)
        finally:
            producer.close()
        removed = self.check_keys(plan)
        entry["indexes_rebuilt"] = rebuild_indexes(self.cur, dropped)
        entry.update(rows_read=loader.read, rows_written=loader.written - removed, rows_skipped=loader.skipped,
                     rows_rejected=loader.rejected + removed, seconds=timer.seconds)

    def drop_indexes(self, plan, rows):
        """rebuild_indexes=auto: drop the secondary indexes of a table about to be loaded empty (mode=empty
        checked it, and complete tables are not loaded; replace truncated it). [] otherwise."""
        if self.params["rebuild_indexes"] != "auto" or self.check_mode or self.mode not in ("empty", "replace"):
            return []
        return drop_secondary_indexes(self.cur, plan, rows)

    def check_keys(self, plan):
        """With the foreign keys checked after the load: remove and reject the orphans; how many."""
        if not self.keys_after or not plan.foreign_keys:
            return 0
        return check_foreign_keys(self.cur, plan, self.rejects, self.locked)

    # 6. ------------------------------------------------------------------------------------
    def finish(self):
        failing = bool(self.result["rejected_rows"]) and self.params["on_reject"] == "fail"
        if failing or self.check_mode:
            self.conn.rollback()
        else:
            self.advance_sequences()
            self.await_backup_sha256()  # a failure here still rolls back
            self.commit()
        self.result["changed"] = self.changed(failing)
        self.await_backup_sha256()
        self.result["seconds"] = self.timer.seconds
        self.result["reject_report"] = self.rejects.close({
            "rejected_rows": self.result["rejected_rows"], "rows_written": self.result["rows_written"], "committed": self.committed,
        })
        if failing:
            self.fail(self.failure_message())

    def advance_sequences(self):
        """Sequences past the migrated ids."""
        for plan in self.plans:
            if plan.label not in self.complete:
                self.result["sequences"].extend(advance_sequences(self.cur, plan))

    def await_backup_sha256(self):
        self.result["backup_sha256"] = self.hasher.result()

    def commit(self):
        self.conn.commit()
        self.committed = True

    def changed(self, failing):
        if failing:
            return False
        if self.check_mode:
            return bool(self.result["rows_written"]) or (self.mode == "replace" and any(self.has_rows(p) for p in self.plans))
        return self.result["changed"] or bool(self.result["rows_written"])

    def failure_message(self):
        first, report = self.result["rejects"][0], self.result["reject_report"]
        where = (f"Every reject is in {report}" if report
                 else "Check mode writes no report file; the first 100 rejects are in the result")
        return (f"{self.result['rejected_rows']} rows cannot be migrated, so nothing {'would be' if self.check_mode else 'was'}"
                f" written (on_reject=fail). First: table {first['table']}, key {first['key']}, column {first['column']},"
                f" value {first['value']}: {first['reason']}. {where}")

    # 7. ------------------------------------------------------------------------------------
    def archive_source(self):
        """archive_source=true, once this run committed (also when every table was complete
        already, or every row present: the file's rows are in PostgreSQL either way): rename
        the source and its -wal/-shm/-journal to SRC.migrated-STAMP, STAMP that of the backup."""
        if not self.params.get("archive_source") or not self.committed:
            return
        try:
            self.result["archived_path"] = archive(self.params["src"], self.stamp)
        except SourceError as exc:
            self.fail(f"the migration was committed, but the source could not be archived: {exc.msg}")
        self.result["changed"] = True

    # the end, either way -----------------------------------------------------------------
    def abort(self):
        try:
            self.conn.rollback()
        except Exception:  # the connection may be gone; nothing was committed either way
            pass
        if self.rejects is not None:
            self.rejects.abandon()

    def close(self):
        if self.hasher is not None and self.result["backup_sha256"] is None:
            try:
                self.await_backup_sha256()
            except SourceError:
                pass  # the run failed already; its own error is the one to report
        if self.sconn is not None:
            self.sconn.close()
        if self.check_mode and self.snapshot and os.path.exists(self.snapshot):
            os.unlink(self.snapshot)


def migrate(params, conn, check_mode=False, warn=None):
    """The migration (see MigrationRun); returns the result or raises KitModuleError."""
    return MigrationRun(params, conn, check_mode, warn).run()
