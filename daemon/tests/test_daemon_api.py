"""The HTTP API end to end, on a real port, with PostgreSQL (least privilege) and Redis (ACL)."""

import base64
import datetime as dt
import hashlib
import json
import logging
import re
import socket
import time

import pytest

from claude_daemon import __version__

from .daemon_helpers import free_port, make_config, request, wait_for


@pytest.fixture
def app(pg, redis_clean, tmp_path, start_app):
    cfg = make_config(pg.env(DATABASE_PATH=tmp_path / "f.db", REDIS_URL=redis_clean.url, CACHE_TTL=30,
                             BMAD_EXECUTION_ENABLED="true"))
    return start_app(cfg)


def test_health_reports_every_part(app):
    reply = request(app.port, "GET", "/health")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    assert reply.json == {"status": "ok", "database": "postgresql", "redis": "ok", "version": __version__,
                          "features": {"bmad_execution": True, "auto_project_generation": False},
                          "pending_sync": 0}
    assert reply.headers["Server"] == "claude-daemon"  # no Python version disclosed


def test_alerts_are_created_listed_cached_and_acknowledged(app, pg):
    first = request(app.port, "GET", "/api/alerts")
    assert first.status == 200 and first.json == {"rows": []} and first.cache == "MISS"
    assert request(app.port, "GET", "/api/alerts").cache == "HIT"

    created = request(app.port, "POST", "/api/alerts", {"level": "warning", "title": "Disk 91%",
                                                        "message": "db1", "metadata": {"pct": 91}})
    assert created.status == 201
    alert = created.json
    assert re.fullmatch(r"[0-9a-f-]{36}", alert["id"]) and alert["acknowledged"] is False
    assert alert["metadata"] == {"pct": 91} and alert["timestamp"].endswith("Z")
    assert pg.count("alerts") == 1  # really in PostgreSQL

    listed = request(app.port, "GET", "/api/alerts")  # the POST invalidated the cached list
    assert listed.cache == "MISS" and [a["id"] for a in listed.json["rows"]] == [alert["id"]]
    assert request(app.port, "GET", "/api/alerts").cache == "HIT"

    explicit = request(app.port, "POST", "/api/alerts", {"id": "disk:db1.91", "level": "error", "title": "x"})
    assert explicit.status == 201 and explicit.json["id"] == "disk:db1.91"
    again = request(app.port, "POST", "/api/alerts", {"id": "disk:db1.91", "level": "error", "title": "x"})
    assert again.status == 409 and "error" in again.json

    acked = request(app.port, "POST", f"/api/alerts/{alert['id']}/acknowledge")
    assert acked.status == 200 and acked.json["acknowledged"] is True
    assert request(app.port, "POST", "/api/alerts/no-such-alert/acknowledge").status == 404
    rows = request(app.port, "GET", "/api/alerts?acknowledged=false")
    assert rows.cache == "MISS" and [a["id"] for a in rows.json["rows"]] == ["disk:db1.91"]
    assert [a["id"] for a in request(app.port, "GET", "/api/alerts?level=warning&limit=5").json["rows"]] == [
        alert["id"]]


def test_usage_is_filtered_by_time_and_ordered(app, pg):
    pg.psql("INSERT INTO usage_data (timestamp, requests_count) VALUES "
            "('2024-01-01 10:00', 3), ('2024-01-01 09:00', 2), ('2023-12-31 10:00', 1), ('2024-01-02 00:00', 4)")
    reply = request(app.port, "GET", "/api/usage?from=2024-01-01T00:00:00Z&to=2024-01-01T23:59:59Z")
    assert reply.status == 200 and reply.cache == "MISS"
    assert [r["requests_count"] for r in reply.json["rows"]] == [2, 3]
    assert reply.json["from"] == "2024-01-01T00:00:00Z"
    # A zone offset is honoured: 2024-01-01T11:30+01:00 is 10:30 UTC.
    reply = request(app.port, "GET", "/api/usage?from=2024-01-01T09:30:00%2B00:00&to=2024-01-01T11:30:00%2B01:00")
    assert [r["requests_count"] for r in reply.json["rows"]] == [3]
    # Default window: the last 24 hours.
    pg.psql("INSERT INTO usage_data (timestamp, requests_count) "
            "VALUES (now() AT TIME ZONE 'UTC' - interval '1 hour', 9)")
    request(app.port, "POST", "/api/alerts", {"level": "info", "title": "bump"})  # unrelated table
    default = request(app.port, "GET", "/api/usage")
    assert [r["requests_count"] for r in default.json["rows"]] == [9]
    earliest = request(app.port, "GET", "/api/usage?to=0001-01-01T00:00:00Z")  # the window cannot start earlier
    assert earliest.status == 200 and earliest.json["rows"] == []


