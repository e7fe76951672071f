//! An MCP server (Model Context Protocol) for monitoring and operating a
//! running Tether server in natural language, two ways:
//!
//! - `tether mcp`, over stdio, beside a running server: read-only tools,
//!   and the write tools (kick, ban, notice, drain) only with
//!   `--allow-writes`;
//! - streamable HTTP at `/mcp` on the admin listener ([`http_service`]):
//!   read-only tools for a viewer's token, the write tools too for an
//!   operator's.
//!
//! Either way it is a client of the admin API (docs/OPERATIONS.md): each
//! tool is one or two admin requests made with the caller's token, so the
//! server checks roles and audits every write exactly as for any other
//! admin client.
//!
//! | tool | what |
//! |---|---|
//! | `status` | players, zombies, storage, protect, drain, per-shard queues and tick |
//! | `players` | sessions whose account starts with a prefix |
//! | `session` | one account's session |
//! | `recent_events` | the newest audited operator actions |
//! | `metrics` | the Prometheus metrics whose name starts with a prefix |
//! | `metrics_over_time` | the last minutes of samples, summarized |
//! | `why_is_latency_up` | reads status and metrics and names the likely causes |
//! | `kick`, `ban`, `notice`, `drain` | writes, with `--allow-writes` |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{
    schemars, tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler, ServiceExt,
};
use serde::Deserialize;

use crate::admin::Role;

/// The longest an admin request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes of an admin answer a tool reads.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// The write tools: see [`Writes`].
const WRITE_TOOLS: [&str; 4] = ["kick", "ban", "notice", "drain"];

/// The largest MCP request accepted over HTTP.
const MAX_HTTP_REQUEST_BYTES: usize = 64 * 1024;

/// Who is offered the write tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// `tether mcp` without `--allow-writes`: nobody.
    Never,
    /// `tether mcp --allow-writes`: the assistant (the server still wants
    /// the operator token for each write).
    Offered,
    /// Over HTTP: a request that carries the operator token (or any request
    /// to a tokenless loopback server, where every caller is an operator).
    ToOperators,
}

/// Where the admin API is and how to talk to it.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// `host:port` of the admin listener.
    pub addr: String,
    pub token: Option<String>,
}

/// Why an admin request failed.
#[derive(Debug)]
pub struct AdminError(pub String);

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AdminError {}

impl AdminClient {
    /// One request; the status and the body as text.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), AdminError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.request_inner(method, path, body))
            .await
            .map_err(|_| {
                AdminError(format!(
                    "the admin API at {} did not answer in time",
                    self.addr
                ))
            })?
    }

    async fn request_inner(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), AdminError> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            AdminError(format!("admin API at {}: {what}: {e}", self.addr))
        };
        let stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| err("cannot connect", &e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| err("handshake", &e))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.addr);
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| err("request", &e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| err("request", &e))?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| err("reading the answer", &e))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A GET whose answer must be 2xx JSON.
    async fn get_json(&self, path: &str) -> Result<serde_json::Value, AdminError> {
        let (status, body) = self.request("GET", path, None).await?;
        if !(200..300).contains(&status) {
            return Err(AdminError(format!("GET {path}: {status} {}", body.trim())));
        }
        serde_json::from_str(&body).map_err(|e| AdminError(format!("GET {path}: not JSON: {e}")))
    }
}

/// The MCP server: tools over an [`AdminClient`].
#[derive(Clone)]
pub struct TetherMcp {
    admin: AdminClient,
    writes: Writes,
    tool_router: Arc<ToolRouter<Self>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PlayersArgs {
    /// Account names starting with this ("" for all).
    #[serde(default)]
    pub prefix: String,
    /// At most this many (1 to 1000; 50 when left out).
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AccountArgs {
    /// The account (character) name.
    pub account: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct LimitArgs {
    /// At most this many (1 to 1000; 20 when left out).
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct MinutesArgs {
    /// How far back, in minutes (1 to 60; 10 when left out).
    pub minutes: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct MetricsArgs {
    /// Metric names starting with this, e.g. "tether_sessions" ("tether_" when left out).
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct KickArgs {
    /// The account whose session ends.
    pub account: String,
    /// Why, for the audit log.
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct BanArgs {
    /// The IP address to ban.
    pub ip: String,
    /// For how long, in minutes (1 to 43200).
    pub minutes: u32,
    /// Why, for the ban list and the audit log.
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct NoticeArgs {
    /// The text every player sees (1 to 500 characters).
    pub text: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct DrainArgs {
    /// true: refuse fresh logins (players stay); false: accept them again.
    pub on: bool,
}

fn text(s: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(s.into())])
}

fn failed(e: impl std::fmt::Display) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(e.to_string())])
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Percent-encodes a path or query component.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tool_router]
impl TetherMcp {
    /// A server for `admin`, offering the write tools as `writes` says.
    pub fn new(admin: AdminClient, writes: Writes) -> TetherMcp {
        TetherMcp {
            admin,
            writes,
            tool_router: Arc::new(Self::tool_router()),
        }
    }

    #[tool(
        description = "The server now: players, zombies (link-dead sessions), storage, protect mode, drain, the players' TCP round-trip time p99, and per shard the queues and the last tick's lag, duration and p99."
    )]
    async fn status(&self) -> CallToolResult {
        self.read("/v1/status").await
    }

    #[tool(
        description = "Sessions whose account starts with a prefix: link state, last input, frames, replay depth."
    )]
    async fn players(&self, Parameters(a): Parameters<PlayersArgs>) -> CallToolResult {
        let limit = a.limit.unwrap_or(50).clamp(1, 1000);
        let path = format!("/v1/players?q={}&limit={limit}", encode(&a.prefix));
        self.read(&path).await
    }

