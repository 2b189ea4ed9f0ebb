"""The production path, exercised rather than described (issue 11).

site.yml runs on the converged stack through an inventory shaped exactly like
inventory/production.example: its hosts.yml (groups, `ansible_user: deploy`)
with this scenario's hosts in place of the example names, its
group_vars/all/main.yml unchanged (production mode, every secret from
`vault_*`), a Vault-encrypted group_vars/all/vault.yml, and the site-specific
values a user writes beside them (here the scenario's own: its renamed names,
its CA folder). Ansible reaches the hosts over SSH as the non-root user
`deploy` with sudo, the Vault password comes from a file this test creates,
and the health runbook then passes through the same inventory.

The file is named to run last: its run applies production.example's settings
(Redis without persistence, storage ssd, ...), which the other files do not
expect; it removes the SSH server and the user it added when it ends.
"""

import os
import pathlib
import re
import secrets
import shutil
import subprocess
import tempfile

import pytest
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
testinfra_hosts = ["stack-data"]

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


def host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def address(name):
    return host(name).interface("eth0").addresses[0]


def write_vault(path, values, password_file):
    """values as YAML in path, then encrypted there with ansible-vault."""
    path.write_text(yaml.safe_dump(values))
    subprocess.run(["ansible-vault", "encrypt", "--vault-password-file", str(password_file), str(path)],
                   check=True, capture_output=True, text=True)


