"""playbooks/restore.yml with pgBackRest: back to a point in time before a bad
DELETE (rows written after that time are not there), and to the latest state
(nothing committed is lost)."""

import time

import pytest
from helpers import get, insert_alerts, psql, run_playbook, scalar, start_unit, unique

testinfra_hosts = ["backup-repo"]


@pytest.fixture(scope="module")
def db():
    return get("backup-db")


def count(db, prefix):
    return int(scalar(db, f"SELECT count(*) FROM alerts WHERE id LIKE '{prefix}-%'"))


def test_restore_to_a_time_before_a_bad_delete(host, db):
    keep, after = unique("keep"), unique("after")
    insert_alerts(db, keep, 300)
    time.sleep(1.5)
    target = scalar(db, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
    time.sleep(1.5)
    psql(db, f"DELETE FROM alerts WHERE id LIKE '{keep}-%'")
    insert_alerts(db, after, 40)
    assert count(db, keep) == 0
    rc, out, _ = run_playbook("restore.yml", "-e", "restore_method=pgbackrest", "-e", f"restore_target_time='{target}'")
    assert rc == 0, out[-3000:]
    assert count(db, keep) == 300
    assert count(db, after) == 0
    # A primary again, writable, with the recovery settings taken back out.
    assert scalar(db, "SELECT pg_is_in_recovery()") == "f"
    insert_alerts(db, unique("write"), 1)
    # (recovery_target_time is read at server start only; the file is what a later start would see.)
    auto_conf = db.file("/var/lib/postgresql/15/main/postgresql.auto.conf").content_string
    assert "recovery_target" not in auto_conf and "restore_command" not in auto_conf


def test_restore_the_latest_state_loses_nothing_committed(host, db):
    # A differential after the timeline switch, as the daily timer takes it.
    assert start_unit(host, "claude-kit-backup-pgbackrest-diff.service").rc == 0
    latest = insert_alerts(db, unique("latest"), 75)
    total = int(scalar(db, "SELECT count(*) FROM alerts"))
    rc, out, _ = run_playbook("restore.yml", "-e", "restore_method=pgbackrest")
    assert rc == 0, out[-3000:]
    assert int(scalar(db, "SELECT count(*) FROM alerts")) == total
    assert count(db, latest) == 75


def test_a_time_before_every_backup_is_refused_before_anything_stops(db):
    started = scalar(db, "SELECT pg_postmaster_start_time()", "postgres")
    rc, out, recap = run_playbook("restore.yml", "-e", "restore_method=pgbackrest",
                                  "-e", "restore_target_time='2001-01-01 00:00:00+00'")
    assert rc != 0
    assert "no pgBackRest backup ended before 2001-01-01" in out
    assert recap["backup-db"]["changed"] == 0
    assert scalar(db, "SELECT pg_postmaster_start_time()", "postgres") == started
