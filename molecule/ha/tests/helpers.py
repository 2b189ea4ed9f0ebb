"""Shared by the ha scenario's tests: the members, Patroni's REST API, clients."""

import base64
import concurrent.futures
import http.client
import json
import os
import pathlib
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

import psycopg2

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO_DIR = pathlib.Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
EPHEMERAL_DIR = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
PROJECT_DIR = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
CONVERGE = str(SCENARIO_DIR / "converge.yml")
CREDENTIALS = EPHEMERAL_DIR / "credentials"
CA_FILE = str(CREDENTIALS / "tls" / "ca.crt")
# The same CA, and each host's certificate and key, where role tls installs them on the members (kit_tls_*).
TLS_CA_ON_HOSTS = "/etc/claude-kit/tls/ca.crt"
TLS_CERT_ON_HOSTS = "/etc/claude-kit/tls/server.crt"
TLS_KEY_ON_HOSTS = "/etc/claude-kit/tls/server.key"

# The reference daemon, run in-process by DaemonLoad as an app host runs it.
sys.path.insert(0, str(PROJECT_DIR / "daemon"))
from claude_daemon import config as daemon_config  # importable only after the sys.path insert above
from claude_daemon.api import App as DaemonApp

# The scenario's members and their addresses (molecule.yml).
MEMBERS = {f"molecule-ha-db{n}": f"172.30.62.1{n}" for n in (1, 2, 3)}
API_PORT = 8008
POSTGRESQL_PORT = 5432
# PgBouncer on every member, pooling to that member's own PostgreSQL (kit_pgbouncer_port).
PGBOUNCER_PORT = 6432
# The scenario's Docker network (molecule.yml); the controller is its gateway.
NETWORK = "claude-molecule-ha"
TTL = 30
LOOP_WAIT = 10

RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def secret(name):
    return (CREDENTIALS / name).read_text().strip()


def api(member, path, method="GET", body=None, auth=True, timeout=5, password=None):
    """Call a member's Patroni REST API over TLS (verified against the kit CA); return (status, json or text).
    A change is sent with the API's password (the lab's, or `password`) unless auth is false."""
    context = ssl.create_default_context(cafile=CA_FILE)
    request = urllib.request.Request(f"https://{MEMBERS[member]}:{API_PORT}{path}", method=method)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if auth and method != "GET":
        password = secret("postgresql_patroni_api_password") if password is None else password
        token = base64.b64encode(f"patroni:{password}".encode()).decode()
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


