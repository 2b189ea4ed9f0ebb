"""The SQLite fallback and the exactly-once copy back into PostgreSQL.

PostgreSQL is made unreachable for real: the session's cluster is stopped
(pg_paused), or the daemon is pointed at a port nothing listens on.
"""

import datetime as dt
import json
import os
import signal
import sqlite3
import uuid

import psycopg2
import pytest

from claude_daemon import fallback
from claude_daemon.errors import CommitInDoubt

from .daemon_helpers import APP, APP_PASSWORD, free_port, make_config, request, wait_for

T0 = dt.datetime(2024, 6, 1, 8, 0, 0)


class SimulatedCrash(BaseException):
    """Stands for the process dying at that exact point."""


def pg_rows(pg, sql):
    conn = psycopg2.connect(host="127.0.0.1", port=pg.server.port, dbname=pg.name, user=APP, password=APP_PASSWORD)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def outbox(path):
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM fallback_outbox").fetchone()[0]


def unreachable_env(pg, path):
    """Same database settings, but a port nothing listens on."""
    return pg.env(DATABASE_PATH=path, DB_PORT=free_port())


def write_during_outage(db, n_usage=3):
    """Typical fallback traffic: alerts (one acknowledged) and usage rows, one of them updated."""
    db.insert("alerts", {"id": "fb-1", "level": "error", "title": "PG down", "timestamp": T0,
                         "metadata": {"src": "fallback"}})
    db.insert("alerts", {"id": "fb-2", "level": "info", "title": "still here", "timestamp": T0})
    assert db.update("alerts", {"acknowledged": True}, {"id": "fb-1"})
    rows = [db.insert("usage_data", {"timestamp": T0 + dt.timedelta(minutes=i), "requests_count": 100 + i})
            for i in range(n_usage)]
    assert db.update("usage_data", {"error_count": 7}, {"id": rows[0]["id"]})
    db.insert("predictions", {"date": "2024-06-02", "predicted_tokens": 5000, "confidence": "0.9"})
    return 2 + 1 + n_usage + 1 + 1  # outbox entries


def assert_copied_once(pg, n_usage=3, pg_usage_before=0):
    alerts = pg_rows(pg, "SELECT id, acknowledged, metadata FROM alerts WHERE id LIKE 'fb-%' ORDER BY id")
    assert alerts == [("fb-1", True, {"src": "fallback"}), ("fb-2", False, None)]
    usage = pg_rows(pg, "SELECT requests_count, error_count FROM usage_data WHERE requests_count >= 100 "
                        "ORDER BY timestamp")
    assert usage == [(100, 7)] + [(100 + i, 0) for i in range(1, n_usage)]
    ids = [r[0] for r in pg_rows(pg, "SELECT id FROM usage_data ORDER BY id")]
    assert ids == list(range(1, pg_usage_before + n_usage + 1))  # PostgreSQL's own ids, no gap, no reuse
    assert pg_rows(pg, "SELECT count(*) FROM predictions") == [(1,)]


def test_unreachable_at_start_serves_sqlite_then_copies_everything_once(pg, pg_paused, tmp_path, databases):
    path = tmp_path / "fallback.db"
    db = databases(make_config(pg.env(DATABASE_PATH=path)))  # the cluster is stopped
    assert db.mode == "sqlite" and db.health() == "sqlite"
    entries = write_during_outage(db)
    assert [a["id"] for a in db.select("alerts", order_by="id")] == ["fb-1", "fb-2"]  # reads from SQLite
    assert db.pending_sync() == entries
    assert db.reconcile_once() is False  # still down: nothing changes
    pg_paused()  # resume
    assert db.reconcile_once() is True
    assert db.mode == "postgresql" and db.health() == "postgresql" and db.pending_sync() == 0
    assert_copied_once(pg)
    log = pg_rows(pg, "SELECT operation, outcome, count(*) FROM fallback_sync_log GROUP BY 1, 2 ORDER BY 1")
    assert log == [("insert", "applied", 6), ("update", "applied", 2)]


