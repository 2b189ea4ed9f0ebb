"""Read cache in Redis, invalidated on every write.

Keys (all under "claude:", the only pattern the daemon's Redis ACL allows):
  claude:ver:<table>                      a counter, INCR'd by every write to the table
  claude:q:<table>:<version>:<digest>     a cached response, SET with EX=CACHE_TTL

A read first GETs the table's version and looks for the response under that
version; a write INCRs the version, so every response cached before it
becomes unreachable at once (and expires by itself) without KEYS or SCAN.
Only PING GET SET INCR are used (the ACL also allows DEL UNLINK EXPIRE EXISTS).

With a rediss:// URL the connection is TLS and the server's certificate is
verified, chain and name (the URL's host, which may be an address): against
the CA of REDIS_CA_FILE, or the system's trust store without one. A server
that fails verification is "down" like one that does not answer.

Redis is optional: with REDIS_URL empty the cache is "disabled"; when it
does not answer within 0.2 s it is "down" for RETRY_AFTER seconds, reads go
straight to the database (X-Cache: BYPASS) and writes remember which tables
to invalidate, which is done first thing once Redis answers again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.parse

import redis

log = logging.getLogger("claude_daemon.cache")

SOCKET_TIMEOUT = 0.2
RETRY_AFTER = 1.0
HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"


def tls_options(url, ca_file=None):
    """redis-py's keywords for the URL: for rediss://, verify the certificate's chain
    (ca_file, or the system's trust store when None) and that it names the URL's host;
    none for redis:// (a plain connection takes no TLS keywords)."""
    if urllib.parse.urlsplit(url).scheme != "rediss":
        if ca_file:
            raise ValueError("a CA file needs a rediss:// URL")
        return {}
    return {"ssl_cert_reqs": "required", "ssl_check_hostname": True, "ssl_ca_certs": ca_file}


class Cache:
    def __init__(self, url, ttl, prefix="claude:", client=None, clock=time.monotonic, password=None, ca_file=None):
        """password: for the URL's user when the URL carries none (REDIS_PASSWORD_FILE).
        ca_file: the CA a rediss:// server is verified against (REDIS_CA_FILE); None = the system's."""
        self.ttl = ttl
        self.prefix = prefix
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._was_down = False
        self._pending = set()  # tables whose invalidation has not reached Redis yet
        self._hits = 0  # get_or_load answers found in Redis
        self._misses = 0  # ... asked of Redis but loaded from the database (BYPASS is neither)
        self._errors = (redis.RedisError, OSError)
        self.client = client
        if client is None and url:
            # No retries inside redis-py: one slow answer is enough to bypass.
            # A password in the URL would override the keyword (config.py
            # refuses to have both); the user is the URL's either way.
            self.client = redis.Redis.from_url(
                url,
                password=password,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                retry_on_timeout=False,
                health_check_interval=0,
                **tls_options(url, ca_file),
            )

    @property
    def enabled(self):
        return self.client is not None

    # -- availability --------------------------------------------------------------------
    def _available(self):
        return self.enabled and self._clock() >= self._down_until

    def _failed(self, exc):
        with self._lock:
            self._down_until = self._clock() + RETRY_AFTER
            first = not self._was_down
            self._was_down = True
        if first:
            log.warning("redis unavailable (%s: %s); serving uncached", type(exc).__name__, exc)

    def _succeeded(self):
        if self._was_down:
            with self._lock:
                self._was_down = False
            log.info("redis available again")

    def status(self):
        """'disabled', 'ok' or 'down' (a live PING unless Redis failed within RETRY_AFTER)."""
        if not self.enabled:
            return "disabled"
        if not self._available():
            return "down"
        try:
            self.client.ping()
        except self._errors as exc:
            self._failed(exc)
            return "down"
        self._succeeded()
        return "ok"

    # -- reads ---------------------------------------------------------------------------
    def _flush_pending(self):
        with self._lock:
            pending = sorted(self._pending)
        for table in pending:
            # Not client.incr(): redis-py sends that as INCRBY, which the ACL refuses.
            self.client.execute_command("INCR", f"{self.prefix}ver:{table}")
            with self._lock:
                self._pending.discard(table)

    def get_or_load(self, table, key_parts, loader):
        """(value, 'HIT'|'MISS'|'BYPASS'); value must be JSON-serialisable."""
        if not self._available():
            return loader(), BYPASS
        digest = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:32]
        try:
            self._flush_pending()
            version = self.client.get(f"{self.prefix}ver:{table}")
            version = version.decode() if version is not None else "0"
            key = f"{self.prefix}q:{table}:{version}:{digest}"
            cached = self.client.get(key)
        except self._errors as exc:
            self._failed(exc)
            return loader(), BYPASS
        self._succeeded()
        if cached is not None:
            try:
                value = json.loads(cached)
            except ValueError:
                log.warning("unreadable cache entry %s ignored", key)
            else:
                with self._lock:
                    self._hits += 1
                return value, HIT
        with self._lock:
            self._misses += 1
        # The version was read before the database: if a write lands meanwhile,
        # this (possibly older) result is stored under the old version, which
        # no reader asks for any more.
        value = loader()
        try:
            self.client.set(key, json.dumps(value, separators=(",", ":")), ex=self.ttl)
        except self._errors as exc:
            self._failed(exc)
        return value, MISS

    def stats(self):
        """{'hits': n, 'misses': n} since the start: reads Redis answered, with an entry or
        without one (then loaded from the database). Bypassed reads count in neither."""
        with self._lock:
            return {"hits": self._hits, "misses": self._misses}

    # -- writes --------------------------------------------------------------------------
    def invalidate(self, table):
        if not self.enabled:
            return
        with self._lock:
            self._pending.add(table)
        if not self._available():
            return
        try:
            self._flush_pending()
        except self._errors as exc:
            self._failed(exc)
        else:
            self._succeeded()

    def close(self):
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # closing a client whose server is gone
                pass
