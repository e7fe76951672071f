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
//!
//! The versioned admin API (`/v1/...`, JSON) is documented route by route
//! in docs/OPERATIONS.md ("The admin API"). Its roles: with neither
//! `admin_viewer_token` nor `admin_operator_token` set, the listener must be
//! on loopback and every request is an operator's; with tokens, every route
//! but `/healthz` needs `Authorization: Bearer TOKEN`, a viewer's token
//! reads, an operator's also writes. Every write is appended to the audit
//! log (`audit.jsonl` in the data directory, `GET /v1/audit`).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;

use crate::control::{
    self, Answer, Control, ControlError, IoAnswer, IoControl, IoQuery, PlayerRow, Query,
    MAX_SEARCH_ROWS,
};
use crate::directory::Directory;
use crate::guard::{Defences, ProtectOverride};
use crate::metrics::Metrics;

/// What the admin handlers share with the server.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub defences: Arc<Defences>,
    /// The server's clock (the guard's `now`).
    pub clock: Instant,
    pub control: Control,
    /// The I/O threads (connections' addresses and round-trip times).
    pub io: IoControl,
    pub directory: Arc<Directory>,
    pub auth: Arc<AdminAuth>,
    pub audit: Arc<Audit>,
    /// The notes of bans set by hand, by address (at most
    /// [`MAX_BAN_NOTES`]; those of ended bans are dropped when it fills).
    pub ban_notes: Arc<Mutex<HashMap<IpAddr, String>>>,
    /// The settings the server started with, secrets redacted.
    pub settings: Arc<serde_json::Value>,
    /// Samples of the last hour (`GET /v1/history`).
    pub history: Arc<History>,
    /// Cluster membership (cluster mode).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Samples kept: an hour at the default interval.
pub const HISTORY_SAMPLES: usize = 720;

/// The server at one moment, for graphs and "what changed" questions.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Unix time, ms.
    pub at_ms: u64,
    pub players: i64,
    pub zombies: i64,
    pub connections: i64,
    /// Frames in and out per second since the previous sample.
    pub msgs_per_s: f64,
    pub rss_mb: f64,
    pub banned_ips: i64,
    pub storage_ok: bool,
    pub loads_deferred: i64,
    /// The latest tick's lag and duration, worst shard.
    pub tick_lag_ms: u64,
    pub tick_us: u64,
    /// The 99th percentile of the latest ticks' durations, worst shard.
    pub tick_p99_us: u64,
    /// The 99th percentile of the players' TCP round-trip times, ms (a
    /// sample of up to 256 connections per I/O thread).
    pub rtt_p99_ms: f64,
}

/// The last [`HISTORY_SAMPLES`] samples, oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<std::collections::VecDeque<Sample>>,
}

impl History {
    fn push(&self, sample: Sample) {
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == HISTORY_SAMPLES {
            q.pop_front();
        }
        q.push_back(sample);
    }

