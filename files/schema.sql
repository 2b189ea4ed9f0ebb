-- Schema version 1 of the claude_daemon database (the guide's "Database Schema").
--
-- Applied by the pg_schema_migrate module, in one transaction, as the owner
-- role (claude_owner), and recorded in claude_kit.schema_migrations. Never edit
-- this file once deployed: add a numbered migration beside it instead
-- (0002_what_it_does.sql), which is applied once, in order.
--
-- IF NOT EXISTS throughout, so that a database created by the guide's
-- docker-compose set-up (same tables, no tracking table) can be adopted.
-- Timestamps stay "timestamp without time zone" as in the guide; the daemon
-- writes UTC.

-- The guide's tables reference users(id) but the guide never defines users:
-- without this table its CREATE TABLE statements fail.
CREATE TABLE IF NOT EXISTS users (
    id SERIAL PRIMARY KEY,
    username VARCHAR(255) NOT NULL UNIQUE,
    email VARCHAR(255) UNIQUE,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS usage_data (
    id SERIAL PRIMARY KEY,
    user_id INTEGER REFERENCES users(id),
    timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    tokens_used INTEGER DEFAULT 0,
    requests_count INTEGER DEFAULT 0,
    avg_response_time INTEGER DEFAULT 0,
    active_users INTEGER DEFAULT 0,
    error_count INTEGER DEFAULT 0,
    cost_usd DECIMAL(10, 4) DEFAULT 0.0,
    session_id VARCHAR(255),
    endpoint VARCHAR(255),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS alerts (
    id VARCHAR(255) PRIMARY KEY,
    user_id INTEGER REFERENCES users(id),
    level VARCHAR(20) NOT NULL CHECK (level IN ('info', 'warning', 'error', 'success')),
    title VARCHAR(255) NOT NULL,
    message TEXT,
    timestamp TIMESTAMP NOT NULL,
    acknowledged BOOLEAN DEFAULT false,
    metadata JSONB,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS predictions (
    id SERIAL PRIMARY KEY,
    user_id INTEGER REFERENCES users(id),
    date DATE NOT NULL,
    predicted_tokens INTEGER,
    predicted_cost DECIMAL(10, 4),
    confidence DECIMAL(3, 2),
    model_version VARCHAR(50),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

-- The guide's performance indexes.
CREATE INDEX IF NOT EXISTS idx_usage_data_timestamp ON usage_data (timestamp);
CREATE INDEX IF NOT EXISTS idx_usage_data_user_id ON usage_data (user_id);
CREATE INDEX IF NOT EXISTS idx_alerts_timestamp ON alerts (timestamp);
CREATE INDEX IF NOT EXISTS idx_alerts_level ON alerts (level);
CREATE INDEX IF NOT EXISTS idx_predictions_date ON predictions (date);

-- The guide's "Query Optimization" index, made valid. The guide writes
--   CREATE INDEX CONCURRENTLY ... ON usage_data(timestamp, user_id)
--     WHERE timestamp >= NOW() - INTERVAL '30 days';
-- which PostgreSQL rejects: an index predicate may only use IMMUTABLE
-- functions, and NOW() is not (the "last 30 days" would move while the index
-- stays put). CONCURRENTLY also cannot run inside a transaction. A plain
-- composite index serves the same "recent rows of a user" queries.
CREATE INDEX IF NOT EXISTS idx_usage_data_timestamp_user ON usage_data (timestamp, user_id);
