"""The health-check program's Redis check over TLS (roles/monitoring/files/claude-kit-check):
a real TLS handshake with a small Redis stand-in on loopback, certificates made with
openssl. The kit's Redis speaks only TLS, so this is the path the check takes there."""

import shutil
import socket
import ssl
import subprocess
import threading

import pytest

from test_check_program import CRITICAL, NOW, OK, UNKNOWN, ckc, config, info_text


def openssl(*args):
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_pki(directory, names):
    """A CA (ca.pem) and a server certificate for `names` (subjectAltName) signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ext.cnf").write_text(f"subjectAltName={names}\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=check test CA", "-keyout", directory / "ca.key", "-out", directory / "ca.pem")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=redis",
            "-keyout", directory / "server.key", "-out", directory / "server.csr")
    openssl("x509", "-req", "-in", directory / "server.csr", "-CA", directory / "ca.pem", "-CAkey", directory / "ca.key",
            "-CAcreateserial", "-CAserial", directory / "ca.srl", "-days", "2", "-extfile", directory / "ext.cnf",
            "-out", directory / "server.pem")
    return directory


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    assert shutil.which("openssl"), "openssl missing: apt-get install -y openssl (scripts/bootstrap.sh does)"
    base = tmp_path_factory.mktemp("pki")
    return {"good": make_pki(base / "good", "IP:127.0.0.1,DNS:localhost"),
            "other_name": make_pki(base / "other_name", "DNS:cache.example"),
            "other_ca": make_pki(base / "other_ca", "IP:127.0.0.1")}


class FakeRedis:
    """Accepts one connection on 127.0.0.1 (TLS with `certdir`'s certificate, or plain), answers
    each RESP command with the next scripted reply, and keeps the commands it received."""

    def __init__(self, replies, certdir=None):
        self.replies = list(replies)
        self.received = []
        self.error = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.context = None
        if certdir is not None:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(certdir / "server.pem", certdir / "server.key")
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _addr = self.listener.accept()
            conn.settimeout(5)
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            with conn, conn.makefile("rb") as stream:
                for reply in self.replies:
                    command = ckc.read_reply(stream)
                    self.received.append(command)
                    conn.sendall(reply)
        except (OSError, ckc.Unreachable) as exc:  # the client gave up: what the tests provoke
            self.error = exc
        finally:
            self.listener.close()

    def join(self):
        self.thread.join(timeout=10)


def redis_config(tmp_path, port, ca_file):
    cfg = config(tmp_path)["redis"]
    cfg.update(port=port, tls_ca_file=str(ca_file) if ca_file else None, timeout=5)
    (tmp_path / "redis.pass").write_text("s3cret-pass\n")
    return cfg


def all_ok_replies():
    info = info_text(evicted=3, rejected=0, run_id="tls1").encode()
    return [b"+OK\r\n", b"+PONG\r\n", b"$%d\r\n%s\r\n" % (len(info), info)]


def test_over_tls_the_check_authenticates_and_reads_info(tmp_path, pki):
    server = FakeRedis(all_ok_replies(), pki["good"])
    items, state = ckc.check_redis(redis_config(tmp_path, server.port, pki["good"] / "ca.pem"), {}, NOW)
    server.join()
    assert [(i.name, i.code) for i in items] == [("ping", OK), ("memory", OK), ("evicted", OK), ("rejected", OK)]
    assert server.received == [["AUTH", "claude_monitor", "s3cret-pass"], ["PING"], ["INFO"]]
    assert state["origin"] == "tls1"


@pytest.mark.parametrize("certs, ca, reason", [
    ("other_name", "other_name", "IP address mismatch"),  # the certificate does not name 127.0.0.1
    ("other_ca", "good", "unable to get local issuer certificate"),  # signed by a CA the check does not trust
])
def test_a_certificate_that_does_not_verify_is_critical_and_no_password_is_sent(tmp_path, pki, certs, ca, reason):
    server = FakeRedis(all_ok_replies(), pki[certs])
    items, state = ckc.check_redis(redis_config(tmp_path, server.port, pki[ca] / "ca.pem"), {}, NOW)
    server.join()
    assert items[0].code == CRITICAL and items[0].summary.startswith("TLS certificate not verified (")
    assert reason in items[0].summary
    assert [item.code for item in items[1:]] == [UNKNOWN] * 3 and state is None
    assert server.received == []


def test_a_plain_text_server_fails_the_tls_handshake(tmp_path, pki):
    server = FakeRedis([b"-ERR unknown command\r\n"])
    items, _state = ckc.check_redis(redis_config(tmp_path, server.port, pki["good"] / "ca.pem"), {}, NOW)
    server.join()
    assert items[0].code == CRITICAL and items[0].summary.startswith("TLS handshake failed (")
    assert all(b"s3cret" not in repr(command).encode() for command in server.received)


def test_an_unusable_ca_file_is_unknown_without_connecting(tmp_path, monkeypatch):
    def no_connection(*_args, **_kwargs):
        raise AssertionError("connected although the CA file cannot be used")

    monkeypatch.setattr(ckc.socket, "create_connection", no_connection)
    for ca in (tmp_path / "missing.pem", tmp_path / "not-a-cert.pem"):
        if ca.name == "not-a-cert.pem":
            ca.write_text("hello\n")
        items, state = ckc.check_redis(redis_config(tmp_path, 6379, ca), {}, NOW)
        assert {item.code for item in items} == {UNKNOWN} and state is None
        assert items[0].summary.startswith(f"cannot check: cannot use the CA file {ca}")


def test_without_a_ca_file_the_check_speaks_plain_tcp(tmp_path):
    """tls_ca_file absent or empty: a Redis without TLS (not the kit's) can still be checked."""
    server = FakeRedis(all_ok_replies())
    items, _state = ckc.check_redis(redis_config(tmp_path, server.port, None), {}, NOW)
    server.join()
    assert items[0].code == OK and server.received[0][0] == "AUTH"


def test_the_ca_file_setting_must_be_a_path(tmp_path):
    cfg = config(tmp_path)
    cfg["redis"]["tls_ca_file"] = 5
    with pytest.raises(ckc.UsageError, match=r"redis\.tls_ca_file must be a path"):
        ckc.validate(cfg, ["redis"], "check.json")
    cfg["redis"]["tls_ca_file"] = None
    ckc.validate(cfg, ["redis"], "check.json")

