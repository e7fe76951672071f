//! The writer thread and the handles the shards talk to it through.
//!
//! ```text
//!  shard thread (never blocks)                     writer thread (owns the backend)
//!  StoreHandle::mark_dirty / save_now --> client's dirty map (latest wins) --+
//!  StoreHandle::load / load_session ---> request channel (capped by the  ---+-> WriteBehind
//!  StoreHandle::commit ---------------->  tx / load gauges)                 |     -> Backend (blocking)
//!  StoreEvents (poll) <-- events channel (one per client) <-- route <-------+
//!        ^-- wake callback, called after events are pushed
//! ```
//!
//! A shard never waits on the writer: every handle method returns at once,
//! and answers come back as [`StoreEvent`]s. Records that change every tick
//! are coalesced before they reach the channel (a per-client map, latest
//! wins, one short lock per call), so the channel holds only requests whose
//! number is capped: loads (by account or by session id), transactions,
//! nudges, shutdown.
//!
//! The events channels have no cap of their own; they are bounded by the
//! ones above: one event per load and per transaction submitted, plus
//! one per health change.
//!
//! A database can also hang without failing (frozen, or a link that still
//! acknowledges packets but carries nothing): the call never returns and no
//! error says "outage". A small watch thread (`tether-store-watch`) looks at
//! the call under way; past [`WriterConfig::stall_after`] it reports
//! [`Health::Degraded`] itself, and the writer reports healthy again when
//! the call comes back (or the queue takes over if it failed). Its event
//! is not followed by a wake: a shard sees it at its next loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tether_engine::{Record, Tx};

use crate::backend::Backend;
use crate::event::{Health, StoreEvent};
use crate::ownership::Ownership;
use crate::queue::{ClientId, DirtyEntry, Target, WriteBehind};
use crate::stats::{StatsSnapshot, StoreStats};
use crate::{StoreError, WriterConfig};

/// Called by the writer thread after it pushed events for a client (the
/// server unparks the client's shard thread with it).
pub type Wake = Box<dyn Fn() + Send>;

/// How long dropping a [`StoreWriter`] without calling
/// [`StoreWriter::shutdown`] keeps trying to write what it holds.
pub const DROP_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// The longest the stall watch sleeps between two looks at the call under
/// way (shorter when `stall_after` is short): a stall is reported at most
/// this late.
const STALL_POLL: Duration = Duration::from_millis(250);

type DirtyMap = HashMap<String, DirtyEntry>;

enum Request {
    Register {
        id: ClientId,
        events: Sender<StoreEvent>,
        wake: Option<Wake>,
        dirty: Arc<Mutex<DirtyMap>>,
    },
    Load {
        client: ClientId,
        account: String,
        tag: u64,
    },
    LoadSession {
        client: ClientId,
        session_id: u64,
        tag: u64,
    },
    Commit {
        client: ClientId,
        seq: u64,
        tx: Tx,
    },
    /// A session of `account` ended: once its records are written, let the
    /// account go (to node `to`, if named). Cluster mode only.
    Release {
        account: String,
        to: Option<String>,
        /// Who to tell when it is done ([`StoreEvent::HandedOver`]).
        reply: Option<(ClientId, u64)>,
    },
    /// A logout or expiry record is waiting in a dirty map.
    Nudge,
    Shutdown {
        deadline: Instant,
    },
}

/// A release waiting for its account's records to be written.
struct Release {
    account: String,
    to: Option<String>,
    reply: Option<(ClientId, u64)>,
}

impl Release {
    /// The answer a hand-over's asker gets, if it asked for one.
    fn answer(&self, ok: bool) -> Option<(Target, StoreEvent)> {
        let (client, tag) = self.reply?;
        let event = StoreEvent::HandedOver {
            account: self.account.clone(),
            tag,
            ok,
        };
        Some((Target::Client(client), event))
    }
}

