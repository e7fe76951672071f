//! Cluster mode: several servers over one PostgreSQL database and NATS.
//!
//! Nothing here is a cluster protocol of Tether's own: the servers agree
//! through NATS JetStream key-value buckets and talk over NATS subjects.
//!
//! - **Registry** (bucket `<cluster>-nodes`, max age = the lease): each
//!   server puts its entry (id, addresses, players) every lease/4. A server
//!   whose entry was not seen for a lease is gone; its accounts are free.
//! - **Ownership** (bucket `<cluster>-owners`, no age): one key per account
//!   whose value is the id of the server allowed to hold its session,
//!   taken with compare-and-set ([`NatsOwnership`]). The store writer asks
//!   before it answers a load and lets go after the session's last record
//!   is written (`tether_store::ownership`), so an account changes servers
//!   only after its data did. A login or resume at the wrong server is
//!   closed with `REDIRECT` to the right one.
//! - **Messages** (subjects `tether.<cluster>.all` and
//!   `tether.<cluster>.node.<id>`): world chat (broadcast frames, as
//!   encoded once) and the game's messages for an account held elsewhere
//!   (the MMO's whispers), through one bounded queue per server
//!   ([`OUTBOUND_CAPACITY`]); a message that cannot go is handed back to
//!   the game as `Unreachable`.
//!
//! All of it runs on one thread of its own ("tether-cluster", a tokio
//! runtime); shards reach it through non-blocking queues, the store writer
//! through blocking calls with a timeout ([`NATS_TIMEOUT`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tether_engine::{BusMsg, Undeliverable};
use tether_store::{Ownership, Redirect, StoreError};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::directory::Directory;
use crate::shard::Bus;

/// Messages for other servers waiting to be published; past it a world
/// chat line's copy for the other servers is lost and a whisper is handed
/// back as `Unreachable`.
pub const OUTBOUND_CAPACITY: usize = 4096;

/// The longest one NATS call may take on the store writer's thread.
pub const NATS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a server has to answer a ping before the account it holds is
/// treated as in doubt.
const PING_TIMEOUT: Duration = Duration::from_millis(300);

/// A server's subscriptions: world-wide frames, its own messages, pings.
type Subscriptions = (
    async_nats::Subscriber,
    async_nats::Subscriber,
    async_nats::Subscriber,
);

/// Compare-and-set attempts on one account key before giving up (another
/// server kept changing it).
const CAS_ATTEMPTS: usize = 4;

/// A server's entry in the registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: String,
    /// host:port of its TCP game listener, as clients reach it.
    pub address: String,
    /// ws:// URL of its WebSocket listener, or empty.
    pub ws_url: String,
    /// host:port of its admin listener.
    pub admin: String,
    /// Sessions it holds (players and link-dead).
    pub players: u64,
    /// Unix time it started, ms.
    pub started_ms: u64,
    pub version: String,
    /// This process, among the processes that were or will be this node (a
    /// restart, an upgrade in place): random.
    #[serde(default)]
    pub instance: u64,
    /// The salts of the session ids its shards hand out (bits 32 to 55 of
    /// an id): a resume anywhere is sent to the server that holds it.
    #[serde(default)]
    pub sessions: Vec<u32>,
}

impl NodeInfo {
    fn redirect(&self) -> Redirect {
        Redirect {
            node: self.node.clone(),
            address: self.address.clone(),
            ws_url: self.ws_url.clone(),
        }
    }
}

/// What a server says of itself and how it joins.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URL(s), comma-separated.
    pub url: String,
    /// The cluster's name: buckets and subjects are named after it, so
    /// clusters can share a NATS.
    pub name: String,
    pub me: NodeInfo,
    /// How long a silent server keeps its accounts.
    pub lease: Duration,
    /// New logins go to another server when this one holds more than that
    /// one's players times (1 + slack/100) plus 16.
    pub balance_slack_pct: u64,
}

/// A server as this one sees it.
#[derive(Debug, Clone)]
struct Seen {
    info: NodeInfo,
    at: Instant,
    /// Logins sent its way since its last entry (so one busy second does
    /// not send them all to the same server).
    sent: u64,
}

/// The registry as this server knows it.
#[derive(Debug, Default)]
struct View {
    nodes: HashMap<String, Seen>,
    /// The registry's first read is complete.
    ready: bool,
    /// Connected to NATS since (`None`: not connected).
    connected_since: Option<Instant>,
}

/// What another server's state means for an account it owns.
enum OwnerState {
    /// It is alive: send the client there.
    Alive(Redirect),
    /// It missed heartbeats, or this server cannot tell yet: wait this
    /// long (ms), when its lease ends.
    InDoubt(String, u32),
    /// It is gone (its lease ended): the account is free.
    Gone,
}

