"""Shared by the default scenario's tests: where things are, and how to reach them."""

import json
import os
import pathlib
import re
import subprocess

import psycopg2

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO_DIR = pathlib.Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
EPHEMERAL_DIR = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
PROJECT_DIR = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
CONVERGE = str(SCENARIO_DIR / "converge.yml")

RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def app_password():
    return (EPHEMERAL_DIR / "credentials" / "postgresql_app_password").read_text().strip()


def host_ip(host):
    return host.interface("eth0").addresses[0]


def psql(host, query, db="claude_daemon"):
    """Run SQL as the postgres superuser on the host's socket; return stdout lines."""
    out = host.check_output("runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d %s -c %s", db, query)
    return out.splitlines()


def app_connect(host, password=None, dbname="claude_daemon", user="claude_app"):
    """Connect over TCP from the controller, as the application does."""
    conn = psycopg2.connect(
        host=host_ip(host),
        port=5432,
        user=user,
        password=app_password() if password is None else password,
        dbname=dbname,
        connect_timeout=5,
    )
    conn.autocommit = True
    return conn


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


def run_module(pattern, module, args, become_user="postgres"):
    """Run one module ad hoc; return {host: result dict}."""
    proc = subprocess.run(
        ["ansible", "-i", INVENTORY, pattern, "-m", module, "-a", json.dumps(args), "-b", "--become-user", become_user],
        capture_output=True,
        text=True,
        env=dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_NOCOLOR="1"),
        timeout=300,
        check=False,
    )
    # The JSON document only: a callback enabled beside it (e.g. profile_tasks) may print after it.
    data, _end = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("{"):])
    return {name: res for play in data["plays"] for task in play["tasks"] for name, res in task["hosts"].items()}
