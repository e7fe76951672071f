//! Server settings: embedded defaults, overridden by a TOML file (`--config`),
//! then by `TETHER_*` environment variables and command-line flags.
//!
//! Every bound the server enforces is a field here, with its default and the
//! reason for it next to the field.
//!
//! This is the operator's surface: one flat list of settings, the same keys
//! in the TOML file, the `TETHER_*` environment and the flags. No part of the
//! server takes it whole: at start each part gets its own settings, built
//! from it in one place (`net::IoConfig` for the I/O threads,
//! `tether_engine::EngineConfig` and `guard::ProtectConfig` for the shards,
//! `guard::GuardConfig` for admission, `tether_world::WorldConfig` for the
//! MMO, `tether_store::WriterConfig` for storage).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What to do with a connection that keeps sending far over its allowance
/// (the gate's own type, read here by its names: `drop`, `zombie`, `kick`).
pub use tether_engine::gate::FloodAction;

fn flood_action_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<FloodAction, D::Error> {
    let name = String::deserialize(d)?;
    FloodAction::parse(&name)
        .ok_or_else(|| serde::de::Error::unknown_variant(&name, &FloodAction::NAMES))
}

fn flood_action_name<S: serde::Serializer>(a: &FloodAction, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(a.as_str())
}

fn flood_action_flag() -> impl clap::builder::TypedValueParser<Value = FloodAction> {
    use clap::builder::{PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(FloodAction::NAMES)
        .map(|name: String| FloodAction::parse(&name).expect("one of FloodAction::NAMES"))
}

/// How players prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Any character name is accepted (local play, tests, benchmarks).
    Dev,
    /// Only HMAC-SHA256-signed tickets with an expiry (`tether ticket NAME`).
    Ticket,
}

/// What a fresh login does when its account already has a live or zombie session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TakeoverPolicy {
    /// The new login takes the session over; the old connection is closed
    /// with SESSION_TAKEN_OVER.
    TakeOver,
    /// The new login is refused with ALREADY_LOGGED_IN.
    Refuse,
}

