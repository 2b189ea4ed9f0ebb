#!/usr/bin/env python3
"""Benchmark: the sqlite_to_postgres module against pgloader and a raw sqlite3 | psql pipeline.

    /work/main/.venv/bin/python bench/migration/run.py [--usage-rows N] [--alerts N] [--small-factor 10]

1. Generates (once, cached in bench/out/migration/) an SQLite database shaped like
   the daemon's (bench/migration/dataset.py): users, usage_data, alerts, predictions.
2. Starts its own throwaway PostgreSQL (tests/pgserver.py; the same settings for
   every peer) and, for each peer, creates a fresh database with files/schema.sql
   applied: identical tables, constraints and indexes.
3. Loads the data with each peer, timing the wall clock:
   - module:   `ansible localhost -m claude_kit.stack.sqlite_to_postgres` (the headline number,
                Ansible's start-up included), its interpreter wrapped by
                bench/migration/rss_python to record the module's peak RSS;
   - pgloader: `pgloader` with a LOAD DATABASE command file, data only, its defaults;
   - raw:      per table `sqlite3 -csv DB 'SELECT ...' | psql -c "\\copy ... FROM STDIN WITH (FORMAT csv)"`,
                then setval() on the sequences (as the other two do).
   The three peers run in interleaved rounds (--repeat, 3 by default) and the
   medians are compared, so that the load of a shared machine hits them alike.
4. Runs migration_verify through Ansible over the whole data set on the module's
   database (timed, against the module's migration time), and on the two peers'
   databases (to show that all three loaded the same values).
5. Runs the module again on a data set --small-factor times smaller and compares
   its peak RSS with the full run: memory must not grow with the data.

Prints rows per second, the ratios module/pgloader and module/raw, the verify
time and the peak RSS at both scales, and writes everything to a JSON file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import dataset  # importable only after the sys.path inserts above
from pgserver import PgServer  # likewise

TABLES = {  # in foreign-key order, with the columns every peer loads
    "users": ["id", "username", "email", "created_at"],
    "alerts": ["id", "user_id", "level", "title", "message", "timestamp", "acknowledged", "metadata", "created_at"],
    "predictions": ["id", "user_id", "date", "predicted_tokens", "predicted_cost", "confidence", "model_version", "created_at"],
    "usage_data": ["id", "user_id", "timestamp", "tokens_used", "requests_count", "avg_response_time", "active_users",
                   "error_count", "cost_usd", "session_id", "endpoint", "created_at"],
}
SERIALS = ("users", "predictions", "usage_data")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")


def sh(cmd, **kwargs):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs).stdout.strip()


def machine():
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "nproc": sh(["nproc"])}
    info["memory"] = sh(["free", "-g"]).splitlines()[1]
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        models = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    info["cpu"] = models[0] if models else platform.processor()
    info["python"] = platform.python_version()
    info["sqlite"] = __import__("sqlite3").sqlite_version
    return info


def load_average():
    with open("/proc/loadavg", encoding="ascii") as handle:
        return " ".join(handle.read().split()[:3])


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        os.makedirs(self.out, exist_ok=True)
        self.pg = None
        self.results = {"machine": machine(), "args": vars(args), "runs": {}}

    # -- data and databases ----------------------------------------------------------
    def data(self, factor=1):
        a = self.args
        sizes = dict(usage_rows=a.usage_rows // factor, alerts=a.alerts // factor, users=max(a.users // factor, 10),
                     predictions=a.predictions // factor)
        path = os.path.join(self.out, "daemon-{usage_rows}-{alerts}-{users}-{predictions}.db".format(**sizes))
        if not os.path.exists(path):
            print(f"generating {path} ...", flush=True)
            partial = path + ".partial"
            if os.path.exists(partial):
                os.unlink(partial)
            dataset.generate(partial, **sizes)
            os.replace(partial, path)
        total = sizes["usage_rows"] + sizes["alerts"] + sizes["users"] + sizes["predictions"]
        return path, total

    def fresh_db(self, name):
        self.pg.psql(f'DROP DATABASE IF EXISTS "{name}"')
        self.pg.psql(f'CREATE DATABASE "{name}"')
        with open(os.path.join(ROOT, "files", "schema.sql"), encoding="utf-8") as handle:
            self.pg.psql(handle.read(), name)
        return name

    def count(self, db):
        return sum(int(self.pg.psql(f"SELECT count(*) FROM {t}", db)) for t in TABLES)

    # -- the peers ---------------------------------------------------------------------
    def ansible(self, module, args, label, sample=False):
        rss_file = os.path.join(self.out, f"rss-{label}.txt")
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="json",
                   ANSIBLE_LOAD_CALLBACK_PLUGINS="1", KIT_BENCH_PYTHON=os.path.join(VENV_BIN, "python"),
                   KIT_BENCH_RSS_FILE=rss_file, KIT_BENCH_SAMPLE="1" if sample else "0")
        cmd = [os.path.join(VENV_BIN, "ansible"), "localhost", "-c", "local", "-i", "localhost,", "-m", f"claude_kit.stack.{module}",
               "-a", json.dumps(args), "-e", f"ansible_python_interpreter={os.path.join(HERE, 'rss_python')}"]
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - start
        try:
            result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
        except (ValueError, KeyError, IndexError):
            raise SystemExit(f"{label}: ansible failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}") from None
        with open(rss_file, encoding="ascii") as handle:
            memory = json.load(handle)
        return seconds, result, memory

    def conn_args(self, db):
        return {"db": db, "login_unix_socket": self.pg.dir, "login_port": self.pg.port}

    def module(self, src, total, label, sample=False):
        db = self.fresh_db(f"bench_module_{label}")
        backups = tempfile.mkdtemp(prefix="backup-", dir=self.out)
        try:
            args = dict(self.conn_args(db), src=src, backup_dir=backups)
            if self.args.foreign_key_check != "auto":
                args["foreign_key_check"] = self.args.foreign_key_check
            if self.args.workers is not None:
                args["workers"] = self.args.workers
            if self.args.rebuild_indexes != "auto":
                args["rebuild_indexes"] = self.args.rebuild_indexes
            seconds, result, rss = self.ansible("sqlite_to_postgres", args, f"module-{label}", sample=sample)
        finally:
            shutil.rmtree(backups, ignore_errors=True)
        if result.get("failed") or result["rows_written"] != total:
            raise SystemExit(f"module run {label} failed: {result.get('msg')} rows_written={result.get('rows_written')}")
        return {"db": db, "seconds": seconds, "module_seconds": result["seconds"], "rows": total, **_mib(rss),
                "foreign_key_check": result["foreign_key_check"],
                "tables": {t["table"]: {"seconds": t["seconds"], "workers": t.get("workers"), "indexes_rebuilt": t.get("indexes_rebuilt")}
                           for t in result["tables"]}}

    def verify(self, src, db, label):
        seconds, result, rss = self.ansible("migration_verify", dict(self.conn_args(db), src=src), f"verify-{label}")
        return {"seconds": seconds, "module_seconds": result.get("seconds"), "match": not result.get("failed"),
                "differing_tables": result.get("differing_tables"), "msg": (result.get("msg") or "")[:500],
                **_mib(rss)}

    def pgloader(self, src, total):
        db = self.fresh_db("bench_pgloader")
        command = os.path.join(self.out, "load.pgl")
        with open(command, "w", encoding="utf-8") as handle:
            handle.write(
                f"LOAD DATABASE\n  FROM sqlite://{src}\n  INTO postgresql://{self.pg.user}@unix:{self.pg.dir}:{self.pg.port}/{db}\n"
                "WITH data only, reset sequences\n;\n"
            )
        start = time.monotonic()
        proc = subprocess.run(["pgloader", command], capture_output=True, text=True)
        seconds = time.monotonic() - start
        loaded = self.count(db)
        if proc.returncode != 0 or loaded != total:
            raise SystemExit(f"pgloader failed ({loaded} of {total} rows):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return {"db": db, "seconds": seconds, "rows": total}

    def raw(self, src, total):
        db = self.fresh_db("bench_raw")
        psql = f"psql -X -q -v ON_ERROR_STOP=1 -h {self.pg.dir} -p {self.pg.port} -U {self.pg.user} -d {db}"
        start = time.monotonic()
        for table, columns in TABLES.items():
            cols = ", ".join(columns)
            subprocess.run(
                ["bash", "-o", "pipefail", "-c",
                 f"sqlite3 -csv {src} 'SELECT {cols} FROM {table}' | {psql} -c '\\copy {table} ({cols}) FROM STDIN WITH (FORMAT csv)'"],
                check=True,
            )
        setvals = "; ".join(f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), max(id)) FROM {t}" for t in SERIALS)
        subprocess.run(["bash", "-c", f'{psql} -c "{setvals}"'], check=True, capture_output=True)
        seconds = time.monotonic() - start
        loaded = self.count(db)
        if loaded != total:
            raise SystemExit(f"raw pipeline loaded {loaded} of {total} rows")
        return {"db": db, "seconds": seconds, "rows": total}

    # -- the run -----------------------------------------------------------------------
    def run(self):
        args = self.args
        self.pg = PgServer().start()
        try:
            self.results["machine"]["postgresql"] = sh([os.path.join(self.pg.bindir, "postgres"), "--version"])
            self.results["machine"]["pgloader"] = sh(["pgloader", "--version"]).splitlines()[0] if shutil.which("pgloader") else None
            src, total = self.data()
            runs = self.results["runs"]
            runs["load_before"] = load_average()
            print(f"data: {src} ({total} rows); load average {runs['load_before']}", flush=True)
            peers = [("module", lambda: self.module(src, total, "full"))]
            if not args.skip_pgloader:
                peers.append(("pgloader", lambda: self.pgloader(src, total)))
            if not args.skip_raw:
                peers.append(("raw", lambda: self.raw(src, total)))
            # Interleaved repetitions, so that a change in the machine's load hits every peer alike.
            # migration_verify runs right after each module run, on that run's database.
            for n in range(args.repeat):
                for name, load in peers:
                    outcome = load()
                    outcome["load_average"] = load_average()
                    runs.setdefault(f"{name}_runs", []).append(outcome)
                    print(f"round {n + 1}: {name:<8} {outcome['seconds']:7.2f} s   (load {outcome['load_average']})", flush=True)
                    if name == "module":
                        checked = self.verify(src, outcome["db"], "module")
                        checked["ratio"] = checked["seconds"] / outcome["seconds"]
                        runs.setdefault("verify_runs", []).append(checked)
                        print(f"round {n + 1}: verify   {checked['seconds']:7.2f} s   ({checked['ratio']:.2f}x this round's module run,"
                              f" match: {checked['match']})", flush=True)
            for name in [peer for peer, _load in peers] + ["verify"]:
                every = sorted(runs[f"{name}_runs"], key=lambda r: r["seconds"])
                runs[name] = dict(every[len(every) // 2], all_seconds=[round(r["seconds"], 2) for r in runs[f"{name}_runs"]])
            for peer in ("pgloader", "raw"):
                if peer in runs and not args.skip_peer_verify:
                    runs[f"verify_{peer}"] = self.verify(src, runs[peer]["db"], peer)
            if args.small_factor > 1:
                # Memory, in runs of their own (sampling the process tree costs CPU): the full
                # data set, then one small_factor times smaller.
                runs["module_memory"] = self.module(src, total, "memory", sample=True)
                small_src, small_total = self.data(args.small_factor)
                runs["module_small"] = self.module(small_src, small_total, "small", sample=True)
            runs["load_after"] = load_average()
        finally:
            self.pg.stop()
        self.report()

    def report(self):
        runs = self.results["runs"]
        m = runs["module"]
        lines = [f"machine: {self.results['machine']}", f"load average before {runs['load_before']}, after {runs['load_after']}", ""]
        lines.append(f"{'peer':<10} {'rows':>9} {'median s':>9} {'rows/s':>9}   every run (s)")
        for peer in ("module", "pgloader", "raw"):
            if peer in runs:
                r = runs[peer]
                lines.append(f"{peer:<10} {r['rows']:>9} {r['seconds']:>9.2f} {r['rows'] / r['seconds']:>9.0f}   {r['all_seconds']}")
        lines.append(f"(the median module run's own time, without Ansible's start-up: {m['module_seconds']:.2f} s, "
                     f"foreign keys checked {m['foreign_key_check']})")
        lines.append("")
        for peer in ("pgloader", "raw"):
            if peer in runs:
                lines.append(f"module/{peer} throughput: {runs[peer]['seconds'] / m['seconds']:.2f}x")
        v = runs["verify"]
        ratios = [round(r["ratio"], 2) for r in runs["verify_runs"]]
        lines.append(f"migration_verify over the whole data set: median {v['seconds']:.2f} s "
                     f"({v['seconds'] / m['seconds']:.2f}x the migration's median {m['seconds']:.2f} s; round by round {ratios}),"
                     f" every run matched: {all(r['match'] for r in runs['verify_runs'])}")
        for peer in ("pgloader", "raw"):
            if f"verify_{peer}" in runs:
                pv = runs[f"verify_{peer}"]
                lines.append(f"  {peer}'s database identical to the source after normalisation: {pv['match']} {pv['differing_tables'] or ''}")
        if "module_small" in runs:
            s = runs["module_small"]
            full = runs["module_memory"]
            for key, what in (("peak_rss_mib", "peak RSS of the largest process"),
                              ("tree_pss_mib", "peak PSS of the module and its workers together"),
                              ("tree_rss_mib", "peak RSS summed over the module and its workers (shared pages counted twice)")):
                lines.append(f"module {what}: {full[key]:.1f} MiB for {full['rows']} rows, "
                             f"{s[key]:.1f} MiB for {s['rows']} rows ({full[key] / s[key]:.2f}x for {full['rows'] // s['rows']}x the rows)")
        text = "\n".join(lines)
        print("\n" + text)
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
        path = os.path.join(self.out, f"results-{stamp}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.results, handle, indent=1)
        print(f"\nresults: {path}")


def _mib(memory):
    """rss_python's figures in MiB: the largest single process, and the module's process tree together (sampled runs)."""
    def mib(kib):
        return None if kib is None else kib / 1024
    return {"peak_rss_mib": mib(memory["max_process_kib"]), "tree_pss_mib": mib(memory["tree_pss_kib"]),
            "tree_rss_mib": mib(memory["tree_rss_kib"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--usage-rows", type=int, default=1_000_000)
    parser.add_argument("--alerts", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--predictions", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of module, pgloader, raw (interleaved); medians are reported")
    parser.add_argument("--small-factor", type=int, default=10, help="also run the module on data this many times smaller (RSS); 1 skips")
    parser.add_argument("--foreign-key-check", choices=["auto", "per_row"], default="auto", help="the module's foreign_key_check")
    parser.add_argument("--workers", type=int, default=None, help="the module's workers (default: its own default, one per CPU)")
    parser.add_argument("--rebuild-indexes", choices=["auto", "never"], default="auto", help="the module's rebuild_indexes")
    parser.add_argument("--skip-pgloader", action="store_true")
    parser.add_argument("--skip-raw", action="store_true")
    parser.add_argument("--skip-peer-verify", action="store_true", help="do not run migration_verify on the peers' databases")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "migration"))
    args = parser.parse_args()
    if not args.skip_pgloader and not shutil.which("pgloader"):
        raise SystemExit("pgloader is not installed: apt-get install -y pgloader (or pass --skip-pgloader)")
    if not shutil.which("sqlite3"):
        raise SystemExit("the sqlite3 shell is not installed: apt-get install -y sqlite3")
    Bench(args).run()


if __name__ == "__main__":
    main()
