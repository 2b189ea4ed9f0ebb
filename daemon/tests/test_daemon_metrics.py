"""GET /metrics: the Prometheus exposition, request metrics by route template,
the state gauges read at scrape time, METRICS_ENABLED.

Most tests run the daemon on SQLite alone (no server needed); the database
mode, pool and cache tests use the real PostgreSQL and Redis of conftest.py.
"""

import os
import socket
import subprocess
import sys
import threading

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from claude_daemon import config
from claude_daemon.errors import StoreUnavailable
from claude_daemon.metrics import BUCKETS
from claude_daemon.pool import Pool, PoolTimeout

from .daemon_helpers import DAEMON_DIR, free_port, make_config, request, wait_for

CONTRACT = {  # name as exposed -> type (the names alert rules are written on)
    "claude_daemon_http_requests_total": "counter",
    "claude_daemon_http_request_errors_total": "counter",
    "claude_daemon_http_request_duration_seconds": "histogram",
    "claude_daemon_database_mode": "gauge",
    "claude_daemon_pending_sync": "gauge",
    "claude_daemon_pool_connections_in_use": "gauge",
    "claude_daemon_pool_connections_idle": "gauge",
    "claude_daemon_pool_waiting": "gauge",
    "claude_daemon_cache_hits_total": "counter",
    "claude_daemon_cache_misses_total": "counter",
    "claude_daemon_redis_up": "gauge",
}


class Scrape:
    """One GET /metrics, parsed with prometheus_client's own parser."""

    def __init__(self, port):
        reply = request(port, "GET", "/metrics")
        assert reply.status == 200, reply.body
        self.content_type = reply.headers["Content-Type"]
        self.families = {f.name: f for f in text_string_to_metric_families(reply.body.decode("utf-8"))}
        self.samples = {}
        for family in self.families.values():
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name, **labels):
        """The sample's value; None when the exposition has no such sample."""
        return self.samples.get((name, frozenset(labels.items())))

    def labelsets(self, name):
        return [dict(labels) for sample, labels in self.samples if sample == name]

    def requests(self, method, route, status):
        return self.value("claude_daemon_http_requests_total", method=method, route=route, status=str(status)) or 0

    def errors(self, method, route):
        return self.value("claude_daemon_http_request_errors_total", method=method, route=route) or 0


def sqlite_config(tmp_path, name="s.db", **extra):
    return make_config({"DB_TYPE": "sqlite", "DATABASE_PATH": str(tmp_path / name),
                        **{k: str(v) for k, v in extra.items()}})


@pytest.fixture
def app(tmp_path, start_app):
    """The daemon on SQLite only, without Redis: no server needed."""
    return start_app(sqlite_config(tmp_path))


def test_the_exposition_parses_and_has_every_metric_of_the_contract(app):
    scrape = Scrape(app.port)
    assert scrape.content_type == CONTENT_TYPE_LATEST
    exposed = {name: scrape.families[name.removesuffix("_total")].type for name in CONTRACT
               if name.removesuffix("_total") in scrape.families}
    assert exposed == CONTRACT
    # Gauges read from the state: one sample each, and both modes always present.
    assert scrape.value("claude_daemon_database_mode", mode="sqlite") == 1
    assert scrape.value("claude_daemon_database_mode", mode="postgresql") == 0
    for name in ("claude_daemon_pending_sync", "claude_daemon_pool_connections_in_use",
                 "claude_daemon_pool_connections_idle", "claude_daemon_pool_waiting",
                 "claude_daemon_cache_hits_total", "claude_daemon_cache_misses_total", "claude_daemon_redis_up"):
        assert scrape.value(name) == 0, name  # DB_TYPE=sqlite, no Redis: no pool, no cache
    # Every route's error counter exists from the start, at 0 (not /metrics itself).
    for method, route in (("GET", "/health"), ("POST", "/api/alerts"), ("POST", "/api/alerts/{id}/acknowledge")):
        assert scrape.value("claude_daemon_http_request_errors_total", method=method, route=route) == 0
    assert all(labels["route"] != "/metrics" for labels in scrape.labelsets("claude_daemon_http_request_errors_total"))


