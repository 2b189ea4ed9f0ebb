"""Shared by the backup scenario's tests: the two hosts, SQL on them, the runbooks."""

import json
import os
import pathlib
import re
import subprocess
import time

import testinfra

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
PROJECT_DIR = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
PLAYBOOKS = PROJECT_DIR / "playbooks"
DUMP_DIR = "/var/backups/claude-kit/dumps"
STATE_DIR = "/var/lib/claude-kit/backup"
PROGRAM = "/usr/local/bin/claude-kit-backup"
PG_LOG = "/var/log/postgresql/postgresql-15-main.log"
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def get(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def psql(host, query, db="claude_daemon"):
    """SQL as the postgres superuser on the database host's socket; stdout lines."""
    out = host.check_output("runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d %s -c %s", db, query)
    return out.splitlines()


def scalar(host, query, db="claude_daemon"):
    return psql(host, query, db)[0]


def as_postgres(host, command, *args):
    """Run a command as postgres on host; return testinfra's CommandResult (not checked)."""
    return host.run("runuser -u postgres -- " + command, *args)


def start_unit(host, unit):
    """Start a oneshot unit as its timer would, and wait for it; return systemctl's result."""
    return host.run("systemctl start %s", unit)


def last_result(host, name):
    return json.loads(host.file(f"{STATE_DIR}/{name}-last.json").content_string)


def manifests(host):
    """Manifests of the dumps in the dump directory, newest first."""
    out = host.check_output(f"runuser -u postgres -- {PROGRAM} list --json")
    return [r for r in json.loads(out) if r["method"] == "dump" and r["verified"]]


def run_playbook(name, *args):
    """ansible-playbook playbooks/NAME against the scenario's hosts; (rc, output, recap)."""
    proc = subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, str(PLAYBOOKS / name) if "/" not in name else name, *args],
        capture_output=True, text=True, timeout=1200, check=False,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"),
    )
    output = proc.stdout + proc.stderr
    recap = {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)), "failed": int(m.group(5))}
             for m in RECAP_RE.finditer(output)}
    return proc.returncode, output, recap


def wait_for(predicate, timeout=60, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def manifest_of(host, name):
    """The full manifest of the dump called name (e.g. claude_daemon_20261202T021500Z.dump)."""
    return json.loads(host.file(f"{DUMP_DIR}/{name.split('.')[0]}.json").content_string)


def unique(prefix):
    """A prefix no earlier run used, so that the tests can run again on the same hosts."""
    return f"{prefix}{time.time_ns():x}"


def insert_alerts(db, prefix, count):
    """count alerts with ids prefix-1..prefix-count; returns prefix."""
    psql(db, f"INSERT INTO alerts (id, level, title, message, timestamp) SELECT '{prefix}-' || g, 'warning', "
             f"'t' || g, 'm' || g, now() FROM generate_series(1, {count}) g")
    return prefix