/// What handles and the writer share.
struct Shared {
    stats: Arc<StoreStats>,
    /// One order for every request of every client (see `queue`).
    seq: AtomicU64,
    closed: AtomicBool,
    /// A `Nudge` is in the channel and not yet taken.
    nudged: AtomicBool,
    max_pending_tx: usize,
    max_pending_loads: usize,
    max_pending_saves: usize,
    stall_after: Duration,
    /// The backend call under way, for the stall watch.
    watch: Mutex<Watch>,
    /// The writer thread has ended: the watch stops too.
    done: AtomicBool,
}

/// The backend call under way, as the stall watch sees it.
#[derive(Default)]
struct Watch {
    /// When the call started; `None` between calls.
    since: Option<Instant>,
    /// The watch reported this call as a stall (it turned the store
    /// degraded).
    stalled: bool,
    /// A call reported as a stall has returned: the writer reports healthy
    /// again unless the call failed (then the queue has its own outage).
    cleared: bool,
    /// Every client's events channel (one per shard), for the watch's own
    /// `Degraded` event.
    events: Vec<Sender<StoreEvent>>,
}

fn watch(shared: &Shared) -> MutexGuard<'_, Watch> {
    shared.watch.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a handle refused a request. The request is given back.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitError<T = ()> {
    /// A queue is at its cap (the database is slow or away): refuse the
    /// login (`CLOSE_CODE_STORAGE_UNAVAILABLE`) or the value action
    /// (a `CommandError`), and let the player retry later.
    StoreFull(T),
    /// The writer has shut down.
    Closed(T),
}

impl<T> SubmitError<T> {
    /// The request that was refused.
    pub fn into_inner(self) -> T {
        match self {
            SubmitError::StoreFull(t) | SubmitError::Closed(t) => t,
        }
    }
}

impl<T> std::fmt::Display for SubmitError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::StoreFull(_) => f.write_str("storage queue full"),
            SubmitError::Closed(_) => f.write_str("store writer shut down"),
        }
    }
}

impl<T: std::fmt::Debug> std::error::Error for SubmitError<T> {}

/// What the writer could not write before it stopped.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    /// Records whose latest state is not in the database, by account.
    pub unwritten: Vec<Record>,
    /// Transactions not committed (never acknowledged to players), in the
    /// order they were submitted.
    pub uncommitted: Vec<Tx>,
    /// The writer thread panicked; what it held is unknown.
    pub writer_panicked: bool,
    /// The counters at the end.
    pub stats: StatsSnapshot,
}

impl ShutdownReport {
    /// Everything was written.
    pub fn is_complete(&self) -> bool {
        self.unwritten.is_empty() && self.uncommitted.is_empty() && !self.writer_panicked
    }
}

/// The writer thread: owns the backend, writes behind the shards.
///
/// Start it once per process with an opened backend; give each shard its
/// own [`StoreWriter::client`]; call [`StoreWriter::shutdown`] after the
/// shards have stopped and saved their players' records.
pub struct StoreWriter {
    tx: Sender<Request>,
    shared: Arc<Shared>,
    next_client: AtomicU32,
    thread: Option<JoinHandle<ShutdownReport>>,
    watch_thread: Option<JoinHandle<()>>,
}

