"""The unified API (query / insert / select / update) behaves the same on both stores."""

import datetime as dt
import decimal

import pytest

from claude_daemon.errors import Conflict, ReadOnlyQuery

from .daemon_helpers import make_config


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request, pg, tmp_path, databases):
    if request.param == "postgresql":
        env = pg.env(DATABASE_PATH=tmp_path / "f.db")
    else:
        env = {"DB_TYPE": "sqlite", "DATABASE_PATH": str(tmp_path / "f.db")}
    database = databases(make_config(env))
    assert database.mode == request.param
    return database


T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123456)


def test_insert_returns_the_stored_row_with_native_types(db):
    alert = db.insert("alerts", {"id": "a-1", "level": "warning", "title": "Disk", "message": None,
                                 "timestamp": T0, "metadata": {"host": "db1", "pct": 91.5, "tags": ["x"]}})
    assert alert["id"] == "a-1" and alert["acknowledged"] is False
    assert alert["timestamp"] == T0 and alert["metadata"] == {"host": "db1", "pct": 91.5, "tags": ["x"]}
    assert isinstance(alert["created_at"], dt.datetime)
    usage = db.insert("usage_data", {"timestamp": T0, "requests_count": 3, "cost_usd": decimal.Decimal("0.0125")})
    assert usage["id"] == 1 and usage["cost_usd"] == decimal.Decimal("0.0125") and usage["tokens_used"] == 0
    pred = db.insert("predictions", {"date": "2024-05-02", "predicted_tokens": 10, "confidence": "0.75"})
    assert pred["date"] == dt.date(2024, 5, 2) and pred["confidence"] == decimal.Decimal("0.75")
    # Timestamps given with a zone are stored as UTC.
    aware = db.insert("usage_data", {"timestamp": "2024-05-01T14:00:00+02:00"})
    assert aware["timestamp"] == dt.datetime(2024, 5, 1, 12, 0)


def test_select_filters_orders_and_limits(db):
    for i in range(5):
        db.insert("usage_data", {"timestamp": T0 + dt.timedelta(minutes=i), "requests_count": i,
                                 "endpoint": "/a" if i % 2 else None})
    rows = db.select("usage_data", order_by="timestamp DESC", limit=2)
    assert [r["requests_count"] for r in rows] == [4, 3]
    rows = db.select("usage_data", {"timestamp": [(">=", T0 + dt.timedelta(minutes=1)),
                                                  ("<", T0 + dt.timedelta(minutes=4))]}, order_by="id")
    assert [r["requests_count"] for r in rows] == [1, 2, 3]
    assert [r["requests_count"] for r in db.select("usage_data", {"endpoint": None}, "id")] == [0, 2, 4]
    assert [r["requests_count"] for r in db.select("usage_data", {"endpoint": ("!=", None)}, "id")] == [1, 3]
    assert db.select("usage_data", limit=0) == []
    assert list(db.select("usage_data", limit=1)[0]) == [
        "id", "user_id", "timestamp", "tokens_used", "requests_count", "avg_response_time", "active_users",
        "error_count", "cost_usd", "session_id", "endpoint", "created_at"]


def test_update_returns_the_updated_rows(db):
    db.insert("alerts", {"id": "a", "level": "info", "title": "t", "timestamp": T0})
    db.insert("alerts", {"id": "b", "level": "info", "title": "t", "timestamp": T0})
    rows = db.update("alerts", {"acknowledged": True}, {"id": "a"})
    assert [(r["id"], r["acknowledged"]) for r in rows] == [("a", True)]
    assert db.update("alerts", {"acknowledged": True}, {"id": "missing"}) == []
    assert {r["id"]: r["acknowledged"] for r in db.select("alerts")} == {"a": True, "b": False}


def test_duplicate_ids_conflict(db):
    db.insert("alerts", {"id": "dup", "level": "info", "title": "t", "timestamp": T0})
    with pytest.raises(Conflict):
        db.insert("alerts", {"id": "dup", "level": "error", "title": "again", "timestamp": T0})


def test_query_takes_dollar_placeholders_and_is_read_only(db):
    for i in range(3):
        db.insert("usage_data", {"timestamp": T0 + dt.timedelta(hours=i), "requests_count": 10 * i})
    rows = db.query("SELECT count(*) AS n, sum(requests_count) AS total FROM usage_data WHERE timestamp >= $1 "
                    "AND endpoint IS NULL AND 'literal $1 %' = $2", [T0 + dt.timedelta(hours=1), "literal $1 %"])
    assert rows[0]["n"] == 2 and int(rows[0]["total"]) == 30
    for statement in ("INSERT INTO usage_data (requests_count) VALUES ($1)",
                      "UPDATE usage_data SET requests_count = $1", "DELETE FROM usage_data WHERE id > $1"):
        with pytest.raises(ReadOnlyQuery):
            db.query(statement, [1])
    assert len(db.select("usage_data")) == 3  # nothing written; the connection still works


def test_both_stores_answer_identically(pg, tmp_path, databases):
    pg_db = databases(make_config(pg.env(DATABASE_PATH=tmp_path / "a.db")))
    lite = databases(make_config({"DB_TYPE": "sqlite", "DATABASE_PATH": str(tmp_path / "b.db")}))
    results = []
    for db in (pg_db, lite):
        created = dt.datetime(2024, 1, 1)
        db.insert("alerts", {"id": "x", "level": "error", "title": "é ✓", "timestamp": T0, "created_at": created,
                             "metadata": {"n": 1, "nested": {"ok": True, "none": None}}})
        db.insert("usage_data", {"timestamp": T0, "tokens_used": 7, "cost_usd": "1.5", "created_at": created,
                                 "session_id": "s", "endpoint": "/api/alerts", "requests_count": 2})
        db.insert("predictions", {"date": dt.date(2024, 1, 2), "predicted_cost": 12.34, "model_version": "m1",
                                  "created_at": created})
        results.append([db.select(t, order_by="id") for t in ("alerts", "usage_data", "predictions")])
    assert results[0] == results[1]
