//! The console's page, script, style and icon: files of `page/` embedded in the binary
//! (no build step, nothing fetched from elsewhere). The security headers are added to
//! every answer by the console's router.

use axum::http::header;
use axum::response::{IntoResponse, Response};

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The page (its script draws everything from the JSON API).
pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", include_str!("page/index.html"))
}

/// The page's script.
pub(super) async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("page/console.js"),
    )
}

/// The page's style.
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("page/console.css"))
}

/// The page's icon.
pub(super) async fn icon() -> Response {
    asset("image/svg+xml", include_str!("page/icon.svg"))
}
