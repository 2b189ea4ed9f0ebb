-- Schema version 2: the ledger of writes the daemon made in its SQLite
-- fallback while PostgreSQL was unreachable, and copied here afterwards.
--
-- The daemon inserts a write's sync_id in the same transaction as the write
-- itself, so a copy interrupted after COMMIT (crash, kill -9) is recognised
-- and skipped when it is retried: every fallback write lands exactly once.
-- Writes PostgreSQL could not take as they were (an alert id that already
-- exists, a value refused) keep their payload here instead of being dropped.
-- The daemon (claude_app) only needs INSERT/SELECT/UPDATE on it, which the
-- default privileges grant; it never runs DDL.

CREATE TABLE IF NOT EXISTS fallback_sync_log (
    sync_id UUID PRIMARY KEY,
    origin UUID NOT NULL,              -- the SQLite file (daemon instance) the write came from
    table_name VARCHAR(63) NOT NULL,
    operation VARCHAR(10) NOT NULL CHECK (operation IN ('insert', 'update')),
    local_id VARCHAR(255),             -- the row's id in the SQLite file
    remote_id VARCHAR(255),            -- the row's id in PostgreSQL
    outcome VARCHAR(20) NOT NULL
        CHECK (outcome IN ('applied', 'duplicate', 'conflict', 'no_match', 'rejected')),
    detail TEXT,
    payload JSONB,                     -- the write itself, kept unless it was applied
    written_at TIMESTAMP,              -- when the daemon wrote it to SQLite (UTC)
    synced_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- Finds the PostgreSQL id of a row inserted during a fallback, so that an
-- update of that row made during the same fallback reaches it.
CREATE INDEX IF NOT EXISTS idx_fallback_sync_log_local
    ON fallback_sync_log (origin, table_name, local_id);
