#!/usr/bin/env python3
"""Benchmark: the kit's dump and logical restore against the bare PostgreSQL tools and the
guide's gunzip | psql, and pgBackRest (as the kit configures it) against pg_basebackup.

    /work/main/.venv/bin/python bench/backup/run.py [--usage-rows N] [--alerts N] [--repeat 3] [--lab]

1. Data: the migration benchmark's SQLite data set (bench/migration/dataset.py; 1,121,000
   rows by default, cached in bench/out/backup/), loaded into a throwaway PostgreSQL
   (tests/pgserver.py, archive_mode on) the way that benchmark's raw peer loads it: per table
   `sqlite3 -csv | psql \\copy`, into files/schema.sql and 0002_fallback_sync.sql created as the
   owner role, with the kit's claude_kit.schema_migrations; then VACUUM ANALYZE. The kit's login
   role (LOGIN, pg_read_all_data, a password in a passfile, scram-sha-256 over TCP) is created.
2. Peers, timed by wall clock in interleaved rounds (--repeat, 3; medians compared):
   - kit_dump:        roles/backup/files/claude-kit-backup `dump` with a generated config (its
                      snapshot, per-table counts, pg_dump -Fc, globals, fsync, pg_restore --list,
                      sha256, manifest, retention);
   - pg_dump:         bare `pg_dump -Fc` of the same database, same role and connection;
   - kit_restore:     what roles/backup/tasks/restore_dump.yml does, done directly, into a second
                      throwaway server: CREATE DATABASE from template0, pg_restore --jobs=<CPUs>
                      --exit-on-error, the rows of every table in the manifest counted and compared,
                      the two ALTER DATABASE ... RENAME of the swap (without Ansible and without the
                      grants, which --lab includes);
   - pg_restore_1job: the same dump, `pg_restore --exit-on-error` with one job, into a fresh database;
   - gunzip_psql:     the guide's method, `gunzip -c dump.sql.gz | psql` into a fresh database (the
                      .sql.gz is made once with `pg_dump | gzip`, timed apart);
   - pgbackrest_backup:  `pgbackrest backup --type=full` into a local repository configured like the
                      kit's (aes-256-cbc, zst, start-fast, async archive-push, process-max = CPUs/2);
                      the `pgbackrest verify` the kit's program runs after it is timed apart;
   - pg_basebackup:   `pg_basebackup -Ft -X stream --checkpoint=fast` (or -Fp, --basebackup-format);
   - pgbackrest_restore: `pgbackrest restore --type=immediate --target-action=promote` into a fresh
                      directory, then the server started until recovery has ended;
   - basebackup_restore: the tar files unpacked (or the directory copied) into a fresh directory,
                      then the server started until recovery has ended.
   Every restore is checked against the source's row counts (untimed, except the kit's own).
   The restored clusters start as a real server would (initdb's postgresql.conf, fsync on, so a
   copy that was never synced pays for it at start), with archive_mode off.
3. --lab: against the local lab (`./kit deploy`), `./kit run ansible-playbook playbooks/restore.yml`
   with restore_method=dump and =pgbackrest, each timed from the playbook's start until
   https://127.0.0.1/health answers "database": "postgresql" again after the playbook has ended.

Prints the medians, the ratios kit_dump/pg_dump (target at most 1.2), gunzip_psql/kit_restore
(target at least 2), pgbackrest_backup/pg_basebackup, pgbackrest_restore/basebackup_restore, the
machine and the sizes, and writes everything to bench/out/backup/results-<time>.json. Exits 0
when a target is missed (it is a measurement); non-zero only when something broke.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "bench", "migration"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import clusters as cl  # importable only after the sys.path inserts above
import dataset  # likewise
import lab  # likewise
from pgserver import PgServer  # likewise


def _migration_bench():
    # Its file is also called run.py: loaded under another name, for its table list and machine().
    spec = importlib.util.spec_from_file_location("migration_run", os.path.join(ROOT, "bench", "migration", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MIGRATION = _migration_bench()
PROGRAM = os.path.join(ROOT, "roles", "backup", "files", "claude-kit-backup")
DB, OWNER = "claude_daemon", "claude_owner"  # the kit's kit_db_name and kit_owner_role
SCRATCH, PEER_DB = DB + "_restore", "peer_restore"
CPUS = os.cpu_count() or 1
PEERS = ("kit_dump", "pg_dump", "kit_restore", "pg_restore_1job", "gunzip_psql",
         "pgbackrest_backup", "pg_basebackup", "pgbackrest_restore", "basebackup_restore")
RATIOS = (  # numerator, denominator, target
    ("kit_dump", "pg_dump", ("at most", 1.2)),
    ("gunzip_psql", "kit_restore", ("at least", 2.0)),
    ("pg_restore_1job", "kit_restore", None),
    ("pgbackrest_backup", "pg_basebackup", None),
    ("pgbackrest_restore", "basebackup_restore", None),
)


class Stopwatch:
    def __enter__(self):
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.start


# roles/backup's default backup_restore_session_settings, as restore_dump.yml passes them.
KIT_RESTORE_PGOPTIONS = "-c synchronous_commit=off -c maintenance_work_mem=128MB"


def program_python():
    """The interpreter of the program's shebang (it needs that Python's psycopg2)."""
    with open(PROGRAM, encoding="utf-8") as handle:
        python = handle.readline()[2:].strip()
    if subprocess.run([python, "-c", "import psycopg2"], capture_output=True, check=False).returncode != 0:
        raise SystemExit(f"{python} has no psycopg2, which {PROGRAM} needs: apt-get install -y python3-psycopg2")
    return python


def program_config(pg, login, dump_dir, work):
    """The program's settings, with the keys roles/backup/templates/etc/claude-kit/backup.json.j2 writes."""
    dump = {"enabled": True, "dir": dump_dir, "format": "custom", "host": "127.0.0.1", "port": pg.port, "dbname": DB,
            "user": login["user"], "passfile": login["passfile"], "bin_dir": pg.bindir,
            "migrations_table": "claude_kit.schema_migrations", "retention_days": 7, "retention_count": 7}
    return {"state_dir": cl.owned_dir(os.path.join(work, "state")), "textfile_dir": None, "dump": dump,
            "pgbackrest": {"enabled": False, "stanza": cl.STANZA, "pg_remote": False},
            "drill": {"dir": os.path.join(work, "drill"), "port": 5499, "jobs": CPUS}}