/// Counters for `/metrics` and `/cluster`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub acquired: AtomicU64,
    pub redirected: AtomicU64,
    pub taken_from_dead: AtomicU64,
    pub refused_unavailable: AtomicU64,
    pub released: AtomicU64,
    pub release_failed: AtomicU64,
    pub published: AtomicU64,
    pub received: AtomicU64,
    pub dropped: AtomicU64,
    pub bounced: AtomicU64,
}

/// What shards hand to the cluster thread.
#[derive(Debug)]
pub enum Outbound {
    /// A world-wide counted frame for every other server.
    Broadcast(Bytes),
    /// A game message for whichever server holds `account`.
    ToAccount {
        account: String,
        from_shard: u16,
        msg: Bytes,
    },
}

/// A shard's way to the other servers: never blocks.
#[derive(Clone)]
pub struct ClusterLink {
    out: mpsc::Sender<Outbound>,
    connected: Arc<AtomicBool>,
    stats: Arc<ClusterStats>,
}

impl ClusterLink {
    /// Queues a game message for the server holding `account`.
    pub fn to_account(
        &self,
        account: &str,
        from_shard: u16,
        msg: Bytes,
    ) -> Result<(), Undeliverable> {
        if !self.connected.load(Ordering::Relaxed) {
            return Err(Undeliverable::Unreachable);
        }
        self.out
            .try_send(Outbound::ToAccount {
                account: account.to_string(),
                from_shard,
                msg,
            })
            .map_err(|_| {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Undeliverable::Unreachable
            })
    }