def test_requests_are_counted_under_their_route_template(app):
    assert request(app.port, "POST", "/api/alerts", {"id": "disk-91", "level": "warning", "title": "t"}).status == 201
    assert request(app.port, "POST", "/api/alerts/disk-91/acknowledge").status == 200
    assert request(app.port, "POST", "/api/alerts/no-such-alert/acknowledge").status == 404
    assert request(app.port, "GET", "/api/alerts?level=warning").status == 200
    assert request(app.port, "HEAD", "/api/alerts").status == 200
    assert request(app.port, "GET", "/no/such/path/7f3a").status == 404
    assert request(app.port, "DELETE", "/api/alerts").status == 405
    scrape = Scrape(app.port)
    assert scrape.requests("POST", "/api/alerts", 201) == 1
    assert scrape.requests("POST", "/api/alerts/{id}/acknowledge", 200) == 1
    assert scrape.requests("POST", "/api/alerts/{id}/acknowledge", 404) == 1
    assert scrape.requests("GET", "/api/alerts", 200) == 1  # the query string is not part of the route
    assert scrape.requests("HEAD", "/api/alerts", 200) == 1
    assert scrape.requests("GET", "unmatched", 404) == 1
    assert scrape.requests("DELETE", "/api/alerts", 405) == 1  # a known path, the wrong method
    # Bounded cardinality: no raw path, id or query string ever becomes a label value.
    routes = {labels["route"] for labels in scrape.labelsets("claude_daemon_http_requests_total")}
    assert routes == {"/api/alerts", "/api/alerts/{id}/acknowledge", "unmatched"}
    assert scrape.errors("POST", "/api/alerts/{id}/acknowledge") == 0  # a 404 is not an error


def test_scrapes_are_not_counted(app):
    for _ in range(3):
        Scrape(app.port)
    assert request(app.port, "HEAD", "/metrics").status == 200
    scrape = Scrape(app.port)
    assert scrape.labelsets("claude_daemon_http_requests_total") == []
    assert scrape.labelsets("claude_daemon_http_request_duration_seconds_count") == []


def test_the_histogram_counts_every_request_once(app):
    for _ in range(4):
        assert request(app.port, "GET", "/api/predictions").status == 200
    assert request(app.port, "GET", "/api/predictions?limit=0").status == 400
    assert request(app.port, "GET", "/health").status == 200
    scrape = Scrape(app.port)
    name = "claude_daemon_http_request_duration_seconds"
    labels = {"method": "GET", "route": "/api/predictions"}
    assert scrape.value(f"{name}_count", **labels) == 5 == (
        scrape.requests("GET", "/api/predictions", 200) + scrape.requests("GET", "/api/predictions", 400))
    assert scrape.value(f"{name}_bucket", le="+Inf", **labels) == 5
    buckets = [scrape.value(f"{name}_bucket", le=str(float(b)), **labels) for b in BUCKETS]
    assert buckets == sorted(buckets) and buckets[-1] == 5  # cumulative; nothing local takes 10 s
    assert 0 < scrape.value(f"{name}_sum", **labels) < 10
    assert scrape.value(f"{name}_count", method="GET", route="/health") == 1


def test_500_and_503_answers_are_errors(app, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.db, "select", broken)
    assert request(app.port, "GET", "/api/alerts").status == 500

    def unavailable(*args, **kwargs):
        raise StoreUnavailable("no store")

    monkeypatch.setattr(app.db, "select", unavailable)
    assert request(app.port, "GET", "/api/alerts").status == 503
    monkeypatch.setattr(app.db, "health", lambda: None)
    assert request(app.port, "GET", "/health").status == 503
    assert request(app.port, "GET", "/no-such-path").status == 404
    scrape = Scrape(app.port)
    assert scrape.errors("GET", "/api/alerts") == 2
    assert scrape.errors("GET", "/health") == 1
    assert scrape.requests("GET", "/api/alerts", 500) == 1 and scrape.requests("GET", "/api/alerts", 503) == 1
    assert scrape.errors("GET", "unmatched") == 0
    assert scrape.value("claude_daemon_http_request_duration_seconds_count", method="GET", route="/api/alerts") == 2


