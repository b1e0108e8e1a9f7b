//! The SQL of one user's file. Every function takes an open transaction; none of them
//! knows about HTTP. Timestamps are integer 10 ms units; expiry is in milliseconds.

use rusqlite::{OptionalExtension, Transaction, params};

use super::model::{Bso, BsoInput, Field, Millis, NEVER, Timestamp};

/// The user's last write timestamp (0 for a fresh file).
pub fn storage_modified(tx: &Transaction<'_>) -> rusqlite::Result<Timestamp> {
    tx.prepare_cached("SELECT value FROM meta WHERE key = 'last_modified'")?
        .query_row([], |r| r.get(0))
        .optional()
        .map(|v| Timestamp(v.unwrap_or(0)))
}

/// Records the user's latest write timestamp.
/// (An `UPDATE`, and an `INSERT` only for the user's first write: see
/// [`touch_collection`] on compiling upserts.)
pub fn set_storage_modified(tx: &Transaction<'_>, ts: Timestamp) -> rusqlite::Result<()> {
    let updated = tx
        .prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'last_modified'")?
        .execute([ts.0])?;
    if updated == 0 {
        tx.prepare_cached("INSERT INTO meta (key, value) VALUES ('last_modified', ?1)")?
            .execute([ts.0])?;
    }
    Ok(())
}

/// A collection's row id and last-modified time, if it exists.
pub fn collection(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<Option<(i64, Timestamp)>> {
    tx.prepare_cached("SELECT id, modified FROM collections WHERE name = ?1")?
        .query_row([name], |r| Ok((r.get(0)?, Timestamp(r.get(1)?))))
        .optional()
}

/// Creates the collection if needed and moves its last-modified to `ts`; returns its id.
///
/// Two plain statements rather than one upsert: a user's file is often opened cold
/// for a single write, so each statement is compiled anew, and SQLite compiles an
/// `INSERT … ON CONFLICT … RETURNING` at about three times the cost of this `UPDATE`
/// (the `INSERT` is compiled only for a collection's first write).
pub fn touch_collection(tx: &Transaction<'_>, name: &str, ts: Timestamp) -> rusqlite::Result<i64> {
    let updated = tx
        .prepare_cached("UPDATE collections SET modified = ?2 WHERE name = ?1 RETURNING id")?
        .query_row(params![name, ts.0], |r| r.get(0))
        .optional()?;
    match updated {
        Some(id) => Ok(id),
        None => {
            tx.prepare_cached("INSERT INTO collections (name, modified) VALUES (?1, ?2)")?
                .execute(params![name, ts.0])?;
            Ok(tx.last_insert_rowid())
        }
    }
}

/// `{name: last_modified}` of every collection.
pub fn collection_timestamps(tx: &Transaction<'_>) -> rusqlite::Result<Vec<(String, Timestamp)>> {
    let mut stmt = tx.prepare_cached("SELECT name, modified FROM collections ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, Timestamp(r.get(1)?))))?;
    rows.collect()
}

/// `{name: (live record count, stored payload bytes)}` of every collection holding
/// records. Bytes count every stored record, including expired ones not yet purged,
/// so they add up to `usage_bytes`.
pub fn collection_sizes(
    tx: &Transaction<'_>,
    now: Millis,
) -> rusqlite::Result<Vec<(String, i64, i64)>> {
    let mut stmt = tx.prepare_cached(
        "SELECT c.name, sum(b.expiry > ?1), total(b.payload_size)
         FROM bso b JOIN collections c ON c.id = b.collection
         GROUP BY c.name ORDER BY c.name",
    )?;
    let rows = stmt.query_map([now.0], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, f64>(2)? as i64))
    })?;
    rows.collect()
}

