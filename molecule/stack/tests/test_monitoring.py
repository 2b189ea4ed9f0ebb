"""Monitoring on the whole stack: the health checks, Prometheus and its
exporters, the alert path to Alertmanager, and the health runbook.

The tests run in file order; each one that breaks something (connections
held, Redis stopped, a state file aged) puts it back before it ends. The
checks while PostgreSQL and a daemon are down are in test_stack.py, beside
the tests that stop them.
"""

import contextlib
import hashlib
import json
import math
import os
import shlex
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request

import testinfra.utils.ansible_runner

from test_stack import APP_NAMES, APPS, DATA, DB_NAME, base_url, healths, http

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
PROJECT = os.environ["MOLECULE_PROJECT_DIRECTORY"]
testinfra_hosts = ["stack-data"]
VARS = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_variables("stack-data")
HOSTS = {"stack-data": DATA, **dict(zip(APP_NAMES, APPS))}
STATES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
CA_FILE = VARS.get("kit_tls_ca_file", "/etc/claude-kit/tls/ca.crt")
CERT_FILE = VARS.get("kit_tls_cert_file", "/etc/claude-kit/tls/server.crt")
PORTS = {name: int(VARS.get(f"monitoring_{name}_exporter_port", default))
         for name, default in (("node", 9100), ("postgres", 9187), ("redis", 9121), ("nginx", 9113))}
# Every exporter Prometheus scrapes: (host, exporter); stack-data is in the database, cache and web groups.
EXPORTERS = [(DATA, name) for name in PORTS] + [(app, "node") for app in APPS]
# Run on a host: one handshake with ADDRESS PORT, verifying against --ca (and the address, unless
# --server-name names another), at exactly --version when given; prints JSON {ok, version, sha256, error}.
TLS_PROBE = """
import argparse, hashlib, json, socket, ssl
parser = argparse.ArgumentParser()
parser.add_argument("address"); parser.add_argument("port", type=int)
parser.add_argument("--ca"); parser.add_argument("--server-name"); parser.add_argument("--version")
args = parser.parse_args()
ctx = ssl.create_default_context(cafile=args.ca)
if args.version:
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, args.version)
try:
    with socket.create_connection((args.address, args.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=args.server_name or args.address) as tls:
            print(json.dumps({"ok": True, "version": tls.version(), "error": None,
                              "sha256": hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()}))
except (ssl.SSLError, ssl.CertificateError, OSError) as err:
    print(json.dumps({"ok": False, "version": None, "sha256": None,
                      "error": getattr(err, "verify_message", None) or getattr(err, "reason", None) or str(err)}))
"""


def ip(host):
    return host.interface("eth0").addresses[0]


def run_check(host, service="all", *overrides, config=None):
    """claude-kit-check --json on a host: (exit code, report)."""
    args = ["/usr/local/bin/claude-kit-check", "--json"]
    if config:
        args += ["--config", config, "--no-textfile"]
    for override in overrides:
        args += ["--threshold", override]
    result = host.run(" ".join(shlex.quote(a) for a in args + [service]))
    assert result.stdout.strip(), f"no report: {result.stderr}"
    return result.rc, json.loads(result.stdout)


def items(report):
    """{(service, check): (state, summary)}"""
    return {(s["service"], c["name"]): (c["state"], c["summary"]) for s in report["services"] for c in s["checks"]}


def not_ok(report):
    return {key: value for key, value in items(report).items() if value[0] != "OK"}


def prometheus(path, **params):
    url = f"http://{ip(DATA)}:9090{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=10) as resp:
        return json.loads(resp.read())["data"]


def query(expr):
    return prometheus("/api/v1/query", query=expr)["result"]


def on_host(host, url, cafile=CA_FILE):
    """GET url from inside a host (what that host can reach): (status or error, body). An https
    URL is verified against cafile (a file on that host; the kit's CA unless told) and its
    address or name, as Prometheus does."""
    script = ("import ssl, sys, urllib.request as u\n"
              "ctx = ssl.create_default_context(cafile=sys.argv[2])\n"
              "try:\n"
              "    r = u.build_opener(u.ProxyHandler({}), u.HTTPSHandler(context=ctx)).open(sys.argv[1], timeout=4)\n"
              "    print(r.status); print(r.read().decode())\n"
              "except u.HTTPError as e:\n"
              "    print(e.code)\n"
              "except Exception as e:\n"
              "    print(type(e).__name__)\n")
    out = host.run(f"python3 -c {shlex.quote(script)} {shlex.quote(url)} {shlex.quote(cafile)}").stdout
    status, _, body = out.partition("\n")
    return status, body


