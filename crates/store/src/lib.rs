//! Tether's durable state: accounts, characters (position, hp, level,
//! experience), gold and inventory, and a ledger of loot, in SQLite
//! (embedded, the default) or PostgreSQL, written from a thread of its own so
//! that a world thread never waits on a disk or a database.
//!
//! The crate is an I/O driver around a pure queue, in the house style:
//! `queue`'s `WriteBehind` decides what to write when and what to do when
//! the database fails, driven by calls carrying `now`; [`writer`] is the thin
//! thread and channels around it; the backends are blocking and only ever
//! called on that thread.
//!
//! # Layout
//!
//! - [`backend`]: the [`Backend`] trait (migrate, load, save a batch,
//!   commit loot idempotently, ping) and what the backends share: the
//!   inventory column format, [`SCHEMA_VERSION`].
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
//!  World::take_dirty ─ mark_dirty_all ─┐
//!  logout / expiry ─── save_now ───────┤ per-shard dirty map (latest wins)
//!                                      │      │ drained before each request
//!  login ───────────── load ──────────┐│      v
//!  World outbox.loot ─ commit_loot ──┐││  WriteBehind: 1. loot (batched, in order) ──> commit_loot_batch
//!                      (capped)      └┴┴─>            2. loads ─────────────────────> load
//!                                                     3. due characters ───────────> save_batch
//!                                                     failure: keep all, back off,
//!                                                     report Degraded, retry
//!  StoreEvents::try_recv <── events (one channel per shard) + wake callback
//!    Loaded          -> finish the login (or refuse it)
//!    LootCommitted   -> World::loot_committed: only now LootGranted goes out
//!    Health          -> /healthz, metrics
//! ```
//!
//! # Policies
//!
//! **Write-behind for what changes every tick.** Position and hp (and
//! everything else in a character record) are handed over as records; the
//! writer keeps the latest per character and writes all of them every
//! [`WriterConfig::flush_interval`] (5 s), in transactions of
//! [`WriterConfig::max_batch`]. Logout, zombie expiry and character creation
//! use [`StoreHandle::save_now`], written promptly. A crash loses at most one
//! flush interval of movement and hp.
//!
//! **Durable before acknowledged for value.** A loot transaction is
//! committed (ledger row and the character's new gold and inventory totals,
//! one database transaction) before [`StoreEvent::LootCommitted`] comes back;
//! only then is the player told. The world never waits: it learns of the
//! commit from the event. Loot goes before everything else, oldest first.
//! The ledger is keyed by (this process's run id, the world's transaction
//! id): a retry after an ambiguous failure (committed, answer lost) changes
//! nothing, and transaction ids, which restart with the process, never
//! collide with an earlier run's. A character record queued before a loot
//! transaction takes that transaction's totals, so a write-behind save can
//! never take loot back.
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
//! [`Health::Healthy`] and flushes everything: loot first in the order it was
//! made, then loads, then characters. Nothing acknowledged is lost:
//! acknowledged loot is by definition committed, and everything else is
//! held. Loads of characters held in memory (logged out during the outage)
//! are answered from memory at once; other loads wait up to
//! [`WriterConfig::load_timeout`] (3 s) and are then answered
//! [`StoreError::Unavailable`].
//!
//! **When the queue is full.** Every queue has a cap, and handles refuse
//! at the cap immediately with [`SubmitError::StoreFull`]:
//!
//! | queue | cap (default) | refused | server's answer |
//! |---|---|---|---|
//! | loot waiting for commit | `max_pending_loot` (4,096) | `commit_loot` | value actions refused with a `CommandError`; check [`StoreHandle::accepts_value`] first |
//! | loads waiting | `max_pending_loads` (1,024) | `load` | login closed with `CLOSE_CODE_STORAGE_UNAVAILABLE` |
//! | logged-out characters unsaved | `max_pending_saves` (10,000) | `load` | login closed with `CLOSE_CODE_STORAGE_UNAVAILABLE` |
//! | records of online characters | one per character (coalesced) | never | movement is always served |
//! | events back to a shard | one per load and loot submitted, plus health changes | never | (bounded by the caps above) |
//!
//! Memory is therefore bounded by the characters online plus
//! `max_pending_saves` records plus the loot and load caps, however long the
//! outage. A request the database rejects as bad data is dropped, logged and
//! counted ([`StatsSnapshot::rejected`]); rejected loot comes back as
//! [`StoreEvent::LootRejected`] and is never granted.
//!
//! **Shutdown.** [`StoreWriter::shutdown`] refuses new requests, writes
//! everything (retrying through an outage) until done or the deadline, and
//! returns a [`ShutdownReport`] of what could not be written. Records handed
//! over after it has begun are not written: stop the shards (saving their
//! characters) first.
//!
//! # Schema
//!
//! Versioned migrations, applied when a backend is opened (and re-checked on
//! reconnect), each recorded in `schema_version`; a database newer than the
//! build is refused ([`StoreError::SchemaTooNew`]). Version 1:
//!
//! - `accounts(name, created_at)`
//! - `characters(name, account, x, y, hp, level, xp, gold, inventory,
//!   updated_at)`: `x`/`y` NULL for a character not yet placed; `inventory`
//!   as `item:count` pairs ([`encode_inventory`]). Today an account has one
//!   character, named after it.
//! - `store_runs(id, started_at)`: one row per server process that commits
//!   loot.
//! - `loot_ledger(run_id, tx_id, character, gold, items, total_gold,
//!   committed_at)`, primary key `(run_id, tx_id)`: every loot transaction
//!   ever committed (an audit trail; it is not pruned).
//!
//! # How the server wires this in
//!
//! 1. At start-up: `let backend = tether_store::open(&spec)?` where `spec`
//!    is `--store` / the config file's `store` (a `postgres://` URL, or
//!    `sqlite:PATH`; default `sqlite:` + [`default_sqlite_path`] of the data
//!    dir). An error here (database unreachable, schema too new) is printed
//!    and the process exits non-zero. Then
//!    `StoreWriter::start(backend, WriterConfig { flush_interval, .. })`.
//! 2. Per shard: `writer.client(Some(Box::new(move || shard_waker.wake())))`
//!    gives the shard its [`StoreHandle`] and [`StoreEvents`]. The shard
//!    loop drains `events.try_iter()` each iteration.
//! 3. Login: if `!handle.accepts_logins()` close with
//!    `CLOSE_CODE_STORAGE_UNAVAILABLE`; else `handle.load(&account, conn)`
//!    and park the connection as "loading". On [`StoreEvent::Loaded`]:
//!    `Ok(Some(r))` joins with `r`; `Ok(None)` creates a character, joins,
//!    and `save_now`s it; `Err(_)` closes with
//!    `CLOSE_CODE_STORAGE_UNAVAILABLE`. (The directory claim is held while
//!    loading; release it on refusal.)
//! 4. Each tick: `world.take_dirty(&mut buf); handle.mark_dirty_all(buf.drain(..))`.
//! 5. Logout and zombie expiry: `handle.save_now(record)`.
//! 6. Loot: for each `LootTx` in the outbox, `handle.commit_loot(tx)`;
//!    on [`StoreEvent::LootCommitted`] call `world.loot_committed(&tx, ..)`
//!    (that sends `LootGranted`). Before applying an input that can create
//!    value (an attack that may kill), refuse it with a `CommandError` when
//!    `!handle.accepts_value()`; if `commit_loot` still returns `StoreFull`,
//!    keep the transaction and submit it again on a later tick.
//! 7. `/healthz` reports degraded while `handle.health() == Degraded` (or
//!    on the `Health` events); `/metrics` exports
//!    [`StoreWriter::stats`]`().snapshot()`.
//! 8. Shutdown: stop the shards (each `save_now`s its characters), then
//!    `writer.shutdown(deadline)` and log the [`ShutdownReport`].
//!
//! # Tests
//!
//! `cargo test -p tether-store` runs the queue against the fake backend
//! (unit tests in `queue`), the threaded writer (`tests/writer.rs`) and the
//! backend suite on SQLite in a temporary directory (`tests/backends.rs`).
//! The same backend suite runs on PostgreSQL when `TETHER_TEST_POSTGRES`
//! holds a connection URL (each run in a schema of its own, dropped
//! afterwards); without it those tests print that they were skipped.
#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod error;
pub mod event;
pub mod fake;
mod pg;
mod queue;
pub mod sqlite;
pub mod stats;
pub mod writer;

