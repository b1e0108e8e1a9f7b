//! Invite codes, for sign-ups under the `invite` policy: the operator makes them
//! (`syncstore account invite`), the database keeps only their hash, and a sign-up
//! checks one (counted against the attempt limits) before any other work; the code is
//! spent in the new account's insert transaction (see `signup`).

use std::net::IpAddr;

use super::limits::{Reservation, Rule};
use super::{Accounts, AccountsError, Result, crypto, now_ms};

/// Longest invite code accepted from a client (a CLI-made one has 32 characters).
const MAX_INVITE_LEN: usize = 64;

/// A fresh invite code: 24 random bytes, URL-safe base64 (192 bits), and the SHA-256
/// of its text, which is all the database keeps.
pub fn new_invite_code() -> (String, [u8; 32]) {
    use base64::Engine;
    let code = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
    let hash = crypto::sha256(code.as_bytes());
    (code, hash)
}

/// The refusal of an unknown, spent or expired invite code.
pub(super) const BAD_INVITE: &str = "the invite code is unknown, used or expired";

impl Accounts {
    /// Checks the invite code of a sign-up for `normalized` (the normalized email)
    /// from `ip`: the attempt is counted as a failure first, per email and per client
    /// address, then the code is looked up read-only (it is spent in the account's
    /// insert transaction). A failure stays counted; the caller gives the count back
    /// when the sign-up turns out not to be a failed invite code.
    pub(super) async fn check_invite(
        &self,
        code: &str,
        normalized: &str,
        ip: Option<IpAddr>,
    ) -> Result<(Reservation<'_>, [u8; 32])> {
        let mut counted = vec![self.limiter.key(Rule::FailInvite, normalized)];
        counted.extend(ip.map(|ip| self.limiter.address(Rule::FailAddress, ip)));
        let attempt = self.limiter.reserve(&counted)?;
        let now = now_ms();
        let usable = match (code.len() <= MAX_INVITE_LEN).then(|| crypto::sha256(code.as_bytes())) {
            Some(h) => self
                .blocking(move |s| Ok(s.invite_usable(&h, now)?))
                .await?
                .then_some(h),
            None => None,
        };
        // A failure stays counted.
        let hash = usable.ok_or(AccountsError::Blocked(BAD_INVITE))?;
        Ok((attempt, hash))
    }
}