def test_requests_refused_before_routing_are_counted_with_a_bounded_method(app):
    with socket.create_connection(("127.0.0.1", app.port), timeout=5) as sock:
        sock.sendall(b"BREW /pot HTTP/1.0\r\n\r\n")  # http.server answers itself (501, sent as 405)
        assert b" 405 " in sock.recv(4096).split(b"\r\n", 1)[0]
    scrape = Scrape(app.port)
    assert scrape.requests("other", "unmatched", 405) == 1
    assert all(labels["method"] != "BREW" for labels in scrape.labelsets("claude_daemon_http_requests_total"))


def test_each_app_has_a_registry_of_its_own(tmp_path, start_app):
    first = start_app(sqlite_config(tmp_path, "a.db"))
    second = start_app(sqlite_config(tmp_path, "b.db"))
    assert first.metrics.registry is not second.metrics.registry
    assert request(first.port, "GET", "/health").status == 200
    assert Scrape(first.port).requests("GET", "/health", 200) == 1
    assert Scrape(second.port).requests("GET", "/health", 200) == 0


def test_the_database_mode_flips_to_sqlite_while_postgresql_is_down(pg, pg_server, tmp_path, start_app):
    app = start_app(make_config(pg.env(DATABASE_PATH=tmp_path / "f.db")))
    scrape = Scrape(app.port)
    assert scrape.value("claude_daemon_database_mode", mode="postgresql") == 1
    assert scrape.value("claude_daemon_database_mode", mode="sqlite") == 0
    assert scrape.value("claude_daemon_pending_sync") == 0
    pg_server.pause()
    try:
        assert request(app.port, "POST", "/api/alerts", {"id": "m-1", "level": "error", "title": "x"}).status == 201
        scrape = Scrape(app.port)
        assert scrape.value("claude_daemon_database_mode", mode="sqlite") == 1
        assert scrape.value("claude_daemon_database_mode", mode="postgresql") == 0
        health = request(app.port, "GET", "/health").json
        assert health["database"] == "sqlite" and health["pending_sync"] == 1
        assert scrape.value("claude_daemon_pending_sync") == 1
    finally:
        pg_server.resume()
    wait_for(lambda: Scrape(app.port).value("claude_daemon_database_mode", mode="postgresql") == 1, timeout=10,
             message="the mode gauge back on postgresql")
    scrape = Scrape(app.port)
    assert scrape.value("claude_daemon_database_mode", mode="sqlite") == 0
    assert scrape.value("claude_daemon_pending_sync") == 0 == request(app.port, "GET", "/health").json["pending_sync"]


def test_pending_sync_is_the_value_health_reports(pg, tmp_path, start_app):
    # PostgreSQL at a port nothing listens on: the fallback from the start.
    app = start_app(make_config(pg.env(DATABASE_PATH=tmp_path / "f.db", DB_PORT=free_port())))
    for i in range(3):
        assert request(app.port, "POST", "/api/alerts", {"id": f"p-{i}", "level": "info", "title": "t"}).status == 201
    assert request(app.port, "POST", "/api/alerts/p-0/acknowledge").status == 200
    health = request(app.port, "GET", "/health").json
    scrape = Scrape(app.port)
    assert health["pending_sync"] == 4 == scrape.value("claude_daemon_pending_sync")
    assert scrape.value("claude_daemon_database_mode", mode="sqlite") == 1


def test_pool_gauges_follow_the_connections(pg, tmp_path, start_app):
    app = start_app(make_config(pg.env(DATABASE_PATH=tmp_path / "f.db", DB_POOL_MAX=1, DB_CONNECT_TIMEOUT=10)))
    assert request(app.port, "GET", "/api/alerts").status == 200  # leaves its connection idle in the pool
    scrape = Scrape(app.port)
    assert scrape.value("claude_daemon_pool_connections_in_use") == 0
    assert scrape.value("claude_daemon_pool_connections_idle") == 1
    assert scrape.value("claude_daemon_pool_waiting") == 0
    pool = app.db.pg.pool
    held = pool.acquire()  # the only connection (DB_POOL_MAX=1)
    replies = []
    blocked = threading.Thread(target=lambda: replies.append(request(app.port, "GET", "/api/predictions")))
    try:
        blocked.start()
        wait_for(lambda: Scrape(app.port).value("claude_daemon_pool_waiting") == 1, timeout=8,
                 message="a request waiting for the pool")
        scrape = Scrape(app.port)  # a scrape needs no connection: it answers while the pool is exhausted
        assert scrape.value("claude_daemon_pool_connections_in_use") == 1
        assert scrape.value("claude_daemon_pool_connections_idle") == 0
    finally:
        pool.release(held)
        blocked.join(timeout=15)
    assert replies and replies[0].status == 200
    scrape = Scrape(app.port)
    assert (scrape.value("claude_daemon_pool_waiting"), scrape.value("claude_daemon_pool_connections_in_use"),
            scrape.value("claude_daemon_pool_connections_idle")) == (0, 0, 1)