/// The modified time of a live record (`None` when missing or expired).
pub fn bso_modified(
    tx: &Transaction<'_>,
    coll: i64,
    id: &str,
    now: Millis,
) -> rusqlite::Result<Option<Timestamp>> {
    tx.prepare_cached("SELECT modified FROM bso WHERE collection = ?1 AND id = ?2 AND expiry > ?3")?
        .query_row(params![coll, id, now.0], |r| Ok(Timestamp(r.get(0)?)))
        .optional()
}

/// One live record.
pub fn get_bso(
    tx: &Transaction<'_>,
    coll: i64,
    id: &str,
    now: Millis,
) -> rusqlite::Result<Option<Bso>> {
    tx.prepare_cached(
        "SELECT id, modified, payload, sortindex FROM bso
         WHERE collection = ?1 AND id = ?2 AND expiry > ?3",
    )?
    .query_row(params![coll, id, now.0], row_to_bso)
    .optional()
}

fn row_to_bso(r: &rusqlite::Row<'_>) -> rusqlite::Result<Bso> {
    Ok(Bso {
        id: r.get(0)?,
        modified: Timestamp(r.get(1)?),
        payload: r.get(2)?,
        sortindex: r.get(3)?,
    })
}

/// Moves the user's stored payload bytes by `delta`. Every change to `bso` goes
/// through a function here that keeps this figure exact (no triggers: they would be
/// parsed on every open of the file and compiled into every statement that writes).
pub fn add_usage(tx: &Transaction<'_>, delta: i64) -> rusqlite::Result<()> {
    if delta != 0 {
        tx.prepare_cached("UPDATE meta SET value = value + ?1 WHERE key = 'usage_bytes'")?
            .execute([delta])?;
    }
    Ok(())
}

/// Runs `sql`, a `DELETE` of records `RETURNING payload_size`, and takes their bytes
/// off the user's stored bytes; returns how many records went.
fn delete_records<P: rusqlite::Params>(
    tx: &Transaction<'_>,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    let sizes = tx
        .prepare_cached(sql)?
        .query_map(params, |r| r.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    add_usage(tx, -sizes.iter().sum::<i64>())?;
    Ok(sizes.len())
}

/// Sets the user's stored payload bytes from the records themselves.
pub fn recount_usage(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE meta SET value = (SELECT coalesce(sum(payload_size), 0) FROM bso)
         WHERE key = 'usage_bytes'",
        [],
    )?;
    Ok(())
}