/// Which game the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GameKind {
    /// The MMO reference game (proto/tether.proto).
    Mmo,
    /// The arena: one-on-one four-in-a-row matches (proto/arena.proto).
    Arena,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The game this server runs; its records are kept apart from other
    /// games' in storage.
    pub game: GameKind,
    /// Game listener (TCP).
    pub listen: SocketAddr,
    /// Game listener for browsers (WebSocket, the same protocol and limits
    /// as `listen`); a plain GET there serves the browser demo. Off when
    /// unset.
    pub ws_listen: Option<SocketAddr>,
    /// Admin HTTP listener: /healthz, /metrics, the admin API.
    pub admin_listen: SocketAddr,
    /// Bearer token of the admin API's read-only role (`viewer`).
    pub admin_viewer_token: Option<String>,
    /// Bearer token of the admin API's read-write role (`operator`). With
    /// neither token set, the admin listener must be on loopback, and every
    /// request there is an operator's.
    pub admin_operator_token: Option<String>,
    /// How often the admin listener records a sample of the server for
    /// `GET /v1/history` (the last 720 are kept: an hour at the default).
    pub admin_history_interval_ms: u64,
    /// Where the server keeps its data.
    pub data_dir: PathBuf,
    /// Character storage: `postgres://USER@HOST:PORT/DB` or `sqlite:PATH`.
    /// Unset: the embedded SQLite file `tether.db` in `data_dir`.
    pub store: Option<String>,
    /// Write-behind interval for positions and hp (loot is committed at once).
    pub flush_interval_ms: u64,
    /// Cluster mode: the NATS server(s) the servers of one game agree
    /// through (`nats://host:4222`, comma-separated for several). Needs a
    /// shared PostgreSQL `store`. Unset: a single server.
    pub cluster: Option<String>,
    /// The cluster's name: NATS buckets and subjects are named after it.
    pub cluster_name: String,
    /// This server's id in the cluster, unique and stable across restarts.
    /// Unset: `<host name>-<game port>`.
    pub node: Option<String>,
    /// The game address clients are sent to (redirects). Unset: `listen`,
    /// which must then be a specific address, not 0.0.0.0.
    pub advertise: Option<String>,
    /// The WebSocket URL clients are sent to. Unset: `ws://<ws_listen>/`.
    pub ws_advertise: Option<String>,
    /// How long a server that stopped answering keeps its accounts: its
    /// players are back elsewhere after at most about this long.
    pub cluster_lease_ms: u64,
    /// New logins go to another server while this one holds more than that
    /// one's players plus this percentage (plus 16).
    pub cluster_balance_slack_pct: u64,
    /// On SIGTERM / SIGINT, how long storage may take to write what it holds
    /// before the server exits anyway (logging what it could not write).
    pub shutdown_timeout_ms: u64,
    /// On SIGTERM / SIGINT, when clients are told to come back
    /// (`Close.retry_after_ms`): they then resume their sessions, which the
    /// server saved with every character, on the next process.
    pub restart_retry_ms: u64,
    pub auth: AuthMode,
    /// HMAC secret for ticket auth (required when auth = "ticket").
    pub ticket_secret: Option<String>,
    pub takeover: TakeoverPolicy,
    /// Player-versus-player combat.
    pub pvp: bool,
    /// I/O threads (each owns a share of the connections).
    pub io_threads: usize,
    /// World shards, one thread each. Each shard is a separate copy of the map
    /// (a "channel"); new players go to the least populated one.
    pub shards: usize,
    /// The map is sized for this many players per shard at `world_density`.
    pub world_players: usize,
    /// Average number of other players inside one player's view when the
    /// shard holds `world_players` spread uniformly.
    pub world_density: f32,
    /// World tick (monster AI, timers), milliseconds.
    pub tick_ms: u64,
    pub world_seed: u64,
    /// Largest client frame payload accepted. Client messages are small (a
    /// chat line of 256 bytes is the largest); 1 KiB leaves room and keeps a
    /// hostile peer from making the server buffer much.
    pub max_frame_len: usize,
    /// Most connections open at once; further accepts are closed at once.
    pub max_connections: usize,
    /// Close a connection that has not sent a valid Hello / Resume by then.
    pub handshake_timeout_ms: u64,
    /// A connection silent for this long is cut and its session turns zombie.
    pub heartbeat_timeout_ms: u64,
    /// The client is asked (Welcome) to send something at least this often.
    pub heartbeat_interval_ms: u64,
    /// How long a session survives without a connection.
    pub zombie_grace_ms: u64,
    /// The grace of a zombie that never applied an input (logged in and
    /// dropped, as a login flood does); not frozen by protect mode. At or
    /// above `zombie_grace_ms` it changes nothing.
    pub unplayed_zombie_grace_ms: u64,
    /// Counted frames kept per session for replay after a resume.
    pub replay_cap_frames: usize,
    /// Frames kept for replay while a session is a zombie; past them a
    /// resume gets a fresh snapshot. Bounds what absent players cost.
    pub zombie_replay_cap_frames: usize,
    /// Bytes queued for one connection before it is cut as a slow consumer
    /// (its session turns zombie and keeps its frames for replay).
    pub write_queue_cap_bytes: usize,
    /// Most frames one gathering write (`writev`) carries, 1..=64. 1 writes
    /// frame by frame (for comparison); more frames per call is what keeps a
    /// busy server's syscall count down.
    pub write_batch_frames: usize,
    /// How long a connection's first unwritten frame may wait for others to
    /// share its write, ms (0..=100; 0: written at the next pass of the I/O
    /// loop). More frames per write, fewer syscalls, that much more latency.
    pub write_coalesce_ms: u64,
    /// Send the writes due in a pass of the I/O loop in one io_uring
    /// submission instead of a `writev` each (falls back to `writev` if the
    /// kernel or a seccomp profile refuses a ring). Measured: about 11 %
    /// less CPU per message and a lower p99 at 10,000 players and 0.7
    /// moves/s, about the same at 5 moves/s (docs/BENCHMARKS.md).
    pub io_uring: bool,
    /// Before the I/O thread blocks in epoll, it polls without waiting for up
    /// to this long, µs (0..=10000; 0: block at once). Trades a core's idle
    /// time for wake-up latency.
    pub busy_poll_us: u64,
    /// Inputs acknowledged (InputAck) at the latest this long after they
    /// were applied. Longer means fewer frames, more inputs held by clients.
    pub input_ack_delay_ms: u64,
    /// Log filter (tracing's EnvFilter syntax), e.g. "info" or "tether=debug".
    pub log: String,

    // ----- defences (docs/OPERATIONS.md, "Under attack") -----------------
    /// Listen backlog asked of the kernel (capped by net.core.somaxconn).
    /// Large, so a burst of thousands of (re)connects is queued, not refused.
    pub listen_backlog: u32,
    /// Addresses (CIDR) exempt from the per-IP limits, strikes and bans; the
    /// global caps still apply. Default: exactly 127.0.0.1 and ::1, so
    /// load tests from one loopback address work while other loopback
    /// addresses (127.0.0.2, ...) are limited like any peer.
    pub trusted_cidrs: Vec<String>,
    /// New connections a second per source IP (token bucket refill).
    pub connect_rate_per_ip: f64,
    /// New connections one IP may open at once (token bucket size).
    pub connect_burst_per_ip: u32,
    /// Open connections per source IP (players behind one NAT share it).
    pub max_conns_per_ip: u32,
    /// Connections that have not sent Hello / Resume yet, server-wide; when
    /// full, the oldest of them is closed to make room.
    pub max_pending_handshakes: usize,
    /// Hello / Resume a second per source IP.
    pub login_rate_per_ip: f64,
    pub login_burst_per_ip: u32,
    /// Hello a second, server-wide (each one loads a character from storage).
    pub login_rate_global: f64,
    pub login_burst_global: u32,
    /// Resume a second, server-wide (a reconnect storm resumes everyone at once).
    pub resume_rate_global: f64,
    pub resume_burst_global: u32,
    /// Strikes (malformed frames, protocol violations, handshake timeouts,
    /// failed auth, input floods) within `strike_window_ms` that ban an IP.
    /// 0 disables bans.
    pub strikes_to_ban: u32,
    pub strike_window_ms: u64,
    /// How long a ban lasts.
    pub ban_ms: u64,
    /// Connects a banned IPv4 address may make (each refused with `BANNED`)
    /// before the kernel drops its SYNs until the ban ends; 0: never.
    pub ban_filter_after: u32,
    /// Source addresses the guard remembers at most (idle ones are forgotten).
    pub max_tracked_ips: usize,
    /// Client messages (Input, Ack) a second per connection; over it they
    /// are dropped (an Input keeps its number but loses its command).
    pub input_rate: f64,
    /// Messages a connection may send at once (a resume re-sends up to the
    /// client's 1024 kept inputs in one go).
    pub input_burst: u32,
    /// Messages over the allowance tolerated (refilling at `input_rate`)
    /// before `input_flood_action`.
    pub input_flood_tolerance: u32,
    /// Sustained input flood: drop (keep dropping), zombie (cut the
    /// connection; the session can resume) or kick (end the session).
    #[serde(
        deserialize_with = "flood_action_setting",
        serialize_with = "flood_action_name"
    )]
    pub input_flood_action: FloodAction,
    /// A shard whose ticks start this late (3 in a row) enters protect mode.
    pub protect_tick_lag_ms: u64,
    /// Resident memory budget, bytes: protect mode from 90 % of it (0: off).
    pub protect_memory_bytes: u64,
    /// Calm time (ticks on time, memory under 80 %) before protect mode ends.
    pub protect_calm_ms: u64,
    /// `retry_after_ms` given to logins refused in protect mode.
    pub protect_retry_after_ms: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            game: GameKind::Mmo,
            listen: "127.0.0.1:7777".parse().unwrap(),
            admin_listen: "127.0.0.1:7780".parse().unwrap(),
            ws_listen: None,
            data_dir: PathBuf::from("./data"),
            store: None,
            flush_interval_ms: 5_000,
            cluster: None,
            cluster_name: "tether".into(),
            node: None,
            advertise: None,
            ws_advertise: None,
            cluster_lease_ms: 5_000,
            cluster_balance_slack_pct: 10,
            shutdown_timeout_ms: 10_000,
            restart_retry_ms: 1_000,
            auth: AuthMode::Dev,
            ticket_secret: None,
            admin_viewer_token: None,
            admin_operator_token: None,
            admin_history_interval_ms: 5_000,
            takeover: TakeoverPolicy::TakeOver,
            pvp: false,
            io_threads: 1,
            shards: 1,
            world_players: 10_000,
            world_density: 8.0,
            tick_ms: 100,
            world_seed: 1,
            max_frame_len: 1024,
            max_connections: 50_000,
            handshake_timeout_ms: 5_000,
            heartbeat_timeout_ms: 15_000,
            heartbeat_interval_ms: 2_000,
            zombie_grace_ms: 120_000,
            unplayed_zombie_grace_ms: 5_000,
            replay_cap_frames: 4096,
            zombie_replay_cap_frames: 1024,
            write_queue_cap_bytes: 256 * 1024,
            write_batch_frames: 64,
            write_coalesce_ms: 0,
            io_uring: true,
            busy_poll_us: 0,
            input_ack_delay_ms: 500,
            log: "info".into(),
            listen_backlog: 8192,
            trusted_cidrs: vec!["127.0.0.1/32".into(), "::1/128".into()],
            connect_rate_per_ip: 10.0,
            connect_burst_per_ip: 20,
            max_conns_per_ip: 64,
            max_pending_handshakes: 10_000,
            login_rate_per_ip: 1.0,
            login_burst_per_ip: 5,
            login_rate_global: 2_000.0,
            login_burst_global: 5_000,
            resume_rate_global: 10_000.0,
            resume_burst_global: 10_000,
            strikes_to_ban: 10,
            strike_window_ms: 60_000,
            ban_ms: 300_000,
            ban_filter_after: 3,
            max_tracked_ips: 100_000,
            input_rate: 60.0,
            input_burst: 1_200,
            input_flood_tolerance: 600,
            input_flood_action: FloodAction::Zombie,
            protect_tick_lag_ms: 250,
            protect_memory_bytes: 0,
            protect_calm_ms: 10_000,
            protect_retry_after_ms: 5_000,
        }
    }
}

