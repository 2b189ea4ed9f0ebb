"""The restore drill: both methods restored into scratch clusters, counted,
amchecked and removed, with a machine-readable result; a corrupted newest dump
makes it fail."""

import json

from helpers import DUMP_DIR, STATE_DIR, as_postgres, manifests, run_playbook

testinfra_hosts = ["backup-repo"]
PROM = "/var/lib/prometheus/node-exporter"


def test_the_drill_restores_both_methods_and_reports_success(host):
    # The textfile directory is the backup role's (test_1 checks its owner and mode).
    rc, out, _ = run_playbook("backup-drill.yml")
    assert rc == 0, out[-3000:]
    assert "Drill PASSED" in out
    result = json.loads(host.file(f"{STATE_DIR}/drill-last.json").content_string)
    assert result["ok"]
    for method in ("dump", "pgbackrest"):
        run = result["methods"][method]
        assert run["ok"] and run["duration_seconds"] > 0 and run["restore_seconds"] > 0
        assert run["amcheck_indexes"] >= 8
        assert run["row_counts"]["public.alerts"] > 0
    assert result["methods"]["dump"]["row_counts"] == json.loads(
        host.file(f"{DUMP_DIR}/{result['methods']['dump']['name'].split('.')[0]}.json").content_string)["row_counts"]
    prom = host.file(f"{PROM}/claude_kit_drill_dump.prom").content_string
    assert 'claude_kit_drill_last_run_ok{method="dump"} 1' in prom
    assert "claude_kit_drill_last_duration_seconds" in prom
    # The scratch clusters are gone and nothing listens on the drill's port.
    assert host.check_output("ls -A /var/lib/claude-kit/backup/drill") == ""
    assert host.run("ss -ltnx | grep -q 5499").rc != 0


def test_a_corrupted_newest_dump_makes_the_drill_fail(host):
    newest = manifests(host)[0]["name"]
    host.check_output("truncate -s -200 %s/%s", DUMP_DIR, newest)
    rc, out, _ = run_playbook("backup-drill.yml")
    assert rc != 0
    assert "Drill FAILED" in out
    result = json.loads(host.file(f"{STATE_DIR}/drill-last.json").content_string)
    assert not result["ok"] and not result["methods"]["dump"]["ok"]
    assert "sha256" in result["methods"]["dump"]["error"]
    assert result["methods"]["pgbackrest"]["ok"]
    assert 'claude_kit_drill_last_run_ok{method="dump"} 0' in host.file(f"{PROM}/claude_kit_drill_dump.prom").content_string
    assert host.service("claude-kit-backup-drill.service").is_running is False
    assert host.run("systemctl is-failed claude-kit-backup-drill.service").stdout.strip() == "failed"
    # The next dump and drill are good again.
    assert host.run("systemctl start claude-kit-backup-dump.service").rc == 0
    assert as_postgres(host, "/usr/local/bin/claude-kit-backup drill").rc == 0
