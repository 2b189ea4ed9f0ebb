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

The run is conftest.py's `production_site_run`, shared with test_zy_secret_leak.py
(which scans it and the hosts for secrets before this file rotates them). The
file is named to run last: the run applies production.example's settings
(Redis without persistence, storage ssd, ...), which the other files do not
expect; the SSH server and the user it added are removed when the session ends.
"""

import pathlib
import re
import secrets
import shutil
import tempfile

import yaml

from production import (CREDENTIALS, EXAMPLE, HOSTS, PLAY_RE, PREFLIGHT_PLAYS, RECAP_RE, RUNNER, VAULT, host, run,
                        write_vault)

testinfra_hosts = ["stack-data"]


def test_the_vault_file_is_encrypted_and_main_yml_is_the_example(production):
    inventory, _password, _env = production
    assert (inventory / "group_vars" / "all" / "vault.yml").read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    main = inventory / "group_vars" / "all" / "main.yml"
    assert main.read_bytes() == (EXAMPLE / "group_vars" / "all" / "main.yml").read_bytes()
    assert yaml.safe_load(main.read_text())["kit_environment"] == "production"


def test_site_yml_deploys_over_ssh_as_deploy_with_sudo_and_vault_secrets(production_site_run):
    proc, started = production_site_run["proc"], production_site_run["started"]
    output = production_site_run["output"]
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


def test_the_stack_passes_the_health_runbook_through_the_production_inventory(production_site_run, production):
    inventory, vault_password, env = production
    assert production_site_run["proc"].returncode == 0, "site.yml failed: see the test above"
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


def test_a_production_rotation_applies_the_vaults_new_values(production_site_run, production):
    """playbooks/rotate-secrets.yml in production mode (docs/runbooks/rotate-secrets.md): new values
    in the Vault file, the current ones in a second Vault file given as rotate_secrets_previous. The
    playbook's own last play fails unless every new password logs in and every old one is refused;
    here the daemons' password files hold the new values too, the health runbook passes, and no
    value, old or new, is in the output. The scenario's credentials then hold the new values, so
    that its inventory and the hosts agree again."""
    inventory, vault_password, env = production
    assert production_site_run["proc"].returncode == 0, "site.yml failed: see the test above"
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
