"""Helpers of the backup benchmark: commands as the postgres OS user, the kit's login role,
a pgBackRest repository of its own, and clusters restored from a physical backup.

As root every client runs as `postgres` (runuser), like the server tests/pgserver.py
starts: the files the tools write (dumps, repository, restored data directories) are
then owned by the user that reads them next, as on a real database host.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests"))

from pgserver import _free_port  # importable only after the sys.path insert above

AS_POSTGRES = os.geteuid() == 0
STANZA = "bench"


def run(argv, env=None, as_postgres=AS_POSTGRES, check=True):
    """Run argv (as postgres when root); a failure ends the benchmark with the tool's stderr."""
    full = ["runuser", "-u", "postgres", "--", *argv] if as_postgres else list(argv)
    proc = subprocess.run(full, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} exited {proc.returncode}:\n{(proc.stderr or proc.stdout).strip()[-3000:]}")
    return proc.stdout


def shell(command, env=None, as_postgres=AS_POSTGRES):
    """A bash pipeline through run(); pipefail, so that a failing producer fails the whole."""
    return run(["bash", "-o", "pipefail", "-c", command], env=env, as_postgres=as_postgres)


def owned_dir(path, mode=0o700):
    """Create path for the postgres OS user (when root), who writes into it."""
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)
    if AS_POSTGRES:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def owned_file(path, text, mode=0o600):
    """Write a file only postgres reads (a passfile, a config with a passphrase)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)
    if AS_POSTGRES:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def workspace(parent=None):
    # 0755: the restored clusters' socket directories below must be reachable by psql.
    return owned_dir(tempfile.mkdtemp(prefix="kit-backup-bench-", dir=parent), 0o755)


def client_args(pg, db=None):
    args = ["-h", pg.dir, "-p", str(pg.port), "-U", pg.user]
    return args + (["-d", db] if db else [])


def psql(pg, sql, db="postgres"):
    return run(["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", *client_args(pg, db), "-c", sql]).strip()


def count_sql(tables):
    """One query for the rows of every table; tables are schema-qualified, as in the kit's manifest."""
    quoted = [".".join(f'"{part}"' for part in table.split(".", 1)) for table in tables]
    return "SELECT " + ", ".join(f"(SELECT count(*) FROM {q})" for q in quoted)


def count_rows(pg, tables, db):
    return dict(zip(tables, (int(n) for n in psql(pg, count_sql(tables), db).split("|"))))


def checkpoint(pg):
    # Each timed peer starts with no dirty buffers of the previous one left to write.
    psql(pg, "CHECKPOINT")


# -- the kit's login role ------------------------------------------------------------------

def backup_login(pg, work, db, user="claude_backup"):
    """The role the kit's dumps use (LOGIN, pg_read_all_data), reached over TCP with a
    password from a passfile, through scram-sha-256 as the kit's pg_hba.conf asks."""
    password = secrets.token_hex(16)
    psql(pg, f"CREATE ROLE {user} LOGIN PASSWORD '{password}' IN ROLE pg_read_all_data")
    hba = os.path.join(pg.dir, "data", "pg_hba.conf")
    with open(hba, encoding="utf-8") as handle:
        rest = handle.read()
    with open(hba, "w", encoding="utf-8") as handle:
        handle.write(f"host {db} {user} 127.0.0.1/32 scram-sha-256\n{rest}")
    psql(pg, "SELECT pg_reload_conf()")
    passfile = owned_file(os.path.join(work, "backup.pgpass"), f"127.0.0.1:{pg.port}:{db}:{user}:{password}\n")
    return {"user": user, "passfile": passfile}


def login_env(login):
    return dict(os.environ, PGPASSFILE=login["passfile"])


def login_args(pg, login, db):
    return ["--host", "127.0.0.1", "--port", str(pg.port), "--username", login["user"], "--dbname", db, "--no-password"]


# -- pgBackRest ----------------------------------------------------------------------------

