//! The Tether game server.
//!
//! # Layout
//!
//! - [`config`]: settings (defaults, TOML file, `TETHER_*` environment, flags).
//! - [`auth`]: `dev` names and HMAC-signed tickets.
//! - [`net`]: I/O threads (mio): accept, read and decode, gathering writes.
//! - [`shard`]: shard threads: a `World` and its players' sessions.
//! - [`link`]: the lock-free rings and wake-ups between the two.
//! - [`directory`]: which shard holds which account.
//! - [`guard`]: the DDoS defences as plain data: per-IP admission, login
//!   rates, strikes and bans, input allowances, protect mode.
//! - characters are stored by `tether-store` (SQLite by default,
//!   PostgreSQL for production) through a writer thread off the world loop.
//! - [`metrics`], [`admin`]: counters and the admin HTTP endpoint.
//!
//! # Data flow
//!
//! ```text
//!            +-------------------- I/O thread (mio) ---------------------+
//!  socket -> | read 64 KiB -> split frames -> decode -> ToShard ring ------+--> shard thread
//!  socket <- | writev(<=64 frames) <- per-conn queue <- ToIo ring <-------+--- (World + sessions)
//!            +-----------------------------------------------------------+
//! ```
//!
//! Threads never share a lock on the game path: each (I/O thread, shard)
//! pair has its own SPSC rings. See docs/ARCHITECTURE.md.

// The only unsafe code is in `uring`: the io_uring send path, behind a safe
// API that borrows what the kernel reads, and one getsockopt(TCP_INFO) for
// the admin API's round-trip times; each block has its SAFETY comment.
#![deny(unsafe_code)]

pub(crate) mod admin;
pub mod auth;
pub(crate) mod cidr;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod console;
pub mod control;
pub(crate) mod directory;
pub mod error;
pub mod guard;
pub mod handover;
pub(crate) mod kernel_filter;
pub mod link;
pub mod mcp;
pub mod metrics;
pub(crate) mod net;
pub(crate) mod play;
pub(crate) mod shard;
pub(crate) mod uring;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tether_engine::Game;
use tether_store::{Backend, StoreWriter, WriterConfig};
use tether_world::{Mmo, World, WorldConfig};
use tracing::{info, warn};

use crate::config::Config;
use crate::directory::Directory;
pub use crate::error::StartError;
use crate::guard::{Defences, Guard, GuardConfig};
use crate::link::{
    IoLink, IoWaker, Outlet, ShardLink, ShardWaker, INBOUND_RING_CAPACITY, OUTBOUND_RING_CAPACITY,
};
use crate::metrics::Metrics;
use crate::shard::{Bus, Shard, ShardParts, BUS_CAPACITY};

/// A running server.
pub struct ServerHandle {
    pub game_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The WebSocket game listener's address (`ws_listen`), if any.
    pub ws_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    /// The guard (bans, per-IP state) and protect mode, as the admin
    /// endpoint sees them.
    pub defences: Arc<Defences>,
    shutdown: Arc<AtomicBool>,
    shard_wakers: Vec<Arc<ShardWaker>>,
    io_wakers: Vec<Arc<IoWaker>>,
    threads: Vec<JoinHandle<()>>,
    admin_stop: Option<tokio::sync::oneshot::Sender<()>>,
    admin_thread: Option<JoinHandle<()>>,
    store: Option<StoreWriter>,
    /// Longest a shutdown waits for storage to take the last writes
    /// (`shutdown_timeout_ms`).
    store_shutdown_bound: Duration,
    /// Set while loads wait for the process this one replaces.
    loads_held: Arc<AtomicBool>,
    /// Offers the listeners to a process that replaces this one.
    handover_thread: Option<JoinHandle<()>>,
    /// Cluster membership (cluster mode).
    cluster: Option<Arc<cluster::Cluster>>,
}

/// How a server starts, besides its settings.
#[derive(Debug, Default)]
pub struct Launch {
    /// Serve on these listeners (taken from the process this one replaces,
    /// [`handover::take`]) instead of binding the configured addresses.
    pub listeners: Option<handover::Listeners>,
    /// Keep storage loads (logins, resumes) waiting until
    /// [`ServerHandle::release_loads`]: the process this one replaces is
    /// still writing its sessions.
    pub hold_loads: bool,
}

