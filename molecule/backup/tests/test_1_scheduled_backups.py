"""Both methods as the timers run them: a verified dump and a verified
pgBackRest backup, archive_mode on with one restart, a killed dump that leaves
nothing that counts, and the next run that succeeds."""

import json

import pytest
from helpers import (DUMP_DIR, PG_LOG, PROGRAM, as_postgres, get, last_result, manifest_of, manifests, psql, scalar,
                     unique,
                     start_unit, wait_for)

testinfra_hosts = ["backup-repo"]


@pytest.fixture(scope="module")
def db():
    return get("backup-db")


def test_archive_mode_came_with_exactly_one_restart(db):
    # First start at installation, then one restart for everything restart-only
    # (shared_buffers, shared_preload_libraries, archive_mode) together.
    assert scalar(db, "SHOW archive_mode") == "on"
    assert "archive-push" in scalar(db, "SHOW archive_command")
    # Counted up to the first restore (test_3 restores, and a re-run of the tests sees them).
    log = db.file(PG_LOG).content_string.split("starting archive recovery")[0].split("starting point-in-time")[0]
    assert log.count("database system is ready to accept connections") == 2


def test_every_timer_is_scheduled(host):
    for name in ("dump", "pgbackrest-full", "pgbackrest-diff", "drill"):
        unit = f"claude-kit-backup-{name}.timer"
        assert host.service(unit).is_enabled
        assert host.service(unit).is_running
        next_run = host.check_output("systemctl show -P NextElapseUSecRealtime %s", unit)
        assert next_run and next_run != "n/a"


def test_the_dump_unit_produces_a_verified_dump_with_the_snapshot_counts(host, db):
    tag = unique("u")
    psql(db, f"INSERT INTO users (username, email) SELECT '{tag}-' || g, '{tag}-' || g || '@example.test' "
             "FROM generate_series(1, 250) g")
    live = int(scalar(db, "SELECT count(*) FROM users"))
    before = {m["name"] for m in manifests(host)}
    result = start_unit(host, "claude-kit-backup-dump.service")
    assert result.rc == 0, result.stderr
    new = [m for m in manifests(host) if m["name"] not in before]
    assert len(new) == 1
    manifest = manifest_of(host, new[0]["name"])
    assert manifest["verified"] and manifest["row_counts"]["public.users"] == live
    assert manifest["schema_version"] >= 2 and manifest["server_version"].startswith("15")
    assert manifest["checks"]["pg_restore_list_entries"] > 10
    # The sha256 file checks out with the standard tool.
    assert host.run("cd %s && sha256sum --check --status %s", DUMP_DIR, manifest["files"]["sha256"]).rc == 0
    assert last_result(host, "dump")["ok"] is True


def test_the_pgbackrest_unit_produces_a_verified_encrypted_backup(host):
    def info():
        return json.loads(as_postgres(host, "pgbackrest --stanza=claude --output=json info").stdout)[0]

    labels_before = [b["label"] for b in info()["backup"]]
    result = start_unit(host, "claude-kit-backup-pgbackrest-full.service")
    assert result.rc == 0, result.stderr
    after = info()
    # A new full backup (retention may have expired the oldest of the earlier ones).
    assert after["backup"][-1]["label"] not in labels_before and after["backup"][-1]["type"] == "full"
    assert after["cipher"] == "aes-256-cbc"
    assert after["status"]["code"] == 0
    last = last_result(host, "pgbackrest")
    assert last["ok"] and last["verified"] and last["label"] == after["backup"][-1]["label"]
    # Encrypted at rest: the repository's backup.info is not readable text.
    raw = host.check_output("head -c 64 /var/lib/pgbackrest/backup/claude/backup.info | od -An -c | head -1")
    assert "[backrest]" not in raw


