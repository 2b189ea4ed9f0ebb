"""The --lab part of the backup benchmark: playbooks/restore.yml on the local lab, timed as an
operator sees it.

For each method (restore_method=dump, restore_method=pgbackrest), in alternation:
`./kit run ansible-playbook playbooks/restore.yml -e restore_method=METHOD`, timed from its start
until, after it has ended, Nginx's https://127.0.0.1:<lab_https_port>/health answers
"database": "postgresql" twice in a row (Nginx balances over the two app hosts: two answers in a
row are normally one from each). A thread polls /health during the playbook too, to show when
clients stopped seeing PostgreSQL: the dump method stops the daemons for the swap (Nginx answers
502), the pgbackrest method stops PostgreSQL and the daemons answer from their SQLite fallback.

Requests go to 127.0.0.1 only. The dump method restores the newest verified dump (the lab's data
go back to it) and keeps the replaced database as claude_daemon_before_<time> on the lab's
database host; the pgbackrest method restores the latest state.
"""

from __future__ import annotations

import json
import os
import ssl
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = ("dump", "pgbackrest")
POLL = 0.25  # seconds between two /health requests


def health_url():
    with open(os.path.join(ROOT, "inventory", "lab", "group_vars", "all", "lab.yml"), encoding="utf-8") as handle:
        port = yaml.safe_load(handle).get("lab_https_port", 443)
    return f"https://127.0.0.1:{port}/health"


# Nginx's certificate is signed by the lab's CA (the tls role's tls_pki_dir).
LAB_CA = os.path.join(ROOT, "inventory", "lab", "credentials", "tls", "ca.crt")


def database(url):
    """What /health says the daemon uses: postgresql, sqlite, unavailable; None when nothing answers JSON."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=ssl.create_default_context(cafile=LAB_CA)) as response:
            return json.load(response).get("database")
    except urllib.error.HTTPError as error:  # a 503 still carries the daemon's JSON; Nginx's 502 does not
        try:
            return json.load(error).get("database")
        except ValueError:
            return None
    except (urllib.error.URLError, OSError, ValueError):
        return None


class Watcher(threading.Thread):
    """Polls /health in the background; samples are (seconds since start, answer)."""

    def __init__(self, url, start):
        super().__init__(daemon=True)
        self.url, self.start_time, self.samples = url, start, []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            self.samples.append((time.monotonic() - self.start_time, database(self.url)))
            self.stopping.wait(POLL)

    def outage(self):
        """First and last sample that was not PostgreSQL, and the answers seen."""
        away = [(t, answer) for t, answer in self.samples if answer != "postgresql"]
        if not away:
            return {"first_not_postgresql": None, "last_not_postgresql": None, "answers": []}
        return {"first_not_postgresql": away[0][0], "last_not_postgresql": away[-1][0],
                "answers": sorted({answer or "no JSON (502, no connection)" for _t, answer in away})}


def back_on_postgresql(url, start, timeout=1800, needed=2):
    """Seconds since start at the first of `needed` PostgreSQL answers in a row."""
    streak = []  # when each answer of the current run of PostgreSQL answers came
    deadline = time.monotonic() + timeout
    while len(streak) < needed:
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer \"database\": \"postgresql\" within {timeout} s of the playbook's end")
        answer = database(url)
        streak = streak + [time.monotonic()] if answer == "postgresql" else []
        if len(streak) < needed:
            time.sleep(POLL)
    return streak[0] - start


def restore(method, url, log_path):
    """One restore.yml run: the playbook's seconds and the recovery time clients see."""
    start = time.monotonic()
    watcher = Watcher(url, start)
    watcher.start()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run([os.path.join(ROOT, "kit"), "run", "ansible-playbook", "playbooks/restore.yml",
                               "-e", f"restore_method={method}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    ended = time.monotonic() - start
    if proc.returncode != 0:
        watcher.stopping.set()
        raise SystemExit(f"restore.yml -e restore_method={method} exited {proc.returncode}: see {log_path}")
    recovered = back_on_postgresql(url, start)
    watcher.stopping.set()
    watcher.join()
    return {"method": method, "playbook_seconds": ended, "recovery_seconds": recovered, **watcher.outage(), "log": log_path}


def measure(rounds, out):
    """Both methods, in alternation, rounds times each; the lab must answer PostgreSQL first."""
    url = health_url()
    if database(url) != "postgresql":
        raise SystemExit(f"{url} does not answer \"database\": \"postgresql\": is the lab up (./kit deploy)?")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    runs = []
    for n in range(1, rounds + 1):
        for method in METHODS:
            result = restore(method, url, os.path.join(out, f"lab-{stamp}-{method}-{n}.log"))
            print(f"lab round {n}: {method:<10} recovered after {result['recovery_seconds']:7.1f} s "
                  f"(playbook {result['playbook_seconds']:.1f} s)", flush=True)
            runs.append(result)
    return {"url": url, "runs": runs}


def report_lines(lab):
    lines = [f"lab ({lab['url']}): restore.yml, seconds from its start until /health answers postgresql again"]
    for method in METHODS:
        mine = [r for r in lab["runs"] if r["method"] == method]
        recovery = statistics.median(r["recovery_seconds"] for r in mine)
        lines.append(f"  {method:<10} recovery median {recovery:7.1f} s   every run: "
                     + ", ".join(_describe(r) for r in mine))
    return lines


def _describe(run):
    if run["first_not_postgresql"] is None:
        away = "PostgreSQL answered throughout"
    else:
        away = (f"not PostgreSQL from {run['first_not_postgresql']:.1f} to {run['last_not_postgresql']:.1f} s "
                f"({'/'.join(run['answers'])})")
    return f"{run['recovery_seconds']:.1f} s (playbook {run['playbook_seconds']:.1f} s; {away})"
