"""The whole stack, as its users see it: everything goes through Nginx.

The tests run in file order: they stop and start PostgreSQL and a daemon, so
each later test starts from the state the earlier one leaves.
"""

import base64
import functools
import hashlib
import html.parser
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import pytest
import testinfra
import testinfra.utils.ansible_runner
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("web")

RUN_ID = uuid.uuid4().hex[:8]


def get_host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


DATA = get_host("stack-data")
# The scenario renames the shared names (molecule.yml): read them, never assume the defaults.
KIT = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_variables("stack-data")
DB_NAME = KIT["kit_db_name"]
# Every app host of the inventory (sorted by name: stack-app1, where prepare.yml leaves the legacy file, first).
APP_NAMES = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("app")
APPS = [get_host(name) for name in APP_NAMES]
PG_SERVICE = "postgresql@15-main"


@functools.cache
def web_address():
    """The web host's address (asked once: each question is a round trip through Ansible)."""
    return DATA.interface("eth0").addresses[0]


def base_url():
    """Nginx's site: HTTPS only (plain HTTP is a redirect, test_security_nginx.py)."""
    port = int(KIT.get("nginx_https_port", 443))
    return f"https://{web_address()}" + ("" if port == 443 else f":{port}")


@functools.cache
def tls_context():
    """Verifies Nginx's certificate against the CA the tls role installed on the hosts, and its
    name against the web host's address (the IP SAN), as any client of the kit does."""
    ca = DATA.file(KIT.get("kit_tls_ca_file", "/etc/claude-kit/tls/ca.crt")).content_string
    return ssl.create_default_context(cadata=ca)


def verified_spki_pin():
    """base64 SHA-256 of the public key Nginx serves, taken from a handshake that verified the
    certificate chain and name: Chromium trusts exactly that key, nothing else."""
    port = int(KIT.get("nginx_https_port", 443))
    with socket.create_connection((web_address(), port), timeout=10) as raw:
        with tls_context().wrap_socket(raw, server_hostname=web_address()) as tls:
            der = tls.getpeercert(binary_form=True)
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def http(method, path, body=None, timeout=10):
    """One request through Nginx: (status, headers, parsed JSON or text)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base_url() + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=tls_context()) as resp:
            status, headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, headers, raw = err.code, err.headers, err.read()
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode(errors="replace")


def psql(query):
    return DATA.check_output("runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d %s -c %s", DB_NAME, query)


def healths(n=None):
    """n /health answers through Nginx (round robin: every instance answers); by default four per
    app host (8 with two app hosts)."""
    return [http("GET", "/health") for _ in range(n or 4 * len(APPS))]


def wait_for_database(expected, timeout=120):
    """Until every answer of a round names `expected` as the active database."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = healths()
        if all(status == 200 and body.get("database") == expected for status, _h, body in last):
            return last
        time.sleep(2)
    raise AssertionError(f"/health never said {expected} on every instance: {[(s, b) for s, _h, b in last]}")


def test_health_is_200_and_names_postgresql_and_redis(host):
    for status, headers, body in wait_for_database("postgresql", timeout=60):
        assert status == 200
        assert body["redis"] == "ok"
        assert "nginx" in headers.get("Server", "") and "/" not in headers.get("Server", "")


