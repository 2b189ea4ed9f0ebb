"""The connection pool: its limit, its wait, idle reaping and broken connections,
against the real server (counted in pg_stat_activity) and with fake connections."""

import threading
import time

import pytest

from claude_daemon.pool import Pool, PoolTimeout
from claude_daemon.stores import PgStore

from .daemon_helpers import APP, make_config, wait_for


def server_connections(pg_db):
    return pg_db.server.psql(
        f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{APP}' AND datname = '{pg_db.name}' "
        "AND application_name = 'claude-daemon'").strip()


@pytest.fixture
def store(pg_db):
    stores = []

    def make(**env):
        s = PgStore(make_config(pg_db.env(**env)))
        stores.append(s)
        return s

    yield make
    for s in stores:
        s.close()


def test_never_more_than_db_pool_max_connections(store, pg_db):
    s = store(DB_POOL_MAX=3)
    seen = []
    errors = []

    def work():
        try:
            for _ in range(4):
                s.query("SELECT pg_sleep(0.02)")
                seen.append(int(server_connections(pg_db)) if len(seen) % 5 == 0 else None)
        except Exception as exc:  # collected, asserted empty by the test
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert s.pool.peak == 3
    assert max(x for x in seen if x is not None) <= 3
    assert s.pool.stats()["size"] == 3


def test_a_full_pool_waits_then_times_out(store):
    s = store(DB_POOL_MAX=2, DB_CONNECT_TIMEOUT=1)
    held = [s.pool.acquire(), s.pool.acquire()]
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        s.pool.acquire()
    assert 0.9 <= time.monotonic() - started < 3
    # A connection released while someone waits goes to the waiter.
    threading.Timer(0.2, s.pool.release, args=(held.pop(),)).start()
    conn = s.pool.acquire()
    s.pool.release(conn)
    s.pool.release(held.pop())
    assert s.pool.stats()["in_use"] == 0


def test_idle_connections_are_closed_after_db_idle_timeout(store, pg_db):
    s = store(DB_POOL_MAX=4, DB_IDLE_TIMEOUT=0.3)
    s.pool.start_reaper()
    conns = [s.pool.acquire() for _ in range(3)]
    # Counted while held: once released, the reaper may close them within 0.3 s
    # (before a count on a busy machine).
    assert server_connections(pg_db) == "3"
    for c in conns:
        s.pool.release(c)
    wait_for(lambda: s.pool.stats()["size"] == 0, timeout=5, message="idle connections reaped")
    assert all(c.closed for c in conns)
    wait_for(lambda: server_connections(pg_db) == "0", timeout=5, message="server sees them gone")
    s.ping()  # and a new one is opened on demand
    assert s.pool.stats()["size"] == 1


class FakeConn:
    def __init__(self, n):
        self.n = n
        self.closed = 0

    def close(self):
        self.closed = 1


def test_broken_and_closed_connections_are_never_reused():
    made = []

    def connect():
        made.append(FakeConn(len(made)))
        return made[-1]

    pool = Pool(connect, maxconn=2, idle_timeout=60, acquire_timeout=0.1)
    a = pool.acquire()
    pool.release(a, discard=True)  # broke while in use
    assert a.closed and pool.stats()["size"] == 0
    b = pool.acquire()
    pool.release(b)
    b.closed = 1  # closed behind the pool's back (server restart)
    c = pool.acquire()
    assert c is not b and c.n == 2
    pool.release(c)
    assert pool.discard_idle() == 1 and pool.stats()["size"] == 0


def test_a_failing_connect_frees_its_slot():
    calls = []

    def connect():
        calls.append(1)
        raise OSError("refused")

    pool = Pool(connect, maxconn=1, idle_timeout=60, acquire_timeout=0.1)
    for _ in range(3):
        with pytest.raises(OSError):
            pool.acquire()
    assert len(calls) == 3 and pool.stats()["size"] == 0
