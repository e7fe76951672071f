//! Admin HTTP: `/healthz`, `/metrics` (Prometheus text), the guard's bans
//! and protect mode, on its own small runtime so that nothing it does can
//! slow the game threads. It listens on loopback by default
//! (`admin_listen`): it is for operators, never for players.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | `{"status":"ok"}` or degraded storage |
//! | `GET /metrics` | OpenMetrics text |
//! | `GET /bans` | `[{"ip":"203.0.113.9","remaining_ms":291000,"kernel":true}, ...]` (`kernel`: its SYNs are dropped by the kernel) |
//! | `DELETE /bans/{ip}` | lifts a ban: 204, or 404 if the address was not banned (the kernel filter follows within a second) |
//! | `GET /protect` | `{"override":"auto","shards_protecting":0}` |
//! | `PUT /protect` | body `on`, `off` or `auto`: force protect mode, or let it follow load |

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::guard::{Defences, ProtectOverride};
use crate::metrics::Metrics;

/// What the admin handlers share with the server.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub defences: Arc<Defences>,
    /// The server's clock (the guard's `now`).
    pub clock: Instant,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .route("/bans", get(list_bans))
        .route("/bans/{ip}", axum::routing::delete(lift_ban))
        .route("/protect", get(get_protect).put(put_protect))
        .with_state(state)
}

/// `{"status":"ok"}`, or `{"status":"degraded","storage":"unavailable"}`
/// while storage is away (the server still plays; writes are held). Both
/// answer 200: the process is up and serving players either way.
async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    let body = if s.metrics.storage_degraded.get() != 0 {
        "{\"status\":\"degraded\",\"storage\":\"unavailable\"}\n"
    } else {
        "{\"status\":\"ok\"}\n"
    };
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn render_metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

fn now_ms(s: &AdminState) -> u64 {
    s.clock.elapsed().as_millis() as u64
}

/// Current bans, longest remaining first.
async fn list_bans(State(s): State<AdminState>) -> impl IntoResponse {
    let bans = s.defences.guard().bans(now_ms(&s));
    let items: Vec<String> = bans
        .iter()
        .map(|b| {
            format!(
                "{{\"ip\":\"{}\",\"remaining_ms\":{},\"kernel\":{}}}",
                b.ip, b.remaining_ms, b.filtered
            )
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("[{}]\n", items.join(",")),
    )
}

async fn lift_ban(State(s): State<AdminState>, Path(ip): Path<String>) -> impl IntoResponse {
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return (StatusCode::BAD_REQUEST, "not an IP address\n");
    };
    let mut guard = s.defences.guard();
    if guard.lift(ip) {
        s.metrics.banned_ips.set(guard.banned_ips() as i64);
        tracing::info!(%ip, "ban lifted by the operator");
        (StatusCode::NO_CONTENT, "")
    } else {
        (StatusCode::NOT_FOUND, "not banned\n")
    }
}

fn protect_json(s: &AdminState) -> String {
    format!(
        "{{\"override\":\"{}\",\"shards_protecting\":{}}}\n",
        s.defences.protect_override().as_str(),
        s.metrics.protect_mode.get()
    )
}

async fn get_protect(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        protect_json(&s),
    )
}

/// `on` / `off` force protect mode (applied by each shard on its next
/// tick); `auto` hands it back to tick lag and memory.
async fn put_protect(State(s): State<AdminState>, body: String) -> impl IntoResponse {
    let Some(o) = ProtectOverride::parse(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "body must be on, off or auto\n".to_string(),
        );
    };
    s.defences.set_protect_override(o);
    tracing::info!(
        protect = o.as_str(),
        "protect mode override set by the operator"
    );
    (StatusCode::OK, protect_json(&s))
}
