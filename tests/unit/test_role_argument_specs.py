"""Bad input to the postgresql role fails first, naming the variable, before any change.

Runs the role on the controller (connection local, check mode) with one wrong
value at a time; the argument-spec validation (or validate.yml) must stop it
before the first task that could change anything.
"""

import json
import os
import shutil
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOOD = {"postgresql_app_password": "x" * 24}


def run_role(tmp_path, extra_vars):
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: true\n  roles:\n    - role: claude_kit.stack.postgresql\n"
    )
    proc = subprocess.run(
        [
            (shutil.which("ansible-playbook") or os.path.join(os.path.dirname(sys.executable), "ansible-playbook")), "--check", str(playbook), "-i", "localhost,",
            "-e", json.dumps({"ansible_python_interpreter": sys.executable, **extra_vars}),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_CACHE_PLUGIN="memory"),
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    recap = re.search(r"localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", out)
    return proc.returncode, out, recap


@pytest.mark.parametrize(
    "extra,needles",
    [
        ({}, ["postgresql_app_password"]),
        ({**GOOD, "postgresql_port": "not-a-port"}, ["postgresql_port"]),
        ({**GOOD, "postgresql_storage": "nvme"}, ["postgresql_storage", "nvme"]),
        ({**GOOD, "postgresql_listen_addresses": {"a": 1}}, ["postgresql_listen_addresses"]),
        (
            {**GOOD, "postgresql_hba_extra_entries": [
                {"type": "host", "database": "all", "user": "all", "address": "0.0.0.0/0", "method": "trust"}]},
            ["postgresql_hba_extra_entries", "trust"],
        ),
        (
            {**GOOD, "postgresql_hba_extra_entries": [
                {"type": "host", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "md5"}]},
            ["postgresql_hba_extra_entries", "md5"],
        ),
        (
            {**GOOD, "postgresql_hba_extra_entries": [{"type": "host", "database": "all", "user": "all", "method": "scram-sha-256"}]},
            ["postgresql_hba_extra_entries[0]", "lacks its address"],
        ),
        ({"postgresql_app_password": "short"}, ["postgresql_app_password must be at least 16 characters"]),
    ],
)
def test_bad_input_fails_before_any_change(tmp_path, extra, needles):
    rc, out, recap = run_role(tmp_path, extra)
    assert rc != 0, out[-2000:]
    assert recap is not None, out[-2000:]
    assert recap.group(2) == "0", "something changed before validation failed"
    for needle in needles:
        assert needle in out, out[-2000:]
    # The password never appears in the output, even when validation fails.
    assert "x" * 24 not in out


def test_good_input_passes_validation(tmp_path):
    # With valid input the role gets past validation into the install tasks; on
    # the controller it then stops at check mode's end_host or at apt, which is fine.
    rc, out, _recap = run_role(tmp_path, GOOD)
    assert "Validating arguments against arg spec" in out
    assert "TASK [claude_kit.stack.postgresql : Check the application password]" in out
    assert "x" * 24 not in out
