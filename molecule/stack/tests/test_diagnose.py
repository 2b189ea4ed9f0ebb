"""playbooks/diagnose.yml on the whole stack (docs/runbooks/diagnose.md).

The scenario's first test file (they run in file order, and the later ones
need a healthy stack): it runs the runbook on the healthy stack, breaks the
database in two rounds as postgres on stack-data, lets the runbook name each
breakage without changing anything, repairs them with its fix tags, and
leaves the stack as it found it. Two rounds, because a deleted role cannot
also lack a privilege: round 1 deletes the application role and drops a
table, round 2 revokes a privilege and changes the role's password. The rows
of the dropped table (the legacy migration's, which test_stack.py reads) are
kept aside and put back; the daemons, which fall back to SQLite while their
role is gone, are on PostgreSQL again at the end.
"""

import os
import re
import subprocess
import time

from test_stack import APP_NAMES, DATA, KIT, healths, psql, wait_for_database

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
PLAYBOOK = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "diagnose.yml")
CREDENTIALS = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ""), "credentials")
testinfra_hosts = ["stack-data"]

APP_USER = KIT["kit_app_user"]
OWNER = KIT.get("kit_owner_role", "claude_owner")
# The hosts the runbook plays on: the (first) database host and every app host.
HOSTS = ("stack-data", *APP_NAMES)
# The rows of the table round 1 drops, kept aside on the database host (server-side COPY as postgres).
KEPT = "/var/lib/postgresql/diagnose-test-predictions.copy"


def diagnose(*args):
    proc = subprocess.run(["ansible-playbook", "-i", INVENTORY, PLAYBOOK, *args], capture_output=True, text=True,
                          timeout=900, check=False, env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    return proc.returncode, proc.stdout + proc.stderr


def recap(out):
    """{host: {ok: n, changed: n, failed: n, ...}} from the PLAY RECAP."""
    return {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
            for m in re.finditer(r"^(\S+)\s+: (ok=\d+.*)$", out, re.M)}


def findings(out):
    """The summary's numbered findings: '[case] host: what is wrong' (printed as a YAML block,
    or with escaped newlines by a callback that does not print blocks)."""
    return re.findall(r"^\s*\d+\. (\[[a-z -]+\] \S+: .*)$", out.replace("\\n", "\n"), re.M)


def unchanged(out):
    counts = recap(out)
    assert set(HOSTS) <= set(counts), counts
    return all(counts[h]["changed"] == 0 for h in HOSTS)


def app_role_count():
    return psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{APP_USER}'")


# No separate run on the untouched stack: the first run below counts exactly
# the two findings it caused (no false positive), and the last run proves a
# healthy stack reports nothing and changes nothing.
def test_a_deleted_role_and_a_dropped_table_are_named_and_nothing_is_changed(host):
    wait_for_database("postgresql")
    assert int(psql("SELECT count(*) FROM predictions")) > 0, "the legacy migration loaded predictions"
    psql(f"COPY predictions TO '{KEPT}'")
    psql("DROP TABLE predictions")
    # Deleted by hand as one would: its grants first, then the role.
    psql(f"DROP OWNED BY {APP_USER}")
    psql(f"DROP ROLE {APP_USER}")
    # Its open sessions outlive DROP ROLE (pg_stat_activity no longer names them): end them.
    psql(f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{KIT['kit_db_name']}'"
         " AND backend_type = 'client backend' AND usename IS NULL")
    wait_for_database("sqlite")
    rc, out = diagnose()
    assert rc != 0, out[-4000:]
    found = findings(out)
    assert f"[connection failed] stack-data: role {APP_USER} does not exist" in found, found
    assert "[schema not applied] stack-data: table predictions (created by schema.sql) is missing" in found, found
    assert len(found) == 2, found
    assert "rows are gone" in out and "docs/runbooks/backup-restore.md" in out
    # Without a fix tag nothing changed: no host reports a change, and both are still broken.
    assert unchanged(out), recap(out)
    assert app_role_count() == "0"
    assert psql("SELECT to_regclass('predictions') IS NULL") == "t"


def test_the_fix_tags_bring_back_the_role_and_the_table_empty(host):
    rc, out = diagnose("--tags", "fix_connection,fix_schema")
    assert rc == 0, out[-4000:]
    assert "Re-created EMPTY: predictions." in out and "docs/runbooks/backup-restore.md" in out
    assert "Repaired (2):" in out and "No finding." in out
    assert app_role_count() == "1"
    assert psql("SELECT count(*) FROM predictions") == "0"
    assert psql("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'predictions'") == OWNER
    assert psql(f"SELECT has_table_privilege('{APP_USER}', 'predictions', 'INSERT')") == "t"
    # Put the kept rows back (what a restore would do), for the tests that read them.
    psql(f"COPY predictions FROM '{KEPT}'")
    psql("SELECT setval(pg_get_serial_sequence('predictions', 'id'), (SELECT max(id) FROM predictions))")
    DATA.check_output(f"rm -f {KEPT}")
    wait_for_database("postgresql", timeout=180)


def test_a_revoked_privilege_and_a_changed_password_are_named_and_repaired(host):
    psql(f"REVOKE INSERT ON alerts FROM {APP_USER}")
    psql(f"ALTER ROLE {APP_USER} PASSWORD 'not-the-inventorys-password-0'")
    rc, out = diagnose()
    assert rc != 0, out[-4000:]
    found = findings(out)
    assert f"[connection failed] stack-data: {APP_USER} lacks INSERT on table alerts" in found, found
    assert "[connection failed] stack-data: the role's password is not the inventory's postgresql_app_password" in found
    # The new password came with a new salt: PgBouncer's copy of the verifier no longer fits.
    assert f"[connection failed] stack-data: PgBouncer's auth_file holds another SCRAM verifier for {APP_USER} " \
           "than PostgreSQL" in found, found
    assert len(found) == 3, found
    assert unchanged(out), recap(out)
    # No secret in the output: neither the inventory's password nor any verifier.
    with open(os.path.join(CREDENTIALS, "postgresql_app_password"), encoding="utf-8") as handle:
        assert handle.read().split()[0] not in out
    assert "SCRAM-SHA-256$" not in out and "not-the-inventorys-password" not in out
    rc, out = diagnose("--tags", "fix_connection")
    assert rc == 0, out[-4000:]
    assert "Repaired (3):" in out and "No finding." in out
    assert psql(f"SELECT has_table_privilege('{APP_USER}', 'alerts', 'INSERT')") == "t"
    # Through PgBouncer again: the daemons are back on PostgreSQL.
    wait_for_database("postgresql", timeout=180)


def test_afterwards_it_finds_nothing_and_the_daemons_are_on_postgresql_again(host):
    rc, out = diagnose()
    assert rc == 0, out[-4000:]
    assert "No finding." in out and findings(out) == []
    assert unchanged(out), recap(out)
    # Every case printed its table.
    for line in ("connection failed | server", "connection failed | grants", "schema not applied | tables",
                 "restart loop | state", "total_ms | calls | mean_ms"):
        assert " ".join(line.split()) in " ".join(out.split()), line
    wait_for_database("postgresql", timeout=180)
    # Whatever they wrote into SQLite meanwhile is copied in.
    deadline = time.time() + 90
    while time.time() < deadline and any(body.get("pending_sync") for _s, _h, body in healths()):
        time.sleep(2)
    assert all(body.get("pending_sync") == 0 for _s, _h, body in healths())
    assert psql("SELECT model_version FROM predictions WHERE id = 1") == "v1"
