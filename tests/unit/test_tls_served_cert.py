"""roles/tls/files/tls-served-cert, the probe playbooks/rotate-certs.yml trusts to say that a
service presents the installed certificate: against real TLS servers on 127.0.0.1 (plain TLS, and
PostgreSQL's SSLRequest first), with certificates of a throwaway CA."""

import datetime
import importlib.machinery
import importlib.util
import ipaddress
import json
import os
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PROGRAM = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "tls", "files", "tls-served-cert")
loader = importlib.machinery.SourceFileLoader("tls_served_cert", PROGRAM)
tsc = importlib.util.module_from_spec(importlib.util.spec_from_loader("tls_served_cert", loader))
loader.exec_module(tsc)

NOW = datetime.datetime.now(datetime.UTC)


def issue(subject, issuer=None, issuer_key=None, ca=False, addresses=("127.0.0.1",)):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(subject)] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert, key


def write(tmp_path, name, cert, key=None):
    (tmp_path / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (tmp_path / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(tmp_path / f"{name}.crt")


@pytest.fixture(name="pki")
def fixture_pki(tmp_path):
    ca, ca_key = issue("test CA", ca=True)
    write(tmp_path, "ca", ca)
    for name, addresses in (("old", ("127.0.0.1",)), ("new", ("127.0.0.1",)), ("elsewhere", ("192.0.2.7",))):
        cert, key = issue(name, ca, ca_key, addresses=addresses)
        write(tmp_path, name, cert, key)
    return tmp_path


class Server:
    """A TLS server on 127.0.0.1 presenting one certificate; postgresql=True answers an
    SSLRequest with S first, as PostgreSQL does."""

    def __init__(self, cert, key, postgresql=False):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.postgresql = postgresql
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    if self.postgresql:
                        assert conn.recv(8) == tsc.SSL_REQUEST
                        conn.sendall(b"S")
                    with self.context.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(1)
                except (OSError, AssertionError):
                    pass

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def serving(pki, name, postgresql=False):
    """A Server presenting pki's NAME.crt (with NAME.key), closed when the `with` ends."""
    return Server(str(pki / f"{name}.crt"), str(pki / f"{name}.key"), postgresql=postgresql)


def probe(pki, capsys, installed, *endpoints, wait=0):
    args = ["--address", "127.0.0.1", "--ca", str(pki / "ca.crt"), "--cert", str(pki / installed),
            "--timeout", "5", "--wait", str(wait)] + list(endpoints)
    assert tsc.main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    return {e["name"]: e for e in doc["endpoints"]}


def test_a_service_presenting_the_installed_certificate_is_ok(pki, capsys):
    with serving(pki, "new") as tls, serving(pki, "new", postgresql=True) as pg:
        report = probe(pki, capsys, "new.crt", f"nginx:{tls.port}:tls", f"postgresql:{pg.port}:postgresql")
    for name in ("nginx", "postgresql"):
        assert report[name]["ok"] and report[name]["matches"] and report[name]["verified"], report[name]
        assert report[name]["serial"] and report[name]["not_after"]


def test_a_service_still_presenting_the_old_certificate_is_not_ok(pki, capsys):
    with serving(pki, "old") as server:
        report = probe(pki, capsys, "new.crt", f"redis:{server.port}:tls")["redis"]
    # Verifies (same CA, right address), but is not the installed file: a reload is due.
    assert report["verified"] and not report["matches"] and not report["ok"]


def test_a_certificate_without_the_address_clients_use_fails_verification(pki, capsys):
    with serving(pki, "elsewhere") as server:
        report = probe(pki, capsys, "elsewhere.crt", f"nginx:{server.port}:tls")["nginx"]
    assert report["matches"] and not report["verified"] and not report["ok"]
    assert "IP address mismatch" in report["error"]


def test_postgresql_without_ssl_and_a_closed_port_are_reported(pki, capsys):
    plain = socket.create_server(("127.0.0.1", 0))
    port = plain.getsockname()[1]

    def refuse_ssl():
        conn, _addr = plain.accept()
        with conn:
            conn.recv(8)
            conn.sendall(b"N")

    threading.Thread(target=refuse_ssl, daemon=True).start()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]  # bound, never listening
        report = probe(pki, capsys, "new.crt", f"postgresql:{port}:postgresql", f"nginx:{closed_port}:tls")
    plain.close()
    assert "SSL is off" in report["postgresql"]["error"] and not report["postgresql"]["ok"]
    assert "refused" in report["nginx"]["error"].lower() and not report["nginx"]["ok"]


def test_it_waits_until_the_service_presents_the_installed_certificate(pki, capsys):
    with serving(pki, "old") as server:
        # The "reload": after a moment the server presents the new certificate.
        threading.Timer(1.5, server.context.load_cert_chain, (str(pki / "new.crt"), str(pki / "new.key"))).start()
        report = probe(pki, capsys, "new.crt", f"nginx:{server.port}:tls", wait=10)["nginx"]
    assert report["ok"], report


def test_bad_endpoints_are_usage_errors(pki, capsys):
    for text in ("nginx:443", "nginx:http:tls", "nginx:443:ssh", "nginx:0:tls"):
        with pytest.raises(SystemExit) as exc:
            tsc.main(["--address", "127.0.0.1", "--ca", str(pki / "ca.crt"), "--cert", str(pki / "new.crt"), text])
        assert exc.value.code == 2
    assert "NAME:PORT:PROTOCOL" in capsys.readouterr().err


def test_the_installed_certificate_is_the_first_of_its_file(pki):
    chain = (pki / "new.crt").read_text() + (pki / "ca.crt").read_text()
    first = ssl.PEM_cert_to_DER_cert((pki / "new.crt").read_text())
    assert tsc.first_pem_certificate(chain) == first