    /// The samples taken since `since_ms` (Unix ms), oldest first.
    pub fn since(&self, since_ms: u64) -> Vec<Sample> {
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().filter(|s| s.at_ms >= since_ms).cloned().collect()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Takes a sample every `interval`, for as long as the admin runtime runs.
pub async fn record_history(s: AdminState, interval: std::time::Duration) {
    use crate::metrics::labels;
    let mut last_frames: Option<(f64, Instant)> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let m = &s.metrics;
        let frames = (m.frames_in.get() + m.frames_out.get()) as f64;
        let now = Instant::now();
        let msgs_per_s = match last_frames {
            Some((f, t)) if now > t => (frames - f) / now.duration_since(t).as_secs_f64(),
            _ => 0.0,
        };
        last_frames = Some((frames, now));
        let (mut tick_lag_ms, mut tick_us, mut tick_p99_us) = (0, 0, 0);
        let rtt_p99_ms = rtt_p99_ms(&s.io).await.unwrap_or(0.0);
        for shard in 0..s.control.threads() {
            if let Ok(Answer::Status(st)) = s.control.ask(shard, Query::Status).await {
                tick_lag_ms = tick_lag_ms.max(st.tick_lag_ms);
                tick_us = tick_us.max(st.tick_us);
                tick_p99_us = tick_p99_us.max(st.tick_p99_us);
            }
        }
        s.history.push(Sample {
            at_ms: unix_ms(),
            players: m
                .sessions
                .get_or_create(&labels(&[("state", "active")]))
                .get(),
            zombies: m
                .sessions
                .get_or_create(&labels(&[("state", "zombie")]))
                .get(),
            connections: m.connections.get(),
            msgs_per_s: (msgs_per_s * 10.0).round() / 10.0,
            rss_mb: (crate::metrics::rss_bytes() as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            banned_ips: m.banned_ips.get(),
            storage_ok: m.storage_degraded.get() == 0,
            loads_deferred: m.loads_deferred.get(),
            tick_lag_ms,
            tick_us,
            tick_p99_us,
            rtt_p99_ms,
        });
    }
}

/// The 99th percentile of a sample of the connections' round-trip times,
/// ms; `None` when an I/O thread did not answer.
async fn rtt_p99_ms(io: &IoControl) -> Option<f64> {
    let answers = io.ask_all(|| IoQuery::Rtts).await.ok()?;
    let mut rtts: Vec<u32> = answers
        .into_iter()
        .flat_map(|a| match a {
            IoAnswer::Rtts(r) => r,
            IoAnswer::Link(_) => Vec::new(),
        })
        .collect();
    Some(f64::from(control::p99(&mut rtts)) / 1000.0)
}

/// `GET /v1/history?minutes=N`: the samples of the last N minutes (10 by
/// default, 60 at most), oldest first.
async fn history(State(s): State<AdminState>, RawQuery(query): RawQuery) -> Response {
    let minutes = query_param(&query, "minutes")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(10)
        .clamp(1, 60);
    json_response(&s.history.since(unix_ms().saturating_sub(minutes * 60_000)))
}

/// Ban notes kept at most.
pub const MAX_BAN_NOTES: usize = 4096;

/// The longest ban set by hand: 30 days.
const MAX_BAN_MINUTES: u64 = 30 * 24 * 60;

/// The admin routes, the console (`/console/`) and `extra` (MCP at
/// `/mcp`), all behind [`authorize`].
pub fn router(state: AdminState, extra: Router) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .route("/bans", get(list_bans))
        .route("/bans/{ip}", axum::routing::delete(lift_ban))
        .route("/protect", get(get_protect).put(put_protect))
        .route("/v1/status", get(status))
        .route("/v1/players", get(find_players))
        .route("/v1/players/{account}", get(inspect_player))
        .route("/v1/players/{account}/kick", post(kick_player))
        .route("/v1/players/{account}/move", post(move_player))
        .route("/cluster", get(cluster_view))
        .route("/v1/cluster", get(cluster_view))
        .route("/v1/bans", get(list_bans).post(add_ban))
        .route("/v1/bans/{ip}", axum::routing::delete(lift_ban))
        .route("/v1/protect", get(get_protect).put(put_protect))
        .route("/v1/audit", get(read_audit))
        .route("/v1/drain", get(get_drain).put(put_drain))
        .route("/v1/notice", post(post_notice))
        .route("/v1/settings", get(settings))
        .route("/v1/history", get(history))
        .route("/v1/whoami", get(whoami))
        .with_state(state.clone())
        .merge(crate::console::routes())
        .merge(extra)
        .layer(axum::middleware::from_fn_with_state(state, authorize))
}

/// `GET /v1/whoami`: `{"role": "viewer"}` or `{"role": "operator"}`, the
/// role the request's token grants.
async fn whoami(role: Role) -> Response {
    json_response(&serde_json::json!({ "role": role.as_str() }))
}

// ----- roles -------------------------------------------------------------

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads: status, players, sessions, bans, audit, metrics.
    Viewer,
    /// Reads and writes: kick, lift bans, protect mode.
    Operator,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// The role [`authorize`] found for the request, as a handler argument.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Role {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Role, Self::Rejection> {
        // Every route goes through `authorize`; a request it let through
        // without a role is a tokenless (loopback, operator) one.
        Ok(parts
            .extensions
            .get::<Role>()
            .copied()
            .unwrap_or(Role::Operator))
    }
}