impl StoreWriter {
    /// Starts the writer thread (`tether-store`) around an opened, migrated
    /// backend.
    pub fn start<B: Backend + 'static>(backend: B, cfg: WriterConfig) -> Result<Self, StoreError> {
        Self::start_with(backend, cfg, None)
    }

    /// Starts the writer for a server of a cluster: loads are answered only
    /// once `ownership` gave this server the account, and accounts are let
    /// go only once their records are written (see [`crate::ownership`]).
    pub fn start_with<B: Backend + 'static>(
        backend: B,
        cfg: WriterConfig,
        ownership: Option<Box<dyn Ownership>>,
    ) -> Result<Self, StoreError> {
        let stats = Arc::new(StoreStats::default());
        let shared = Arc::new(Shared {
            stats: stats.clone(),
            seq: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            nudged: AtomicBool::new(false),
            max_pending_tx: cfg.max_pending_tx,
            max_pending_loads: cfg.max_pending_loads,
            max_pending_saves: cfg.max_pending_saves,
            stall_after: cfg.stall_after,
            watch: Mutex::new(Watch::default()),
            done: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let driver = Driver {
            rx,
            core: WriteBehind::new(cfg, stats, Instant::now()),
            backend: Timed {
                inner: backend,
                shared: shared.clone(),
            },
            clients: HashMap::new(),
            shared: shared.clone(),
            deadline: None,
            disconnected: false,
            ownership,
            releases: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("tether-store".into())
            .spawn(move || driver.run())
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        let watched = shared.clone();
        let watch_thread = match std::thread::Builder::new()
            .name("tether-store-watch".into())
            .spawn(move || watch_stalls(&watched))
        {
            Ok(t) => Some(t),
            Err(e) => {
                // Storage works without it; only a hang goes unreported.
                tracing::warn!(error = %e, "cannot start the storage stall watch");
                None
            }
        };
        Ok(StoreWriter {
            tx,
            shared,
            next_client: AtomicU32::new(0),
            thread: Some(thread),
            watch_thread,
        })
    }

    /// A new client (one per shard): a handle to submit with and the
    /// channel its answers come back on. `wake` is called on the writer
    /// thread each time it has pushed events for this client.
    pub fn client(&self, wake: Option<Wake>) -> (StoreHandle, StoreEvents) {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events_rx) = mpsc::channel();
        let dirty = Arc::new(Mutex::new(HashMap::new()));
        // If the writer is gone, the handle reports Closed on use.
        let _ = self.tx.send(Request::Register {
            id,
            events: events_tx,
            wake,
            dirty: dirty.clone(),
        });
        (
            StoreHandle {
                tx: self.tx.clone(),
                shared: self.shared.clone(),
                client: id,
                dirty,
            },
            StoreEvents { rx: events_rx },
        )
    }

    /// The live counters (for `/metrics`).
    pub fn stats(&self) -> Arc<StoreStats> {
        self.shared.stats.clone()
    }

    /// Stops accepting requests, writes everything held (retrying while the
    /// database is away) until done or until `within` has passed, stops the
    /// thread, and says what could not be written. A backend call already
    /// under way when the time is up is waited for (the backends bound their
    /// own calls: SQLite's busy timeout, PostgreSQL's connect and TCP
    /// timeouts).
    pub fn shutdown(mut self, within: Duration) -> ShutdownReport {
        self.stop(within)
    }

    fn stop(&mut self, within: Duration) -> ShutdownReport {
        let Some(thread) = self.thread.take() else {
            return ShutdownReport::default();
        };
        self.shared.closed.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Request::Shutdown {
            deadline: Instant::now() + within,
        });
        let report = thread.join().unwrap_or_else(|_| ShutdownReport {
            writer_panicked: true,
            stats: self.shared.stats.snapshot(),
            ..ShutdownReport::default()
        });
        if let Some(w) = self.watch_thread.take() {
            // The writer has ended (`done` is set): wake the watch to see it.
            self.shared.done.store(true, Ordering::SeqCst);
            w.thread().unpark();
            let _ = w.join();
        }
        report
    }
}

/// The stall watch's loop (see the module docs): until the writer ends,
/// reports a backend call under way past `stall_after` as an outage.
fn watch_stalls(shared: &Shared) {
    let poll = (shared.stall_after / 4).clamp(Duration::from_millis(1), STALL_POLL);
    while !shared.done.load(Ordering::SeqCst) {
        std::thread::park_timeout(poll);
        let mut w = watch(shared);
        let Some(since) = w.since else {
            continue;
        };
        if w.stalled || since.elapsed() < shared.stall_after {
            continue;
        }
        // Already degraded: the queue is handling an outage and said so.
        if shared.stats.degraded.swap(true, Ordering::Relaxed) {
            continue;
        }
        w.stalled = true;
        tracing::warn!(
            stalled_ms = since.elapsed().as_millis() as u64,
            "storage call not answered: degraded until it returns"
        );
        for events in &w.events {
            let _ = events.send(StoreEvent::Health(Health::Degraded));
        }
    }
}

