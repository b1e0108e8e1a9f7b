-- One user's Sync data. Applied to a fresh file when `PRAGMA user_version` is 0;
-- later versions add files schema/user_vN.sql and bump USER_SCHEMA_VERSION.
--
-- Timestamps (`modified`, `expiry`, meta values) are integers in units of 10 ms.

-- Free pages can be handed back to the file system by background upkeep
-- (`PRAGMA incremental_vacuum`); this must be set before the first table.
PRAGMA auto_vacuum = INCREMENTAL;

-- Collections the user has written to; a row lives until the collection is deleted.
CREATE TABLE collections (
    id       INTEGER PRIMARY KEY,
    name     TEXT NOT NULL UNIQUE,
    modified INTEGER NOT NULL
);

-- Basic Storage Objects. `expiry` is modified-time + ttl (or the largest integer).
CREATE TABLE bso (
    collection   INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    id           TEXT NOT NULL,
    sortindex    INTEGER,
    payload      TEXT NOT NULL,
    payload_size INTEGER NOT NULL,
    modified     INTEGER NOT NULL,
    expiry       INTEGER NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE INDEX bso_by_modified ON bso (collection, modified);
CREATE INDEX bso_by_expiry ON bso (expiry);

-- Small per-user facts: `last_modified` (the user's latest write timestamp) and
-- `usage_bytes` (payload bytes stored; kept by the triggers below in version 1, by the
-- storage code since version 2, which drops them: see user_v2.sql).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('usage_bytes', 0);

CREATE TRIGGER usage_after_insert AFTER INSERT ON bso BEGIN
    UPDATE meta SET value = value + new.payload_size WHERE key = 'usage_bytes';
END;
CREATE TRIGGER usage_after_delete AFTER DELETE ON bso BEGIN
    UPDATE meta SET value = value - old.payload_size WHERE key = 'usage_bytes';
END;
CREATE TRIGGER usage_after_update AFTER UPDATE OF payload_size ON bso BEGIN
    UPDATE meta SET value = value + new.payload_size - old.payload_size
    WHERE key = 'usage_bytes';
END;

-- Batch uploads in progress. Nothing here is visible to readers; a commit applies
-- the batch's records to `bso` in one transaction and deletes the batch.
CREATE TABLE batches (
    id         TEXT PRIMARY KEY,    -- random and unguessable
    collection TEXT NOT NULL,       -- a batch is bound to its collection
    expiry     INTEGER NOT NULL,    -- abandoned batches are purged after this
    records    INTEGER NOT NULL DEFAULT 0,
    bytes      INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Records of a batch. NULL payload / ttl_set = 0 / sortindex_set = 0 mean "not sent";
-- a later append of the same id merges into the earlier one, field by field.
CREATE TABLE batch_bsos (
    batch         TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    id            TEXT NOT NULL,
    seq           INTEGER NOT NULL,  -- order of first appearance
    payload       TEXT,
    sortindex     INTEGER,
    sortindex_set INTEGER NOT NULL,
    ttl           INTEGER,
    ttl_set       INTEGER NOT NULL,
    PRIMARY KEY (batch, id)
);