/// The admin tokens (`admin_viewer_token`, `admin_operator_token`).
#[derive(Debug, Default)]
pub struct AdminAuth {
    viewer: Option<String>,
    operator: Option<String>,
}

impl AdminAuth {
    pub fn new(viewer: Option<String>, operator: Option<String>) -> AdminAuth {
        let set = |t: Option<String>| t.filter(|t| !t.is_empty());
        AdminAuth {
            viewer: set(viewer),
            operator: set(operator),
        }
    }

    /// The role an `Authorization` header value grants.
    pub fn role_of(&self, authorization: Option<&str>) -> Option<Role> {
        if self.viewer.is_none() && self.operator.is_none() {
            // No tokens: loopback only (the settings refuse anything else).
            return Some(Role::Operator);
        }
        let token = authorization?.strip_prefix("Bearer ")?.trim().as_bytes();
        let is = |t: &Option<String>| t.as_deref().is_some_and(|t| same(t.as_bytes(), token));
        if is(&self.operator) {
            Some(Role::Operator)
        } else if is(&self.viewer) {
            Some(Role::Viewer)
        } else {
            None
        }
    }
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Every route but `/healthz` and the console's page needs a role; writes
/// need an operator. MCP (`/mcp`) is JSON-RPC over POST for reads and
/// writes alike: it offers its write tools to operators only.
async fn authorize(State(s): State<AdminState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || crate::console::is_public(path) {
        return next.run(req).await;
    }
    let mcp = path == "/mcp";
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(role) = s.auth.role_of(header) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            error_json("a viewer or operator token is needed (Authorization: Bearer TOKEN)"),
        )
            .into_response();
    };
    let writes = !mcp && !matches!(*req.method(), Method::GET | Method::HEAD);
    if writes && role != Role::Operator {
        return (
            StatusCode::FORBIDDEN,
            error_json("this needs the operator token; the viewer token only reads"),
        )
            .into_response();
    }
    req.extensions_mut().insert(role);
    next.run(req).await
}

fn error_json(message: &str) -> Response {
    json_response(&serde_json::json!({ "error": message }))
}

fn json_response<T: Serialize>(value: &T) -> Response {
    let mut body = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    body.push('\n');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn control_error(e: ControlError) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, error_json(&e.to_string())).into_response()
}

// ----- audit -------------------------------------------------------------

/// The audit log: one JSON line per write, appended to a file that
/// outlives the process. Rotate it with the usual tools (it is opened
/// anew for every entry).
#[derive(Debug)]
pub struct Audit {
    path: PathBuf,
    lock: Mutex<()>,
}

/// One audited write.
#[derive(Debug, Serialize)]
struct AuditEntry<'a> {
    /// Unix time, ms.
    at_ms: u64,
    role: &'static str,
    action: &'a str,
    target: &'a str,
    note: &'a str,
    /// Whether it took effect.
    ok: bool,
}

/// The most of the log's tail `GET /v1/audit` reads.
const AUDIT_TAIL_BYTES: u64 = 1 << 20;

impl Audit {
    pub fn new(path: PathBuf) -> Audit {
        Audit {
            path,
            lock: Mutex::new(()),
        }
    }

