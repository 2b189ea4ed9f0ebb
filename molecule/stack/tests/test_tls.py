"""Every host's TLS certificate (role tls) and the rotation runbook (playbooks/rotate-certs.yml), as
the services' clients see them: each server presents its host's certificate, which verifies against
the CA every host has and names the address clients use. A rotation renews every certificate that
expires within tls_renew_before_days, with a new key; PostgreSQL, Redis and Nginx present it after a
reload (their main processes keep running), each daemon without a restart (its container's start
time unchanged), and the stack keeps answering meanwhile.

The rotation tests come last in this file and leave new certificates in place, reloaded: every
later test sees a consistent stack.
"""

import concurrent.futures
import hashlib
import json
import os
import pathlib
import re
import ssl
import subprocess
import threading
import time

import testinfra
import testinfra.utils.ansible_runner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from test_stack import http

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
PROJECT = os.environ["MOLECULE_PROJECT_DIRECTORY"]
PKI = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "credentials" / "tls"
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)
testinfra_hosts = ["stack-data"]
VARS = RUNNER.get_variables("stack-data")
CA_FILE = VARS.get("kit_tls_ca_file", "/etc/claude-kit/tls/ca.crt")
CERT_FILE = VARS.get("kit_tls_cert_file", "/etc/claude-kit/tls/server.crt")
KEY_FILE = VARS.get("kit_tls_key_file", "/etc/claude-kit/tls/server.key")
KEY_GROUP = VARS.get("kit_tls_key_group", "ssl-cert")
HOSTS = {name: testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}") for name in RUNNER.get_hosts("all")}
DATA = HOSTS["stack-data"]
APP = HOSTS["stack-app1"]
# What stack-data serves with TLS (it is in the database, cache and web groups).
ENDPOINTS = [("postgresql", int(VARS.get("kit_db_port", 5432)), "postgresql"),
             # PgBouncer for the daemons (kit_pgbouncer_enabled): PostgreSQL's protocol, the host's certificate.
             ("pgbouncer", int(VARS.get("kit_pgbouncer_port", 6432)), "postgresql"),
             ("redis", int(VARS.get("kit_redis_port", 6379)), "tls"),
             ("nginx", int(VARS.get("nginx_https_port", 443)), "tls"),
             # The exporters Prometheus scrapes over HTTPS (monitoring_exporter_tls): node_exporter,
             # postgres_exporter and redis_exporter themselves, nginx_exporter behind Nginx.
             ("node_exporter", int(VARS.get("monitoring_node_exporter_port", 9100)), "tls"),
             ("postgres_exporter", int(VARS.get("monitoring_postgres_exporter_port", 9187)), "tls"),
             ("redis_exporter", int(VARS.get("monitoring_redis_exporter_port", 9121)), "tls"),
             ("nginx_exporter", int(VARS.get("monitoring_nginx_exporter_port", 9113)), "tls")]
APP_HOSTS = RUNNER.get_hosts("app")
DAEMON_PORT = int(VARS.get("kit_daemon_port", 5001))
DAEMON_CONTAINER = VARS.get("kit_daemon_container_name", "claude-daemon")
DAEMON_TLS_NAME = VARS.get("kit_daemon_tls_name", "claude-daemon.internal")
SERVED_PROGRAM = pathlib.Path(PROJECT, "roles", "tls", "files", "tls-served-cert").read_text()
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def address(host):
    return host.interface("eth0").addresses[0]


def certificate(host):
    return x509.load_pem_x509_certificate(host.file(CERT_FILE).content_string.encode())


def fingerprint(host):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(host.file(CERT_FILE).content_string)).hexdigest()


def served(host, endpoints=None):
    """{service: the endpoint's report} from the role's own probe, run on the host against its own
    address: the certificate presented, compared with the installed one, verified against the CA."""
    args = ["--address", address(host), "--ca", CA_FILE, "--cert", CERT_FILE] + [
        f"{name}:{port}:{protocol}" for name, port, protocol in endpoints or ENDPOINTS]
    out = host.check_output("python3 -c %s " + " ".join(["%s"] * len(args)), SERVED_PROGRAM, *args)
    return {e["name"]: e for e in json.loads(out)["endpoints"]}