/// The backend, with each call marked for the stall watch.
struct Timed<B> {
    inner: B,
    shared: Arc<Shared>,
}

impl<B: Backend> Timed<B> {
    fn call<T>(&mut self, f: impl FnOnce(&mut B) -> T) -> T {
        watch(&self.shared).since = Some(Instant::now());
        let result = f(&mut self.inner);
        let mut w = watch(&self.shared);
        w.since = None;
        if std::mem::take(&mut w.stalled) {
            w.cleared = true;
        }
        result
    }
}

impl<B: Backend> Backend for Timed<B> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn game(&self) -> &str {
        self.inner.game()
    }

    fn migrate(&mut self) -> Result<u32, StoreError> {
        self.call(|b| b.migrate())
    }

    fn load(&mut self, account: &str) -> Result<Option<Record>, StoreError> {
        self.call(|b| b.load(account))
    }

    fn load_session(&mut self, session_id: u64) -> Result<Option<Record>, StoreError> {
        self.call(|b| b.load_session(session_id))
    }

    fn save_batch(&mut self, records: &[Record]) -> Result<(), StoreError> {
        self.call(|b| b.save_batch(records))
    }

    fn commit(&mut self, tx: &Tx) -> Result<crate::TxOutcome, StoreError> {
        self.call(|b| b.commit(tx))
    }

    fn commit_batch(&mut self, txs: &[Tx]) -> Result<usize, StoreError> {
        self.call(|b| b.commit_batch(txs))
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.call(|b| b.ping())
    }
}

impl Drop for StoreWriter {
    /// Dropping without [`StoreWriter::shutdown`] still writes what is held
    /// (for up to [`DROP_FLUSH_DEADLINE`]) and logs what could not be.
    fn drop(&mut self) {
        if self.thread.is_some() {
            let report = self.stop(DROP_FLUSH_DEADLINE);
            if !report.is_complete() {
                tracing::error!(
                    unwritten = report.unwritten.len(),
                    uncommitted = report.uncommitted.len(),
                    "store writer dropped with data it could not write"
                );
            }
        }
    }
}

/// A shard's way into the writer. Cheap to clone, `Send + Sync`; every
/// method returns at once.
#[derive(Clone)]
pub struct StoreHandle {
    tx: Sender<Request>,
    shared: Arc<Shared>,
    client: ClientId,
    dirty: Arc<Mutex<DirtyMap>>,
}

