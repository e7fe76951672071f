//! Tether's durable state, for any game: one versioned record of opaque
//! bytes per account, the account's session as of that record (so that a
//! session survives a restart or a crash), and a ledger of transactions, in
//! SQLite (embedded, the default) or PostgreSQL, written from a thread of
//! its own so that a world thread never waits on a disk or a database.
//!
//! The store does not know what a game keeps. A game hands it
//! [`tether_engine::Record`]s (account, format version, bytes in the game's
//! own encoding) and [`tether_engine::Tx`]s (an id, the account's whole
//! record after the transaction, and a ledger entry in the game's encoding)
//! and gets them back unchanged. What the bytes mean, and how a newer build
//! reads an older `version`, is the game's business; the store's is when
//! they are written and that nothing acknowledged is lost. A record's
//! `session` ([`tether_engine::SessionMark`], filled in by the engine) is
//! the store's business too: it is saved with the record, in the same
//! database transaction, and a record can be loaded by its session's id.
//!
//! A store is opened for one game ([`open`]`(spec, game)`): every row is
//! keyed by the game's name first, records by (game, account) and the
//! ledger by (game, run, transaction id), so several games can share one
//! database and never see each other's accounts. The name is given to the
//! backend once, at open, rather than with each call: a writer serves one
//! game, and the writer and queue stay free of it. The MMO's name is
//! `"mmo"` ([`LEGACY_GAME`]), which is also where migration 2 files the rows
//! of a schema-1 database.
//!
//! The crate is an I/O driver around a pure queue, in the house style:
//! `queue`'s `WriteBehind` decides what to write when and what to do when
//! the database fails, driven by calls carrying `now`; [`writer`] is the thin
//! thread and channels around it; the backends are blocking and only ever
//! called on that thread.
//!
//! # Layout
//!
//! - [`backend`]: the [`Backend`] trait (migrate, load by account or by
//!   session id, save a batch, commit transactions idempotently, ping),
//!   [`TxOutcome`], [`SCHEMA_VERSION`].
//! - [`sqlite`]: [`SqliteBackend`], one file in WAL mode, `synchronous=FULL`.
//! - `pg`: [`PostgresBackend`], the synchronous `postgres` client,
//!   reconnecting after connection loss.
//! - `queue` (private): the write-behind queue: coalescing, flush cadence,
//!   order of work, backoff, health, caps.
//! - [`writer`]: [`StoreWriter`] (the thread), [`StoreHandle`] (what a
//!   shard holds), [`StoreEvents`] (its answers), [`SubmitError`],
//!   [`ShutdownReport`].
//! - [`event`]: [`StoreEvent`] and [`Health`].
//! - [`stats`]: [`StoreStats`], atomics for `/metrics` and `/healthz`.
//! - [`config`]: [`WriterConfig`], every cap and interval with its reason.
//! - [`error`]: [`StoreError`], retryable or not.
//! - [`fake`]: [`fake::FakeBackend`], an in-memory backend that fails on
//!   command, for tests of the writer and of the server.
//!
//! # Data flow
//!
//! ```text
//!  shard thread                       writer thread ("tether-store")                database
//!  ------------                       ------------------------------                --------
//!  changed records ─── mark_dirty_all ─┐
//!  logout / expiry ─── save_now ───────┤ per-shard dirty map (latest per account)
//!                                      │      │ drained before each request
//!  login ───────────── load ──────────┐│      v
//!  resume of a session                ││
//!  not held ────────── load_session ─┐││
//!  game transactions ─ commit ──────┐│││  WriteBehind: 1. transactions (batched, ──> commit_batch
//!                      (capped)     └┴┴┴─>               in order)
//!                                                     2. loads ─────────────────────> load /
//!                                                                                     load_session
//!                                                     3. due records ──────────────> save_batch
//!                                                     (records carry their session
//!                                                      mark, written with them)
//!                                                     failure: keep all, back off,
//!                                                     report Degraded, retry
//!  StoreEvents::try_recv <── events (one channel per shard) + wake callback
//!    Loaded          -> finish the login (or refuse it)
//!    SessionLoaded   -> finish the resume (or refuse it)
//!    Committed       -> only now tell the player (the MMO's LootGranted)
//!    Rejected        -> the transaction never happened; never tell
//!    Health          -> /healthz, metrics
//! ```
//!
//! # Policies
//!
//! **Write-behind for what changes every tick.** A game hands over an
//! account's whole record whenever it changes (an MMO character's position
//! and hp, every tick); the writer keeps the latest per account and writes
//! all of them every [`WriterConfig::flush_interval`] (5 s), in database
//! transactions of [`WriterConfig::max_batch`]. Logout, zombie expiry and
//! account creation use [`StoreHandle::save_now`], written promptly. A
//! crash loses at most one flush interval of such changes.
//!
//! **Durable before acknowledged for value.** A transaction is committed
//! (its ledger row and the account's record as `tx.record`, one database
//! transaction) before [`StoreEvent::Committed`] comes back; only then is
//! the player told. The world never waits: it learns of the commit from the
//! event. Transactions go before everything else, oldest first. The ledger
//! is keyed by (game, this process's run id, the game's transaction id): a
//! retry after an ambiguous failure (committed, answer lost) changes
//! nothing, and transaction ids, which restart with the process, never
//! collide with an earlier run's.
//!
//! **A transaction is never taken back by an older record.** A record of
//! the same account handed over before a transaction (with
//! [`StoreHandle::mark_dirty`] or [`StoreHandle::save_now`]) and not yet
//! written when the transaction arrives is replaced by the transaction's
//! record: written after the commit, the older record would undo it. A
//! record handed over after the transaction already includes it and is
//! written after it. One sequence counter orders every request of every
//! shard, so "before" holds across shards too (see `queue`).
//!
//! **Sessions outlive the process.** Every record the engine hands over
//! carries the account's session mark (session id, restart token, the last
//! input the record reflects), or `None` once the session ended (logout,
//! expiry). Each write of a record sets the account's saved session from
//! it in the same database transaction, so after a crash the saved session
//! and the saved record agree: the mark's last input is the last input the
//! record reflects, which is what lets the engine resume the session
//! exactly once. After a restart, a resume for a session the new
//! process does not hold asks [`StoreHandle::load_session`]; the answer
//! ([`StoreEvent::SessionLoaded`]) is the account's record with its saved
//! mark, and reflects the records handed over before the call even when not
//! written yet (a session ended in memory is not resumed from the mark the
//! database still holds). A session id names one session: a mark saved for
//! another account with the same id takes the id over.
//!
//! **What survives a crash or power loss.** SQLite runs in WAL mode with
//! `synchronous=FULL`: a commit is fsynced before it returns, so every
//! acknowledged transaction survives a power cut (`NORMAL` would not; see
//! [`sqlite`]). PostgreSQL commits are durable under the server's own
//! `synchronous_commit` (on by default).
//!
//! **Storage outage.** When a backend call fails as unavailable
//! ([`StoreError::is_retryable`]), the writer keeps everything, reports
//! [`Health::Degraded`] (an event to every shard, and
//! [`StatsSnapshot::degraded`]), and retries with exponential backoff (100 ms
//! doubling to 5 s). When the database answers again it reports
//! [`Health::Healthy`] and flushes everything: transactions first in the
//! order they were made, then loads, then records. Nothing acknowledged is
//! lost: an acknowledged transaction is by definition committed, and
//! everything else is held. Loads of records held in memory (logged out
//! during the outage) are answered from memory at once, and so are loads by
//! session id whose session a record held in memory carries; other loads
//! wait up to [`WriterConfig::load_timeout`] (3 s) and are then answered
//! [`StoreError::Unavailable`].
//!
//! **When the queue is full.** Every queue has a cap, and handles refuse
//! at the cap immediately with [`SubmitError::StoreFull`]:
//!
//! | queue | cap (default) | refused | server's answer |
//! |---|---|---|---|
//! | transactions waiting for commit | `max_pending_tx` (4,096) | `commit` | value actions refused with a `CommandError`; check [`StoreHandle::accepts_value`] first |
//! | loads waiting (by account or session id) | `max_pending_loads` (1,024) | `load`, `load_session` | login or resume closed with `CLOSE_CODE_STORAGE_UNAVAILABLE` |
//! | logged-out records unsaved | `max_pending_saves` (10,000) | `load`, `load_session` | login or resume closed with `CLOSE_CODE_STORAGE_UNAVAILABLE` |
//! | records of players online | one per account (coalesced) | never | movement is always served |
//! | events back to a shard | one per load and transaction submitted, plus health changes | never | (bounded by the caps above) |
//!
//! Memory is therefore bounded by the players online plus
//! `max_pending_saves` records plus the transaction and load caps, however
//! long the outage, each record and transaction as large as the game makes
//! it (the game bounds its own records). A request the database rejects as
//! bad data is dropped, logged and counted ([`StatsSnapshot::rejected`]); a
//! rejected transaction comes back as [`StoreEvent::Rejected`] and must
//! never be reported to the player as done.
//!
//! **Shutdown.** [`StoreWriter::shutdown`] refuses new requests, writes
//! everything (retrying through an outage) until done or the deadline, and
//! returns a [`ShutdownReport`] of what could not be written. Records handed
//! over after it has begun are not written: stop the shards (saving their
//! players' records) first.
//!
//! # Schema
//!
//! Versioned migrations, applied when a backend is opened (and re-checked on
//! reconnect), each recorded in `schema_version`; a database newer than the
//! build is refused ([`StoreError::SchemaTooNew`]). Version 3 (current):
//!
//! - `records(game, account, version, data, updated_at)`, primary key
//!   `(game, account)`: one row per account of each game, `data` a BLOB
//!   (SQLite) or BYTEA (PostgreSQL), written whole.
//! - `sessions(game, account, session_id, restart_token, last_input,
//!   saved_at)`, primary key `(game, account)` (one saved session per
//!   account of each game), a unique index `sessions_by_id` on `(game,
//!   session_id)`, and a foreign key to the account's `records` row:
//!   written (or deleted, for a record without a mark) with every record
//!   write, in the same transaction. `restart_token` is 16 bytes (a
//!   `CHECK`); `session_id` is the engine's 64 bits read as signed, like a
//!   transaction id.
//! - `tx_ledger(game, run_id, tx_id, account, entry, committed_at)`, primary
//!   key `(game, run_id, tx_id)`: every transaction ever committed, with the
//!   game's entry bytes (an audit trail; it is not pruned).
//! - `store_runs(id, started_at)`: one row per server process that commits
//!   transactions (shared by every game in the database).
//!
//! An empty account is refused by a `CHECK` on `records`, `tx_ledger` and
//! `sessions` (a [`StoreError::Rejected`]).
//!
//! Migration 3 creates `sessions` and its index (and nothing else: version
//! 2's rows stay as they are, with no saved session).
//!
//! Version 1 held the MMO's typed tables: `accounts`, `characters(name,
//! account, x, y, hp, level, xp, gold, inventory, updated_at)` and
//! `loot_ledger(run_id, tx_id, character, gold, items, total_gold,
//! committed_at)`. Migration 2 carries them over and drops them:
//!
//! - each account's character becomes a record of game `"mmo"`, version 0,
//!   whose data is the UTF-8 text of its columns joined by single TABs
//!   (character 9): `name, x, y, hp, level, xp, gold, inventory`; `x` and
//!   `y` empty when NULL, numbers in the database's own text form (SQLite
//!   writes a REAL 100 as `100.0`, PostgreSQL as `100`), the inventory
//!   column as it was (`item:count` pairs separated by spaces). The MMO
//!   reads version 0 and writes its newer versions itself.
//! - each loot ledger row becomes a ledger row of game `"mmo"` (same run
//!   and transaction id, the character as the account) whose entry is the
//!   text `gold TAB items TAB total_gold`.
//!
//! # How the server wires this in
//!
//! 1. At start-up: `let backend = tether_store::open(&spec, game)?` where
//!    `spec` is `--store` / the config file's `store` (a `postgres://` URL,
//!    or `sqlite:PATH`; default `sqlite:` + [`default_sqlite_path`] of the
//!    data dir) and `game` the game's name (`"mmo"`). An error here
//!    (database unreachable, schema too new) is printed and the process
//!    exits non-zero. Then
//!    `StoreWriter::start(backend, WriterConfig { flush_interval, .. })`.
//! 2. Per shard: `writer.client(Some(Box::new(move || shard_waker.wake())))`
//!    gives the shard its [`StoreHandle`] and [`StoreEvents`]. The shard
//!    loop drains `events.try_iter()` each iteration.
//! 3. Login: if `!handle.accepts_logins()` close with
//!    `CLOSE_CODE_STORAGE_UNAVAILABLE`; else `handle.load(&account, conn)`
//!    and park the connection as "loading". On [`StoreEvent::Loaded`]:
//!    `Ok(Some(r))` joins with `r` (decoded by the game, by `r.version`);
//!    `Ok(None)` creates the account's state, joins, and `save_now`s it;
//!    `Err(_)` closes with `CLOSE_CODE_STORAGE_UNAVAILABLE`. (The directory
//!    claim is held while loading; release it on refusal.)
//!    A resume of a session the process does not hold:
//!    `handle.load_session(session_id, tag)`; on
//!    [`StoreEvent::SessionLoaded`], `Ok(Some(r))` is the saved session:
//!    `r.session` holds the restart token to check the client's against
//!    and the last input `r` reflects; `Ok(None)` means there is no such
//!    session (refuse the resume: the client logs in); `Err(_)` closes as a
//!    failed load does.
//! 4. Each tick: encode the records that changed and
//!    `handle.mark_dirty_all(records)`.
//! 5. Logout and zombie expiry: `handle.save_now(record)`.
//! 6. Transactions: for each one the game made, `handle.commit(tx)`; on
//!    [`StoreEvent::Committed`] tell the player (the MMO calls
//!    `World::loot_committed`, which sends `LootGranted`). Before applying
//!    an input that can create value (an attack that may kill), refuse it
//!    with a `CommandError` when `!handle.accepts_value()`; if `commit`
//!    still returns `StoreFull`, keep the transaction and submit it again
//!    on a later tick.
//! 7. `/healthz` reports degraded while `handle.health() == Degraded` (or
//!    on the `Health` events); `/metrics` exports
//!    [`StoreWriter::stats`]`().snapshot()`.
//! 8. Shutdown: stop the shards (each `save_now`s its players' records),
//!    then `writer.shutdown(deadline)` and log the [`ShutdownReport`].
//!
//! # Tests
//!
//! `cargo test -p tether-store` runs the queue against the fake backend
//! (unit tests in `queue`), the threaded writer (`tests/writer.rs`) and the
//! backend suite on SQLite in a temporary directory (`tests/backends.rs`),
//! migrations from version-1 and version-2 databases and sessions carried
//! from one writer to the next included. The same backend suite runs on
//! PostgreSQL when `TETHER_TEST_POSTGRES` holds a connection URL (each run
//! in a schema of its own, dropped afterwards); without it those tests
//! print that they were skipped.
#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod error;
pub mod event;
pub mod fake;
pub mod ownership;
mod pg;
mod queue;
pub mod sqlite;
pub mod stats;
pub mod writer;