/// Creates or updates one record as a PUT does: fields not sent are kept (or take
/// their defaults on a new record); a write of `ttl` alone keeps `modified`. Returns
/// the change in stored payload bytes, for the caller to pass to [`add_usage`].
fn upsert_bso(
    tx: &Transaction<'_>,
    coll: i64,
    bso: &BsoInput,
    ts: Timestamp,
    now: Millis,
) -> rusqlite::Result<i64> {
    // The stored row, live or expired (an expired one is replaced as if absent).
    let stored: Option<(i64, i64, i64)> = tx
        .prepare_cached(
            "SELECT modified, expiry, payload_size FROM bso WHERE collection = ?1 AND id = ?2",
        )?
        .query_row(params![coll, bso.id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let old_size = stored.map_or(0, |(_, _, size)| size);
    let live = stored
        .filter(|&(_, expiry, _)| expiry > now.0)
        .map(|(modified, expiry, _)| (modified, expiry));
    let payload: Option<&str> = match &bso.payload {
        Field::Set(p) => Some(p),
        Field::Null => Some(""),
        Field::Absent => None,
    };
    let (set_sortindex, sortindex) = match bso.sortindex {
        Field::Set(s) => (true, Some(s)),
        Field::Null => (true, None),
        Field::Absent => (false, None),
    };
    // Expiry counts from the write's wall-clock time, not from `ts` (which may have
    // been bumped ahead of the clock to stay above the user's last write).
    let expiry_from = |old: i64| match bso.ttl {
        Field::Set(t) => now.plus_secs(t),
        Field::Null => NEVER,
        Field::Absent => old,
    };
    match live {
        Some((modified, expiry)) => {
            let modified = if bso.changes_data() { ts.0 } else { modified };
            tx.prepare_cached(
                "UPDATE bso SET
                    payload = coalesce(?3, payload),
                    payload_size = coalesce(length(CAST(?3 AS BLOB)), payload_size),
                    sortindex = CASE WHEN ?4 THEN ?5 ELSE sortindex END,
                    modified = ?6, expiry = ?7
                 WHERE collection = ?1 AND id = ?2",
            )?
            .execute(params![
                coll,
                bso.id,
                payload,
                set_sortindex,
                sortindex,
                modified,
                expiry_from(expiry)
            ])?;
            Ok(payload.map_or(0, |p| p.len() as i64 - old_size))
        }
        None => {
            let payload = payload.unwrap_or("");
            tx.prepare_cached(
                "INSERT OR REPLACE INTO bso
                    (collection, id, sortindex, payload, payload_size, modified, expiry)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                coll,
                bso.id,
                sortindex,
                payload,
                payload.len() as i64,
                ts.0,
                expiry_from(NEVER)
            ])?;
            Ok(payload.len() as i64 - old_size)
        }
    }
}

/// Writes records into a collection as one write (PUT semantics for each): creates
/// the collection if needed and moves its last-modified to `ts`. Nothing is touched
/// when there are no records.
pub fn store_bsos(
    tx: &Transaction<'_>,
    collection: &str,
    bsos: &[BsoInput],
    ts: Timestamp,
    now: Millis,
) -> rusqlite::Result<()> {
    if bsos.is_empty() {
        return Ok(());
    }
    let coll = touch_collection(tx, collection, ts)?;
    let mut delta = 0;
    for bso in bsos {
        delta += upsert_bso(tx, coll, bso, ts, now)?;
    }
    add_usage(tx, delta)
}

/// Deletes one record; returns whether a live one existed.
pub fn delete_bso(
    tx: &Transaction<'_>,
    coll: i64,
    id: &str,
    now: Millis,
) -> rusqlite::Result<bool> {
    let n = delete_records(
        tx,
        "DELETE FROM bso WHERE collection = ?1 AND id = ?2 AND expiry > ?3
         RETURNING payload_size",
        params![coll, id, now.0],
    )?;
    Ok(n > 0)
}

/// Deletes the listed records of a collection.
pub fn delete_bsos(tx: &Transaction<'_>, coll: i64, ids: &[String]) -> rusqlite::Result<usize> {
    let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
    delete_records(
        tx,
        "DELETE FROM bso WHERE collection = ?1 AND id IN (SELECT value FROM json_each(?2))
         RETURNING payload_size",
        params![coll, ids],
    )
}

/// Deletes a collection and all its records.
pub fn delete_collection(tx: &Transaction<'_>, coll: i64) -> rusqlite::Result<()> {
    delete_records(
        tx,
        "DELETE FROM bso WHERE collection = ?1 RETURNING payload_size",
        [coll],
    )?;
    tx.prepare_cached("DELETE FROM collections WHERE id = ?1")?
        .execute([coll])?;
    Ok(())
}

/// Deletes every record and collection of the user (the last-modified time stays, so
/// later writes still get larger timestamps).
pub fn delete_everything(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "DELETE FROM bso; DELETE FROM collections;
         UPDATE meta SET value = 0 WHERE key = 'usage_bytes';",
    )
}

/// The order of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// By id (the order when the client asks for none).
    #[default]
    None,
    /// Newest first.
    Newest,
    /// Oldest first.
    Oldest,
    /// Highest `sortindex` first (records without one last).
    Index,
}

/// The position after the last record of a page: the sort key and id of that record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The record's sort key (modified time, or sortindex, or 0 for id order).
    pub key: i64,
    /// The record's id.
    pub id: String,
}

/// The sort key of `sort=index`: records without a sortindex sort below every allowed value.
const INDEX_KEY: &str = "coalesce(sortindex, -1000000000)";

