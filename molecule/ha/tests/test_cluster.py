"""The Patroni cluster as the kit builds it: one primary, streaming replicas,
the kit's roles, grants and settings on every member, secure by default."""

import uuid

import psycopg2
import pytest

from helpers import (
    API_PORT,
    CA_FILE,
    MEMBERS,
    PGBOUNCER_PORT,
    PROJECT_DIR,
    api,
    cluster,
    connect,
    connect_each,
    docker,
    healthy,
    leader,
    pgbouncer_roles,
    psql,
    run_playbook,
    secret,
    wait_for,
    TLS_CA_ON_HOSTS,
    TLS_CERT_ON_HOSTS,
    TLS_KEY_ON_HOSTS,
)


def test_one_primary_and_every_other_member_streaming_with_one_synchronous_standby():
    data = wait_for(lambda: (lambda d: d if healthy(d) else None)(cluster()), 60, what="a healthy cluster")
    roles = sorted(m["role"] for m in data["members"])
    assert len(data["members"]) == 3
    assert roles.count("leader") == 1, data
    # synchronous_mode: exactly one standby is synchronous, the other asynchronous.
    assert roles.count("sync_standby") == 1, data
    assert {m["timeline"] for m in data["members"]} == {data["members"][0]["timeline"]}


def test_primary_has_an_active_physical_slot_for_each_replica():
    lead = leader(cluster())
    slots = dict(line.split("|") for line in psql(lead, "SELECT slot_name, active FROM pg_replication_slots "
                                                        "WHERE slot_type = 'physical'", db="postgres"))
    others = {name.replace("-", "_") for name in MEMBERS if name != lead}
    assert set(slots) == others
    assert set(slots.values()) == {"t"}


def test_a_write_on_the_primary_is_read_on_every_replica():
    alert_id = f"ha-read-{uuid.uuid4()}"
    with connect() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO alerts (id, level, title, timestamp) VALUES (%s, 'info', 'replicated', now())",
                    (alert_id,))
    for name, address in MEMBERS.items():
        def seen(address=address):
            with connect([address], read_write=False) as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM alerts WHERE id = %s", (alert_id,))
                return cur.fetchone()[0] == 1
        wait_for(seen, 15, 0.5, f"the row on {name}")


def test_a_replica_refuses_writes():
    lead = leader(cluster())
    replica = next(name for name in MEMBERS if name != lead)
    conn = connect([MEMBERS[replica]], read_write=False)
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        with conn.cursor() as cur:
            cur.execute("INSERT INTO alerts (id, level, title, timestamp) VALUES ('no', 'info', 'x', now())")
    conn.close()


def test_multi_host_connection_string_finds_the_primary_whatever_the_order():
    lead = leader(cluster())
    for first in MEMBERS.values():
        hosts = [first] + [a for a in MEMBERS.values() if a != first]
        with connect(hosts) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery(), inet_server_addr()::text")
            in_recovery, address = cur.fetchone()
        assert in_recovery is False
        assert address.split("/")[0] == MEMBERS[lead]


def test_each_members_pgbouncer_pools_to_its_own_server_and_reports_its_role():
    """PgBouncer runs on every member (kit_pgbouncer_enabled) and pools to that member's own
    PostgreSQL: a read-write login through the primary's PgBouncer succeeds, through a
    replica's libpq refuses it as read-only; the daemons' list (every member's PgBouncer,
    read-write) finds the primary whatever the order. Each PgBouncer has its member's role
    cached after this (the failover tests then need Patroni's callback to refresh it)."""
    lead = leader(cluster())
    assert pgbouncer_roles() == {name: name == lead for name in MEMBERS}
    for first in MEMBERS.values():
        hosts = [first] + [a for a in MEMBERS.values() if a != first]
        with connect(hosts, port=PGBOUNCER_PORT) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery(), host(inet_server_addr())")
            assert cur.fetchone() == (False, "127.0.0.1")  # PgBouncer's own login, on loopback
            assert conn.info.host == MEMBERS[lead]
    # A replica's PgBouncer passes reads on to its own standby.
    replica = next(name for name in MEMBERS if name != lead)
    with connect([MEMBERS[replica]], read_write=False, port=PGBOUNCER_PORT) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        assert cur.fetchone()[0] is True