def run(argv, env, timeout=1800):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env, cwd=PROJECT)


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    """(inventory dir, vault password file, environment); the hosts get sshd and `deploy`."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="kit-production-"))
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kit-production-test", "-f", str(key)],
                   check=True)
    public = key.with_suffix(".pub").read_text().strip()
    for name in HOSTS:
        h = host(name)
        h.check_output("DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server")
        h.check_output("systemctl enable --now ssh")
        h.check_output("id deploy || useradd --create-home --shell /bin/bash deploy")
        h.check_output("install -d -o deploy -g deploy -m 0700 /home/deploy/.ssh")
        h.check_output(f"printf '%s\\n' '{public}' > /home/deploy/.ssh/authorized_keys")
        h.check_output("chown deploy:deploy /home/deploy/.ssh/authorized_keys && chmod 0600 /home/deploy/.ssh/authorized_keys")
        # What production.example's comment asks of a host: passwordless sudo for `deploy`.
        h.check_output("printf 'deploy ALL=(ALL) NOPASSWD: ALL\\n' > /etc/sudoers.d/deploy && chmod 0440 /etc/sudoers.d/deploy")
        h.check_output("visudo -c -q -f /etc/sudoers.d/deploy")

    inventory = work / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    # hosts.yml: production.example's, its example hosts replaced by this scenario's.
    shape = yaml.safe_load((EXAMPLE / "hosts.yml").read_text())
    for group, body in shape["all"]["children"].items():
        body["hosts"] = {name: {"ansible_host": address(name)} for name in RUNNER.get_hosts(group)}
    # The controller's side of SSH: this test's key, a known_hosts file of its own.
    shape["all"]["vars"].update({
        "ansible_ssh_private_key_file": str(key),
        "ansible_ssh_common_args": f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={work / 'known_hosts'}",
    })
    (inventory / "hosts.yml").write_text(yaml.safe_dump(shape, sort_keys=False))
    shutil.copy(EXAMPLE / "group_vars" / "all" / "main.yml", inventory / "group_vars" / "all" / "main.yml")
    # The site-specific values: the scenario's own, less its secrets (from the vault here).
    site = yaml.safe_load((pathlib.Path(INVENTORY).parent / "group_vars" / "all").read_text())
    secret_names = set(VAULT.values()) | {"daemon_db_password", "daemon_redis_password", "backup_db_password"}
    site = {k: v for k, v in site.items() if k not in secret_names and not k.startswith("molecule")}
    (inventory / "group_vars" / "all" / "site.yml").write_text(yaml.safe_dump(site, sort_keys=True))

    vault_password = work / "vault-password"
    vault_password.write_text(secrets.token_urlsafe(32) + "\n")
    vault_password.chmod(0o600)
    vault = inventory / "group_vars" / "all" / "vault.yml"
    write_vault(vault, {k: (CREDENTIALS / v).read_text().strip() for k, v in VAULT.items()}, vault_password)

    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"),
               # Facts of this run only (ansible.cfg caches the lab's in .cache/facts).
               ANSIBLE_CACHE_PLUGIN_CONNECTION=str(work / "facts"))
    env.pop("ANSIBLE_INVENTORY", None)
    yield inventory, vault_password, env

    for name in HOSTS:
        h = host(name)
        # Not checked: Debian 12 has no ssh.socket unit; the purge below is.
        h.run("systemctl disable --now ssh.service ssh.socket")
        h.check_output("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q openssh-server")
        h.check_output("rm -f /etc/sudoers.d/deploy")
        # Ansible's SSH master connections (ControlPersist) outlive the run: end
        # them, or userdel refuses a user with processes.
        h.run("pkill -KILL -u deploy")
        h.check_output("userdel --remove deploy")
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def deployed(production):
    inventory, vault_password, env = production
    started = {name: host(name).check_output("date +%s") for name in HOSTS}
    proc = run(["ansible-playbook", "-i", str(inventory), "--vault-password-file", str(vault_password), "site.yml"], env)
    return proc, started


def test_the_vault_file_is_encrypted_and_main_yml_is_the_example(production):
    inventory, _password, _env = production
    assert (inventory / "group_vars" / "all" / "vault.yml").read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    main = inventory / "group_vars" / "all" / "main.yml"
    assert main.read_bytes() == (EXAMPLE / "group_vars" / "all" / "main.yml").read_bytes()
    assert yaml.safe_load(main.read_text())["kit_environment"] == "production"


def test_site_yml_deploys_over_ssh_as_deploy_with_sudo_and_vault_secrets(deployed):
    proc, started = deployed
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    recaps = {name: (int(changed), int(unreachable), int(failed))
              for name, changed, unreachable, failed in RECAP_RE.findall(proc.stdout)}
    assert set(recaps) >= set(HOSTS), output[-3000:]
    assert all(unreachable == 0 and failed == 0 for _c, unreachable, failed in recaps.values()), recaps
    for value in (CREDENTIALS / name for name in VAULT.values()):
        assert value.read_text().strip() not in output, f"{value.name} in the run's output"
    for name in HOSTS:
        since = f"@{started[name].strip()}"
        journal = host(name).check_output(f"journalctl --since {since} -o cat --no-pager -t sshd -t sudo")
        # Ansible logged in over SSH as deploy with the test's key, never as root ...
        assert "Accepted publickey for deploy" in journal, f"{name}: no SSH login as deploy"
        assert not re.search(r"Accepted \S+ for root", journal), f"{name}: an SSH login as root"
        # ... and became root with sudo for the tasks.
        assert re.search(r"deploy : .*USER=root ; COMMAND=/bin/sh -c '?echo BECOME-SUCCESS", journal), name


def test_the_stack_passes_the_health_runbook_through_the_production_inventory(deployed, production):
    inventory, vault_password, env = production
    assert deployed[0].returncode == 0, "site.yml failed: see the test above"
    proc = run(["ansible-playbook", "-i", str(inventory), "--vault-password-file", str(vault_password),
                "playbooks/health.yml"], env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    # One row per host and check in the runbook's table, none of them CRITICAL.
    for name in HOSTS:
        assert re.search(rf"{re.escape(name)}\s*\|", proc.stdout), f"{name} not in the health table"
    assert "CRITICAL" not in proc.stdout


def test_a_short_vault_secret_stops_the_production_run_before_any_change(production):
    """The same inventory with one vault value too short: refused in the preflight, by name."""
    inventory, vault_password, env = production
    short = pathlib.Path(tempfile.mkdtemp(prefix="kit-production-short-"))
    try:
        shutil.copytree(inventory, short / "inventory")
        vault = short / "inventory" / "group_vars" / "all" / "vault.yml"
        values = {k: (CREDENTIALS / v).read_text().strip() for k, v in VAULT.items()}
        values["vault_redis_app_password"] = "short"
        write_vault(vault, values, vault_password)
        proc = run(["ansible-playbook", "-i", str(short / "inventory"), "--vault-password-file", str(vault_password),
                    "site.yml"], env, timeout=600)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "redis_app_password" in output
    assert all(int(changed) == 0 for _n, changed, _u, _f in RECAP_RE.findall(proc.stdout)), output[-3000:]
    # No play after the preflight's ran.
    assert set(PLAY_RE.findall(proc.stdout)) <= PREFLIGHT_PLAYS, PLAY_RE.findall(proc.stdout)


# Rotated in production mode: the new values are put in Vault, the current ones given as
# rotate_secrets_previous (redis_admin_password needs its current value to log in to Redis).
ROTATED = ["vault_postgresql_app_password", "vault_redis_app_password", "vault_redis_admin_password"]


def test_a_production_rotation_applies_the_vaults_new_values(deployed, production):
    """playbooks/rotate-secrets.yml in production mode (docs/runbooks/rotate-secrets.md): new values
    in the Vault file, the current ones in a second Vault file given as rotate_secrets_previous. The
    playbook's own last play fails unless every new password logs in and every old one is refused;
    here the daemons' password files hold the new values too, the health runbook passes, and no
    value, old or new, is in the output. The scenario's credentials then hold the new values, so
    that its inventory and the hosts agree again."""
    inventory, vault_password, env = production
    assert deployed[0].returncode == 0, "site.yml failed: see the test above"
    old = {k: (CREDENTIALS / v).read_text().strip() for k, v in VAULT.items()}
    new = dict(old, **{k: secrets.token_urlsafe(24) for k in ROTATED})
    write_vault(inventory / "group_vars" / "all" / "vault.yml", new, vault_password)
    previous = inventory.parent / "previous.vault.yml"
    write_vault(previous, {"rotate_secrets_previous": {VAULT[k]: old[k] for k in ROTATED}}, vault_password)
    names = "{\"rotate_secrets_names\": [%s]}" % ", ".join(f'"{VAULT[k]}"' for k in ROTATED)
    proc = run(["ansible-playbook", "-i", str(inventory), "--vault-password-file", str(vault_password),
                "-e", f"@{previous}", "-e", names, "playbooks/rotate-secrets.yml"], env)
    output = proc.stdout + proc.stderr
    leaked = [k for k in ROTATED if old[k] in output or new[k] in output]
    assert not leaked, f"{leaked} in the rotation's output"
    if proc.returncode == 0:
        for key in ROTATED:
            (CREDENTIALS / VAULT[key]).write_text(new[key] + "\n")
    assert proc.returncode == 0, output[-6000:]
    assert all(int(failed) == 0 and int(unreachable) == 0
               for _n, _c, unreachable, failed in RECAP_RE.findall(proc.stdout)), output[-3000:]
    daemon_dir = RUNNER.get_variables(HOSTS[0]).get("daemon_config_dir", "/etc/claude-daemon")
    for name in RUNNER.get_hosts("app"):
        h = host(name)
        assert h.file(f"{daemon_dir}/db_password").content_string.strip() == new["vault_postgresql_app_password"], name
        assert h.file(f"{daemon_dir}/redis_password").content_string.strip() == new["vault_redis_app_password"], name
    health = run(["ansible-playbook", "-i", str(inventory), "--vault-password-file", str(vault_password),
                  "playbooks/health.yml"], env, timeout=600)
    assert health.returncode == 0 and "CRITICAL" not in health.stdout, (health.stdout + health.stderr)[-6000:]