def test_a_damaged_repository_fails_the_backup_run(host):
    # One file of the oldest full backup, overwritten with garbage of the same size.
    victim = host.check_output(
        "find /var/lib/pgbackrest/backup/claude -path '*F/pg_data/base/*' -type f -size +8k | sort | head -1")
    host.check_output("cp -p %s /var/tmp/victim.keep && head -c $(stat -c %%s %s) /dev/urandom > %s",
                      victim, victim, victim)
    try:
        result = start_unit(host, "claude-kit-backup-pgbackrest-diff.service")
        assert result.rc != 0
        last = last_result(host, "pgbackrest")
        assert not last["ok"] and "pgbackrest verify found a problem" in last["error"]
        assert host.run("systemctl is-failed claude-kit-backup-pgbackrest-diff.service").stdout.strip() == "failed"
    finally:
        host.check_output("cp -p /var/tmp/victim.keep %s && rm /var/tmp/victim.keep", victim)
    assert start_unit(host, "claude-kit-backup-pgbackrest-diff.service").rc == 0
    assert last_result(host, "pgbackrest")["ok"]


def test_a_dump_killed_midway_leaves_nothing_that_counts_and_the_next_run_succeeds(host, db):
    # Enough data that the dump takes a few seconds.
    psql(db, "CREATE TABLE bulk_for_kill (id bigint, pad text)")
    psql(db, "INSERT INTO bulk_for_kill SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 2500000) g")
    try:
        good_before = [m["name"] for m in manifests(host)]
        host.run("systemctl start --no-block claude-kit-backup-dump.service")
        assert wait_for(lambda: host.run("ls %s/.*.partial", DUMP_DIR).rc == 0, timeout=60)
        host.check_output("systemctl kill --signal=SIGKILL claude-kit-backup-dump.service")
        assert wait_for(lambda: host.service("claude-kit-backup-dump.service").is_running is False, timeout=30)
        # The unit is failed (systemctl --failed shows it), no new dump counts, and the leftovers are partials only.
        assert host.run("systemctl is-failed claude-kit-backup-dump.service").stdout.strip() == "failed"
        assert [m["name"] for m in manifests(host)] == good_before
        names = host.check_output("ls -A %s", DUMP_DIR).split()
        stray = [n for n in names if n.startswith(".") and n.endswith(".partial")]
        assert stray, names
        assert not [n for n in names if n.endswith(".dump") and n not in good_before]
    finally:
        psql(db, "DROP TABLE bulk_for_kill")
    result = start_unit(host, "claude-kit-backup-dump.service")
    assert result.rc == 0, result.stderr
    last = last_result(host, "dump")
    assert last["ok"] and set(last["removed_leftovers"]) == set(stray)
    assert not [n for n in host.check_output("ls -A %s", DUMP_DIR).split() if n.endswith(".partial")]
    assert host.run("systemctl is-failed claude-kit-backup-dump.service").rc != 0


def test_every_run_leaves_metrics_for_monitoring(host):
    # The program writes Prometheus textfile lines where node_exporter reads
    # them. The role made the directory (before any monitoring is installed,
    # so the first backups' metrics are there too); the program, as postgres,
    # may write in it, and node_exporter (its own user) may read the file.
    textfile_dir = host.file("/var/lib/prometheus/node-exporter")
    assert (textfile_dir.user, textfile_dir.group, textfile_dir.mode) == ("root", "postgres", 0o775)
    assert start_unit(host, "claude-kit-backup-dump.service").rc == 0
    prom_file = host.file("/var/lib/prometheus/node-exporter/claude_kit_dump.prom")
    assert prom_file.mode == 0o644
    prom = prom_file.content_string
    assert 'claude_kit_backup_last_run_ok{method="dump"} 1' in prom
    assert "claude_kit_backup_last_success_timestamp_seconds" in prom


def test_the_list_prints_both_methods(host):
    out = as_postgres(host, f"{PROGRAM} list").stdout
    assert "METHOD" in out and "dump" in out and "pgbackrest-full" in out