def dsn(hosts=None, read_write=True, timeout=3, port=POSTGRESQL_PORT):
    """libpq connection string as the daemons get it: every member, the read-write one chosen
    (PostgreSQL's own port, or PgBouncer's)."""
    hosts = hosts or list(MEMBERS.values())
    parts = [
        f"host={','.join(hosts)}",
        "port=" + ",".join([str(port)] * len(hosts)),
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


def connect(hosts=None, read_write=True, timeout=3, port=POSTGRESQL_PORT):
    conn = psycopg2.connect(dsn(hosts, read_write, timeout, port))
    conn.autocommit = True
    return conn


def pgbouncer_roles():
    """{member: True when a read-write login through that member's PgBouncer alone succeeds,
    False when libpq refuses it as read-only}: the role each PgBouncer hands its clients
    (the in_hot_standby and default_transaction_read_only it cached from its server). Any
    other failure (refused login, no answer) is raised."""
    # libpq 14+ takes the role from the start-up parameters (what PgBouncer caches); an older
    # one would ask the server through PgBouncer and this would prove nothing about the cache.
    assert psycopg2.__libpq_version__ >= 140000, psycopg2.__libpq_version__
    roles = {}
    for name, address in MEMBERS.items():
        try:
            connect([address], port=PGBOUNCER_PORT).close()
            roles[name] = True
        except psycopg2.OperationalError as error:
            if "read-only" not in str(error):
                raise
            roles[name] = False
    return roles


def docker(*args, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=120)


# A TCP connect to each (address, port) of argv, side by side, from wherever it
# runs (a member, a throwaway container): one JSON {"address:port": outcome},
# the outcome open, timeout (the kit's firewall drops the packets), refused, ...
CONNECT_EACH = r"""
import concurrent.futures, json, socket, sys
def one(target):
    address, port = target.rsplit(":", 1)
    try:
        socket.create_connection((address, int(port)), timeout=3).close()
        return "open"
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return type(exc).__name__
with concurrent.futures.ThreadPoolExecutor(len(sys.argv) - 1) as pool:
    print(json.dumps(dict(zip(sys.argv[1:], pool.map(one, sys.argv[1:])))))
"""


def connect_each(targets, source):
    """{"address:port": outcome} of a TCP connect to each target from `source`: a member's name
    (inside it), "controller" (this process's machine, the network's gateway) or "outsider" (a
    throwaway container on the scenario's network that is no inventory host)."""
    if source == "controller":
        proc = subprocess.run([sys.executable, "-c", CONNECT_EACH, *targets], capture_output=True, text=True,
                              check=True, timeout=60)
    elif source == "outsider":
        proc = docker("run", "--rm", "--network", NETWORK, "--entrypoint", "python3", "claude-kit-base:debian12",
                      "-c", CONNECT_EACH, *targets)
    else:
        proc = docker("exec", source, "python3", "-c", CONNECT_EACH, *targets)
    return json.loads(proc.stdout)


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


class _Background:
    """A load that runs in a thread of its own until stop() (or its time is up)."""

    _thread = None
    _stop = False

    def _run(self):
        raise NotImplementedError

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=30):
        self._stop = True
        self._thread.join(timeout=timeout)


class WriteLoad(_Background):
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

    def acked_after(self, moment, server=None):
        """Times of acknowledgements after `moment` (by `server` only, if given)."""
        return [t for _id, t, by in self.acked if t > moment and (server is None or by == server)]

    def ids(self):
        return [i for i, _t, _by in self.acked]

    def longest_gap(self):
        times = [t for _id, t, _by in self.acked]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


