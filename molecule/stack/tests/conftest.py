"""Session fixtures of the stack's tests: the production path (production.py).

One run of site.yml serves two test files: test_zy_secret_leak.py scans its
-vvv --diff output and then every host for secrets, and test_zz_production_path.py
checks it went over SSH as `deploy` with sudo and Vault secrets. One run of the
whole site instead of two (the secret-leak run used to be a second one through
the scenario's own inventory): the longest single cost of the stack's verify.
The files are named to run last: the run applies production.example's settings
(Redis without persistence, storage ssd, ...), which the other files do not
expect; the SSH server and the user are removed when the session ends.
"""

import os
import pathlib
import secrets
import shutil
import subprocess
import tempfile
import time

import pytest
import yaml

from production import (APP_HOSTS, CREDENTIALS, DRIFTED, EXAMPLE, HOSTS, INVENTORY, PROJECT, RUNNER, VAULT,
                        address, container, host, run, write_vault)


@pytest.fixture(scope="session")
def production():
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


@pytest.fixture(scope="session")
def production_site_run(production):
    """site.yml through the production inventory, at its most verbose and with diffs, made to
    change what carries secrets: every host gets a new TLS key (tls_force_renew) and the app
    hosts' password files, removed first, are written again (and the daemons restarted).
    {"proc", "started" (each host's clock before the run), "output", "seconds"}."""
    inventory, vault_password, env = production
    for name in APP_HOSTS:
        subprocess.run(["docker", "exec", container(name), "rm", "-f", *DRIFTED], check=True, timeout=60)
    started = {name: host(name).check_output("date +%s") for name in HOSTS}
    began = time.monotonic()
    proc = run(["ansible-playbook", "-i", str(inventory), "--vault-password-file", str(vault_password),
                "site.yml", "-vvv", "--diff", "-e", "tls_force_renew=true"], env, timeout=3600)
    return {"proc": proc, "started": started, "output": proc.stdout + proc.stderr,
            "seconds": time.monotonic() - began}
