//! The device command queue (`device_commands`): what one device sent another of the
//! same account (Send Tab's `open-uri`), kept until the target fetches it and its TTL
//! ends. Indices come from one sequence for the whole table, so a device's indices
//! only ever grow (Firefox remembers the last one it handled), and a command goes with
//! its target device (a foreign key, `ON DELETE CASCADE`) and with the account; the
//! target's next fetch from a later index acknowledges it.

use super::{Store, StoreError, rows};
use crate::db::{DbError, Row, args, one};

/// Most unexpired, unacknowledged commands one device holds; a sender beyond it is
/// refused until the target fetches or they expire (nothing queued is ever dropped to
/// make room).
pub const MAX_QUEUED_PER_DEVICE: i64 = 100;
/// Most payload bytes (characters) those commands hold together: a Send Tab payload is
/// under 1 KB, so this leaves room for hundreds while one account cannot make the
/// database keep 16 KiB × 100 per device for weeks.
pub const MAX_QUEUED_BYTES_PER_DEVICE: i64 = 256 * 1024;

/// A queued command as the target fetches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedCommand {
    /// Its index (grows per device).
    pub index: i64,
    /// The command's name (a URL, e.g. Send Tab's `https://identity.mozilla.com/cmd/open-uri`).
    pub command: String,
    /// The payload, JSON text as the sender gave it.
    pub payload: String,
    /// The sender's device id, if the sending session has a device.
    pub sender: Option<String>,
}

/// What [`Store::queue_command`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    /// Queued at this index.
    At(i64),
    /// The target device is not the account's (or is gone).
    UnknownDevice,
    /// The target already holds [`MAX_QUEUED_PER_DEVICE`] unacknowledged commands, or
    /// this one would take it over [`MAX_QUEUED_BYTES_PER_DEVICE`].
    Full,
}

/// A command to queue.
#[derive(Debug, Clone)]
pub struct NewCommand<'a> {
    /// The account.
    pub uid: &'a str,
    /// The target device.
    pub target: &'a str,
    /// The command's name.
    pub command: &'a str,
    /// JSON text.
    pub payload: &'a str,
    /// The sender's device id.
    pub sender: Option<&'a str>,
    /// When it expires, ms.
    pub expires_at: i64,
}

fn command_row(r: &Row) -> Result<QueuedCommand, DbError> {
    Ok(QueuedCommand {
        index: r.int(0)?,
        command: r.text(1)?,
        payload: r.text(2)?,
        sender: r.opt_text(3)?,
    })
}

impl Store {
    /// Queues a command for `c.target`, a device of `c.uid`, unless that device is not
    /// the account's or already holds [`MAX_QUEUED_PER_DEVICE`] unexpired commands.
    /// The target's row is written first, so that concurrent senders to one device
    /// (on either backend) count one after the other.
    pub fn queue_command(&self, c: &NewCommand, now: i64) -> Result<Queued, StoreError> {
        self.write(|tx| {
            let found = tx.execute(
                "UPDATE devices SET last_access_at = last_access_at WHERE uid = ?1 AND id = ?2",
                &args![c.uid, c.target],
            )?;
            if found == 0 {
                return Ok(Queued::UnknownDevice);
            }
            tx.execute(
                "DELETE FROM device_commands WHERE device_id = ?1 AND expires_at <= ?2",
                &args![c.target, now],
            )?;
            let (held, bytes) = match one(
                tx,
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM device_commands \
                 WHERE device_id = ?1",
                &args![c.target],
            )? {
                Some(r) => (r.int(0)?, r.int(1)?),
                None => (0, 0),
            };
            let adding = c.payload.chars().count() as i64;
            if held >= MAX_QUEUED_PER_DEVICE || bytes + adding > MAX_QUEUED_BYTES_PER_DEVICE {
                return Ok(Queued::Full);
            }
            let row = one(
                tx,
                "INSERT INTO device_commands \
                 (uid, device_id, command, payload, sender, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING idx",
                &args![
                    c.uid,
                    c.target,
                    c.command,
                    c.payload,
                    &c.sender.map(str::to_string),
                    now,
                    c.expires_at
                ],
            )?
            .ok_or_else(|| DbError::Other("no index returned".into()))?;
            Ok(Queued::At(row.int(0)?))
        })
    }

    /// Up to `limit` unexpired commands of `device` from index `from` on (in order),
    /// and whether there are more after them. The commands below `from` go: a device
    /// asks from the index after the last one it handled (Firefox's
    /// `lastCommandIndex + 1`), so they are done with and no longer hold room in the
    /// device's bound.
    pub fn device_commands(
        &self,
        device: &str,
        from: i64,
        limit: i64,
        now: i64,
    ) -> Result<(Vec<QueuedCommand>, bool), StoreError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM device_commands WHERE device_id = ?1 AND idx < ?2",
                &args![device, from],
            )?;
            let found = tx.query(
                "SELECT idx, command, payload, sender FROM device_commands \
                 WHERE device_id = ?1 AND idx >= ?2 AND expires_at > ?3 \
                 ORDER BY idx LIMIT ?4",
                &args![device, from, now, limit + 1],
            )?;
            let mut list = rows(found, command_row)?;
            let more = list.len() as i64 > limit;
            list.truncate(limit.max(0) as usize);
            Ok((list, more))
        })
    }
}