class DaemonLoad(_Background):
    """The reference daemon (daemon/), run here on the controller as an app host runs it,
    given every member in DB_HOST (libpq's multi-host list; read-write chosen) on `port`
    (PgBouncer's, as deployed, or PostgreSQL's own), under a bounded load of POSTed alerts
    with unique ids: `rate` a second, each answered or not within 30 s, at most 16 in flight.

    What a client of the daemon saw is counted: 2xx (acknowledged) or anything else.
    An acknowledged alert may have gone to the daemon's SQLite fallback first;
    drained() waits until the daemon is on PostgreSQL again with nothing left
    to copy back.
    """

    def __init__(self, prefix, rate=10, max_seconds=150, tmp_dir=None, port=PGBOUNCER_PORT):
        self.prefix, self.interval, self.max_seconds, self.port = prefix, 1.0 / rate, max_seconds, port
        self._dir = tmp_dir or tempfile.mkdtemp(prefix="kit-ha-daemon-")
        cfg = daemon_config.load({
            "DB_TYPE": "postgresql",
            "DB_HOST": ",".join(MEMBERS.values()),
            "DB_PORT": str(port),
            "DB_NAME": "claude_daemon",
            "DB_USER": "claude_app",
            "DB_PASSWORD": secret("postgresql_app_password"),
            "DB_SSLMODE": "verify-full",
            "DB_SSLROOTCERT": CA_FILE,
            "DB_POOL_MAX": "8",
            "DATABASE_PATH": f"{self._dir}/fallback.db",
            "RECONCILE_INTERVAL": "1",
            "USAGE_INTERVAL": "3600",
        })
        self.app = DaemonApp(cfg).start(host="127.0.0.1", port=0, background=True)
        self.acked = []      # (id, monotonic time of the answer)
        self.failed = []     # (id, status or error, body)
        self.slowest = 0.0   # seconds from a request's due time to its answer (queueing included)
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = False
        self._thread = None

    def _post(self, alert_id, began):
        conn = http.client.HTTPConnection("127.0.0.1", self.app.port, timeout=30)
        try:
            conn.request("POST", "/api/alerts", body=json.dumps({"id": alert_id, "level": "info",
                                                                  "title": "ha daemon load"}),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            body = response.read()
            outcome = response.status
        except Exception as error:  # pylint: disable=broad-except  (any failure is a failed request, counted)
            outcome, body = type(error).__name__, str(error).encode()
        finally:
            conn.close()
        took = time.monotonic() - began
        with self._lock:
            self.slowest = max(self.slowest, took)
            if isinstance(outcome, int) and 200 <= outcome < 300:
                self.acked.append((alert_id, time.monotonic()))
            else:
                self.failed.append((alert_id, outcome, body[:200].decode(errors="replace")))

    def _run(self):
        start = time.monotonic()
        n = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            while not self._stop and time.monotonic() - start < self.max_seconds:
                n += 1
                self.sent = n
                pool.submit(self._post, f"{self.prefix}-{n:06d}", time.monotonic())
                time.sleep(self.interval)

    def stop(self, timeout=60):
        super().stop(timeout)
        # Every request sent has an outcome: answered 2xx, or counted as failed.
        assert not self._thread.is_alive(), "the daemon load did not end"
        assert self.sent == len(self.acked) + len(self.failed), (self.sent, len(self.acked), len(self.failed))

    def health(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.app.port, timeout=10)
        try:
            conn.request("GET", "/health")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def drained(self, timeout=120):
        """Seconds until the daemon is on PostgreSQL with nothing pending (after stop())."""
        began = time.monotonic()
        wait_for(lambda: (lambda h: h["database"] == "postgresql" and h["pending_sync"] == 0)(self.health()),
                 timeout, 1, "the daemon back on PostgreSQL with its fallback drained")
        return time.monotonic() - began

    def ids(self):
        return [i for i, _t in self.acked]

    def close(self):
        """Stop sending (if still running) and stop the daemon."""
        self._stop = True
        self.app.stop()


def stored_counts(ids, hosts=None):
    """How many times each id is stored, read from the primary (or the hosts given)."""
    with connect(hosts, read_write=hosts is None) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, count(*) FROM alerts WHERE id = ANY(%s) GROUP BY id", (list(ids),))
        return dict(cur.fetchall())


def daemon_figures(daemon, stored):
    """What the daemon's clients saw, and what PostgreSQL holds of it after the fallback drained."""
    acked = daemon.ids()
    return {
        "requests": daemon.sent, "acknowledged_2xx": len(acked), "not_2xx": len(daemon.failed),
        "lost": sum(1 for i in acked if stored.get(i, 0) != 1),
        "slowest_answer_s": round(daemon.slowest, 1),
    }


def wait_healthy(alive, timeout):
    return wait_for(lambda: (lambda d: d if healthy(d, alive) else None)(cluster(alive)), timeout,
                    what=f"a healthy cluster of {alive}")


def wait_synchronous(timeout=90):
    """A healthy cluster of every member with a synchronous standby chosen again (Patroni
    picks one in its next loop after the replicas reconnected)."""
    return wait_for(lambda: (lambda d: d if healthy(d) and any(m["role"] == "sync_standby" for m in d["members"])
                             else None)(cluster()), timeout, what="a healthy cluster with a synchronous standby")


class SocketWriter(_Background):
    """Writes straight into one member's server through its Unix socket (docker exec, so it
    reaches a member cut off from the network too), one INSERT a second. An INSERT counts as
    acknowledged only if psql returned success within 3 s: a commit waiting for a synchronous
    standby that never answers is not acknowledged (psql is killed at 3 s)."""

    def __init__(self, member, prefix, max_seconds=150):
        self.member, self.prefix, self.max_seconds = member, prefix, max_seconds
        self.acked = []      # (id, monotonic time of the acknowledgement)
        self.unknown = []    # ids sent without an acknowledgement
        self._stop = False
        self._thread = None

    def _run(self):
        start = time.monotonic()
        n = 0
        while not self._stop and time.monotonic() - start < self.max_seconds:
            began = time.monotonic()
            n += 1
            alert_id = f"{self.prefix}-{n:05d}"
            proc = docker("exec", "-u", "postgres", self.member, "timeout", "3", "psql", "-XAtq",
                          "-v", "ON_ERROR_STOP=1", "-d", "claude_daemon", "-c",
                          "INSERT INTO alerts (id, level, title, timestamp) "
                          f"VALUES ('{alert_id}', 'info', 'ha socket', now())", check=False)
            if proc.returncode == 0:
                self.acked.append((alert_id, time.monotonic()))
            else:
                self.unknown.append(alert_id)
            spent = time.monotonic() - began
            if spent < 1.0:
                time.sleep(1.0 - spent)

    def ids(self):
        return [i for i, _t in self.acked]


class EtcdPartition:
    """Cuts one member off from the other members' etcd (client port 2379, peer port 2380), both
    ways, and nothing else: PostgreSQL's replication, Patroni's REST API and the clients still
    reach it. The scenario's containers share one Docker bridge, whose traffic passes the
    machine's iptables (bridge-nf-call-iptables), so the rules go into Docker's DOCKER-USER
    chain there: no capability inside the containers is needed. Only this scenario's addresses
    are matched, each rule tagged with COMMENT; cut() first removes any tagged rule an
    interrupted run left behind, heal() removes every tagged rule."""

    COMMENT = "claude-kit-ha-partition"

    def __init__(self, member):
        self.member = member
        self.rules = []
        for peer in MEMBERS:
            if peer != member:
                for src, dst in ((MEMBERS[member], MEMBERS[peer]), (MEMBERS[peer], MEMBERS[member])):
                    self.rules.append(["-s", src, "-d", dst, "-p", "tcp", "-m", "multiport",
                                       "--dports", "2379,2380", "-m", "comment", "--comment", self.COMMENT,
                                       "-j", "DROP"])

    @classmethod
    def purge(cls):
        """Delete every rule tagged COMMENT from DOCKER-USER (the listing gives each one's spec)."""
        listing = subprocess.run(["iptables", "-S", "DOCKER-USER"], capture_output=True, text=True,
                                 check=True, timeout=30).stdout
        for line in listing.splitlines():
            if f'--comment {cls.COMMENT}' in line and line.startswith("-A DOCKER-USER "):
                subprocess.run(["iptables", "-D", "DOCKER-USER", *line.split()[2:]], check=True, timeout=30)

    def reaches_a_peers_etcd(self):
        peer = next(MEMBERS[name] for name in MEMBERS if name != self.member)
        probe = docker("exec", self.member, "timeout", "3", "bash", "-c", f"echo > /dev/tcp/{peer}/2379",
                       check=False)
        return probe.returncode == 0

    def cut(self):
        self.purge()
        for rule in self.rules:
            subprocess.run(["iptables", "-I", "DOCKER-USER", *rule], check=True, timeout=30)
        # The rules must really cut it off (they do nothing where bridged traffic skips iptables).
        assert not self.reaches_a_peers_etcd(), "the iptables rules did not cut the member off from etcd"

    def heal(self):
        self.purge()


class PrimaryProbe:
    """Polls each given member directly (no dead host in the way) with one write every 0.25 s;
    records when the first of them acknowledged one: the moment a new primary accepts writes."""

    def __init__(self, members, prefix):
        self.members, self.prefix, self.first = members, prefix, None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        n = 0
        deadline = time.monotonic() + 120
        while self.first is None and time.monotonic() < deadline:
            for name in self.members:
                n += 1
                try:
                    with connect([MEMBERS[name]], read_write=False, timeout=2) as conn, conn.cursor() as cur:
                        cur.execute("INSERT INTO alerts (id, level, title, timestamp) "
                                    "VALUES (%s, 'info', 'ha probe', now())", (f"{self.prefix}-{n:05d}",))
                    self.first = (time.monotonic(), name)
                    return
                except psycopg2.Error:  # a replica refuses the write, a dying member times out: both mean "not yet"
                    pass
            time.sleep(0.25)

    def start(self):
        self._thread.start()
        return self

    def wait(self):
        self._thread.join(timeout=130)
        return self.first


def kill_the_primary_under_load(write_rate=20, daemon_rate=10):
    """docker kill of the primary's container under two bounded loads: a libpq client writing
    `write_rate` rows a second through the multi-host connection string, and the reference
    daemon (every member in DB_HOST) taking `daemon_rate` POSTed alerts a second. The loads
    go on until a new primary has acknowledged writes for 10 s, then the daemon's fallback
    drains. Returns (figures, load, daemon, stored): what the clients saw and what PostgreSQL
    holds; the caller asserts (tests/test_failover.py) or reports (bench/failover)."""
    before = wait_healthy(list(MEMBERS), 90)
    old = leader(before)
    survivors = [name for name in MEMBERS if name != old]
    load = WriteLoad(f"ha-kill-{uuid.uuid4().hex[:8]}", rate=write_rate, max_seconds=150).start()
    daemon = DaemonLoad(f"ha-kill-daemon-{uuid.uuid4().hex[:8]}", rate=daemon_rate, max_seconds=150).start()
    try:
        return _kill_under(load, daemon, old, survivors)
    finally:
        # Whatever happened, the loads end and the in-process daemon stops (idempotent).
        load.stop()
        daemon.close()


def _kill_under(load, daemon, old, survivors):
    time.sleep(5)
    assert len(load.acked) > 20, load.errors[-5:]
    assert len(daemon.acked) > 10 and not daemon.failed, daemon.failed[:5]
    killed_at = time.monotonic()
    docker("kill", old)
    probe = PrimaryProbe(survivors, f"ha-probe-{uuid.uuid4().hex[:8]}").start()

    def ten_seconds_on_a_new_primary():
        after = [t for name in survivors for t in load.acked_after(killed_at, MEMBERS[name])]
        return bool(after) and time.monotonic() - min(after) > 10

    wait_for(ten_seconds_on_a_new_primary, 120, 0.5, "writes on a new primary")
    load.stop()
    daemon.stop()
    drained = daemon.drained(120)
    new = leader(wait_healthy(survivors, 60))
    promoted = probe.wait()
    acked = load.ids()
    stored = stored_counts(acked + load.unknown)
    figures = {
        "old_primary": old, "new_primary": new,
        "probe_promoted": promoted[1] if promoted else None,
        "seconds_to_new_primary": round(promoted[0] - killed_at, 1) if promoted else None,
        # What the application saw: its first write acknowledged by the new primary.
        "seconds_to_first_client_write": round(min(load.acked_after(killed_at, MEMBERS[new])) - killed_at, 1)
        if new in survivors and load.acked_after(killed_at, MEMBERS[new]) else None,
        "longest_gap_s": round(load.longest_gap(), 1), "acknowledged": len(acked),
        "lost": sum(1 for i in acked if stored.get(i, 0) != 1),
        "unknown_outcome": len(load.unknown), "unknown_stored": sum(stored.get(i, 0) for i in load.unknown),
        "connection_attempts_refused": load.refused,
        "acked_by_killed_host_after_1s": len(load.acked_after(killed_at + 1, MEMBERS[old])),
        "daemon": {**daemon_figures(daemon, stored_counts(daemon.ids())), "fallback_drained_s": round(drained, 1)},
    }
    return figures, load, daemon, stored