def create_db(pg, name, owner=OWNER):
    # As restore_dump.yml creates it: from template0, UTF8, C.UTF-8, owned by the owner role.
    cl.psql(pg, f"CREATE DATABASE \"{name}\" OWNER {owner} TEMPLATE template0 ENCODING 'UTF8' "
                "LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'")


def differences(expected, actual):
    return [f"{t}: expected {expected.get(t)}, got {actual.get(t)}" for t in sorted(set(expected) | set(actual))
            if expected.get(t) != actual.get(t)]


def check_counts(label, expected, actual):
    problems = differences(expected, actual)
    if problems:
        raise SystemExit(f"{label}: restored rows differ: " + "; ".join(problems))


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        os.makedirs(self.out, exist_ok=True)
        self.source = self.target = self.work = self.repo = None
        self.results = {"machine": machine(), "args": vars(args), "runs": {}, "once": {}, "sizes": {}}

    # -- data ----------------------------------------------------------------------------------
    def data(self):
        a = self.args
        sizes = {"usage_rows": a.usage_rows, "alerts": a.alerts, "users": a.users, "predictions": a.predictions}
        path = os.path.join(self.out, "daemon-{usage_rows}-{alerts}-{users}-{predictions}.db".format(**sizes))
        if not os.path.exists(path):
            print(f"generating {path} ...", flush=True)
            if os.path.exists(path + ".partial"):
                os.unlink(path + ".partial")
            dataset.generate(path + ".partial", **sizes)
            os.replace(path + ".partial", path)
        return path, sum(sizes.values())

    def schema(self):
        """files/schema.sql and the numbered migrations, as the owner role, recorded as the kit records them."""
        files = ["schema.sql"] + sorted(f for f in os.listdir(os.path.join(ROOT, "files")) if f[:4].isdigit())
        tracking = ("CREATE SCHEMA claude_kit AUTHORIZATION claude_owner; CREATE TABLE claude_kit.schema_migrations ("
                    "version integer PRIMARY KEY, name text NOT NULL, checksum char(64) NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT now(), applied_by text NOT NULL DEFAULT current_user)")
        self.source.psql(f"SET ROLE {OWNER}; {tracking}", DB)
        for version, name in enumerate(files, 1):
            with open(os.path.join(ROOT, "files", name), encoding="utf-8") as handle:
                self.source.psql(f"SET ROLE {OWNER}; {handle.read()}", DB)
            self.source.psql(f"INSERT INTO claude_kit.schema_migrations VALUES ({version}, '{name}', repeat('0', 64))", DB)

    def load(self, src):
        """The migration benchmark's raw peer: sqlite3 -csv | psql \\copy per table, then the sequences."""
        psql = shlex.join(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *cl.client_args(self.source, DB)])
        for table, columns in MIGRATION.TABLES.items():
            cols = ", ".join(columns)
            query = shlex.quote(f"SELECT {cols} FROM {table}")
            copy = shlex.quote(f"\\copy {table} ({cols}) FROM STDIN WITH (FORMAT csv)")
            # As the caller (root), who owns the SQLite file and its WAL.
            cl.shell(f"sqlite3 -csv {shlex.quote(src)} {query} | {psql} -c {copy}", as_postgres=False)
        for table in MIGRATION.SERIALS:
            self.source.psql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}", DB)
        self.source.psql("VACUUM ANALYZE", DB)

    # -- set-up --------------------------------------------------------------------------------
    def start_servers(self):
        # archive_command is set with ALTER SYSTEM (a -c on the command line would override it):
        # /bin/true while loading, pgBackRest's archive-push once the data are in.
        self.source = PgServer({"archive_mode": "on"}).start()
        cl.psql(self.source, "ALTER SYSTEM SET archive_command = '/bin/true'")
        cl.psql(self.source, "SELECT pg_reload_conf()")
        self.target = PgServer().start()
        for pg in (self.source, self.target):
            cl.psql(pg, f"CREATE ROLE {OWNER} NOLOGIN")
        cl.psql(self.source, f"CREATE DATABASE {DB} OWNER {OWNER}")
        create_db(self.target, DB)  # the "live" database the kit's restore swaps out

    def setup(self):
        src, total = self.data()
        self.start_servers()
        self.work = cl.workspace(self.args.work_dir)
        self.schema()
        with Stopwatch() as watch:
            self.load(src)
        self.tables = [f"public.{t}" for t in MIGRATION.TABLES]
        self.counts = cl.count_rows(self.source, self.tables, DB)
        if sum(self.counts.values()) != total:
            raise SystemExit(f"loaded {sum(self.counts.values())} of {total} rows")
        self.results["once"]["load_seconds"] = watch.seconds
        self.results["sizes"].update(rows=total, sqlite_bytes=os.path.getsize(src), database_bytes=int(
            cl.psql(self.source, f"SELECT pg_database_size('{DB}')")))
        self.setup_kit()
        self.plain_dump()

    def setup_kit(self):
        """The kit's login role, the program's config, the pgBackRest stanza."""
        self.login = cl.backup_login(self.source, self.work, DB)
        self.dump_dir = cl.owned_dir(os.path.join(self.work, "dumps"))
        config = program_config(self.source, self.login, self.dump_dir, self.work)
        self.kit_config = cl.owned_file(os.path.join(self.work, "backup.json"), json.dumps(config, indent=2))
        self.python = program_python()
        self.repo = cl.Repo(self.work, self.source)
        with Stopwatch() as watch:
            self.repo.enable_archiving()
        self.results["once"]["pgbackrest_stanza_create_and_check_seconds"] = watch.seconds

    def plain_dump(self):
        """The guide's backup, made once: pg_dump (plain SQL) | gzip."""
        self.plain = os.path.join(self.work, "plain.sql.gz")
        dump = shlex.join([self.tool("pg_dump"), *cl.login_args(self.source, self.login, DB)])
        with Stopwatch() as watch:
            cl.shell(f"{dump} | gzip > {shlex.quote(self.plain)}", env=cl.login_env(self.login))
        self.results["once"]["plain_dump_gzip_seconds"] = watch.seconds
        self.results["sizes"]["plain_sql_gz_bytes"] = os.path.getsize(self.plain)

    def tool(self, name):
        # The server's own major version, as the kit's bin_dir: not Debian's pg_wrapper on PATH.
        return os.path.join(self.source.bindir, name)

    # -- between peers -------------------------------------------------------------------------
    def settle(self):
        """No dirty buffers and no WAL waiting for the archiver, so that a peer pays only for itself."""
        for pg in (self.source, self.target):
            cl.checkpoint(pg)
        deadline = time.monotonic() + 600
        while int(cl.psql(self.source, "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")):
            if time.monotonic() > deadline:
                raise SystemExit("the archiver did not catch up in 600 s: see the pgBackRest log")
            time.sleep(0.2)

    def drop(self, name):
        cl.psql(self.target, f'DROP DATABASE IF EXISTS "{name}"')

    # -- the dumps -----------------------------------------------------------------------------
    def kit_dump(self, n):
        shutil.rmtree(self.dump_dir)  # the previous round's dump: retention has nothing to do
        cl.owned_dir(self.dump_dir)
        with Stopwatch() as watch:
            out = cl.run([self.python, PROGRAM, "--config", self.kit_config, "dump"])
        result = json.loads(out)
        self.kit_check(result["name"])
        self.results["sizes"]["kit_dump_bytes"] = result["size_bytes"]
        return {"seconds": watch.seconds, "program_seconds": result["duration_seconds"]}

    def kit_check(self, name):
        """`claude-kit-backup check NAME`, as restore_dump.yml runs it first (timed apart): the manifest."""
        with Stopwatch() as watch:
            self.manifest = json.loads(cl.run([self.python, PROGRAM, "--config", self.kit_config, "check", name]))
        self.results["runs"].setdefault("kit_check", []).append({"seconds": watch.seconds})
        check_counts("the kit's manifest", self.counts, {t: self.manifest["row_counts"][t] for t in self.tables})

    def pg_dump(self, n):
        path = os.path.join(self.work, "bare.dump")
        argv = [self.tool("pg_dump"), *cl.login_args(self.source, self.login, DB), "--format", "custom", "--file", path]
        with Stopwatch() as watch:
            cl.run(argv, env=cl.login_env(self.login))
        self.results["sizes"]["pg_dump_bytes"] = os.path.getsize(path)
        os.unlink(path)
        return {"seconds": watch.seconds}

    # -- the logical restores ------------------------------------------------------------------
    def kit_restore(self, n):
        path = os.path.join(self.manifest["dir"], self.manifest["name"])
        expected = self.manifest["row_counts"]
        previous = f"{DB}_before_round{n}"
        with Stopwatch() as watch:
            create_db(self.target, SCRATCH)
            cl.run([self.tool("pg_restore"), *cl.client_args(self.target, SCRATCH), "--exit-on-error",
                    "--jobs", str(CPUS), path], env=dict(os.environ, PGOPTIONS=KIT_RESTORE_PGOPTIONS))
            check_counts("kit_restore", expected, cl.count_rows(self.target, list(expected), SCRATCH))
            cl.psql(self.target, f'BEGIN; ALTER DATABASE {DB} RENAME TO "{previous}"; '
                                 f"ALTER DATABASE {SCRATCH} RENAME TO {DB}; COMMIT")
        self.drop(previous)
        return {"seconds": watch.seconds}

    def pg_restore_1job(self, n):
        path = os.path.join(self.manifest["dir"], self.manifest["name"])
        with Stopwatch() as watch:
            create_db(self.target, PEER_DB)
            cl.run([self.tool("pg_restore"), *cl.client_args(self.target, PEER_DB), "--exit-on-error", path])
        return self.checked_peer(watch)

    def gunzip_psql(self, n):
        psql = shlex.join([self.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *cl.client_args(self.target, PEER_DB)])
        with Stopwatch() as watch:
            create_db(self.target, PEER_DB)
            cl.shell(f"gunzip -c {shlex.quote(self.plain)} | {psql}")
        return self.checked_peer(watch)

    def checked_peer(self, watch):
        check_counts("restore", self.counts, cl.count_rows(self.target, self.tables, PEER_DB))
        self.drop(PEER_DB)
        return {"seconds": watch.seconds}

    # -- the physical backups and restores -----------------------------------------------------
    def pgbackrest_backup(self, n):
        with Stopwatch() as watch:
            self.repo.cmd("--type=full", "backup")
        newest = self.repo.newest()
        with Stopwatch() as verify:
            self.repo.verify()  # what the kit's `claude-kit-backup pgbackrest full` runs next
        self.results["runs"].setdefault("pgbackrest_verify", []).append({"seconds": verify.seconds})
        self.results["sizes"].update(pgbackrest_repo_bytes=newest["info"]["repository"]["size"],
                                     pgbackrest_cluster_bytes=newest["info"]["size"])
        return {"seconds": watch.seconds, "label": newest["label"]}

    def pg_basebackup(self, n):
        self.base = os.path.join(self.work, "base")
        shutil.rmtree(self.base, ignore_errors=True)
        argv = [self.tool("pg_basebackup"), *cl.client_args(self.source), "-D", self.base,
                f"--format={self.args.basebackup_format}", "--wal-method=stream", "--checkpoint=fast"]
        with Stopwatch() as watch:
            cl.run(argv)
        self.results["sizes"]["basebackup_bytes"] = tree_size(self.base)
        return {"seconds": watch.seconds}

    def pgbackrest_restore(self, n):
        restored = cl.Restored(self.source.bindir, self.work, "restored-pgbackrest")
        try:
            with Stopwatch() as watch:
                self.repo.cmd(f"--pg1-path={restored.data}", "--type=immediate", "--target-action=promote", "restore")
                restored.start()
                restored.wait_writable()
            check_counts("pgbackrest_restore", self.counts, restored.counts(self.tables, DB))
        finally:
            restored.remove()
        return {"seconds": watch.seconds}

    def basebackup_restore(self, n):
        restored = cl.Restored(self.source.bindir, self.work, "restored-basebackup")
        try:
            with Stopwatch() as watch:
                self.unpack_base(restored.data)
                restored.start()
                restored.wait_writable()
            check_counts("basebackup_restore", self.counts, restored.counts(self.tables, DB))
        finally:
            restored.remove()
            shutil.rmtree(self.base, ignore_errors=True)
        return {"seconds": watch.seconds}

    def unpack_base(self, data):
        if self.args.basebackup_format == "plain":
            cl.run(["cp", "-a", f"{self.base}/.", data])
            return
        cl.run(["tar", "-xf", os.path.join(self.base, "base.tar"), "-C", data])
        cl.run(["tar", "-xf", os.path.join(self.base, "pg_wal.tar"), "-C", os.path.join(data, "pg_wal")])

    # -- the run -------------------------------------------------------------------------------
    def rounds(self):
        runs = self.results["runs"]
        for n in range(1, self.args.repeat + 1):
            for peer in PEERS:
                self.settle()
                outcome = getattr(self, peer)(n)
                outcome["load_average"] = MIGRATION.load_average()
                runs.setdefault(peer, []).append(outcome)
                print(f"round {n}: {peer:<19} {outcome['seconds']:8.2f} s   (load {outcome['load_average']})", flush=True)

    def run(self):
        runs = self.results["runs"]
        try:
            self.setup()
            self.results["machine"]["postgresql"] = cl.run([self.tool("postgres"), "--version"]).strip()
            self.results["machine"]["pgbackrest"] = cl.run(["pgbackrest", "version"]).strip()
            runs["load_before"] = MIGRATION.load_average()
            print(f"data: {self.results['sizes']['rows']} rows, database {mib(self.results['sizes']['database_bytes'])};"
                  f" load average {runs['load_before']}", flush=True)
            self.rounds()
            runs["load_after"] = MIGRATION.load_average()
        finally:
            self.stop()

    def stop(self):
        for pg in (self.source, self.target):
            if pg is not None:
                pg.stop()
        if self.work and not self.args.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)


