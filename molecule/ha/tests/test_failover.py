"""What a failover costs the application, measured: the primary's container
is killed under a bounded write load (the whole host gone), then started
again; then a planned switchover; then the primary is cut off from etcd.
Runs after test_cluster.py (file order)."""

import json
import os
import pathlib
import re
import subprocess
import time
import uuid

import psycopg2
import pytest

from helpers import (
    CA_FILE,
    CREDENTIALS,
    DaemonLoad,
    EtcdPartition,
    MEMBERS,
    PGBOUNCER_PORT,
    POSTGRESQL_PORT,
    PROJECT_DIR,
    PrimaryProbe,
    SocketWriter,
    LOOP_WAIT,
    TLS_CA_ON_HOSTS,
    TTL,
    WriteLoad,
    api,
    cluster,
    connect,
    daemon_figures,
    docker,
    kill_the_primary_under_load,
    leader,
    pgbouncer_roles,
    psql,
    run_playbook,
    secret,
    stored_counts,
    wait_for,
    wait_healthy,
    wait_synchronous,
)

# What the tests below measured: printed (pytest -s) and written to
# ha-failover.json in ./kit's results directory (.cache/test-results).
REPORT = {}


def _record(key, figures):
    REPORT[key] = figures
    print(f"{key}:", json.dumps(figures))
    directory = pathlib.Path(os.environ.get("KIT_TEST_RESULTS") or PROJECT_DIR / ".cache" / "test-results")
    directory.mkdir(parents=True, exist_ok=True)
    report = {k: v for k, v in REPORT.items() if not k.endswith("_ids")}
    (directory / "ha-failover.json").write_text(json.dumps(report, indent=2) + "\n")


def test_killing_the_primary_under_write_load_loses_no_acknowledged_write():
    # A libpq client through the multi-host connection string and the reference daemon
    # (every member's PgBouncer in its DB_HOST, as deployed): the daemon's clients must see
    # only 2xx (its SQLite fallback covers the gap), and everything acknowledged must be in
    # PostgreSQL once. Every member's PgBouncer has cached its role before (test_cluster.py),
    # so the daemon finds the new primary only if that member's PgBouncer dropped what it had
    # cached (Patroni's callback): drained() waits for it.
    figures, load, daemon, stored = kill_the_primary_under_load()
    _record("kill", figures)
    old, new = figures["old_primary"], figures["new_primary"]
    assert new in MEMBERS and new != old, figures
    assert figures["probe_promoted"] == new, figures
    # A killed host acknowledges nothing (an answer already on the wire may land within the first second).
    assert figures["acked_by_killed_host_after_1s"] == 0
    lost = [i for i in load.ids() if stored.get(i, 0) != 1]
    assert lost == [], f"{len(lost)} acknowledged writes missing or duplicated: {lost[:5]}"
    # The daemon's clients: every request answered 2xx, every acknowledged alert stored once.
    assert daemon.failed == [], daemon.failed[:10]
    assert figures["daemon"]["lost"] == 0, figures["daemon"]
    # Patroni's promise: the leader lock expires at most ttl after the primary's
    # last loop, and a replica that wakes on that takes over within one loop
    # (loop_wait, 10 s). Measured here: about ttl + 5 when the killed host also
    # led etcd (etcd's new leader grants every lease its full ttl again, plus
    # Patroni's fixed 2 s status request to the dead member); see
    # docs/runbooks/failover.md.
    assert figures["seconds_to_new_primary"] <= TTL + LOOP_WAIT, figures
    # A write whose outcome the client could not know is stored at most once.
    assert all(stored.get(i, 0) <= 1 for i in load.unknown)
    REPORT["kill_ids"] = load.ids()


def test_the_killed_host_started_again_rejoins_as_a_replica_with_the_new_primarys_data():
    assert "kill" in REPORT, "runs after the kill test"
    old = REPORT["kill"]["old_primary"]
    started = time.monotonic()
    docker("start", old)
    data = wait_healthy(list(MEMBERS), 180)
    rejoined = time.monotonic() - started
    member = next(m for m in data["members"] if m["name"] == old)
    assert member["role"] in ("replica", "sync_standby")
    assert leader(data) == REPORT["kill"]["new_primary"]
    # Every write acknowledged during the failover is on the former primary now.
    ids = REPORT["kill_ids"]
    stored = wait_for(lambda: (lambda s: s if len(s) == len(ids) else None)(
        stored_counts(ids, [MEMBERS[old]])), 30, 1, "the acknowledged rows on the rejoined host")
    assert set(stored.values()) == {1}
    _record("rejoin", {"host": old, "seconds": round(rejoined, 1)})


