"""playbooks/rotate-secrets.yml on the serving stack (docs/runbooks/rotate-secrets.md).

While the runbook changes every password (PostgreSQL's application and backup
roles, Redis's application, operator and monitoring users) and restarts the
daemons, a bounded client load goes through Nginx over HTTPS: a few threads,
at a rate under Nginx's limit, POSTing uniquely keyed alerts and reading. Each
request is retried (bounded backoff) until it gets a 2xx, as a well-behaved
client does. Afterwards: every request got its 2xx, every POSTed alert is in
PostgreSQL exactly once (once the daemons copied their fallback writes back),
each old password is refused and each new one accepted, the daemons' secret
files hold the new values, and the credentials the scenario's inventory reads
hold them too (the production run of conftest.py, later, deploys from them).

The values the rotation retires are kept for test_zy_secret_leak.py in
retired-secrets/ beside the scenario's credentials (0600): they must not
leak either. No secret is ever passed on a command line here: they go to the
hosts on stdin (docker exec -i), and a failure names secrets, never shows them.
"""

import hashlib
import json
import os
import pathlib
import re
import subprocess
import tempfile
import threading
import time
import uuid
from http.client import HTTPException

import pytest

from helpers import report
from test_stack import APPS, DATA, KIT, INVENTORY, healths, http, psql, wait_for_database

testinfra_hosts = ["stack-data"]

PROJECT = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
EPHEMERAL = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
CREDENTIALS = EPHEMERAL / "credentials"
RETIRED = EPHEMERAL / "retired-secrets"
PLAYBOOK = PROJECT / "playbooks" / "rotate-secrets.yml"
ROTATED = ["postgresql_app_password", "postgresql_backup_password", "redis_app_password",
           "redis_admin_password", "redis_monitor_password"]
RUN_ID = uuid.uuid4().hex[:8]
PREFIX = f"rotate-{RUN_ID}-"

# The load: THREADS clients sharing RATE requests a second (retries included),
# under Nginx's 20 r/s per client address (test_security_nginx.py), two POSTs
# for each GET. It lasts as long as the rotation, and at least MIN_POSTS POSTs;
# never more than MAX_REQUESTS requests. A request is retried until a 2xx, for
# at most RETRY_FOR seconds, waiting 0.2 s doubling to 3 s between tries.
THREADS = 3
RATE = 8.0
MIN_POSTS = 300
MAX_REQUESTS = 4000
RETRY_FOR = 180
TAIL = 5

APP_USER = KIT["kit_app_user"]
BACKUP_USER = KIT.get("kit_backup_user", "claude_backup")
REDIS_USERS = {"redis_app_password": KIT.get("kit_redis_app_user", "claude_app"),
               "redis_admin_password": KIT.get("redis_admin_user", "kit_admin"),
               "redis_monitor_password": KIT.get("kit_monitor_user", "claude_monitor")}
REDIS_PORT = int(KIT.get("redis_port", KIT.get("kit_redis_port", 6379)))
DB_PORT = int(KIT.get("kit_db_port", 5432))
PGB_PORT = int(KIT.get("kit_pgbouncer_port", 6432))
PGBOUNCER = str(KIT.get("kit_pgbouncer_enabled", True)).lower() in ("true", "1", "yes")
CA_FILE = KIT.get("kit_tls_ca_file", "/etc/claude-kit/tls/ca.crt")
CONFIG_DIR = KIT.get("daemon_config_dir", "/etc/claude-daemon")
CONTAINER = KIT.get("kit_daemon_container_name", "claude-daemon")


def read_secrets(folder):
    """{name: value} of the rotated secrets' files (as the password lookup reads them)."""
    return {name: (folder / name).read_text().split(" salt=")[0].strip() for name in ROTATED}


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


