"""HTTPS on the API port (DAEMON_TLS_CERT, DAEMON_TLS_KEY): served and verified
against a test CA, plain HTTP and TLS 1.1 refused, a certificate replaced on
disk served to new connections without a restart, and a client that never
handshakes holding no one else up. SQLite only: no server needed."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import time
import warnings

import pytest

from claude_daemon import healthcheck
from claude_daemon.config import ConfigError

from .daemon_helpers import config, make_config, wait_for


class Pki:
    """A CA made with openssl, and server certificates it signs for 127.0.0.1 and localhost."""

    def __init__(self, directory):
        assert shutil.which("openssl"), "openssl missing: apt-get install -y openssl"
        self.dir = directory
        self.ca = directory / "ca.pem"
        self.ca_key = directory / "ca.key"
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days",
                      "2", "-subj", "/CN=daemon https test CA", "-keyout", self.ca_key, "-out", self.ca)

    @staticmethod
    def _openssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    def issue(self, name, sans="IP:127.0.0.1,DNS:localhost,DNS:claude-daemon.internal"):
        """A new key and certificate: (cert path, key path)."""
        cert, key, csr = (self.dir / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj",
                      f"/CN={name}", "-keyout", key, "-out", csr)
        self._openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key, "-CAcreateserial",
                      "-CAserial", self.dir / "ca.srl", "-days", "2", "-extfile", ext, "-out", cert)
        return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("https-pki"))


@pytest.fixture
def served(pki, tmp_path):
    """The files the daemon is given (a directory, as the kit mounts it): cert and key copied in."""
    cert, key = pki.issue("first")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(cert, live / "server.crt")
    shutil.copy(key, live / "server.key")
    return live / "server.crt", live / "server.key"


@pytest.fixture
def https_app(start_app, served, tmp_path):
    cert, key = served
    cfg = make_config({"DB_TYPE": "sqlite", "DATABASE_PATH": str(tmp_path / "d.db"),
                       "DAEMON_TLS_CERT": str(cert), "DAEMON_TLS_KEY": str(key)})
    return start_app(cfg)


def client_context(pki):
    return ssl.create_default_context(cafile=str(pki.ca))


def https_get(port, context, path="/health", host="127.0.0.1", timeout=5):
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
    try:
        conn.connect()
        der, version = conn.sock.getpeercert(binary_form=True), conn.sock.version()
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(), der, version
    finally:
        conn.close()


def fingerprint(pem_path):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem_path.read_text())).hexdigest()


# --- configuration ----------------------------------------------------------------------------


def test_tls_is_off_without_the_variables():
    cfg = config.load({})
    assert not cfg.tls and "tls=off" in cfg.summary()


def test_tls_needs_both_files(served):
    cert, key = served
    with pytest.raises(ConfigError, match="^DAEMON_TLS_KEY: is empty while DAEMON_TLS_CERT is set"):
        config.load({"DAEMON_TLS_CERT": str(cert)})
    with pytest.raises(ConfigError, match="^DAEMON_TLS_CERT: is empty while DAEMON_TLS_KEY is set"):
        config.load({"DAEMON_TLS_KEY": str(key)})
    cfg = config.load({"DAEMON_TLS_CERT": str(cert), "DAEMON_TLS_KEY": str(key)})
    assert cfg.tls and f"tls={cert}" in cfg.summary()


def test_a_key_of_another_certificate_or_a_missing_file_stops_the_start(pki, served, tmp_path):
    cert, _key = served
    _other_cert, other_key = pki.issue("other")
    with pytest.raises(ConfigError, match="^DAEMON_TLS_CERT: .* do not load together"):
        config.load({"DAEMON_TLS_CERT": str(cert), "DAEMON_TLS_KEY": str(other_key)})
    with pytest.raises(ConfigError, match="^DAEMON_TLS_CERT: .*cannot read"):
        config.load({"DAEMON_TLS_CERT": str(tmp_path / "missing.crt"), "DAEMON_TLS_KEY": str(other_key)})


# --- serving ---------------------------------------------------------------------------------


def test_https_is_served_and_verifies_against_the_ca(https_app, pki, served):
    status, body, der, version = https_get(https_app.port, client_context(pki))
    assert status == 200 and b'"status":"ok"' in body
    assert hashlib.sha256(der).hexdigest() == fingerprint(served[0])
    assert version in ("TLSv1.2", "TLSv1.3")
    # By the name the kit's Nginx uses (proxy_ssl_name) too.
    context = client_context(pki)
    conn = http.client.HTTPSConnection("127.0.0.1", https_app.port, context=context, timeout=5)
    conn.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", https_app.port), timeout=5),
                                    server_hostname="claude-daemon.internal")
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()


def test_a_client_that_does_not_trust_the_ca_is_refused(https_app):
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(https_app.port, ssl.create_default_context())


def test_plain_http_is_refused_on_the_tls_port(https_app):
    conn = http.client.HTTPConnection("127.0.0.1", https_app.port, timeout=5)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        conn.request("GET", "/health")
        conn.getresponse()
    conn.close()


def test_tls_1_1_is_refused_by_the_server(https_app, pki):
    context = client_context(pki)
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    # OpenSSL 3's default security level keeps TLS 1.1 from even being offered:
    # lowered, so that the refusal seen below is the server's own.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as refused:
        https_get(https_app.port, context)
    # The server's alert, not a client that could not offer the version (NO_PROTOCOLS_AVAILABLE).
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value
    # The same client offering TLS 1.2 is served: the refusal is about the version.
    assert https_get(https_app.port, client_context(pki))[0] == 200


def test_a_replaced_certificate_is_served_without_a_restart(https_app, pki, served):
    cert, key = served
    before = https_get(https_app.port, client_context(pki))[2]
    new_cert, new_key = pki.issue("renewed")
    # As the kit renews: new files renamed over the old ones (new inodes), key first.
    for src, dest in ((new_key, key), (new_cert, cert)):
        tmp = dest.with_suffix(".tmp")
        shutil.copy(src, tmp)
        os.replace(tmp, dest)
    status, _body, after, _version = https_get(https_app.port, client_context(pki))
    assert status == 200
    assert hashlib.sha256(after).hexdigest() == fingerprint(new_cert) != hashlib.sha256(before).hexdigest()


def test_a_half_replaced_pair_keeps_the_loaded_certificate_until_the_key_follows(https_app, pki, served):
    cert, key = served
    before = fingerprint(cert)
    new_cert, new_key = pki.issue("half")
    shutil.copy(new_cert, cert.with_suffix(".tmp"))
    os.replace(cert.with_suffix(".tmp"), cert)  # the key is still the old one: the pair does not load
    for _ in range(2):  # tried once, not again at each connection, and still served
        status, _body, der, _version = https_get(https_app.port, client_context(pki))
        assert status == 200 and hashlib.sha256(der).hexdigest() == before
    shutil.copy(new_key, key.with_suffix(".tmp"))
    os.replace(key.with_suffix(".tmp"), key)
    status, _body, der, _version = https_get(https_app.port, client_context(pki))
    assert status == 200 and hashlib.sha256(der).hexdigest() == fingerprint(cert)


def test_a_client_that_never_handshakes_does_not_block_another(https_app, pki):
    https_app.server.tls_handshake_timeout = 2
    stalled = socket.create_connection(("127.0.0.1", https_app.port), timeout=10)
    try:
        started = time.monotonic()
        assert https_get(https_app.port, client_context(pki), timeout=3)[0] == 200
        assert time.monotonic() - started < 1.5
        # The stalled connection is closed by the server once its handshake times out.
        stalled.settimeout(6)
        assert wait_for(lambda: stalled.recv(1) == b"", timeout=6, message="the stalled client closed")
    finally:
        stalled.close()


def test_the_request_log_names_the_tls_version(https_app, pki, caplog):
    caplog.set_level("INFO", logger="claude_daemon.api")
    https_get(https_app.port, client_context(pki), path="/api/tls-log-probe")
    wait_for(lambda: any("path=/api/tls-log-probe" in r.getMessage() for r in caplog.records), timeout=5,
             message="the request's log line")
    line = next(r.getMessage() for r in caplog.records if "path=/api/tls-log-probe" in r.getMessage())
    assert " tls=TLSv1." in line


# --- the image's HEALTHCHECK -----------------------------------------------------------------


def test_healthcheck_verifies_https_against_daemon_tls_ca(https_app, pki, served):
    env = {"PORT": str(https_app.port), "DAEMON_TLS_CERT": str(served[0])}
    assert healthcheck.url(env).startswith("https://127.0.0.1:")
    assert healthcheck.main({**env, "DAEMON_TLS_CA": str(pki.ca)}) == 0
    # Without the CA the certificate does not verify: unhealthy, never unverified.
    assert healthcheck.main(env) == 1


def test_healthcheck_uses_plain_http_without_tls(start_app, tmp_path):
    app = start_app(make_config({"DB_TYPE": "sqlite", "DATABASE_PATH": str(tmp_path / "d.db")}))
    env = {"PORT": str(app.port)}
    assert healthcheck.url(env).startswith("http://127.0.0.1:")
    assert healthcheck.main(env) == 0


def test_files_that_do_not_load_are_not_loaded_again_until_they_change(pki, served, monkeypatch):
    from claude_daemon import tls

    cert, key = served
    reloading = tls.ReloadingContext(str(cert), str(key))
    loaded = reloading.current()
    calls = []
    real = tls.server_context
    monkeypatch.setattr(tls, "server_context", lambda c, k: calls.append(c) or real(c, k))
    new_cert, new_key = pki.issue("counted")
    shutil.copy(new_cert, cert.with_suffix(".tmp"))
    os.replace(cert.with_suffix(".tmp"), cert)
    assert [reloading.current() for _ in range(3)] == [loaded] * 3
    assert len(calls) == 1  # one failed attempt, not one per connection
    shutil.copy(new_key, key.with_suffix(".tmp"))
    os.replace(key.with_suffix(".tmp"), key)
    assert reloading.current() is not loaded and len(calls) == 2
    assert reloading.current() is reloading.current() and len(calls) == 2  # unchanged files: stat only


def test_keep_alive_over_tls_and_a_renewal_reaches_the_next_connection(https_app, pki, served):
    cert, key = served
    context = client_context(pki)
    conn = http.client.HTTPSConnection("127.0.0.1", https_app.port, context=context, timeout=5)
    try:
        conn.request("GET", "/health")
        assert conn.getresponse().read()
        sock = conn.sock
        before = sock.getpeercert(binary_form=True)
        new_cert, new_key = pki.issue("renewed-keepalive")
        for src, dest in ((new_key, key), (new_cert, cert)):
            shutil.copy(src, dest.with_suffix(".tmp"))
            os.replace(dest.with_suffix(".tmp"), dest)
        conn.request("GET", "/health")  # the open connection goes on, with the certificate it had
        reply = conn.getresponse()
        assert reply.status == 200 and reply.read() and conn.sock is sock
        assert sock.getpeercert(binary_form=True) == before
    finally:
        conn.close()
    after = https_get(https_app.port, client_context(pki))[2]
    assert hashlib.sha256(after).hexdigest() == fingerprint(new_cert)