def exporter_url(host, port, scheme="https"):
    return f"{scheme}://{ip(host)}:{port}/metrics"


def tls_probe(host, address, port, **kwargs):
    """From inside `host`, one TLS handshake with address:port (tls_probe.py's JSON answer)."""
    args = [f"--{key.replace('_', '-')}={value}" for key, value in kwargs.items()]
    out = host.check_output("python3 -c %s %s %s " + " ".join(["%s"] * len(args)), TLS_PROBE, address, str(port), *args)
    return json.loads(out)


def wait_until(what, predicate, timeout, interval=1.0):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)


@contextlib.contextmanager
def held_sessions(count, idle_in_transaction=False):
    """`count` real sessions as postgres over the local socket, held by a transient unit."""
    script = (
        "import psycopg2, sys, time\n"
        f"conns = [psycopg2.connect(dbname={DB_NAME!r}, user='postgres') for _ in range({count})]\n"
        "for c in conns:\n"
        f"    c.autocommit = {not idle_in_transaction}\n"
        "    c.cursor().execute('SELECT 1')\n"
        "open('/run/postgresql/claude-test-held', 'w').write(str(len(conns)))\n"
        "time.sleep(600)\n"
    )
    DATA.check_output("rm -f /run/postgresql/claude-test-held")
    DATA.check_output(f"systemd-run --unit=claude-test-held --uid=postgres python3 -c {shlex.quote(script)}")
    try:
        wait_until("sessions opened", lambda: DATA.file("/run/postgresql/claude-test-held").exists, 60, 0.5)
        yield
    finally:
        DATA.run("systemctl stop claude-test-held")
        DATA.run("systemctl reset-failed claude-test-held")


# --- a healthy stack -----------------------------------------------------------

def test_every_check_is_ok_on_the_healthy_stack(host):
    expected = {"stack-data": {"postgresql", "redis", "nginx", "backup", "certificate"},
                **{name: {"daemon", "certificate"} for name in APP_NAMES}}
    for name, target in HOSTS.items():
        rc, report = run_check(target)
        assert {s["service"] for s in report["services"]} == expected[name]
        assert not_ok(report) == {} and rc == 0, f"{name}: {not_ok(report)}"


def test_the_timer_runs_the_checks_and_logs_the_summary_to_the_journal(host):
    assert DATA.service("claude-kit-check.timer").is_running
    journal = wait_until(
        "a timer run's summary in the journal",
        lambda: "POSTGRESQL OK" in (out := DATA.check_output("journalctl -u claude-kit-check.service -o cat --no-pager"))
        and out, 90, 5)
    assert "REDIS OK" in journal and "NGINX OK" in journal


