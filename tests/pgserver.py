"""A throwaway, real PostgreSQL server for tests and benchmarks on the controller.

Uses the server binaries of Debian's postgresql-NN package (scripts/bootstrap.sh
installs it). The cluster lives in a temporary directory, listens on a free
port on 127.0.0.1 and on a socket in that directory, and is removed at the end.
As root, initdb and the server run as the `postgres` OS user (PostgreSQL
refuses to run as root).

    with PgServer() as pg:
        dsn = pg.dsn("mydb")          # creates mydb if needed
        psycopg2.connect(dsn)
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time


def _bindir():
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError("no PostgreSQL server binaries: apt-get install postgresql (./kit bootstrap does)")
    return os.path.dirname(candidates[-1])


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """Start with start() or a with-block; stop() removes everything."""

    def __init__(self, settings=None):
        self.bindir = _bindir()
        self.port = _free_port()
        self.settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", **(settings or {})}
        self.dir = None
        self.user = "postgres"  # the superuser inside the cluster
        self._as_postgres = os.geteuid() == 0

    # -- lifecycle -------------------------------------------------------------------
    def _run(self, args, **kwargs):
        if self._as_postgres:
            args = ["runuser", "-u", "postgres", "--", *args]
        return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="kit-pg-")
        os.chmod(self.dir, 0o755)
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = os.path.join(self.dir, "data")
        self._run([f"{self.bindir}/initdb", "-D", data, "-U", self.user, "-A", "trust", "-E", "UTF8",
                   "--locale=C.UTF-8", "--no-sync"])
        opts = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run([f"{self.bindir}/pg_ctl", "-D", data, "-l", os.path.join(self.dir, "log"), "-w", "-t", "60",
                   "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 {opts}", "start"])
        return self

    def stop(self):
        if self.dir and os.path.isdir(self.dir):
            try:
                self._run([f"{self.bindir}/pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", "immediate", "stop"])
            except subprocess.CalledProcessError:
                pass
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- use -------------------------------------------------------------------------
    def pause(self):
        """Stop the server, keeping its data (to test what clients do when it is gone)."""
        self._run([f"{self.bindir}/pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", "fast", "-w", "stop"])

    def resume(self):
        opts = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run([f"{self.bindir}/pg_ctl", "-D", os.path.join(self.dir, "data"), "-l", os.path.join(self.dir, "log"),
                   "-w", "-t", "60", "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 {opts}",
                   "start"])

    def psql(self, sql, db="postgres"):
        out = subprocess.run(
            ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", self.dir, "-p", str(self.port), "-U", self.user, "-d", db,
             "-c", sql],
            check=True, capture_output=True, text=True,
        )
        return out.stdout

    def create_database(self, name):
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip()
        if not exists:
            self.psql(f'CREATE DATABASE "{name}"')
        return name

    def dsn(self, db="postgres", host=None):
        """libpq DSN; host defaults to the socket directory (use '127.0.0.1' for TCP)."""
        self.create_database(db) if db != "postgres" else None
        return f"host={host or self.dir} port={self.port} user={self.user} dbname={db}"

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self.psql("SELECT 1")
                return
            except subprocess.CalledProcessError:
                time.sleep(0.2)
        raise RuntimeError("PostgreSQL did not become ready")