/// Settings given on the command line or in `TETHER_*` variables; each one
/// that is present overrides the file and the defaults.
#[derive(Debug, Default, clap::Args)]
pub struct Overrides {
    /// TOML settings file; its keys are the long flag names with `_` for `-`.
    #[arg(long, global = true, env = "TETHER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The game to run: mmo or arena [default: mmo].
    #[arg(long, global = true, env = "TETHER_GAME")]
    pub game: Option<GameKind>,
    /// Game listener address [default: 127.0.0.1:7777].
    #[arg(long, global = true, env = "TETHER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin HTTP address for /healthz and /metrics [default: 127.0.0.1:7780].
    #[arg(long, global = true, env = "TETHER_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// WebSocket game listener for browsers, e.g. 127.0.0.1:7781 (a plain GET there serves the browser demo) [default: off].
    #[arg(long, global = true, env = "TETHER_WS_LISTEN")]
    pub ws_listen: Option<SocketAddr>,
    /// Data directory [default: ./data].
    #[arg(long, global = true, env = "TETHER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Character storage: postgres://USER@HOST:PORT/DB or sqlite:PATH [default: sqlite in the data dir].
    #[arg(long, global = true, env = "TETHER_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Write-behind interval for positions and hp, ms [default: 5000].
    #[arg(long, global = true, env = "TETHER_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// Cluster mode: NATS URL(s), e.g. nats://127.0.0.1:4222 (needs a PostgreSQL store) [default: a single server].
    #[arg(long, global = true, env = "TETHER_CLUSTER")]
    pub cluster: Option<String>,
    /// The cluster's name (NATS buckets and subjects) [default: tether].
    #[arg(long, global = true, env = "TETHER_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// This server's id in the cluster [default: <host name>-<game port>].
    #[arg(long, global = true, env = "TETHER_NODE")]
    pub node: Option<String>,
    /// The game address clients are redirected to [default: listen].
    #[arg(long, global = true, env = "TETHER_ADVERTISE")]
    pub advertise: Option<String>,
    /// The WebSocket URL clients are redirected to [default: ws://<ws_listen>/].
    #[arg(long, global = true, env = "TETHER_WS_ADVERTISE")]
    pub ws_advertise: Option<String>,
    /// How long a silent server keeps its accounts, ms [default: 5000].
    #[arg(long, global = true, env = "TETHER_CLUSTER_LEASE_MS")]
    pub cluster_lease_ms: Option<u64>,
    /// Balance slack for new logins, percent [default: 10].
    #[arg(long, global = true, env = "TETHER_CLUSTER_BALANCE_SLACK_PCT")]
    pub cluster_balance_slack_pct: Option<u64>,
    /// On SIGTERM, the longest wait for storage to take the last writes, ms [default: 10000].
    #[arg(long, global = true, env = "TETHER_SHUTDOWN_TIMEOUT_MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// On SIGTERM, when clients are told to come back and resume, ms [default: 1000].
    #[arg(long, global = true, env = "TETHER_RESTART_RETRY_MS")]
    pub restart_retry_ms: Option<u64>,
    /// How often the admin API's history takes a sample, ms [default: 5000].
    #[arg(long, global = true, env = "TETHER_ADMIN_HISTORY_INTERVAL_MS")]
    pub admin_history_interval_ms: Option<u64>,
    /// Authentication: dev (any name) or ticket (signed tickets) [default: dev].
    #[arg(long, global = true, env = "TETHER_AUTH")]
    pub auth: Option<AuthMode>,
    /// Secret for signing and checking tickets.
    #[arg(
        long,
        global = true,
        env = "TETHER_TICKET_SECRET",
        hide_env_values = true
    )]
    pub ticket_secret: Option<String>,
    /// Admin API token of the read-only role (viewer).
    #[arg(
        long,
        global = true,
        env = "TETHER_ADMIN_VIEWER_TOKEN",
        hide_env_values = true
    )]
    pub admin_viewer_token: Option<String>,
    /// Admin API token of the read-write role (operator). Needed (with the
    /// viewer's, optionally) for an admin listener off loopback.
    #[arg(
        long,
        global = true,
        env = "TETHER_ADMIN_OPERATOR_TOKEN",
        hide_env_values = true
    )]
    pub admin_operator_token: Option<String>,
    /// A login for an account already in play: take-over or refuse [default: take-over].
    #[arg(long, global = true, env = "TETHER_TAKEOVER")]
    pub takeover: Option<TakeoverPolicy>,
    /// Enable player-versus-player combat [default: false].
    #[arg(long, global = true, env = "TETHER_PVP")]
    pub pvp: Option<bool>,
    /// Number of I/O threads [default: 1].
    #[arg(long, global = true, env = "TETHER_IO_THREADS")]
    pub io_threads: Option<usize>,
    /// Number of world shards (threads / map copies) [default: 1].
    #[arg(long, global = true, env = "TETHER_SHARDS")]
    pub shards: Option<usize>,
    /// Players per shard the map is sized for [default: 10000].
    #[arg(long, global = true, env = "TETHER_WORLD_PLAYERS")]
    pub world_players: Option<usize>,
    /// Other players in view on average at that population [default: 8].
    #[arg(long, global = true, env = "TETHER_WORLD_DENSITY")]
    pub world_density: Option<f32>,
    /// World tick in milliseconds [default: 100].
    #[arg(long, global = true, env = "TETHER_TICK_MS")]
    pub tick_ms: Option<u64>,
    /// Seed for monster placement and combat rolls [default: 1].
    #[arg(long, global = true, env = "TETHER_WORLD_SEED")]
    pub world_seed: Option<u64>,
    /// Largest client frame accepted, bytes [default: 1024].
    #[arg(long, global = true, env = "TETHER_MAX_FRAME_LEN")]
    pub max_frame_len: Option<usize>,
    /// Most open connections [default: 50000].
    #[arg(long, global = true, env = "TETHER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Deadline for Hello / Resume on a new connection, ms [default: 5000].
    #[arg(long, global = true, env = "TETHER_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Silence after which a connection is cut, ms [default: 15000].
    #[arg(long, global = true, env = "TETHER_HEARTBEAT_TIMEOUT_MS")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// Keep-alive interval asked of clients, ms [default: 2000].
    #[arg(long, global = true, env = "TETHER_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Zombie session grace period, ms [default: 120000].
    #[arg(long, global = true, env = "TETHER_ZOMBIE_GRACE_MS")]
    pub zombie_grace_ms: Option<u64>,
    /// Grace of a zombie that never sent an input, ms [default: 5000].
    #[arg(long, global = true, env = "TETHER_UNPLAYED_ZOMBIE_GRACE_MS")]
    pub unplayed_zombie_grace_ms: Option<u64>,
    /// Frames kept per session for replay [default: 4096].
    #[arg(long, global = true, env = "TETHER_REPLAY_CAP_FRAMES")]
    pub replay_cap_frames: Option<usize>,
    /// Frames kept per zombie session for replay [default: 1024].
    #[arg(long, global = true, env = "TETHER_ZOMBIE_REPLAY_CAP_FRAMES")]
    pub zombie_replay_cap_frames: Option<usize>,
    /// Per-connection write backlog before the slow-consumer cut, bytes [default: 262144].
    #[arg(long, global = true, env = "TETHER_WRITE_QUEUE_CAP_BYTES")]
    pub write_queue_cap_bytes: Option<usize>,
    /// Most frames per gathering write, 1..=64 [default: 64].
    #[arg(long, global = true, env = "TETHER_WRITE_BATCH_FRAMES")]
    pub write_batch_frames: Option<usize>,
    /// Longest wait of a connection's first unwritten frame for others to
    /// share its write, ms, 0..=100 [default: 0].
    #[arg(long, global = true, env = "TETHER_WRITE_COALESCE_MS")]
    pub write_coalesce_ms: Option<u64>,
    /// Send each pass's writes in one io_uring submission; false: a `writev`
    /// per connection [default: true].
    #[arg(long, global = true, env = "TETHER_IO_URING")]
    pub io_uring: Option<bool>,
    /// Spin polling for up to this long before blocking, µs, 0..=10000
    /// [default: 0].
    #[arg(long, global = true, env = "TETHER_BUSY_POLL_US")]
    pub busy_poll_us: Option<u64>,
    /// Longest delay before applied inputs are acknowledged, ms [default: 500].
    #[arg(long, global = true, env = "TETHER_INPUT_ACK_DELAY_MS")]
    pub input_ack_delay_ms: Option<u64>,
    /// Log filter, e.g. info, debug, tether_server=trace [default: info].
    #[arg(long, global = true, env = "TETHER_LOG")]
    pub log: Option<String>,
    /// Listen backlog (the kernel caps it at net.core.somaxconn) [default: 8192].
    #[arg(long, global = true, env = "TETHER_LISTEN_BACKLOG")]
    pub listen_backlog: Option<u32>,
    /// Comma-separated CIDRs exempt from per-IP limits and bans; "" for none [default: 127.0.0.1/32,::1/128].
    #[arg(
        long,
        global = true,
        env = "TETHER_TRUSTED_CIDRS",
        value_delimiter = ','
    )]
    pub trusted_cidrs: Option<Vec<String>>,
    /// New connections a second per source IP [default: 10].
    #[arg(long, global = true, env = "TETHER_CONNECT_RATE_PER_IP")]
    pub connect_rate_per_ip: Option<f64>,
    /// New connections one IP may open at once [default: 20].
    #[arg(long, global = true, env = "TETHER_CONNECT_BURST_PER_IP")]
    pub connect_burst_per_ip: Option<u32>,
    /// Open connections per source IP [default: 64].
    #[arg(long, global = true, env = "TETHER_MAX_CONNS_PER_IP")]
    pub max_conns_per_ip: Option<u32>,
    /// Connections not logged in yet, server-wide; the oldest is closed to make room [default: 10000].
    #[arg(long, global = true, env = "TETHER_MAX_PENDING_HANDSHAKES")]
    pub max_pending_handshakes: Option<usize>,
    /// Hello / Resume a second per source IP [default: 1].
    #[arg(long, global = true, env = "TETHER_LOGIN_RATE_PER_IP")]
    pub login_rate_per_ip: Option<f64>,
    /// Hello / Resume one IP may send at once [default: 5].
    #[arg(long, global = true, env = "TETHER_LOGIN_BURST_PER_IP")]
    pub login_burst_per_ip: Option<u32>,
    /// Hello a second, server-wide [default: 2000].
    #[arg(long, global = true, env = "TETHER_LOGIN_RATE_GLOBAL")]
    pub login_rate_global: Option<f64>,
    /// Hello at once, server-wide [default: 5000].
    #[arg(long, global = true, env = "TETHER_LOGIN_BURST_GLOBAL")]
    pub login_burst_global: Option<u32>,
    /// Resume a second, server-wide [default: 10000].
    #[arg(long, global = true, env = "TETHER_RESUME_RATE_GLOBAL")]
    pub resume_rate_global: Option<f64>,
    /// Resume at once, server-wide [default: 10000].
    #[arg(long, global = true, env = "TETHER_RESUME_BURST_GLOBAL")]
    pub resume_burst_global: Option<u32>,
    /// Strikes within the strike window that ban an IP; 0 disables bans [default: 10].
    #[arg(long, global = true, env = "TETHER_STRIKES_TO_BAN")]
    pub strikes_to_ban: Option<u32>,
    /// Strike window, ms [default: 60000].
    #[arg(long, global = true, env = "TETHER_STRIKE_WINDOW_MS")]
    pub strike_window_ms: Option<u64>,
    /// Ban length, ms [default: 300000].
    #[arg(long, global = true, env = "TETHER_BAN_MS")]
    pub ban_ms: Option<u64>,
    /// Refused connects of a banned IPv4 address after which the kernel
    /// drops its SYNs for the rest of the ban; 0: never [default: 3].
    #[arg(long, global = true, env = "TETHER_BAN_FILTER_AFTER")]
    pub ban_filter_after: Option<u32>,
    /// Source addresses remembered at most [default: 100000].
    #[arg(long, global = true, env = "TETHER_MAX_TRACKED_IPS")]
    pub max_tracked_ips: Option<usize>,
    /// Client messages (Input, Ack) a second per connection [default: 60].
    #[arg(long, global = true, env = "TETHER_INPUT_RATE")]
    pub input_rate: Option<f64>,
    /// Client messages a connection may send at once [default: 1200].
    #[arg(long, global = true, env = "TETHER_INPUT_BURST")]
    pub input_burst: Option<u32>,
    /// Messages over the allowance tolerated before the flood action [default: 600].
    #[arg(long, global = true, env = "TETHER_INPUT_FLOOD_TOLERANCE")]
    pub input_flood_tolerance: Option<u32>,
    /// Sustained input flood: drop, zombie (cut; session resumable) or kick [default: zombie].
    #[arg(long, global = true, env = "TETHER_INPUT_FLOOD_ACTION", value_parser = flood_action_flag())]
    pub input_flood_action: Option<FloodAction>,
    /// Tick lag that (3 ticks in a row) puts a shard in protect mode, ms [default: 250].
    #[arg(long, global = true, env = "TETHER_PROTECT_TICK_LAG_MS")]
    pub protect_tick_lag_ms: Option<u64>,
    /// Memory budget, bytes: protect mode from 90 % of it; 0 is off [default: 0].
    #[arg(long, global = true, env = "TETHER_PROTECT_MEMORY_BYTES")]
    pub protect_memory_bytes: Option<u64>,
    /// Calm time before protect mode ends, ms [default: 10000].
    #[arg(long, global = true, env = "TETHER_PROTECT_CALM_MS")]
    pub protect_calm_ms: Option<u64>,
    /// retry_after_ms told to logins refused in protect mode [default: 5000].
    #[arg(long, global = true, env = "TETHER_PROTECT_RETRY_AFTER_MS")]
    pub protect_retry_after_ms: Option<u32>,
}