class FakeConn:
    closed = False

    def close(self):
        self.closed = True


def test_the_pools_waiting_count_drops_after_a_timeout():
    pool = Pool(FakeConn, maxconn=1, idle_timeout=60, acquire_timeout=0.3)
    held = pool.acquire()
    errors = []

    def wait():
        try:
            pool.acquire()
        except PoolTimeout as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_for(lambda: pool.stats()["waiting"] == 1, timeout=5, interval=0.01, message="a waiter")
    waiter.join(timeout=5)
    assert len(errors) == 1 and pool.stats()["waiting"] == 0
    pool.release(held)
    assert pool.stats() == {"size": 1, "idle": 1, "in_use": 0, "waiting": 0, "max": 1, "peak": 1, "created": 1}


def test_cache_hits_and_misses_and_redis_up(redis_clean, tmp_path, start_app):
    app = start_app(sqlite_config(tmp_path, REDIS_URL=redis_clean.url))
    scrape = Scrape(app.port)
    assert scrape.value("claude_daemon_redis_up") == 1
    assert (scrape.value("claude_daemon_cache_hits_total"), scrape.value("claude_daemon_cache_misses_total")) == (0, 0)
    assert request(app.port, "GET", "/api/alerts").cache == "MISS"
    assert request(app.port, "GET", "/api/alerts").cache == "HIT"
    assert request(app.port, "GET", "/api/alerts").cache == "HIT"
    assert request(app.port, "GET", "/api/usage").cache == "MISS"
    scrape = Scrape(app.port)
    assert (scrape.value("claude_daemon_cache_hits_total"), scrape.value("claude_daemon_cache_misses_total")) == (2, 2)
    redis_clean.freeze()
    try:
        wait_for(lambda: Scrape(app.port).value("claude_daemon_redis_up") == 0, timeout=5, message="redis_up 0")
        assert request(app.port, "GET", "/api/alerts").cache == "BYPASS"  # counted as neither
        scrape = Scrape(app.port)
        assert (scrape.value("claude_daemon_cache_hits_total"),
                scrape.value("claude_daemon_cache_misses_total")) == (2, 2)
    finally:
        redis_clean.thaw()
    wait_for(lambda: Scrape(app.port).value("claude_daemon_redis_up") == 1, timeout=5, message="redis_up 1")


def test_metrics_enabled_0_answers_404(tmp_path, start_app):
    app = start_app(sqlite_config(tmp_path, METRICS_ENABLED="0"))
    reply = request(app.port, "GET", "/metrics")
    assert reply.status == 404 and reply.json == {"error": "not found"}
    assert request(app.port, "GET", "/health").status == 200  # the rest is served as before


@pytest.mark.parametrize("raw,expected", [(None, True), ("", True), ("1", True), ("true", True), ("0", False),
                                          ("off", False), ("FALSE", False)])
def test_metrics_enabled_is_parsed_like_the_other_booleans(raw, expected):
    env = {} if raw is None else {"METRICS_ENABLED": raw}
    assert config.load(env).metrics_enabled is expected


def test_a_bad_metrics_enabled_is_refused_naming_the_variable():
    with pytest.raises(config.ConfigError, match=r"^METRICS_ENABLED: expected true/false .* got 'maybe'$"):
        config.load({"METRICS_ENABLED": "maybe"})
    done = subprocess.run([sys.executable, "-m", "claude_daemon"], capture_output=True, text=True, timeout=10,
                          check=False, cwd=str(DAEMON_DIR),
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(DAEMON_DIR),
                               "DB_TYPE": "sqlite", "DATABASE_PATH": "/tmp/unused.db", "METRICS_ENABLED": "2"})
    assert done.returncode == 2
    assert "invalid configuration: METRICS_ENABLED: expected true/false" in done.stderr