def test_the_health_runbook_prints_one_table_of_every_host(host):
    proc = subprocess.run(["ansible-playbook", "-i", INVENTORY, os.path.join(PROJECT, "playbooks", "health.yml")],
                          capture_output=True, text=True, timeout=600, check=False,
                          env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert "host       | service    | check" in out or "| service" in out
    for row in ("stack-data | postgresql | connections", "stack-data | redis      | ping",
                *(f"{name} | daemon     | database" for name in APP_NAMES)):
        assert " ".join(row.split()) in " ".join(out.split()), row
    assert "CRITICAL" not in out


# --- Prometheus, the exporters, the firewall -------------------------------------

def test_prometheus_scrapes_every_exporter_and_the_daemons(host):
    expected = {("node", h) for h in HOSTS} | {("postgres", "stack-data"), ("redis", "stack-data"),
                                               ("nginx", "stack-data"), ("prometheus", "stack-data"),
                                               ("alertmanager", "stack-data")} | {("daemon", h) for h in APP_NAMES}

    def all_up():
        targets = prometheus("/api/v1/targets", state="active")["activeTargets"]
        seen = {(t["labels"]["job"], t["labels"]["host"]): t["health"] for t in targets}
        return seen if set(seen) == expected and set(seen.values()) == {"up"} else None

    wait_until("every target up", all_up, 90, 3)
    # The exporters' targets are up over verified HTTPS, not plain HTTP: a broken TLS scrape is a down target.
    targets = prometheus("/api/v1/targets", state="active")["activeTargets"]
    schemes = {(t["labels"]["job"], t["labels"]["host"]): t["scrapeUrl"].split("://")[0] for t in targets}
    assert {key: scheme for key, scheme in schemes.items() if key[0] in PORTS} == {
        (name, target.backend.get_hostname()): "https" for target, name in EXPORTERS}
    exporter_targets = [t for t in targets if t["labels"]["job"] in PORTS]
    assert all(t["lastError"] == "" for t in exporter_targets), [(t["scrapeUrl"], t["lastError"]) for t in exporter_targets]
    # The exporters really read their services, not only answer.
    for expr in ('pg_up{host="stack-data"}', 'redis_up{host="stack-data"}', 'nginx_up{host="stack-data"}'):
        assert [r["value"][1] for r in query(expr)] == ["1"], expr
    modes = query('claude_daemon_database_mode{mode="postgresql"}')
    assert sorted((r["metric"]["host"], r["value"][1]) for r in modes) == [(name, "1") for name in sorted(APP_NAMES)]


def test_the_checks_and_the_backups_reach_prometheus_through_node_exporter(host):
    ready = wait_until("the checks' textfile metrics",
                       lambda: query('claude_kit_check_state{service="postgresql",check="ready"}'), 120, 5)
    assert [(r["metric"]["host"], r["value"][1]) for r in ready] == [("stack-data", "0")]
    daemons = query('claude_kit_check_state{service="daemon",check="database"}')
    assert sorted(r["metric"]["host"] for r in daemons) == sorted(APP_NAMES)
    methods = query("claude_kit_backup_last_success_timestamp_seconds")
    assert sorted(r["metric"]["method"] for r in methods) == ["dump", "pgbackrest"]


def test_exporters_answer_the_monitoring_host_only(host):
    data_ip = ip(DATA)
    # The monitoring host (stack-data) reaches its own and the app hosts' exporters ...
    assert on_host(DATA, exporter_url(DATA, PORTS["postgres"]))[0] == "200"
    assert on_host(DATA, exporter_url(APPS[0], PORTS["node"]))[0] == "200"
    # ... an app host does not reach stack-data's, nor the other app hosts' ...
    for port in PORTS.values():
        assert on_host(APPS[0], exporter_url(DATA, port))[0] in ("URLError", "TimeoutError"), port
    for other in APPS[1:]:
        assert on_host(APPS[0], exporter_url(other, PORTS["node"]))[0] in ("URLError", "TimeoutError"), \
            other.backend.get_hostname()
    # ... and neither does the controller (the lab's and CI's machine).
    for port in (PORTS["node"], PORTS["postgres"]):
        with socket.socket() as sock:
            sock.settimeout(3)
            assert sock.connect_ex((data_ip, port)) != 0, port


def test_each_exporter_answers_only_tls_with_its_hosts_certificate_verified_by_the_kit_ca(host):
    for target, name in EXPORTERS:
        label, port = f"{target.backend.get_hostname()}:{name}", PORTS[name]
        # HTTPS, verified against the kit's CA and the target's address (as Prometheus scrapes it) ...
        status, body = on_host(DATA, exporter_url(target, port))
        assert status == "200" and "# TYPE " in body, (label, status)
        # ... presenting the certificate the tls role installed on that host ...
        probe = tls_probe(DATA, ip(target), port, ca=CA_FILE)
        installed = ssl.PEM_cert_to_DER_cert(target.file(CERT_FILE).content_string.split("-----END CERTIFICATE-----")[0]
                                             + "-----END CERTIFICATE-----\n")
        assert probe["ok"] and probe["sha256"] == hashlib.sha256(installed).hexdigest(), (label, probe)
        # ... refused for another name, or under another CA (the system's) ...
        assert "mismatch" in tls_probe(DATA, ip(target), port, ca=CA_FILE, server_name="192.0.2.1")["error"], label
        assert not tls_probe(DATA, ip(target), port, ca="/etc/ssl/certs/ca-certificates.crt")["ok"], label
        # ... never TLS 1.1 ...
        assert tls_probe(DATA, ip(target), port, ca=CA_FILE, version="TLSv1_1")["error"] in (
            "TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL"), label
        # ... and plain HTTP gets an error page, no metrics (Go and Nginx answer 400).
        status, body = on_host(DATA, exporter_url(target, port, scheme="http"))
        assert status == "400" and "# TYPE " not in body, (label, status)


def test_the_exporters_read_the_key_through_their_units_not_the_prometheus_user(host):
    key_group = VARS.get("kit_tls_key_group", "ssl-cert")
    gid = DATA.group(key_group).gid
    # Prometheus and Alertmanager run as the same user: that user is not in the key's group ...
    assert key_group not in DATA.user("prometheus").groups
    # ... only the units of the exporters that serve TLS themselves are (nginx_exporter is behind Nginx).
    for name in ("node", "postgres", "redis"):
        pid = DATA.check_output("systemctl show -p MainPID --value prometheus-%s-exporter.service", name)
        groups = DATA.check_output("awk '/^Groups:/ {$1 = \"\"; print}' /proc/%s/status", pid).split()
        assert str(gid) in groups, (name, groups)
    prometheus_pid = DATA.check_output("systemctl show -p MainPID --value prometheus.service")
    assert str(gid) not in DATA.check_output("grep ^Groups: /proc/%s/status", prometheus_pid).split()[1:]
    # nginx_exporter itself listens on loopback only; Nginx serves its TLS.
    local = int(VARS.get("monitoring_nginx_exporter_local_port", 19113))
    assert DATA.socket(f"tcp://127.0.0.1:{local}").is_listening
    assert not DATA.socket(f"tcp://{ip(DATA)}:{local}").is_listening


def test_daemon_metrics_are_served_to_prometheus_not_through_nginx(host):
    assert http("GET", "/metrics")[0] == 404
    # Over HTTPS only, verified against the kit's CA; plain HTTP gets no answer.
    url = f"{ip(APPS[0])}:{VARS['kit_daemon_port']}/metrics"
    status, body = on_host(DATA, f"https://{url}")
    assert status == "200" and "claude_daemon_http_requests_total" in body
    assert not on_host(DATA, f"http://{url}")[0].isdigit()  # no HTTP answer at all


def test_prometheus_scrapes_the_daemons_over_verified_https(host):
    targets = [t for t in prometheus("/api/v1/targets", state="active")["activeTargets"]
               if t["labels"]["job"] == "daemon"]
    assert len(targets) == len(APPS), targets
    wait_until("the daemons' targets up over https",
               lambda: all(t["health"] == "up" for t in prometheus("/api/v1/targets", state="active")["activeTargets"]
                           if t["labels"]["job"] == "daemon"), 60, 3)
    assert all(t["scrapeUrl"].startswith("https://") for t in targets), targets
    config = DATA.file("/etc/prometheus/prometheus.yml").content_string
    job = config[config.index("job_name: daemon"):]
    assert f"server_name: {VARS.get('kit_daemon_tls_name', 'claude-daemon.internal')}" in job
    assert f"ca_file: {VARS.get('kit_tls_ca_file', '/etc/claude-kit/tls/ca.crt')}" in job


# --- forced conditions -----------------------------------------------------------

def test_connections_filled_to_the_critical_threshold_are_critical(host):
    max_connections = int(DATA.check_output("runuser -u postgres -- psql -XAtc 'SHOW max_connections'"))
    reserved = int(DATA.check_output("runuser -u postgres -- psql -XAtc 'SHOW superuser_reserved_connections'"))
    usable = max_connections - reserved
    in_use = int(DATA.check_output("runuser -u postgres -- psql -XAtc \"SELECT count(*) FROM pg_stat_activity"
                                   " WHERE backend_type = 'client backend'\"")) - 1
    # Up to the default critical threshold (95%), leaving the daemons room.
    needed = math.ceil(0.95 * usable) - in_use
    assert 0 < needed < usable - in_use
    with held_sessions(needed):
        rc, report = run_check(DATA, "postgresql")
        state, summary = items(report)[("postgresql", "connections")]
        assert (rc, state) == (2, "CRITICAL"), summary
    rc, report = run_check(DATA, "postgresql")
    assert items(report)[("postgresql", "connections")][0] == "OK" and rc == 0


def test_a_long_idle_in_transaction_session_is_critical(host):
    # Thresholds lowered for this run only (--threshold), not the check edited.
    lowered = ("postgresql.idle_in_transaction_warning_seconds=1",
               "postgresql.idle_in_transaction_critical_seconds=3")
    with held_sessions(1, idle_in_transaction=True):
        time.sleep(4)
        rc, report = run_check(DATA, "postgresql", *lowered)
        state, summary = items(report)[("postgresql", "idle_in_transaction")]
        assert (rc, state) == (2, "CRITICAL"), summary
    rc, report = run_check(DATA, "postgresql", *lowered)
    assert items(report)[("postgresql", "idle_in_transaction")][0] == "OK"


def test_a_backup_older_than_the_threshold_is_critical(host):
    path = "/var/lib/claude-kit/backup/dump-last.json"
    original = DATA.file(path).content_string
    aged = json.loads(original)
    # The state file's time, as if the last good dump ended 27 hours ago.
    for key in ("last_success_epoch", "end_epoch"):
        aged[key] = int(time.time()) - 27 * 3600
    try:
        DATA.check_output(f"printf %s {shlex.quote(json.dumps(aged))} > {path}")
        rc, report = run_check(DATA, "backup")
        state, summary = items(report)[("backup", "dump")]
        assert (rc, state) == (2, "CRITICAL") and "27h" in summary, summary
    finally:
        DATA.check_output(f"printf %s {shlex.quote(original)} > {path}")
    assert run_check(DATA, "backup")[0] == 0


def test_a_check_that_cannot_reach_what_it_checks_is_unknown_not_ok(host):
    config = json.loads(DATA.file("/etc/claude-kit/monitoring/check.json").content_string)
    config["state_dir"] = "/run/claude-test-check-state"
    config["postgresql"]["user"] = "no_such_role"
    config["redis"]["password_file"] = "/run/claude-test-wrong-password"
    config["nginx"]["status_url"] = config["nginx"]["status_url"].replace("/nginx_status", "/no_such_page")
    config["backup"]["state_dir"] = "/nonexistent/backup"
    config["certificate"]["files"] = {"server": "/etc/hostname"}  # a file, but no certificate in it
    DATA.check_output("printf %s not-the-password > /run/claude-test-wrong-password")
    DATA.check_output(f"printf %s {shlex.quote(json.dumps(config))} > /run/claude-test-check.json")
    try:
        rc, report = run_check(DATA, "all", config="/run/claude-test-check.json")
    finally:
        DATA.run("rm -rf /run/claude-test-check.json /run/claude-test-wrong-password /run/claude-test-check-state")
    services = {s["service"]: s["state"] for s in report["services"]}
    assert services == {"postgresql": "UNKNOWN", "redis": "UNKNOWN", "nginx": "UNKNOWN", "backup": "UNKNOWN",
                        "certificate": "UNKNOWN"}
    assert rc == 3
    assert "no_such_role" in items(report)[("postgresql", "connections")][1]


def test_redis_stopped_is_critical_fails_the_runbook_and_its_alert_reaches_alertmanager_in_time(host):
    scrape = int(VARS["monitoring_scrape_interval"].rstrip("s"))
    rule_for = int(VARS["monitoring_alert_for_down"].rstrip("s"))
    DATA.check_output("systemctl stop redis-server")
    stopped = time.time()
    try:
        rc, report = run_check(DATA, "redis")
        assert (rc, items(report)[("redis", "ping")][0]) == (2, "CRITICAL")

        def firing():
            status, body = on_host(DATA, "http://127.0.0.1:9093/api/v2/alerts?active=true")
            alerts = json.loads(body) if status == "200" else []
            return [a for a in alerts if a["labels"].get("alertname") == "RedisDown"]

        alerts = wait_until("RedisDown in Alertmanager", firing, rule_for + 4 * scrape, 1)
        elapsed = time.time() - stopped
        assert elapsed <= rule_for + 2 * scrape, f"RedisDown reached Alertmanager after {elapsed:.0f}s"
        assert alerts[0]["labels"]["host"] == "stack-data" and alerts[0]["labels"]["severity"] == "critical"

        proc = subprocess.run(["ansible-playbook", "-i", INVENTORY, os.path.join(PROJECT, "playbooks", "health.yml")],
                              capture_output=True, text=True, timeout=600, check=False,
                              env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
        assert proc.returncode != 0
        assert "stack-data/redis/ping" in proc.stdout + proc.stderr

        # The receiver (the kit's alert log) got the notification.
        log = "/var/log/claude-kit/alerts.jsonl"  # monitoring_alert_log_file's default
        wait_until("RedisDown in the alert log",
                   lambda: "RedisDown" in DATA.run(f"cat {log}").stdout, 60, 2)
        assert "FIRING critical RedisDown" in DATA.check_output("journalctl -u claude-kit-alert-log -o cat --no-pager")
    finally:
        DATA.check_output("systemctl start redis-server")
    wait_until("Redis answering", lambda: run_check(DATA, "redis")[0] == 0, 60, 2)
    # Put back what the next tests assume: every daemon uses Redis again (a CI run
    # on a loaded machine went on while a daemon still said "redis": "down").
    wait_until("every daemon using Redis again",
               lambda: all(status == 200 and body.get("redis") == "ok" for status, _h, body in healths()), 60, 2)