impl Config {
    /// The settings as the admin API shows them: every field, with secrets
    /// (the ticket secret, the admin tokens, a database password) replaced
    /// by `"***"` when set.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        for key in [
            "ticket_secret",
            "admin_viewer_token",
            "admin_operator_token",
        ] {
            if v.get(key).is_some_and(|x| !x.is_null()) {
                v[key] = "***".into();
            }
        }
        if let Some(store) = &self.store {
            v["store"] = crate::redact(store).into();
        }
        if let Some(cluster) = &self.cluster {
            v["cluster"] = crate::redact(cluster).into();
        }
        v
    }

    /// This server's id in the cluster: `node`, or `<host name>-<port>`.
    pub fn node_id(&self) -> String {
        if let Some(node) = &self.node {
            return node.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(48)
            .collect();
        let host = if host.is_empty() {
            "tether".into()
        } else {
            host
        };
        format!("{host}-{}", self.listen.port())
    }
}

/// A setting that cannot work, found before anything starts.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

macro_rules! apply {
    ($cfg:ident, $ov:ident, $($field:ident),*) => {
        $( if let Some(v) = $ov.$field { $cfg.$field = v; } )*
    };
}

impl Config {
    /// The storage spec in use: `store`, or SQLite in the data dir.
    pub fn store_spec(&self) -> String {
        match &self.store {
            Some(spec) => spec.clone(),
            None => format!(
                "sqlite:{}",
                tether_store::default_sqlite_path(&self.data_dir).display()
            ),
        }
    }

