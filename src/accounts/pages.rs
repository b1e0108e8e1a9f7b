//! The sign-in page Firefox opens at `/` and the account settings page, with their
//! script and style: files of `pages/` embedded in the binary, served under a strict
//! content security policy.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::api::ApiState;

/// The sign-in pages' policy: their own script and style only, no framing, no forms
/// posted anywhere, fetches to this origin only.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; \
    base-uri 'none'";

/// One of the sign-in pages' assets, with the page headers.
fn page(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The page Firefox opens to sign in (the content server root, with Firefox's OAuth
/// request in the query: `context=oauth_webchannel_v1`, `keys_jwk`, `state`, PKCE).
/// The sign-up policy is rendered into `<main data-signups>` (the CSP allows no
/// inline script), so the page offers sign-up, with an invite code or not at all.
pub(super) async fn signin_page(State(st): State<ApiState>) -> Response {
    let html = include_str!("pages/signin.html").replace(
        "data-signups=\"closed\"",
        &format!("data-signups=\"{}\"", st.accounts.signups().as_str()),
    );
    page("text/html; charset=utf-8", html)
}

/// The account settings page Firefox's "Manage account" opens (`/settings?entrypoint=
/// …&uid=…&email=…`): a password change.
pub(super) async fn settings_page() -> Response {
    page(
        "text/html; charset=utf-8",
        include_str!("pages/settings.html"),
    )
}

/// What the pages' scripts share (onepw, the accounts API, Firefox's WebChannel).
pub(super) async fn common_js() -> Response {
    page(
        "text/javascript; charset=utf-8",
        include_str!("pages/common.js"),
    )
}

/// The settings page's script.
pub(super) async fn settings_js() -> Response {
    page(
        "text/javascript; charset=utf-8",
        include_str!("pages/settings.js"),
    )
}

/// The page's script (see the page's own header comment).
pub(super) async fn signin_js() -> Response {
    page(
        "text/javascript; charset=utf-8",
        include_str!("pages/signin.js"),
    )
}

/// The page's style.
pub(super) async fn signin_css() -> Response {
    page("text/css; charset=utf-8", include_str!("pages/signin.css"))
}
