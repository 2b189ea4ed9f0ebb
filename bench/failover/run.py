#!/usr/bin/env python3
"""Benchmark: what a failover of the Patroni cluster costs the application, N kills in a row.

    ./kit run python bench/failover/run.py [--rounds 3] [--keep] [--reuse] [--out bench/out]

1. Creates and converges the `ha` molecule scenario (three Debian 12 containers,
   Patroni + etcd, the kit's default timings ttl 30 / loop_wait 10 / retry_timeout 10),
   with an ephemeral directory of its own (<out>/failover-molecule), unless --reuse
   finds it converged already. It uses the scenario's container names and network:
   never run it beside `./kit molecule ha` or a `./kit test` that runs that scenario.
2. Each round (tests/helpers.py's kill_the_primary_under_load, the very code the
   scenario's failover test asserts on): a libpq client writing 20 rows/s through
   the multi-host connection string and the reference daemon (every member's PgBouncer
   in its DB_HOST) taking 10 POSTed alerts/s; `docker kill` of the primary's container; the
   loads go on until a new primary has acknowledged writes for 10 s, then the daemon's
   SQLite fallback drains. Then `docker start` of the killed host, and the time until
   it streams again as a replica.
3. Prints, per round and as the median: seconds until a survivor accepted a write,
   seconds until the client's first write on the new primary, the longest gap the
   client saw, the daemon's requests that were not 2xx and its slowest answer, writes
   acknowledged and lost (both clients), the rejoin time; with the machine. Writes
   <out>/failover-<UTC time>.json. Destroys the scenario at the end unless --keep.

A lost write or a failed request is a result, printed, not a crash: the exit status
is non-zero only when something broke (or --strict and anything was lost).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "molecule" / "ha"


def molecule(step, env):
    print(f"molecule {step} -s ha ...", flush=True)
    subprocess.run([str(ROOT / "kit"), "run", "molecule", step, "-s", "ha"], cwd=ROOT, env=env, check=True)


def machine():
    def run(*args):
        try:
            return subprocess.run(args, capture_output=True, text=True, check=False, timeout=30).stdout.strip()
        except OSError:
            return ""
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        mem_kib = int(meminfo.readline().split()[1])
    return {
        "nproc": os.cpu_count(), "memory_gib": round(mem_kib / 1024 / 1024, 1), "kernel": platform.release(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="ascii")
                     if line.startswith("model name")), ""),
        "docker": run("docker", "version", "--format", "{{.Server.Version}}"),
        "python": platform.python_version(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the scenario's containers up")
    parser.add_argument("--reuse", action="store_true", help="skip create/converge (the scenario is converged)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a write was lost or a request failed")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ephemeral = out / "failover-molecule"
    env = dict(os.environ, MOLECULE_EPHEMERAL_DIRECTORY=str(ephemeral))
    if not args.reuse:
        molecule("destroy", env)
        molecule("create", env)
        molecule("converge", env)
    # What molecule's verifier gives the scenario's tests.
    os.environ.update(MOLECULE_EPHEMERAL_DIRECTORY=str(ephemeral),
                      MOLECULE_INVENTORY_FILE=str(ephemeral / "inventory" / "ansible_inventory.yml"),
                      MOLECULE_SCENARIO_DIRECTORY=str(SCENARIO), MOLECULE_PROJECT_DIRECTORY=str(ROOT))
    sys.path.insert(0, str(SCENARIO / "tests"))
    import helpers  # pylint: disable=import-outside-toplevel  (needs the environment above)

    rounds, broke = [], None
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        for number in range(1, args.rounds + 1):
            load_average = os.getloadavg()[0]
            figures, load, daemon, _stored = helpers.kill_the_primary_under_load()
            began = time.monotonic()
            helpers.docker("start", figures["old_primary"])
            helpers.wait_healthy(list(helpers.MEMBERS), 180)
            figures.update(rejoin_s=round(time.monotonic() - began, 1), load_average=round(load_average, 1),
                           client_errors=[message for _t, message in load.errors][:5],
                           daemon_failures=[f"{status}: {body}" for _i, status, body in daemon.failed][:5])
            rounds.append(figures)
            print(f"round {number}: {json.dumps(figures)}", flush=True)
    except Exception as error:  # pylint: disable=broad-except  (reported, then the scenario is cleaned up)
        broke = f"{type(error).__name__}: {error}"
        print(f"round {len(rounds) + 1} broke: {broke}", flush=True)
    finally:
        if not args.keep and not args.reuse:
            molecule("destroy", env)

    def column(key, sub=None):
        return [(r[key] if sub is None else r[key][sub]) for r in rounds]

    rows = [
        ("seconds until a survivor accepted a write", column("seconds_to_new_primary")),
        ("seconds until the client's first write on the new primary", column("seconds_to_first_client_write")),
        ("longest gap the libpq client saw (s)", column("longest_gap_s")),
        ("client writes acknowledged", column("acknowledged")),
        ("client writes lost", column("lost")),
        ("client writes of unknown outcome (stored)",
         [f"{u} ({s})" for u, s in zip(column("unknown_outcome"), column("unknown_stored"))]),
        ("daemon requests", column("daemon", "requests")),
        ("daemon requests not 2xx", column("daemon", "not_2xx")),
        ("daemon alerts acknowledged / lost",
         [f"{a} / {lost}" for a, lost in zip(column("daemon", "acknowledged_2xx"), column("daemon", "lost"))]),
        ("daemon's slowest answer (s)", column("daemon", "slowest_answer_s")),
        ("daemon's fallback drained after the load (s)", column("daemon", "fallback_drained_s")),
        ("rejoin of the killed host after docker start (s)", column("rejoin_s")),
        ("load average before the round", column("load_average")),
    ]
    info = machine()
    print(f"\nmachine: {json.dumps(info)}")
    print(f"{'':62} " + " ".join(f"{'round ' + str(i):>10}" for i in range(1, len(rounds) + 1)) + f" {'median':>10}")
    for label, values in rows:
        numeric = [v for v in values if isinstance(v, (int, float))]
        median = statistics.median(numeric) if len(numeric) == len(values) and numeric else ""
        print(f"{label:62} " + " ".join(f"{str(v):>10}" for v in values) + f" {str(median):>10}")
    report = {"started": started.isoformat(), "machine": info, "rounds": rounds, "broke": broke,
              "settings": {"ttl": helpers.TTL, "loop_wait": helpers.LOOP_WAIT}}
    path = out / f"failover-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {path}")
    lost = sum(r["lost"] + r["daemon"]["lost"] + r["daemon"]["not_2xx"] for r in rounds)
    return 1 if broke or (args.strict and lost) else 0


if __name__ == "__main__":
    sys.exit(main())