fn lock(m: &Mutex<DirtyMap>) -> MutexGuard<'_, DirtyMap> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StoreHandle {
    /// Asks for the record of `account`. The answer comes back as
    /// [`StoreEvent::Loaded`] with the same `tag`.
    ///
    /// Refused with `StoreFull` when `max_pending_loads` loads are waiting
    /// or `max_pending_saves` records of players who logged out are
    /// unsaved: refuse the login with `CLOSE_CODE_STORAGE_UNAVAILABLE`.
    pub fn load(&self, account: &str, tag: u64) -> Result<(), SubmitError> {
        self.submit_load(|| Request::Load {
            client: self.client,
            account: account.to_string(),
            tag,
        })
    }

    /// Asks for the record of the account whose saved session has this id
    /// (a client resumes a session this process does not hold: it may have
    /// been saved by an earlier process). The answer comes back as
    /// [`StoreEvent::SessionLoaded`] with the same `tag`; the record's
    /// `session` is the saved mark.
    ///
    /// The answer reflects every record handed over before this call, even
    /// those not written yet: a session whose account's newest record has no
    /// mark (it ended) is answered `None`, whatever the database still
    /// holds. Admitted like [`StoreHandle::load`] (it counts as a load), and
    /// like a load it waits out an outage up to `load_timeout`, unless the
    /// answer is held in memory.
    pub fn load_session(&self, session_id: u64, tag: u64) -> Result<(), SubmitError> {
        self.submit_load(|| Request::LoadSession {
            client: self.client,
            session_id,
            tag,
        })
    }

    /// In a cluster: `account`'s session here ended (or moved to node
    /// `to`). Once every record and transaction of the account handed over
    /// before this call is written, the cluster is told (see
    /// [`crate::Ownership::release`]). A no-op on a single server. Never
    /// refused: one per ended session.
    pub fn release(&self, account: &str) {
        let _ = self.tx.send(Request::Release {
            account: account.to_string(),
            to: None,
            reply: None,
        });
    }

    /// In a cluster: `account`'s session here ended to move to the server
    /// `to`. Once every record and transaction of the account handed over
    /// before this call is written, the account is given to `to`, and
    /// [`StoreEvent::HandedOver`] with `tag` says whether that worked (only
    /// then may the client be sent there). On a single server it is
    /// answered `ok` once the records are written.
    pub fn hand_over(&self, account: &str, to: &str, tag: u64) {
        let _ = self.tx.send(Request::Release {
            account: account.to_string(),
            to: Some(to.to_string()),
            reply: Some((self.client, tag)),
        });
    }

    /// Admits a load against the caps and sends it.
    fn submit_load(&self, request: impl FnOnce() -> Request) -> Result<(), SubmitError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(SubmitError::Closed(()));
        }
        let stats = &self.shared.stats;
        if stats.saves_pending.load(Ordering::Relaxed) >= self.shared.max_pending_saves as u64
            || !StoreStats::reserve(&stats.loads_pending, self.shared.max_pending_loads)
        {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::StoreFull(()));
        }
        if self.tx.send(request()).is_err() {
            StoreStats::release(&stats.loads_pending, 1);
            return Err(SubmitError::Closed(()));
        }
        Ok(())
    }

    /// Hands over an account's record that changed (an MMO character moved,
    /// say). It is written at the next flush; a newer record of the same
    /// account replaces this one before then. Never refused: movement is
    /// always served. Ignored after shutdown.
    pub fn mark_dirty(&self, record: Record) {
        self.put(std::iter::once(record), false);
    }

    /// [`StoreHandle::mark_dirty`] for many records under one lock (a
    /// tick's worth of changed records).
    pub fn mark_dirty_all(&self, records: impl IntoIterator<Item = Record>) {
        self.put(records, false);
    }

    /// Hands over the record of a player who left the world (logout,
    /// zombie expiry) or was just created: written promptly, ahead of the
    /// flush interval. Never refused. Ignored after shutdown.
    pub fn save_now(&self, record: Record) {
        self.put(std::iter::once(record), true);
        if !self.shared.nudged.swap(true, Ordering::SeqCst) {
            let _ = self.tx.send(Request::Nudge);
        }
    }

    fn put(&self, records: impl IntoIterator<Item = Record>, urgent: bool) {
        if self.shared.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut map = lock(&self.dirty);
        for record in records {
            // Taken under the lock: within one map, a later insert always
            // carries a larger number.
            let seq = self.shared.seq.fetch_add(1, Ordering::SeqCst);
            match map.get_mut(&record.account) {
                Some(e) => {
                    e.record = record;
                    e.seq = seq;
                    e.urgent |= urgent;
                }
                None => {
                    map.insert(
                        record.account.clone(),
                        DirtyEntry {
                            record,
                            seq,
                            urgent,
                        },
                    );
                }
            }
        }
    }

    /// Submits a transaction (the game has already applied it). When it is
    /// committed, [`StoreEvent::Committed`] comes back: only then tell the
    /// player. A record of the same account handed over before this call
    /// and not yet written is replaced by `tx.record`, so it can never take
    /// the transaction back; one handed over after it is written after it.
    ///
    /// Refused with `StoreFull` (the transaction given back) when
    /// `max_pending_tx` are waiting. Check [`StoreHandle::accepts_value`]
    /// before letting a value action happen at all, so that this is rare.
    // The error is the refused transaction itself, given back by value so
    // that the caller can resubmit it: boxing it would add an allocation to
    // every refusal to save a copy of a few words on a path taken only when
    // the queue is full.
    #[allow(clippy::result_large_err)]
    pub fn commit(&self, tx: Tx) -> Result<(), SubmitError<Tx>> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(SubmitError::Closed(tx));
        }
        let stats = &self.shared.stats;
        if !StoreStats::reserve(&stats.tx_pending, self.shared.max_pending_tx) {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::StoreFull(tx));
        }
        let seq = self.shared.seq.fetch_add(1, Ordering::SeqCst);
        match self.tx.send(Request::Commit {
            client: self.client,
            seq,
            tx,
        }) {
            Ok(()) => Ok(()),
            Err(mpsc::SendError(req)) => {
                StoreStats::release(&stats.tx_pending, 1);
                match req {
                    Request::Commit { tx, .. } => Err(SubmitError::Closed(tx)),
                    _ => unreachable!("sent a Commit"),
                }
            }
        }
    }

    /// Whether a login would be accepted now (loads and unsaved logouts
    /// under their caps). A cheap read of two gauges.
    pub fn accepts_logins(&self) -> bool {
        let s = &self.shared.stats;
        !self.shared.closed.load(Ordering::Relaxed)
            && s.loads_pending.load(Ordering::Relaxed) < self.shared.max_pending_loads as u64
            && s.saves_pending.load(Ordering::Relaxed) < self.shared.max_pending_saves as u64
    }

    /// Whether a value action (one that ends in a transaction: loot, gold,
    /// an item transfer, a match result) would be accepted now. A cheap
    /// read of one gauge.
    pub fn accepts_value(&self) -> bool {
        !self.shared.closed.load(Ordering::Relaxed)
            && self.shared.stats.tx_pending.load(Ordering::Relaxed)
                < self.shared.max_pending_tx as u64
    }

    /// The database's state as the writer last saw it.
    pub fn health(&self) -> Health {
        if self.shared.stats.degraded.load(Ordering::Relaxed) {
            Health::Degraded
        } else {
            Health::Healthy
        }
    }

    /// The current counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }
}

