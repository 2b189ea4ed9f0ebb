"""Helpers shared by the daemon's tests (fixtures are in conftest.py)."""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the kit: files/schema.sql, tests/pgserver.py
DAEMON_DIR = ROOT / "daemon"
if str(DAEMON_DIR) not in sys.path:
    sys.path.insert(0, str(DAEMON_DIR))

from claude_daemon import config  # importable only after the sys.path insert above

OWNER = "kit_daemon_owner"
APP = "kit_daemon_app"
APP_PASSWORD = "app-Secret-4f9c2e71"
REDIS_USER = "claude"
REDIS_PASSWORD = "redis-Secret-8d1a6b30"
REDIS_ADMIN_PASSWORD = "redis-admin-5e2f"
TABLES = ("usage_data", "alerts", "predictions", "users", "fallback_sync_log")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgDb:
    def __init__(self, server, name):
        self.server = server
        self.name = name

    def psql(self, sql):
        return self.server.psql(sql, self.name)

    def scalar(self, sql):
        return self.psql(sql).strip()

    def count(self, table, where="TRUE"):
        return int(self.scalar(f"SELECT count(*) FROM {table} WHERE {where}"))

    def env(self, **extra):
        env = {
            "DB_TYPE": "postgresql",
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(self.server.port),
            "DB_NAME": self.name,
            "DB_USER": APP,
            "DB_PASSWORD": APP_PASSWORD,
        }
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def truncate(self):
        self.psql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")


class RedisServer:
    def __init__(self, port, proc, admin):
        self.port = port
        self.proc = proc
        self.admin = admin

    @property
    def url(self):
        return f"redis://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0"

    @property
    def url_without_password(self):
        """For REDIS_PASSWORD_FILE, which then holds REDIS_PASSWORD."""
        return f"redis://{REDIS_USER}@127.0.0.1:{self.port}/0"

    def freeze(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self):
        os.kill(self.proc.pid, signal.SIGCONT)


def make_config(env):
    base = {"USAGE_INTERVAL": "3600", "RECONCILE_INTERVAL": "0.2", "DB_POOL_MAX": "5", "DB_CONNECT_TIMEOUT": "2"}
    base.update(env)
    return config.load(base)


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def cache(self):
        return self.headers.get("X-Cache")


def request(port, method, path, body=None, headers=None, timeout=10):
    """One HTTP request; body may be bytes, str or a JSON-able object."""
    headers = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode("utf-8")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, {k: v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def wait_for(predicate, timeout=10.0, interval=0.05, message="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}")


class DaemonProcess:
    """python3 -m claude_daemon as a subprocess, its stdout collected in a file."""

    def __init__(self, env, logfile):
        self.port = int(env["PORT"])
        self.logfile = logfile
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(DAEMON_DIR),
                "PYTHONUNBUFFERED": "1", **env}
        self._out = open(logfile, "ab")  # kept open for the process's lifetime
        self.proc = subprocess.Popen([sys.executable, "-m", "claude_daemon"], env=full, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=str(DAEMON_DIR))

    def health(self):
        try:
            return request(self.port, "GET", "/health", timeout=2)
        except OSError:
            return None

    def wait_healthy(self, database=None, timeout=15):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}: {self.log()}")
            reply = self.health()
            return reply is not None and reply.status == 200 and (database is None or
                                                                  reply.json["database"] == database)

        wait_for(ready, timeout, message=f"daemon healthy (database={database})")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode

    def log(self):
        return pathlib.Path(self.logfile).read_text(errors="replace")


def start_redis(workdir, listen_args, **client_options):
    """redis-server (no persistence, admin password REDIS_ADMIN_PASSWORD) with listen_args,
    once it answers PING, and the kit's ACL user for the daemon: (process, admin client).
    client_options: how the admin client reaches it (host, port, ssl ...)."""
    import redis

    binary = "/usr/bin/redis-server"
    assert os.path.exists(binary), "redis-server missing: apt-get install -y redis-server (scripts/bootstrap.sh does)"
    proc = subprocess.Popen(
        [binary, *listen_args, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--dir", str(workdir), "--requirepass", REDIS_ADMIN_PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = redis.Redis(host="127.0.0.1", password=REDIS_ADMIN_PASSWORD, socket_timeout=2, **client_options)
    deadline = time.time() + 10
    while True:
        try:
            admin.ping()
            break
        except redis.ConnectionError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)
    # The kit's ACL for the daemon: these commands, on claude:* keys, nothing else.
    admin.execute_command(
        "ACL", "SETUSER", REDIS_USER, "reset", "on", f">{REDIS_PASSWORD}", "~claude:*", "resetchannels",
        "-@all", "+ping", "+get", "+set", "+del", "+unlink", "+incr", "+expire", "+exists")
    return proc, admin
