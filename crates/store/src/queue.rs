//! The write-behind queue: what is waiting to be written, in what order it
//! goes, and what happens when the database fails.
//!
//! [`WriteBehind`] is driven by method calls carrying `now` and a backend to
//! call; it owns no thread, channel or clock, so its tests run it against
//! [`crate::fake::FakeBackend`] on a made-up timeline. The writer thread
//! ([`crate::writer`]) feeds it requests and routes what it produces.
//!
//! # Order of work, each step
//!
//! 1. Transactions, oldest first, up to `max_tx_batch` per database
//!    transaction: players are waiting for these.
//! 2. Loads, oldest first: a login is waiting.
//! 3. Records that are due, logouts and zombie expiries first, up to
//!    `max_batch` per database transaction. Every `flush_interval`, every
//!    record with unsaved changes becomes due; a logout or expiry is due at
//!    once.
//!
//! One unit of work per step, so that the driver can take new requests
//! between the transactions of a long flush.
//!
//! # Failure
//!
//! A retryable failure keeps everything, reports [`Health::Degraded`] and
//! blocks all work until `retry_at` (backoff doubling from
//! `backoff_initial` to `backoff_max`); then the same work is tried again,
//! in the same order, so when the database returns transactions are
//! committed first, in the order they were made. A batch rejected as bad
//! data is re-run one item at a time, so that only the bad one is dropped
//! (logged, counted, and for a transaction reported to its shard).
//!
//! # Transactions and write-behind records of the same account
//!
//! An account's record may have been queued before a transaction of that
//! account. The transaction carries the account's whole record as it is
//! after the transaction, and its commit writes that record; if the older
//! queued record were written afterwards, it would take the transaction
//! back (the loot a player was told is theirs, gone). So when a
//! transaction arrives, the queued record of its account, if older, is
//! replaced by the transaction's record. A queued record newer than the
//! transaction is kept: it already includes the transaction, and it is
//! written after it (transactions go first). "Older" is by a sequence
//! number taken from one counter for every request of every shard; the
//! driver merges the shards' queued records before it applies each
//! request, so every record queued before a transaction is here when the
//! transaction arrives.
//!
//! # Loads by session id
//!
//! A load by session id (a resume the process does not hold) must see the
//! records still queued here, like a load by account: a session that ended
//! (its account's newest record has no mark) must not be resumed from the
//! mark still in the database, and a newer mark must win over an older
//! one. But the database is keyed by account, and the id only names the
//! account through a mark. So the queue looks through its records for a
//! mark with that id (the newest, should two accounts' records carry one):
//! a load whose id is there is answered from memory at once (that record is
//! the account's newest). Such loads are rare (a resume the process does
//! not hold in memory) and the queue holds at most a record per player, so
//! a scan costs less than an index kept in step with every save (a map
//! entry and a copy of the account name per record, at every player count).
//! Otherwise the database is asked, after the transactions queued before
//! (as for any load), and its answer is checked against the queue: if the
//! account it names has a record queued here by then, that newer record
//! decides (its mark still has the id: it is the answer; it has none or
//! another: `None`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_engine::{Record, Tx};

use crate::backend::Backend;
use crate::event::{Health, StoreEvent};
use crate::stats::StoreStats;
use crate::{StoreError, WriterConfig};

/// Which events channel a completion goes to (one per shard).
pub(crate) type ClientId = u32;

/// Where an event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Client(ClientId),
    All,
}

/// A record handed over by a shard, not yet merged.
#[derive(Debug, Clone)]
pub(crate) struct DirtyEntry {
    pub record: Record,
    pub seq: u64,
    /// Saved at logout or zombie expiry: write promptly.
    pub urgent: bool,
}

#[derive(Debug)]
struct PendingRecord {
    record: Record,
    seq: u64,
    urgent: bool,
    /// Goes in the next batches (urgent, or the flush interval passed).
    due: bool,
}

#[derive(Debug)]
struct PendingTx {
    client: ClientId,
    tx: Tx,
}

/// What a load asks for.
#[derive(Debug, Clone)]
enum LoadKey {
    Account(String),
    Session(u64),
}

#[derive(Debug)]
struct PendingLoad {
    client: ClientId,
    key: LoadKey,
    tag: u64,
    deadline: Instant,
}

/// What could not be written before the writer stopped.
#[derive(Debug, Default)]
pub(crate) struct Leftovers {
    pub records: Vec<Record>,
    pub txs: Vec<Tx>,
}

/// The write-behind queue. See the module docs.
pub(crate) struct WriteBehind {
    cfg: WriterConfig,
    stats: Arc<StoreStats>,
    /// Keyed by account.
    records: HashMap<String, PendingRecord>,
    /// How many of `records` are urgent (kept in step with every change).
    urgent: usize,
    txs: VecDeque<PendingTx>,
    loads: VecDeque<PendingLoad>,
    health: Health,
    backoff: Duration,
    retry_at: Option<Instant>,
    next_flush: Instant,
    /// The flush interval passed with nothing to write: check the database
    /// anyway, so that health is true even on an empty server.
    ping_due: bool,
    /// Shutting down: every record is due.
    draining: bool,
    /// When the flush round under way began (for its duration).
    flush_started: Option<Instant>,
    out: Vec<(Target, StoreEvent)>,
}

impl WriteBehind {
    pub fn new(cfg: WriterConfig, stats: Arc<StoreStats>, now: Instant) -> Self {
        WriteBehind {
            next_flush: now + cfg.flush_interval,
            backoff: cfg.backoff_initial,
            cfg,
            stats,
            records: HashMap::new(),
            urgent: 0,
            txs: VecDeque::new(),
            loads: VecDeque::new(),
            health: Health::Healthy,
            retry_at: None,
            ping_due: false,
            draining: false,
            flush_started: None,
            out: Vec::new(),
        }
    }

    /// The database's state as the queue last saw it.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Nothing waiting: no record, transaction or load.
    pub fn is_idle(&self) -> bool {
        self.records.is_empty() && self.txs.is_empty() && self.loads.is_empty()
    }