def test_verify_runbook_follows_the_primary_after_the_failover():
    """playbooks/verify.yml finds the primary (not the first `database` host) and counts there:
    every alert the failover's load had acknowledged is counted."""
    assert "kill" in REPORT, "runs after the kill test"
    current = leader(wait_healthy(list(MEMBERS), 60))
    assert current == REPORT["kill"]["new_primary"]
    with connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM alerts")
        alerts = cur.fetchone()[0]
    rc, output, recap = run_playbook(playbook=str(PROJECT_DIR / "playbooks" / "verify.yml"))
    assert rc == 0, output[-3000:]
    # The table's task ran on the current primary only (the other members skipped it).
    block = output.split("TASK [Print the verification table]", 1)[1].split("\nPLAY ", 1)[0]
    assert re.findall(r"^ok: \[(\S+)\]", block, re.M) == [current], output[-3000:]
    assert re.search(rf"alerts\s*\|\s*{alerts}\b", output), (alerts, output[-3000:])
    assert all(r["changed"] == 0 for r in recap.values()), recap


# The secrets rotate-secrets.yml rotates on a cluster: the application role's and Patroni's own.
ROTATED = ["postgresql_app_password", "postgresql_replication_password", "postgresql_rewind_password",
           "postgresql_patroni_api_password"]


@pytest.fixture(scope="module")
def rotation():
    """One run of playbooks/rotate-secrets.yml for the four secrets, after the failover (the first
    `database` host is a replica now, which refuses ALTER ROLE), under a write load: what the
    cluster, the load and the run were before and after. One run, as an operator rotates."""
    before = wait_synchronous()
    lead = leader(before)
    first = next(iter(MEMBERS))
    # What this run is for: the primary is not where the inventory's first host is.
    assert lead != first, "runs after the kill test moved the primary off the first database host"
    old = {name: secret(name) for name in ROTATED}
    started = {name: psql(name, "SELECT pg_postmaster_start_time()", db="postgres") for name in MEMBERS}
    load = WriteLoad(f"ha-rotate-{uuid.uuid4().hex[:8]}", rate=20, max_seconds=300).start()
    try:
        rc, output, _recap = run_playbook(
            "-e", json.dumps({"rotate_secrets_names": ROTATED, "rotate_secrets_credentials_dir": str(CREDENTIALS)}),
            playbook=str(PROJECT_DIR / "playbooks" / "rotate-secrets.yml"))
        time.sleep(2)
    finally:
        load.stop()
    return {"lead": lead, "old": old, "new": {name: secret(name) for name in ROTATED},
            "started": started, "load": load, "rc": rc, "output": output}


def test_rotate_secrets_sets_the_new_password_on_the_primary_wherever_it_is_now(rotation):
    """The application role's password changes on the current primary and reaches every member;
    the new one logs in on each (PostgreSQL and PgBouncer), the old one nowhere."""
    current, output = rotation["lead"], rotation["output"]
    assert rotation["rc"] == 0, output[-3000:]
    old, new = rotation["old"]["postgresql_app_password"], rotation["new"]["postgresql_app_password"]
    assert new != old
    # The ALTER ROLE ran on the current primary only.
    block = output.split("TASK [Set the roles' passwords as the database tier does]", 1)[1].split("\nPLAY ", 1)[0]
    assert re.findall(r"^included: \S+ for (\S+)", block, re.M) == [current], block[-2000:]
    # Every member's PgBouncer got the primary's new verifier (its auth_file written on each).
    block = output.split("TASK [Write PgBouncer's auth_file as the database tier does]", 1)[1].split("\nPLAY ", 1)[0]
    included = [h for line in re.findall(r"^included: \S+ for (.+)$", block, re.M) for h in line.split(", ")]
    assert sorted(included) == sorted(MEMBERS), block[-2000:]
    for name, address in MEMBERS.items():
        # PostgreSQL itself, then the member's PgBouncer (as a daemon would after a failover).
        for port in (POSTGRESQL_PORT, PGBOUNCER_PORT):
            with connect([address], read_write=False, port=port) as conn, conn.cursor() as cur:
                cur.execute("SELECT current_user")
                assert cur.fetchone()[0] == "claude_app", (name, port)
            # PostgreSQL says "password authentication failed", PgBouncer "SASL authentication failed".
            with pytest.raises(psycopg2.OperationalError, match="(password|SASL) authentication failed"):
                psycopg2.connect(host=address, port=port, dbname="claude_daemon", user="claude_app", password=old,
                                 sslmode="verify-full", sslrootcert=CA_FILE, connect_timeout=5)
    assert not list(CREDENTIALS.glob("*.previous")), "the lab's old values are forgotten after a good run"


