-- One user's Sync data. Applied to a fresh file when `PRAGMA user_version` is 0;
-- later versions add files schema/user_vN.sql and bump USER_SCHEMA_VERSION.
--
-- Timestamps (`modified`, `expiry`, meta values) are integers in units of 10 ms.

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

-- Small per-user facts: `last_modified` (the user's latest write timestamp).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