    fn record(&self, role: Role, action: &str, target: &str, note: &str, ok: bool) {
        let entry = AuditEntry {
            at_ms: unix_ms(),
            role: role.as_str(),
            action,
            target,
            note,
            ok,
        };
        let Ok(mut line) = serde_json::to_string(&entry) else {
            return;
        };
        line.push('\n');
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        match written {
            Ok(()) => tracing::info!(role = role.as_str(), action, target, ok, "audited"),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, action, target, "cannot write the audit log")
            }
        }
    }

    /// The newest `limit` entries, newest last.
    fn tail(&self, limit: usize) -> std::io::Result<Vec<serde_json::Value>> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let start = len.saturating_sub(AUDIT_TAIL_BYTES);
        f.seek(SeekFrom::Start(start))?;
        let mut text = String::new();
        f.take(AUDIT_TAIL_BYTES).read_to_string(&mut text)?;
        let mut lines: Vec<&str> = text.lines().collect();
        if start > 0 && !lines.is_empty() {
            lines.remove(0); // cut mid-line
        }
        let from = lines.len().saturating_sub(limit);
        Ok(lines[from..]
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// `limit=N` from a query string, clamped to `1..=max`.
fn query_param<'a>(query: &'a Option<String>, key: &str) -> Option<&'a str> {
    query
        .as_deref()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn limit_of(query: &Option<String>, default: usize, max: usize) -> usize {
    query_param(query, "limit")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

// ----- v1 routes ---------------------------------------------------------

/// `GET /v1/status`: the server and each shard.
async fn status(State(s): State<AdminState>) -> Response {
    let shards: Vec<_> = match s.control.ask_all(|| Query::Status).await {
        Ok(answers) => answers
            .into_iter()
            .filter_map(|a| match a {
                Answer::Status(st) => Some(st),
                _ => None,
            })
            .collect(),
        Err(e) => return control_error(e),
    };
    let players: u64 = shards.iter().map(|x| x.players).sum();
    let zombies: u64 = shards.iter().map(|x| x.zombies).sum();
    let rtt_p99_ms = rtt_p99_ms(&s.io).await;
    json_response(&serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": s.clock.elapsed().as_secs(),
        "players": players,
        "zombies": zombies,
        "storage": if s.metrics.storage_degraded.get() != 0 { "unavailable" } else { "ok" },
        "protect_override": s.defences.protect_override().as_str(),
        "draining": s.defences.draining(),
        "connections": s.metrics.connections.get(),
        "banned_ips": s.metrics.banned_ips.get(),
        "rtt_p99_ms": rtt_p99_ms,
        "shards": shards,
    }))
}

/// `GET /v1/players?q=PREFIX&limit=N`: sessions whose account starts with
/// PREFIX, by account, at most N (100 by default, 1,000 at most).
async fn find_players(State(s): State<AdminState>, RawQuery(query): RawQuery) -> Response {
    let prefix = query_param(&query, "q").unwrap_or("").to_string();
    let limit = limit_of(&query, 100, MAX_SEARCH_ROWS);
    let find = || Query::Find {
        prefix: prefix.clone(),
        limit,
    };
    let mut rows: Vec<PlayerRow> = match s.control.ask_all(find).await {
        Ok(answers) => answers
            .into_iter()
            .flat_map(|a| match a {
                Answer::Players(r) => r,
                _ => Vec::new(),
            })
            .collect(),
        Err(e) => return control_error(e),
    };
    rows.sort_by(|a, b| a.account.cmp(&b.account));
    rows.truncate(limit);
    json_response(&rows)
}

/// `GET /v1/players/{account}`: one session, or 404.
async fn inspect_player(State(s): State<AdminState>, Path(account): Path<String>) -> Response {
    let Some(shard) = s.directory.locate(&account) else {
        return (
            StatusCode::NOT_FOUND,
            error_json("no session for this account"),
        )
            .into_response();
    };
    match s.control.ask(shard, Query::Inspect { account }).await {
        Ok(Answer::Player(Some(mut row))) => {
            if let Some(conn) = row.conn {
                if let Ok(IoAnswer::Link(link)) = s.io.ask(conn.io, IoQuery::Link { conn }).await {
                    row.connection = link;
                }
            }
            json_response(&row)
        }
        Ok(_) => (
            StatusCode::NOT_FOUND,
            error_json("no session for this account"),
        )
            .into_response(),
        Err(e) => control_error(e),
    }
}

