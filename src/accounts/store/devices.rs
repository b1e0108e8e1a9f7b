//! Registered devices (`devices`), each tied to the session that registered it.

use super::{Store, StoreError, rows};
use crate::db::{DbError, Row, args, one};

/// Most devices one account keeps (the least recently seen go first, with their
/// sessions).
pub const MAX_DEVICES: usize = 100;

/// A registered device.
#[derive(Debug, Clone, Default)]
pub struct Device {
    /// 32 hex characters.
    pub id: String,
    /// The account.
    pub uid: String,
    /// The session it belongs to.
    pub session_id_hash: Option<Vec<u8>>,
    /// Its name.
    pub name: String,
    /// desktop, mobile, ...
    pub kind: String,
    /// WebPush endpoint.
    pub push_callback: Option<String>,
    /// WebPush public key.
    pub push_public_key: Option<String>,
    /// WebPush auth secret.
    pub push_auth_key: Option<String>,
    /// JSON object of command name → data.
    pub available_commands: String,
    /// Whether the push service said the endpoint is gone (404/410): nothing is pushed
    /// to it until the device registers a push endpoint again.
    pub push_endpoint_expired: bool,
    /// When it registered, ms.
    pub created_at: i64,
    /// When it was last seen, ms.
    pub last_access_at: i64,
}

const DEVICE_COLS: &str = "id, uid, session_id_hash, name, type, push_callback, \
    push_public_key, push_auth_key, available_commands, created_at, last_access_at, \
    push_endpoint_expired";

fn device_row(r: &Row) -> Result<Device, DbError> {
    Ok(Device {
        id: r.text(0)?,
        uid: r.text(1)?,
        session_id_hash: r.opt_blob(2)?,
        name: r.text(3)?,
        kind: r.text(4)?,
        push_callback: r.opt_text(5)?,
        push_public_key: r.opt_text(6)?,
        push_auth_key: r.opt_text(7)?,
        available_commands: r.text(8)?,
        created_at: r.int(9)?,
        last_access_at: r.int(10)?,
        push_endpoint_expired: r.int(11)? != 0,
    })
}

impl Store {
    /// Inserts or updates a device (by id); beyond [`MAX_DEVICES`] for the account,
    /// the least recently seen others go, with their sessions.
    pub fn upsert_device(&self, d: &Device) -> Result<(), StoreError> {
        self.write(|tx| {
            let older = tx.query(
                "SELECT id, session_id_hash FROM devices WHERE uid = ?1 AND id != ?2 \
                 ORDER BY last_access_at DESC, created_at DESC",
                &args![&d.uid, &d.id],
            )?;
            for r in older.iter().skip(MAX_DEVICES - 1) {
                tx.execute("DELETE FROM devices WHERE id = ?1", &args![r.text(0)?])?;
                if let Some(s) = r.opt_blob(1)? {
                    tx.execute("DELETE FROM tokens WHERE id_hash = ?1", &args![&s[..]])?;
                }
            }
            tx.execute(
                &format!(
                    "INSERT INTO devices ({DEVICE_COLS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                     ON CONFLICT(id) DO UPDATE SET name = excluded.name, type = excluded.type, \
                     push_callback = excluded.push_callback, \
                     push_public_key = excluded.push_public_key, \
                     push_auth_key = excluded.push_auth_key, \
                     available_commands = excluded.available_commands, \
                     last_access_at = excluded.last_access_at, \
                     push_endpoint_expired = excluded.push_endpoint_expired"
                ),
                &args![
                    &d.id,
                    &d.uid,
                    &d.session_id_hash,
                    &d.name,
                    &d.kind,
                    &d.push_callback,
                    &d.push_public_key,
                    &d.push_auth_key,
                    &d.available_commands,
                    d.created_at,
                    d.last_access_at,
                    d.push_endpoint_expired as i64
                ],
            )
            .map(drop)
        })
    }

    /// The account's devices.
    pub fn devices(&self, uid: &str) -> Result<Vec<Device>, StoreError> {
        self.read(|tx| {
            let r = tx.query(
                &format!("SELECT {DEVICE_COLS} FROM devices WHERE uid = ?1 ORDER BY created_at"),
                &args![uid],
            )?;
            rows(r, device_row)
        })
    }

    /// Marks a device's push endpoint expired, if it is still `endpoint` (a device that
    /// registered a new one meanwhile keeps it).
    pub fn expire_push_endpoint(
        &self,
        uid: &str,
        id: &str,
        endpoint: &str,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE devices SET push_endpoint_expired = 1 \
                 WHERE uid = ?1 AND id = ?2 AND push_callback = ?3",
                &args![uid, id, endpoint],
            )
            .map(drop)
        })
    }

    /// Deletes a device and the session it belongs to. True when it existed.
    pub fn delete_device(&self, uid: &str, id: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let Some(row) = one(
                tx,
                "DELETE FROM devices WHERE uid = ?1 AND id = ?2 RETURNING session_id_hash",
                &args![uid, id],
            )?
            else {
                return Ok(false);
            };
            if let Some(s) = row.opt_blob(0)? {
                tx.execute("DELETE FROM tokens WHERE id_hash = ?1", &args![&s[..]])?;
            }
            Ok(true)
        })
    }
}
