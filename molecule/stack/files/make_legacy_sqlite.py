#!/usr/bin/env python3
"""Write the SQLite file a legacy daemon of the guide would leave behind (argv[1]).

The guide's four tables as SQLite held them, with what SQLite lets such a file
contain: timestamps as ISO text, epoch seconds and epoch milliseconds, booleans as
0/1 and 'true'/'false', JSON as text. The stack scenario's daemon role finds it
with daemon_migrate_on_start and must migrate it before serving.
"""

import sqlite3
import sys

db = sqlite3.connect(sys.argv[1])
db.executescript("""
CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT NOT NULL, email TEXT, created_at TEXT);
CREATE TABLE usage_data (id INTEGER PRIMARY KEY, user_id INTEGER, timestamp TEXT NOT NULL, tokens_used INTEGER,
  requests_count INTEGER, avg_response_time INTEGER, active_users INTEGER, error_count INTEGER, cost_usd REAL,
  session_id TEXT, endpoint TEXT, created_at TEXT);
CREATE TABLE alerts (id TEXT PRIMARY KEY, user_id INTEGER, level TEXT NOT NULL, title TEXT NOT NULL, message TEXT,
  timestamp TEXT NOT NULL, acknowledged INTEGER, metadata TEXT, created_at TEXT);
CREATE TABLE predictions (id INTEGER PRIMARY KEY, user_id INTEGER, date TEXT NOT NULL, predicted_tokens INTEGER,
  predicted_cost REAL, confidence REAL, model_version TEXT, created_at TEXT);
""")
db.execute("INSERT INTO users VALUES (1, 'legacy-ada', 'ada@example.org', '2026-01-01 09:00:00')")
for i in range(1, 501):
    stamp = ["2026-03-01T10:%02d:00.000Z" % (i % 60), 1772359200 + i * 60, 1772359200000 + i * 60000][i % 3]
    db.execute("INSERT INTO usage_data VALUES (?, 1, ?, ?, ?, 120, 1, 0, ?, 'legacy', '/api/usage', ?)",
               (i, stamp, i * 10, i, round(i * 0.0125, 4), stamp))
for i in range(1, 26):
    db.execute("INSERT INTO alerts VALUES (?, 1, ?, ?, 'from the legacy file', ?, ?, ?, ?)",
               ("legacy-alert-%d" % i, ["info", "warning", "error", "success"][i % 4], "legacy alert %d" % i,
                1772445600000 + i * 1000, [0, 1, "true", "false"][i % 4], '{"n": %d}' % i, "2026-03-02 08:00:%02d" % i))
db.execute("INSERT INTO predictions VALUES (1, 1, '2026-03-10', 5000, 1.25, 0.9, 'v1', '2026-03-03 00:00:00')")
db.commit()
db.close()