# Run inside a member: log in to another member as `user` with a password on stdin, over TLS
# verified against the kit's CA; physical replication (IDENTIFY_SYSTEM) for the replication role,
# the postgres database for pg_rewind's. Prints "ok" or the server's refusal.
MEMBER_LOGIN = r"""
set -u
password=$(cat)
if [ "$2" = replicator ]; then target="dbname=replication replication=true"; sql=IDENTIFY_SYSTEM
else target="dbname=postgres"; sql="SELECT 1"; fi
PGPASSWORD="$password" psql -XAtq "host=$1 port=5432 user=$2 $target sslmode=verify-full sslrootcert=$3 connect_timeout=5" \
  -c "$sql" >/dev/null 2>/tmp/login.err && echo ok || head -1 /tmp/login.err
"""


def member_login(source, target, user, password):
    proc = subprocess.run(["docker", "exec", "-i", source, "sh", "-c", MEMBER_LOGIN, "login", MEMBERS[target], user,
                           TLS_CA_ON_HOSTS], input=password, capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout.strip()


def test_rotate_secrets_changes_patronis_own_passwords_while_the_cluster_serves(rotation):
    """The replication, pg_rewind and REST API passwords, rotated in the same run under a write
    load: the primary's roles get the new passwords first, then every member's Patroni
    configuration (reloaded, nothing restarted), so the replicas' next login uses a password the
    primary already has. Nothing acknowledged is lost, the primary stays, the replicas stream
    with the new password (their walsenders ended on purpose), the old passwords are refused
    everywhere."""
    names = ROTATED[1:]
    lead, output, load, started = rotation["lead"], rotation["output"], rotation["load"], rotation["started"]
    replica = next(name for name in MEMBERS if name != lead)
    old, new = rotation["old"], rotation["new"]
    assert rotation["rc"] == 0, output[-3000:]
    # The playbook's own check ran: each member's API took a change with the new password.
    task = "Patroni: change the shared configuration through this member's REST API with the new password"
    block = output.split(f"TASK [{task}]", 1)[1].split("\nTASK ", 1)[0]
    assert sorted(re.findall(r"^ok: \[(\S+)\]", block, re.M)) == sorted(MEMBERS), block[-2000:]
    assert all(new[n] != old[n] for n in names)
    for name in ROTATED:
        assert old[name] not in output and new[name] not in output, f"{name} shown in the output"
    stored = stored_counts(load.ids() + load.unknown)
    lost = [i for i in load.ids() if stored.get(i, 0) != 1]
    _record("rotate_patroni_secrets", {"acknowledged": len(load.ids()), "lost": len(lost),
                                       "longest_gap_s": round(load.longest_gap(), 1)})
    assert lost == []
    # No member restarted, no failover: one primary all along.
    after = wait_healthy(list(MEMBERS), 60)
    assert leader(after) == lead
    assert {name: psql(name, "SELECT pg_postmaster_start_time()", db="postgres") for name in MEMBERS} == started
    # The walsenders ended: each replica has to log in again, and does with the new password
    # (Patroni writes it into the walreceiver's passfile once it sees it not streaming).
    cut = psql(lead, "SELECT now()", db="postgres")[0]
    psql(lead, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication", db="postgres")
    began = time.monotonic()
    wait_for(lambda: psql(lead, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' "
                                f"AND backend_start > '{cut}'", db="postgres") == [str(len(MEMBERS) - 1)],
             60, 1, "every replica streaming again on a new login")
    REPORT["rotate_patroni_secrets"]["replicas_streaming_again_s"] = round(time.monotonic() - began, 1)
    _record("rotate_patroni_secrets", REPORT["rotate_patroni_secrets"])
    wait_synchronous()
    # From a replica, as Patroni and pg_rewind log in: the new passwords only.
    for user, name in (("replicator", "postgresql_replication_password"), ("rewinder", "postgresql_rewind_password")):
        assert member_login(replica, lead, user, new[name]) == "ok", user
        assert "password authentication failed" in member_login(replica, lead, user, old[name]), user
    # The REST API takes a change with the new password only (a PATCH that sets what is there).
    for member in MEMBERS:
        status, _ = api(member, "/config", method="PATCH", body={"ttl": TTL}, password=old["postgresql_patroni_api_password"])
        assert status == 401, member
        status, config = api(member, "/config", method="PATCH", body={"ttl": TTL})
        assert status == 200 and config["ttl"] == TTL, (member, status, config)
    assert not list(CREDENTIALS.glob("*.previous")), "the lab's old values are forgotten after a good run"


def test_switchover_playbook_moves_the_primary_to_the_named_replica_losing_no_write():
    before = wait_synchronous()
    old = leader(before)
    # Synchronous mode: only the synchronous standby may be promoted (it has every commit).
    candidate = next(m["name"] for m in before["members"] if m["role"] == "sync_standby")
    # Every member's PgBouncer caches its role now (a login through each): stale after the switch
    # unless Patroni's callback makes it forget (see the test below).
    assert pgbouncer_roles() == {name: name == old for name in MEMBERS}
    load = WriteLoad(f"ha-switch-{uuid.uuid4().hex[:8]}", rate=20, max_seconds=150).start()
    # Two daemons: through every member's PgBouncer (as deployed), and to PostgreSQL directly
    # (kit_pgbouncer_enabled: false).
    daemon = DaemonLoad(f"ha-switch-daemon-{uuid.uuid4().hex[:8]}", rate=10, max_seconds=150).start()
    direct = DaemonLoad(f"ha-switch-direct-{uuid.uuid4().hex[:8]}", rate=10, max_seconds=150,
                        port=POSTGRESQL_PORT).start()
    time.sleep(3)
    began = time.monotonic()
    rc, output, recap = run_playbook("-e", f"switchover_candidate={candidate}",
                                     playbook=str(PROJECT_DIR / "playbooks" / "switchover.yml"))
    took = time.monotonic() - began
    time.sleep(5)
    load.stop()
    daemon.stop()
    direct.stop()
    drained = daemon.drained(120)
    drained_direct = direct.drained(120)
    daemon.close()
    direct.close()
    assert rc == 0, output[-3000:]
    after = wait_healthy(list(MEMBERS), 60)
    assert leader(after) == candidate
    acked = load.ids()
    stored = stored_counts(acked + load.unknown)
    lost = [i for i in acked if stored.get(i, 0) != 1]
    _record("switchover", {
        "from": old, "to": candidate, "playbook_seconds": round(took, 1),
        "longest_gap_s": round(load.longest_gap(), 1), "acknowledged": len(acked), "lost": len(lost),
        "unknown_outcome": len(load.unknown),
        "daemon": {**daemon_figures(daemon, stored_counts(daemon.ids())), "fallback_drained_s": round(drained, 1)},
        "daemon_direct": {**daemon_figures(direct, stored_counts(direct.ids())),
                          "fallback_drained_s": round(drained_direct, 1)},
    })
    assert lost == []
    # The daemons kept serving: every request 2xx, every acknowledged alert stored once.
    assert daemon.failed == [] and direct.failed == [], (daemon.failed[:10], direct.failed[:10])
    assert REPORT["switchover"]["daemon"]["lost"] == 0, REPORT["switchover"]["daemon"]
    assert REPORT["switchover"]["daemon_direct"]["lost"] == 0, REPORT["switchover"]["daemon_direct"]
    assert f"{candidate} is the primary" in output


def test_after_the_switchover_each_members_pgbouncer_reports_the_members_new_role():
    """PgBouncer hands every client the start-up parameters its pool's first server login
    reported, in_hot_standby among them, and libpq's read-write choice trusts them. Patroni's
    callback (claude-kit-patroni-callback) has each member's PgBouncer drop them when the role
    changes: through the new primary's PgBouncer alone a read-write login succeeds, through the
    former primary's it is refused (without the callback, the reverse)."""
    switched = REPORT["switchover"]
    expected = {name: name == switched["to"] for name in MEMBERS}
    assert wait_for(lambda: pgbouncer_roles() == expected, 30, 1,
                    f"every PgBouncer reporting {expected}")
    # The daemons' list (every member's PgBouncer, read-write) leads to the new primary.
    with connect(port=PGBOUNCER_PORT) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        assert cur.fetchone()[0] is False
        assert conn.info.host == MEMBERS[switched["to"]]


def test_switchover_to_a_host_that_is_not_the_synchronous_standby_is_refused_before_any_change():
    data = wait_synchronous()
    current = leader(data)
    sync = next(m["name"] for m in data["members"] if m["role"] == "sync_standby")
    asynchronous = next(m["name"] for m in data["members"] if m["name"] not in (current, sync))
    rc, output, recap = run_playbook("-e", f"switchover_candidate={asynchronous}",
                                     playbook=str(PROJECT_DIR / "playbooks" / "switchover.yml"))
    assert rc != 0
    assert f"{asynchronous} is an asynchronous replica" in output and f"switch over to {sync}" in output, \
        output[-2000:]
    assert all(r["changed"] == 0 for r in recap.values()), recap
    rc, output, recap = run_playbook("-e", f"switchover_candidate={current}",
                                     playbook=str(PROJECT_DIR / "playbooks" / "switchover.yml"))
    assert rc != 0
    assert f"{current} is the primary already" in output, output[-2000:]
    assert leader(cluster()) == current
    rc, output, recap = run_playbook("-e", "switchover_candidate=no-such-host",
                                     playbook=str(PROJECT_DIR / "playbooks" / "switchover.yml"))
    assert rc != 0
    assert "no-such-host is not a member" in output, output[-2000:]


def test_a_primary_cut_off_from_etcd_demotes_itself_and_no_two_primaries_accept_writes():
    """The primary is cut off from the other members' etcd (both ways, ports 2379 and 2380)
    under a bounded write load; PostgreSQL's replication and the clients still reach it. Writes
    go to the old primary through its own socket and to every other member directly. Patroni on
    the old primary cannot renew its leader lock and demotes it; the synchronous standby is
    promoted only after the lock has expired. The old primary's last acknowledged write comes
    before the new primary's first: no moment had two primaries accepting writes. Healed, it
    rejoins as a replica of the new primary, and every acknowledged write is stored once."""
    before = wait_healthy(list(MEMBERS), 90)
    old = leader(before)
    survivors = [name for name in MEMBERS if name != old]

    def old_accepts_writes():
        proc = docker("exec", "-u", "postgres", old, "timeout", "3", "psql", "-XAtq", "-d", "postgres",
                      "-c", "SELECT NOT pg_is_in_recovery()", check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "t"

    partition = EtcdPartition(old)
    assert partition.reaches_a_peers_etcd()
    load = WriteLoad(f"ha-part-{uuid.uuid4().hex[:8]}", rate=10, max_seconds=150).start()
    direct = SocketWriter(old, f"ha-part-sock-{uuid.uuid4().hex[:8]}", max_seconds=150).start()
    try:
        time.sleep(4)
        assert len(direct.acked) >= 2 and len(load.acked) > 20, (direct.acked, load.errors[-5:])
        cut_at = time.monotonic()
        partition.cut()
        probe = PrimaryProbe(survivors, f"ha-part-probe-{uuid.uuid4().hex[:8]}").start()
        demoted = wait_for(lambda: not old_accepts_writes() and time.monotonic(), TTL + LOOP_WAIT, 0.5,
                           "the cut-off primary demoted")
        promoted = probe.wait()
        assert promoted and promoted[1] in survivors, promoted
        wait_for(lambda: len(load.acked_after(promoted[0])) > 30, 60, 0.5, "writes on the new primary")
    finally:
        direct.stop()
        load.stop()
        healed_at = time.monotonic()
        partition.heal()
    after = wait_healthy(list(MEMBERS), 180)
    rejoined = time.monotonic() - healed_at
    new = leader(after)
    old_acks = [t for _i, t in direct.acked]
    acked = load.ids() + direct.ids()
    stored = stored_counts(acked + load.unknown + direct.unknown)
    figures = {
        "old_primary": old, "new_primary": new, "seconds_to_new_primary": round(promoted[0] - cut_at, 1),
        "seconds_to_old_demoted": round(demoted - cut_at, 1), "rejoin_seconds": round(rejoined, 1),
        "acked_on_old_after_cut": sum(1 for t in old_acks if t > cut_at),
        "seconds_between_last_old_and_first_new_write": round(promoted[0] - max(old_acks), 1),
        "acknowledged": len(acked), "lost": sum(1 for i in acked if stored.get(i, 0) != 1),
        "unknown_outcome": len(load.unknown) + len(direct.unknown),
    }
    _record("partition", figures)
    assert new == promoted[1], figures
    # Demoted within Patroni's promise (loop_wait + 2 * retry_timeout <= ttl), and every write the
    # old primary acknowledged came before the first one the new primary did.
    assert figures["seconds_to_old_demoted"] <= TTL, figures
    assert max(old_acks) < promoted[0], figures
    assert figures["lost"] == 0, figures
    assert all(stored.get(i, 0) <= 1 for i in load.unknown + direct.unknown)
    member = next(m for m in after["members"] if m["name"] == old)
    assert member["role"] in ("replica", "sync_standby"), after