def test_predictions_are_listed_by_date(app, pg):
    pg.psql("INSERT INTO predictions (date, predicted_tokens, predicted_cost, confidence, model_version) VALUES "
            "('2024-03-02', 200, 1.5, 0.8, 'm1'), ('2024-03-01', 100, 0.75, 0.9, 'm1')")
    reply = request(app.port, "GET", "/api/predictions")
    assert reply.status == 200 and reply.cache == "MISS"
    assert [(p["date"], p["predicted_cost"], p["confidence"]) for p in reply.json["rows"]] == [
        ("2024-03-01", 0.75, 0.9), ("2024-03-02", 1.5, 0.8)]
    assert [p["date"] for p in request(app.port, "GET", "/api/predictions?from=2024-03-02").json["rows"]] == [
        "2024-03-02"]
    assert request(app.port, "GET", "/api/predictions").cache == "HIT"


BIG = "x" * (64 * 1024 + 1)
BAD_REQUESTS = [
    ("POST", "/api/alerts", b"{not json", {"Content-Type": "application/json"}, 400),
    ("POST", "/api/alerts", b"", {"Content-Type": "application/json"}, 400),
    ("POST", "/api/alerts", b"[1, 2]", {"Content-Type": "application/json"}, 400),
    ("POST", "/api/alerts", b'{"level": "info", "title": "t", "metadata": {"x": NaN}}', {}, 400),
    ("POST", "/api/alerts", b'{"level": "info", "title": "t", "metadata": {"x": Infinity}}', {}, 400),
    ("POST", "/api/alerts", b"[" * 30000 + b"]" * 30000, {}, 400),
    ("POST", "/api/alerts", b"\xff\xfe{}", {}, 400),
    ("POST", "/api/alerts", json.dumps({"level": "info", "title": BIG}).encode(), {}, 413),
    ("POST", "/api/alerts", b'{"level": "info", "title": "t"}', {"Content-Type": "text/plain"}, 415),
    ("POST", "/api/alerts", {"level": "critical", "title": "t"}, {}, 400),
    ("POST", "/api/alerts", {"level": "INFO", "title": "t"}, {}, 400),
    ("POST", "/api/alerts", {"level": None, "title": "t"}, {}, 400),
    ("POST", "/api/alerts", {"title": "t"}, {}, 400),
    ("POST", "/api/alerts", {"level": "info"}, {}, 400),
    ("POST", "/api/alerts", {"level": "info", "title": "   "}, {}, 400),
    ("POST", "/api/alerts", {"level": "info", "title": 5}, {}, 400),
    ("POST", "/api/alerts", {"level": "info", "title": "x" * 256}, {}, 400),
    ("POST", "/api/alerts", {"level": "info", "title": "nul\u0000"}, {}, 400),
    ("POST", "/api/alerts", b'{"level": "info", "title": "lone \\ud800"}', {}, 400),
    ("POST", "/api/alerts", {"level": "info", "title": "t", "metadata": [1]}, {}, 400),
    ("POST", "/api/alerts", {"level": "info", "title": "t", "metadata": "x"}, {}, 400),
    ("POST", "/api/alerts", {"level": "info", "title": "t", "metadata": {"k": "a\u0000"}}, {}, 400),
    ("POST", "/api/alerts", b'{"level": "info", "title": "t", "metadata": {"k": "\\udfff"}}', {}, 400),
    ("POST", "/api/alerts", {"level": "info", "title": "t", "message": 3}, {}, 400),
    ("POST", "/api/alerts", {"level": "info", "title": "t", "timestamp": "2024-01-01"}, {}, 400),
    ("POST", "/api/alerts", {"level": "info", "title": "t", "id": "has space"}, {}, 400),
    ("POST", "/api/alerts", {"level": "info", "title": "t", "id": "a/b"}, {}, 400),
    ("POST", "/api/alerts", {"level": "info", "title": "t", "id": "x" * 256}, {}, 400),
    ("POST", "/api/alerts", {"level": "info", "title": "t", "id": 7}, {}, 400),
    ("POST", "/api/alerts?x=1", {"level": "info", "title": "t"}, {}, 400),
    ("GET", "/api/usage?from=yesterday", None, {}, 400),
    ("GET", "/api/usage?to=2024-13-01T00:00:00", None, {}, 400),
    ("GET", "/api/usage?from=2024-01-02T00:00:00Z&to=2024-01-01T00:00:00Z", None, {}, 400),
    ("GET", "/api/usage?from=2024-01-01&from=2024-01-02", None, {}, 400),
    ("GET", "/api/usage?limit=0", None, {}, 400),
    ("GET", "/api/usage?limit=%D9%A3", None, {}, 400),  # a non-ASCII digit
    ("GET", "/api/usage?from=0001-01-01T00:00:00%2B01:00", None, {}, 400),  # before year 1 in UTC
    ("GET", "/api/usage?to=9999-12-31T23:59:59-01:00", None, {}, 400),  # after year 9999 in UTC
    ("GET", "/api/usage?limit=abc", None, {}, 400),
    ("GET", "/api/usage?limit=-1", None, {}, 400),
    ("GET", "/api/usage?" + "&".join(f"p{i}=1" for i in range(30)), None, {}, 400),
    ("GET", "/api/usage?order=id", None, {}, 400),
    ("GET", "/api/alerts?level=critical", None, {}, 400),
    ("GET", "/api/alerts?level=info'%3BDROP%20TABLE%20alerts%3B--", None, {}, 400),
    ("GET", "/api/alerts?acknowledged=maybe", None, {}, 400),
    ("GET", "/api/alerts?limit=100000", None, {}, 400),
    ("GET", "/api/predictions?from=2024-02-30", None, {}, 400),
    ("GET", "/api/nope", None, {}, 404),
    ("GET", "/api/alerts/", None, {}, 404),
    ("GET", "/../../etc/passwd", None, {}, 404),
    ("GET", "/api/alerts/x/acknowledge", None, {}, 405),
    ("PUT", "/api/alerts", {"level": "info", "title": "t"}, {}, 405),
    ("DELETE", "/api/alerts", None, {}, 405),
    ("POST", "/health", None, {}, 405),
    ("POST", "/api/alerts/%ff%fe/acknowledge", None, {}, 400),
    ("POST", "/api/alerts/a%20b/acknowledge", None, {}, 404),
    ("GET", "/api/alerts", None, {"X-Tokens-Used": "-5"}, 400),
    ("GET", "/api/alerts", None, {"X-Tokens-Used": "99999999999"}, 400),
    ("GET", "/api/alerts", None, {"X-Cost-Usd": "abc"}, 400),
    ("GET", "/api/alerts", None, {"X-Cost-Usd": "1.23456"}, 400),
    ("GET", "/api/alerts", None, {"X-Session-Id": "s" * 300}, 400),
    ("POST", "/api/alerts", b"{}", {"Content-Length": "abc"}, 400),
]