/// `POST /v1/players/{account}/kick`, body (optional) `{"note": "why"}`:
/// ends the session (`KICKED`; its tokens die with it). 200
/// `{"kicked":true}`, or 404. Audited.
async fn kick_player(
    State(s): State<AdminState>,
    Path(account): Path<String>,
    role: Role,
    body: String,
) -> Response {
    let note = if body.trim().is_empty() {
        String::new()
    } else {
        match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(v) => v
                .get("note")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .chars()
                .take(500)
                .collect(),
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    error_json("the body must be JSON: {\"note\": \"...\"}"),
                )
                    .into_response()
            }
        }
    };
    let kicked = match s.directory.locate(&account) {
        Some(shard) => {
            let q = Query::Kick {
                account: account.clone(),
                message: "ended by an operator".into(),
            };
            match s.control.ask(shard, q).await {
                Ok(Answer::Kicked(k)) => k,
                Ok(_) => false,
                Err(e) => return control_error(e),
            }
        }
        None => false,
    };
    s.audit.record(role, "kick", &account, &note, kicked);
    if kicked {
        json_response(&serde_json::json!({ "kicked": true }))
    } else {
        (
            StatusCode::NOT_FOUND,
            error_json("no session for this account"),
        )
            .into_response()
    }
}

/// `GET /v1/audit?limit=N`: the newest N audited writes (100 by default,
/// 1,000 at most), newest last.
/// `GET /cluster` (and `/v1/cluster`): the servers of the cluster as this
/// one sees them, its NATS link and its ownership counters. 404 on a single
/// server.
async fn cluster_view(State(s): State<AdminState>) -> Response {
    match &s.cluster {
        Some(c) => json_response(&c.describe()),
        None => (
            StatusCode::NOT_FOUND,
            error_json("this server is not in a cluster (set cluster = \"nats://...\")"),
        )
            .into_response(),
    }
}

/// `POST /v1/players/{account}/move`, body `{"node": "ID"}`: moves the
/// session to another server of the cluster (a channel change). The player
/// is saved with its session, the account is handed to that server once the
/// save is durable, and the client is redirected there and resumes, its
/// inputs applied once. 200 `{"moved":true,"node":ID}`; 404 (no session
/// here), 409 (no such live server), 400. Audited.
async fn move_player(
    State(s): State<AdminState>,
    Path(account): Path<String>,
    role: Role,
    body: String,
) -> Response {
    let Some(cluster) = &s.cluster else {
        return (
            StatusCode::NOT_FOUND,
            error_json("this server is not in a cluster"),
        )
            .into_response();
    };
    let node = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("node").and_then(|n| n.as_str()).map(str::to_string));
    let Some(node) = node else {
        return (
            StatusCode::BAD_REQUEST,
            error_json("the body must be JSON: {\"node\": \"SERVER ID\"} (see GET /cluster)"),
        )
            .into_response();
    };
    let Some(to) = cluster.node(&node) else {
        return (
            StatusCode::CONFLICT,
            error_json(
                "no live server of the cluster by that id, other than this one (see GET /cluster)",
            ),
        )
            .into_response();
    };
    let moved = match s.directory.locate(&account) {
        Some(shard) => {
            let q = Query::Move {
                account: account.clone(),
                to,
            };
            match s.control.ask(shard, q).await {
                Ok(Answer::Moved(m)) => m,
                Ok(_) => false,
                Err(e) => return control_error(e),
            }
        }
        None => false,
    };
    s.audit.record(role, "move", &account, &node, moved);
    if moved {
        json_response(&serde_json::json!({ "moved": true, "node": node }))
    } else {
        (
            StatusCode::NOT_FOUND,
            error_json("no session for this account on this server"),
        )
            .into_response()
    }
}

async fn read_audit(State(s): State<AdminState>, RawQuery(query): RawQuery) -> Response {
    let limit = limit_of(&query, 100, 1_000);
    match s.audit.tail(limit) {
        Ok(entries) => json_response(&entries),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            error_json(&format!("cannot read the audit log: {e}")),
        )
            .into_response(),
    }
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

/// Current bans, longest remaining first, with the note of a ban set by
/// hand.
async fn list_bans(State(s): State<AdminState>) -> Response {
    let bans = s.defences.guard().bans(now_ms(&s));
    let notes = s.ban_notes.lock().unwrap_or_else(|p| p.into_inner());
    let items: Vec<serde_json::Value> = bans
        .iter()
        .map(|b| {
            let mut v = serde_json::json!({
                "ip": b.ip.to_string(),
                "remaining_ms": b.remaining_ms,
                "kernel": b.filtered,
            });
            if let Some(note) = notes.get(&b.ip) {
                v["note"] = note.clone().into();
            }
            v
        })
        .collect();
    json_response(&items)
}