# -- results -------------------------------------------------------------------------------------

def machine():
    info = MIGRATION.machine()
    with open("/proc/meminfo", encoding="ascii") as handle:
        info["memory_gib"] = round(int(handle.readline().split()[1]) / 1024 ** 2, 1)
    return info


def mib(size):
    return f"{size / 1024 ** 2:.1f} MiB"


def tree_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _dirs, files in os.walk(path) for f in files)


def summarise(results):
    """Medians of every peer, the ratios of the medians and whether each target is met."""
    medians = {name: statistics.median(r["seconds"] for r in every)
               for name, every in results["runs"].items() if isinstance(every, list)}
    ratios = []
    for top, bottom, target in RATIOS:
        value = medians[top] / medians[bottom]
        met = None if target is None else (value <= target[1] if target[0] == "at most" else value >= target[1])
        ratios.append({"ratio": f"{top}/{bottom}", "value": value, "target": target, "met": met})
    results.update(medians=medians, ratios=ratios)


def report_lines(results):
    m, runs = results["machine"], results["runs"]
    lines = [f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, {m['postgresql']}, {m['pgbackrest']}",
             f"load average before {runs['load_before']}, after {runs['load_after']}", size_line(results["sizes"]), "",
             f"{'peer':<20} {'median s':>9}   every round (s)"]
    apart = [name for name in results["medians"] if name not in PEERS]
    for name in list(PEERS) + apart:
        every = [round(r["seconds"], 2) for r in runs[name]]
        lines.append(f"{name:<20} {results['medians'][name]:>9.2f}   {every}" + ("   (apart, not a peer)" if name in apart else ""))
    inside = statistics.median(r["program_seconds"] for r in runs["kit_dump"])
    once = results["once"]
    lines += [f"(kit_dump: {inside:.2f} s inside the program; the rest is Python's start-up and imports)",
              (f"once: load {once['load_seconds']:.2f} s, pg_dump | gzip {once['plain_dump_gzip_seconds']:.2f} s, "
               f"pgBackRest stanza-create + check {once['pgbackrest_stanza_create_and_check_seconds']:.2f} s"), ""]
    return lines + [ratio_line(r) for r in results["ratios"]]


