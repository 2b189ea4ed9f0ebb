"""Each method can be switched off, and on again: off, the database tier drops
the dump role and stops archiving (one restart), the timers stop; on again,
everything is back and a backup of each method succeeds."""

import os

import pytest
from helpers import get, run_playbook, scalar, start_unit

testinfra_hosts = ["backup-repo"]
CONVERGE = os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml")


@pytest.fixture(scope="module")
def db():
    return get("backup-db")


def test_both_methods_off(host, db):
    rc, out, _ = run_playbook(CONVERGE, "-e", "kit_backup_dump=false", "-e", "kit_backup_pgbackrest=false")
    assert rc == 0, out[-3000:]
    assert scalar(db, "SELECT count(*) FROM pg_roles WHERE rolname = 'claude_backup'") == "0"
    assert scalar(db, "SHOW archive_mode") == "off"
    assert "host    claude_daemon   claude_backup" not in db.file("/etc/postgresql/15/main/pg_hba.conf").content_string
    assert not db.service("pgbackrest").is_running and not host.service("pgbackrest").is_running
    assert not host.file("/etc/claude-kit/backup.pgpass").exists
    for name in ("dump", "pgbackrest-full", "pgbackrest-diff", "drill"):
        timer = host.service(f"claude-kit-backup-{name}.timer")
        assert not timer.is_running and not timer.is_enabled


def test_both_methods_on_again(host, db):
    rc, out, _ = run_playbook(CONVERGE)
    assert rc == 0, out[-3000:]
    assert scalar(db, "SELECT pg_has_role('claude_backup', 'pg_read_all_data', 'member')") == "t"
    assert scalar(db, "SHOW archive_mode") == "on"
    assert start_unit(host, "claude-kit-backup-dump.service").rc == 0
    assert start_unit(host, "claude-kit-backup-pgbackrest-diff.service").rc == 0
