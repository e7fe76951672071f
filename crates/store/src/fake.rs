//! An in-memory backend that fails on command, for tests of the writer
//! (here and in the server).
//!
//! [`FakeBackend`] goes into the writer; the [`FakeControl`] it came with
//! stays with the test, to take the database away and bring it back, to
//! make the next calls fail, to reject one account as bad data, to lose
//! the answer of a commit that did happen (an ambiguous failure), and to
//! look at what was stored.
//!
//! It holds one game's rows, like a backend opened for one game: records,
//! the saved session of each account (written with its record, as the real
//! backends do), and the ledger.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tether_engine::{Record, SessionMark, Tx};

use crate::backend::{Backend, SCHEMA_VERSION};
use crate::StoreError;

/// One call the writer made, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    Migrate,
    Load(String),
    LoadSession(u64),
    /// The accounts of the records in the batch, in order.
    SaveBatch(Vec<String>),
    /// The transaction ids of the batch, in order.
    Commit(Vec<u64>),
    Ping,
}

#[derive(Default)]
struct State {
    down: bool,
    fail_next: u32,
    lose_next_commit_answer: bool,
    rejected: BTreeSet<String>,
    latency: Duration,
    hold: bool,
    /// Stored without their session mark, which lives in `sessions`.
    records: BTreeMap<String, Record>,
    /// The saved session of each account that has one.
    sessions: BTreeMap<String, SessionMark>,
    /// (transaction id, account, entry), in commit order.
    ledger: Vec<(u64, String, Bytes)>,
    calls: Vec<FakeCall>,
}

/// The in-memory database the writer talks to.
pub struct FakeBackend {
    state: Arc<Mutex<State>>,
}

/// The test's side of a [`FakeBackend`]: cheap to clone.
#[derive(Clone)]
pub struct FakeControl {
    state: Arc<Mutex<State>>,
}

impl FakeBackend {
    /// A fake database and its control.
    pub fn new() -> (FakeBackend, FakeControl) {
        let state = Arc::new(Mutex::new(State::default()));
        (
            FakeBackend {
                state: state.clone(),
            },
            FakeControl { state },
        )
    }
}

impl FakeControl {
    /// Another backend on the same fake database, as a second process on
    /// the same database would have (an upgrade in place, a restart).
    pub fn backend(&self) -> FakeBackend {
        FakeBackend {
            state: self.state.clone(),
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Writes a record and sets its account's saved session from its mark,
    /// taking the session id from any other account that held it (as the
    /// real backends do).
    fn write(&mut self, record: &Record) {
        let account = record.account.clone();
        match record.session {
            Some(mark) => {
                self.sessions
                    .retain(|a, m| m.session_id != mark.session_id || *a == account);
                self.sessions.insert(account.clone(), mark);
            }
            None => {
                self.sessions.remove(&account);
            }
        }
        self.records.insert(
            account,
            Record {
                session: None,
                ..record.clone()
            },
        );
    }

    /// The record of `account` as a load returns it: with its saved
    /// session.
    fn stored(&self, account: &str) -> Option<Record> {
        let mut r = self.records.get(account)?.clone();
        r.session = self.sessions.get(account).copied();
        Some(r)
    }
}

impl FakeControl {
    /// Takes the database away (`true`) or brings it back (`false`): while
    /// down, every call fails as [`StoreError::Unavailable`].
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// The next `n` calls fail as [`StoreError::Unavailable`].
    pub fn fail_next(&self, n: u32) {
        lock(&self.state).fail_next = n;
    }

    /// The next transaction commit is applied, but answers
    /// [`StoreError::Unavailable`], as when a connection dies after
    /// `COMMIT` was sent.
    pub fn lose_next_commit_answer(&self) {
        lock(&self.state).lose_next_commit_answer = true;
    }

    /// Any batch holding this account (a save or a transaction) is refused
    /// as [`StoreError::Rejected`], the way a constraint violation would be.
    pub fn reject_account(&self, account: &str) {
        lock(&self.state).rejected.insert(account.to_string());
    }

    /// While held (`true`), every call waits at its start until released:
    /// a database that keeps its connections but has stopped answering.
    pub fn set_hold(&self, hold: bool) {
        lock(&self.state).hold = hold;
    }

    /// Each call sleeps this long first (a slow database).
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state).latency = latency;
    }