def test_replication_and_rewind_roles_have_least_privilege_and_scram_passwords():
    lead = leader(cluster())
    rows = psql(lead, "SELECT rolname, rolsuper, rolreplication, rolcreaterole, rolcreatedb, rolbypassrls, "
                      "rolcanlogin, left(rolpassword, 14) FROM pg_authid "
                      "WHERE rolname IN ('replicator', 'rewinder', 'claude_app') ORDER BY 1", db="postgres")
    assert rows == [
        "claude_app|f|f|f|f|f|t|SCRAM-SHA-256$",
        "replicator|f|t|f|f|f|t|SCRAM-SHA-256$",
        "rewinder|f|f|f|f|f|t|SCRAM-SHA-256$",
    ]
    # pg_rewind's role may run exactly the functions it needs, and owns nothing.
    grants = psql(lead, "SELECT p.oid::regprocedure FROM pg_proc p "
                        "WHERE has_function_privilege('rewinder', p.oid, 'EXECUTE') "
                        "AND p.proacl IS NOT NULL AND p.proname IN ('pg_ls_dir', 'pg_stat_file', 'pg_read_binary_file') "
                        "ORDER BY 1", db="postgres")
    assert len(grants) == 4, grants


def test_replication_role_is_admitted_from_members_only():
    lead = leader(cluster())
    # From the controller (not a member): no pg_hba line admits it.
    with pytest.raises(psycopg2.OperationalError, match="no pg_hba.conf entry"):
        psycopg2.connect(host=MEMBERS[lead], port=5432, user="replicator", dbname="postgres",
                         password=secret("postgresql_replication_password"), sslmode="verify-full",
                         sslrootcert=CA_FILE, connect_timeout=5)
    hba = psql(lead, "SELECT type, database[1], user_name[1], address, auth_method FROM pg_hba_file_rules "
                     "WHERE user_name[1] IN ('replicator', 'rewinder') ORDER BY 3, 4", db="postgres")
    expected = sorted(
        [f"hostssl|replication|replicator|{a}|scram-sha-256" for a in ["127.0.0.1", *MEMBERS.values()]]
        + [f"hostssl|postgres|rewinder|{a}|scram-sha-256" for a in MEMBERS.values()],
        key=lambda line: (line.split("|")[2], line.split("|")[3]),
    )
    assert hba == expected
    methods = set(psql(lead, "SELECT DISTINCT auth_method FROM pg_hba_file_rules", db="postgres"))
    assert methods <= {"peer", "scram-sha-256"}, methods


@pytest.mark.parametrize("name", list(MEMBERS))
def test_every_member_runs_with_the_kits_settings(name):
    rows = psql(name, "SELECT name || '=' || setting FROM pg_settings WHERE name IN ("
                      "'ssl', 'password_encryption', 'shared_preload_libraries', 'wal_log_hints', 'data_checksums', "
                      "'hot_standby', 'max_connections', 'shared_buffers', 'log_connections', 'wal_level', "
                      "'ssl_min_protocol_version') ORDER BY name", db="postgres")
    assert rows == [
        "data_checksums=on",
        "hot_standby=on",
        "log_connections=on",
        "max_connections=100",
        "password_encryption=scram-sha-256",
        # 256MB (the pg_tune filter's 25% of the 1 GiB container) in 8 kB pages.
        "shared_buffers=32768",
        "shared_preload_libraries=pg_stat_statements",
        "ssl=on",
        "ssl_min_protocol_version=TLSv1.2",
        "wal_level=replica",
        "wal_log_hints=on",
    ]


