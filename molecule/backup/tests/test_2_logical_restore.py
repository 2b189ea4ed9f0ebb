"""playbooks/restore.yml with dumps: a damaged dump is refused before anything
is stopped; a dropped table comes back whole, with the manifest's counts."""

import pytest
from helpers import (DUMP_DIR, get, insert_alerts, manifest_of, manifests, psql, run_playbook, scalar, start_unit,
                     unique)

testinfra_hosts = ["backup-repo"]


@pytest.fixture(scope="module")
def db():
    return get("backup-db")


def postmaster_start(db):
    return scalar(db, "SELECT pg_postmaster_start_time()", "postgres")


def test_a_dump_with_one_byte_flipped_is_refused_before_anything_stops(host, db):
    assert start_unit(host, "claude-kit-backup-dump.service").rc == 0
    newest = manifests(host)[0]["name"]
    size = int(host.check_output("stat -c %%s %s/%s", DUMP_DIR, newest))
    # Flip one byte in the middle of the archive (xor 0x01), in place.
    host.check_output(
        "python3 -c %s %s %s",
        "import sys; f = open(sys.argv[1], 'r+b'); f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); "
        "f.write(bytes([b[0] ^ 1])); f.close()",
        f"{DUMP_DIR}/{newest}", str(size // 2),
    )
    started = postmaster_start(db)
    users = scalar(db, "SELECT count(*) FROM users")
    rc, out, recap = run_playbook("restore.yml", "-e", f"restore_dump={newest}")
    assert rc != 0
    assert "sha256" in out and newest in out
    # Nothing was stopped, swapped or restored; the damaged dump is set aside.
    assert recap["backup-db"]["changed"] == 0
    assert postmaster_start(db) == started
    assert scalar(db, "SELECT count(*) FROM users") == users
    assert host.file(f"{DUMP_DIR}/failed/{newest}").exists
    assert not host.file(f"{DUMP_DIR}/{newest}").exists
    assert newest not in [m["name"] for m in manifests(host)]


def test_a_dropped_table_is_back_with_the_manifests_counts(host, db):
    insert_alerts(db, unique("restore"), 120)
    assert start_unit(host, "claude-kit-backup-dump.service").rc == 0
    manifest = manifest_of(host, manifests(host)[0]["name"])
    assert manifest["row_counts"]["public.alerts"] >= 120
    psql(db, "DROP TABLE alerts")
    rc, out, _ = run_playbook("restore.yml")
    assert rc == 0, out[-3000:]
    for table, rows in manifest["row_counts"].items():
        assert int(scalar(db, f"SELECT count(*) FROM {table}")) == rows, table
    # The database it replaced is kept aside, and the roles have their rights on the new one.
    assert psql(db, "SELECT datname FROM pg_database WHERE datname LIKE 'claude_daemon_before_%'", "postgres")
    assert scalar(db, "SELECT has_table_privilege('claude_app', 'alerts', 'INSERT')") == "t"
    assert scalar(db, "SELECT has_database_privilege('claude_app', 'claude_daemon', 'CONNECT')") == "t"
    assert scalar(db, "SELECT has_database_privilege('claude_backup', 'claude_daemon', 'CONNECT')") == "t"
    assert scalar(db, "SELECT has_database_privilege('public', 'claude_daemon', 'CONNECT')") == "f"
    assert scalar(db, "SELECT has_schema_privilege('claude_app', 'public', 'CREATE')") == "f"
    # And the next scheduled dump works against the swapped-in database.
    assert start_unit(host, "claude-kit-backup-dump.service").rc == 0
