"""The stack's wiring: shared names set once (the kit role), secrets only in files,
and every input checked before anything changes.

Runs after test_stack.py (file order), against the same converged hosts.
"""

import json
import os
import pathlib
import re
import subprocess

import testinfra
import testinfra.utils.ansible_runner

from test_stack import http

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
CONVERGE = str(pathlib.Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml")
CREDENTIALS = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "credentials"
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)
testinfra_hosts = RUNNER.get_hosts("web")
KIT = RUNNER.get_variables("stack-data")
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def get_host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


DATA = get_host("stack-data")
APPS = [get_host(name) for name in RUNNER.get_hosts("app")]


def psql(query, db="postgres"):
    return DATA.check_output("runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d %s -c %s", db, query)


def run_site(*args):
    proc = subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, CONVERGE, *args], capture_output=True, text=True,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"), timeout=900, check=False,
    )
    output = proc.stdout + proc.stderr
    recap = {m.group(1): int(m.group(3)) for m in RECAP_RE.finditer(output)}
    return proc.returncode, output, recap


def test_the_scenario_really_renames_the_shared_names(host):
    assert (KIT["kit_db_name"], KIT["kit_app_user"], KIT["kit_daemon_port"]) != ("claude_daemon", "claude_app", 5001)


def test_database_and_app_role_carry_the_renamed_names(host):
    assert psql(f"SELECT datname FROM pg_database WHERE datname IN ('claude_daemon', '{KIT['kit_db_name']}')") \
        == KIT["kit_db_name"]
    assert psql(f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{KIT['kit_app_user']}'") == "t"
    assert psql("SELECT count(*) FROM pg_roles WHERE rolname = 'claude_app'") == "0"
    # The daemons write into the renamed database, as the renamed role.
    who = psql("SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = '%s' AND usename IS NOT NULL"
               % KIT["kit_db_name"])
    assert KIT["kit_app_user"] in who.split()


def test_daemons_listen_on_the_renamed_port_and_nginx_follows(host):
    port = KIT["kit_daemon_port"]
    for app in APPS:
        assert app.socket(f"tcp://0.0.0.0:{port}").is_listening or app.socket(f"tcp://127.0.0.1:{port}").is_listening
        assert not app.socket("tcp://127.0.0.1:5001").is_listening
        # The app hosts have python3, not curl. HTTPS, verified against the kit's CA.
        health = app.check_output(
            "python3 -c %s %s %s",
            "import ssl, sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10, "
            "context=ssl.create_default_context(cafile=sys.argv[2])).read().decode())",
            f"https://127.0.0.1:{port}/health", KIT.get("kit_tls_ca_file", "/etc/claude-kit/tls/ca.crt"))
        assert json.loads(health)["status"] == "ok"
    # The whole running configuration, with the upstream file nginx.conf includes.
    conf = DATA.check_output("nginx -T 2>/dev/null")
    upstreams = [line for line in conf.splitlines() if line.strip().startswith("server ") and "max_fails" in line]
    assert len(upstreams) == len(APPS) and all(f":{port} " in line for line in upstreams), upstreams
    # Through Nginx, over HTTPS with the kit's CA (test_stack.http).
    assert http("GET", "/health")[0] == 200


def test_no_secret_in_the_daemon_containers_environment(host):
    # Files only: the tls/ and pki/ folders beside the passwords hold keys (the leak test reads those).
    secrets = [path.read_text().strip() for path in CREDENTIALS.iterdir() if path.is_file()]
    assert len(secrets) >= 3 and all(len(s) >= 16 for s in secrets)
    for app in APPS:
        inspect = app.check_output("docker inspect %s", KIT.get("kit_daemon_container_name", "claude-daemon"))
        assert "REDIS_PASSWORD_FILE=/run/secrets/redis_password" in inspect
        for secret in secrets:
            assert secret not in inspect, f"a secret is visible in docker inspect on {app.backend.get_hostname()}"


def test_a_bad_value_for_the_web_tier_stops_the_run_before_the_database_changes(host):
    before = psql("SHOW work_mem")
    auto_conf_before = psql("SELECT md5(pg_read_file('postgresql.auto.conf'))")
    rc, output, recap = run_site("-e", "nginx_upstream_max_fails=lots", "-e", '{"postgresql_settings": {"work_mem": "7MB"}}')
    assert rc != 0, output[-3000:]
    # The message names the host and the variable.
    assert "stack-data" in output and "nginx_upstream_max_fails" in output, output[-3000:]
    assert "PLAY [Database, cache and web tiers, side by side]" not in output
    assert recap and all(changed == 0 for changed in recap.values()), recap
    assert psql("SHOW work_mem") == before
    assert psql("SELECT md5(pg_read_file('postgresql.auto.conf'))") == auto_conf_before


def test_the_preflight_runbook_alone_passes_on_good_input_and_changes_nothing(host):
    preflight = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "playbooks" / "preflight.yml"
    proc = subprocess.run(["ansible-playbook", "-i", INVENTORY, str(preflight)], capture_output=True, text=True,
                          env=dict(os.environ, ANSIBLE_NOCOLOR="1"), timeout=600, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    recap = {m.group(1): int(m.group(3)) for m in RECAP_RE.finditer(output)}
    assert set(recap) >= {"stack-data", *RUNNER.get_hosts("app")}
    assert all(changed == 0 for changed in recap.values()), recap