def test_legacy_sqlite_file_was_migrated_before_the_daemon_served(host):
    """daemon_migrate_on_start: prepare.yml left a legacy file on stack-app1; converge
    migrated and verified it into the empty database before the daemon started."""
    assert psql("SELECT count(*) FROM usage_data WHERE session_id = 'legacy-s1'") == "500"
    assert psql("SELECT count(*) FROM alerts WHERE id LIKE 'legacy-a-%'") == "25"
    assert psql("SELECT username FROM users WHERE id = 1") == "legacy-ada"
    assert psql("SELECT model_version FROM predictions WHERE id = 1") == "v1"
    # Normalised by the target type: epoch milliseconds, epoch seconds, 'true'.
    assert psql("SELECT timestamp || '|' || acknowledged FROM alerts WHERE id = 'legacy-a-1'") == "2026-03-02 10:00:01|true"
    assert psql("SELECT acknowledged FROM alerts WHERE id = 'legacy-a-2'") == "t"
    assert psql("SELECT timestamp FROM usage_data WHERE id = 3") == "2026-03-01 10:03:00"
    # The sequence was moved past the migrated ids: the usage monitor's own rows came after them.
    newer = psql("SELECT count(*) || '|' || coalesce(min(id), 0) FROM usage_data WHERE session_id IS DISTINCT FROM 'legacy-s1'")
    count, lowest = map(int, newer.split("|"))
    deadline = time.time() + 30
    while count == 0 and time.time() < deadline:  # USAGE_INTERVAL is 5 s
        time.sleep(2)
        count, lowest = map(int, psql(
            "SELECT count(*) || '|' || coalesce(min(id), 0) FROM usage_data WHERE session_id IS DISTINCT FROM 'legacy-s1'"
        ).split("|"))
    assert count >= 1 and lowest > 500
    # The file was renamed (the daemon's new fallback file holds none of the old rows); the
    # migration's consistent copy is beside it.
    app1 = APPS[0]
    listing = app1.check_output("ls /var/lib/claude-daemon").split()
    assert [n for n in listing if n.startswith("claude-daemon.db.migrated-")], listing
    assert [n for n in listing if n.startswith("claude-daemon.db.") and n.endswith(".backup")], listing
    in_fallback = app1.check_output(
        "python3 -c %s", "import sqlite3; print(sqlite3.connect('file:/var/lib/claude-daemon/claude-daemon.db?mode=ro',"
        " uri=True).execute(\"SELECT count(*) FROM alerts WHERE id LIKE 'legacy-%'\").fetchone()[0])"
    )
    assert in_fallback == "0"
    # The other app hosts had no file: nothing was migrated there.
    for other in APPS[1:]:
        assert "claude-daemon.db.migrated" not in other.check_output("ls /var/lib/claude-daemon"), \
            other.backend.get_hostname()


def test_posted_alert_lands_in_postgresql_and_reads_come_from_redis(host):
    alert_id = f"stack-{RUN_ID}-cached"
    status, _h, body = http("POST", "/api/alerts", {"id": alert_id, "level": "warning", "title": "disk 91%"})
    assert status == 201, body
    assert psql(f"SELECT level || '|' || title FROM alerts WHERE id = '{alert_id}'") == "warning|disk 91%"
    first = http("GET", "/api/alerts")
    second = http("GET", "/api/alerts")
    assert first[0] == second[0] == 200
    assert first[1]["X-Cache"] == "MISS"
    assert second[1]["X-Cache"] == "HIT"
    assert alert_id in {row["id"] for row in second[2]["rows"]}


def test_invalid_input_gets_a_4xx_json_error(host):
    for method, path, body in [
        ("POST", "/api/alerts", {"level": "panic", "title": "x"}),
        ("POST", "/api/alerts", {"level": "info"}),
        ("GET", "/api/usage?from=yesterday", None),
        ("POST", "/api/alerts/does-not-exist/acknowledge", None),
    ]:
        status, _h, answer = http(method, path, body)
        assert 400 <= status < 500, (path, status, answer)
        assert isinstance(answer, dict) and "error" in answer


FALLBACK_IDS = [f"stack-{RUN_ID}-fallback-{i}" for i in range(6)]


def test_postgresql_down_daemon_falls_back_to_sqlite_and_writes_succeed(host):
    DATA.check_output(f"systemctl stop {PG_SERVICE}")
    wait_for_database("sqlite")
    for alert_id in FALLBACK_IDS:
        status, _h, body = http("POST", "/api/alerts", {"id": alert_id, "level": "error", "title": "written during the outage"})
        assert status == 201, body
    # Reads keep working too (from SQLite or the cache).
    assert http("GET", "/api/alerts")[0] == 200
    # Let the usage monitor write a few rows into SQLite as well.
    time.sleep(12)


def check_items(target, service):
    """claude-kit-check on a host: (exit code, {check: (state, summary)})."""
    result = target.run(f"/usr/local/bin/claude-kit-check --json {service}")
    report = json.loads(result.stdout)
    return result.rc, {c["name"]: (c["state"], c["summary"]) for s in report["services"] for c in s["checks"]}


def test_while_postgresql_is_down_its_check_is_critical_and_the_daemons_say_sqlite_fallback(host):
    rc, checks = check_items(DATA, "postgresql")
    assert rc == 2 and checks["ready"][0] == "CRITICAL", checks["ready"]
    # Nothing else can be measured without the server: UNKNOWN, never OK.
    assert {state for name, (state, _s) in checks.items() if name != "ready"} == {"UNKNOWN"}
    for app in APPS:
        rc, checks = check_items(app, "daemon")
        assert rc == 2 and checks["database"][0] == "CRITICAL" and "sqlite" in checks["database"][1].lower()


