//! The writer's settings: cadence, batch sizes, queue caps and backoff.

use std::time::Duration;

/// How the writer batches, retries, and where it draws the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// How often records with unsaved changes (an MMO character's position
    /// and hp, say) are written. A crash loses at most this much of them;
    /// transactions are never lost (each is committed before it is
    /// acknowledged). Default 5 s: at 10,000 players that is about 2,000
    /// row writes a second, a small load for either backend, and five
    /// seconds of walking is a loss no player notices after a crash.
    pub flush_interval: Duration,
    /// Records per write transaction. Large enough that a full flush of
    /// 10,000 players is ten transactions (ten fsyncs), small enough that
    /// one transaction stays well under a second, so loads and transactions
    /// waiting behind it are not held long. Default 1,000.
    pub max_batch: usize,
    /// Transactions committed together in one database transaction (one
    /// fsync). Default 64: transactions that piled up during an outage
    /// drain in a few database transactions, and a batch rejected as bad
    /// data is re-run one by one cheaply.
    pub max_tx_batch: usize,
    /// Transactions waiting for their commit, across every shard. Past
    /// this, [`crate::StoreHandle::commit`] refuses with `StoreFull`.
    /// Default 4,096: minutes of loot at the MMO's standard load. A
    /// transaction holds the account's whole record, so the queue's memory
    /// is this times the game's largest record (the MMO's, with 64
    /// inventory stacks at most, keeps it near 4 MiB).
    pub max_pending_tx: usize,
    /// Loads waiting for an answer. Past this, logins are refused
    /// (`StoreFull`). Default 1,024: a login storm of that size is served in
    /// well under a second by either backend.
    pub max_pending_loads: usize,
    /// Records saved at logout or zombie expiry and not yet written.
    /// These are the records that pile up during an outage (those of
    /// players online are bounded by the world); past this, logins are
    /// refused (`StoreFull`), so that memory stays bounded by this plus the
    /// players online. Default 10,000.
    pub max_pending_saves: usize,
    /// How long a load waits for an unreachable database before it is
    /// answered [`crate::StoreError::Unavailable`] (the login is then
    /// refused with a clear code instead of hanging). Default 3 s, under a
    /// client's handshake patience.
    pub load_timeout: Duration,
    /// First retry delay after the database fails; doubles on each failure
    /// up to `backoff_max`. Default 100 ms.
    pub backoff_initial: Duration,
    /// Longest retry delay. Default 5 s: a database that returns is noticed
    /// within five seconds, and a dead one costs one attempt per five
    /// seconds.
    pub backoff_max: Duration,
    /// One database call under way longer than this reports the store
    /// degraded until it returns: a database that keeps its connections open
    /// but has stopped answering (frozen, or a stalled link that still
    /// acknowledges packets) is an outage too, though no error ever comes
    /// back. Default 5 s: many times what a batch write takes, and under
    /// the PostgreSQL backend's 10 s TCP timeout, so a frozen database and
    /// a dead link are reported alike.
    pub stall_after: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            flush_interval: Duration::from_secs(5),
            max_batch: 1_000,
            max_tx_batch: 64,
            max_pending_tx: 4_096,
            max_pending_loads: 1_024,
            max_pending_saves: 10_000,
            load_timeout: Duration::from_secs(3),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            stall_after: Duration::from_secs(5),
        }
    }
}
