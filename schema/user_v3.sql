-- Version 3: batch uploads in progress live in one table instead of two. Every new
-- connection parses the whole schema before its first statement, and the two batch
-- tables were half of that work (callgrind: 300k instructions per open with them, 218k
-- without, 256k with this one table). Connections no longer enforce foreign keys:
-- the storage code deletes a collection's records and a batch's rows itself, and the
-- checks cost every record written a parent lookup (a warm POST of 5 records spent a
-- sixth of its instructions on them). The REFERENCES clause left on `bso` is inert.
--
-- A batch is its rows: one header row (id '') with the collection it is bound to and
-- when it expires, then one row per record, in the order first appended (rowid order;
-- a later append of the same id merges into the row, field by field, and keeps its
-- place). In record rows a NULL payload means "not sent"; `sent` says which of
-- sortindex (1) and ttl (2) were sent. Nothing here is visible to readers: a commit
-- applies the records to `bso` in one transaction and deletes the batch's rows.
CREATE TABLE batch_items (
    batch      TEXT NOT NULL,
    id         TEXT NOT NULL,
    collection TEXT,
    expiry     INTEGER,
    payload    TEXT,
    sortindex  INTEGER,
    ttl        INTEGER,
    sent       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch, id)
);

INSERT INTO batch_items (batch, id, collection, expiry)
SELECT id, '', collection, expiry FROM batches;

INSERT INTO batch_items (batch, id, payload, sortindex, ttl, sent)
SELECT batch, id, payload, sortindex, ttl, sortindex_set | (ttl_set << 1)
FROM batch_bsos ORDER BY batch, seq;

DROP TABLE batch_bsos;
DROP TABLE batches;

-- Only records with a TTL are indexed by expiry (NEVER is the largest integer): most
-- records have none, and each write of one used to update this index too.
DROP INDEX bso_by_expiry;
CREATE INDEX bso_by_expiry ON bso (expiry) WHERE expiry < 9223372036854775807;