def test_postgresql_back_every_fallback_row_copied_exactly_once(host):
    DATA.check_output(f"systemctl start {PG_SERVICE}")
    wait_for_database("postgresql")
    deadline = time.time() + 60
    ids = "','".join(FALLBACK_IDS)
    while time.time() < deadline:
        if psql(f"SELECT count(*) FROM alerts WHERE id IN ('{ids}')") == str(len(FALLBACK_IDS)):
            break
        time.sleep(2)
    assert psql(f"SELECT count(*) FROM alerts WHERE id IN ('{ids}')") == str(len(FALLBACK_IDS))
    # Every write made during the outage (the alerts and the monitor's usage
    # rows) went through each instance's outbox, which is now empty everywhere.
    deadline = time.time() + 60
    while time.time() < deadline and any(body.get("pending_sync") for _s, _h, body in healths()):
        time.sleep(2)
    assert all(body.get("pending_sync") == 0 for _s, _h, body in healths())
    # Each original write is in the ledger once, whatever retries happened ...
    assert psql(
        "SELECT count(*) FROM (SELECT origin, table_name, local_id FROM fallback_sync_log"
        " WHERE operation = 'insert' GROUP BY 1, 2, 3 HAVING count(*) > 1) d"
    ) == "0"
    applied_usage = int(psql(
        "SELECT count(*) FROM fallback_sync_log WHERE operation = 'insert' AND outcome = 'applied'"
        " AND table_name = 'usage_data'"
    ))
    assert applied_usage >= 2, "the monitor wrote usage rows during the outage"
    # ... and every applied usage row exists in PostgreSQL, once.
    assert psql(
        "SELECT count(DISTINCT u.id) FROM fallback_sync_log l JOIN usage_data u ON u.id::text = l.remote_id"
        " WHERE l.operation = 'insert' AND l.outcome = 'applied' AND l.table_name = 'usage_data'"
    ) == str(applied_usage)
    dupes = psql(
        "SELECT count(*) FROM (SELECT timestamp, requests_count, avg_response_time, endpoint, count(*)"
        " FROM usage_data GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) d"
    )
    assert dupes == "0"


def test_one_daemon_stopped_the_service_still_answers(host):
    APPS[0].check_output("docker stop claude-daemon")
    try:
        answers = [http("GET", "/health")[0] for _ in range(20)] + [http("GET", "/api/alerts")[0] for _ in range(10)]
        assert answers == [200] * 30
        # The stopped one's check says so.
        rc, checks = check_items(APPS[0], "daemon")
        assert rc == 2 and checks["container"][0] == "CRITICAL", checks["container"]
    finally:
        APPS[0].check_output("docker start claude-daemon")
    wait_for_database("postgresql", timeout=90)


class _DomProbe(html.parser.HTMLParser):
    """Counts what the dashboard rendered: chart points and alert rows."""

    def __init__(self):
        super().__init__()
        self.points = 0
        self.alert_ids = set()
        self._in_chart = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id") == "usage-chart":
            self._in_chart = True
        if tag == "circle" and self._in_chart and "point" in (attrs.get("class") or "").split():
            self.points += 1
        if tag == "tr" and attrs.get("data-alert-id"):
            self.alert_ids.add(attrs["data-alert-id"])

    def handle_endtag(self, tag):
        if tag == "svg":
            self._in_chart = False


def test_dashboard_in_a_real_browser_over_https_shows_usage_and_alerts_under_its_csp(host):
    browser = shutil.which("chromium")
    assert browser, "chromium is installed by scripts/bootstrap.sh"
    created = [f"stack-{RUN_ID}-browser-{i}" for i in range(3)]
    for alert_id in created:
        assert http("POST", "/api/alerts", {"id": alert_id, "level": "info", "title": f"browser {alert_id}"})[0] == 201
    usage_rows = http("GET", "/api/usage")[2]["rows"]
    assert len(usage_rows) >= 1, "the usage monitor has written rows by now"
    profile = tempfile.mkdtemp(prefix="kit-chromium-")
    try:
        # Over HTTPS, trusting only the key of the certificate verified against the kit's CA
        # (a pin, not --ignore-certificate-errors: any other certificate still fails). The console
        # goes to stderr, where a Content Security Policy violation would show.
        run = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--ignore-certificate-errors-spki-list={verified_spki_pin()}",
             "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=8000", "--dump-dom", base_url() + "/"],
            capture_output=True, text=True, timeout=120, check=True,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    dom = run.stdout
    # The page and its script ran under the policies Nginx and the daemon sent: nothing refused.
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Content Security Policy" in line], console
    probe = _DomProbe()
    probe.feed(dom)
    assert set(created) <= probe.alert_ids, dom[:2000]
    # One point per usage row (the monitor may add a row between the two reads).
    assert probe.points >= len(usage_rows) >= 1
