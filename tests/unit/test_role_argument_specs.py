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
# What the lab's password lookup would have written (test_bad_input_fails_before_any_change puts it in a file).
LAB_SECRET = "Qm3vT8kLp2Xw9Rz4Nb7Hc5Jd"
ROLES = ROOT / "roles"


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
                {"type": "hostssl", "database": "all", "user": "all", "address": "0.0.0.0/0", "method": "trust"}]},
            ["postgresql_hba_extra_entries[0]", "has method trust"],
        ),
        (
            {**GOOD, "postgresql_hba_extra_entries": [
                {"type": "hostssl", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "md5"}]},
            ["postgresql_hba_extra_entries", "md5"],
        ),
        (
            {**GOOD, "postgresql_hba_extra_entries": [{"type": "hostssl", "database": "all", "user": "all", "method": "scram-sha-256"}]},
            ["postgresql_hba_extra_entries[0]", "needs an address"],
        ),
        ({"postgresql_app_password": "short"}, ["postgresql_app_password must be at least 16 characters"]),
        ({**GOOD, "postgresql_port": 70000}, ["postgresql_port=70000 is not a TCP port"]),
        ({**GOOD, "postgresql_app_client_addresses": ["10.0.0.5"]},
         ["postgresql_app_client_addresses[0]=10.0.0.5 is an address without its prefix length"]),
        (
            {**GOOD, "postgresql_hba_extra_entries": [{"type": "local", "database": "all", "user": "all", "method": "trust"}]},
            ["postgresql_hba_extra_entries[0]", "postgresql_hba_trust_acknowledged"],
        ),
        # Acknowledged, trust passes; the next check (memory) is then the one that stops the run.
        (
            {**GOOD, "postgresql_hba_trust_acknowledged": True, "postgresql_tuning_overrides": {"work_mem": "-4MB"},
             "postgresql_hba_extra_entries": [{"type": "local", "database": "all", "user": "all", "method": "trust"}]},
            ["postgresql_tuning_overrides.work_mem=-4MB must be more than 0"],
        ),
        # postgresql_ha: patroni, checked before any change like the rest.
        ({**GOOD, "postgresql_ha": "raft"}, ["postgresql_ha", "raft"]),
        ({**GOOD, "postgresql_ha": "patroni", "postgresql_patroni_retry_timeout": 15},
         ["(Patroni's rule): 10 + 2 * 15 = 40 > 30"]),
        ({**GOOD, "postgresql_ha": "patroni", "postgresql_patroni_ttl": 10},
         ["postgresql_patroni_ttl is 10; Patroni's minimum is 20"]),
        ({**GOOD, "postgresql_ha": "patroni"},
         ["postgresql_replication_password", "postgresql_rewind_password", "postgresql_patroni_api_password",
          "a Patroni cluster needs at least 2"]),
        ({**GOOD, "postgresql_ha": "patroni", "postgresql_settings": {"port": 5433}},
         ["postgresql_settings.port is set by Patroni"]),
        ({**GOOD, "kit_environment": "production", "postgresql_app_password": "ChangeMe-ChangeMe-2024"},
         ["postgresql_app_password looks like a placeholder"]),
        ({"kit_environment": "production", "postgresql_app_password": LAB_SECRET, "kit_lab_credentials_dirs": ["{lab}"]},
         ["postgresql_app_password is a secret the lab generated"]),
    ],
)
def test_bad_input_fails_before_any_change(tmp_path, extra, needles):
    lab = tmp_path / "credentials"
    lab.mkdir()
    (lab / "postgresql_app_password").write_text(LAB_SECRET + "\n")
    extra = json.loads(json.dumps(extra).replace("{lab}", str(lab)))
    rc, out, recap = run_role(tmp_path, extra)
    assert rc != 0, out[-2000:]
    assert recap is not None, out[-2000:]
    assert recap.group(2) == "0", "something changed before validation failed"
    for needle in needles:
        assert needle in out, out[-2000:]
    # The password never appears in the output, even when validation fails.
    assert "x" * 24 not in out
    assert LAB_SECRET not in out and "ChangeMe-ChangeMe-2024" not in out


def test_good_input_passes_validation(tmp_path):
    # With valid input the role gets past validation into the install tasks; on
    # the controller it then stops at check mode's end_host or at apt, which is fine.
    rc, out, _recap = run_role(tmp_path, GOOD)
    assert "Validating arguments against arg spec" in out
    assert "TASK [claude_kit.stack.postgresql : Check the application password]" in out
    assert "x" * 24 not in out


def load_yaml(path):
    import yaml  # pylint: disable=import-outside-toplevel

    return yaml.safe_load(path.read_text())


def spec_options(role):
    """{entry point: {option: spec}} of a role's meta/argument_specs.yml."""
    specs = load_yaml(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]
    return {entry: spec.get("options", {}) for entry, spec in specs.items()}


def preflight_roles():
    """The roles whose validate entry point playbooks/preflight.yml runs."""
    text = (ROOT / "playbooks" / "preflight.yml").read_text()
    return sorted(set(re.findall(r"name: claude_kit\.stack\.(\w+)\n\s+tasks_from: validate", text)))


@pytest.mark.parametrize("role", sorted(p.name for p in ROLES.iterdir() if (p / "meta" / "argument_specs.yml").exists()))
def test_every_option_has_a_type_and_a_description(role):
    for entry, options in spec_options(role).items():
        for name, option in options.items():
            assert option.get("type"), f"{role} {entry}: {name} has no type"
            assert option.get("description"), f"{role} {entry}: {name} has no description"
            if "choices" in option and option.get("default") is not None:
                default = option["default"] if option["type"] == "list" else [option["default"]]
                assert set(default) <= set(option["choices"]), f"{role} {entry}: {name}'s default is not a choice"


def test_the_preflight_runs_every_tier_roles_validate_entry_point():
    roles = preflight_roles()
    assert {"kit", "postgresql", "redis", "daemon", "nginx", "backup", "monitoring"} <= set(roles), roles
    for role in roles:
        assert "validate" in spec_options(role), f"{role} has no validate entry point in its argument spec"
        assert (ROLES / role / "tasks" / "validate.yml").exists()


@pytest.mark.parametrize("role", ["postgresql", "redis", "daemon", "backup", "monitoring"])
def test_every_secret_is_checked_in_production(role):
    """Each no_log option of a role the preflight runs is given to kit_secret_problems in its validate.yml."""
    secrets = sorted(name for name, option in spec_options(role)["main"].items() if option.get("no_log"))
    assert secrets, role
    tasks = load_yaml(ROLES / role / "tasks" / "validate.yml")
    production = [json.dumps(task) for task in tasks if "kit_secret_problems" in json.dumps(task)]
    assert production, f"{role}/tasks/validate.yml has no production secret check"
    for name in secrets:
        assert any(f"'{name}'" in text for text in production), f"{role}: {name} is not checked in production"