    /// Puts a record in the database directly, with its session mark (as
    /// a save would: `None` deletes the account's saved session).
    pub fn insert(&self, record: Record) {
        lock(&self.state).write(&record);
    }

    /// The stored record of that account, with its saved session as
    /// `session` (what a load returns).
    pub fn record(&self, account: &str) -> Option<Record> {
        lock(&self.state).stored(account)
    }

    /// The saved session of that account.
    pub fn session(&self, account: &str) -> Option<SessionMark> {
        lock(&self.state).sessions.get(account).copied()
    }

    /// How many accounts have a saved session.
    pub fn session_count(&self) -> usize {
        lock(&self.state).sessions.len()
    }

    /// How many records are stored.
    pub fn record_count(&self) -> usize {
        lock(&self.state).records.len()
    }

    /// The transaction ids committed, in commit order.
    pub fn ledger(&self) -> Vec<u64> {
        lock(&self.state).ledger.iter().map(|l| l.0).collect()
    }

    /// The ledger rows committed, in commit order: (transaction id,
    /// account, entry).
    pub fn ledger_entries(&self) -> Vec<(u64, String, Bytes)> {
        lock(&self.state).ledger.clone()
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        lock(&self.state).calls.clone()
    }

    /// Forgets the calls made so far.
    pub fn clear_calls(&self) {
        lock(&self.state).calls.clear();
    }
}

impl FakeBackend {
    /// Waits while held, records the call, sleeps the latency, and fails
    /// it if told to.
    fn enter(&self, call: FakeCall) -> Result<MutexGuard<'_, State>, StoreError> {
        while lock(&self.state).hold {
            std::thread::sleep(Duration::from_millis(1));
        }
        let latency = lock(&self.state).latency;
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        let mut s = lock(&self.state);
        s.calls.push(call);
        if s.down {
            return Err(StoreError::Unavailable("fake: database down".into()));
        }
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return Err(StoreError::Unavailable("fake: failing on command".into()));
        }
        Ok(s)
    }
}

impl Backend for FakeBackend {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn game(&self) -> &str {
        "fake"
    }

    fn migrate(&mut self) -> Result<u32, StoreError> {
        drop(self.enter(FakeCall::Migrate)?);
        Ok(SCHEMA_VERSION)
    }

    fn load(&mut self, account: &str) -> Result<Option<Record>, StoreError> {
        let s = self.enter(FakeCall::Load(account.to_string()))?;
        Ok(s.stored(account))
    }

    fn load_session(&mut self, session_id: u64) -> Result<Option<Record>, StoreError> {
        let s = self.enter(FakeCall::LoadSession(session_id))?;
        let account = s
            .sessions
            .iter()
            .find(|(_, m)| m.session_id == session_id)
            .map(|(a, _)| a.clone());
        Ok(account.and_then(|a| s.stored(&a)))
    }

    fn save_batch(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let accounts = records.iter().map(|r| r.account.clone()).collect();
        let mut s = self.enter(FakeCall::SaveBatch(accounts))?;
        if let Some(bad) = records.iter().find(|r| s.rejected.contains(&r.account)) {
            return Err(StoreError::Rejected(format!(
                "fake: {} refused",
                bad.account
            )));
        }
        // One by one in order: the same outcome as the real backends' batch
        // (the last record of an account wins, a later record keeps a shared
        // session id).
        for r in records {
            s.write(r);
        }
        Ok(())
    }

    fn commit_batch(&mut self, txs: &[Tx]) -> Result<usize, StoreError> {
        let ids = txs.iter().map(|t| t.tx_id).collect();
        let mut s = self.enter(FakeCall::Commit(ids))?;
        if let Some(bad) = txs.iter().find(|t| s.rejected.contains(t.account())) {
            return Err(StoreError::Rejected(format!(
                "fake: {} refused",
                bad.account()
            )));
        }
        let mut applied = 0;
        for t in txs {
            if s.ledger.iter().any(|l| l.0 == t.tx_id) {
                continue;
            }
            applied += 1;
            s.ledger
                .push((t.tx_id, t.account().to_string(), t.entry.clone()));
            s.write(&t.record);
        }
        if std::mem::take(&mut s.lose_next_commit_answer) {
            return Err(StoreError::Unavailable(
                "fake: connection lost after COMMIT".into(),
            ));
        }
        Ok(applied)
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        drop(self.enter(FakeCall::Ping)?);
        Ok(())
    }
}