def test_bad_input_gets_a_4xx_json_error_and_never_a_500(app, pg, caplog):
    caplog.set_level(logging.INFO, logger="claude_daemon")
    for method, path, body, headers, status in BAD_REQUESTS:
        reply = request(app.port, method, path, body=body, headers=headers)
        assert reply.status == status, (method, path[:80], body if not isinstance(body, bytes) else body[:60],
                                        reply.status, reply.body[:200])
        assert set(reply.json) == {"error"} and reply.json["error"], (method, path)
        assert b"Traceback" not in reply.body
    assert pg.count("alerts") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an error was logged"
    assert request(app.port, "GET", "/health").status == 200  # and the daemon is fine


def raw_exchange(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    if not data.startswith(b"HTTP/"):  # an HTTP/0.9-style request gets a bare body
        return None, json.loads(data)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("data,status", [
    (b"BREW /api/alerts HTTP/1.0\r\n\r\n", 405),
    (b"GARBAGE\r\n\r\n", None),
    (b"GET http://[bad/ HTTP/1.0\r\n\r\n", 400),
    (b"GET /health HTTP/9.9\r\n\r\n", None),  # refused before the version is known: bare body
    (b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n", 414),
    (b"POST /api/alerts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
     411),
])
def test_malformed_http_is_answered_in_json(app, data, status):
    code, body = raw_exchange(app.port, data)
    assert code == status and "error" in body


def test_redis_down_means_bypass_not_failure(app, redis_clean):
    assert request(app.port, "GET", "/api/alerts").cache == "MISS"
    redis_clean.freeze()
    try:
        started = time.monotonic()
        reply = request(app.port, "GET", "/api/alerts")
        assert reply.status == 200 and reply.cache == "BYPASS" and time.monotonic() - started < 1.5
        assert request(app.port, "POST", "/api/alerts", {"level": "info", "title": "during"}).status == 201
        listed = request(app.port, "GET", "/api/alerts")
        assert listed.cache == "BYPASS" and len(listed.json["rows"]) == 1
        health = request(app.port, "GET", "/health")
        assert health.status == 200 and health.json["redis"] == "down" and health.json["status"] == "ok"
    finally:
        redis_clean.thaw()
    wait_for(lambda: request(app.port, "GET", "/health").json["redis"] == "ok", timeout=5, message="redis back")
    again = request(app.port, "GET", "/api/alerts")  # the write made while Redis was down is visible
    assert again.cache == "MISS" and len(again.json["rows"]) == 1
    assert request(app.port, "GET", "/api/alerts").cache == "HIT"


def test_the_usage_monitor_records_the_real_traffic(app, pg):
    sessions = ["s1", "s2", "s1", None, "s3", None, "s2"]
    for i, session in enumerate(sessions):
        headers = {"X-Session-Id": session} if session else {}
        if i == 0:
            headers["X-Tokens-Used"] = "1200"
            headers["X-Cost-Usd"] = "0.0150"
        if i == 1:
            headers["X-Tokens-Used"] = "300"
        request(app.port, "GET", "/api/alerts", headers=headers)
    request(app.port, "GET", "/api/missing")  # an error
    request(app.port, "POST", "/api/alerts", {"level": "nope", "title": "t"},
            headers={"Cookie": "theme=dark; claude_session=c1"})  # an error, session from the cookie
    for _ in range(5):
        request(app.port, "GET", "/health")  # probes are not usage
    app.monitor.flush()
    rows = pg.psql("SELECT requests_count, error_count, active_users, endpoint, tokens_used, cost_usd, "
                   "avg_response_time >= 0, session_id IS NULL FROM usage_data").strip().splitlines()
    assert rows == ["9|2|4|/api/alerts|1500|0.0150|t|t"]
    app.monitor.flush()  # an idle interval is recorded as zeros, not invented
    assert pg.psql("SELECT requests_count, error_count, active_users, coalesce(endpoint, 'NULL'), tokens_used "
                   "FROM usage_data ORDER BY id DESC LIMIT 1").strip() == "0|0|0|NULL|0"


def test_the_monitor_writes_every_usage_interval(pg, tmp_path, start_app):
    app = start_app(make_config(pg.env(DATABASE_PATH=tmp_path / "f.db", USAGE_INTERVAL=0.3)))
    request(app.port, "GET", "/api/alerts")
    wait_for(lambda: pg.count("usage_data") >= 3, timeout=5, message="three usage rows")
    assert pg.count("usage_data", "requests_count = 1 AND endpoint = '/api/alerts'") == 1


def test_503_when_neither_store_works(pg, start_app):
    # PostgreSQL: nothing listens on the port. SQLite: a path no one can create, even root.
    cfg = make_config(pg.env(DB_PORT=free_port(), DATABASE_PATH="/proc/claude-daemon/no.db"))
    app = start_app(cfg)
    reply = request(app.port, "GET", "/health")
    assert reply.status == 503
    assert reply.json["status"] == "error" and reply.json["database"] == "unavailable"
    assert set(reply.json) == {"status", "database", "redis", "features", "version", "pending_sync"}
    for method, path, body in [("GET", "/api/alerts", None), ("GET", "/api/usage", None),
                               ("POST", "/api/alerts", {"level": "info", "title": "t"})]:
        reply = request(app.port, method, path, body)
        assert reply.status == 503 and set(reply.json) == {"error"}
    assert request(app.port, "GET", "/").status == 200  # the dashboard still loads and shows the state


def test_sqlite_only_mode_serves_everything(tmp_path, start_app):
    app = start_app(make_config({"DB_TYPE": "sqlite", "DATABASE_PATH": str(tmp_path / "only.db")}))
    assert request(app.port, "GET", "/health").json["database"] == "sqlite"
    assert request(app.port, "POST", "/api/alerts", {"id": "s", "level": "success", "title": "ok"}).status == 201
    assert request(app.port, "POST", "/api/alerts/s/acknowledge").json["acknowledged"] is True
    reply = request(app.port, "GET", "/api/alerts")
    assert reply.cache == "BYPASS" and reply.json["rows"][0]["id"] == "s"


def test_dashboard_is_self_contained(app):
    reply = request(app.port, "GET", "/")
    assert reply.status == 200 and reply.headers["Content-Type"] == "text/html; charset=utf-8"
    html = reply.body.decode()
    assert re.search(r'<svg id="usage-chart"', html) and re.search(r'<table id="alerts-table">', html)
    assert "<tbody>" in html and '"class": "point"' in html and "data-alert-id" in html
    assert "/api/usage" in html and "/api/alerts" in html and "setInterval(refresh, REFRESH_MS)" in html
    assert "REFRESH_MS = 10000" in html
    # Nothing fetched from elsewhere: the only absolute URL is the SVG namespace name.
    assert re.findall(r"https?://[^\s\"'<>]+", html) == ["http://www.w3.org/2000/svg"]
    assert not re.search(r"<(script|link|img|iframe)[^>]+src=", html)
    # The CSP lets exactly the page's own inline script and style run.
    csp = reply.headers["Content-Security-Policy"]
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp


def test_timestamps_are_utc(app):
    before = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    alert = request(app.port, "POST", "/api/alerts", {"level": "info", "title": "t"}).json
    stamp = dt.datetime.fromisoformat(alert["timestamp"].rstrip("Z"))
    assert abs((stamp - before).total_seconds()) < 5
