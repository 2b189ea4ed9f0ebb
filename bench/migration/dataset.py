"""Generate an SQLite database shaped like the daemon's, for the migration benchmark.

The tables mirror files/schema.sql (users, usage_data, alerts, predictions) with
the column types an SQLite application typically declares: INTEGER PRIMARY KEY,
DATETIME, REAL for money, TEXT for JSON, 0/1 for booleans. Timestamps are ISO
8601 text in the two shapes the daemon writes: SQLite's CURRENT_TIMESTAMP
('2026-03-01 12:00:00', created_at) and JavaScript's toISOString()
('2026-03-01T12:00:00.123Z', timestamp). Every value is one that all three peers
of the benchmark (the module, pgloader, sqlite3 | psql) can load unchanged.

Deterministic for a given seed and size.
"""

from __future__ import annotations

import datetime
import json
import random
import sqlite3

SQLITE_SCHEMA = """
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    email TEXT UNIQUE,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE usage_data (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER REFERENCES users(id),
    timestamp DATETIME NOT NULL,
    tokens_used INTEGER DEFAULT 0,
    requests_count INTEGER DEFAULT 0,
    avg_response_time INTEGER DEFAULT 0,
    active_users INTEGER DEFAULT 0,
    error_count INTEGER DEFAULT 0,
    cost_usd REAL DEFAULT 0.0,
    session_id TEXT,
    endpoint TEXT,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    user_id INTEGER REFERENCES users(id),
    level TEXT NOT NULL,
    title TEXT NOT NULL,
    message TEXT,
    timestamp DATETIME NOT NULL,
    acknowledged BOOLEAN DEFAULT 0,
    metadata TEXT,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER REFERENCES users(id),
    date DATE NOT NULL,
    predicted_tokens INTEGER,
    predicted_cost REAL,
    confidence REAL,
    model_version TEXT,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP
);
"""

ENDPOINTS = ["/v1/messages", "/v1/complete", "/v1/embeddings", "/v1/models", "/health", "/api/usage", "/api/alerts"]
LEVELS = ["info", "warning", "error", "success"]
START = datetime.datetime(2025, 1, 1)


def _iso_space(dt):
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def _iso_js(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def generate(path, usage_rows=1_000_000, alerts=100_000, users=1000, predictions=20_000, seed=42):
    """Create the SQLite file at path (which must not exist) and return the row counts."""
    rnd = random.Random(seed)
    conn = sqlite3.connect(path)
    conn.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;" + SQLITE_SCHEMA)
    span = 365 * 86400

    def user_rows():
        for i in range(1, users + 1):
            created = START + datetime.timedelta(seconds=rnd.randrange(86400 * 30))
            yield (i, f"user{i:05d}", f"user{i:05d}@example.org" if i % 7 else None, _iso_space(created))

    def usage():
        for i in range(1, usage_rows + 1):
            ts = START + datetime.timedelta(seconds=i * span / max(usage_rows, 1), milliseconds=rnd.randrange(1000))
            created = ts + datetime.timedelta(seconds=rnd.randrange(5))
            yield (
                i,
                rnd.randrange(1, users + 1),
                _iso_js(ts),
                rnd.randrange(0, 200_000),
                rnd.randrange(1, 500),
                rnd.randrange(50, 30_000),
                rnd.randrange(1, 50),
                rnd.randrange(0, 5),
                round(rnd.random() * 25, 4),
                f"sess-{rnd.getrandbits(64):016x}",
                rnd.choice(ENDPOINTS),
                _iso_space(created),
            )

    def alert_rows():
        for i in range(1, alerts + 1):
            ts = START + datetime.timedelta(seconds=rnd.randrange(span), milliseconds=rnd.randrange(1000))
            level = rnd.choice(LEVELS)
            meta = {"source": "monitor", "threshold": rnd.randrange(100), "tags": ["usage", level]}
            yield (
                f"alert-{i:08d}-{rnd.getrandbits(32):08x}",
                rnd.randrange(1, users + 1),
                level,
                f"Usage {level}: {rnd.randrange(1000)} tokens/min",
                "Token usage crossed the configured threshold.\nCheck the dashboard." if i % 3 else None,
                _iso_js(ts),
                rnd.randrange(2),
                json.dumps(meta) if i % 5 else None,
                _iso_space(ts),
            )

    def prediction_rows():
        for i in range(1, predictions + 1):
            day = START.date() + datetime.timedelta(days=rnd.randrange(400))
            yield (
                i,
                rnd.randrange(1, users + 1),
                day.isoformat(),
                rnd.randrange(1000, 2_000_000),
                round(rnd.random() * 500, 4),
                round(rnd.random(), 2),
                rnd.choice(["linear-v1", "arima-v2", "prophet-v3"]),
                _iso_space(START + datetime.timedelta(days=rnd.randrange(400))),
            )

    with conn:
        conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?)", user_rows())
        conn.executemany("INSERT INTO usage_data VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", usage())
        conn.executemany("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", alert_rows())
        conn.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", prediction_rows())
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {"users": users, "usage_data": usage_rows, "alerts": alerts, "predictions": predictions}
