"""Shared by the ha scenario's tests: the members, Patroni's REST API, clients."""

import base64
import json
import os
import pathlib
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import psycopg2

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO_DIR = pathlib.Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
EPHEMERAL_DIR = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
PROJECT_DIR = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
CONVERGE = str(SCENARIO_DIR / "converge.yml")
CREDENTIALS = EPHEMERAL_DIR / "credentials"
CA_FILE = str(CREDENTIALS / "tls" / "ca.crt")

# The scenario's members and their addresses (molecule.yml).
MEMBERS = {f"molecule-ha-db{n}": f"172.30.62.1{n}" for n in (1, 2, 3)}
API_PORT = 8008
TTL = 30
LOOP_WAIT = 10

RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def secret(name):
    return (CREDENTIALS / name).read_text().strip()


def api(member, path, method="GET", body=None, auth=True, timeout=5):
    """Call a member's Patroni REST API over TLS (verified against the kit CA); return (status, json or text)."""
    context = ssl.create_default_context(cafile=CA_FILE)
    request = urllib.request.Request(f"https://{MEMBERS[member]}:{API_PORT}{path}", method=method)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if auth and method != "GET":
        token = base64.b64encode(f"patroni:{secret('postgresql_patroni_api_password')}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, data=data, timeout=timeout, context=context) as response:
            status, raw = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read().decode()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def cluster(alive=None):
    """GET /cluster from the first member that answers (of `alive`, default all)."""
    last = None
    for member in alive or MEMBERS:
        try:
            status, data = api(member, "/cluster", timeout=3)
        except OSError as error:
            last = error
            continue
        if status == 200:
            return data
    raise AssertionError(f"no member's REST API answered /cluster: {last}")


def leader(data):
    names = [m["name"] for m in data["members"] if m["role"] in ("leader", "master", "primary")]
    return names[0] if len(names) == 1 else None


def wait_for(predicate, timeout, interval=1.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, AssertionError, psycopg2.Error, subprocess.CalledProcessError) as error:
            last, value = error, None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout} s (last error: {last})")


def healthy(data, members=None):
    """One leader running and every other listed member a streaming replica on its timeline."""
    members = members or list(MEMBERS)
    by_name = {m["name"]: m for m in data["members"]}
    lead = leader(data)
    if lead is None or by_name[lead]["state"] != "running" or any(name not in by_name for name in members):
        return False
    timeline = by_name[lead].get("timeline")
    for name in members:
        if name == lead:
            continue
        member = by_name[name]
        if member["state"] not in ("streaming", "running") or member.get("timeline") != timeline:
            return False
        if member.get("lag") in (None, "unknown"):
            return False
    # Patroni 3.0 reports a replica as "running" whether or not it streams:
    # the primary's pg_stat_replication says.
    streaming = psql(lead, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", db="postgres")
    return streaming == [str(len(members) - 1)]


def dsn(hosts=None, read_write=True, timeout=3):
    """libpq connection string as the daemons get it: every member, the read-write one chosen."""
    hosts = hosts or list(MEMBERS.values())
    parts = [
        f"host={','.join(hosts)}",
        "port=" + ",".join(["5432"] * len(hosts)),
        "dbname=claude_daemon",
        "user=claude_app",
        f"password={secret('postgresql_app_password')}",
        "sslmode=verify-full",
        f"sslrootcert={CA_FILE}",
        f"connect_timeout={timeout}",
        # A killed host sends no reset: without these a statement in flight
        # waits for TCP's retransmissions (minutes) instead of failing over.
        "tcp_user_timeout=3000",
        "keepalives_idle=2",
        "keepalives_interval=1",
        "keepalives_count=2",
    ]
    if read_write:
        parts.append("target_session_attrs=read-write")
    return " ".join(parts)


def connect(hosts=None, read_write=True, timeout=3):
    conn = psycopg2.connect(dsn(hosts, read_write, timeout))
    conn.autocommit = True
    return conn


def docker(*args, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=120)


def psql(member, query, db="claude_daemon"):
    """SQL as postgres on the member's socket (docker exec); stdout lines."""
    proc = docker("exec", "-u", "postgres", member, "psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", query)
    return proc.stdout.splitlines()


def run_playbook(*args, playbook=CONVERGE):
    """Run ansible-playbook against the scenario's inventory; return (rc, output, recap)."""
    proc = subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, playbook, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"),
        timeout=900,
        check=False,
    )
    output = proc.stdout + proc.stderr
    recap = {
        m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)), "failed": int(m.group(5))}
        for m in RECAP_RE.finditer(output)
    }
    return proc.returncode, output, recap


class WriteLoad:
    """A bounded write load as an application sees it: one INSERT per transaction, unique ids.

    Each write either is acknowledged (COMMIT returned), failed before it was
    sent (no connection: certainly not stored), or has an unknown outcome (the
    connection broke while the statement was in flight). After an error the
    client reconnects with the same multi-host connection string, which finds
    the new primary by itself. At most `rate` writes per second, for at most
    `max_seconds`.
    """

    def __init__(self, prefix, rate=20, max_seconds=120):
        self.prefix = prefix
        self.interval = 1.0 / rate
        self.max_seconds = max_seconds
        self.acked = []          # (id, monotonic time of the acknowledgement, server address)
        self.unknown = []        # ids whose outcome the client cannot know
        self.refused = 0         # attempts with no connection at all
        self.errors = []         # (monotonic time, message)
        self._stop = False
        self._thread = None

    def _run(self):
        start = time.monotonic()
        conn = None
        n = 0
        while not self._stop and time.monotonic() - start < self.max_seconds:
            began = time.monotonic()
            if conn is None:
                try:
                    conn = connect(timeout=2)
                except psycopg2.Error as error:
                    self.refused += 1
                    self.errors.append((began, str(error).strip().splitlines()[0] if str(error).strip() else "error"))
                    time.sleep(0.2)
                    continue
            n += 1
            alert_id = f"{self.prefix}-{n:06d}"
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "INSERT INTO alerts (id, level, title, timestamp) VALUES (%s, 'info', 'ha load', now()) "
                        "RETURNING host(inet_server_addr())",
                        (alert_id,),
                    )
                    server = cur.fetchone()[0]
                self.acked.append((alert_id, time.monotonic(), server))
            except psycopg2.Error as error:
                self.unknown.append(alert_id)
                self.errors.append((time.monotonic(), str(error).strip().splitlines()[0] if str(error).strip() else "error"))
                try:
                    conn.close()
                except psycopg2.Error:
                    pass
                conn = None
            spent = time.monotonic() - began
            if spent < self.interval:
                time.sleep(self.interval - spent)
        if conn is not None:
            conn.close()

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop = True
        self._thread.join(timeout=30)

    def acked_after(self, moment, server=None):
        """Times of acknowledgements after `moment` (by `server` only, if given)."""
        return [t for _id, t, by in self.acked if t > moment and (server is None or by == server)]

    def ids(self):
        return [i for i, _t, _by in self.acked]

    def longest_gap(self):
        times = [t for _id, t, _by in self.acked]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)
