//! The dashboard (`/ui`): three static files embedded in the binary at build time, served as
//! they are. The page calls the public API with the key the user signs in with, so it shows
//! exactly what that key may see; `/ui/config.json` tells it whether it runs on the service
//! (sign-in, every page) or on one `run` job (`run --ui`: that job's page only, read-only).

pub mod run_view;

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// Nothing but this origin: no inline script, no CDN, no frames.
const POLICY: &str = "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            // Assets change with the binary: revalidate rather than cache across upgrades.
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, POLICY),
        ],
        body,
    )
        .into_response()
}

/// Which dashboard the page is: the service's, or one `run` job's (its batch id).
#[derive(Debug, Clone)]
pub enum UiMode {
    /// `keyless`: the service has no API keys, so the page has no sign-in.
    Service {
        keyless: bool,
    },
    Run {
        batch: String,
        title: String,
    },
}

/// The dashboard's routes, for a router of any state.
pub fn router<S: Clone + Send + Sync + 'static>(mode: UiMode) -> Router<S> {
    let config = match mode {
        UiMode::Service { keyless } => serde_json::json!({"mode": "service", "keyless": keyless}),
        UiMode::Run { batch, title } => {
            serde_json::json!({"mode": "run", "batch": batch, "title": title})
        }
    }
    .to_string();
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/ui/config.json",
            get(move || {
                let config = config.clone();
                async move { ([(CONTENT_TYPE, "application/json")], config).into_response() }
            }),
        )
}
