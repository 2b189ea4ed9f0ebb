"""Prometheus metrics for GET /metrics, with python3-prometheus-client.

Independent of the HTTP server: the server reports each request through
Metrics.observe_request() and serves Metrics.render() on GET /metrics.

The metric names and labels are a contract (alert rules are written on
them); daemon/README.md lists them. Each Metrics has a CollectorRegistry of
its own, never the library's global one, so that several apps can live in
one process (the tests start many).

Request metrics are counted as requests are answered. Everything else is
read when Prometheus scrapes, from the same objects /health asks, so a value
is never older than the scrape:

  claude_daemon_database_mode{mode}     Database.current()
  claude_daemon_pending_sync            Database.pending_sync() (the SQLite outbox)
  claude_daemon_pool_*                  Pool.stats() of the PostgreSQL store
  claude_daemon_cache_{hits,misses}_total   Cache.stats()
  claude_daemon_redis_up                Cache.status()
"""

from __future__ import annotations

import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("claude_daemon.metrics")

# A small JSON API: most answers take milliseconds, a slow query or a pool
# wait (DB_CONNECT_TIMEOUT) takes seconds; REQUEST_TIMEOUT is 10 s.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The method label takes these values and "other": a client cannot add series
# by sending made-up methods.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no route template matched
MODES = ("postgresql", "sqlite")


class Metrics:
    def __init__(self, db, cache):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "claude_daemon_http_requests_total", "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"), registry=self.registry)
        self.errors = Counter(
            "claude_daemon_http_request_errors_total", "HTTP requests answered with a status of 500 or more.",
            ("method", "route"), registry=self.registry)
        self.duration = Histogram(
            "claude_daemon_http_request_duration_seconds",
            "Time from the parsed request to the response ready to send, in seconds.",
            ("method", "route"), buckets=BUCKETS, registry=self.registry)
        self.registry.register(StateCollector(db, cache))

    def declare_routes(self, routes):
        """Start the error counter at 0 for each (method, template): rate() and increase()
        then see a route's first error, which they miss on a series born at 1."""
        for method, template in routes:
            self.errors.labels(method, template)

    def observe_request(self, method, route, status, seconds):
        """One answered request. route: its template (e.g. /api/alerts/{id}/acknowledge), None if none matched."""
        method = method if method in METHODS else "other"
        route = route or UNMATCHED
        self.requests.labels(method, route, str(status)).inc()
        if status >= 500:
            self.errors.labels(method, route).inc()
        self.duration.labels(method, route).observe(max(seconds, 0.0))

    def render(self):
        """(body, content type) of the text exposition format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class StateCollector:
    """The gauges and counters read from the daemon's state at scrape time."""

    def __init__(self, db, cache):
        self.db = db
        self.cache = cache

    @staticmethod
    def _families():
        return {
            "mode": GaugeMetricFamily(
                "claude_daemon_database_mode",
                "1 for the store the daemon serves from (postgresql, or sqlite: DB_TYPE=sqlite or the fallback), "
                "0 for the other.", labels=("mode",)),
            "pending": GaugeMetricFamily(
                "claude_daemon_pending_sync",
                "Writes in the SQLite outbox waiting to be copied to PostgreSQL (/health's pending_sync)."),
            "in_use": GaugeMetricFamily(
                "claude_daemon_pool_connections_in_use",
                "PostgreSQL pool connections handed out or being opened (0 with DB_TYPE=sqlite)."),
            "idle": GaugeMetricFamily(
                "claude_daemon_pool_connections_idle",
                "PostgreSQL pool connections open and free (0 with DB_TYPE=sqlite)."),
            "waiting": GaugeMetricFamily(
                "claude_daemon_pool_waiting",
                "Requests waiting for a PostgreSQL pool connection because DB_POOL_MAX are in use."),
            "hits": CounterMetricFamily(
                "claude_daemon_cache_hits_total", "Cached reads answered from Redis."),
            "misses": CounterMetricFamily(
                "claude_daemon_cache_misses_total",
                "Cached reads Redis had no entry for, loaded from the database (reads bypassing Redis are not "
                "counted)."),
            "redis": GaugeMetricFamily(
                "claude_daemon_redis_up", "1 when Redis answers (/health's redis is ok), else 0 (down or disabled)."),
        }

    def describe(self):
        return list(self._families().values())

    def collect(self):
        families = self._families()
        # A source that fails leaves its sample out (and is logged) rather than
        # failing the whole scrape.
        mode = self._read("database mode", self.db.current)
        if mode is not None:
            for name in MODES:
                families["mode"].add_metric([name], 1.0 if mode == name else 0.0)
        pending = self._read("pending sync", self.db.pending_sync)
        if pending is not None:  # None: the SQLite file is unreadable
            families["pending"].add_metric([], pending)
        pool = self._read("pool stats", self._pool_stats)
        if pool is not None:
            families["in_use"].add_metric([], pool["in_use"])
            families["idle"].add_metric([], pool["idle"])
            families["waiting"].add_metric([], pool["waiting"])
        cache = self._read("cache stats", self.cache.stats)
        if cache is not None:
            families["hits"].add_metric([], cache["hits"])
            families["misses"].add_metric([], cache["misses"])
        redis = self._read("redis status", self.cache.status)
        if redis is not None:
            families["redis"].add_metric([], 1.0 if redis == "ok" else 0.0)
        return list(families.values())

    def _pool_stats(self):
        pg = self.db.pg
        if pg is None:  # DB_TYPE=sqlite: no pool
            return {"in_use": 0, "idle": 0, "waiting": 0}
        return pg.pool.stats()

    @staticmethod
    def _read(what, source):
        try:
            return source()
        except Exception:  # one broken source must not hide the others
            log.exception("metrics: cannot read %s", what)
            return None