/// Filters and order of a collection listing, already validated.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only these ids.
    pub ids: Option<Vec<String>>,
    /// Only records modified strictly after this many 10 ms units.
    pub newer_than: Option<i64>,
    /// Only records modified strictly before this many 10 ms units.
    pub older_than: Option<i64>,
    /// Return payloads too.
    pub full: bool,
    /// At most this many records.
    pub limit: Option<u32>,
    /// Continue after this record.
    pub after: Option<Cursor>,
    /// The order.
    pub sort: Sort,
}

/// Lists live records of a collection. Returns the records and, when more match, the
/// cursor of the last one returned (keyset paging: never skips or repeats a record
/// when others are written between pages).
pub fn list_bsos(
    tx: &Transaction<'_>,
    coll: i64,
    q: &ListQuery,
    now: Millis,
) -> rusqlite::Result<(Vec<Bso>, Option<Cursor>)> {
    use rusqlite::types::Value;
    let key = match q.sort {
        Sort::None => "0",
        Sort::Newest | Sort::Oldest => "modified",
        Sort::Index => INDEX_KEY,
    };
    let cols = if q.full { "payload" } else { "''" };
    let mut sql = format!(
        "SELECT id, modified, {cols}, sortindex, {key} FROM bso WHERE collection = ?1 AND expiry > ?2"
    );
    let mut args: Vec<Value> = vec![coll.into(), now.0.into()];
    let mut arg = |sql: &mut String, clause: &str, v: Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(ids) = &q.ids {
        let json = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        arg(
            &mut sql,
            " AND id IN (SELECT value FROM json_each(?))",
            json.into(),
        );
    }
    if let Some(n) = q.newer_than {
        arg(&mut sql, " AND modified > ?", n.into());
    }
    if let Some(o) = q.older_than {
        arg(&mut sql, " AND modified < ?", o.into());
    }
    if let Some(c) = &q.after {
        let (kcmp, idcmp) = match q.sort {
            Sort::None | Sort::Oldest => (">", ">"),
            Sort::Newest | Sort::Index => ("<", "<"),
        };
        if q.sort == Sort::None {
            arg(&mut sql, " AND id > ?", c.id.clone().into());
        } else {
            arg(&mut sql, &format!(" AND ({key} {kcmp} ?"), c.key.into());
            arg(&mut sql, &format!(" OR ({key} = ?"), c.key.into());
            arg(
                &mut sql,
                &format!(" AND id {idcmp} ?))"),
                c.id.clone().into(),
            );
        }
    }
    let direction = match q.sort {
        Sort::None | Sort::Oldest => "ASC",
        Sort::Newest | Sort::Index => "DESC",
    };
    match q.sort {
        Sort::None => sql.push_str(" ORDER BY id ASC"),
        _ => sql.push_str(&format!(" ORDER BY {key} {direction}, id {direction}")),
    }
    if let Some(limit) = q.limit {
        arg(&mut sql, " LIMIT ?", (i64::from(limit) + 1).into());
    }
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out = Vec::new();
    let mut keys = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(row_to_bso(r)?);
        keys.push(r.get::<_, i64>(4)?);
    }
    let mut next = None;
    if let Some(limit) = q.limit
        && out.len() > limit as usize
    {
        out.truncate(limit as usize);
        let last = out.last().expect("limit is positive");
        next = Some(Cursor {
            key: keys[limit as usize - 1],
            id: last.id.clone(),
        });
    }
    Ok((out, next))
}

/// Payload bytes stored by the user (kept exact by every write of `bso` here).
pub fn usage_bytes(tx: &Transaction<'_>) -> rusqlite::Result<i64> {
    tx.prepare_cached("SELECT value FROM meta WHERE key = 'usage_bytes'")?
        .query_row([], |r| r.get(0))
        .optional()
        .map(|v| v.unwrap_or(0))
}