/// A client's answers. Poll it from the shard loop; it never blocks unless
/// asked to ([`StoreEvents::recv_timeout`], for tools and tests).
pub struct StoreEvents {
    rx: Receiver<StoreEvent>,
}

impl StoreEvents {
    /// The next event, if one is there.
    pub fn try_recv(&self) -> Option<StoreEvent> {
        self.rx.try_recv().ok()
    }

    /// Every event there now.
    pub fn try_iter(&self) -> impl Iterator<Item = StoreEvent> + '_ {
        self.rx.try_iter()
    }

    /// Waits up to `timeout` for the next event. Not for world threads.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<StoreEvent> {
        self.rx.recv_timeout(timeout).ok()
    }
}

struct ClientSlot {
    events: Sender<StoreEvent>,
    wake: Option<Wake>,
    dirty: Arc<Mutex<DirtyMap>>,
    /// Swapped with the shared map at each drain, so both keep their
    /// capacity and the lock is held for a pointer swap.
    spare: DirtyMap,
}

/// Marks the store closed when the writer thread ends, however it ends, so
/// that handles stop accepting work nobody will do.
struct CloseOnExit(Arc<Shared>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.done.store(true, Ordering::SeqCst);
        if std::thread::panicking() {
            self.0.stats.degraded.store(true, Ordering::Relaxed);
            tracing::error!("store writer thread panicked; storage is closed");
        }
    }
}

struct Driver<B> {
    rx: Receiver<Request>,
    core: WriteBehind,
    backend: Timed<B>,
    clients: HashMap<ClientId, ClientSlot>,
    shared: Arc<Shared>,
    /// Set by shutdown: stop when idle or at this time.
    deadline: Option<Instant>,
    /// Every sender is gone (the writer was leaked and every handle dropped).
    disconnected: bool,
    /// The cluster's say over accounts; `None` on a single server.
    ownership: Option<Box<dyn Ownership>>,
    /// Releases waiting for their account's records to be written. One
    /// per session that ended and not yet written: bounded like the records.
    releases: Vec<Release>,
}

