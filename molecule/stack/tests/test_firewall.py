"""The firewall (role firewall) on the whole stack: PostgreSQL's and Redis's
ports on stack-data answer the app hosts and nobody else, at the network.

The controller (this test process) sits on the scenario's network at its
gateway address but is no app host: its connection attempts must time out
(the kit's table drops them) before PostgreSQL or Redis could say a word, so
pg_hba and the ACLs are not what stops it. Nginx's ports stay open to it.
"""

import re
import shlex
import socket

import pytest
import testinfra.utils.ansible_runner

from test_stack import APPS, DATA, INVENTORY

testinfra_hosts = ["stack-data"]
VARS = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_variables("stack-data")
PG_PORT = int(VARS.get("kit_db_port", 5432))
REDIS_PORT = int(VARS.get("redis_port", VARS.get("kit_redis_port", 6379)))
PGBACKREST_PORT = int(VARS.get("kit_pgbackrest_tls_port", 8432))
DAEMON_PORT = int(VARS.get("kit_daemon_port", 5001))
# PgBouncer's port on the database host (kit_pgbouncer_enabled, on by default): the daemons connect there.
PGB_PORT = int(VARS.get("kit_pgbouncer_port", 6432))
WEB_PORTS = (int(VARS.get("nginx_http_port", 80)), int(VARS.get("nginx_https_port", 443)))
TABLE = "inet claude_kit_firewall"
UNIT = "claude-kit-firewall.service"
# Runs on a lab host: one TCP connect, its outcome as a word (open, timeout, refused, ...).
CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("open")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print(type(exc).__name__)
"""


def ip(host):
    return host.interface("eth0").addresses[0]


def connect_from(host, address, port, timeout=3):
    """A TCP connect from inside a lab host: 'open', 'timeout', 'refused', ..."""
    return host.check_output(f"python3 -c {shlex.quote(CONNECT)} {address} {port} {timeout}").strip()


def connect_from_controller(address, port, timeout=3):
    """A TCP connect from this test process (the controller, at the network's gateway)."""
    try:
        socket.create_connection((address, port), timeout=timeout).close()
        return "open"
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"


def table(target=DATA):
    return target.check_output(f"nft list table {TABLE}")


def dropped(port, target=DATA):
    """Packets the kit's table dropped for one guarded port (its drop rule's counter)."""
    found = re.search(rf"tcp dport {port} counter packets (\d+) bytes \d+ drop", table(target))
    assert found, f"no drop rule for port {port} in:\n{table(target)}"
    return int(found.group(1))


def elements(text, name):
    """The addresses of one of the table's sets, as nft lists them."""
    found = re.search(rf"set {name} \{{.*?elements = \{{(.*?)\}}", text, re.S)
    return set(found.group(1).replace("\n", " ").replace(",", " ").split()) if found else set()


def test_postgresql_and_redis_listen_on_the_network(host):
    # Without this, a refused connection below could mean nothing listens at all.
    for port in (PG_PORT, PGB_PORT, REDIS_PORT):
        assert DATA.socket(f"tcp://{ip(DATA)}:{port}").is_listening, port


@pytest.mark.parametrize("port", [PG_PORT, PGB_PORT, REDIS_PORT], ids=["postgresql", "pgbouncer", "redis"])
def test_the_app_hosts_reach_the_port(host, port):
    for app in APPS:
        assert connect_from(app, ip(DATA), port) == "open", app


@pytest.mark.parametrize("port", [PG_PORT, PGB_PORT, REDIS_PORT], ids=["postgresql", "pgbouncer", "redis"])
def test_the_controller_is_dropped_at_the_network(host, port):
    before = dropped(port)
    # A timeout: no TCP answer at all, so neither PostgreSQL's nor Redis's
    # authentication (nor a reset) was ever reached.
    assert connect_from_controller(ip(DATA), port) == "timeout"
    assert dropped(port) > before, "the attempt was not the kit table's to drop"


def test_an_app_host_is_dropped_at_pgbackrests_port(host):
    # stack-data is also the backup host, the only one pgBackRest's TLS port
    # admits. Whether or not a server listens there, only the table's drop
    # makes an app host's attempt time out (else: an answer or a refusal).
    assert connect_from(APPS[0], ip(DATA), PGBACKREST_PORT) == "timeout"


def test_the_daemons_published_port_admits_nginx_and_prometheus_only(host):
    """Docker publishes the daemon's port by DNAT, which the input hook never sees: the guard sits
    in prerouting, before Docker's NAT. stack-data (web and monitoring) reaches it; the controller,
    which would otherwise bypass Nginx's TLS and rate limits, is dropped at the network."""
    for app in APPS:
        assert connect_from(DATA, ip(app), DAEMON_PORT) == "open", app
        before = dropped(DAEMON_PORT, app)
        assert connect_from_controller(ip(app), DAEMON_PORT) == "timeout", app
        assert dropped(DAEMON_PORT, app) > before, f"{app}: the attempt was not the kit table's to drop"
        text = table(app)
        assert "hook prerouting" in text and elements(text, "daemon_ipv4") == {ip(DATA)}, text
        # On the app host itself the daemon still answers (its health checks use loopback).
        assert connect_from(app, "127.0.0.1", DAEMON_PORT) == "open", app


def test_nginx_stays_reachable_from_the_controller(host):
    for port in WEB_PORTS:
        assert connect_from_controller(ip(DATA), port, timeout=10) == "open", port


def test_the_table_admits_the_app_hosts_only(host):
    text = table()
    apps = {ip(app) for app in APPS}
    gateway = DATA.check_output("ip -4 route show default").split()[2]
    # PostgreSQL: the app hosts and stack-data itself (database and backup host).
    assert elements(text, "postgresql_ipv4") == apps | {ip(DATA)}
    assert elements(text, "redis_ipv4") == apps
    # PgBouncer: the daemons' hosts only.
    assert elements(text, "pgbouncer_ipv4") == apps
    assert elements(text, "pgbackrest_ipv4") == {ip(DATA)}
    assert not any(gateway in elements(text, f"{name}_ipv4")
                   for name in ("postgresql", "pgbouncer", "redis", "pgbackrest"))
    assert 'iif "lo" accept' in text
    # The monitoring role's table for the exporters is untouched beside it.
    assert "table inet claude_kit_exporters" in DATA.check_output("nft list tables")


def test_the_rules_survive_a_restart_and_load_at_boot(host):
    def without_counters(text):
        return re.sub(r"counter packets \d+ bytes \d+", "counter", text)

    before = without_counters(table())
    assert DATA.service(UNIT).is_enabled
    DATA.check_output(f"systemctl restart {UNIT}")
    assert DATA.service(UNIT).is_running
    assert without_counters(table()) == before
    assert connect_from_controller(ip(DATA), PG_PORT) == "timeout"
    assert connect_from(APPS[0], ip(DATA), PG_PORT) == "open"
