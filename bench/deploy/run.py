#!/usr/bin/env python3
"""Benchmark: how long site.yml takes on the local lab, optionally against an older commit.

    ./kit run python bench/deploy/run.py [--baseline REF] [--runs N] [--keep-tree] [--out DIR]

For each tree measured -- with --baseline REF first a copy of REF (`git archive
REF | tar -x` into a temporary directory), then always the working tree of this
repository, last, so that its lab is the one left up -- in that tree:

1. removes the lab (playbooks/lab_down.yml, and the tree's .cache/facts) and
   creates it again (playbooks/lab_up.yml): every tree starts from new containers;
2. times `ansible-playbook site.yml` three ways: the first converge, N runs that
   must change nothing (--runs, 2 by default; each and the median are reported)
   and one `--check` run.

Every ansible-playbook runs in the tree (cwd, ANSIBLE_CONFIG=<tree>/ansible.cfg,
the venv's binaries) with the stdout callback ansible.posix.json (each play's and
task's duration, every host's result) and bench/deploy/callback_plugins/bench_timing
(each host's time per task). A no-change run and the check run must report
changed=0 on every host: otherwise the hosts and tasks that changed are printed
and the run is marked failed (the benchmark goes on, so that one run shows
everything). The first converge must succeed.

Prints the machine, then per tree and run kind the wall time, each play's seconds
and share, the slowest tasks (wall time; and time summed over hosts, with the
number of host runs), and at the end the ratios working tree / baseline and
whether the target (no-change median at most 0.5 of the baseline's) is met.
Everything goes to bench/out/deploy-<UTC time>.json, what it prints to
bench/out/deploy-<UTC time>.txt, the raw output of every ansible-playbook run
to bench/out/deploy-<UTC time>/.

Python's standard library only.
"""

from __future__ import annotations

import argparse
import configparser
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# The venv's binaries: the directory of the interpreter as invoked (not resolved:
# a venv's python is a symlink to the system one).
VENV_BIN = Path(os.path.dirname(os.path.abspath(sys.executable)))
CALLBACK_DIR = HERE / "callback_plugins"
# This repository as a collection (today's ansible.cfg finds its content by the
# fully qualified names through collections/ansible_collections/claude_kit/stack).
SELF_COLLECTION = ("claude_kit", "stack")
TOP_WALL = 10
TOP_HOSTS = 15
TARGET_RATIO = 0.5
# The lab's secrets, masked in what the bench prints and in its report (an
# inventory that parses the credential files makes hosts of them).
SECRETS: set[str] = set()


def load_secrets(tree: Path) -> None:
    creds = tree / "inventory" / "lab" / "credentials"
    for f in creds.rglob("*") if creds.is_dir() else []:
        try:
            for token in f.read_text(encoding="utf-8", errors="replace").split() if f.is_file() else []:
                if len(token) >= 8:
                    SECRETS.add(token)
        except OSError:
            continue


def redact(text: str) -> str:
    for secret in SECRETS:
        text = text.replace(secret, "<secret>")
    return text


# ---------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------