impl<B: Backend> Driver<B> {
    fn run(mut self) -> ShutdownReport {
        let _guard = CloseOnExit(self.shared.clone());
        loop {
            let now = Instant::now();
            let mut wake_at = self.core.next_wake(now);
            if let Some(d) = self.deadline {
                wake_at = wake_at.min(d);
            }
            let wait = wake_at.saturating_duration_since(now);
            if self.disconnected {
                std::thread::sleep(wait);
            } else {
                match self.rx.recv_timeout(wait) {
                    Ok(r) => self.apply(r),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        self.disconnected = true;
                        if self.deadline.is_none() {
                            self.begin_shutdown(Instant::now() + DROP_FLUSH_DEADLINE);
                        }
                    }
                }
            }
            self.take_requests();
            self.drain_dirty();
            loop {
                let more = self.core.step(Instant::now(), &mut self.backend);
                self.route();
                self.after_stall();
                self.release_written();
                if !more || self.past_deadline() {
                    break;
                }
                self.take_requests();
                self.drain_dirty();
            }
            if self.deadline.is_some() && (self.core.is_idle() || self.past_deadline()) {
                break;
            }
        }
        self.take_requests();
        self.drain_dirty();
        self.release_written();
        let stats = self.shared.stats.clone();
        let (left, events) = self.core.into_leftovers();
        deliver(&self.clients, events);
        if !left.records.is_empty() || !left.txs.is_empty() {
            tracing::error!(
                unwritten = left.records.len(),
                uncommitted = left.txs.len(),
                "store writer stopped with data it could not write"
            );
        }
        ShutdownReport {
            unwritten: left.records,
            uncommitted: left.txs,
            writer_panicked: false,
            stats: stats.snapshot(),
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn begin_shutdown(&mut self, deadline: Instant) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.drain_dirty();
        self.deadline = Some(deadline);
        self.core.begin_shutdown();
    }

    /// Applies what is in the channel now. The channel holds only capped
    /// requests, so this ends.
    fn take_requests(&mut self) {
        while let Ok(r) = self.rx.try_recv() {
            self.apply(r);
        }
    }

    fn apply(&mut self, r: Request) {
        match r {
            Request::Register {
                id,
                events,
                wake,
                dirty,
            } => {
                watch(&self.shared).events.push(events.clone());
                self.clients.insert(
                    id,
                    ClientSlot {
                        events,
                        wake,
                        dirty,
                        spare: HashMap::new(),
                    },
                );
            }
            // Records queued before a request are merged before it is
            // applied: a load sees them, a transaction replaces the older
            // ones of its account.
            Request::Load {
                client,
                account,
                tag,
            } => {
                self.drain_dirty();
                match self.acquire(&account) {
                    Ok(()) => self.core.on_load(Instant::now(), client, account, tag),
                    Err(e) => self.core.refuse_load(client, account, tag, e),
                }
            }
            Request::LoadSession {
                client,
                session_id,
                tag,
            } => {
                self.drain_dirty();
                self.core
                    .on_load_session(Instant::now(), client, session_id, tag);
            }
            Request::Commit { client, seq, tx } => {
                self.drain_dirty();
                self.core.on_tx(client, seq, tx);
            }
            Request::Release { account, to, reply } => {
                // The session's last records were handed over before this.
                self.drain_dirty();
                self.releases.push(Release { account, to, reply });
                self.release_written();
            }
            Request::Nudge => {
                self.shared.nudged.store(false, Ordering::SeqCst);
                self.drain_dirty();
            }
            Request::Shutdown { deadline } => self.begin_shutdown(deadline),
        }
        self.route();
    }