    /// Defaults, then the file named by `--config` (if any), then overrides.
    pub fn load(ov: Overrides) -> Result<Config, ConfigError> {
        let mut cfg = match &ov.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("cannot read config file {}: {e}", path.display()))
                })?;
                toml::from_str(&text)
                    .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?
            }
            None => Config::default(),
        };
        if ov.ticket_secret.is_some() {
            cfg.ticket_secret = ov.ticket_secret;
        }
        if ov.ws_listen.is_some() {
            cfg.ws_listen = ov.ws_listen;
        }
        if ov.admin_viewer_token.is_some() {
            cfg.admin_viewer_token = ov.admin_viewer_token;
        }
        if ov.admin_operator_token.is_some() {
            cfg.admin_operator_token = ov.admin_operator_token;
        }
        if ov.store.is_some() {
            cfg.store = ov.store;
        }
        for (from, to) in [
            (ov.cluster, &mut cfg.cluster),
            (ov.node, &mut cfg.node),
            (ov.advertise, &mut cfg.advertise),
            (ov.ws_advertise, &mut cfg.ws_advertise),
        ] {
            if from.is_some() {
                *to = from;
            }
        }
        apply!(
            cfg,
            ov,
            game,
            listen,
            admin_listen,
            data_dir,
            cluster_name,
            cluster_lease_ms,
            cluster_balance_slack_pct,
            flush_interval_ms,
            shutdown_timeout_ms,
            restart_retry_ms,
            admin_history_interval_ms,
            auth,
            takeover,
            pvp,
            io_threads,
            shards,
            world_players,
            world_density,
            tick_ms,
            world_seed,
            max_frame_len,
            max_connections,
            handshake_timeout_ms,
            heartbeat_timeout_ms,
            heartbeat_interval_ms,
            zombie_grace_ms,
            unplayed_zombie_grace_ms,
            replay_cap_frames,
            zombie_replay_cap_frames,
            write_queue_cap_bytes,
            write_batch_frames,
            write_coalesce_ms,
            io_uring,
            busy_poll_us,
            input_ack_delay_ms,
            log,
            listen_backlog,
            trusted_cidrs,
            connect_rate_per_ip,
            connect_burst_per_ip,
            max_conns_per_ip,
            max_pending_handshakes,
            login_rate_per_ip,
            login_burst_per_ip,
            login_rate_global,
            login_burst_global,
            resume_rate_global,
            resume_burst_global,
            strikes_to_ban,
            strike_window_ms,
            ban_ms,
            ban_filter_after,
            max_tracked_ips,
            input_rate,
            input_burst,
            input_flood_tolerance,
            input_flood_action,
            protect_tick_lag_ms,
            protect_memory_bytes,
            protect_calm_ms,
            protect_retry_after_ms
        );
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects settings that cannot work, with a message saying which and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: &str| Err(ConfigError(m.to_string()));
        if self.auth == AuthMode::Ticket && self.ticket_secret.as_deref().unwrap_or("").is_empty() {
            return err(
                "auth = ticket needs ticket_secret (--ticket-secret or TETHER_TICKET_SECRET)",
            );
        }
        let token_set = |t: &Option<String>| t.as_deref().is_some_and(|t| !t.is_empty());
        for t in [&self.admin_viewer_token, &self.admin_operator_token] {
            if t.as_deref().is_some_and(|t| t.len() < 16) {
                return err("admin tokens must be at least 16 characters (use a random string)");
            }
        }
        if !self.admin_listen.ip().is_loopback() && !token_set(&self.admin_operator_token) {
            return Err(ConfigError(format!(
                "admin_listen {} is not loopback: set admin_operator_token (--admin-operator-token or TETHER_ADMIN_OPERATOR_TOKEN), and admin_viewer_token for read-only access",
                self.admin_listen
            )));
        }
        if self.cluster.is_some() {
            if !self.store_spec().starts_with("postgres") {
                return err("cluster mode needs a store every server shares: set store = \"postgres://...\" (--store or TETHER_STORE)");
            }
            if self.advertise.is_none() && self.listen.ip().is_unspecified() {
                return Err(ConfigError(format!(
                    "cluster mode: listen is {}, which clients cannot be sent to; set advertise = \"HOST:PORT\" (--advertise)",
                    self.listen
                )));
            }
            if !(1_000..=600_000).contains(&self.cluster_lease_ms) {
                return err("cluster_lease_ms must be 1000..=600000");
            }
            let name_ok = |n: &str| {
                !n.is_empty()
                    && n.len() <= 64
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            };
            if !name_ok(&self.cluster_name) {
                return err("cluster_name must be 1-64 characters of [A-Za-z0-9_-]");
            }
            if self.node.as_deref().is_some_and(|n| !name_ok(n)) {
                return err("node must be 1-64 characters of [A-Za-z0-9_-]");
            }
        }
        if !(1..=64).contains(&self.io_threads) {
            return err("io_threads must be 1..=64");
        }
        if !(1..=64).contains(&self.shards) {
            return err("shards must be 1..=64");
        }
        if self.world_players == 0 || self.world_density <= 0.0 {
            return err("world_players and world_density must be positive");
        }
        if !(10..=1000).contains(&self.tick_ms) {
            return err("tick_ms must be 10..=1000");
        }
        if !(16..=tether_proto::MAX_PAYLOAD_LEN).contains(&self.max_frame_len) {
            return err("max_frame_len must be 16..=65535");
        }
        if self.heartbeat_interval_ms >= self.heartbeat_timeout_ms {
            return err("heartbeat_interval_ms must be below heartbeat_timeout_ms");
        }
        if self.replay_cap_frames < tether_session::FRAMES_PER_PAGE {
            return err("replay_cap_frames must hold at least one page (32 frames)");
        }
        if !(100..=600_000).contains(&self.flush_interval_ms) {
            return err("flush_interval_ms must be 100..=600000");
        }
        if !(100..=600_000).contains(&self.shutdown_timeout_ms) {
            return err("shutdown_timeout_ms must be 100..=600000");
        }
        if !(100..=60_000).contains(&self.admin_history_interval_ms) {
            return err("admin_history_interval_ms must be 100..=60000");
        }
        if self.restart_retry_ms > 600_000 {
            return err("restart_retry_ms must be 0..=600000");
        }
        if self.write_queue_cap_bytes < 4096 {
            return err("write_queue_cap_bytes must be at least 4096");
        }
        if !(1..=crate::uring::MAX_IOV).contains(&self.write_batch_frames) {
            return err("write_batch_frames must be 1..=64");
        }
        if self.write_coalesce_ms > 100 {
            return err("write_coalesce_ms must be 0..=100");
        }
        if self.busy_poll_us > 10_000 {
            return err("busy_poll_us must be 0..=10000");
        }
        if !(1..=65535).contains(&self.listen_backlog) {
            return err("listen_backlog must be 1..=65535");
        }
        for cidr in self.trusted_cidrs.iter().filter(|s| !s.trim().is_empty()) {
            crate::cidr::Cidr::parse(cidr)
                .map_err(|e| ConfigError(format!("trusted_cidrs: {e}")))?;
        }
        let rates = [
            ("connect_rate_per_ip", self.connect_rate_per_ip),
            ("login_rate_per_ip", self.login_rate_per_ip),
            ("login_rate_global", self.login_rate_global),
            ("resume_rate_global", self.resume_rate_global),
            ("input_rate", self.input_rate),
        ];
        for (name, rate) in rates {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError(format!("{name} must be a positive number")));
            }
        }
        let bursts = [
            ("connect_burst_per_ip", self.connect_burst_per_ip),
            ("login_burst_per_ip", self.login_burst_per_ip),
            ("login_burst_global", self.login_burst_global),
            ("resume_burst_global", self.resume_burst_global),
            ("input_burst", self.input_burst),
            ("max_conns_per_ip", self.max_conns_per_ip),
        ];
        for (name, burst) in bursts {
            if burst == 0 {
                return Err(ConfigError(format!("{name} must be at least 1")));
            }
        }
        if self.max_pending_handshakes == 0 || self.max_tracked_ips == 0 {
            return err("max_pending_handshakes and max_tracked_ips must be at least 1");
        }
        if self.protect_tick_lag_ms == 0 {
            return err("protect_tick_lag_ms must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides() {
        let dir = std::env::temp_dir().join(format!("tether-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\npvp = true\nshards = 3\n",
        )
        .unwrap();
        let cfg = Config::load(Overrides {
            config: Some(path.clone()),
            shards: Some(2),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9000".parse().unwrap());
        assert!(cfg.pvp);
        assert_eq!(cfg.shards, 2, "a flag overrides the file");
        assert_eq!(cfg.admin_listen, Config::default().admin_listen);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn defence_settings_from_a_file_and_their_checks() {
        let dir = std::env::temp_dir().join(format!("tether-cfg3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "trusted_cidrs = [\"10.0.0.0/8\"]\ninput_flood_action = \"kick\"\nmax_conns_per_ip = 8\n",
        )
        .unwrap();
        let cfg = Config::load(Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.trusted_cidrs, vec!["10.0.0.0/8".to_string()]);
        assert_eq!(cfg.input_flood_action, FloodAction::Kick);
        assert_eq!(cfg.max_conns_per_ip, 8);
        // An empty list trusts nobody; a bad CIDR stops the start.
        let cfg = Config::load(Overrides {
            trusted_cidrs: Some(vec![String::new()]),
            ..Default::default()
        })
        .unwrap();
        assert!(cfg.trusted_cidrs.iter().all(|c| c.trim().is_empty()));
        let e = Config::load(Overrides {
            trusted_cidrs: Some(vec!["10.0.0.0/40".into()]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.0.contains("trusted_cidrs"), "{e}");
        let e = Config::load(Overrides {
            input_rate: Some(0.0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.0.contains("input_rate"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_game_comes_from_the_file_or_a_flag() {
        let dir = std::env::temp_dir().join(format!("tether-cfg4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(&path, "game = \"arena\"\n").unwrap();
        let cfg = Config::load(Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.game, GameKind::Arena);
        let cfg = Config::load(Overrides {
            config: Some(path),
            game: Some(GameKind::Mmo),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.game, GameKind::Mmo, "a flag overrides the file");
        assert_eq!(Config::default().game, GameKind::Mmo);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_flood_action_is_read_by_name_from_a_file_and_a_flag() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            settings: Overrides,
        }
        let parse = |args: &[&str]| {
            <Flags as clap::Parser>::try_parse_from(
                std::iter::once("tether").chain(args.iter().copied()),
            )
            .map(|f| f.settings.input_flood_action)
        };
        assert_eq!(
            parse(&["--input-flood-action", "drop"]).unwrap(),
            Some(FloodAction::Drop)
        );
        assert_eq!(
            parse(&["--input-flood-action", "kick"]).unwrap(),
            Some(FloodAction::Kick)
        );
        assert!(parse(&["--input-flood-action", "ban"]).is_err());

        let dir = std::env::temp_dir().join(format!("tether-cfg5-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(&path, "input_flood_action = \"ban\"\n").unwrap();
        let e = Config::load(Overrides {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.0.contains("ban") && e.0.contains("zombie"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = std::env::temp_dir().join(format!("tether-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let e = Config::load(Overrides {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.0.contains("lisen"), "{e}");
        let e = Config::load(Overrides {
            auth: Some(AuthMode::Ticket),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.0.contains("ticket_secret"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn an_admin_listener_off_loopback_needs_a_token() {
        let open = Config {
            admin_listen: "0.0.0.0:7780".parse().unwrap(),
            ..Config::default()
        };
        let e = open.validate().unwrap_err();
        assert!(e.0.contains("admin_operator_token"), "{e}");
        let short = Config {
            admin_operator_token: Some("short".into()),
            ..open.clone()
        };
        assert!(short.validate().unwrap_err().0.contains("16 characters"));
        let guarded = Config {
            admin_operator_token: Some("a-long-random-operator-token".into()),
            ..open
        };
        guarded.validate().unwrap();
        Config::default().validate().unwrap();
    }

    #[test]
    fn redacted_settings_hide_every_secret() {
        let cfg = Config {
            ticket_secret: Some("tickets-secret-value".into()),
            admin_operator_token: Some("operator-secret-value".into()),
            store: Some("postgres://tether:pg-secret@db:5432/tether?password=pg-other".into()),
            ..Config::default()
        };
        let v = cfg.redacted();
        let text = v.to_string();
        for secret in [
            "tickets-secret-value",
            "operator-secret-value",
            "pg-secret",
            "pg-other",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(v["ticket_secret"], "***");
        assert_eq!(
            v["admin_viewer_token"],
            serde_json::Value::Null,
            "unset stays null"
        );
        assert_eq!(
            v["store"],
            "postgres://tether:***@db:5432/tether?password=***"
        );
        assert_eq!(v["input_flood_action"], cfg.input_flood_action.as_str());
        let kv = Config {
            store: Some("host=db user=t password=kv-secret dbname=x".into()),
            ..Config::default()
        };
        assert_eq!(
            kv.redacted()["store"],
            "host=db user=t password=*** dbname=x"
        );
    }
}