impl ServerHandle {
    /// Stops accepting, saves every character, tells clients the server is
    /// restarting, and waits for every thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    /// Lets the loads held since the start ([`Launch::hold_loads`]) go to
    /// storage, in the order they came.
    pub fn release_loads(&self) {
        self.loads_held.store(false, Ordering::Release);
        for w in &self.shard_wakers {
            w.wake();
        }
    }

    fn stop_and_join(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for w in &self.shard_wakers {
            w.set_sleeping(true);
            w.wake();
        }
        for w in &self.io_wakers {
            w.set_polling(true);
            w.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The shards saved every character on their way out; make it durable.
        if let Some(store) = self.store.take() {
            let report = store.shutdown(self.store_shutdown_bound);
            if report.is_complete() {
                info!("storage flushed");
                // Everything is written: this server's accounts are free
                // now rather than when its lease ends.
                if let Some(c) = self.cluster.take() {
                    c.leave();
                }
            } else {
                warn!(?report, "storage could not be flushed completely");
            }
        }
        if let Some(stop) = self.admin_stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.admin_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.handover_thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop_and_join();
        }
    }
}

fn bind_game_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // SO_REUSEADDR only: restarting right after a stop must not wait out
    // TIME_WAIT. Not SO_REUSEPORT, which would let a second server bind the
    // same port and silently take half the connections.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // The kernel caps the backlog at net.core.somaxconn (docs/OPERATIONS.md).
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Starts every thread of a server running the MMO and returns once it is
/// listening.
///
/// Opens the configured storage first (SQLite in the data dir unless
/// `store` names another); an unreachable database stops the start.
pub fn start(cfg: Config) -> Result<ServerHandle, StartError> {
    let backend = open_store(&cfg, Mmo::NAME)?;
    start_with_backend(cfg, backend)
}

/// Opens the configured storage for `game`.
pub fn open_store(cfg: &Config, game: &str) -> Result<Box<dyn Backend>, StartError> {
    cfg.validate()?;
    create_data_dir(cfg)?;
    let spec = cfg.store_spec();
    let backend = tether_store::open(&spec, game).map_err(|source| StartError::Storage {
        spec: redact(&spec),
        source,
    })?;
    info!(store = %redact(&spec), game, "storage open");
    Ok(backend)
}

/// The MMO's world settings from the server's.
pub fn world_config(cfg: &Config) -> WorldConfig {
    let mut world_cfg = WorldConfig::for_population(cfg.world_players, cfg.world_density);
    world_cfg.pvp = cfg.pvp;
    world_cfg.tick_ms = cfg.tick_ms;
    world_cfg.seed = cfg.world_seed;
    world_cfg
}

fn create_data_dir(cfg: &Config) -> Result<(), StartError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| StartError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })
}