/// The table of open batches (see schema/user_v3.sql for its rows). It exists only
/// while the user has a batch open (schema version 4): each open of a user file
/// parses every table's definition, and most opens never touch a batch. The text is
/// version 3's, byte for byte (a unit test in schema.rs compares them): that
/// migration's file stays as it was released.
pub(super) const BATCH_TABLE: &str = "CREATE TABLE IF NOT EXISTS batch_items (
    batch      TEXT NOT NULL,
    id         TEXT NOT NULL,
    collection TEXT,
    expiry     INTEGER,
    payload    TEXT,
    sortindex  INTEGER,
    ttl        INTEGER,
    sent       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch, id)
)";

/// Whether the user has the batch table (that is, may have a batch open).
fn has_batch_table(conn: &rusqlite::Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'batch_items')",
    )?
    .query_row([], |r| r.get(0))
}

/// Drops the batch table, which must exist, once no batch is left in it.
pub fn drop_batch_table_if_empty(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    if conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM batch_items)", [], |r| {
        r.get(0)
    })? {
        conn.execute_batch("DROP TABLE batch_items")?;
    }
    Ok(())
}

/// Schema version 5's conversion of open batches' expiry from 10 ms units to
/// milliseconds (a no-op when no batch is open).
pub fn batch_expiry_to_millis(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    if has_batch_table(conn)? {
        conn.execute(
            "UPDATE batch_items SET expiry = expiry * 10
             WHERE id = '' AND expiry <= 922337203685477579",
            [],
        )?;
    }
    Ok(())
}

/// Opens a new batch for `collection`, purged if not committed before `expiry`: its
/// header row (id '').
pub fn create_batch(
    tx: &Transaction<'_>,
    id: &str,
    collection: &str,
    expiry: i64,
) -> rusqlite::Result<()> {
    tx.execute_batch(BATCH_TABLE)?;
    tx.prepare_cached(
        "INSERT INTO batch_items (batch, id, collection, expiry) VALUES (?1, '', ?2, ?3)",
    )?
    .execute(params![id, collection, expiry])?;
    Ok(())
}

/// The collection a live (unexpired) batch is bound to.
pub fn batch_collection(
    tx: &Transaction<'_>,
    id: &str,
    now: Millis,
) -> rusqlite::Result<Option<String>> {
    if !has_batch_table(tx)? {
        return Ok(None);
    }
    tx.prepare_cached(
        "SELECT collection FROM batch_items WHERE batch = ?1 AND id = '' AND expiry > ?2",
    )?
    .query_row(params![id, now.0], |r| r.get(0))
    .optional()
}

/// A batch's size so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchTotals {
    /// Distinct records appended.
    pub records: i64,
    /// Payload bytes appended.
    pub bytes: i64,
}

/// Appends records to a batch (a repeated id merges field by field) and returns the
/// batch's new totals.
pub fn append_batch(
    tx: &Transaction<'_>,
    id: &str,
    bsos: &[BsoInput],
) -> rusqlite::Result<BatchTotals> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO batch_items (batch, id, payload, sortindex, ttl, sent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(batch, id) DO UPDATE SET
            payload = coalesce(excluded.payload, payload),
            sortindex = CASE WHEN excluded.sent & 1 THEN excluded.sortindex ELSE sortindex END,
            ttl = CASE WHEN excluded.sent & 2 THEN excluded.ttl ELSE ttl END,
            sent = sent | excluded.sent",
    )?;
    for b in bsos {
        let payload: Option<&str> = match &b.payload {
            Field::Set(p) => Some(p),
            Field::Null => Some(""),
            Field::Absent => None,
        };
        let (si_set, si) = field_parts(&b.sortindex);
        let (ttl_set, ttl) = field_parts(&b.ttl);
        let sent = i64::from(si_set) | i64::from(ttl_set) << 1;
        stmt.execute(params![id, b.id, payload, si, ttl, sent])?;
    }
    tx.prepare_cached(
        "SELECT count(*), total(length(CAST(payload AS BLOB)))
         FROM batch_items WHERE batch = ?1 AND id > ''",
    )?
    .query_row([id], |r| {
        Ok(BatchTotals {
            records: r.get(0)?,
            bytes: r.get::<_, f64>(1)? as i64,
        })
    })
}