    /// Queues a world-wide frame for the other servers (best effort).
    pub fn broadcast(&self, frame: &Bytes) {
        if !self.connected.load(Ordering::Relaxed)
            || self
                .out
                .try_send(Outbound::Broadcast(frame.clone()))
                .is_err()
        {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A running cluster membership: the thread, the buckets, the view.
pub struct Cluster {
    cfg: ClusterConfig,
    /// Always `Some` until dropped (then shut down without blocking: the
    /// last holder may be an async task).
    runtime: Option<tokio::runtime::Runtime>,
    client: async_nats::Client,
    owners: kv::Store,
    nodes: kv::Store,
    view: Arc<Mutex<View>>,
    connected: Arc<AtomicBool>,
    stats: Arc<ClusterStats>,
    out_tx: mpsc::Sender<Outbound>,
    out_rx: Mutex<Option<mpsc::Receiver<Outbound>>>,
    /// Hands a message back to one of this server's shards (set by `run`).
    bounces: std::sync::OnceLock<BounceFn>,
    /// This server's session id salts, one per shard (set by `run`).
    salts: std::sync::OnceLock<Vec<u32>>,
}

type BounceFn = Box<dyn Fn(u16, Bytes, Undeliverable) -> bool + Send + Sync>;

fn lock(view: &Mutex<View>) -> std::sync::MutexGuard<'_, View> {
    view.lock().unwrap_or_else(|e| e.into_inner())
}

/// Account names as key-value keys: as they are when they only use what a
/// key may hold, hex otherwise.
fn account_key(account: &str) -> String {
    let plain = !account.is_empty()
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        format!("a.{account}")
    } else {
        let hex: String = account.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x.{hex}")
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A retry hint a little past the end of a lease `left` from now, so the
/// client comes back once the account is free, not just before.
fn come_back_after(left: Duration) -> u32 {
    (left + Duration::from_millis(250)).as_millis() as u32
}

/// What a login or resume is told while NATS is away: wait and retry
/// (`SERVER_BUSY`), the reason in the close message.
fn unavailable(what: impl std::fmt::Display) -> StoreError {
    StoreError::Wait {
        reason: format!("cluster coordination (NATS) unavailable: {what}; logins wait for it"),
        retry_after_ms: UNAVAILABLE_RETRY_MS,
    }
}

/// The retry hint of a login or resume refused while NATS is away.
const UNAVAILABLE_RETRY_MS: u32 = 2_000;

impl Cluster {
    /// Connects to NATS and opens (or creates) the cluster's buckets.
    /// Fails when NATS cannot be reached within a few seconds: a server
    /// that cannot coordinate must not take accounts.
    pub fn start(cfg: ClusterConfig) -> anyhow::Result<Arc<Cluster>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tether-cluster")
            .enable_all()
            .build()?;
        let connected = Arc::new(AtomicBool::new(false));
        let view = Arc::new(Mutex::new(View::default()));
        let (client, nodes, owners) = runtime.block_on(async {
            let events_connected = connected.clone();
            let events_view = view.clone();
            let options = async_nats::ConnectOptions::new()
                .name(format!("tether {}", cfg.me.node))
                .no_echo()
                .connection_timeout(Duration::from_secs(3))
                .request_timeout(Some(NATS_TIMEOUT))
                .max_reconnects(None)
                .event_callback(move |event| {
                    let connected = events_connected.clone();
                    let view = events_view.clone();
                    async move {
                        match event {
                            async_nats::Event::Connected => {
                                info!("cluster: connected to NATS");
                                connected.store(true, Ordering::Relaxed);
                                lock(&view).connected_since = Some(Instant::now());
                            }
                            async_nats::Event::Disconnected => {
                                warn!("cluster: NATS connection lost; logins wait, cross-server messages fail until it is back");
                                connected.store(false, Ordering::Relaxed);
                                lock(&view).connected_since = None;
                            }
                            other => info!(event = %other, "cluster: NATS"),
                        }
                    }
                });
            let client = tokio::time::timeout(Duration::from_secs(5), options.connect(cfg.url.as_str()))
                .await
                .map_err(|_| anyhow::anyhow!("no answer from NATS at {} within 5 s", cfg.url))?
                .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {}: {e}", cfg.url))?;
            connected.store(true, Ordering::Relaxed);
            lock(&view).connected_since = Some(Instant::now());
            let js = async_nats::jetstream::new(client.clone());
            let nodes = open_bucket(
                &js,
                kv::Config {
                    bucket: format!("{}-nodes", cfg.name),
                    description: "Tether servers of this cluster (entries expire with the lease)".into(),
                    history: 1,
                    max_age: cfg.lease,
                    storage: async_nats::jetstream::stream::StorageType::Memory,
                    ..Default::default()
                },
            )
            .await?;
            let owners = open_bucket(
                &js,
                kv::Config {
                    bucket: format!("{}-owners", cfg.name),
                    description: "Tether: which server may hold each account's session".into(),
                    history: 1,
                    ..Default::default()
                },
            )
            .await?;
            anyhow::Ok((client, nodes, owners))
        })?;
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let cluster = Arc::new(Cluster {
            cfg,
            runtime: Some(runtime),
            client,
            owners,
            nodes,
            view,
            connected,
            stats: Arc::new(ClusterStats::default()),
            out_tx,
            out_rx: Mutex::new(Some(out_rx)),
            bounces: std::sync::OnceLock::new(),
            salts: std::sync::OnceLock::new(),
        });
        Ok(cluster)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// The cluster's lines of `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let st = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let alive = {
            let view = lock(&self.view);
            view.nodes
                .values()
                .filter(|s| s.at.elapsed() < self.cfg.lease)
                .count()
        };
        let _ = write!(
            out,
            "# HELP tether_cluster_nats_connected Whether this server is connected to the cluster's NATS.\n\
             # TYPE tether_cluster_nats_connected gauge\n\
             tether_cluster_nats_connected {}\n\
             # HELP tether_cluster_nodes Servers of the cluster this one sees alive (itself included).\n\
             # TYPE tether_cluster_nodes gauge\n\
             tether_cluster_nodes {alive}\n\
             # HELP tether_cluster_accounts Account ownership decisions of this server.\n\
             # TYPE tether_cluster_accounts counter\n",
            u8::from(self.connected.load(Ordering::Relaxed)),
        );
        for (outcome, v) in [
            ("acquired", &st.acquired),
            ("redirected", &st.redirected),
            ("taken_from_gone_server", &st.taken_from_dead),
            ("unavailable", &st.refused_unavailable),
            ("released", &st.released),
            ("release_failed", &st.release_failed),
        ] {
            let _ = writeln!(
                out,
                "tether_cluster_accounts_total{{outcome=\"{outcome}\"}} {}",
                n(v)
            );
        }
        let _ = write!(
            out,
            "# HELP tether_cluster_messages Messages between servers (world chat, whispers).\n\
             # TYPE tether_cluster_messages counter\n"
        );
        for (what, v) in [
            ("published", &st.published),
            ("received", &st.received),
            ("dropped", &st.dropped),
            ("bounced", &st.bounced),
        ] {
            let _ = writeln!(
                out,
                "tether_cluster_messages_total{{what=\"{what}\"}} {}",
                n(v)
            );
        }
    }

    /// A shard's link to the other servers.
    pub fn link(&self) -> ClusterLink {
        ClusterLink {
            out: self.out_tx.clone(),
            connected: self.connected.clone(),
            stats: self.stats.clone(),
        }
    }

    /// The store writer's side: account ownership.
    pub fn ownership(self: &Arc<Self>) -> Box<dyn Ownership> {
        Box::new(NatsOwnership {
            cluster: self.clone(),
        })
    }

    /// The server whose session ids carry this salt, other than this one,
    /// if exactly one does.
    fn node_of_salt(&self, salt: u32) -> Option<String> {
        if self.salts.get().is_some_and(|mine| mine.contains(&salt)) {
            return None;
        }
        let view = lock(&self.view);
        let mut found = view
            .nodes
            .iter()
            .filter(|(id, s)| **id != self.cfg.me.node && s.info.sessions.contains(&salt))
            .map(|(id, _)| id.clone());
        let node = found.next()?;
        // Two servers with one salt (24 random bits each): nobody can say.
        found.next().is_none().then_some(node)
    }

    /// Starts the registry (heartbeat and watch) and the message pumps.
    /// `players` reads this server's session count for its entry;
    /// `session_salts` are its shards' session id salts, published with it.
    pub fn run<R: Send + 'static>(
        self: &Arc<Self>,
        bus: Bus<R>,
        directory: Arc<Directory>,
        players: impl Fn() -> u64 + Send + Sync + 'static,
        session_salts: Vec<u32>,
    ) {
        let _ = self.salts.set(session_salts);
        let me = self.clone();
        self.rt().spawn(async move { me.heartbeat(players).await });
        let me = self.clone();
        self.rt().spawn(async move { me.watch_nodes().await });
        let out_rx = self.out_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rx) = out_rx {
            let me = self.clone();
            self.rt().spawn(async move { me.publish_loop(rx).await });
        }
        // Subscribed before the server takes players, so that nothing sent
        // to it is missed; the client keeps the subscriptions across
        // reconnects.
        let subscribed = self.rt().block_on(async {
            let subs = self.subscribe().await;
            // The server has the subscriptions once a round trip is done.
            let _ = tokio::time::timeout(NATS_TIMEOUT, self.client.flush()).await;
            subs
        });
        if let Err(e) = &subscribed {
            warn!(error = %e, "cluster: cannot subscribe yet; retrying in the background");
        }
        let me = self.clone();
        self.rt()
            .spawn(async move { me.receive_loop(bus, directory, subscribed.ok()).await });
    }

    fn subject_all(&self) -> String {
        format!("tether.{}.all", self.cfg.name)
    }

    fn subject_node(&self, node: &str) -> String {
        format!("tether.{}.node.{node}", self.cfg.name)
    }

    fn beat_interval(&self) -> Duration {
        self.cfg.lease / 4
    }

    /// A server whose entry was put within this long is taken as alive
    /// (two heartbeats may be late).
    fn answering_window(&self) -> Duration {
        self.beat_interval() * 5 / 2
    }

    async fn heartbeat(self: Arc<Self>, players: impl Fn() -> u64) {
        let mut tick = tokio::time::interval(self.beat_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut info = self.cfg.me.clone();
            info.players = players();
            info.sessions = self.salts.get().cloned().unwrap_or_default();
            let Ok(json) = serde_json::to_vec(&info) else {
                continue;
            };
            let put = self.nodes.put(info.node.as_str(), Bytes::from(json));
            match tokio::time::timeout(NATS_TIMEOUT, put).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "cluster: heartbeat not written"),
                Err(_) => warn!("cluster: heartbeat timed out"),
            }
        }
    }

    /// Keeps the view of the registry: every entry as it is put.
    async fn watch_nodes(self: Arc<Self>) {
        loop {
            match self.nodes.watch_with_history(">").await {
                Ok(mut watch) => {
                    // An empty registry has nothing to replay.
                    if self.nodes.status().await.is_ok_and(|s| s.values() == 0) {
                        lock(&self.view).ready = true;
                    }
                    while let Some(entry) = watch.next().await {
                        let Ok(entry) = entry else { break };
                        let mut view = lock(&self.view);
                        if entry.seen_current || entry.delta == 0 {
                            view.ready = true;
                        }
                        if entry.operation != kv::Operation::Put {
                            view.nodes.remove(&entry.key);
                            continue;
                        }
                        if let Ok(info) = serde_json::from_slice::<NodeInfo>(&entry.value) {
                            // An entry replayed from before this watch is
                            // as old as NATS says (at most a lease), so a
                            // server that just died does not look alive.
                            let written_ns = entry.created.unix_timestamp_nanos();
                            let now_ns = unix_ms() as i128 * 1_000_000;
                            let age = Duration::from_nanos(
                                (now_ns - written_ns).clamp(0, self.cfg.lease.as_nanos() as i128)
                                    as u64,
                            );
                            let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                            view.nodes
                                .insert(entry.key.clone(), Seen { info, at, sent: 0 });
                        }
                    }
                }
                Err(e) => warn!(error = %e, "cluster: cannot watch the registry; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn publish_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Outbound>) {
        while let Some(out) = rx.recv().await {
            match out {
                Outbound::Broadcast(frame) => {
                    debug!(bytes = frame.len(), "cluster: broadcast out");
                    match self.client.publish(self.subject_all(), frame).await {
                        Ok(()) => self.stats.published.fetch_add(1, Ordering::Relaxed),
                        Err(_) => self.stats.dropped.fetch_add(1, Ordering::Relaxed),
                    };
                }
                Outbound::ToAccount {
                    account,
                    from_shard,
                    msg,
                } => {
                    let owner = self.owner_of(&account).await;
                    debug!(%account, ?owner, "cluster: a message for an account elsewhere");
                    let target = match owner {
                        Ok(Some(node)) if node != self.cfg.me.node => Ok(node),
                        Ok(_) => Err(Undeliverable::NoSuchAccount),
                        Err(()) => Err(Undeliverable::Unreachable),
                    };
                    let sent = match &target {
                        Ok(node) => {
                            let mut h = HeaderMap::new();
                            h.insert("tether-kind", "game");
                            h.insert("tether-account", account.as_str());
                            h.insert("tether-from", self.cfg.me.node.as_str());
                            h.insert("tether-shard", from_shard.to_string().as_str());
                            self.client
                                .publish_with_headers(self.subject_node(node), h, msg.clone())
                                .await
                                .map_err(|_| Undeliverable::Unreachable)
                        }
                        Err(why) => Err(*why),
                    };
                    match sent {
                        Ok(()) => {
                            self.stats.published.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(why) => self.bounce_local(from_shard, msg, why),
                    }
                }
            }
        }
    }

    /// The server an account's key names, if it is alive.
    async fn owner_of(&self, account: &str) -> Result<Option<String>, ()> {
        let entry = tokio::time::timeout(NATS_TIMEOUT, self.owners.entry(account_key(account)))
            .await
            .map_err(|_| ())?
            .map_err(|_| ())?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| String::from_utf8_lossy(&e.value).into_owned())
            .filter(|node| matches!(self.owner_state(node), OwnerState::Alive(_))))
    }

    /// Hands a message back to the shard that sent it.
    fn bounce_local(&self, shard: u16, msg: Bytes, why: Undeliverable) {
        self.stats.bounced.fetch_add(1, Ordering::Relaxed);
        let pushed = self.bounces.get().map(|tx| tx(shard, msg, why));
        debug!(shard, ?why, ?pushed, "cluster: message handed back");
    }

    async fn receive_loop<R: Send + 'static>(
        self: Arc<Self>,
        bus: Bus<R>,
        directory: Arc<Directory>,
        mut subscribed: Option<Subscriptions>,
    ) {
        let bounce_bus = bus.clone();
        let _ = self.bounces.set(Box::new(move |shard, msg, why| {
            push(&bounce_bus, shard, BusMsg::Bounced { msg, why })
        }));
        loop {
            let (all, mine, ping) = match subscribed.take() {
                Some(subs) => subs,
                None => match self.subscribe().await {
                    Ok(subs) => subs,
                    Err(e) => {
                        warn!(error = %e, "cluster: cannot subscribe; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let mut both =
                futures_util::stream::select(futures_util::stream::select(all, mine), ping);
            while let Some(m) = both.next().await {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                self.on_message(&bus, &directory, m).await;
            }
        }
    }

    /// This server's subjects: world-wide frames and its own messages.
    async fn subscribe(&self) -> Result<Subscriptions, async_nats::SubscribeError> {
        let all = self.client.subscribe(self.subject_all()).await?;
        let mine = self
            .client
            .subscribe(self.subject_node(&self.cfg.me.node))
            .await?;
        let ping = self
            .client
            .subscribe(self.subject_ping(&self.cfg.me.node))
            .await?;
        Ok((all, mine, ping))
    }

    fn subject_ping(&self, node: &str) -> String {
        format!("tether.{}.ping.{node}", self.cfg.name)
    }

    /// Whether `node` answers over NATS now: a server killed a moment ago
    /// still has a fresh registry entry, but no longer answers, and its
    /// players must not be sent to it.
    async fn answers(&self, node: &str) -> bool {
        let ask = self.client.request(self.subject_ping(node), Bytes::new());
        matches!(tokio::time::timeout(PING_TIMEOUT, ask).await, Ok(Ok(_)))
    }

    async fn on_message<R: Send + 'static>(
        &self,
        bus: &Bus<R>,
        directory: &Directory,
        m: async_nats::Message,
    ) {
        debug!(subject = %m.subject, "cluster: message in");
        if let Some(reply) = &m.reply {
            if m.subject.as_str() == self.subject_ping(&self.cfg.me.node) {
                let _ = self.client.publish(reply.clone(), Bytes::new()).await;
                return;
            }
        }
        let header = |name: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        if m.subject.as_str() == self.subject_all() {
            for shard in 0..bus.senders.len() {
                push(bus, shard as u16, BusMsg::Broadcast(m.payload.clone()));
            }
            return;
        }
        let from_shard = header("tether-shard")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        match header("tether-kind").as_deref() {
            Some("game") => {
                let (Some(account), Some(from)) = (header("tether-account"), header("tether-from"))
                else {
                    return;
                };
                let shard = directory.locate(&account);
                let delivered =
                    shard.is_some_and(|shard| push(bus, shard, BusMsg::Node(m.payload.clone())));
                if !delivered {
                    let why = if shard.is_some() {
                        "busy"
                    } else {
                        "no-such-account"
                    };
                    let mut h = HeaderMap::new();
                    h.insert("tether-kind", "bounce");
                    h.insert("tether-why", why);
                    h.insert("tether-shard", from_shard.to_string().as_str());
                    let _ = self
                        .client
                        .publish_with_headers(self.subject_node(&from), h, m.payload.clone())
                        .await;
                }
            }
            Some("bounce") => {
                let why = match header("tether-why").as_deref() {
                    Some("busy") => Undeliverable::Busy,
                    _ => Undeliverable::NoSuchAccount,
                };
                self.bounce_local(from_shard, m.payload.clone(), why);
            }
            _ => {}
        }
    }

    /// What the registry says of `node`, an account's owner.
    fn owner_state(&self, node: &str) -> OwnerState {
        let view = lock(&self.view);
        let lease = self.cfg.lease;
        let settled = view
            .connected_since
            .is_some_and(|since| since.elapsed() >= lease);
        match view.nodes.get(node) {
            Some(seen) if seen.at.elapsed() < self.answering_window() => {
                OwnerState::Alive(seen.info.redirect())
            }
            Some(seen) if seen.at.elapsed() < lease || !settled => {
                let left = lease.saturating_sub(seen.at.elapsed()).max(
                    view.connected_since
                        .map_or(lease, |since| lease.saturating_sub(since.elapsed())),
                );
                OwnerState::InDoubt(
                    format!("server {node} stopped answering; its accounts are free when its lease ends"),
                    come_back_after(left),
                )
            }
            None if !settled || !view.ready => OwnerState::InDoubt(
                format!("server {node} is not in this server's registry yet"),
                1_000,
            ),
            _ => OwnerState::Gone,
        }
    }

    /// Whether `node` still holds what it held (an account, a session):
    /// alive and answering, [`StoreError::Elsewhere`] (send the client
    /// there); fresh in the registry but silent (killed a moment ago, or
    /// cut off) or in doubt, [`StoreError::Wait`] until its lease ends;
    /// gone, `Ok` (this server may take over). Counted.
    fn holder(&self, node: &str) -> Result<(), StoreError> {
        let (reason, retry_after_ms) = match self.owner_state(node) {
            OwnerState::Alive(r) if self.block_on(self.answers(node))? => {
                self.stats.redirected.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::Elsewhere(r));
            }
            OwnerState::Alive(_) => {
                let view = lock(&self.view);
                let left = view.nodes.get(node).map_or(Duration::ZERO, |s| {
                    self.cfg.lease.saturating_sub(s.at.elapsed())
                });
                (
                    format!(
                        "server {node} does not answer; its accounts are free when its lease ends"
                    ),
                    come_back_after(left),
                )
            }
            OwnerState::InDoubt(reason, retry_after_ms) => (reason, retry_after_ms),
            OwnerState::Gone => return Ok(()),
        };
        self.stats
            .refused_unavailable
            .fetch_add(1, Ordering::Relaxed);
        Err(StoreError::Wait {
            reason,
            retry_after_ms,
        })
    }

    /// A less loaded server for a new session, if this one is too full.
    fn less_loaded(&self) -> Option<Redirect> {
        let mut view = lock(&self.view);
        let fresh = self.answering_window();
        let mine = view
            .nodes
            .get(&self.cfg.me.node)
            .map_or(0, |s| s.info.players);
        let best = view
            .nodes
            .iter()
            .filter(|(id, s)| **id != self.cfg.me.node && s.at.elapsed() < fresh)
            .map(|(id, s)| (s.info.players + s.sent, id.clone()))
            .min()?;
        let limit = best.0 * (100 + self.cfg.balance_slack_pct) / 100 + 16;
        if mine <= limit {
            return None;
        }
        let seen = view.nodes.get_mut(&best.1)?;
        seen.sent += 1;
        Some(seen.info.redirect())
    }

    /// The `/cluster` page.
    pub fn describe(&self) -> serde_json::Value {
        let view = lock(&self.view);
        let mut nodes: Vec<serde_json::Value> = view
            .nodes
            .values()
            .map(|s| {
                let age = s.at.elapsed();
                serde_json::json!({
                    "node": s.info.node,
                    "address": s.info.address,
                    "ws_url": s.info.ws_url,
                    "admin": s.info.admin,
                    "players": s.info.players,
                    "started_ms": s.info.started_ms,
                    "version": s.info.version,
                    "last_seen_ms": age.as_millis() as u64,
                    "alive": age < self.cfg.lease,
                    "me": s.info.node == self.cfg.me.node,
                })
            })
            .collect();
        nodes.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
        let st = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "cluster": self.cfg.name,
            "node": self.cfg.me.node,
            "nats": {
                "url": self.cfg.url,
                "connected": self.connected.load(Ordering::Relaxed),
            },
            "lease_ms": self.cfg.lease.as_millis() as u64,
            "nodes": nodes,
            "accounts": {
                "acquired": n(&st.acquired),
                "redirected": n(&st.redirected),
                "taken_from_gone_servers": n(&st.taken_from_dead),
                "refused_unavailable": n(&st.refused_unavailable),
                "released": n(&st.released),
                "release_failed": n(&st.release_failed),
            },
            "messages": {
                "published": n(&st.published),
                "received": n(&st.received),
                "dropped": n(&st.dropped),
                "bounced": n(&st.bounced),
            },
        })
    }

    /// A live server by id, other than this one (for moving a player).
    pub fn node(&self, node: &str) -> Option<Redirect> {
        if node == self.cfg.me.node {
            return None;
        }
        match self.owner_state(node) {
            OwnerState::Alive(r) => Some(r),
            _ => None,
        }
    }

    /// Takes this server out of the registry (a clean stop), so that its
    /// accounts are free at once rather than after the lease.
    /// Only this process's entry goes: after an upgrade in place, the entry
    /// is already the new process's.
    pub fn leave(&self) {
        let node = self.cfg.me.node.clone();
        let instance = self.cfg.me.instance;
        let nodes = self.nodes.clone();
        let (done, wait) = std::sync::mpsc::channel();
        self.rt().spawn(async move {
            let _ = tokio::time::timeout(NATS_TIMEOUT, async {
                let Ok(Some(entry)) = nodes.entry(node.as_str()).await else {
                    return;
                };
                let mine = serde_json::from_slice::<NodeInfo>(&entry.value)
                    .is_ok_and(|info| info.instance == instance);
                if entry.operation == kv::Operation::Put && mine {
                    let _ = nodes
                        .delete_expect_revision(node.as_str(), Some(entry.revision))
                        .await;
                }
            })
            .await;
            let _ = done.send(());
        });
        let _ = wait.recv_timeout(NATS_TIMEOUT);
        info!("cluster: left the registry");
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> Result<T, StoreError> {
        if !self.connected.load(Ordering::Relaxed) {
            return Err(unavailable("not connected"));
        }
        self.rt()
            .handle()
            .block_on(async { tokio::time::timeout(NATS_TIMEOUT, f).await })
            .map_err(|_| unavailable(format!("no answer within {} ms", NATS_TIMEOUT.as_millis())))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Pushes a message onto a shard's bus and wakes it; `false` when full.
fn push<R>(bus: &Bus<R>, shard: u16, msg: BusMsg<R>) -> bool {
    let Some(tx) = bus.senders.get(shard as usize) else {
        return false;
    };
    let ok = tx.try_send(msg).is_ok();
    bus.wakers[shard as usize].wake();
    ok
}

async fn open_bucket(
    js: &async_nats::jetstream::Context,
    config: kv::Config,
) -> anyhow::Result<kv::Store> {
    use async_nats::jetstream::stream;
    let name = config.bucket.clone();
    if let Ok(store) = js.get_key_value(name.as_str()).await {
        return Ok(store);
    }
    // The bucket's stream as `create_key_value` would make it, without its
    // account query (which servers before 2.10 answer in a form the client
    // does not read).
    let created = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{name}"),
            description: Some(config.description),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: config.history.max(1),
            max_age: config.max_age,
            storage: config.storage,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: 1,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await;
    if let Err(e) = created {
        anyhow::bail!(
            "cannot create the NATS key-value bucket {name} (is JetStream enabled?): {e}"
        );
    }
    js.get_key_value(name.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the NATS key-value bucket {name}: {e}"))
}

/// Account ownership over the `<cluster>-owners` bucket, for the store
/// writer.
struct NatsOwnership {
    cluster: Arc<Cluster>,
}

impl Ownership for NatsOwnership {
    fn acquire(&mut self, account: &str) -> Result<(), StoreError> {
        let c = &self.cluster;
        let stats = &c.stats;
        let me = c.cfg.me.node.as_str();
        let key = account_key(account);
        if !lock(&c.view).ready {
            stats.refused_unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(unavailable("the registry is not read yet"));
        }
        for _ in 0..CAS_ATTEMPTS {
            let entry = c
                .block_on(c.owners.entry(key.as_str()))?
                .map_err(unavailable)?;
            let taken = match entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    let owner = String::from_utf8_lossy(&e.value).into_owned();
                    if owner == me {
                        stats.acquired.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    // Alive: sent there; in doubt: wait; gone: taken here.
                    c.holder(&owner)?;
                    let r = c.block_on(c.owners.update(
                        key.as_str(),
                        Bytes::from(me.to_string()),
                        e.revision,
                    ))?;
                    if r.is_ok() {
                        info!(
                            account,
                            from = owner,
                            "cluster: account taken over from a server that is gone"
                        );
                        stats.taken_from_dead.fetch_add(1, Ordering::Relaxed);
                    }
                    r.is_ok()
                }
                free => {
                    // A less loaded server takes the new session, if it
                    // answers (one killed a moment ago still looks fresh).
                    if let Some(r) = c.less_loaded() {
                        if c.block_on(c.answers(&r.node))? {
                            stats.redirected.fetch_add(1, Ordering::Relaxed);
                            return Err(StoreError::Elsewhere(r));
                        }
                    }
                    let value = Bytes::from(me.to_string());
                    match free {
                        // Deleted: take it over that revision.
                        Some(e) => c
                            .block_on(c.owners.update(key.as_str(), value, e.revision))?
                            .is_ok(),
                        None => c.block_on(c.owners.create(key.as_str(), value))?.is_ok(),
                    }
                }
            };
            if taken {
                stats.acquired.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            // Another server changed the key meanwhile: look again.
        }
        stats.refused_unavailable.fetch_add(1, Ordering::Relaxed);
        Err(StoreError::Wait {
            reason: "the account's ownership kept changing; retry".into(),
            retry_after_ms: 100,
        })
    }

    fn route_session(&mut self, session_id: u64) -> Result<(), StoreError> {
        let c = &self.cluster;
        let salt = ((session_id >> 32) & 0x00ff_ffff) as u32;
        match c.node_of_salt(salt) {
            // Gone, it leaves the session to storage here.
            Some(node) => c.holder(&node),
            // This server's, or of a process no longer in the registry:
            // the saved session decides.
            None => Ok(()),
        }
    }

    fn release(&mut self, account: &str, to: Option<&str>) -> bool {
        let c = &self.cluster;
        let key = account_key(account);
        let me = c.cfg.me.node.as_str();
        let done = (|| -> Result<bool, StoreError> {
            let Some(e) = c
                .block_on(c.owners.entry(key.as_str()))?
                .map_err(unavailable)?
            else {
                return Ok(true);
            };
            if e.operation != kv::Operation::Put || e.value.as_ref() != me.as_bytes() {
                return Ok(true); // not ours (any more)
            }
            Ok(match to {
                Some(node) => c
                    .block_on(c.owners.update(
                        key.as_str(),
                        Bytes::from(node.to_string()),
                        e.revision,
                    ))?
                    .is_ok(),
                None => c
                    .block_on(
                        c.owners
                            .delete_expect_revision(key.as_str(), Some(e.revision)),
                    )?
                    .is_ok(),
            })
        })();
        match done {
            Ok(true) => {
                c.stats.released.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(false) | Err(_) => {
                // It stays this server's: a login elsewhere is redirected
                // here and loaded again.
                c.stats.release_failed.fetch_add(1, Ordering::Relaxed);
                warn!(
                    account,
                    "cluster: account not released; it stays with this server"
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_keys_are_valid_and_distinct() {
        assert_eq!(account_key("ann_1"), "a.ann_1");
        assert_eq!(account_key("a.b"), "x.612e62");
        assert_ne!(account_key("a.b"), account_key("a_b"));
    }
}