    #[tool(
        description = "One account's session: shard, session id, link (active or zombie), last input applied, frames sent and acknowledged, replay depth, and for a connected player its address, TCP round-trip time and write queue."
    )]
    async fn session(&self, Parameters(a): Parameters<AccountArgs>) -> CallToolResult {
        self.read(&format!("/v1/players/{}", encode(&a.account)))
            .await
    }

    #[tool(
        description = "The newest operator actions from the audit log (kicks, bans, notices, drains, protect mode), newest last."
    )]
    async fn recent_events(&self, Parameters(a): Parameters<LimitArgs>) -> CallToolResult {
        let limit = a.limit.unwrap_or(20).clamp(1, 1000);
        self.read(&format!("/v1/audit?limit={limit}")).await
    }

    #[tool(
        description = "Prometheus metrics of the server whose name starts with a prefix (counters are totals since start)."
    )]
    async fn metrics(&self, Parameters(a): Parameters<MetricsArgs>) -> CallToolResult {
        let prefix = a.prefix.unwrap_or_else(|| "tether_".into());
        match self.admin.request("GET", "/metrics", None).await {
            Ok((200, body)) => {
                let lines: Vec<&str> = body
                    .lines()
                    .filter(|l| !l.starts_with('#') && l.starts_with(prefix.as_str()))
                    .collect();
                if lines.is_empty() {
                    text(format!("no metric starts with {prefix:?}"))
                } else {
                    text(lines.join("\n"))
                }
            }
            Ok((status, body)) => failed(format!("GET /metrics: {status} {}", body.trim())),
            Err(e) => failed(e),
        }
    }

    #[tool(
        description = "How the server changed over the last minutes: for players, zombies, connections, messages per second, memory, bans, logins waiting for storage and the worst tick lag and duration, the first, lowest, highest and last value, and the samples."
    )]
    async fn metrics_over_time(&self, Parameters(a): Parameters<MinutesArgs>) -> CallToolResult {
        let minutes = a.minutes.unwrap_or(10).clamp(1, 60);
        match self
            .admin
            .get_json(&format!("/v1/history?minutes={minutes}"))
            .await
        {
            Ok(v) => text(summarize_history(&v)),
            Err(e) => failed(e),
        }
    }

    #[tool(
        description = "Why players may see more latency now: checks ticks falling behind, protect mode, storage, logins and resumes waiting, full rings to the I/O threads, and drains, and says which hold."
    )]
    async fn why_is_latency_up(&self) -> CallToolResult {
        match self.admin.get_json("/v1/status").await {
            Ok(v) => text(diagnose(&v).join("\n")),
            Err(e) => failed(e),
        }
    }

    #[tool(
        description = "End one account's session (the player is saved and disconnected with KICKED; it may log in again). Audited."
    )]
    async fn kick(&self, Parameters(a): Parameters<KickArgs>) -> CallToolResult {
        let body = serde_json::json!({ "note": a.note }).to_string();
        let path = format!("/v1/players/{}/kick", encode(&a.account));
        self.write("POST", &path, body).await
    }

    #[tool(
        description = "Ban an IP address for some minutes with a note (new connections refused). Audited."
    )]
    async fn ban(&self, Parameters(a): Parameters<BanArgs>) -> CallToolResult {
        let body =
            serde_json::json!({ "ip": a.ip, "minutes": a.minutes, "note": a.note }).to_string();
        self.write("POST", "/v1/bans", body).await
    }

    #[tool(
        description = "Send a notice every player sees (maintenance coming, an event). Audited."
    )]
    async fn notice(&self, Parameters(a): Parameters<NoticeArgs>) -> CallToolResult {
        let body = serde_json::json!({ "text": a.text }).to_string();
        self.write("POST", "/v1/notice", body).await
    }

    #[tool(
        description = "Drain the server for maintenance (refuse fresh logins; players stay) or end the drain. Audited."
    )]
    async fn drain(&self, Parameters(a): Parameters<DrainArgs>) -> CallToolResult {
        let body = if a.on { "on" } else { "off" };
        self.write("PUT", "/v1/drain", body.into()).await
    }
}