def test_the_kits_schema_reached_every_replica():
    for name in MEMBERS:
        tables = psql(name, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables "
                            "WHERE schemaname = 'public'")
        assert tables == ["alerts,fallback_sync_log,predictions,usage_data,users"], (name, tables)


def test_the_shared_configuration_is_what_the_kit_declares():
    status, config = api(next(iter(MEMBERS)), "/config")
    assert status == 200
    assert (config["ttl"], config["loop_wait"], config["retry_timeout"]) == (30, 10, 10)
    assert config["synchronous_mode"] is True
    assert config["postgresql"]["use_pg_rewind"] is True
    assert config["postgresql"]["parameters"]["max_connections"] == "100"
    assert "max_connections" in config["claude_kit_parameters"]


def test_changing_the_cluster_through_the_api_needs_the_password():
    member = next(iter(MEMBERS))
    status, _ = api(member, "/config", method="PATCH", body={"ttl": 31}, auth=False)
    assert status == 401
    status, config = api(member, "/config")
    assert config["ttl"] == 30


# Run inside a member: a TLS client of another member's etcd, with or without a
# client certificate (argv: address, port, CA file[, certificate, key]).
ETCD_CLIENT = r"""
import socket, ssl, sys
address, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context(cafile=ca)
if len(sys.argv) > 4:
    context.load_cert_chain(sys.argv[4], sys.argv[5])
try:
    with socket.create_connection((address, port), timeout=5) as raw:
        # TLS 1.2 refuses a missing certificate in the handshake; TLS 1.3 with the first read.
        with context.wrap_socket(raw, server_hostname=address) as tls:
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
            print("answered " + (tls.recv(1024) + tls.recv(1024)).decode(errors="replace").split("\r\n")[0])
except (ssl.SSLError, ConnectionResetError) as exc:
    print("refused " + type(exc).__name__)
"""


def test_etcd_refuses_a_client_without_the_kits_certificate():
    """From a member (the firewall admits no one else to etcd): without a client certificate
    etcd ends the TLS session; with the member's own (the control) it answers."""
    (client, _), (_, server) = list(MEMBERS.items())[:2]
    base = [server, "2379", TLS_CA_ON_HOSTS]
    without = docker("exec", client, "python3", "-c", ETCD_CLIENT, *base).stdout.strip()
    assert without.startswith("refused"), without
    with_cert = docker("exec", client, "python3", "-c", ETCD_CLIENT, *base, TLS_CERT_ON_HOSTS, TLS_KEY_ON_HOSTS)
    assert with_cert.stdout.strip() == "answered HTTP/1.1 200 OK", with_cert.stdout + with_cert.stderr


def test_the_clusters_ports_answer_the_members_only():
    """The firewall (role firewall, postgresql_ha: patroni): etcd's client and peer ports, Patroni's
    API and PostgreSQL answer the other members; a container on the same network that is no
    inventory host gets no answer at all (its packets are dropped, the connect times out); the
    controller, admitted by the scenario to PostgreSQL, PgBouncer and the API
    (firewall_extra_sources, as an operator's machine and an app host), reaches those and not
    etcd; PgBouncer is the app hosts' alone, the members do not reach each other's."""
    ports = {"postgresql": 5432, "etcd_client": 2379, "etcd_peer": 2380, "patroni": API_PORT,
             "pgbouncer": PGBOUNCER_PORT}
    everything = [f"{address}:{port}" for address in MEMBERS.values() for port in ports.values()]
    outsider = connect_each(everything, "outsider")
    assert set(outsider.values()) == {"timeout"}, outsider
    controller = connect_each(everything, "controller")
    expected = {f"{address}:{port}": ("timeout" if name.startswith("etcd") else "open")
                for address in MEMBERS.values() for name, port in ports.items()}
    assert controller == expected, (controller, expected)
    for name, own in MEMBERS.items():
        # PgBouncer is the app hosts' (none here; the controller stands in for them), not the members'.
        others = [f"{address}:{port}" for address in MEMBERS.values() if address != own
                  for kind, port in ports.items() if kind != "pgbouncer"]
        seen = connect_each(others, name)
        assert set(seen.values()) == {"open"}, (name, seen)
        pooler = connect_each([f"{address}:{PGBOUNCER_PORT}" for address in MEMBERS.values() if address != own], name)
        assert set(pooler.values()) == {"timeout"}, (name, pooler)
    # The rules are the kit's table, loaded at boot by its unit.
    for name in MEMBERS:
        assert docker("exec", name, "systemctl", "is-enabled", "claude-kit-firewall.service").stdout.strip() == "enabled"