class Repo:
    """A local pgBackRest repository set up like the kit's (roles/backup/templates/etc/pgbackrest.conf.j2):
    aes-256-cbc with a passphrase, zst, start-fast, asynchronous archive-push, process-max
    of half the CPUs, two full backups kept."""

    def __init__(self, work, pg):
        self.pg = pg
        self.dir = owned_dir(os.path.join(work, "pgbackrest"))
        self.config = owned_file(os.path.join(self.dir, "pgbackrest.conf"), self._conf())

    def _conf(self):
        paths = {name: owned_dir(os.path.join(self.dir, name)) for name in ("repo", "spool", "lock", "log")}
        return "\n".join([
            "[global]", f"repo1-path={paths['repo']}", "repo1-cipher-type=aes-256-cbc",
            f"repo1-cipher-pass={secrets.token_urlsafe(32)}", "repo1-retention-full=2", "compress-type=zst",
            f"process-max={max((os.cpu_count() or 1) // 2, 1)}", "start-fast=y", "archive-async=y",
            f"spool-path={paths['spool']}", f"lock-path={paths['lock']}", f"log-path={paths['log']}",
            "log-level-console=warn", "log-level-file=info", "",
            f"[{STANZA}]", f"pg1-path={os.path.join(self.pg.dir, 'data')}", f"pg1-port={self.pg.port}",
            f"pg1-socket-path={self.pg.dir}", f"pg1-user={self.pg.user}", ""])

    def cmd(self, *args):
        return run(["pgbackrest", f"--config={self.config}", f"--stanza={STANZA}", *args])

    def archive_command(self):
        return f"pgbackrest --config={self.config} --stanza={STANZA} archive-push %p"

    def enable_archiving(self):
        """Point archive_command at the repository (a reload is enough: archive_mode is on from the start)."""
        psql(self.pg, f"ALTER SYSTEM SET archive_command = '{self.archive_command()}'")
        psql(self.pg, "SELECT pg_reload_conf()")
        self.cmd("stanza-create")
        self.cmd("check")  # switches WAL and waits until it is archived: the archive works

    def verify(self):
        """`pgbackrest verify`; 2.45 exits 0 even when it finds damage, so its verbose report is read."""
        report = self.cmd("verify", "--output=text", "--verbose")
        if "status: ok" not in report or "status: error" in report:
            raise SystemExit(f"pgbackrest verify found the repository damaged:\n{report}")
        return report

    def newest(self):
        info = json.loads(self.cmd("--output=json", "info"))
        return info[0]["backup"][-1]


# -- a cluster restored from a physical backup ---------------------------------------------

class Restored:
    """A data directory restored by a peer, started as a real server would start it:
    initdb's postgresql.conf (fsync on), archive_mode off (a copy never archives into the
    real repository), its own port and socket."""

    def __init__(self, bindir, work, name):
        self.bindir = bindir
        self.data = os.path.join(work, name)
        self.socket = owned_dir(self.data + ".s", 0o755)
        self.port = _free_port()
        owned_dir(self.data)

    def start(self):
        opts = f"-p {self.port} -k {self.socket} -c listen_addresses='' -c archive_mode=off"
        run([f"{self.bindir}/pg_ctl", "-D", self.data, "-l", self.data + ".log", "-w", "-t", "3600", "-o", opts, "start"])

    def wait_writable(self, timeout=3600):
        """Until recovery has ended: pg_ctl -w returns as soon as a standby accepts read-only sessions."""
        deadline = time.monotonic() + timeout
        while self.query("SELECT pg_is_in_recovery()") != "f":
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.data}: still in recovery after {timeout} s")
            time.sleep(0.05)

    def query(self, sql, db="postgres"):
        return run(["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", self.socket, "-p", str(self.port),
                    "-U", "postgres", "-d", db, "-c", sql]).strip()

    def counts(self, tables, db):
        return dict(zip(tables, (int(n) for n in self.query(count_sql(tables), db).split("|"))))

    def remove(self):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            run([f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"], check=False)
        for path in (self.data, self.socket):
            shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(self.data + ".log"):
            os.unlink(self.data + ".log")
