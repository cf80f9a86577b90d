-- The compliance archive (PostgreSQL). One row per chained record; the hash chain is
-- defined in confer-signalling's archive module. Hashes are lowercase hex, details
-- canonical JSON (TEXT, not JSONB: the stored text is what was hashed).
CREATE TABLE archive_records (
    seq          BIGINT PRIMARY KEY CHECK (seq > 0),
    at_ms        BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    conversation TEXT,
    user_id      TEXT,
    details      TEXT NOT NULL,
    prev_hash    TEXT NOT NULL CHECK (length(prev_hash) = 64),
    hash         TEXT NOT NULL UNIQUE CHECK (length(hash) = 64)
);
CREATE INDEX archive_records_at ON archive_records (at_ms);
CREATE INDEX archive_records_conversation ON archive_records (conversation, seq);
CREATE INDEX archive_records_kind ON archive_records (kind, seq);

-- One row rewritten by the writability probe (fail closed before a new call).
CREATE TABLE archive_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
);
INSERT INTO archive_probe (id, n) VALUES (1, 0);