use std::path::{Path, PathBuf};

pub use backend::{Backend, TxOutcome, LEGACY_GAME, SCHEMA_VERSION};
pub use config::WriterConfig;
pub use error::StoreError;
pub use event::{Health, StoreEvent};
pub use ownership::{Ownership, Redirect};
pub use pg::PostgresBackend;
pub use sqlite::SqliteBackend;
pub use stats::{StatsSnapshot, StoreStats};
pub use writer::{ShutdownReport, StoreEvents, StoreHandle, StoreWriter, SubmitError, Wake};

/// The SQLite file under a data directory: `DATA_DIR/tether.db`.
pub fn default_sqlite_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tether.db")
}

/// Opens the backend a store spec names for `game`, and applies
/// migrations:
///
/// - `postgres://…` or `postgresql://…`: [`PostgresBackend`];
/// - `sqlite:PATH` (or `sqlite://PATH`): [`SqliteBackend`] on that file
///   (its directory must exist).
///
/// Every row the backend reads or writes is keyed by `game` (not empty;
/// the MMO is `"mmo"`), so games sharing a database stay apart.
///
/// An error means the server cannot start: the database is unreachable,
/// the spec is malformed, the game name is empty, or the schema is newer
/// than this build.
pub fn open(spec: &str, game: &str) -> Result<Box<dyn Backend>, StoreError> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return Ok(Box::new(PostgresBackend::connect(spec, game)?));
    }
    if let Some(path) = spec
        .strip_prefix("sqlite://")
        .or_else(|| spec.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            return Err(StoreError::Rejected(
                "store spec `sqlite:` needs a path".into(),
            ));
        }
        return Ok(Box::new(SqliteBackend::open(path, game)?));
    }
    Err(StoreError::Rejected(format!(
        "unknown store {spec:?}: expected postgres://… or sqlite:PATH"
    )))
}