use std::path::{Path, PathBuf};

pub use backend::{decode_inventory, encode_inventory, Backend, LootOutcome, SCHEMA_VERSION};
pub use config::WriterConfig;
pub use error::StoreError;
pub use event::{Health, StoreEvent};
pub use pg::PostgresBackend;
pub use sqlite::SqliteBackend;
pub use stats::{StatsSnapshot, StoreStats};
pub use writer::{ShutdownReport, StoreEvents, StoreHandle, StoreWriter, SubmitError, Wake};

/// The SQLite file under a data directory: `DATA_DIR/tether.db`.
pub fn default_sqlite_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tether.db")
}

/// Opens the backend a store spec names, and applies migrations:
///
/// - `postgres://…` or `postgresql://…`: [`PostgresBackend`];
/// - `sqlite:PATH` (or `sqlite://PATH`): [`SqliteBackend`] on that file
///   (its directory must exist).
///
/// An error means the server cannot start: the database is unreachable,
/// the spec is malformed, or the schema is newer than this build.
pub fn open(spec: &str) -> Result<Box<dyn Backend>, StoreError> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return Ok(Box::new(PostgresBackend::connect(spec)?));
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
        return Ok(Box::new(SqliteBackend::open(path)?));
    }
    Err(StoreError::Rejected(format!(
        "unknown store {spec:?}: expected postgres://… or sqlite:PATH"
    )))
}
