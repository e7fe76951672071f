//! The live web console, served by the admin listener at `/console/`.
//!
//! Its page, script and style are compiled into the binary (no CDN, nothing
//! to deploy) and hold no data: they load without a token, and the page
//! then asks the admin API for everything with the token the operator
//! types in, kept in the tab's session storage. A strict content security
//! policy keeps the page to its own script and to this listener.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../console/index.html");
const CONSOLE_JS: &str = include_str!("../console/console.js");
const CONSOLE_CSS: &str = include_str!("../console/console.css");

/// Only this listener's own script, style and API; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the console's assets (served without a token).
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/" | "/console" | "/console/" | "/console/console.js" | "/console/console.css"
    )
}

pub fn routes() -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::permanent("/console/") }))
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for (name, text) in [("index.html", INDEX_HTML), ("console.js", CONSOLE_JS)] {
            assert!(!text.contains("http://"), "{name} names an outside address");
            assert!(
                !text.contains("https://"),
                "{name} names an outside address"
            );
        }
        assert!(INDEX_HTML.contains("console.js") && INDEX_HTML.contains("console.css"));
        assert!(
            !INDEX_HTML.contains("<script>"),
            "inline script would break the CSP"
        );
    }
}
