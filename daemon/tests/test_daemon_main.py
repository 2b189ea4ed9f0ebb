"""python3 -m claude_daemon as a real process: configuration errors, logs, SIGTERM."""

import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from .daemon_helpers import APP_PASSWORD, DAEMON_DIR, REDIS_PASSWORD, free_port, request


def run_with(env, timeout=10):
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(DAEMON_DIR), **env}
    return subprocess.run([sys.executable, "-m", "claude_daemon"], env=full, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_a_bad_value_stops_the_start_with_the_variables_name():
    done = run_with({"PORT": "abc", "DB_TYPE": "sqlite", "DATABASE_PATH": "/tmp/unused.db"})
    assert done.returncode == 2
    assert "PORT: expected an integer, got 'abc'" in done.stderr
    assert "PORT: expected an integer" in done.stdout  # and in the log
    done = run_with({"DB_TYPE": "oracle"})
    assert done.returncode == 2 and "DB_TYPE:" in done.stderr


def test_a_redis_password_in_both_places_stops_the_start_without_showing_either(tmp_path):
    secret_file = tmp_path / "redis_password"
    secret_file.write_text("from-the-file-123\n")
    done = run_with({"DB_TYPE": "sqlite", "DATABASE_PATH": str(tmp_path / "f.db"), "PORT": str(free_port()),
                     "REDIS_URL": "redis://claude:from-the-url-456@127.0.0.1:6379/0",
                     "REDIS_PASSWORD_FILE": str(secret_file)})
    assert done.returncode == 2
    assert "invalid configuration: REDIS_PASSWORD_FILE: REDIS_URL must not also carry a password" in done.stderr
    for text in (done.stdout, done.stderr):
        assert "from-the-file-123" not in text and "from-the-url-456" not in text
    done = run_with({"DB_TYPE": "sqlite", "DATABASE_PATH": str(tmp_path / "f.db"), "PORT": str(free_port()),
                     "REDIS_URL": "redis://claude@127.0.0.1:6379/0",
                     "REDIS_PASSWORD_FILE": str(tmp_path / "absent")})
    assert done.returncode == 2 and f"REDIS_PASSWORD_FILE: cannot read {tmp_path / 'absent'}" in done.stderr


def test_redis_password_from_a_file_only_caches_and_leaks_nowhere(pg, redis_clean, tmp_path, daemon_process):
    """No secret in the daemon's environment (what `docker inspect` would show): both
    passwords come from files, REDIS_URL names only the user; the cache works under the ACL."""
    db_file, redis_file = tmp_path / "db_password", tmp_path / "redis_password"
    db_file.write_text(APP_PASSWORD + "\n")
    redis_file.write_text(REDIS_PASSWORD + "\n")
    env = pg.env(PORT=free_port(), DATABASE_PATH=tmp_path / "f.db", USAGE_INTERVAL=3600,
                 REDIS_URL=redis_clean.url_without_password, REDIS_PASSWORD_FILE=redis_file,
                 DB_PASSWORD_FILE=db_file)
    del env["DB_PASSWORD"]
    assert not any(secret in value for value in env.values() for secret in (APP_PASSWORD, REDIS_PASSWORD))
    daemon = daemon_process(env)
    daemon.wait_healthy(database="postgresql")
    health = daemon.health()
    assert health.json["redis"] == "ok" and REDIS_PASSWORD.encode() not in health.body
    first = request(daemon.port, "GET", "/api/alerts")
    assert first.status == 200 and first.cache == "MISS"
    assert request(daemon.port, "GET", "/api/alerts").cache == "HIT"
    assert any(k.startswith(b"claude:q:alerts:") for k in redis_clean.admin.keys("*"))  # really in this Redis
    assert daemon.stop(signal.SIGTERM) == 0
    log = daemon.log()
    assert REDIS_PASSWORD not in log and APP_PASSWORD not in log and "Traceback" not in log
    assert f"redis={redis_clean.url_without_password} redis_password=REDIS_PASSWORD_FILE" in log


def test_serves_logs_one_line_per_event_without_secrets_and_stops_cleanly(pg, redis_clean, tmp_path,
                                                                         daemon_process):
    secret_file = tmp_path / "db_password"
    secret_file.write_text(APP_PASSWORD + "\n")
    env = pg.env(PORT=free_port(), DATABASE_PATH=tmp_path / "f.db", REDIS_URL=redis_clean.url,
                 USAGE_INTERVAL=3600, NODE_ENV="production", AUTO_PROJECT_GENERATION="yes",
                 DB_PASSWORD_FILE=secret_file)
    env["DB_PASSWORD"] = "wrong-but-the-file-wins"
    daemon = daemon_process(env)
    daemon.wait_healthy(database="postgresql")
    health = daemon.health().json
    assert health["redis"] == "ok" and health["features"] == {"bmad_execution": False,
                                                              "auto_project_generation": True}
    for _ in range(4):
        assert request(daemon.port, "GET", "/api/alerts").status == 200
    assert request(daemon.port, "GET", "/api/nothing").status == 404
    # SIGTERM: stop accepting, store the partial usage interval, exit 0.
    assert daemon.stop(signal.SIGTERM) == 0
    assert pg.psql("SELECT requests_count, error_count FROM usage_data").strip() == "5|1"
    log = daemon.log()
    assert APP_PASSWORD not in log and REDIS_PASSWORD not in log and "wrong-but-the-file-wins" not in log
    lines = log.splitlines()
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ ")
    assert lines and all(stamp.match(line) for line in lines), [x for x in lines if not stamp.match(x)][:3]
    assert any("received SIGTERM" in x for x in lines) and lines[-1].endswith("stopped")
    assert any("redis://claude:***@" in x for x in lines)
    assert "Traceback" not in log


def test_a_bad_http_server_value_stops_the_start(tmp_path):
    base = {"DB_TYPE": "sqlite", "DATABASE_PATH": str(tmp_path / "f.db"), "PORT": str(free_port())}
    done = run_with({**base, "DAEMON_WORKERS": "4"})
    assert done.returncode == 2 and "invalid configuration: DAEMON_WORKERS: must be 1, got 4" in done.stderr
    done = run_with({**base, "DAEMON_THREADS": "lots"})
    assert done.returncode == 2 and "invalid configuration: DAEMON_THREADS: expected an integer" in done.stderr


def test_sigterm_lets_the_request_in_flight_finish_and_stores_the_last_interval(tmp_path, daemon_process):
    """SIGTERM while a POST's body is still arriving (and another client idles on a
    keep-alive connection): the POST is answered 201 and stored, the partial usage
    interval is stored, the idle connection does not hold the stop up, exit 0."""
    db_file = tmp_path / "f.db"
    daemon = daemon_process({"DB_TYPE": "sqlite", "DATABASE_PATH": str(db_file), "PORT": str(free_port()),
                             "USAGE_INTERVAL": "3600"})
    daemon.wait_healthy(database="sqlite")
    idle = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    idle.request("GET", "/api/alerts")
    assert idle.getresponse().read() and idle.sock is not None  # kept open, idle
    body = json.dumps({"id": "in-flight", "level": "info", "title": "sent across the SIGTERM"}).encode()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(b"POST /api/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
        time.sleep(0.5)  # the request is being read by a request thread
        daemon.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # the daemon has stopped accepting by now
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", daemon.port), timeout=2).close()
        sock.sendall(body[10:])
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 201 "), reply[:200]
    assert b'"id":"in-flight"' in reply
    started = time.monotonic()
    assert daemon.proc.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    idle.close()
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("SELECT count(*) FROM alerts WHERE id = 'in-flight'").fetchone()[0] == 1
        # The last interval: the GET and the POST (the health probes are not usage).
        assert conn.execute("SELECT sum(requests_count) FROM usage_data").fetchone()[0] == 2
    log = daemon.log()
    assert "received SIGTERM" in log and log.rstrip().endswith("stopped") and "Traceback" not in log
