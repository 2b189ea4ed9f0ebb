"""Several database hosts (DB_HOST=a,b): the daemon writes where writes are taken.

Two real servers stand for the members of a replicated cluster; the one that
is not the primary is made read-only (default_transaction_read_only, which
libpq's target_session_attrs=read-write checks, as it checks a hot standby).
Then the roles swap, as a failover or switchover swaps them, while the daemon
holds pooled connections to the former primary.
"""

import time

from .daemon_helpers import APP, APP_PASSWORD, make_config, request


def _read_only(db, on):
    db.server.psql(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}")
    db.server.psql("SELECT pg_reload_conf()")


def _env(first, second, tmp_path):
    return {
        "DB_TYPE": "postgresql",
        "DB_HOST": "127.0.0.1,127.0.0.1",
        "DB_PORT": f"{first.server.port},{second.server.port}",
        "DB_NAME": first.name,
        "DB_USER": APP,
        "DB_PASSWORD": APP_PASSWORD,
        "DATABASE_PATH": str(tmp_path / "fallback.db"),
    }


def _stored(db, alert_id):
    return db.count("alerts", f"id = '{alert_id}'")


def test_writes_reach_the_read_write_host_and_follow_it_when_it_moves(pg_two_servers, tmp_path, start_app):
    first, second = pg_two_servers
    _read_only(first, True)
    _read_only(second, False)
    app = start_app(make_config(_env(first, second, tmp_path)))
    assert app.db.cfg.db_target_session_attrs == "read-write"

    # The first host in the list is read-only: libpq passes over it.
    created = request(app.port, "POST", "/api/alerts", {"id": "multihost-1", "level": "info", "title": "one"})
    assert created.status == 201, created.body
    assert (_stored(first, "multihost-1"), _stored(second, "multihost-1")) == (0, 1)
    # Reads work on the same connections.
    assert request(app.port, "GET", "/api/alerts").status == 200

    # The primary moves: the pooled connections now lead to a read-only server.
    _read_only(second, True)
    _read_only(first, False)
    for n in range(2, 6):
        created = request(app.port, "POST", "/api/alerts", {"id": f"multihost-{n}", "level": "info", "title": "n"})
        assert created.status == 201, created.body
        assert (_stored(first, f"multihost-{n}"), _stored(second, f"multihost-{n}")) == (1, 0)
    # Straight to the new primary, not through the SQLite fallback.
    health = request(app.port, "GET", "/health").json
    assert health["database"] == "postgresql" and health["pending_sync"] == 0, health


def test_no_read_write_host_means_the_fallback_keeps_the_write(pg_two_servers, tmp_path, start_app):
    first, second = pg_two_servers
    _read_only(first, True)
    _read_only(second, True)
    try:
        app = start_app(make_config(_env(first, second, tmp_path)))
        created = request(app.port, "POST", "/api/alerts", {"id": "multihost-none", "level": "info", "title": "x"})
        # Accepted into the SQLite outbox (the daemon's fallback), in neither server yet.
        assert created.status == 201, created.body
        assert (_stored(first, "multihost-none"), _stored(second, "multihost-none")) == (0, 0)
        assert request(app.port, "GET", "/health").json["pending_sync"] >= 1
    finally:
        _read_only(second, False)
    # A primary again: the reconciliation copies the write there, once.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _stored(second, "multihost-none") == 0:
        time.sleep(0.3)
    assert (_stored(first, "multihost-none"), _stored(second, "multihost-none")) == (0, 1)