impl TetherMcp {
    /// A GET whose JSON answer is the tool's result, pretty-printed.
    async fn read(&self, path: &str) -> CallToolResult {
        match self.admin.get_json(path).await {
            Ok(v) => text(pretty(&v)),
            Err(e) => failed(e),
        }
    }

    async fn write(&self, method: &str, path: &str, body: String) -> CallToolResult {
        match self.admin.request(method, path, Some(body)).await {
            Ok((status, body)) if (200..300).contains(&status) => text(if body.trim().is_empty() {
                "done".into()
            } else {
                body
            }),
            Ok((status, body)) => failed(format!("{method} {path}: {status} {}", body.trim())),
            Err(e) => failed(e),
        }
    }
}

impl TetherMcp {
    /// Whether the caller is offered the write tools.
    fn writes_allowed(&self, ctx: &RequestContext<RoleServer>) -> bool {
        match self.writes {
            Writes::Never => false,
            Writes::Offered => true,
            Writes::ToOperators => ctx
                .extensions
                .get::<hyper::http::request::Parts>()
                .and_then(|p| p.extensions.get::<Role>())
                .is_some_and(|r| *r == Role::Operator),
        }
    }

    /// This server as the caller: over HTTP, the admin requests carry the
    /// caller's own token, so that the server checks and audits the
    /// caller's role.
    fn as_caller(&self, ctx: &RequestContext<RoleServer>) -> TetherMcp {
        let mut this = self.clone();
        if let Some(parts) = ctx.extensions.get::<hyper::http::request::Parts>() {
            this.admin.token = parts
                .headers
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_string());
        }
        this
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for TetherMcp {
    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let writes = self.writes_allowed(&context);
        let tools = self
            .tool_router
            .list_all()
            .into_iter()
            .filter(|t| writes || !WRITE_TOOLS.contains(&t.name.as_ref()))
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if WRITE_TOOLS.contains(&request.name.as_ref()) && !self.writes_allowed(&context) {
            return Err(ErrorData::invalid_request(
                format!(
                    "{} is a write tool: it needs `tether mcp --allow-writes`, or over HTTP the operator token",
                    request.name
                ),
                None,
            ));
        }
        let this = self.as_caller(&context);
        this.tool_router
            .call(ToolCallContext::new(&this, request, context))
            .await
    }
}