/// `POST /v1/bans`, body `{"ip": "203.0.113.9", "minutes": 60, "note":
/// "why"}`: bans an address by hand (new connections from it are refused
/// with `BANNED`; kick its players to remove them). Audited.
async fn add_ban(State(s): State<AdminState>, role: Role, body: String) -> Response {
    let bad = |m: &str| (StatusCode::BAD_REQUEST, error_json(m)).into_response();
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        return bad(r#"the body must be JSON: {"ip": "...", "minutes": N, "note": "..."}"#);
    };
    let Some(ip) = v["ip"].as_str().and_then(|ip| ip.parse::<IpAddr>().ok()) else {
        return bad("ip must be an IP address");
    };
    let Some(minutes) = v["minutes"]
        .as_u64()
        .filter(|m| (1..=MAX_BAN_MINUTES).contains(m))
    else {
        return bad("minutes must be 1..=43200 (30 days)");
    };
    let note: String = v["note"].as_str().unwrap_or("").chars().take(500).collect();
    let banned = {
        let mut guard = s.defences.guard();
        let banned = guard.ban(ip, minutes * 60_000, now_ms(&s));
        if banned {
            s.metrics.banned_ips.set(guard.banned_ips() as i64);
        }
        banned
    };
    if banned {
        let mut notes = s.ban_notes.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms(&s);
        keep_note(&mut notes, ip, &note, |ip| {
            s.defences.guard().is_banned(ip, now)
        });
    }
    s.audit.record(role, "ban", &ip.to_string(), &note, banned);
    if banned {
        json_response(
            &serde_json::json!({ "banned": true, "ip": ip.to_string(), "minutes": minutes }),
        )
    } else {
        (
            StatusCode::CONFLICT,
            error_json("not banned: the address is trusted (trusted_cidrs) or the per-address table is full"),
        )
            .into_response()
    }
}

/// Keeps a ban's note within [`MAX_BAN_NOTES`]: when full, the notes of
/// bans that ended go first; if all are still in force, the new note is
/// not kept (the ban itself stands).
fn keep_note(
    notes: &mut HashMap<IpAddr, String>,
    ip: IpAddr,
    note: &str,
    still_banned: impl Fn(IpAddr) -> bool,
) {
    if notes.len() >= MAX_BAN_NOTES && !notes.contains_key(&ip) {
        notes.retain(|ip, _| still_banned(*ip));
    }
    if notes.len() < MAX_BAN_NOTES || notes.contains_key(&ip) {
        notes.insert(ip, note.to_string());
    }
}

/// `GET /v1/settings`: the settings the server runs with, secrets
/// (ticket secret, admin tokens, database password) shown as `***`.
async fn settings(State(s): State<AdminState>) -> Response {
    json_response(&*s.settings)
}

/// The longest notice, in characters.
const MAX_NOTICE_CHARS: usize = 500;

/// `POST /v1/notice`, body `{"text": "Maintenance in 10 minutes"}`: a
/// `Notice` frame to every session (connected players now, link-dead ones
/// when they resume). 200 `{"sessions": N}`. Audited.
async fn post_notice(State(s): State<AdminState>, role: Role, body: String) -> Response {
    let text = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["text"].as_str().map(str::to_string))
        .filter(|t| !t.trim().is_empty() && t.chars().count() <= MAX_NOTICE_CHARS);
    let Some(text) = text else {
        return (
            StatusCode::BAD_REQUEST,
            error_json(r#"the body must be {"text": "..."} with 1 to 500 characters"#),
        )
            .into_response();
    };
    let notice = || Query::Notice { text: text.clone() };
    let sessions: usize = match s.control.ask_all(notice).await {
        Ok(answers) => answers
            .iter()
            .map(|a| match a {
                Answer::Noticed(n) => *n,
                _ => 0,
            })
            .sum(),
        Err(e) => {
            s.audit.record(role, "notice", "all", &text, false);
            return control_error(e);
        }
    };
    s.audit.record(role, "notice", "all", &text, true);
    json_response(&serde_json::json!({ "sessions": sessions }))
}