    /// Events produced so far, with where they go.
    pub fn take_events(&mut self) -> std::vec::Drain<'_, (Target, StoreEvent)> {
        self.out.drain(..)
    }

    /// Merges records handed over by a shard: per account, the newest
    /// wins; a logout keeps the record urgent.
    pub fn merge_dirty(&mut self, entries: impl IntoIterator<Item = (String, DirtyEntry)>) {
        for (account, e) in entries {
            let due = e.urgent || self.draining;
            match self.records.get_mut(&account) {
                Some(p) => {
                    if e.seq > p.seq {
                        p.record = e.record;
                        p.seq = e.seq;
                    }
                    if e.urgent && !p.urgent {
                        p.urgent = true;
                        self.urgent += 1;
                    }
                    p.due |= due;
                }
                None => {
                    if e.urgent {
                        self.urgent += 1;
                    }
                    self.records.insert(
                        account,
                        PendingRecord {
                            record: e.record,
                            seq: e.seq,
                            urgent: e.urgent,
                            due,
                        },
                    );
                }
            }
        }
        self.publish_depths();
    }

    /// A transaction to commit. Its account's queued record, if older, is
    /// replaced by the transaction's record (see the module docs); it stays
    /// as urgent and as due as it was.
    pub fn on_tx(&mut self, client: ClientId, seq: u64, tx: Tx) {
        if let Some(p) = self.records.get_mut(tx.account()) {
            if p.seq < seq {
                p.record = tx.record.clone();
                p.seq = seq;
            }
        }
        self.txs.push_back(PendingTx { client, tx });
    }

    /// A load. Answered at once when the account's record is held here (its
    /// newest state is not in the database yet); otherwise queued until the
    /// database answers or `load_timeout` passes.
    pub fn on_load(&mut self, now: Instant, client: ClientId, account: String, tag: u64) {
        let held = self.records.get(&account).map(|p| p.record.clone());
        self.load_or_queue(now, client, LoadKey::Account(account), tag, held);
    }

    /// A load by session id: answered at once when a record queued here
    /// carries that session (the newest of its account); otherwise queued
    /// like any load, and the database's answer checked against what is
    /// queued by then (see the module docs).
    pub fn on_load_session(&mut self, now: Instant, client: ClientId, session_id: u64, tag: u64) {
        let held = self.held_session(session_id);
        self.load_or_queue(now, client, LoadKey::Session(session_id), tag, held);
    }

    fn load_or_queue(
        &mut self,
        now: Instant,
        client: ClientId,
        key: LoadKey,
        tag: u64,
        held: Option<Record>,
    ) {
        if self.draining {
            self.answer_load(client, key, tag, Err(StoreError::Closed));
            return;
        }
        if let Some(record) = held {
            self.answer_load(client, key, tag, Ok(Some(record)));
            return;
        }
        self.loads.push_back(PendingLoad {
            client,
            key,
            tag,
            deadline: now + self.cfg.load_timeout,
        });
    }

    /// Whether a record or transaction of `account` is still to be written.
    pub fn holds(&self, account: &str) -> bool {
        self.records.contains_key(account) || self.txs.iter().any(|t| t.tx.account() == account)
    }

    /// Answers a load of `account` at once with `error` (the cluster said
    /// another server serves it, or could not say).
    pub fn refuse_load(&mut self, client: ClientId, account: String, tag: u64, error: StoreError) {
        self.answer_load(client, LoadKey::Account(account), tag, Err(error));
    }

    /// The record queued here whose mark has this session id.
    fn held_session(&self, session_id: u64) -> Option<Record> {
        self.records
            .values()
            .filter(|p| p.record.session.is_some_and(|m| m.session_id == session_id))
            .max_by_key(|p| p.seq)
            .map(|p| p.record.clone())
    }

    /// The database's answer to a load by session id, checked against the
    /// records queued here now (see the module docs). None of them carries
    /// the id (the caller looked first).
    fn newest_of_session(&self, found: Option<Record>) -> Option<Record> {
        let found = found?;
        match self.records.get(&found.account) {
            // Queued here, and not under this id (or the index would have
            // it): the session ended or moved on since it was saved.
            Some(_) => None,
            None => Some(found),
        }
    }

    /// Shutting down: every record is due now; loads still queued are
    /// answered `Closed` (the server is going away).
    pub fn begin_shutdown(&mut self) {
        self.draining = true;
        for p in self.records.values_mut() {
            p.due = true;
        }
        while let Some(l) = self.loads.pop_front() {
            self.answer_load(l.client, l.key, l.tag, Err(StoreError::Closed));
        }
    }

    /// When the driver should call [`WriteBehind::step`] next, if no request
    /// arrives first. `now` when work is ready.
    pub fn next_wake(&self, now: Instant) -> Instant {
        let load_deadline = self.loads.front().map(|l| l.deadline);
        let at = match self.retry_at {
            // Nothing but load timeouts happens before the retry.
            Some(retry) => retry,
            None => {
                let ready = !self.txs.is_empty()
                    || !self.loads.is_empty()
                    || self.ping_due
                    || self.records.values().any(|p| p.due);
                if ready {
                    now
                } else {
                    self.next_flush
                }
            }
        };
        load_deadline.map_or(at, |d| at.min(d))
    }

    /// Does one unit of work if any is ready. Returns whether it did (call
    /// again: there may be more).
    pub fn step(&mut self, now: Instant, backend: &mut dyn Backend) -> bool {
        self.expire_loads(now);
        if let Some(at) = self.retry_at {
            if now < at {
                return false;
            }
        }
        let did = if !self.txs.is_empty() {
            self.commit_txs(now, backend);
            true
        } else if !self.loads.is_empty() {
            self.serve_load(now, backend);
            true
        } else {
            if now >= self.next_flush {
                self.next_flush = now + self.cfg.flush_interval;
                if self.records.is_empty() {
                    self.ping_due = true;
                } else if self.flush_started.is_none() {
                    self.flush_started = Some(Instant::now());
                }
                for p in self.records.values_mut() {
                    p.due = true;
                }
            }
            if self.records.values().any(|p| p.due) {
                self.save_due(now, backend);
                true
            } else if let Some(started) = self.flush_started.take() {
                self.stats.record_flush(started.elapsed());
                true
            } else if self.health == Health::Degraded || self.ping_due {
                // Nothing to write, but the database's state is in doubt
                // (degraded, and the loads that failed have timed out; or a
                // quiet interval): probe it, so health follows the database
                // even on an empty server.
                self.ping_due = false;
                match backend.ping() {
                    Ok(()) => self.succeeded(),
                    Err(e) => self.failed(now, backend.kind(), &e),
                }
                self.health == Health::Healthy
            } else {
                false
            }
        };
        self.publish_depths();
        did
    }

    /// Stops: everything still held, for the shutdown report. Loads still
    /// queued are answered `Closed`.
    pub fn into_leftovers(mut self) -> (Leftovers, Vec<(Target, StoreEvent)>) {
        self.begin_shutdown();
        let tx_n = self.txs.len();
        let mut left = Leftovers {
            records: self.records.drain().map(|(_, p)| p.record).collect(),
            txs: self.txs.drain(..).map(|t| t.tx).collect(),
        };
        left.records.sort_by(|a, b| a.account.cmp(&b.account));
        StoreStats::release(&self.stats.tx_pending, tx_n);
        self.urgent = 0;
        self.publish_depths();
        (left, std::mem::take(&mut self.out))
    }

    // --- work ---

    fn commit_txs(&mut self, now: Instant, backend: &mut dyn Backend) {
        let n = self.txs.len().min(self.cfg.max_tx_batch.max(1));
        let txs: Vec<Tx> = self.txs.iter().take(n).map(|t| t.tx.clone()).collect();
        let started = Instant::now();
        let result = backend.commit_batch(&txs);
        self.stats.record_batch(started.elapsed());
        match result {
            Ok(_) => {
                self.succeeded();
                for _ in 0..n {
                    self.tx_done(Ok(()));
                }
            }
            Err(e) if e.is_retryable() => self.failed(now, backend.kind(), &e),
            Err(e) if n == 1 => {
                self.succeeded();
                self.tx_done(Err(e));
            }
            Err(_) => {
                // Find the bad one(s): each alone, in order.
                for _ in 0..n {
                    let tx = self.txs.front().expect("n queued").tx.clone();
                    match backend.commit_batch(std::slice::from_ref(&tx)) {
                        Ok(_) => self.tx_done(Ok(())),
                        Err(e) if e.is_retryable() => {
                            self.failed(now, backend.kind(), &e);
                            return;
                        }
                        Err(e) => self.tx_done(Err(e)),
                    }
                }
                self.succeeded();
            }
        }
    }

    /// The oldest transaction is finished: committed, or rejected.
    fn tx_done(&mut self, result: Result<(), StoreError>) {
        let t = self.txs.pop_front().expect("a queued transaction");
        StoreStats::release(&self.stats.tx_pending, 1);
        let event = match result {
            Ok(()) => {
                self.stats.tx_committed.fetch_add(1, Relaxed);
                StoreEvent::Committed(t.tx)
            }
            Err(error) => {
                self.stats.rejected.fetch_add(1, Relaxed);
                tracing::error!(
                    tx_id = t.tx.tx_id,
                    account = %t.tx.account(),
                    %error,
                    "transaction rejected by the database; it never happened"
                );
                StoreEvent::Rejected { tx: t.tx, error }
            }
        };
        self.out.push((Target::Client(t.client), event));
    }

    fn serve_load(&mut self, now: Instant, backend: &mut dyn Backend) {
        let key = self.loads.front().expect("a queued load").key.clone();
        if let LoadKey::Session(id) = key {
            if let Some(held) = self.held_session(id) {
                // Queued here since the load arrived: answered without the
                // database, which says nothing about its health.
                let l = self.loads.pop_front().expect("a queued load");
                self.answer_load(l.client, l.key, l.tag, Ok(Some(held)));
                return;
            }
        }
        let result = match key {
            LoadKey::Account(account) => backend.load(&account),
            LoadKey::Session(id) => backend
                .load_session(id)
                .map(|found| self.newest_of_session(found)),
        };
        let result = match result {
            Err(e) if e.is_retryable() => {
                // Kept: answered when the database returns, or at its
                // deadline.
                self.failed(now, backend.kind(), &e);
                return;
            }
            Err(e) => {
                self.succeeded();
                Err(e)
            }
            // No transaction is waiting here: transactions go first and a
            // failure blocks everything, so the row read is up to date with
            // them.
            Ok(found) => {
                self.succeeded();
                Ok(found)
            }
        };
        let l = self.loads.pop_front().expect("a queued load");
        self.answer_load(l.client, l.key, l.tag, result);
    }

    fn expire_loads(&mut self, now: Instant) {
        // Loads are queued in arrival order with one timeout, so deadlines
        // are in order too.
        while self.loads.front().is_some_and(|l| l.deadline <= now) {
            let l = self.loads.pop_front().expect("checked");
            let error = StoreError::Unavailable(format!(
                "no answer from the database within {} ms",
                self.cfg.load_timeout.as_millis()
            ));
            self.answer_load(l.client, l.key, l.tag, Err(error));
        }
    }

    fn answer_load(
        &mut self,
        client: ClientId,
        key: LoadKey,
        tag: u64,
        result: Result<Option<Record>, StoreError>,
    ) {
        StoreStats::release(&self.stats.loads_pending, 1);
        let counter = if result.is_ok() {
            &self.stats.loads_served
        } else {
            &self.stats.loads_failed
        };
        counter.fetch_add(1, Relaxed);
        let event = match key {
            LoadKey::Account(account) => StoreEvent::Loaded {
                account,
                tag,
                result,
            },
            LoadKey::Session(session_id) => StoreEvent::SessionLoaded {
                session_id,
                tag,
                result,
            },
        };
        self.out.push((Target::Client(client), event));
    }

    fn save_due(&mut self, now: Instant, backend: &mut dyn Backend) {
        let max = self.cfg.max_batch.max(1);
        let mut accounts: Vec<String> = self
            .records
            .iter()
            .filter(|(_, p)| p.urgent)
            .map(|(n, _)| n.clone())
            .take(max)
            .collect();
        if accounts.len() < max {
            let more = max - accounts.len();
            accounts.extend(
                self.records
                    .iter()
                    .filter(|(_, p)| p.due && !p.urgent)
                    .map(|(n, _)| n.clone())
                    .take(more),
            );
        }
        let batch: Vec<Record> = accounts
            .iter()
            .map(|a| self.records[a].record.clone())
            .collect();
        let started = Instant::now();
        let result = backend.save_batch(&batch);
        self.stats.record_batch(started.elapsed());
        match result {
            Ok(()) => {
                self.succeeded();
                for a in &accounts {
                    self.record_done(a);
                }
            }
            Err(e) if e.is_retryable() => self.failed(now, backend.kind(), &e),
            Err(e) => {
                if batch.len() > 1 {
                    // Find the bad one(s): each alone.
                    for (a, r) in accounts.iter().zip(&batch) {
                        match backend.save_batch(std::slice::from_ref(r)) {
                            Ok(()) => self.record_done(a),
                            Err(e) if e.is_retryable() => {
                                self.failed(now, backend.kind(), &e);
                                return;
                            }
                            Err(e) => self.record_rejected(a, &e),
                        }
                    }
                } else {
                    self.record_rejected(&accounts[0], &e);
                }
                self.succeeded();
            }
        }
    }

    fn record_done(&mut self, account: &str) {
        if self.remove_record(account) {
            self.stats.records_written.fetch_add(1, Relaxed);
        }
    }

    fn record_rejected(&mut self, account: &str, error: &StoreError) {
        if self.remove_record(account) {
            self.stats.rejected.fetch_add(1, Relaxed);
            tracing::error!(
                %account,
                %error,
                "record rejected by the database; dropped"
            );
        }
    }

    /// Takes `account`'s record off the queue, keeping `urgent` in step;
    /// `false` when none was queued.
    fn remove_record(&mut self, account: &str) -> bool {
        let Some(p) = self.records.remove(account) else {
            return false;
        };
        if p.urgent {
            self.urgent -= 1;
        }
        true
    }

    // --- health ---

    fn succeeded(&mut self) {
        self.retry_at = None;
        self.backoff = self.cfg.backoff_initial;
        if self.health == Health::Degraded {
            self.health = Health::Healthy;
            self.stats.degraded.store(false, Relaxed);
            tracing::info!("storage is back; flushing what was held");
            self.out
                .push((Target::All, StoreEvent::Health(Health::Healthy)));
        }
    }

    fn failed(&mut self, now: Instant, kind: &str, error: &StoreError) {
        self.stats.failures.fetch_add(1, Relaxed);
        self.retry_at = Some(now + self.backoff);
        if self.health == Health::Healthy {
            self.health = Health::Degraded;
            self.stats.degraded.store(true, Relaxed);
            tracing::warn!(
                backend = kind,
                %error,
                "storage unavailable; holding writes and retrying"
            );
            self.out
                .push((Target::All, StoreEvent::Health(Health::Degraded)));
        } else {
            tracing::debug!(backend = kind, %error, retry_in_ms = self.backoff.as_millis() as u64, "storage still unavailable");
        }
        self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
    }

    fn publish_depths(&self) {
        self.stats
            .records_pending
            .store(self.records.len() as u64, Relaxed);
        self.stats.saves_pending.store(self.urgent as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeBackend, FakeCall, FakeControl};
    use bytes::Bytes;

    /// A record whose bytes are `data` (the tests read them back as text).
    fn rec(account: &str, data: &str) -> Record {
        Record::new(account, 1, Bytes::from(data.to_string()))
    }

    /// `rec(account, data)` in session `session_id`, inputs up to `last`
    /// applied.
    fn in_session(account: &str, data: &str, session_id: u64, last: u32) -> Record {
        Record {
            session: Some(tether_engine::SessionMark {
                session_id,
                restart_token: [session_id as u8; 16],
                last_input: last,
            }),
            ..rec(account, data)
        }
    }

    fn session_loaded(session_id: u64, tag: u64, result: Option<Record>) -> StoreEvent {
        StoreEvent::SessionLoaded {
            session_id,
            tag,
            result: Ok(result),
        }
    }

    /// A transaction leaving `account`'s record as `data`.
    fn tx(tx_id: u64, account: &str, data: &str) -> Tx {
        Tx {
            tx_id,
            record: rec(account, data),
            entry: Bytes::from(format!("entry {tx_id}")),
        }
    }

    fn entry(r: Record, seq: u64, urgent: bool) -> (String, DirtyEntry) {
        (
            r.account.clone(),
            DirtyEntry {
                record: r,
                seq,
                urgent,
            },
        )
    }

    /// The queue, the fake database, and a made-up clock.
    struct Harness {
        q: WriteBehind,
        db: FakeBackend,
        ctl: FakeControl,
        stats: Arc<StoreStats>,
        t0: Instant,
        seq: u64,
    }

    impl Harness {
        fn new() -> Self {
            Self::with(WriterConfig::default())
        }

        fn with(cfg: WriterConfig) -> Self {
            let (db, ctl) = FakeBackend::new();
            let stats = Arc::new(StoreStats::default());
            let t0 = Instant::now();
            Harness {
                q: WriteBehind::new(cfg, stats.clone(), t0),
                db,
                ctl,
                stats,
                t0,
                seq: 0,
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        fn seq(&mut self) -> u64 {
            self.seq += 1;
            self.seq
        }

        fn dirty(&mut self, r: Record) {
            let s = self.seq();
            self.q.merge_dirty([entry(r, s, false)]);
        }

        fn save_now(&mut self, r: Record) {
            let s = self.seq();
            self.q.merge_dirty([entry(r, s, true)]);
        }

        fn commit(&mut self, tx: Tx) {
            let s = self.seq();
            self.stats.tx_pending.fetch_add(1, Relaxed);
            self.q.on_tx(0, s, tx);
        }

        fn load(&mut self, ms: u64, account: &str, tag: u64) {
            self.stats.loads_pending.fetch_add(1, Relaxed);
            let now = self.at(ms);
            self.q.on_load(now, 0, account.into(), tag);
        }

        fn load_session(&mut self, ms: u64, session_id: u64, tag: u64) {
            self.stats.loads_pending.fetch_add(1, Relaxed);
            let now = self.at(ms);
            self.q.on_load_session(now, 0, session_id, tag);
        }

        /// Events already produced, without running a step.
        fn events(&mut self) -> Vec<StoreEvent> {
            self.q.take_events().map(|(_, e)| e).collect()
        }

        /// Runs every step that is ready at `ms`; returns the events.
        fn run(&mut self, ms: u64) -> Vec<StoreEvent> {
            let now = self.at(ms);
            let mut guard = 0;
            while self.q.step(now, &mut self.db) {
                guard += 1;
                assert!(guard < 10_000, "step never settles");
            }
            self.q.take_events().map(|(_, e)| e).collect()
        }

        fn saves(&self) -> Vec<Vec<String>> {
            self.ctl
                .calls()
                .into_iter()
                .filter_map(|c| match c {
                    FakeCall::SaveBatch(n) => Some(n),
                    _ => None,
                })
                .collect()
        }

        /// The stored bytes of `account`, as text.
        fn stored(&self, account: &str) -> Option<String> {
            self.ctl
                .record(account)
                .map(|r| String::from_utf8(r.data.to_vec()).unwrap())
        }
    }

    fn committed(events: &[StoreEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                StoreEvent::Committed(tx) => Some(tx.tx_id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn records_coalesce_per_account_latest_wins() {
        let mut h = Harness::new();
        for i in 0..100 {
            h.dirty(rec("ann", &format!("ann {i}")));
        }
        h.dirty(rec("bob", "bob"));
        assert_eq!(h.stats.snapshot().records_pending, 2);
        h.run(5_000);
        assert_eq!(h.saves().len(), 1, "one batch");
        assert_eq!(h.saves()[0].len(), 2, "one row per account");
        assert_eq!(h.stored("ann").unwrap(), "ann 99");
        assert_eq!(h.stats.snapshot().records_pending, 0);
        assert_eq!(h.stats.snapshot().records_written, 2);
        assert_eq!(h.stats.snapshot().flushes, 1);
        assert_eq!(h.stats.snapshot().batches, 1);
    }

    #[test]
    fn the_newest_record_wins_whatever_order_the_shards_hand_them_over() {
        let mut h = Harness::new();
        h.q.merge_dirty([entry(rec("ann", "new"), 9, false)]);
        h.q.merge_dirty([entry(rec("ann", "old"), 3, false)]);
        h.run(5_000);
        assert_eq!(h.stored("ann").unwrap(), "new");
    }

    #[test]
    fn dirty_records_wait_for_the_flush_interval_logouts_do_not() {
        let mut h = Harness::new();
        h.dirty(rec("ann", "1"));
        h.run(0);
        h.run(4_999);
        assert!(h.saves().is_empty(), "nothing before the interval");
        assert_eq!(h.q.next_wake(h.at(100)), h.at(5_000));
        h.save_now(rec("bob", "2"));
        assert_eq!(h.q.next_wake(h.at(100)), h.at(100), "a logout is ready now");
        h.run(100);
        assert_eq!(h.saves(), vec![vec!["bob".to_string()]], "only the logout");
        assert!(h.ctl.record("ann").is_none());
        h.run(5_000);
        assert_eq!(h.stored("ann").unwrap(), "1");
        // The next flush is an interval later.
        h.dirty(rec("ann", "2"));
        h.run(9_999);
        assert_eq!(h.stored("ann").unwrap(), "1");
        h.run(10_000);
        assert_eq!(h.stored("ann").unwrap(), "2");
    }

    #[test]
    fn batches_are_capped_and_logouts_go_first() {
        let mut h = Harness::with(WriterConfig {
            max_batch: 10,
            ..WriterConfig::default()
        });
        for i in 0..25 {
            h.dirty(rec(&format!("p{i:02}"), "x"));
        }
        h.save_now(rec("zed", "1"));
        h.run(5_000);
        let saves = h.saves();
        assert_eq!(saves.len(), 3);
        assert!(saves.iter().all(|b| b.len() <= 10));
        assert!(
            saves[0].contains(&"zed".to_string()),
            "the logout in the first batch"
        );
        assert_eq!(h.ctl.record_count(), 26);
    }

    #[test]
    fn transactions_are_acknowledged_only_after_commit_and_go_first() {
        let mut h = Harness::new();
        h.save_now(rec("ann", "0"));
        h.commit(tx(1, "ann", "ann+5"));
        h.ctl.set_down(true);
        let ev = h.run(0);
        assert!(committed(&ev).is_empty(), "no ack while the commit fails");
        assert_eq!(ev, vec![StoreEvent::Health(Health::Degraded)]);
        assert!(h.stats.snapshot().degraded);
        assert_eq!(h.stats.snapshot().tx_pending, 1);

        h.ctl.set_down(false);
        h.ctl.clear_calls();
        let ev = h.run(100);
        assert_eq!(ev[0], StoreEvent::Health(Health::Healthy));
        assert_eq!(committed(&ev), vec![1]);
        let calls = h.ctl.calls();
        assert_eq!(
            calls[0],
            FakeCall::Commit(vec![1]),
            "transactions before records"
        );
        assert_eq!(calls[1], FakeCall::SaveBatch(vec!["ann".into()]));
        assert_eq!(h.stored("ann").unwrap(), "ann+5");
        assert!(!h.stats.snapshot().degraded);
        let s = h.stats.snapshot();
        assert_eq!((s.tx_pending, s.tx_committed), (0, 1));
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_on_success() {
        let mut h = Harness::new();
        h.commit(tx(1, "ann", "5"));
        h.ctl.set_down(true);
        let mut t = 0;
        let mut gaps = vec![];
        h.run(t);
        for _ in 0..9 {
            let next = h.q.next_wake(h.at(t));
            let gap = next.duration_since(h.at(t)).as_millis() as u64;
            gaps.push(gap);
            // Nothing is tried before the retry time.
            let before = h.ctl.calls().len();
            h.run(t + gap - 1);
            assert_eq!(h.ctl.calls().len(), before);
            t += gap;
            h.run(t);
            assert_eq!(h.ctl.calls().len(), before + 1);
        }
        assert_eq!(
            gaps,
            vec![100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000]
        );
        h.ctl.set_down(false);
        h.run(t + 5_000);
        assert_eq!(h.ctl.ledger(), vec![1]);
        // Fresh failure: back to the initial delay.
        h.commit(tx(2, "ann", "6"));
        h.ctl.set_down(true);
        t += 5_000;
        h.run(t);
        assert_eq!(h.q.next_wake(h.at(t)), h.at(t + 100));
    }

    #[test]
    fn transactions_in_an_outage_are_committed_in_order_in_capped_batches() {
        let mut h = Harness::with(WriterConfig {
            max_tx_batch: 4,
            ..WriterConfig::default()
        });
        h.ctl.set_down(true);
        for id in 1..=10 {
            h.commit(tx(id, "ann", &format!("after {id}")));
        }
        h.run(0);
        assert!(h.ctl.ledger().is_empty());
        h.ctl.set_down(false);
        h.ctl.clear_calls();
        let ev = h.run(100);
        assert_eq!(committed(&ev), (1..=10).collect::<Vec<_>>());
        assert_eq!(h.ctl.ledger(), (1..=10).collect::<Vec<_>>());
        assert_eq!(
            h.ctl.calls(),
            vec![
                FakeCall::Commit(vec![1, 2, 3, 4]),
                FakeCall::Commit(vec![5, 6, 7, 8]),
                FakeCall::Commit(vec![9, 10]),
            ],
            "one database transaction per batch of four"
        );
        assert_eq!(
            h.stored("ann").unwrap(),
            "after 10",
            "the last one's record"
        );
    }

    #[test]
    fn an_ambiguous_commit_is_not_applied_twice() {
        let mut h = Harness::new();
        h.commit(tx(1, "ann", "5"));
        h.ctl.lose_next_commit_answer();
        let ev = h.run(0);
        assert!(
            committed(&ev).is_empty(),
            "the answer was lost: not acknowledged"
        );
        assert_eq!(h.ctl.ledger(), vec![1], "but the commit happened");
        // Meanwhile the account moved on in the database; the retry must
        // not put the transaction's record back over it.
        h.ctl.insert(rec("ann", "spent"));
        let ev = h.run(100);
        assert_eq!(
            committed(&ev),
            vec![1],
            "acknowledged once, after the retry"
        );
        assert_eq!(h.ctl.ledger(), vec![1], "applied once");
        assert_eq!(h.stored("ann").unwrap(), "spent");
    }

    #[test]
    fn a_record_queued_before_a_transaction_is_replaced_by_its_record() {
        let mut h = Harness::new();
        h.dirty(rec("ann", "before")); // older than the transaction
        h.commit(tx(1, "ann", "after tx 1"));
        h.run(5_000);
        assert_eq!(
            h.stored("ann").unwrap(),
            "after tx 1",
            "the older record must not take the transaction back"
        );
        assert_eq!(h.ctl.ledger(), vec![1]);

        // A record newer than the transaction is left as it is, and is
        // written after it.
        h.commit(tx(2, "ann", "after tx 2"));
        h.dirty(rec("ann", "newer"));
        h.run(10_000);
        assert_eq!(h.stored("ann").unwrap(), "newer");

        // An urgent record stays urgent when it takes a transaction's
        // record: written at once, not at the next interval.
        h.save_now(rec("bob", "logout"));
        h.commit(tx(3, "bob", "after tx 3"));
        h.ctl.clear_calls();
        h.run(10_001);
        assert_eq!(
            h.ctl.calls(),
            vec![
                FakeCall::Commit(vec![3]),
                FakeCall::SaveBatch(vec!["bob".into()])
            ]
        );
        assert_eq!(h.stored("bob").unwrap(), "after tx 3");
        assert_eq!(h.stats.snapshot().saves_pending, 0);
    }

    #[test]
    fn a_record_that_took_a_transaction_is_not_replaced_by_an_older_one() {
        let mut h = Harness::new();
        h.q.merge_dirty([entry(rec("ann", "seq 1"), 1, false)]);
        h.stats.tx_pending.fetch_add(1, Relaxed);
        h.q.on_tx(0, 5, tx(1, "ann", "tx at seq 5"));
        // A record from before the transaction, handed over late.
        h.q.merge_dirty([entry(rec("ann", "seq 3"), 3, false)]);
        h.run(5_000);
        assert_eq!(h.stored("ann").unwrap(), "tx at seq 5");
    }

    #[test]
    fn loads_are_answered_from_memory_first_then_from_the_database() {
        let mut h = Harness::new();
        h.ctl.insert(rec("old", "in the database"));
        h.save_now(rec("held", "logout"));
        h.commit(tx(1, "held", "after tx"));
        h.ctl.set_down(true);
        h.load(0, "held", 7);
        let ev = h.q.take_events().map(|(_, e)| e).collect::<Vec<_>>();
        assert_eq!(
            ev,
            vec![StoreEvent::Loaded {
                account: "held".into(),
                tag: 7,
                result: Ok(Some(rec("held", "after tx"))),
            }],
            "answered at once, database down or not, with the transaction in it"
        );
        h.ctl.set_down(false);
        h.load(0, "old", 8);
        h.load(0, "nobody", 9);
        let ev = h.run(0);
        assert_eq!(committed(&ev), vec![1]);
        let loads: Vec<_> = ev
            .into_iter()
            .filter(|e| matches!(e, StoreEvent::Loaded { .. }))
            .collect();
        assert_eq!(
            loads,
            vec![
                StoreEvent::Loaded {
                    account: "old".into(),
                    tag: 8,
                    result: Ok(Some(rec("old", "in the database"))),
                },
                StoreEvent::Loaded {
                    account: "nobody".into(),
                    tag: 9,
                    result: Ok(None),
                },
            ]
        );
        assert_eq!(h.stats.snapshot().loads_pending, 0);
        assert_eq!(h.stats.snapshot().loads_served, 3);
    }

    #[test]
    fn a_load_waits_for_the_transactions_queued_before_it() {
        let mut h = Harness::new();
        h.ctl.insert(rec("ann", "before"));
        h.commit(tx(1, "ann", "after tx"));
        h.load(0, "ann", 1);
        let ev = h.run(0);
        assert_eq!(
            ev,
            vec![
                StoreEvent::Committed(tx(1, "ann", "after tx")),
                StoreEvent::Loaded {
                    account: "ann".into(),
                    tag: 1,
                    result: Ok(Some(rec("ann", "after tx"))),
                },
            ]
        );
    }

    #[test]
    fn a_load_by_session_is_answered_from_the_newest_queued_record() {
        let mut h = Harness::new();
        h.ctl.insert(in_session("ann", "in the database", 11, 5));
        h.ctl.set_down(true);
        h.dirty(in_session("ann", "ann 1", 11, 6));
        h.dirty(in_session("ann", "ann 2", 11, 7));
        h.load_session(0, 11, 1);
        assert_eq!(
            h.events(),
            vec![session_loaded(
                11,
                1,
                Some(in_session("ann", "ann 2", 11, 7))
            )],
            "answered at once, database down or not"
        );
        // A transaction's record replaces the queued one, mark included.
        h.commit(tx(1, "ann", "after tx"));
        h.commit(Tx {
            record: in_session("ann", "after tx 2", 11, 8),
            ..tx(2, "ann", "")
        });
        h.load_session(0, 11, 2);
        assert_eq!(
            h.events(),
            vec![session_loaded(
                11,
                2,
                Some(in_session("ann", "after tx 2", 11, 8))
            )]
        );
        // Another account's newer record with the same id takes it.
        h.dirty(in_session("bob", "bob", 11, 1));
        h.load_session(0, 11, 3);
        assert_eq!(
            h.events(),
            vec![session_loaded(11, 3, Some(in_session("bob", "bob", 11, 1)))]
        );
        assert!(
            !h.ctl
                .calls()
                .iter()
                .any(|c| matches!(c, FakeCall::LoadSession(_))),
            "the database was not asked"
        );
        let s = h.stats.snapshot();
        assert_eq!((s.loads_pending, s.loads_served), (0, 3));
    }

    #[test]
    fn a_session_ended_or_replaced_in_the_queue_is_not_resumed_from_the_database() {
        let mut h = Harness::new();
        h.ctl.insert(in_session("ann", "ann saved", 11, 5));
        h.ctl.insert(in_session("bob", "bob saved", 12, 5));
        h.ctl.insert(in_session("cat", "cat saved", 13, 5));
        // ann logged out, bob is in a new session; neither written yet.
        h.save_now(rec("ann", "ann out"));
        h.dirty(in_session("bob", "bob again", 22, 0));
        h.dirty(rec("dan", "dan"));
        for (tag, id) in [(1, 11), (2, 12), (3, 13), (4, 14)] {
            h.load_session(0, id, tag);
        }
        assert!(h.events().is_empty(), "none of these is held here");
        let ev = h.run(0);
        assert_eq!(
            ev,
            vec![
                session_loaded(11, 1, None),
                session_loaded(12, 2, None),
                session_loaded(13, 3, Some(in_session("cat", "cat saved", 13, 5))),
                session_loaded(14, 4, None),
            ]
        );
        assert_eq!(
            h.ctl.calls()[..4],
            [
                FakeCall::LoadSession(11),
                FakeCall::LoadSession(12),
                FakeCall::LoadSession(13),
                FakeCall::LoadSession(14),
            ],
            "asked before the records were written"
        );
        assert_eq!(h.ctl.session("ann"), None, "then the logout was written");
        // Written and gone from the queue: the database answers alone.
        h.load_session(5_000, 22, 5);
        h.load_session(5_000, 11, 6);
        assert_eq!(
            h.run(5_000),
            vec![
                session_loaded(22, 5, Some(in_session("bob", "bob again", 22, 0))),
                session_loaded(11, 6, None),
            ]
        );
    }

    #[test]
    fn a_record_queued_after_a_load_by_session_is_seen_when_it_is_served() {
        let mut h = Harness::new();
        h.ctl.insert(in_session("ann", "ann saved", 11, 5));
        h.ctl.set_down(true);
        h.load_session(0, 11, 1);
        h.load_session(0, 11, 2);
        h.run(0);
        // Handed over while the loads wait: the newest state answers them.
        h.save_now(rec("ann", "ann out"));
        h.ctl.set_down(false);
        h.load_session(100, 99, 3);
        let ev = h.run(100);
        assert!(ev.contains(&session_loaded(11, 1, None)), "{ev:?}");
        assert!(ev.contains(&session_loaded(11, 2, None)), "{ev:?}");
        assert!(ev.contains(&session_loaded(99, 3, None)), "{ev:?}");
        // Answered from memory at the retry, the database still away: no
        // word about its health, which is still in doubt.
        let mut h = Harness::new();
        h.ctl.set_down(true);
        h.load_session(0, 11, 1);
        assert_eq!(h.run(0), vec![StoreEvent::Health(Health::Degraded)]);
        h.dirty(in_session("ann", "ann", 11, 1));
        let ev = h.run(100);
        assert_eq!(
            ev,
            vec![session_loaded(11, 1, Some(in_session("ann", "ann", 11, 1)))]
        );
        assert_eq!(h.q.health(), Health::Degraded);
        assert!(h.stats.snapshot().degraded);
    }

    #[test]
    fn a_load_by_session_waits_for_transactions_and_outages_like_a_load() {
        let mut h = Harness::new();
        h.ctl.insert(in_session("ann", "ann saved", 11, 5));
        h.commit(Tx {
            record: in_session("ann", "after tx", 11, 6),
            ..tx(1, "ann", "")
        });
        h.load_session(0, 11, 1);
        assert!(
            h.events().is_empty(),
            "the transaction is not a queued record"
        );
        let ev = h.run(0);
        assert_eq!(
            ev,
            vec![
                StoreEvent::Committed(Tx {
                    record: in_session("ann", "after tx", 11, 6),
                    ..tx(1, "ann", "")
                }),
                session_loaded(11, 1, Some(in_session("ann", "after tx", 11, 6))),
            ]
        );

        h.ctl.set_down(true);
        h.load_session(0, 11, 2);
        assert_eq!(h.run(0), vec![StoreEvent::Health(Health::Degraded)]);
        assert!(h.run(2_999).is_empty());
        match &h.run(3_000)[..] {
            [StoreEvent::SessionLoaded {
                session_id: 11,
                tag: 2,
                result: Err(e),
            }] => assert!(e.is_retryable()),
            other => panic!("unexpected {other:?}"),
        }
        h.load_session(3_000, 12, 3);
        h.q.begin_shutdown();
        assert_eq!(
            h.events(),
            vec![StoreEvent::SessionLoaded {
                session_id: 12,
                tag: 3,
                result: Err(StoreError::Closed),
            }]
        );
        let s = h.stats.snapshot();
        assert_eq!((s.loads_pending, s.loads_served, s.loads_failed), (0, 1, 2));
    }

    #[test]
    fn loads_in_an_outage_time_out_with_unavailable() {
        let mut h = Harness::new();
        h.ctl.set_down(true);
        h.load(0, "ann", 1);
        assert_eq!(h.run(0), vec![StoreEvent::Health(Health::Degraded)]);
        assert!(h.run(2_999).is_empty());
        let ev = h.run(3_000);
        match &ev[..] {
            [StoreEvent::Loaded {
                tag: 1,
                result: Err(e),
                ..
            }] => assert!(e.is_retryable()),
            other => panic!("unexpected {other:?}"),
        }
        let s = h.stats.snapshot();
        assert_eq!((s.loads_pending, s.loads_failed), (0, 1));
    }

    #[test]
    fn a_short_outage_delays_a_load_without_failing_it() {
        let mut h = Harness::new();
        h.ctl.insert(rec("ann", "3"));
        h.ctl.fail_next(2);
        h.load(0, "ann", 1);
        h.run(0);
        h.run(100);
        let ev = h.run(300);
        assert!(ev.contains(&StoreEvent::Loaded {
            account: "ann".into(),
            tag: 1,
            result: Ok(Some(rec("ann", "3"))),
        }));
        assert!(ev.contains(&StoreEvent::Health(Health::Healthy)));
    }

    #[test]
    fn a_rejected_record_is_dropped_alone() {
        let mut h = Harness::new();
        for n in ["a", "b", "bad", "c"] {
            h.dirty(rec(n, "1"));
        }
        h.ctl.reject_account("bad");
        h.run(5_000);
        assert_eq!(h.ctl.record_count(), 3);
        assert!(h.ctl.record("bad").is_none());
        let s = h.stats.snapshot();
        assert_eq!(
            (s.rejected, s.records_pending, s.records_written),
            (1, 0, 3)
        );
        assert_eq!(h.q.health(), Health::Healthy, "bad data is not an outage");
    }

    #[test]
    fn a_rejected_transaction_is_reported_and_the_rest_committed() {
        let mut h = Harness::new();
        h.ctl.reject_account("bad");
        h.commit(tx(1, "ann", "1"));
        h.commit(tx(2, "bad", "1"));
        h.commit(tx(3, "ann", "2"));
        let ev = h.run(0);
        assert_eq!(committed(&ev), vec![1, 3]);
        assert!(ev
            .iter()
            .any(|e| matches!(e, StoreEvent::Rejected { tx, .. } if tx.tx_id == 2)));
        assert_eq!(h.ctl.ledger(), vec![1, 3]);
        assert_eq!(h.stored("ann").unwrap(), "2");
        let s = h.stats.snapshot();
        assert_eq!((s.tx_pending, s.tx_committed, s.rejected), (0, 2, 1));
    }

    #[test]
    fn an_idle_writer_notices_an_outage_and_the_return() {
        let mut h = Harness::new();
        h.ctl.set_down(true);
        assert!(h.run(4_000).is_empty(), "quiet before the interval");
        assert_eq!(h.run(5_000), vec![StoreEvent::Health(Health::Degraded)]);
        h.ctl.set_down(false);
        assert_eq!(h.run(5_100), vec![StoreEvent::Health(Health::Healthy)]);
        assert_eq!(h.ctl.calls(), vec![FakeCall::Ping, FakeCall::Ping]);
    }

    #[test]
    fn shutdown_makes_everything_due_and_reports_leftovers() {
        let mut h = Harness::new();
        h.dirty(rec("ann", "1"));
        h.q.begin_shutdown();
        h.dirty(rec("bob", "1")); // handed over while draining: due too
        h.run(0);
        assert_eq!(h.ctl.record_count(), 2, "no wait for the interval");

        let mut h = Harness::new();
        h.dirty(rec("ann", "1"));
        h.commit(tx(1, "ann", "after tx"));
        h.load(0, "x", 1);
        h.ctl.set_down(true);
        h.run(0);
        h.q.begin_shutdown();
        let ev: Vec<_> = h.q.take_events().map(|(_, e)| e).collect();
        assert!(ev.contains(&StoreEvent::Loaded {
            account: "x".into(),
            tag: 1,
            result: Err(StoreError::Closed)
        }));
        let (left, _) = h.q.into_leftovers();
        assert_eq!(left.records, vec![rec("ann", "after tx")], "carries the tx");
        assert_eq!(left.txs, vec![tx(1, "ann", "after tx")]);
        assert_eq!(h.stats.snapshot().tx_pending, 0);
    }

    #[test]
    fn saves_pending_counts_logouts_until_written() {
        let mut h = Harness::new();
        h.ctl.set_down(true);
        h.save_now(rec("a", "1"));
        h.save_now(rec("a", "2"));
        h.save_now(rec("b", "1"));
        h.dirty(rec("c", "1"));
        h.dirty(rec("a", "3")); // online again: stays urgent
        assert_eq!(h.stats.snapshot().saves_pending, 2);
        assert_eq!(h.stats.snapshot().records_pending, 3);
        h.run(0);
        h.ctl.set_down(false);
        h.run(100);
        assert_eq!(h.stats.snapshot().saves_pending, 0);
        assert_eq!(h.stored("a").unwrap(), "3");
        assert!(h.ctl.record("c").is_none(), "not due yet");
    }
}
