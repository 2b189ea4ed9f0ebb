"""A small thread-safe connection pool (the guide's pg.Pool settings).

- at most `maxconn` connections exist at once (idle + in use);
- acquire() waits up to `acquire_timeout` seconds for one to be free, like
  node-postgres' connectionTimeoutMillis, then raises PoolTimeout;
- connections idle for longer than `idle_timeout` seconds are closed, by a
  reaper thread and whenever the pool is used;
- a connection that broke while in use is discarded, never handed out again.

Independent of psycopg2: `connect` is any callable returning an object with
close() and a `closed` attribute, and `reset` (optional) prepares a returned
connection for reuse or raises to have it discarded.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

log = logging.getLogger("claude_daemon.pool")


class PoolTimeout(Exception):
    """No connection became free within the acquire timeout."""


class PoolClosed(Exception):
    """The pool has been closed."""


class Pool:
    def __init__(self, connect, maxconn, idle_timeout, acquire_timeout, reset=None, clock=time.monotonic):
        if maxconn < 1:
            raise ValueError("maxconn must be >= 1")
        self._connect = connect
        self._reset = reset
        self.maxconn = maxconn
        self.idle_timeout = idle_timeout
        self.acquire_timeout = acquire_timeout
        self._clock = clock
        self._cond = threading.Condition()
        self._idle = []  # [(conn, released_at)], most recently used last
        self._size = 0  # idle + in use + being created
        self._waiting = 0  # acquire() calls waiting for a connection to be free
        self._closed = False
        self._reaper = None
        self._stop = threading.Event()
        self.peak = 0  # the most connections that existed at once
        self.created = 0

    # -- acquiring -----------------------------------------------------------------------
    def acquire(self):
        deadline = self._clock() + self.acquire_timeout
        with self._cond:
            while True:
                if self._closed:
                    raise PoolClosed("pool is closed")
                self._reap_locked()
                while self._idle:
                    conn, _ = self._idle.pop()
                    if not getattr(conn, "closed", False):
                        return conn
                    self._size -= 1  # closed behind our back (server restart)
                if self._size < self.maxconn:
                    self._size += 1
                    self.peak = max(self.peak, self._size)
                    break
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise PoolTimeout(f"no free database connection within {self.acquire_timeout:g} s "
                                      f"(all {self.maxconn} in use)")
                self._waiting += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1
        try:
            conn = self._connect()
        except BaseException:
            with self._cond:
                self._size -= 1
                self._cond.notify()
            raise
        with self._cond:
            self.created += 1
        return conn

    def release(self, conn, discard=False):
        if not discard and not getattr(conn, "closed", False) and self._reset is not None:
            try:
                self._reset(conn)
            except Exception:  # a connection that cannot be reset is dropped
                discard = True
        with self._cond:
            if discard or self._closed or getattr(conn, "closed", False):
                self._size -= 1
                self._cond.notify()
                to_close = conn
            else:
                self._idle.append((conn, self._clock()))
                self._cond.notify()
                to_close = None
        if to_close is not None:
            _close_quietly(to_close)

    @contextlib.contextmanager
    def connection(self):
        conn = self.acquire()
        try:
            yield conn
        except BaseException:
            self.release(conn, discard=getattr(conn, "closed", False))
            raise
        self.release(conn)

    # -- idle connections ----------------------------------------------------------------
    def _reap_locked(self, older_than=None):
        limit = self.idle_timeout if older_than is None else older_than
        now = self._clock()
        keep, drop = [], []
        for conn, since in self._idle:
            (drop if now - since >= limit else keep).append((conn, since))
        if drop:
            self._idle = keep
            self._size -= len(drop)
            self._cond.notify(len(drop))
        return [c for c, _ in drop]

    def reap(self):
        """Close connections idle for longer than idle_timeout; return how many were closed."""
        with self._cond:
            dropped = self._reap_locked()
        for conn in dropped:
            _close_quietly(conn)
        if dropped:
            log.debug("closed %d idle connection(s)", len(dropped))
        return len(dropped)

    def discard_idle(self):
        """Close every idle connection (after the server went away they are all dead)."""
        with self._cond:
            dropped = self._reap_locked(older_than=-1)
        for conn in dropped:
            _close_quietly(conn)
        return len(dropped)

    def start_reaper(self, interval=None):
        if self._reaper is not None:
            return
        interval = interval or max(0.05, min(self.idle_timeout / 2, 5.0))

        def loop():
            while not self._stop.wait(interval):
                try:
                    self.reap()
                except Exception:  # the reaper thread must outlive any one failure
                    log.exception("idle reaper failed")

        self._reaper = threading.Thread(target=loop, name="pool-reaper", daemon=True)
        self._reaper.start()

    def close(self):
        self._stop.set()
        with self._cond:
            self._closed = True
            idle = [c for c, _ in self._idle]
            self._size -= len(idle)
            self._idle = []
            self._cond.notify_all()
        for conn in idle:
            _close_quietly(conn)
        if self._reaper is not None:
            self._reaper.join(timeout=5)

    def stats(self):
        """A consistent snapshot (taken under the pool's lock). in_use counts the
        connections handed out and those being opened; waiting, the acquire()
        calls blocked because all `maxconn` are in use."""
        with self._cond:
            return {"size": self._size, "idle": len(self._idle), "in_use": self._size - len(self._idle),
                    "waiting": self._waiting, "max": self.maxconn, "peak": self.peak, "created": self.created}


def _close_quietly(conn):
    try:
        conn.close()
    except Exception:  # closing a connection that is already broken
        pass