fn field_parts(f: &Field<i64>) -> (bool, Option<i64>) {
    match f {
        Field::Set(v) => (true, Some(*v)),
        Field::Null => (true, None),
        Field::Absent => (false, None),
    }
}

/// The records of a batch, in the order they were first appended.
pub fn batch_bsos(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<Vec<BsoInput>> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, payload, sortindex, ttl, sent
         FROM batch_items WHERE batch = ?1 AND id > '' ORDER BY rowid",
    )?;
    let rows = stmt.query_map([id], |r| {
        let sent: i64 = r.get(4)?;
        let field = |bit: i64, v: Option<i64>| match (sent & bit != 0, v) {
            (false, _) => Field::Absent,
            (true, None) => Field::Null,
            (true, Some(v)) => Field::Set(v),
        };
        Ok(BsoInput {
            id: r.get(0)?,
            payload: match r.get::<_, Option<String>>(1)? {
                Some(p) => Field::Set(p),
                None => Field::Absent,
            },
            sortindex: field(1, r.get(2)?),
            ttl: field(2, r.get(3)?),
        })
    })?;
    rows.collect()
}

/// Deletes a batch: its header and records (and the batch table with the last one).
pub fn delete_batch(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM batch_items WHERE batch = ?1")?
        .execute([id])?;
    drop_batch_table_if_empty(tx)
}

/// Deletes every batch of the user.
pub fn delete_batches(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("DROP TABLE IF EXISTS batch_items")
}

/// Deletes up to `limit` expired records and every expired batch; returns how many
/// records and batches went.
pub fn purge_expired(
    tx: &Transaction<'_>,
    now: Millis,
    limit: i64,
) -> rusqlite::Result<(usize, usize)> {
    let records = delete_records(
        tx,
        "DELETE FROM bso WHERE rowid IN
            (SELECT rowid FROM bso WHERE expiry <= ?1 AND expiry < 9223372036854775807 LIMIT ?2)
         RETURNING payload_size",
        params![now.0, limit],
    )?;
    if !has_batch_table(tx)? {
        return Ok((records, 0));
    }
    let batches = tx
        .prepare_cached(
            "DELETE FROM batch_items WHERE batch IN
                (SELECT batch FROM batch_items WHERE id = '' AND expiry <= ?1)
             RETURNING id = ''",
        )?
        .query_map([now.0], |r| r.get::<_, bool>(0))?
        .collect::<rusqlite::Result<Vec<bool>>>()?
        .into_iter()
        .filter(|&header| header)
        .count();
    drop_batch_table_if_empty(tx)?;
    Ok((records, batches))
}

/// Checkpoints the write-ahead log; `truncate` also empties the WAL file (used when
/// closing), otherwise the checkpoint never waits for readers. Returns `false` when
/// readers or writers kept it from finishing (SQLite's busy flag).
pub fn checkpoint(conn: &rusqlite::Connection, truncate: bool) -> rusqlite::Result<bool> {
    let mode = if truncate { "TRUNCATE" } else { "PASSIVE" };
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        r.get::<_, i64>(0).map(|busy| busy == 0)
    })
}

/// Hands free pages back to the file system when at least a quarter of the file
/// (and more than `min_pages`) is free; returns the pages freed.
pub fn reclaim_free_pages(conn: &rusqlite::Connection, min_pages: i64) -> rusqlite::Result<i64> {
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let total: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    if free <= min_pages || free * 4 < total {
        return Ok(0);
    }
    conn.execute_batch("PRAGMA incremental_vacuum")?;
    Ok(free)
}
