"""playbooks/migrate.yml end to end: a legacy SQLite file of the guide's schema
goes into PostgreSQL, is verified, and what is wrong is caught and reported.

Each database host migrates its own file into fresh databases of its own
(claude_migrate, claude_migrate_bad), so the other tests are not affected.
"""

import json

import pytest
import testinfra.utils.ansible_runner
from helpers import INVENTORY, PROJECT_DIR, psql, run_module, run_playbook

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("database")
ALL_HOSTS = testinfra_hosts
RUNBOOK = str(PROJECT_DIR / "playbooks" / "migrate.yml")
GOOD = "/var/lib/postgresql/legacy.db"
BAD = "/var/lib/postgresql/legacy_bad.db"

# The legacy file: tests/fixtures/make_legacy_sqlite.py (shared with the stack scenario), run with
# the host's python3. It mixes epoch seconds and milliseconds with ISO text, 'true' and 0/1
# booleans, JSON as text; "--bad" adds rows no conversion can save.
MAKE_LEGACY = (PROJECT_DIR / "tests" / "fixtures" / "make_legacy_sqlite.py").read_text()


def count(host, table, db):
    return int(psql(host, f"SELECT count(*) FROM {table}", db)[0])


@pytest.fixture(scope="module")
def hosts_by_name():
    return {name: testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}") for name in ALL_HOSTS}


@pytest.fixture(scope="module")
def runbook(hosts_by_name):
    for h in hosts_by_name.values():
        for db in ("claude_migrate", "claude_migrate_bad"):
            psql(h, f"DROP DATABASE IF EXISTS {db}", "postgres")
            psql(h, f"CREATE DATABASE {db} OWNER claude_owner", "postgres")
            h.check_output(
                "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d %s -c 'SET ROLE claude_owner' -f %s",
                db, "/var/lib/claude-kit/schema/schema.sql",
            )
        h.check_output("rm -f /var/lib/postgresql/legacy*")
        h.check_output("runuser -u postgres -- python3 -c %s %s", MAKE_LEGACY, GOOD)
        h.check_output("runuser -u postgres -- python3 -c %s %s --bad", MAKE_LEGACY, BAD)
    args = ("-e", "migrate_hosts=database", "-e", "migrate_db=claude_migrate", "-e", f"migrate_source={GOOD}")
    steps = {"first": run_playbook(*args, playbook=RUNBOOK), "again": run_playbook(*args, playbook=RUNBOOK)}
    steps["counts_after_again"] = {
        n: [count(h, t, "claude_migrate") for t in ("users", "usage_data", "alerts", "predictions")]
        for n, h in hosts_by_name.items()
    }
    # One host at a time: a failed source stops the runbook before the next
    # host (serial: 1), which is what an operator wants from a migration.
    steps["bad"] = {
        n: run_playbook(
            "-e", "migrate_hosts=database", "-e", "migrate_db=claude_migrate_bad", "-e", f"migrate_source={BAD}",
            "--limit", n, playbook=RUNBOOK,
        )
        for n in hosts_by_name
    }
    yield steps
    for h in hosts_by_name.values():
        psql(h, "DROP DATABASE IF EXISTS claude_migrate", "postgres")
        psql(h, "DROP DATABASE IF EXISTS claude_migrate_bad", "postgres")
        h.check_output("rm -f /var/lib/postgresql/legacy*")


def test_runbook_migrates_verifies_and_prints_the_table(host, runbook):
    rc, output, _recap = runbook["first"]
    assert rc == 0, output[-4000:]
    assert "table_name" in output and "record_count" in output and "oldest_record" in output
    assert [count(host, t, "claude_migrate") for t in ("users", "usage_data", "alerts", "predictions")] == [1, 300, 20, 1]


def test_values_are_normalised_by_target_type(host, runbook):
    # Row 2 was stored as epoch milliseconds, row 1 as epoch seconds, row 3 as ISO text.
    assert psql(host, "SELECT timestamp FROM usage_data WHERE id = 2", "claude_migrate") == ["2026-03-01 10:02:00"]
    assert psql(host, "SELECT timestamp FROM usage_data WHERE id = 1", "claude_migrate") == ["2026-03-01 10:01:00"]
    assert psql(host, "SELECT timestamp FROM usage_data WHERE id = 3", "claude_migrate") == ["2026-03-01 10:03:00"]
    # 'true' / 'false' / 0 / 1 became real booleans; JSON text became jsonb.
    rows = psql(host, "SELECT id, acknowledged, metadata->>'n' FROM alerts WHERE id IN ('a-1','a-2','a-3','a-4') ORDER BY id",
                "claude_migrate")
    assert rows == ["a-1|t|1", "a-2|t|2", "a-3|f|3", "a-4|f|4"]
    assert psql(host, "SELECT cost_usd FROM usage_data WHERE id = 300", "claude_migrate") == ["3.7500"]


def test_sequences_are_past_the_migrated_ids(host, runbook):
    new_id = psql(host, "INSERT INTO usage_data (timestamp) VALUES (now()) RETURNING id", "claude_migrate")[0]
    psql(host, f"DELETE FROM usage_data WHERE id = {new_id}", "claude_migrate")
    assert int(new_id) > 300


def test_running_the_runbook_again_adds_nothing(host, runbook):
    rc, output, _recap = runbook["again"]
    assert rc == 0, output[-4000:]
    assert runbook["counts_after_again"][host.backend.get_hostname()] == [1, 300, 20, 1]


def test_a_row_altered_afterwards_is_caught_by_key(host, runbook):
    name = host.backend.get_hostname()
    psql(host, "UPDATE alerts SET title = 'tampered' WHERE id = 'a-7'", "claude_migrate")
    try:
        res = run_module(name, "claude_kit.stack.migration_verify", {"src": GOOD, "db": "claude_migrate"})[name]
    finally:
        psql(host, "UPDATE alerts SET title = 'alert 7' WHERE id = 'a-7'", "claude_migrate")
    assert res.get("failed") is True
    assert res["differing_tables"] == ["alerts"]
    alerts = next(t for t in res["tables"] if t["table"] == "alerts")
    assert "a-7" in json.dumps(alerts["differences"])
    # Restored: it verifies again.
    assert not run_module(name, "claude_kit.stack.migration_verify", {"src": GOOD, "db": "claude_migrate"})[name].get("failed")


def test_bad_rows_fail_the_run_are_reported_and_nothing_is_committed(host, runbook):
    rc, output, _recap = runbook["bad"][host.backend.get_hostname()]
    assert rc != 0
    assert [count(host, t, "claude_migrate_bad") for t in ("users", "usage_data", "alerts", "predictions")] == [0, 0, 0, 0]
    reports = host.check_output(
        "find /var/lib/postgresql -maxdepth 1 -name 'legacy_bad.db.*rejects.json' -printf '%f\\n'"
    ).split()
    assert len(reports) == 1, output[-3000:]
    report = json.loads(host.file(f"/var/lib/postgresql/{reports[0]}").content_string)
    rejects = report["rejects"]
    found = [(r["table"], json.dumps(r["key"])) for r in rejects]
    for table, key in [("usage_data", "9001"), ("alerts", "bad-json"), ("alerts", "bad-date")]:
        assert any(t == table and key in k for t, k in found), found
