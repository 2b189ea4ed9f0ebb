"""PostgreSQL's TLS as a network client meets it: the controller (admitted by the scenario's
hostssl entry) is refused in plain text, gets in with verify-full against the kit's CA, and
after the tls role renews the host's certificate the server serves the new one at once,
reloaded, not restarted."""

import socket
import ssl
import struct

import psycopg2
import pytest
import testinfra
import testinfra.utils.ansible_runner
from helpers import INVENTORY, app_password, host_ip, psql, run_playbook

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("database")
CA_FILE = "/etc/claude-kit/tls/ca.crt"
CERT_FILE = "/etc/claude-kit/tls/server.crt"


@pytest.fixture
def ca_path(host, tmp_path):
    """The CA the tls role installed on the host, as a file on the controller."""
    path = tmp_path / "ca.crt"
    path.write_text(host.file(CA_FILE).content_string)
    return str(path)


def connect(host, **settings):
    return psycopg2.connect(host=host_ip(host), port=5432, dbname="claude_daemon", user="claude_app",
                            password=app_password(), connect_timeout=5, **settings)


def served_certificate(host, ca_path):
    """The certificate the server presents (DER), from a handshake verified against the CA and its address."""
    context = ssl.create_default_context(cafile=ca_path)
    with socket.create_connection((host_ip(host), 5432), timeout=10) as raw:
        raw.sendall(struct.pack("!ii", 8, 80877103))  # PostgreSQL's SSLRequest
        assert raw.recv(1) == b"S"
        with context.wrap_socket(raw, server_hostname=host_ip(host)) as tls:
            return tls.getpeercert(binary_form=True)


def test_a_client_without_tls_is_refused(host):
    with pytest.raises(psycopg2.OperationalError, match="no pg_hba.conf entry.*no encryption"):
        connect(host, sslmode="disable")


def test_a_verify_full_client_gets_in_over_tls(host, ca_path):
    with connect(host, sslmode="verify-full", sslrootcert=ca_path) as conn, conn.cursor() as cur:
        cur.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        encrypted, version = cur.fetchone()
    conn.close()
    assert encrypted is True and version in ("TLSv1.2", "TLSv1.3")


@pytest.fixture(scope="module")
def renewal():
    """Every host's certificate renewed by a run of the converge's certificate and configuration
    parts (the tls role, and the postgresql role's part that reloads on a new certificate, as
    an operator renewing certificates runs them); what each served before and after."""
    hosts = {name: testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}") for name in testinfra_hosts}
    before = {}
    for name, h in hosts.items():
        before[name] = (h.file(CERT_FILE).content_string, psql(h, "SELECT pg_postmaster_start_time()", "postgres")[0])
    rc, output, recap = run_playbook("-e", "tls_force_renew=true", "--tags", "tls,postgresql_config")
    return before, (rc, output, recap)


def test_a_renewed_certificate_is_served_after_a_reload_without_a_restart(host, renewal, tmp_path):
    name = host.backend.get_hostname()
    before, (rc, output, _recap) = renewal
    assert rc == 0, output[-3000:]
    old_pem, started = before[name]
    new_pem = host.file(CERT_FILE).content_string
    assert new_pem != old_pem
    ca = tmp_path / "ca.crt"
    ca.write_text(host.file(CA_FILE).content_string)
    assert served_certificate(host, str(ca)) == ssl.PEM_cert_to_DER_cert(new_pem)
    assert psql(host, "SELECT pg_postmaster_start_time()", "postgres")[0] == started