def daemon_served(app):
    """The same probe on an app host, for its daemon's port."""
    args = ["--address", address(app), "--ca", CA_FILE, "--cert", CERT_FILE, f"daemon:{DAEMON_PORT}:tls"]
    out = app.check_output("python3 -c %s " + " ".join(["%s"] * len(args)), SERVED_PROGRAM, *args)
    return json.loads(out)["endpoints"][0]


def daemon_started():
    """When each app host's daemon container started: a restart changes it."""
    return {name: target.check_output("docker inspect -f '{{.State.StartedAt}}' %s", DAEMON_CONTAINER)
            for name, target in HOSTS.items() if name in APP_HOSTS}


def main_pids():
    """The services' main processes: a reload keeps them, a restart replaces them."""
    return {"postgresql": DATA.check_output("head -n 1 /var/lib/postgresql/15/main/postmaster.pid"),
            "nginx": DATA.check_output("systemctl show -p MainPID --value nginx.service"),
            "redis": DATA.check_output("systemctl show -p MainPID --value redis-server.service"),
            # PgBouncer rereads its TLS files on SIGHUP: reloaded, never restarted.
            "pgbouncer": DATA.check_output("systemctl show -p MainPID --value pgbouncer.service"),
            # The exporters read the certificate again at each handshake: no restart either.
            **{f"{name}_exporter": DATA.check_output("systemctl show -p MainPID --value prometheus-%s-exporter.service",
                                                     name)
               for name in ("node", "postgres", "redis")}}