    fn drain_dirty(&mut self) {
        for slot in self.clients.values_mut() {
            {
                let mut shared = lock(&slot.dirty);
                if shared.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *shared, &mut slot.spare);
            }
            self.core.merge_dirty(slot.spare.drain());
        }
    }

    fn route(&mut self) {
        let mut events: Vec<_> = self.core.take_events().collect();
        if self.ownership.is_some() {
            for (_, event) in events.iter_mut() {
                let StoreEvent::SessionLoaded {
                    session_id,
                    result: result @ Ok(_),
                    ..
                } = event
                else {
                    continue;
                };
                let saved = match result {
                    Ok(Some(r)) if r.session.is_some_and(|m| m.session_id == *session_id) => {
                        Some(r.account.clone())
                    }
                    _ => None,
                };
                let verdict = match saved {
                    // A resume's record names its account only now: the
                    // answer is the record only if this server may hold
                    // that account.
                    Some(account) => self.acquire(&account),
                    // Not saved under this session (yet): the server that
                    // handed the id out may hold it in memory.
                    None => self
                        .ownership
                        .as_mut()
                        .map_or(Ok(()), |o| o.route_session(*session_id)),
                };
                if let Err(e) = verdict {
                    *result = Err(e);
                }
            }
        }
        deliver(&self.clients, events);
    }

    /// Asks the cluster for `account` (always yes on a single server). A
    /// yes cancels a release of it still waiting: the account is in play
    /// here again.
    fn acquire(&mut self, account: &str) -> Result<(), StoreError> {
        let Some(ownership) = self.ownership.as_mut() else {
            return Ok(());
        };
        ownership.acquire(account)?;
        // A hand-over cancelled this way is answered as failed.
        let mut cancelled = Vec::new();
        self.releases.retain(|r| {
            if r.account != account {
                return true;
            }
            cancelled.extend(r.answer(false));
            false
        });
        deliver(&self.clients, cancelled);
        Ok(())
    }

    /// Lets go of the accounts whose ended sessions are written.
    fn release_written(&mut self) {
        let core = &self.core;
        // Stopping: the server leaves the cluster once everything is
        // written, which frees all its accounts at once; one call per
        // account would only slow the stop down. Hand-overs still go.
        let stopping = self.deadline.is_some();
        let mut ownership = self.ownership.as_mut();
        let mut answers = Vec::new();
        self.releases.retain(|r| {
            if core.holds(&r.account) {
                return true;
            }
            // On a single server there is nobody to tell: done.
            let ok = match ownership.as_mut() {
                None => true,
                Some(_) if stopping && r.to.is_none() => true,
                Some(o) => o.release(&r.account, r.to.as_deref()),
            };
            answers.extend(r.answer(ok));
            false
        });
        deliver(&self.clients, answers);
    }

    /// A call the stall watch reported has returned. If the queue is
    /// healthy (the call succeeded), say so; if it failed, the queue
    /// reported the outage itself and will report its end.
    fn after_stall(&mut self) {
        let cleared = std::mem::take(&mut watch(&self.shared).cleared);
        if cleared && self.core.health() == Health::Healthy {
            self.shared.stats.degraded.store(false, Ordering::Relaxed);
            tracing::info!("storage answering again");
            deliver(
                &self.clients,
                vec![(Target::All, StoreEvent::Health(Health::Healthy))],
            );
        }
    }
}

/// Pushes events onto their clients' channels, then wakes each client that
/// got any, once. A client whose receiver is gone is skipped.
fn deliver(clients: &HashMap<ClientId, ClientSlot>, events: Vec<(Target, StoreEvent)>) {
    if events.is_empty() {
        return;
    }
    let mut woken: Vec<ClientId> = Vec::new();
    for (target, event) in events {
        match target {
            Target::Client(id) => {
                if let Some(c) = clients.get(&id) {
                    let _ = c.events.send(event);
                    if !woken.contains(&id) {
                        woken.push(id);
                    }
                }
            }
            Target::All => {
                for (&id, c) in clients {
                    let _ = c.events.send(event.clone());
                    if !woken.contains(&id) {
                        woken.push(id);
                    }
                }
            }
        }
    }
    for id in woken {
        if let Some(wake) = clients.get(&id).and_then(|c| c.wake.as_ref()) {
            wake();
        }
    }
}