def size_line(sizes):
    return (f"data: {sizes['rows']} rows; SQLite {mib(sizes['sqlite_bytes'])}, database {mib(sizes['database_bytes'])}; "
            f"kit dump {mib(sizes['kit_dump_bytes'])}, pg_dump -Fc {mib(sizes['pg_dump_bytes'])}, "
            f".sql.gz {mib(sizes['plain_sql_gz_bytes'])}, base backup {mib(sizes['basebackup_bytes'])}, "
            f"pgBackRest {mib(sizes['pgbackrest_repo_bytes'])} in the repository")


def ratio_line(ratio):
    target = "no target" if ratio["target"] is None else \
        f"target {ratio['target'][0]} {ratio['target'][1]}x: {'met' if ratio['met'] else 'NOT met'}"
    return f"{ratio['ratio']:<42} {ratio['value']:6.2f}x   {target}"


def write_results(results, out, lines):
    print("\n" + "\n".join(lines))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(out, f"results-{stamp}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    print(f"\nresults: {path}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--usage-rows", type=int, default=1_000_000)
    parser.add_argument("--alerts", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--predictions", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds of every peer; medians are reported")
    parser.add_argument("--basebackup-format", choices=["tar", "plain"], default="tar", help="pg_basebackup -Ft or -Fp")
    parser.add_argument("--work-dir", default=None, help="parent of the scratch directory (default: the system's temp)")
    parser.add_argument("--keep-work", action="store_true", help="keep the dumps, backups and repository afterwards")
    parser.add_argument("--lab", action="store_true", help="also time playbooks/restore.yml on the local lab (both methods)")
    parser.add_argument("--lab-rounds", type=int, default=1, help="restores of each method on the lab")
    parser.add_argument("--skip-local", action="store_true", help="only the --lab part")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "backup"))
    args = parser.parse_args()
    if args.skip_local and not args.lab:
        parser.error("--skip-local leaves nothing to measure without --lab")
    return args


def main():
    args = parse_args()
    for tool in ("pgbackrest", "sqlite3", "gzip", "runuser" if cl.AS_POSTGRES else "psql"):
        if not args.skip_local and not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (apt-get install -y pgbackrest sqlite3; ./kit bootstrap --test)")
    bench = Bench(args)
    lines = []
    if not args.skip_local:
        bench.run()
        summarise(bench.results)
        lines += report_lines(bench.results)
    if args.lab:
        bench.results["lab"] = lab.measure(args.lab_rounds, bench.out)
        lines += [""] + lab.report_lines(bench.results["lab"])
    write_results(bench.results, bench.out, lines)


if __name__ == "__main__":
    main()
