"""The production path's shared parts (conftest.py's fixtures, test_zy_secret_leak.py and
test_zz_production_path.py): the scenario's hosts seen through an inventory shaped exactly like
inventory/production.example, reached over SSH as `deploy` with sudo, its secrets in Vault."""

import os
import pathlib
import re
import subprocess

import testinfra
import testinfra.utils.ansible_runner
import yaml

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
PROJECT = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
EPHEMERAL = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
CREDENTIALS = EPHEMERAL / "credentials"
EXAMPLE = PROJECT / "inventory" / "production.example"
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)
HOSTS = RUNNER.get_hosts("all")
APP_HOSTS = set(RUNNER.get_hosts("app"))
KIT = RUNNER.get_variables(HOSTS[0])

# The vault's variables and the credentials file that holds each one's value
# in this scenario (production.example's main.yml maps them to the kit's).
VAULT = {
    "vault_postgresql_app_password": "postgresql_app_password",
    "vault_redis_app_password": "redis_app_password",
    "vault_redis_admin_password": "redis_admin_password",
    "vault_postgresql_backup_password": "postgresql_backup_password",
    "vault_redis_monitor_password": "redis_monitor_password",
    "vault_backup_pgbackrest_cipher_pass": "backup_pgbackrest_cipher_pass",
}
RECAP_RE = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
PLAY_RE = re.compile(r"^PLAY \[(.*)\] \*+$", re.M)
# The plays a refused run may reach (as in test_bad_input.py).
PREFLIGHT_PLAYS = {"Secrets exist and are long enough", "Reach every host before any change",
                   "Check every host's variables before any change"}
# Files the production run must write again: removed from the app hosts before it, so that
# the tasks that write secrets really change something in the run test_zy_secret_leak.py scans.
DRIFTED = [f"{KIT.get('daemon_config_dir', '/etc/claude-daemon')}/db_password",
           f"{KIT.get('daemon_config_dir', '/etc/claude-daemon')}/redis_password"]


def host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def container(name):
    return RUNNER.get_variables(name).get("ansible_host", name)


def address(name):
    return host(name).interface("eth0").addresses[0]


def write_vault(path, values, password_file):
    """values as YAML in path, then encrypted there with ansible-vault."""
    path.write_text(yaml.safe_dump(values))
    subprocess.run(["ansible-vault", "encrypt", "--vault-password-file", str(password_file), str(path)],
                   check=True, capture_output=True, text=True)


def run(argv, env, timeout=1800):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env, cwd=PROJECT)