def test_a_timing_setting_against_patronis_rule_is_refused_before_any_change():
    rc, output, recap = run_playbook("-e", "postgresql_patroni_retry_timeout=15")
    assert rc != 0
    assert "10 + 2 * 15 = 40 > 30" in output, output[-3000:]
    assert all(r["changed"] == 0 for r in recap.values()), recap
    assert api(next(iter(MEMBERS)), "/config")[1]["retry_timeout"] == 10


def test_the_backup_tier_is_refused_on_a_cluster_before_any_change(tmp_path):
    """A `backup` group beside a Patroni cluster (layered on the scenario's inventory) with a
    backup method on: site.yml stops in the preflight, names the variables, changes nothing;
    so do playbooks/backup.yml run alone and restore.yml. With both methods off, as the
    message says, the preflight passes."""
    extra = tmp_path / "backup-group.yml"
    extra.write_text("backup:\n  hosts:\n    molecule-ha-db3: {}\n")
    rc, output, recap = run_playbook("-i", str(extra), playbook=str(PROJECT_DIR / "site.yml"))
    said = " ".join(output.split())
    assert rc != 0
    assert "the backup tier does not support a Patroni cluster yet" in said, output[-3000:]
    assert "Set kit_backup_dump: false and kit_backup_pgbackrest: false" in said, output[-3000:]
    assert recap and all(r["changed"] == 0 for r in recap.values()), recap
    # The tier's own playbook run alone (in check mode: its TLS play comes first and the members
    # must not be touched if the check were missing), and the restore runbook, refuse it too.
    for playbook, args, needle in (("backup.yml", ["--check"], "the backup tier does not support a cluster yet"),
                                   ("restore.yml", [], "restore.yml restores a single server")):
        rc, output, recap = run_playbook("-i", str(extra), *args, playbook=str(PROJECT_DIR / "playbooks" / playbook))
        assert rc != 0 and needle in " ".join(output.split()), (playbook, output[-3000:])
        assert recap and all(r["changed"] == 0 for r in recap.values()), (playbook, recap)
    rc, output, recap = run_playbook("-i", str(extra), "-e", "kit_backup_dump=false", "-e", "kit_backup_pgbackrest=false",
                                     playbook=str(PROJECT_DIR / "playbooks" / "preflight.yml"))
    assert rc == 0, output[-3000:]
    assert all(r["changed"] == 0 for r in recap.values()), recap


def test_verify_runbook_counts_rows_and_prints_the_replication_state():
    from helpers import PROJECT_DIR

    data = cluster()
    rc, output, recap = run_playbook(playbook=str(PROJECT_DIR / "playbooks" / "verify.yml"))
    assert rc == 0, output[-3000:]
    assert all(r["changed"] == 0 for r in recap.values()), recap
    assert "table_name" in output and "alerts" in output
    for member in data["members"]:
        assert f"{member['name']} / {member['role']} / " in output, output[-3000:]
    lead = leader(data)
    # The primary's line for each replica's slot: active, streaming, a lag in bytes.
    for name in MEMBERS:
        if name != lead:
            assert f"{name.replace('-', '_')} / True / " in output, output[-3000:]