def _cmd(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({e})"
    return (out.stdout.strip() or out.stderr.strip()).splitlines()[0] if (out.stdout or out.stderr) else ""


def machine() -> dict:
    info: dict = {"date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}
    info["nproc"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        meminfo = Path("/proc/meminfo").read_text(encoding="utf-8")
        kib = int(re.search(r"^MemTotal:\s+(\d+)", meminfo, re.MULTILINE).group(1))
        info["memory_gib"] = round(kib / 1024 / 1024, 1)
    except (OSError, AttributeError):
        info["memory_gib"] = None
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        info["cpu"] = m.group(1).strip() if m else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        osr = Path("/etc/os-release").read_text(encoding="utf-8")
        m = re.search(r'^PRETTY_NAME="?([^"\n]+)', osr, re.MULTILINE)
        info["os"] = m.group(1) if m else ""
    except OSError:
        info["os"] = ""
    info["kernel"] = platform.release()
    info["docker"] = _cmd(["docker", "version", "--format",
                           "client {{.Client.Version}}, server {{.Server.Version}}"])
    info["python"] = platform.python_version()
    info["ansible"] = _cmd([str(VENV_BIN / "ansible-playbook"), "--version"])
    info["loadavg_start"] = list(os.getloadavg())
    return info


def print_machine(info: dict) -> None:
    print("== machine")
    print(f"  nproc {info['nproc']}, memory {info['memory_gib']} GiB, CPU {info['cpu']}")
    print(f"  {info['os']}, kernel {info['kernel']}, Docker {info['docker']}")
    print(f"  Python {info['python']}, {info['ansible']}")
    print(f"  {info['date_utc']}, load average {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}")
    print("  (the load average is printed before every run: a shared machine's timings are noisy)")


# ---------------------------------------------------------------------------
# Trees
# ---------------------------------------------------------------------------

def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def uses_self_collection(tree: Path) -> bool:
    """Whether the tree's playbooks or roles name this collection's content by FQCN."""
    needle = ".".join(SELF_COLLECTION) + "."
    candidates = [tree / "site.yml", *sorted((tree / "playbooks").glob("*.yml"))]
    candidates += sorted((tree / "roles").glob("*/*/*.yml"))
    for path in candidates:
        try:
            if needle in path.read_text(encoding="utf-8", errors="replace"):
                return True
        except OSError:
            continue
    return False


def link_collections(tree: Path) -> list[str]:
    """What the tree needs in its collections/ (ansible.cfg's collections_path = collections):
    the link of the repository to itself when its content is named by FQCN, and the
    collections Galaxy installed into the working tree's collections/, if any."""
    notes = []
    ac = tree / "collections" / "ansible_collections"
    if uses_self_collection(tree):
        link = ac.joinpath(*SELF_COLLECTION)
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("../../..")
            notes.append("linked collections/ansible_collections/claude_kit/stack -> ../../..")
    installed = ROOT / "collections" / "ansible_collections"
    if installed.is_dir():
        for ns in sorted(installed.iterdir()):
            if ns.name == SELF_COLLECTION[0] or not ns.is_dir():
                continue
            target = ac / ns.name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(ns.resolve())
                notes.append(f"linked collections/ansible_collections/{ns.name} -> {ns.resolve()}")
    return notes


def prepare_baseline(ref: str) -> dict:
    sha = git("rev-parse", "--verify", ref + "^{commit}")
    short = git("rev-parse", "--short", sha)
    tree = Path(tempfile.mkdtemp(prefix=f"kit-bench-{short}-"))
    os.chmod(tree, 0o755)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", "--format=tar", sha],
                               stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait() != 0:
        raise SystemExit(f"git archive {sha} failed")
    notes = [f"git archive {short} | tar -x -C {tree}"]
    # The same lab secrets as the working tree (the lab is recreated anyway).
    # Only the files at its top: where the inventory is the whole inventory/lab
    # directory (05e69b2), Ansible parses the credential files as hosts, whose
    # password lookups write nested credentials/ directories, no lab secrets.
    creds = ROOT / "inventory" / "lab" / "credentials"
    if creds.is_dir():
        dest = tree / "inventory" / "lab" / "credentials"
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        for f in sorted(creds.iterdir()):
            if f.is_file():
                shutil.copy2(f, dest / f.name)
        notes.append("copied the working tree's inventory/lab/credentials/* (files only)")
    notes += link_collections(tree)
    return {"label": f"baseline {short}", "kind": "baseline", "ref": ref, "commit": sha,
            "path": str(tree), "temporary": True, "notes": notes}


def current_tree() -> dict:
    notes = []
    try:
        head = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except subprocess.CalledProcessError:
        head, dirty = "", False
    if uses_self_collection(ROOT) and not ROOT.joinpath("collections", "ansible_collections",
                                                        *SELF_COLLECTION).exists():
        notes.append("WARNING: collections/ansible_collections/claude_kit/stack is missing "
                     "(./kit bootstrap creates it)")
    label = f"working tree ({head[:7]}{' + changes' if dirty else ''})"
    return {"label": label, "kind": "current", "commit": head, "dirty": dirty, "path": str(ROOT),
            "temporary": False, "notes": notes}


# ---------------------------------------------------------------------------
# Running ansible-playbook
# ---------------------------------------------------------------------------

def tree_callbacks(tree: Path) -> list[str]:
    """callbacks_enabled of the tree's ansible.cfg (kept: the environment would replace it)."""
    cfg = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    try:
        cfg.read(tree / "ansible.cfg", encoding="utf-8")
    except configparser.Error:
        return []
    for key in ("callbacks_enabled", "callback_whitelist"):
        value = cfg.get("defaults", key, fallback="")
        if value.strip():
            return [c.strip() for c in value.split(",") if c.strip()]
    return []


def base_env(tree: Path) -> dict:
    # The tree's ansible.cfg decides: no ANSIBLE_* setting of the caller's shell leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    env["ANSIBLE_CONFIG"] = str(tree / "ansible.cfg")
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["ANSIBLE_NOCOLOR"] = "1"
    env["PY_COLORS"] = "0"
    return env


def run_playbook(tree: Path, args: list[str], log: Path, timing_file: Path | None,
                 timeout: float) -> dict:
    env = base_env(tree)
    if timing_file is not None:
        env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
        env["ANSIBLE_LOAD_CALLBACK_PLUGINS"] = "1"
        env["ANSIBLE_JSON_INDENT"] = "0"
        env["ANSIBLE_CALLBACK_PLUGINS"] = str(CALLBACK_DIR)
        env["ANSIBLE_CALLBACKS_ENABLED"] = ",".join(tree_callbacks(tree) + ["bench_timing"])
        env["BENCH_DEPLOY_TIMING_FILE"] = str(timing_file)
        timing_file.unlink(missing_ok=True)
    cmd = [str(VENV_BIN / "ansible-playbook"), *args]
    load = list(os.getloadavg())
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    wall = time.monotonic() - start
    log.write_text(f"$ cd {tree} && {' '.join(cmd)}\n# rc={rc} wall={wall:.2f}s\n"
                   f"--- stdout\n{out}\n--- stderr\n{err}\n", encoding="utf-8")
    return {"cmd": " ".join(["ansible-playbook", *args]), "rc": rc, "wall": wall, "stdout": out,
            "stderr": err, "log": str(log), "loadavg": load}


def parse_json_output(text: str) -> dict | None:
    m = re.search(r"^\{", text, re.MULTILINE)
    if not m:
        return None
    try:
        doc, _ = json.JSONDecoder().raw_decode(text[m.start():])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "plays" in doc else None


def ts(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.rstrip("Z")).replace(
        tzinfo=datetime.UTC).timestamp()


def read_timing(path: Path) -> list[dict]:
    records = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


# ---------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------

def _changed(result: dict) -> bool:
    if result.get("changed"):
        return True
    return any(isinstance(r, dict) and r.get("changed") for r in result.get("results") or [])


def summarise(kind: str, run: dict, timing: list[dict]) -> dict:
    """Plays, tasks, changes and failures of one run, from the JSON callback's document."""
    summary = {"kind": kind, "cmd": run["cmd"], "rc": run["rc"], "wall": round(run["wall"], 2),
               "loadavg": run["loadavg"], "log": run["log"], "problems": []}
    doc = parse_json_output(run["stdout"])
    if doc is None:
        summary["problems"].append("no JSON output from ansible-playbook (see the log)")
        tail = (run["stderr"] or run["stdout"]).strip().splitlines()[-15:]
        summary["output_tail"] = tail
        summary["ok"] = False
        summary["plays"], summary["tasks"], summary["hosts"] = [], [], {}
        summary.update(host_summary(timing))
        return summary

    plays, tasks, changed, failed = [], [], [], []
    for index, p in enumerate(doc.get("plays", [])):
        pstart, pend = ts(p["play"]["duration"].get("start")), ts(p["play"]["duration"].get("end"))
        # A lockstep (linear) play has one entry per task, from its start to its last
        # host's result. A play whose hosts run independently (strategy free,
        # host_pinned) has one entry per host and task: the task's time is then the
        # longest host's, and the tasks overlap (no "between tasks" time).
        by_id: dict[str, dict] = {}
        for t in p.get("tasks", []):
            tid = t["task"]["id"]
            s, e = ts(t["task"]["duration"].get("start")), ts(t["task"]["duration"].get("end"))
            entry = by_id.setdefault(tid, {"play_index": index, "play": p["play"]["name"],
                                           "task": t["task"]["name"], "path": t["task"]["path"],
                                           "seconds": 0.0, "entries": 0, "hosts": {}})
            entry["entries"] += 1
            if s is not None and e is not None:
                entry["seconds"] = max(entry["seconds"], e - s)
            entry["hosts"].update(t.get("hosts") or {})
        # (A meta task, e.g. end_host, has an entry per host in a linear play too.)
        independent = any(
            entry["entries"] > 1 and any(isinstance(r, dict) and "meta" not in str(r.get("action", ""))
                                         for r in entry["hosts"].values())
            for entry in by_id.values())
        ptasks = []
        for entry in by_id.values():
            results = entry.pop("hosts")
            actions = sorted({r.get("action", "") for r in results.values() if isinstance(r, dict)})
            for host, r in results.items():
                if not isinstance(r, dict):
                    continue
                if _changed(r):
                    changed.append({"host": host, "play": entry["play"], "task": entry["task"],
                                    "path": entry["path"]})
                if r.get("failed") and not r.get("ignore_errors") or r.get("unreachable"):
                    msg = r.get("msg") or r.get("stderr") or ""
                    failed.append({"host": host, "play": entry["play"], "task": entry["task"],
                                   "msg": str(msg)[:500]})
            ptasks.append({**{k: entry[k] for k in ("play_index", "play", "task", "path")},
                           "seconds": round(entry["seconds"], 3), "hosts": len(results),
                           "action": ",".join(actions)})
        seconds = (pend - pstart) if pend and pstart else 0.0
        hosts = sorted({h for t in p.get("tasks", []) for h in (t.get("hosts") or {})})
        task_sum = sum(t["seconds"] for t in ptasks)
        plays.append({"index": index, "play": p["play"]["name"], "seconds": round(seconds, 2),
                      "hosts": hosts, "tasks": len(ptasks), "hosts_independent": independent,
                      "between_tasks": None if independent else round(max(seconds - task_sum, 0.0), 2)})
        tasks.extend(ptasks)

    stats = doc.get("stats", {})
    summary["stats"] = stats
    summary["plays"] = plays
    summary["tasks"] = tasks
    summary["outside_plays"] = round(max(run["wall"] - sum(p["seconds"] for p in plays), 0.0), 2)
    summary["changed"] = changed
    summary["failed"] = failed
    changed_hosts = {h: s.get("changed", 0) for h, s in stats.items() if s.get("changed", 0)}
    bad_hosts = {h: s for h, s in stats.items() if s.get("failures", 0) or s.get("unreachable", 0)}
    summary["skipped_per_host"] = {h: s.get("skipped", 0) for h, s in stats.items()}
    if run["rc"] != 0:
        summary["problems"].append(f"ansible-playbook exited {run['rc']}")
    if bad_hosts:
        summary["problems"].append("failed or unreachable: " + ", ".join(
            f"{h} (failures={s.get('failures', 0)}, unreachable={s.get('unreachable', 0)})"
            for h, s in sorted(bad_hosts.items())))
    if kind != "first converge" and changed_hosts:
        summary["problems"].append("changed: " + ", ".join(f"{h}={n}" for h, n in sorted(changed_hosts.items())))
    summary["ok"] = not summary["problems"]
    summary.update(host_summary(timing))
    return summary


def host_summary(timing: list[dict]) -> dict:
    """Time summed over hosts: per task (with the number of host runs), per module, per host."""
    results = [r for r in timing if r.get("event") == "result"]
    per_task: dict[tuple, dict] = {}
    per_action: dict[str, dict] = {}
    per_host: dict[str, dict] = {}
    for r in results:
        seconds = max(r["end"] - r["start"], 0.0)
        key = (r["task"], r["path"])
        t = per_task.setdefault(key, {"task": r["task"], "path": r["path"], "action": r["action"],
                                      "plays": set(), "host_seconds": 0.0, "runs": 0, "skipped": 0,
                                      "changed": 0, "items": 0, "attempts": 0, "hosts": set()})
        t["host_seconds"] += seconds
        t["runs"] += 1
        t["skipped"] += r["skipped"]
        t["changed"] += r["changed"]
        t["items"] += r.get("items", 0)
        t["attempts"] += r.get("attempts") or 0
        t["hosts"].add(r["host"])
        t["plays"].add(r.get("play") or "")
        a = per_action.setdefault(r["action"], {"action": r["action"], "host_seconds": 0.0, "runs": 0,
                                                "skipped": 0, "skipped_seconds": 0.0})
        a["host_seconds"] += seconds
        a["runs"] += 1
        if r["skipped"]:
            a["skipped"] += 1
            a["skipped_seconds"] += seconds
        h = per_host.setdefault(r["host"], {"host": r["host"], "host_seconds": 0.0, "runs": 0,
                                            "skipped": 0, "run_seconds": 0.0})
        h["host_seconds"] += seconds
        h["runs"] += 1
        if r["skipped"]:
            h["skipped"] += 1
        else:
            h["run_seconds"] += seconds
    for t in per_task.values():
        t["hosts"] = sorted(t["hosts"])
        t["plays"] = sorted(t["plays"])
        t["host_seconds"] = round(t["host_seconds"], 3)
    for group in (per_action, per_host):
        for v in group.values():
            for k in list(v):
                if isinstance(v[k], float):
                    v[k] = round(v[k], 3)
    for h in per_host.values():
        executed = h["runs"] - h["skipped"]
        h["mean_executed"] = round(h["run_seconds"] / executed, 3) if executed else 0.0
    return {
        "host_seconds_total": round(sum(t["host_seconds"] for t in per_task.values()), 2),
        "host_tasks": sorted(per_task.values(), key=lambda t: -t["host_seconds"]),
        "actions": sorted(per_action.values(), key=lambda a: -a["host_seconds"]),
        "per_host": sorted(per_host.values(), key=lambda h: h["host"]),
    }


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def print_profile(s: dict, indent: str = "    ") -> None:
    wall = s["wall"] or 1.0
    if not s["plays"]:
        for line in s.get("output_tail", []):
            print(redact(f"{indent}| {line}"))
        return
    print(f"{indent}{'play':<62} {'hosts':>5} {'tasks':>5} {'s':>7} {'share':>6}  between tasks")
    for p in s["plays"]:
        label = _cut(f"#{p['index']} {p['play']}", 62)
        print(f"{indent}{label:<62} {len(p['hosts']):>5} "
              f"{p['tasks']:>5} {p['seconds']:>7.1f} {p['seconds'] / wall:>6.1%}  "
              + ("(hosts run independently)" if p.get("hosts_independent") else f"{p['between_tasks']:.1f} s"))
    print(f"{indent}{'(start-up, parsing, between plays)':<62} {'':>5} {'':>5} "
          f"{s['outside_plays']:>7.1f} {s['outside_plays'] / wall:>6.1%}")
    print(f"{indent}slowest {TOP_WALL} tasks (wall time, all hosts of the play at once; "
          f"the longest host's where hosts run independently):")
    for t in sorted(s["tasks"], key=lambda t: -t["seconds"])[:TOP_WALL]:
        print(f"{indent}  {t['seconds']:>6.1f} s {t['seconds'] / wall:>6.1%}  "
              f"{_cut(t['task'], 60):<60} [{t['action']}, {t['hosts']} host(s), play #{t['play_index']}]")
    if s.get("host_tasks"):
        total = s["host_seconds_total"] or 1.0
        print(f"{indent}slowest {TOP_HOSTS} tasks by time summed over hosts "
              f"(all tasks: {s['host_seconds_total']:.1f} host-s):")
        for t in s["host_tasks"][:TOP_HOSTS]:
            extra = f", {t['items']} items" if t["items"] else ""
            extra += f", {t['skipped']} skipped" if t["skipped"] else ""
            extra += f", {t['attempts']} attempts" if t["attempts"] else ""
            print(f"{indent}  {t['host_seconds']:>6.1f} host-s {t['host_seconds'] / total:>6.1%}  "
                  f"{_cut(t['task'], 56):<56} [{t['action']}, {t['runs']} run(s){extra}]")
        print(f"{indent}per module (host-s, runs, of which skipped):")
        for a in s["actions"][:12]:
            print(f"{indent}  {a['host_seconds']:>6.1f} host-s {a['runs']:>4} runs {a['skipped']:>4} skipped  "
                  f"{a['action']}")
        print(f"{indent}per host (host-s, task runs, skipped, mean s per executed task):")
        for h in s["per_host"]:
            print(redact(f"{indent}  {h['host']:<20} {h['host_seconds']:>6.1f} host-s {h['runs']:>4} runs "
                         f"{h['skipped']:>4} skipped  {h['mean_executed']:.2f} s/task"))


def print_plays_across(summaries: list[dict], indent: str = "    ") -> None:
    """Each play's seconds in every run of a kind (the spread shows the machine's noise)."""
    if not summaries or not summaries[0]["plays"]:
        return
    heads = ["run " + str(i + 1) for i in range(len(summaries))]
    print(f"{indent}{'play':<62} " + " ".join(f"{h:>7}" for h in heads))
    for p in summaries[0]["plays"]:
        cells = []
        for s in summaries:
            match = [q for q in s["plays"] if q["index"] == p["index"] and q["play"] == p["play"]]
            cells.append(f"{match[0]['seconds']:>7.1f}" if match else f"{'-':>7}")
        label = _cut(f"#{p['index']} {p['play']}", 62)
        print(f"{indent}{label:<62} " + " ".join(cells))
    print(f"{indent}{'wall':<62} " + " ".join(f"{s['wall']:>7.1f}" for s in summaries))


def print_run(label: str, s: dict) -> None:
    status = "ok" if s["ok"] else "FAILED: " + redact("; ".join(s["problems"]))
    load = " ".join(f"{x:.2f}" for x in s["loadavg"])
    print(f"  {label}: {s['wall']:.1f} s, rc {s['rc']}, {status}   (load before: {load})")
    for c in s.get("changed", [])[:40] if s["kind"] != "first converge" else []:
        print(redact(f"      changed: {c['host']}: {c['play']} / {c['task']}  ({c['path']})"))
    for f in s.get("failed", [])[:20]:
        print(redact(f"      failed: {f['host']}: {f['play']} / {f['task']}: {_cut(f['msg'], 300)}"))


# ---------------------------------------------------------------------------
# One tree
# ---------------------------------------------------------------------------

def measure_tree(tree: dict, runs: int, logdir: Path, timeout: float) -> dict:
    path = Path(tree["path"])
    slug = "baseline" if tree["kind"] == "baseline" else "current"
    print(f"\n== {tree['label']}: {path}")
    for note in tree["notes"]:
        print(f"  {note}")
    result: dict = {**tree, "lab": {}, "first": None, "nochange": [], "check": None, "ok": False}

    down = run_playbook(path, ["playbooks/lab_down.yml"], logdir / f"{slug}-lab_down.log", None, timeout)
    shutil.rmtree(path / ".cache" / "facts", ignore_errors=True)
    up = run_playbook(path, ["playbooks/lab_up.yml"], logdir / f"{slug}-lab_up.log", None, timeout)
    result["lab"] = {"down_seconds": round(down["wall"], 1), "down_rc": down["rc"],
                     "up_seconds": round(up["wall"], 1), "up_rc": up["rc"]}
    print(f"  lab down {down['wall']:.1f} s (rc {down['rc']}), lab up {up['wall']:.1f} s (rc {up['rc']})")
    if up["rc"] != 0:
        print(f"  lab_up.yml failed, see {up['log']}; this tree is not measured")
        for line in (up["stdout"] + up["stderr"]).strip().splitlines()[-15:]:
            print(redact(f"    | {line}"))
        result["error"] = "lab_up.yml failed"
        return result

    def timed(kind: str, name: str, args: list[str]) -> dict:
        timing = logdir / f"{slug}-{name}.timing.jsonl"
        run = run_playbook(path, args, logdir / f"{slug}-{name}.log", timing, timeout)
        (logdir / f"{slug}-{name}.json").write_text(run["stdout"], encoding="utf-8")
        return summarise(kind, run, read_timing(timing))

    first = timed("first converge", "first", ["site.yml"])
    result["first"] = first
    print_run("first converge", first)
    print_profile(first)
    if not first["ok"]:
        print("  the first converge failed: no no-change or check run on this tree")
        result["error"] = "first converge failed"
        return result

    for i in range(1, runs + 1):
        s = timed("no-change", f"nochange{i}", ["site.yml"])
        result["nochange"].append(s)
        print_run(f"no-change run {i}", s)
    walls = [s["wall"] for s in result["nochange"]]
    median = statistics.median(walls) if walls else None
    result["nochange_median"] = round(median, 2) if median is not None else None
    if walls:
        print(f"  no-change median: {median:.1f} s (runs: {', '.join(f'{w:.1f}' for w in walls)})")
        print_plays_across(result["nochange"])
        # The fastest run is the one the machine's other load disturbed least.
        fastest = min(result["nochange"], key=lambda s: s["wall"])
        print(f"  profile of the fastest no-change run ({fastest['wall']:.1f} s):")
        print_profile(fastest)

    check = timed("check", "check", ["site.yml", "--check"])
    result["check"] = check
    print_run("check run (--check)", check)
    print_profile(check)
    if result["nochange"]:
        last = result["nochange"][-1].get("skipped_per_host", {})
        print("  skipped tasks per host, no-change run / check run (check mode skipping much more "
              "than a no-change run would hide changes):")
        for host in sorted(set(last) | set(check.get("skipped_per_host", {}))):
            print(redact(f"    {host:<20} {last.get(host, '-'):>4} / "
                         f"{check.get('skipped_per_host', {}).get(host, '-')}"))

    result["ok"] = first["ok"] and all(s["ok"] for s in result["nochange"]) and check["ok"]
    return result


def median_if_ok(tree: dict) -> float | None:
    runs = tree.get("nochange") or []
    return tree.get("nochange_median") if runs and all(s["rc"] == 0 and s["plays"] for s in runs) else None


def ratios(base: dict, cur: dict) -> dict:
    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    def wall(s):
        # A ratio needs a complete run (a run that changed something still counts
        # here; the target below wants it clean).
        return s["wall"] if s and s["rc"] == 0 and s["plays"] else None

    out = {
        "first_converge": ratio(wall(cur.get("first")), wall(base.get("first"))),
        "nochange_median": ratio(median_if_ok(cur), median_if_ok(base)),
        "check": ratio(wall(cur.get("check")), wall(base.get("check"))),
    }
    nc = out["nochange_median"]
    cur_clean = bool(cur.get("nochange")) and all(s["ok"] for s in cur["nochange"]) and \
        bool(cur.get("check")) and cur["check"]["ok"]
    out["target"] = f"no-change median <= {TARGET_RATIO} x baseline, changed=0 everywhere, check clean"
    out["target_met"] = bool(nc is not None and nc <= TARGET_RATIO and cur_clean)
    out["current_clean"] = cur_clean
    return out


class _Tee:
    """stdout that also goes to a file."""

    def __init__(self, stream, path: Path):
        self._stream = stream
        self._file = open(path, "w", encoding="utf-8", buffering=1)  # open for the whole run (line-buffered, flushed on every write); the OS closes it at exit

    def write(self, text: str) -> int:
        self._file.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._file.flush()
        self._stream.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="REF", help="also measure this commit (first), e.g. 05e69b2")
    parser.add_argument("--runs", type=int, default=2, help="no-change runs per tree (default 2)")
    parser.add_argument("--keep-tree", action="store_true",
                        help="keep the baseline's temporary copy (it is removed by default)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per ansible-playbook run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"), help="directory of the results")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)   # progress shows when the output is a file
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    logdir = out / f"deploy-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    report_path = out / f"deploy-{stamp}.json"

    sys.stdout = _Tee(sys.stdout, out / f"deploy-{stamp}.txt")   # what it prints, kept too
    info = machine()
    print_machine(info)
    print(f"  logs: {logdir}")
    report: dict = {"machine": info, "runs": args.runs, "trees": []}

    trees = []
    baseline = None
    if args.baseline:
        baseline = prepare_baseline(args.baseline)
        trees.append(baseline)
    trees.append(current_tree())   # last: its lab is the one left up

    results = []
    try:
        for tree in trees:
            load_secrets(Path(tree["path"]))
            r = measure_tree(tree, args.runs, logdir, args.timeout)
            results.append(r)
            report["trees"] = results
            report_path.write_text(redact(json.dumps(report, indent=1, default=str)), encoding="utf-8")
    finally:
        if baseline and not args.keep_tree:
            shutil.rmtree(baseline["path"], ignore_errors=True)

    print("\n== summary (seconds)")
    print(f"  {'tree':<40} {'first':>8} {'no-change median':>17} {'check':>8}  ok")
    for r in results:
        first = r["first"]["wall"] if r.get("first") else None
        check = r["check"]["wall"] if r.get("check") else None
        med = r.get("nochange_median")
        print(f"  {_cut(r['label'], 40):<40} {_num(first):>8} {_num(med):>17} {_num(check):>8}  "
              f"{'yes' if r['ok'] else 'NO: ' + (r.get('error') or 'see above')}")
    if baseline and len(results) == 2:
        rat = ratios(results[0], results[1])
        report["ratios"] = rat
        print(f"  ratio working tree / baseline: first converge {_num(rat['first_converge'], 2)}, "
              f"no-change {_num(rat['nochange_median'], 2)}, check {_num(rat['check'], 2)}")
        print(f"  target ({rat['target']}): {'MET' if rat['target_met'] else 'not met'}")
    report["loadavg_end"] = list(os.getloadavg())
    report_path.write_text(redact(json.dumps(report, indent=1, default=str)), encoding="utf-8")
    print(f"  load average at the end: {' '.join(f'{x:.2f}' for x in report['loadavg_end'])}")
    print(f"  report: {report_path}")
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