def test_outage_mid_run_is_survived_and_healed_by_the_background_probe(pg, pg_server, tmp_path, databases):
    pg.psql("INSERT INTO usage_data (requests_count) VALUES (1), (2)")  # PostgreSQL's ids 1 and 2 are taken
    db = databases(make_config(pg.env(DATABASE_PATH=tmp_path / "f.db")), background=True)
    db.insert("alerts", {"id": "before", "level": "info", "title": "written to PG", "timestamp": T0})
    assert db.mode == "postgresql"
    pg_server.pause()
    try:
        entries = write_during_outage(db)  # the first write finds PostgreSQL gone
        assert db.mode == "sqlite" and db.pending_sync() == entries
        assert db.update("alerts", {"acknowledged": True}, {"id": "before"}) == []  # not in the SQLite file
    finally:
        pg_server.resume()
    wait_for(lambda: db.mode == "postgresql", timeout=10, message="switch back to postgresql")
    assert db.pending_sync() == 0
    assert_copied_once(pg, pg_usage_before=2)
    assert pg_rows(pg, "SELECT acknowledged FROM alerts WHERE id = 'before'") == [(False,)]
    db.insert("alerts", {"id": "after", "level": "info", "title": "back on PG", "timestamp": T0})
    assert pg_rows(pg, "SELECT count(*) FROM alerts WHERE id = 'after'") == [(1,)]


@pytest.mark.parametrize("crash_on_batch", [1, 2])
def test_crash_between_postgresql_commit_and_outbox_delete(pg, tmp_path, databases, monkeypatch, crash_on_batch):
    path = tmp_path / "f.db"
    writer = databases(make_config(unreachable_env(pg, path)))
    entries = write_during_outage(writer)
    writer.close()
    monkeypatch.setattr(fallback, "BATCH_SIZE", 3)  # several batches, to crash in the middle of the copy
    batches = []

    def crash(batch):
        batches.append(len(batch))
        if len(batches) == crash_on_batch:
            raise SimulatedCrash()

    first = databases(make_config(pg.env(DATABASE_PATH=path)), start=False)
    first.after_pg_commit = crash
    with pytest.raises(SimulatedCrash):
        first.start(background=False)
    # The crashed batch is committed in PostgreSQL but still in the outbox.
    copied = sum(batches)
    assert pg_rows(pg, "SELECT count(*) FROM fallback_sync_log") == [(copied,)]
    assert outbox(path) == entries - sum(batches[:-1])
    first.close()

    restarted = databases(make_config(pg.env(DATABASE_PATH=path)))  # a new process on the same file
    assert restarted.mode == "postgresql" and outbox(path) == 0
    assert_copied_once(pg)
    assert pg_rows(pg, "SELECT count(*), count(DISTINCT sync_id) FROM fallback_sync_log") == [(entries, entries)]
    assert pg_rows(pg, "SELECT DISTINCT outcome FROM fallback_sync_log") == [("applied",)]  # none re-applied
    # A third run finds nothing to do and changes nothing.
    assert restarted.reconcile_once() is True
    assert_copied_once(pg)