/// MCP over streamable HTTP for the admin listener at `admin`: stateless
/// (no session is kept between requests, so nothing grows with clients),
/// answers in plain JSON. The admin router puts it behind its token check.
pub fn http_service(admin: SocketAddr) -> StreamableHttpService<TetherMcp, NeverSessionManager> {
    // The tools call the admin API on the same listener, by loopback when
    // it listens on every address.
    let mut target = admin;
    if target.ip().is_unspecified() {
        target.set_ip(if admin.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let client = AdminClient {
        addr: target.to_string(),
        token: None,
    };
    let mut config = StreamableHttpServerConfig::default();
    config.legacy_session_mode = false;
    config.json_response = true;
    config.max_request_body_bytes = MAX_HTTP_REQUEST_BYTES;
    // Host checks guard a loopback listener against DNS rebinding; the
    // listener's own address is allowed too (off loopback it needs tokens).
    config.allowed_hosts = vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
        admin.ip().to_string(),
    ];
    StreamableHttpService::new(
        move || Ok(TetherMcp::new(client.clone(), Writes::ToOperators)),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// A `/v1/history` answer as a short table (first, min, max, last per
/// figure) followed by the samples.
pub fn summarize_history(samples: &serde_json::Value) -> String {
    let rows = samples.as_array().map(Vec::as_slice).unwrap_or(&[]);
    if rows.is_empty() {
        return "no samples yet (one is taken every admin_history_interval_ms)".into();
    }
    let mut out = format!("{} samples\nfigure: first / min / max / last\n", rows.len());
    for key in [
        "players",
        "zombies",
        "connections",
        "msgs_per_s",
        "rss_mb",
        "banned_ips",
        "loads_deferred",
        "tick_lag_ms",
        "tick_us",
        "tick_p99_us",
        "rtt_p99_ms",
    ] {
        let vals: Vec<f64> = rows.iter().filter_map(|r| r[key].as_f64()).collect();
        let (Some(first), Some(last)) = (vals.first(), vals.last()) else {
            continue;
        };
        let min = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let max = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        out.push_str(&format!("{key}: {first} / {min} / {max} / {last}\n"));
    }
    let outages = rows.iter().filter(|r| r["storage_ok"] == false).count();
    if outages > 0 {
        out.push_str(&format!("storage unavailable in {outages} samples\n"));
    }
    out.push_str(&pretty(samples));
    out
}

/// What in a `/v1/status` answer can make players wait, one line each; a
/// line saying so when nothing does.
pub fn diagnose(status: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    if status["storage"] != "ok" {
        out.push(
            "storage is unavailable: writes are held and fresh logins refused until it is back"
                .into(),
        );
    }
    if status["draining"] == true {
        out.push(
            "the server is drained: fresh logins are refused (PUT /v1/drain off to end it)".into(),
        );
    }
    for s in status["shards"].as_array().into_iter().flatten() {
        let shard = &s["shard"];
        let lag = s["tick_lag_ms"].as_u64().unwrap_or(0);
        let tick_us = s["tick_us"].as_u64().unwrap_or(0);
        if lag > 20 {
            out.push(format!("shard {shard}: its last tick started {lag} ms late: the shard thread is behind (CPU, or too many players on it)"));
        }
        if tick_us > 25_000 {
            out.push(format!(
                "shard {shard}: its last tick took {} ms",
                tick_us / 1000
            ));
        }
        if s["protecting"] == true {
            out.push(format!(
                "shard {shard}: in protect mode (overload): fresh logins refused"
            ));
        }
        let deferred = s["loads_deferred"].as_u64().unwrap_or(0);
        let loading = s["loading"].as_u64().unwrap_or(0);
        if deferred + loading > 100 {
            out.push(format!(
                "shard {shard}: {} logins and resumes wait for storage",
                deferred + loading
            ));
        }
        let io = s["io_backlog"].as_u64().unwrap_or(0);
        if io > 0 {
            out.push(format!("shard {shard}: {io} frames wait for a full ring to an I/O thread: the I/O threads are behind"));
        }
        let commits = s["commit_backlog"].as_u64().unwrap_or(0);
        if commits > 100 {
            out.push(format!("shard {shard}: {commits} durable transactions wait for their commit (loot confirmations are late)"));
        }
    }
    let rtt = status["rtt_p99_ms"].as_f64().unwrap_or(0.0);
    if rtt > 150.0 {
        out.push(format!("the players' network: the TCP round-trip time p99 is {rtt:.0} ms (the kernel's measure, a sample of connections)"));
    }
    if out.is_empty() {
        out.push("nothing on the server side: ticks on time, no protect mode, storage up, no queues. Look at the network between players and the server".into());
    }
    out
}

/// Serves MCP on stdin/stdout until the client closes it.
pub async fn serve_stdio(admin: AdminClient, allow_writes: bool) -> Result<(), AdminError> {
    // Fail early and clearly when the admin API is not there.
    admin.get_json("/v1/status").await?;
    let writes = if allow_writes {
        Writes::Offered
    } else {
        Writes::Never
    };
    let service = TetherMcp::new(admin, writes)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| AdminError(format!("MCP handshake failed: {e}")))?;
    service
        .waiting()
        .await
        .map_err(|e| AdminError(format!("MCP session ended: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_server_is_not_the_cause() {
        let quiet = serde_json::json!({
            "storage": "ok", "draining": false,
            "shards": [{"shard": 0, "tick_lag_ms": 0, "tick_us": 800, "protecting": false,
                        "loads_deferred": 0, "loading": 0, "io_backlog": 0, "commit_backlog": 0}]
        });
        let d = diagnose(&quiet);
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("nothing on the server side"), "{d:?}");
    }

    #[test]
    fn each_cause_is_named() {
        let busy = serde_json::json!({
            "storage": "unavailable", "draining": true, "rtt_p99_ms": 180.5,
            "shards": [{"shard": 1, "tick_lag_ms": 120, "tick_us": 40_000, "protecting": true,
                        "loads_deferred": 500, "loading": 20, "io_backlog": 7, "commit_backlog": 300}]
        });
        let d = diagnose(&busy).join("\n");
        for needle in [
            "storage is unavailable",
            "drained",
            "120 ms late",
            "took 40 ms",
            "protect mode",
            "520 logins",
            "7 frames",
            "300 durable",
            "round-trip time p99 is 180 ms",
        ] {
            assert!(d.contains(needle), "{needle} missing in {d}");
        }
    }

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(encode("al ice/../x"), "al%20ice%2F..%2Fx");
        assert_eq!(encode("bob_7"), "bob_7");
    }
}
