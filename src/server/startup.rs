//! Checks at start that adjust the process or warn the operator: the limit on open
//! descriptors, and settings for a reverse proxy that may not do what is expected.

use crate::config::Settings;
use crate::storage;

/// Raises the soft limit on open descriptors to the hard one, as the system allows any
/// process to (a common soft default, 1,024, is below what the default settings can
/// hold open: each open user has up to `connections_per_user` connections of two
/// descriptors and one shared, plus the files being retired and every client
/// connection), and warns when even the hard limit is below that.
pub(super) fn raise_descriptor_limit(settings: &Settings) {
    let users = settings.max_open_users + storage::RETIRING_MAX;
    let per_user = 2 * settings.connections_per_user as usize + 1;
    let wanted = (users * per_user + settings.max_connections + 128) as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    let limit = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
        lim.rlim_cur
    };
    if limit < wanted {
        tracing::warn!(
            limit,
            wanted,
            "the open-descriptor limit is below what these settings can use; raise it \
             (ulimit -n, LimitNOFILE=) or lower max_open_users / max_connections"
        );
    }
}

/// Says at start how client addresses are found when the settings look like a
/// reverse proxy setup that does not do what the operator may expect.
pub(super) fn warn_about_client_addresses(settings: &Settings) {
    if settings.trust_forwarded_headers && settings.trusted_proxies.is_empty() {
        tracing::warn!(
            "trust_forwarded_headers is on but trusted_proxies is empty: X-Forwarded-For \
             is ignored and every client is its TCP peer; list the reverse proxy's \
             addresses in trusted_proxies"
        );
    } else if settings.serves_accounts()
        && !settings.trust_forwarded_headers
        && !settings.trusted_proxies.is_empty()
    {
        tracing::warn!(
            "trusted_proxies is set but trust_forwarded_headers is off: clients behind \
             the proxy share its address in the accounts service's attempt limits; set \
             trust_forwarded_headers = true to take them from X-Forwarded-For"
        );
    }
}
