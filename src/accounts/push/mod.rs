//! Outbound Web Push: the messages that wake a device (a command queued for it, a
//! device connected or gone, ...), sent to the `pushCallback` its browser registered
//! (for Firefox, Mozilla's push service), encrypted to the device's push keys.
//!
//! * `webpush` — the cryptography: the body (RFC 8291 `aes128gcm`) and the server's
//!   VAPID key and JWT (RFC 8292). The key is kept with the OAuth signing keys (see
//!   `oauth::Signer::vapid`).
//! * `guard` — which endpoints a push may go to and which addresses it may connect to
//!   (no server-side request forgery through `pushCallback`), and the HTTP client that
//!   enforces it.
//! * `delivery` — the [`Pusher`]: a bounded queue, a bounded number of requests in
//!   flight, retries with backoff, the outcomes counted in
//!   `syncstore_accounts_push_total{outcome}`.

mod delivery;
mod guard;
mod webpush;

pub use delivery::Pusher;
pub use guard::{address_allowed, check_endpoint, is_public, service_allowed};
pub use webpush::{MAX_PAYLOAD, VapidKey};

/// What the sender does.
#[derive(Clone, Debug, Default)]
pub struct PushConfig {
    /// false: nothing is sent (send() returns false at once).
    pub enabled: bool,
    /// Addresses (CIDRs) a push endpoint may resolve to although not public, e.g.
    /// 127.0.0.1/32 for tests; empty by default.
    pub allow_private: Vec<ipnet::IpNet>,
    /// VAPID `sub`: the service's public URL (https://...) or mailto:...
    pub contact: String,
    /// The push services pushed to: host names, each allowing itself and its
    /// subdomains (`push.services.mozilla.com`: Mozilla's, which every Firefox uses);
    /// `*`: any public host. An endpoint elsewhere is not pushed to (its device fetches
    /// at its next sync), so a device cannot make this server post to a host of its
    /// choosing. A literal address inside `allow_private` is always allowed.
    pub services: Vec<String>,
}

/// Where a message goes: the device's registration. Its `Debug` shows the endpoint's
/// host only (the rest of the URL is a capability) and none of the keys.
#[derive(Clone)]
pub struct PushTarget {
    /// The account.
    pub uid: String,
    /// The device.
    pub device_id: String,
    /// pushCallback
    pub endpoint: String,
    /// pushPublicKey (base64url P-256 uncompressed point, padded or not)
    pub public_key: String,
    /// pushAuthKey (base64url, 16 bytes)
    pub auth_key: String,
}

impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTarget")
            .field("uid", &self.uid)
            .field("device_id", &self.device_id)
            .field("endpoint_host", &delivery::host_of(&self.endpoint))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