def rotate(*args):
    proc = subprocess.run(["ansible-playbook", "-i", INVENTORY, os.path.join(PROJECT, "playbooks", "rotate-certs.yml"),
                           *args], capture_output=True, text=True, timeout=900, check=False,
                          env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"))
    output = proc.stdout + proc.stderr
    recap = {m.group(1): (int(m.group(3)), int(m.group(5))) for m in RECAP_RE.finditer(output)}
    return proc.returncode, output, recap


# --- what every host has ------------------------------------------------------------

def test_every_host_has_the_ca_its_certificate_and_a_key_only_root_and_the_key_group_read(host):
    for name, target in HOSTS.items():
        for path in (CA_FILE, CERT_FILE):
            f = target.file(path)
            assert (f.user, f.group, f.mode) == ("root", "root", 0o644), f"{name}:{path}"
        key = target.file(KEY_FILE)
        assert (key.user, key.group, key.mode) == ("root", KEY_GROUP, 0o640), name
        group = target.group(KEY_GROUP)
        assert group.exists and group.gid < 1000, f"{name}: {KEY_GROUP} is not a system group"
        # Chain and purpose, as OpenSSL's clients check them.
        assert target.run("openssl verify -purpose sslserver -CAfile %s %s", CA_FILE, CERT_FILE).rc == 0, name


def test_each_certificate_names_the_host_and_the_addresses_clients_use(host):
    for name, target in HOSTS.items():
        cert = certificate(target)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = set(sans.get_values_for_type(x509.DNSName))
        addresses = {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
        assert {name, "localhost"} <= names, f"{name}: {names}"
        assert {address(target), "127.0.0.1"} <= addresses, f"{name}: {addresses}"
        # The daemons' shared name (Nginx's proxy_ssl_name, Prometheus's server_name): app hosts only.
        assert (DAEMON_TLS_NAME in names) == (name in APP_HOSTS), f"{name}: {names}"
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages), name


def test_the_kit_ca_stays_on_the_controller_and_only_its_certificate_is_on_the_hosts(host):
    assert (PKI.stat().st_mode & 0o777) == 0o700
    assert ((PKI / "ca.key").stat().st_mode & 0o777) == 0o600
    for name, target in HOSTS.items():
        assert target.file(CA_FILE).content_string.strip() == (PKI / "ca.crt").read_text().strip(), name
        assert target.run("grep -rl 'PRIVATE KEY' /etc/claude-kit/tls").stdout.split() == [KEY_FILE], name


def test_each_service_presents_the_hosts_certificate_verified_by_address(host):
    report = served(DATA)
    for name, _port, _protocol in ENDPOINTS:
        assert report[name]["ok"], report[name]


def test_a_client_host_verifies_the_servers_by_their_address_and_refuses_another_name(host):
    data = address(DATA)
    for name, port, protocol in ENDPOINTS[:2]:  # what the app hosts reach (the firewall admits them there)
        starttls = "-starttls postgres" if protocol == "postgresql" else ""
        base = f"openssl s_client -connect {data}:{port} {starttls} -CAfile {CA_FILE} -verify_return_error"
        good = APP.run(f"{base} -verify_ip {data} </dev/null")
        assert good.rc == 0 and "Verify return code: 0 (ok)" in good.stdout, f"{name}: {good.stdout[-500:]}"
        wrong = APP.run(f"{base} -verify_ip 192.0.2.1 </dev/null")
        assert wrong.rc != 0 and "IP address mismatch" in wrong.stdout + wrong.stderr, name


# --- the rotation runbook ------------------------------------------------------------

def test_check_mode_reports_a_forced_rotation_and_changes_nothing(host):
    before = {name: fingerprint(target) for name, target in HOSTS.items()}
    rc, out, recap = rotate("--check", "-e", "tls_force_renew=true")
    assert rc == 0, out[-3000:]
    assert all(changed > 0 for changed, _failed in recap.values()), recap
    assert "a new key and certificate would be made" in out
    assert {name: fingerprint(target) for name, target in HOSTS.items()} == before


def test_a_rotation_renews_the_certificates_inside_the_window_and_reloads_without_a_restart(host):
    """tls_renew_before_days decides: with the window wider than any certificate's remaining life
    (399 days, certificates of 397), every one is renewed, a new key each, for the new lifetime.
    (A forced renewal, tls_force_renew, is run by the check-mode test above and by the secret-leak
    test's site.yml run.)"""
    before = {name: (fingerprint(target), target.file(KEY_FILE).md5sum) for name, target in HOSTS.items()}
    pids = main_pids()
    started = daemon_started()
    answers, stop = [], threading.Event()

    def poll():  # the stack keeps answering while it rotates
        while not stop.is_set():
            try:
                status, _headers, body = http("GET", "/health", timeout=5)
                answers.append((status, body.get("database") if isinstance(body, dict) else body))
            except OSError as exc:  # refused, reset, timed out: what a reload must never cause
                answers.append(("no answer", str(exc)))
            time.sleep(0.5)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        polling = pool.submit(poll)
        try:
            rc, out, recap = rotate("-e", "tls_cert_valid_days=400", "-e", "tls_renew_before_days=399")
        finally:
            stop.set()
            polling.result()
    assert rc == 0, out[-3000:]
    assert all(failed == 0 for _changed, failed in recap.values()), recap
    for name, target in HOSTS.items():
        cert, key = fingerprint(target), target.file(KEY_FILE).md5sum
        assert cert != before[name][0] and key != before[name][1], f"{name}: not renewed with a new key"
        lifetime = certificate(target).not_valid_after_utc - certificate(target).not_valid_before_utc
        assert 399 <= lifetime.days <= 401, f"{name}: {lifetime}"
    # PostgreSQL, Redis, Nginx and the exporters present the new certificate, and the same processes still run.
    report = served(DATA)
    assert all(report[name]["ok"] and report[name]["matches"] for name, _p, _pr in ENDPOINTS), report
    node_exporter = [endpoint for endpoint in ENDPOINTS if endpoint[0] == "node_exporter"]
    assert served(APP, node_exporter)["node_exporter"]["ok"], "stack-app1's node_exporter"
    assert main_pids() == pids
    # Each daemon presents its host's new certificate, and its container was not restarted.
    for name in APP_HOSTS:
        report = daemon_served(HOSTS[name])
        assert report["ok"] and report["matches"], (name, report)
    assert daemon_started() == started
    assert answers and all(answer == (200, "postgresql") for answer in answers), \
        [answer for answer in answers if answer != (200, "postgresql")]


def test_a_rotation_with_nothing_to_renew_changes_nothing(host):
    # The default window (tls_renew_before_days 30) holds none of the certificates just made.
    before = {name: fingerprint(target) for name, target in HOSTS.items()}
    rc, out, recap = rotate()
    assert {name: fingerprint(target) for name, target in HOSTS.items()} == before
    assert rc == 0, out[-3000:]
    assert all(changed == 0 and failed == 0 for changed, failed in recap.values()), recap
