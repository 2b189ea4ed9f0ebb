"""The HTTP server itself (gunicorn's gthread worker in the daemon's process):
HTTP/1.1 with keep-alive, so that Nginx's upstream keepalive reuses connections.
SQLite only: no server needed."""

import http.client
import socket
import time

from .daemon_helpers import make_config, wait_for


def sqlite_app(start_app, tmp_path, **extra):
    return start_app(make_config({"DB_TYPE": "sqlite", "DATABASE_PATH": str(tmp_path / "h.db"),
                                  **{k: str(v) for k, v in extra.items()}}))


def test_two_requests_on_one_http_1_1_connection(start_app, tmp_path):
    app = sqlite_app(start_app, tmp_path)
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=5)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        assert first.status == 200 and first.version == 11 and first.read()
        assert first.getheader("Connection", "").lower() != "close" and not first.will_close
        sock = conn.sock
        local = sock.getsockname()
        conn.request("POST", "/api/alerts", body=b'{"level": "info", "title": "kept alive"}',
                     headers={"Content-Type": "application/json"})
        second = conn.getresponse()
        assert second.status == 201 and second.read()
        conn.request("HEAD", "/api/alerts")
        third = conn.getresponse()
        assert third.status == 200 and third.read() == b"" and int(third.getheader("Content-Length")) > 0
        conn.request("GET", "/api/alerts")
        fourth = conn.getresponse()
        assert fourth.status == 200 and b"kept alive" in fourth.read()
        assert conn.sock is sock and sock.getsockname() == local  # the same TCP connection throughout
    finally:
        conn.close()


def test_errors_keep_the_connection_and_connection_close_is_honoured(start_app, tmp_path):
    app = sqlite_app(start_app, tmp_path)
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=5)
    try:
        conn.request("GET", "/api/nothing")
        missing = conn.getresponse()
        assert missing.status == 404 and not missing.will_close and b'"error"' in missing.read()
        sock = conn.sock
        conn.request("GET", "/health", headers={"Connection": "close"})
        assert conn.sock is sock  # the 404 left the connection open
        last = conn.getresponse()
        assert last.status == 200 and last.will_close and last.getheader("Connection") == "close"
        assert last.read()
    finally:
        conn.close()


def test_http_1_0_gets_one_request_per_connection(start_app, tmp_path):
    app = sqlite_app(start_app, tmp_path)
    with socket.create_connection(("127.0.0.1", app.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        data = b""
        while True:  # the server closes after its answer
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.0 200 ") or data.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nServer: claude-daemon\r\n" in data


def test_an_idle_connection_is_closed_after_daemon_keepalive(start_app, tmp_path):
    app = sqlite_app(start_app, tmp_path, DAEMON_KEEPALIVE=1)
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    try:
        conn.request("GET", "/health")
        reply = conn.getresponse()
        assert reply.status == 200 and not reply.will_close and reply.read()
        started = time.monotonic()
        assert wait_for(lambda: conn.sock.recv(1) == b"", timeout=6, message="the idle connection closed")
        assert time.monotonic() - started < 5
    finally:
        conn.close()


def test_more_clients_than_threads_are_all_served(start_app, tmp_path):
    app = sqlite_app(start_app, tmp_path, DAEMON_THREADS=2)
    conns = [http.client.HTTPConnection("127.0.0.1", app.port, timeout=5) for _ in range(6)]
    try:
        for _ in range(3):
            for conn in conns:  # six kept-alive connections on two threads
                conn.request("GET", "/health")
                reply = conn.getresponse()
                assert reply.status == 200 and reply.read()
    finally:
        for conn in conns:
            conn.close()


def test_silent_connections_hold_no_request_thread(start_app, tmp_path):
    """More clients that connect and send nothing than there are threads: a real
    request is still answered at once (a thread is taken only once bytes arrive)."""
    app = sqlite_app(start_app, tmp_path, DAEMON_THREADS=2)
    silent = [socket.create_connection(("127.0.0.1", app.port), timeout=15) for _ in range(6)]
    try:
        time.sleep(0.3)
        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=3)
        started = time.monotonic()
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200 and time.monotonic() - started < 1.5
        conn.close()
        # ... and they are closed after the request timeout (10 s).
        assert silent[0].recv(1) == b""
    finally:
        for sock in silent:
            sock.close()