def docker_exec(host, argv, stdin=""):
    """argv in a molecule host (the container of that name), with stdin: (rc, stdout, stderr)."""
    proc = subprocess.run(["docker", "exec", "-i", host, *argv], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def host_address(host):
    return host.interface("eth0").addresses[0]


class Load:
    """The client load: each request retried until a 2xx, every attempt counted."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.next_slot = time.monotonic()
        self.sequence = 0
        self.requests = []  # one dict per request: method, path, id, attempts, final, failures
        self.threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(THREADS)]

    def slot(self):
        """Wait for this thread's turn: RATE attempts a second over all threads."""
        with self.lock:
            now = time.monotonic()
            self.next_slot = max(self.next_slot + 1.0 / RATE, now)
            wait = self.next_slot - now
        time.sleep(wait)

    def posts(self):
        return [r for r in self.requests if r["method"] == "POST"]

    def take(self):
        """The next request to make, or None when the load is over."""
        with self.lock:
            done = self.stop.is_set() and len(self.posts()) >= MIN_POSTS
            if done or len(self.requests) >= MAX_REQUESTS:
                return None
            self.sequence += 1
            if self.sequence % 3:
                alert_id = f"{PREFIX}{self.sequence:05d}"
                request = {"method": "POST", "path": "/api/alerts", "id": alert_id,
                           "body": {"id": alert_id, "level": "info", "title": f"rotation load {alert_id}"}}
            else:
                request = {"method": "GET", "path": "/api/alerts?limit=5" if self.sequence % 2 else "/health"}
            request.update(attempts=0, final=None, failures={})
            self.requests.append(request)
            return request

    def attempt(self, request):
        self.slot()
        request["attempts"] += 1
        try:
            status, _headers, _body = http(request["method"], request["path"], request.get("body"), timeout=15)
        except (OSError, HTTPException) as exc:  # refused, reset, cut off, timed out: no answer
            status = type(exc).__name__
        return status

    def run_one(self, request):
        delay, deadline = 0.2, time.monotonic() + RETRY_FOR
        while True:
            status = self.attempt(request)
            if isinstance(status, int) and 200 <= status < 300:
                request["final"] = status
                return
            # A retried POST answered 409: an earlier attempt stored it and its
            # answer was lost. The row check below proves it is there, once.
            if status == 409 and request["method"] == "POST" and request["attempts"] > 1:
                request["final"] = "409 after a lost answer"
                return
            request["failures"][str(status)] = request["failures"].get(str(status), 0) + 1
            if time.monotonic() > deadline:
                request["final"] = f"gave up: {request['failures']}"
                return
            time.sleep(delay)
            delay = min(delay * 2, 3.0)

    def worker(self):
        while (request := self.take()) is not None:
            self.run_one(request)

    def start(self):
        for thread in self.threads:
            thread.start()

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=RETRY_FOR + 60)


