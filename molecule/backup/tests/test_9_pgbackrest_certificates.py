"""pgBackRest's own certificates (role backup, its CA in backup_pki_dir) are renewed by
playbooks/rotate-certs.yml inside backup_tls_renew_before_days: check mode only says so, a real
run signs both hosts' certificates again and restarts the pgBackRest TLS servers, and WAL still
reaches the repository over TLS afterwards. Outside the window nothing changes."""

import hashlib
import json
import os
import pathlib
import ssl
import subprocess
import tempfile

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from helpers import INVENTORY, PROJECT_DIR, as_postgres, get, run_playbook

testinfra_hosts = ["backup-repo"]
PKI = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "credentials" / "pki"
HOST_CERT = "/etc/pgbackrest/tls/host.crt"
# A window wider than the certificates' remaining life (825 days), for certificates of 900.
WINDOW = ["-e", "backup_tls_valid_days=900", "-e", "backup_tls_renew_before_days=899"]


@pytest.fixture(scope="module")
def hosts():
    return {"backup-db": get("backup-db"), "backup-repo": get("backup-repo")}


def fingerprints(hosts):
    return {name: hashlib.sha256(ssl.PEM_cert_to_DER_cert(h.file(HOST_CERT).content_string)).hexdigest()
            for name, h in hosts.items()}


def server_pid(h):
    return h.check_output("systemctl show -p MainPID --value pgbackrest.service")


def test_check_mode_says_what_would_be_renewed_and_changes_nothing(host, hosts):
    before = fingerprints(hosts)
    rc, out, recap = run_playbook("rotate-certs.yml", "--check", *WINDOW)
    assert rc == 0, out[-3000:]
    # The callback prints messages as YAML: long lines folded, an apostrophe doubled.
    flat = " ".join(out.replace("''", "'").split())
    assert "pgBackRest's certificate expires on" in flat and "would be signed again" in flat, out[-3000:]
    assert fingerprints(hosts) == before
    assert all(r["failed"] == 0 for r in recap.values()), recap


def test_a_rotation_inside_the_window_renews_both_and_wal_still_reaches_the_repository(host, hosts):
    before, pids = fingerprints(hosts), {name: server_pid(h) for name, h in hosts.items()}
    rc, out, recap = run_playbook("rotate-certs.yml", *WINDOW)
    assert rc == 0, out[-3000:]
    assert all(r["failed"] == 0 for r in recap.values()), recap
    after = fingerprints(hosts)
    for name, h in hosts.items():
        assert after[name] != before[name], f"{name}: pgBackRest's certificate was not renewed"
        cert = x509.load_pem_x509_certificate((PKI / f"{name}.crt").read_bytes())
        assert 899 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 901, name
        # The controller's copy is what the host has, and the server restarted to serve it.
        assert hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest() == after[name], name
        assert server_pid(h) != pids[name], f"{name}: pgBackRest's server was not restarted"
    # archive-push over TLS to the repository, with the new certificates on both sides.
    db = hosts["backup-db"]
    checked = as_postgres(db, "pgbackrest --stanza=%s check", "claude")
    assert checked.rc == 0, checked.stdout + checked.stderr


def test_a_rotation_outside_the_window_changes_nothing(host, hosts):
    before = fingerprints(hosts)
    rc, out, recap = run_playbook("rotate-certs.yml")
    assert rc == 0, out[-3000:]
    assert fingerprints(hosts) == before
    assert all(r["changed"] == 0 and r["failed"] == 0 for r in recap.values()), recap



# The monitoring role's check configuration, rendered from its real template with its real
# defaults and vars for these hosts (the scenario has no monitoring tier to deploy it).
RENDER = """
- name: Render the monitoring role's check configuration
  hosts: all
  gather_facts: true
  vars_files:
    - {project}/roles/kit/defaults/main.yml
    - {project}/roles/monitoring/defaults/main.yml
    - {project}/roles/monitoring/vars/main.yml
  tasks:
    - name: Write it on the host
      ansible.builtin.copy:
        content: "{{{{ lookup('ansible.builtin.template', '{project}/roles/monitoring/templates/etc/claude-kit/monitoring/check.json.j2') }}}}"
        dest: /tmp/kit-check-test.json
        mode: "0600"

    - name: Copy the check program beside it
      ansible.builtin.copy:
        src: {project}/roles/monitoring/files/claude-kit-check
        dest: /tmp/kit-check-test.py
        mode: "0700"
"""


def test_the_certificate_check_watches_pgbackrests_certificates(host, hosts):
    """Where pgBackRest uses TLS (repository and database apart, as here), the monitoring role's
    certificate check lists its CA and host certificate, and the check program reads them."""
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as playbook:
        playbook.write(RENDER.format(project=PROJECT_DIR))
    try:
        proc = subprocess.run(["ansible-playbook", "-i", INVENTORY, playbook.name], capture_output=True, text=True,
                              timeout=600, check=False, env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    finally:
        os.unlink(playbook.name)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name, h in hosts.items():
        config = json.loads(h.file("/tmp/kit-check-test.json").content_string)
        assert config["certificate"]["files"]["pgbackrest_server"] == HOST_CERT, (name, config["certificate"])
        assert config["certificate"]["files"]["pgbackrest_ca"] == "/etc/pgbackrest/tls/ca.crt", name
        out = h.run("python3 /tmp/kit-check-test.py --config /tmp/kit-check-test.json --no-textfile certificate")
        h.run("rm -f /tmp/kit-check-test.py /tmp/kit-check-test.json")
        assert out.rc == 0 and out.stdout.startswith("CERTIFICATE OK"), (name, out.stdout, out.stderr)
        assert "pgbackrest" in out.stdout and "expires in" in out.stdout, (name, out.stdout)