/// A store spec for logs and the admin API: a PostgreSQL URL or key-value
/// string without its password (`user:***@`, `password=***`).
pub(crate) fn redact(spec: &str) -> String {
    let mut out = match (spec.find("://"), spec.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &spec[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &spec[..scheme + 3], &spec[at..]),
                None => spec.to_string(),
            }
        }
        _ => spec.to_string(),
    };
    let mut from = 0;
    while let Some(i) = out[from..].find("password=") {
        let start = from + i + "password=".len();
        let end = out[start..]
            .find(['&', ' '])
            .map_or(out.len(), |j| start + j);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

/// [`start`] with a given storage backend (tests use an in-memory one).
pub fn start_with_backend(
    cfg: Config,
    backend: Box<dyn Backend>,
) -> Result<ServerHandle, StartError> {
    start_mmo_with(cfg, backend, Launch::default())
}

/// [`start_with_backend`] with listeners handed over and loads held (an
/// upgrade in place, `tether --replace`).
pub fn start_mmo_with(
    cfg: Config,
    backend: Box<dyn Backend>,
    launch: Launch,
) -> Result<ServerHandle, StartError> {
    let world_cfg = world_config(&cfg);
    start_game_with(
        cfg,
        backend,
        move |shard| Mmo::new(World::new(world_cfg.clone(), shard as u8)),
        launch,
    )
}

/// Starts a server running any [`Game`]: `new_game` makes the game of each
/// shard, by index.
pub fn start_game<G: Game>(
    cfg: Config,
    backend: Box<dyn Backend>,
    new_game: impl Fn(u16) -> G,
) -> Result<ServerHandle, StartError> {
    start_game_with(cfg, backend, new_game, Launch::default())
}

/// [`start_game`] with listeners handed over and loads held (an upgrade in
/// place, `tether --replace`).
pub fn start_game_with<G: Game>(
    cfg: Config,
    backend: Box<dyn Backend>,
    new_game: impl Fn(u16) -> G,
    launch: Launch,
) -> Result<ServerHandle, StartError> {
    cfg.validate()?;
    create_data_dir(&cfg)?;
    let cfg = Arc::new(cfg);
    let clock = Instant::now();
    let metrics = Arc::new(Metrics::new());
    let directory = Arc::new(Directory::new(cfg.shards));
    let guard_cfg = GuardConfig::from_config(&cfg)?;
    let defences = Arc::new(Defences::new(Guard::new(guard_cfg, 0), cfg.shards));
    let shutdown = Arc::new(AtomicBool::new(false));
    let loads_held = Arc::new(AtomicBool::new(launch.hold_loads));

    // Listeners first, so a taken port fails before any thread starts.
    let (first, admin_listener, ws_listener) = match launch.listeners {
        Some(handover::Listeners { game, admin, ws }) => (game, admin, ws),
        None => {
            let game = bind_game_listener(cfg.listen, cfg.listen_backlog).map_err(|source| {
                StartError::Listen {
                    what: "game",
                    addr: cfg.listen,
                    source,
                }
            })?;
            let admin = std::net::TcpListener::bind(cfg.admin_listen).map_err(|source| {
                StartError::Listen {
                    what: "admin",
                    addr: cfg.admin_listen,
                    source,
                }
            })?;
            let ws = match cfg.ws_listen {
                Some(addr) => Some(bind_game_listener(addr, cfg.listen_backlog).map_err(
                    |source| StartError::Listen {
                        what: "WebSocket",
                        addr,
                        source,
                    },
                )?),
                None => None,
            };
            (game, admin, ws)
        }
    };
    let ws_addr = ws_listener
        .as_ref()
        .map(std::net::TcpListener::local_addr)
        .transpose()?;
    let game_addr = first.local_addr()?;
    // Offered to a process that replaces this one (`tether --replace`).
    let handover_thread = match first.try_clone().and_then(|game| {
        let admin = admin_listener.try_clone()?;
        let ws = ws_listener
            .as_ref()
            .map(std::net::TcpListener::try_clone)
            .transpose()?;
        handover::offer(
            handover::socket_path(&cfg.data_dir),
            handover::Listeners { game, admin, ws },
            shutdown.clone(),
        )
    }) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(error = %e, "no listener handover: an upgrade in place will stop this server before the new one listens");
            None
        }
    };
    // Every I/O thread watches the same listening socket (a duplicated
    // descriptor in its own epoll); whichever accepts first gets the
    // connection, the others see WouldBlock.
    let mut listeners = Vec::new();
    for _ in 0..cfg.io_threads {
        let ws = ws_listener
            .as_ref()
            .map(std::net::TcpListener::try_clone)
            .transpose()?
            .map(mio::net::TcpListener::from_std);
        listeners.push((first.try_clone()?, ws));
    }
    drop(first);
    drop(ws_listener);
    admin_listener.set_nonblocking(true)?;
    let admin_addr = admin_listener.local_addr()?;

    // Cluster mode: join before storage, which asks it who may hold what.
    let cluster = match &cfg.cluster {
        Some(url) => Some(
            cluster::Cluster::start(cluster::ClusterConfig {
                url: url.clone(),
                name: cfg.cluster_name.clone(),
                me: cluster::NodeInfo {
                    node: cfg.node_id(),
                    address: cfg
                        .advertise
                        .clone()
                        .unwrap_or_else(|| game_addr.to_string()),
                    ws_url: cfg
                        .ws_advertise
                        .clone()
                        .or_else(|| ws_addr.map(|a| format!("ws://{a}/")))
                        .unwrap_or_default(),
                    admin: admin_addr.to_string(),
                    players: 0,
                    started_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    instance: {
                        let mut b = [0u8; 8];
                        getrandom::fill(&mut b)
                            .map_err(|e| StartError::Os(std::io::Error::other(e.to_string())))?;
                        u64::from_le_bytes(b)
                    },
                    sessions: Vec::new(),
                },
                lease: Duration::from_millis(cfg.cluster_lease_ms),
                balance_slack_pct: cfg.cluster_balance_slack_pct,
            })
            .map_err(|e| StartError::Cluster(format!("{e:#}")))?,
        ),
        None => None,
    };
    let store = StoreWriter::start_with(
        backend,
        WriterConfig {
            flush_interval: Duration::from_millis(cfg.flush_interval_ms),
            ..WriterConfig::default()
        },
        cluster.as_ref().map(|c| c.ownership()),
    )
    .map_err(|source| StartError::Storage {
        spec: redact(&cfg.store_spec()),
        source,
    })?;

    // Shard threads start parked, waiting for their state.
    let mut shard_threads = Vec::new();
    let mut shard_wakers = Vec::new();
    let mut shard_inits = Vec::new();
    for s in 0..cfg.shards {
        let (init_tx, init_rx) = mpsc::channel::<Shard<G>>();
        let t = std::thread::Builder::new()
            .name(format!("tether-shard-{s}"))
            .spawn(move || {
                if let Ok(shard) = init_rx.recv() {
                    shard.run();
                }
            })?;
        shard_wakers.push(ShardWaker::new(t.thread().clone()));
        shard_threads.push(t);
        shard_inits.push(init_tx);
    }

    let mut polls = Vec::new();
    let mut io_wakers = Vec::new();
    for i in 0..cfg.io_threads {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), mio::Token(usize::MAX - 2))?;
        polls.push(poll);
        io_wakers.push(IoWaker::new(waker));
        let _ = i;
    }

    // One pair of rings per (I/O thread, shard).
    let mut io_side: Vec<Vec<ShardLink<G::Input>>> =
        (0..cfg.io_threads).map(|_| Vec::new()).collect();
    let mut shard_side: Vec<Vec<IoLink<G::Input>>> = (0..cfg.shards).map(|_| Vec::new()).collect();
    for (i, io_links) in io_side.iter_mut().enumerate() {
        for (s, shard_links) in shard_side.iter_mut().enumerate() {
            let (in_tx, in_rx) = rtrb::RingBuffer::new(INBOUND_RING_CAPACITY);
            let (out_tx, out_rx) = rtrb::RingBuffer::new(OUTBOUND_RING_CAPACITY);
            io_links.push(ShardLink {
                tx: Outlet::new(in_tx),
                rx: out_rx,
                waker: shard_wakers[s].clone(),
            });
            shard_links.push(IoLink {
                rx: in_rx,
                tx: Outlet::new(out_tx),
                waker: io_wakers[i].clone(),
            });
        }
    }

    // Operator requests: one channel per shard, one per I/O thread.
    let (control, control_rxs) = control::Control::new(
        shard_wakers
            .iter()
            .map(|w| w.clone() as Arc<dyn control::Wake>)
            .collect(),
    );
    let (io_control, io_control_rxs) = control::IoControl::new(
        io_wakers
            .iter()
            .map(|w| w.clone() as Arc<dyn control::Wake>)
            .collect(),
    );

    let mut bus_txs = Vec::new();
    let mut bus_rxs = Vec::new();
    for _ in 0..cfg.shards {
        let (tx, rx) = mpsc::sync_channel(BUS_CAPACITY);
        bus_txs.push(tx);
        bus_rxs.push(rx);
    }
    let bus = Bus {
        senders: bus_txs,
        wakers: shard_wakers.clone(),
    };

    let mut session_salts = Vec::new();
    let per_shard = shard_side.into_iter().zip(bus_rxs).zip(control_rxs);
    for (s, ((links, bus_rx), control)) in per_shard.enumerate() {
        let waker = shard_wakers[s].clone();
        let (store, store_events) = store.client(Some(Box::new(move || waker.wake())));
        let shard = Shard::new(ShardParts {
            index: s as u16,
            engine: shard::engine_config(&cfg, s as u16),
            protect: shard::protect_config(&cfg),
            game: new_game(s as u16),
            io: links,
            waker: shard_wakers[s].clone(),
            bus: bus.clone(),
            bus_rx,
            directory: directory.clone(),
            store,
            store_events,
            metrics: metrics.clone(),
            defences: defences.clone(),
            shutdown: shutdown.clone(),
            loads_held: loads_held.clone(),
            control,
            clock,
            cluster: cluster.as_ref().map(|c| c.link()),
        });
        session_salts.push(shard.session_salt());
        shard_inits[s].send(shard).map_err(|_| {
            StartError::Os(std::io::Error::other(format!(
                "shard thread {s} died at start"
            )))
        })?;
    }

    if let Some(c) = &cluster {
        let metrics_cluster = c.clone();
        metrics.set_extra(move |out| metrics_cluster.render_metrics(out));
        let population = directory.clone();
        c.run(
            bus.clone(),
            directory.clone(),
            move || population.total(),
            session_salts,
        );
        info!(node = %c.config().me.node, cluster = %c.config().name, "cluster joined");
    }

    let mut threads = shard_threads;
    let per_io = polls
        .into_iter()
        .zip(listeners)
        .zip(io_side)
        .zip(io_control_rxs);
    for (i, (((poll, (listener, ws_listener)), links), io_requests)) in per_io.enumerate() {
        let io = net::IoThread::<G>::new(
            i as u16,
            net::IoConfig::from_config(&cfg),
            poll,
            mio::net::TcpListener::from_std(listener),
            ws_listener,
            io_wakers[i].clone(),
            links,
            io_requests,
            directory.clone(),
            metrics.clone(),
            defences.clone(),
            shutdown.clone(),
            clock,
        )?;
        threads.push(
            std::thread::Builder::new()
                .name(format!("tether-io-{i}"))
                .spawn(move || io.run())?,
        );
    }

    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_state = admin::AdminState {
        metrics: metrics.clone(),
        defences: defences.clone(),
        clock,
        control,
        io: io_control,
        directory: directory.clone(),
        auth: Arc::new(admin::AdminAuth::new(
            cfg.admin_viewer_token.clone(),
            cfg.admin_operator_token.clone(),
        )),
        audit: Arc::new(admin::Audit::new(cfg.data_dir.join("audit.jsonl"))),
        ban_notes: Arc::default(),
        settings: Arc::new(cfg.redacted()),
        history: Arc::default(),
        cluster: cluster.clone(),
    };
    let router = admin::router(
        admin_state.clone(),
        axum::Router::new().route_service("/mcp", mcp::http_service(admin_addr)),
    );
    let history_state = admin_state;
    let history_interval = Duration::from_millis(cfg.admin_history_interval_ms);
    let admin_thread = std::thread::Builder::new()
        .name("tether-admin".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("admin runtime");
            rt.block_on(async move {
                tokio::spawn(admin::record_history(history_state, history_interval));
                let listener =
                    tokio::net::TcpListener::from_std(admin_listener).expect("admin listener");
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = admin_stopped.await;
                    })
                    .await;
            });
        })?;

    info!(
        game = %game_addr,
        websocket = ?ws_addr,
        admin = %admin_addr,
        io_threads = cfg.io_threads,
        shards = cfg.shards,
        io_uring = cfg.io_uring,
        "tether listening"
    );
    Ok(ServerHandle {
        game_addr,
        admin_addr,
        ws_addr,
        metrics,
        defences,
        shutdown,
        shard_wakers,
        io_wakers,
        threads,
        admin_stop: Some(admin_stop),
        admin_thread: Some(admin_thread),
        store: Some(store),
        store_shutdown_bound: Duration::from_millis(cfg.shutdown_timeout_ms),
        loads_held,
        handover_thread,
        cluster,
    })
}