def test_check_mode_reports_nothing_on_the_converged_cluster_and_a_changed_timing_without_applying_it():
    # Patroni's part of the role only (the rest is the single server's, tested in the default scenario).
    rc, output, recap = run_playbook("--check", "--tags", "postgresql_patroni")
    assert rc == 0, output[-3000:]
    assert all(r["changed"] == 0 for r in recap.values()), recap
    rc, output, recap = run_playbook("--check", "--tags", "postgresql_patroni", "-e", "postgresql_patroni_ttl=40")
    assert rc == 0, output[-3000:]
    assert 'would get {"ttl": 40}' in output, output[-3000:]
    assert api(next(iter(MEMBERS)), "/config")[1]["ttl"] == 30


@pytest.fixture(scope="module")
def changed_and_taken_back():
    """One run of the Patroni part with a changed timing (dynamic, no restart) and a setting that
    needs a restart, then one run without them: what each left on every member. Both changes go
    in the same run, as an operator's would, so that the cluster restarts twice, not four times."""
    before = cluster()
    try:
        changed = run_playbook("--tags", "postgresql_patroni", "-e", "postgresql_patroni_ttl=40",
                               "-e", "postgresql_max_connections=120")
        during = {name: {"ttl": api(name, "/config")[1]["ttl"],
                         "max_connections": psql(name, "SHOW max_connections", db="postgres"),
                         "pending_restart": api(name, "/patroni")[1].get("pending_restart")}
                  for name in MEMBERS}
        after = cluster()
    finally:
        back = run_playbook("--tags", "postgresql_patroni")
    taken_back = {name: {"ttl": api(name, "/config")[1]["ttl"],
                         "max_connections": psql(name, "SHOW max_connections", db="postgres")}
                  for name in MEMBERS}
    return {"before": before, "changed": changed, "during": during, "after": after, "back": back,
            "taken_back": taken_back}


def test_a_changed_timing_reaches_the_shared_configuration_and_a_run_without_it_takes_it_back(changed_and_taken_back):
    rc, output, _recap = changed_and_taken_back["changed"]
    assert rc == 0, output[-3000:]
    # The role names what the shared configuration got (the callback may fold the line).
    joined = " ".join(output.split())
    said = joined.find("dynamic configuration now holds {")
    assert said >= 0 and '"ttl": 40' in joined[said:said + 300], output[-3000:]
    for name, state in changed_and_taken_back["during"].items():
        assert state["ttl"] == 40, (name, state)
    rc, output, _recap = changed_and_taken_back["back"]
    assert rc == 0, output[-3000:]
    for name, state in changed_and_taken_back["taken_back"].items():
        assert state["ttl"] == 30, (name, state)


def test_a_setting_that_needs_a_restart_restarts_every_member_through_patroni_without_a_failover(
        changed_and_taken_back):
    rc, output, _recap = changed_and_taken_back["changed"]
    assert rc == 0, output[-3000:]
    for name, state in changed_and_taken_back["during"].items():
        assert state["max_connections"] == ["120"], (name, state)
        assert not state["pending_restart"], (name, state)
    before, after = changed_and_taken_back["before"], changed_and_taken_back["after"]
    # Restarted in place: the same primary, on the same timeline.
    assert leader(after) == leader(before)
    assert {m["timeline"] for m in after["members"]} == {m["timeline"] for m in before["members"]}
    rc, output, _recap = changed_and_taken_back["back"]
    assert rc == 0, output[-3000:]
    for name, state in changed_and_taken_back["taken_back"].items():
        assert state["max_connections"] == ["100"], (name, state)


def test_after_the_restarts_through_patroni_a_run_changes_nothing():
    """The restarts and the timing changed and taken back above leave nothing for the kit to do:
    a run of the database tier's Patroni part (site.yml, the converge) reports no change."""
    rc, output, recap = run_playbook("--tags", "postgresql_patroni")
    assert rc == 0, output[-3000:]
    assert recap and all(r["changed"] == 0 for r in recap.values()), recap