/// `GET /v1/drain`: `{"draining": false}`.
async fn get_drain(State(s): State<AdminState>) -> Response {
    json_response(&serde_json::json!({ "draining": s.defences.draining() }))
}

/// `PUT /v1/drain`, body `on` or `off`: a drained server refuses fresh
/// logins (`SERVER_BUSY`, retry in 30 s) and keeps its players and their
/// resumes. Audited.
async fn put_drain(State(s): State<AdminState>, role: Role, body: String) -> Response {
    let on = match body.trim() {
        "on" => true,
        "off" => false,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                error_json("body must be on or off"),
            )
                .into_response()
        }
    };
    s.defences.set_draining(on);
    s.audit.record(role, "drain", body.trim(), "", true);
    json_response(&serde_json::json!({ "draining": on }))
}

async fn lift_ban(
    State(s): State<AdminState>,
    Path(ip): Path<String>,
    role: Role,
) -> impl IntoResponse {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return (StatusCode::BAD_REQUEST, "not an IP address\n");
    };
    let lifted = {
        let mut guard = s.defences.guard();
        let lifted = guard.lift(addr);
        if lifted {
            s.metrics.banned_ips.set(guard.banned_ips() as i64);
        }
        lifted
    };
    if lifted {
        s.ban_notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
    }
    s.audit.record(role, "unban", &ip, "", lifted);
    if lifted {
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
async fn put_protect(State(s): State<AdminState>, role: Role, body: String) -> impl IntoResponse {
    let Some(o) = ProtectOverride::parse(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "body must be on, off or auto\n".to_string(),
        );
    };
    s.defences.set_protect_override(o);
    s.audit.record(role, "protect", o.as_str(), "", true);
    (StatusCode::OK, protect_json(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64) -> Sample {
        Sample {
            at_ms,
            players: 0,
            zombies: 0,
            connections: 0,
            msgs_per_s: 0.0,
            rss_mb: 0.0,
            banned_ips: 0,
            storage_ok: true,
            loads_deferred: 0,
            tick_lag_ms: 0,
            tick_us: 0,
            tick_p99_us: 0,
            rtt_p99_ms: 0.0,
        }
    }

    #[test]
    fn ban_notes_stay_within_their_bound() {
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let mut notes = HashMap::new();
        for i in 0..MAX_BAN_NOTES as u32 {
            keep_note(&mut notes, ip(i), "spam", |_| true);
        }
        assert_eq!(notes.len(), MAX_BAN_NOTES);
        // Full, every ban in force: the new note is not kept.
        keep_note(&mut notes, ip(1 << 20), "late", |_| true);
        assert_eq!(notes.len(), MAX_BAN_NOTES);
        assert!(!notes.contains_key(&ip(1 << 20)));
        // A ban already noted gets its new note.
        keep_note(&mut notes, ip(3), "again", |_| true);
        assert_eq!(notes[&ip(3)], "again");
        // Full, the even bans ended: their notes go, the new one stays.
        keep_note(&mut notes, ip(1 << 20), "late", |a| match a {
            IpAddr::V4(v4) => u32::from(v4) % 2 == 1,
            IpAddr::V6(_) => true,
        });
        assert_eq!(notes.len(), MAX_BAN_NOTES / 2 + 1);
        assert_eq!(notes[&ip(1 << 20)], "late");
    }

    #[test]
    fn history_keeps_the_newest_samples_up_to_its_bound() {
        let h = History::default();
        for at in 0..(HISTORY_SAMPLES as u64 + 10) {
            h.push(sample(at));
        }
        let all = h.since(0);
        assert_eq!(all.len(), HISTORY_SAMPLES);
        assert_eq!(all[0].at_ms, 10, "the oldest went first");
        assert_eq!(h.since(HISTORY_SAMPLES as u64 + 5).len(), 5);
    }
}