def test_killed_daemon_during_the_copy_loses_and_duplicates_nothing(pg, daemon_process, tmp_path, databases):
    path = f"/dev/shm/claude-daemon-test-{uuid.uuid4().hex}.db"  # tmpfs: fast fsyncs for 3000 writes
    try:
        writer = databases(make_config(unreachable_env(pg, path)))
        n = 3000
        for i in range(n):
            writer.insert("usage_data", {"timestamp": T0 + dt.timedelta(seconds=i), "requests_count": i})
        for i in range(40):
            writer.insert("alerts", {"id": f"k-{i}", "level": "warning", "title": f"alert {i}", "timestamp": T0})
            if i % 2:
                writer.update("alerts", {"acknowledged": True}, {"id": f"k-{i}"})
        entries = n + 40 + 20
        assert writer.pending_sync() == entries
        writer.close()

        env = pg.env(DATABASE_PATH=path, PORT=free_port(), RECONCILE_INTERVAL=0.2, USAGE_INTERVAL=3600)
        first = daemon_process(env)
        wait_for(lambda: pg_rows(pg, "SELECT count(*) FROM fallback_sync_log")[0][0] > 0, timeout=20,
                 interval=0.005, message="the copy to start")
        first.stop(signal.SIGKILL)
        logged = pg_rows(pg, "SELECT count(*) FROM fallback_sync_log")[0][0]
        assert 0 < logged < entries, "the daemon was not killed in the middle of the copy"
        assert outbox(path) > 0

        second = daemon_process(env)
        second.wait_healthy(database="postgresql")
        assert second.health().json["pending_sync"] == 0
        assert second.stop() == 0
        assert outbox(path) == 0
        assert pg_rows(pg, "SELECT count(*), count(DISTINCT requests_count), min(requests_count), "
                           "max(requests_count) FROM usage_data WHERE session_id IS NULL AND endpoint IS NULL "
                           "AND timestamp < '2024-06-02'") == [(n, n, 0, n - 1)]
        assert pg_rows(pg, "SELECT count(*), count(*) FILTER (WHERE acknowledged) FROM alerts") == [(40, 20)]
        assert pg_rows(pg, "SELECT count(*), count(DISTINCT sync_id) FROM fallback_sync_log "
                           "WHERE outcome = 'applied'") == [(entries, entries)]
    finally:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(path + suffix)
            except FileNotFoundError:
                pass


class FlakyCommit(psycopg2.extensions.connection):
    """A connection whose next COMMIT loses the connection, after or before the server committed."""

    mode = None  # "after" | "before" | None

    def commit(self):
        mode, FlakyCommit.mode = FlakyCommit.mode, None
        if mode == "before":
            self.close()  # the COMMIT never reaches the server
        super().commit()
        if mode == "after":
            self.close()
            raise psycopg2.OperationalError("server closed the connection unexpectedly")


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_commit_cut_off_is_copied_exactly_once(pg, tmp_path, databases, when):
    db = databases(make_config(pg.env(DATABASE_PATH=tmp_path / "f.db")), start=False)
    params = dict(db.pg._params)
    db.pg.pool._connect = lambda: psycopg2.connect(connection_factory=FlakyCommit, **params)
    db.start(background=False)
    in_pg = 1 if when == "after" else 0
    FlakyCommit.mode = when
    row = db.insert("usage_data", {"timestamp": T0, "requests_count": 42})  # answered from SQLite
    assert db.mode == "sqlite" and row["requests_count"] == 42
    assert pg_rows(pg, "SELECT count(*) FROM usage_data") == [(in_pg,)]
    assert db.reconcile_once() is True
    assert pg_rows(pg, "SELECT count(*), max(requests_count) FROM usage_data") == [(1, 42)]
    # The same for an alert (text id, so ON CONFLICT rather than a content match).
    FlakyCommit.mode = when
    db.insert("alerts", {"id": "doubt", "level": "info", "title": "t", "timestamp": T0})
    assert db.mode == "sqlite"
    assert pg_rows(pg, "SELECT count(*) FROM alerts") == [(in_pg,)]
    assert db.reconcile_once() is True
    assert pg_rows(pg, "SELECT count(*) FROM alerts") == [(1,)]
    expected = "duplicate" if when == "after" else "applied"
    assert pg_rows(pg, "SELECT DISTINCT outcome FROM fallback_sync_log") == [(expected,)]


def test_an_in_doubt_update_that_sqlite_cannot_confirm_is_reported_and_still_replayed(pg, tmp_path, databases):
    pg.psql("INSERT INTO alerts (id, level, title, timestamp) VALUES ('pg-only', 'info', 't', now())")
    db = databases(make_config(pg.env(DATABASE_PATH=tmp_path / "f.db")), start=False)
    params = dict(db.pg._params)
    db.pg.pool._connect = lambda: psycopg2.connect(connection_factory=FlakyCommit, **params)
    db.start(background=False)
    FlakyCommit.mode = "before"
    with pytest.raises(CommitInDoubt):
        db.update("alerts", {"acknowledged": True}, {"id": "pg-only"})
    assert db.reconcile_once() is True
    assert pg_rows(pg, "SELECT acknowledged FROM alerts WHERE id = 'pg-only'") == [(True,)]