@pytest.fixture(scope="module")
def rotation():
    """Runs the rotation under load; returns what the tests look at."""
    wait_for_database("postgresql")
    old = read_secrets(CREDENTIALS)
    # Kept for test_zy_secret_leak.py: the retired values must not leak either.
    RETIRED.mkdir(mode=0o700, exist_ok=True)
    for name, value in old.items():
        path = RETIRED / name
        path.touch(mode=0o600)
        path.write_text(value + "\n")
    load = Load()
    load.start()
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as log:
        try:
            # -vvv: the output test below looks for secrets in everything a run can print.
            proc = subprocess.Popen(
                ["ansible-playbook", "-i", INVENTORY, str(PLAYBOOK), "--diff", "-vvv",
                 "-e", json.dumps({"rotate_secrets_credentials_dir": str(CREDENTIALS)})],
                stdout=log, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
            try:
                rc = proc.wait(timeout=1800)
            finally:
                if proc.poll() is None:
                    proc.kill()
            seconds = time.monotonic() - started
            time.sleep(TAIL)  # a few requests more on the new passwords
        finally:
            load.finish()
        log.seek(0)
        output = log.read()
    new = read_secrets(CREDENTIALS)
    # Every daemon copies what it wrote into its SQLite fallback back into PostgreSQL.
    wait_for_database("postgresql", timeout=180)
    deadline = time.time() + 120
    while time.time() < deadline and any(body.get("pending_sync") for _s, _h, body in healths()):
        time.sleep(2)
    # ACL LOAD dropped their Redis connections: each daemon skips Redis for a few seconds after a failure.
    deadline = time.time() + 60
    while time.time() < deadline and any(body.get("redis") != "ok" for _s, _h, body in healths()):
        time.sleep(2)
    return {"rc": rc, "output": output, "seconds": seconds, "load": load, "old": old, "new": new}


def secrets_in(text, secrets):
    """The names (never the values) of the secrets that appear in text."""
    return sorted(name for name, value in secrets.items() if value and value in text)


def test_the_rotation_succeeds_changes_every_secret_and_prints_none(rotation, request):
    out = rotation["output"]
    report(request, f"rotate-secrets.yml under load: {rotation['seconds']:.0f} s, exit {rotation['rc']}")
    recap = dict(re.findall(r"^(\S+)\s+: ok=\d+\s+changed=\d+\s+unreachable=\d+\s+failed=(\d+)", out, re.M))
    leaked = secrets_in(out, {f"old {k}": v for k, v in rotation["old"].items()}
                        | {f"new {k}": v for k, v in rotation["new"].items()})
    assert not leaked, f"secret values in the playbook's output (-vvv --diff): {leaked}"
    assert rotation["rc"] == 0, out[-4000:]
    assert recap and all(failed == "0" for failed in recap.values()), recap
    unchanged = [name for name in ROTATED if rotation["old"][name] == rotation["new"][name]]
    assert not unchanged, f"not rotated: {unchanged}"
    # Same length and alphabet as the lookups' (molecule.yml), and nothing left half-done.
    for name in ROTATED:
        assert len(rotation["new"][name]) == len(rotation["old"][name]) and rotation["new"][name].isalnum(), name
    assert not list(CREDENTIALS.glob("*.previous")), "the .previous files stay only until the run succeeded"


def test_every_request_eventually_got_a_2xx(rotation, request):
    load = rotation["load"]
    requests = load.requests
    posts = load.posts()
    retried = [r for r in requests if r["attempts"] > 1]
    failures = {}
    for r in requests:
        for status, count in r["failures"].items():
            failures[status] = failures.get(status, 0) + count
    late = [r for r in posts if r["final"] == "409 after a lost answer"]
    report(request, f"load: {len(requests)} requests ({len(posts)} POSTs) from {THREADS} threads at {RATE:g}/s; "
                    f"{len(retried)} needed a retry, {sum(r['attempts'] - 1 for r in requests)} retries in all "
                    f"(answers before the 2xx: {failures or 'none'}); {len(late)} POSTs found stored by an earlier try")
    assert len(posts) >= MIN_POSTS
    not_done = [(r["method"], r["path"], r["final"]) for r in requests
                if not (isinstance(r["final"], int) or r["final"] == "409 after a lost answer")]
    assert not not_done, f"{len(not_done)} requests never got a 2xx: {not_done[:10]}"


def test_every_posted_alert_is_in_postgresql_exactly_once(rotation):
    posts = rotation["load"].posts()
    expected = {r["id"] for r in posts}
    stored = psql(f"SELECT id || '|' || title FROM alerts WHERE id LIKE '{PREFIX}%' ORDER BY id").splitlines()
    ids = [line.split("|", 1)[0] for line in stored]
    assert len(ids) == len(set(ids)) and set(ids) == expected, (
        f"posted {len(expected)}, stored {len(ids)} ({len(set(ids))} distinct); "
        f"missing {sorted(expected - set(ids))[:5]}, unexpected {sorted(set(ids) - expected)[:5]}")
    assert all(line == f"{i}|rotation load {i}" for i, line in zip(ids, stored))
    # Whatever went through a daemon's fallback was copied once (test_stack.py has the ledger's rules).
    assert psql("SELECT count(*) FROM (SELECT origin, table_name, local_id FROM fallback_sync_log"
                " WHERE operation = 'insert' GROUP BY 1, 2, 3 HAVING count(*) > 1) d") == "0"


def pg_login(password, user, app=None, port=DB_PORT):
    """psycopg2 on an app host (pg_hba admits the application role from there), over TLS with
    the server verified; the password arrives on stdin. 'ok' or libpq's error, on one line."""
    script = (
        "import json, sys, psycopg2\n"
        "args = json.loads(sys.argv[1])\n"
        "try:\n"
        "    psycopg2.connect(password=sys.stdin.read(), connect_timeout=10, **args).close()\n"
        "    print('ok')\n"
        "except psycopg2.Error as exc:\n"
        "    print(' | '.join(str(exc).strip().splitlines()))\n")
    conn = {"host": host_address(DATA), "port": port, "dbname": KIT["kit_db_name"], "user": user,
            "sslmode": "verify-full", "sslrootcert": CA_FILE}
    target = app or APPS[0].backend.get_hostname()
    _rc, out, err = docker_exec(target, ["python3", "-c", script, json.dumps(conn)], stdin=password)
    return (out or err).strip()


def test_pgbouncer_refuses_the_old_application_password_and_accepts_the_new(rotation):
    """PgBouncer's auth_file was rewritten with the new SCRAM verifier (rotate-secrets.yml)."""
    # The scenario runs PgBouncer (the kit's default): a scenario without it must fail here, not skip.
    assert PGBOUNCER, "kit_pgbouncer_enabled is false in the stack scenario"
    assert pg_login(rotation["new"]["postgresql_app_password"], APP_USER, port=PGB_PORT) == "ok"
    assert "authentication failed" in pg_login(rotation["old"]["postgresql_app_password"], APP_USER, port=PGB_PORT)


def test_postgresql_refuses_the_old_passwords_and_accepts_the_new(rotation):
    assert pg_login(rotation["new"]["postgresql_app_password"], APP_USER) == "ok"
    assert "password authentication failed" in pg_login(rotation["old"]["postgresql_app_password"], APP_USER)
    # The backup role logs in from the backup host (stack-data itself).
    assert pg_login(rotation["new"]["postgresql_backup_password"], BACKUP_USER, "stack-data") == "ok"
    assert "password authentication failed" in pg_login(rotation["old"]["postgresql_backup_password"],
                                                        BACKUP_USER, "stack-data")


def redis_auth(user, password):
    """AUTH on the cache host over TLS, the password on stdin: Redis's answer."""
    line = f"AUTH {user} {json.dumps(password)}\n"
    _rc, out, err = docker_exec("stack-data", ["redis-cli", "--tls", "--cacert", CA_FILE, "-h", "127.0.0.1",
                                               "-p", str(REDIS_PORT), "--no-auth-warning"], stdin=line)
    return (out.strip() or err.strip()).splitlines()[0]


@pytest.mark.parametrize("name", list(REDIS_USERS))
def test_redis_refuses_each_old_password_and_accepts_the_new(rotation, name):
    user = REDIS_USERS[name]
    assert redis_auth(user, rotation["new"][name]) == "OK"
    assert redis_auth(user, rotation["old"][name]).startswith("WRONGPASS")


def test_the_daemons_run_with_the_new_secret_files(rotation):
    """The files on each app host and what the running container reads through its mount
    (a file bind mount keeps the inode it was started with: a container that was not
    restarted would still show the old one). Compared as SHA-256, never shown."""
    expected = {"db_password": sha256(rotation["new"]["postgresql_app_password"]),
                "redis_password": sha256(rotation["new"]["redis_app_password"])}
    for app in APPS:
        for name, digest in expected.items():
            on_host = app.check_output("sha256sum %s", f"{CONFIG_DIR}/{name}").split()[0]
            in_container = app.check_output(
                "docker exec %s python3 -c %s %s", CONTAINER,
                "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())",
                f"/run/secrets/{name}")
            assert on_host == digest and in_container == digest, f"{app.backend.get_hostname()}: {name}"
    for _status, _h, body in healths():
        assert body["database"] == "postgresql" and body["redis"] == "ok", body


def test_redis_exporter_and_the_redis_check_log_in_with_the_new_monitoring_password(rotation):
    assert DATA.check_output("sha256sum /etc/claude-kit/monitoring/secrets/redis.pass").split()[0] == sha256(
        rotation["new"]["redis_monitor_password"] + "\n")
    port = int(KIT.get("monitoring_redis_exporter_port", 9121))
    # HTTPS, verified against the kit's CA and the address, as Prometheus scrapes it.
    url = f"https://{host_address(DATA)}:{port}/metrics"
    ca_file = KIT.get("kit_tls_ca_file", "/etc/claude-kit/tls/ca.crt")
    script = ("import ssl, sys, urllib.request as u\n"
              "ctx = ssl.create_default_context(cafile=sys.argv[2])\n"
              "print(u.build_opener(u.ProxyHandler({}), u.HTTPSHandler(context=ctx)).open(sys.argv[1], timeout=5)"
              ".read().decode())")
    deadline = time.time() + 60
    while True:
        metrics = DATA.run("python3 -c %s %s %s", script, url, ca_file).stdout
        if re.search(r"^redis_up 1$", metrics, re.M) or time.time() > deadline:
            break
        time.sleep(3)
    assert re.search(r"^redis_up 1$", metrics, re.M), "redis_exporter does not reach Redis"
    # The health check logs in as the monitoring user: a refused password is CRITICAL.
    checked = json.loads(DATA.run("/usr/local/bin/claude-kit-check --json redis").stdout)
    states = {c["name"]: (c["state"], c["summary"]) for s in checked["services"] for c in s["checks"]}
    assert states and not [n for n, (state, _s) in states.items() if state in ("CRITICAL", "UNKNOWN")], states


def test_the_inventory_reads_the_new_values(rotation):
    """The scenario's lookups read these files: site.yml deploys what is running now
    (the production run of conftest.py deploys from them)."""
    for name in ROTATED:
        path = CREDENTIALS / name
        assert path.read_text() == rotation["new"][name] + "\n", name
        assert path.stat().st_mode & 0o777 == 0o600, name