def test_postgresql_restart_is_absorbed_without_a_fallback(pg, pg_server, tmp_path, databases):
    db = databases(make_config(pg.env(DATABASE_PATH=tmp_path / "f.db")))
    db.insert("alerts", {"id": "a", "level": "info", "title": "t", "timestamp": T0})  # a pooled connection
    pg_server.pause()
    pg_server.resume()
    assert [r["id"] for r in db.select("alerts")] == ["a"]  # the stale connection is replaced
    assert db.mode == "postgresql" and db.pending_sync() == 0


def test_updates_of_fallback_rows_follow_them_and_conflicts_are_kept(pg, tmp_path, databases):
    pg.psql("INSERT INTO usage_data (requests_count) VALUES (1), (2), (3); "
            "INSERT INTO alerts (id, level, title, timestamp) VALUES ('same', 'info', 'PostgreSQL''s', now())")
    path = tmp_path / "f.db"
    writer = databases(make_config(unreachable_env(pg, path)))
    local = writer.insert("usage_data", {"timestamp": T0, "requests_count": 50})
    assert local["id"] == 1  # SQLite's id ...
    writer.update("usage_data", {"requests_count": 51}, {"id": local["id"]})
    writer.insert("alerts", {"id": "same", "level": "error", "title": "the fallback's", "timestamp": T0})
    writer.close()
    db = databases(make_config(pg.env(DATABASE_PATH=path)))
    assert db.mode == "postgresql"
    # ... is not PostgreSQL's: row 1 keeps its value, the copied row (id 4) got the update.
    assert pg_rows(pg, "SELECT id, requests_count FROM usage_data ORDER BY id") == [(1, 1), (2, 2), (3, 3), (4, 51)]
    assert pg_rows(pg, "SELECT title FROM alerts WHERE id = 'same'") == [("PostgreSQL's",)]
    conflict = pg_rows(pg, "SELECT payload FROM fallback_sync_log WHERE outcome = 'conflict'")
    assert len(conflict) == 1 and conflict[0][0]["values"]["title"] == "the fallback's"


def test_sqlite_mode_keeps_no_outbox(tmp_path, databases):
    db = databases(make_config({"DB_TYPE": "sqlite", "DATABASE_PATH": str(tmp_path / "s.db")}))
    db.insert("alerts", {"id": "x", "level": "info", "title": "t", "timestamp": T0})
    assert db.mode == "sqlite" and db.pending_sync() == 0 and db.reconcile_once() is False


def test_outbox_payloads_are_plain_json(pg, tmp_path, databases):
    path = tmp_path / "f.db"
    writer = databases(make_config(unreachable_env(pg, path)))
    writer.insert("usage_data", {"timestamp": T0, "cost_usd": "0.1234", "requests_count": 1})
    with sqlite3.connect(path) as conn:
        (payload,) = conn.execute("SELECT payload FROM fallback_outbox").fetchone()
    values = json.loads(payload)["values"]
    assert values["cost_usd"] == "0.1234" and values["timestamp"] == "2024-06-01T08:00:00"
    assert "id" not in values


def test_http_reads_and_writes_continue_through_an_outage(pg, pg_server, tmp_path, start_app):
    app = start_app(make_config(pg.env(DATABASE_PATH=tmp_path / "f.db")))
    assert request(app.port, "GET", "/health").json["database"] == "postgresql"
    pg_server.pause()
    try:
        created = request(app.port, "POST", "/api/alerts", {"id": "http-1", "level": "warning", "title": "x"})
        assert created.status == 201
        health = request(app.port, "GET", "/health")
        assert health.status == 200 and health.json["database"] == "sqlite" and health.json["pending_sync"] == 1
        assert [a["id"] for a in request(app.port, "GET", "/api/alerts").json["rows"]] == ["http-1"]
        assert request(app.port, "POST", "/api/alerts/http-1/acknowledge").status == 200
    finally:
        pg_server.resume()
    wait_for(lambda: request(app.port, "GET", "/health").json["database"] == "postgresql", timeout=10,
             message="health back on postgresql")
    assert pg_rows(pg, "SELECT id, acknowledged FROM alerts") == [("http-1", True)]
