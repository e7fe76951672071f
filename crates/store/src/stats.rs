//! Counters and gauges of the store, for `/metrics` and `/healthz`.
//!
//! Plain atomics, written by the writer thread (and by handles for the
//! queue depths they reserve), read by whoever exports them. Relaxed
//! ordering throughout: each value is a reading, not a synchronization
//! point.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Live store metrics. Shared by the writer and every handle; read it
/// through [`StoreStats::snapshot`].
#[derive(Debug, Default)]
pub struct StoreStats {
    pub(crate) degraded: AtomicBool,
    pub(crate) records_pending: AtomicU64,
    pub(crate) saves_pending: AtomicU64,
    pub(crate) tx_pending: AtomicU64,
    pub(crate) loads_pending: AtomicU64,
    pub(crate) records_written: AtomicU64,
    pub(crate) tx_committed: AtomicU64,
    pub(crate) loads_served: AtomicU64,
    pub(crate) loads_failed: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) batch_micros_total: AtomicU64,
    pub(crate) batch_micros_max: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) flush_micros_last: AtomicU64,
}

/// One reading of [`StoreStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// The database is unreachable; writes are held and retried (gauge).
    pub degraded: bool,
    /// Accounts whose record has changes not yet written, players online
    /// included (gauge).
    pub records_pending: u64,
    /// Of those, records saved at logout or zombie expiry (gauge; logins
    /// are refused at `max_pending_saves`).
    pub saves_pending: u64,
    /// Transactions submitted and not yet committed (gauge; value actions
    /// are refused at `max_pending_tx`).
    pub tx_pending: u64,
    /// Loads submitted and not yet answered (gauge; logins are refused at
    /// `max_pending_loads`).
    pub loads_pending: u64,
    /// Record rows written by saves (counter).
    pub records_written: u64,
    /// Transactions committed (counter).
    pub tx_committed: u64,
    /// Loads answered with a record or "none" (counter).
    pub loads_served: u64,
    /// Loads answered with an error: database away past the load timeout,
    /// or a row that would not read (counter).
    pub loads_failed: u64,
    /// Backend calls that failed as unavailable and will be retried (counter).
    pub failures: u64,
    /// Records or transactions dropped because the database rejected
    /// them as bad data (counter; each one is also logged).
    pub rejected: u64,
    /// Submissions refused with `StoreFull` (counter).
    pub refused: u64,
    /// Write transactions run: record batches and transaction batches
    /// (counter).
    pub batches: u64,
    /// Total time spent in write transactions, microseconds (counter; with
    /// `batches`, the mean).
    pub batch_micros_total: u64,
    /// The longest write transaction so far, microseconds (gauge).
    pub batch_micros_max: u64,
    /// Flush rounds completed: every record due at an interval written
    /// (counter).
    pub flushes: u64,
    /// How long the last flush round took, from the interval to its last
    /// batch, microseconds (gauge; includes time waiting out an outage).
    pub flush_micros_last: u64,
}

impl StoreStats {
    /// The current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            degraded: self.degraded.load(Relaxed),
            records_pending: self.records_pending.load(Relaxed),
            saves_pending: self.saves_pending.load(Relaxed),
            tx_pending: self.tx_pending.load(Relaxed),
            loads_pending: self.loads_pending.load(Relaxed),
            records_written: self.records_written.load(Relaxed),
            tx_committed: self.tx_committed.load(Relaxed),
            loads_served: self.loads_served.load(Relaxed),
            loads_failed: self.loads_failed.load(Relaxed),
            failures: self.failures.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            refused: self.refused.load(Relaxed),
            batches: self.batches.load(Relaxed),
            batch_micros_total: self.batch_micros_total.load(Relaxed),
            batch_micros_max: self.batch_micros_max.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            flush_micros_last: self.flush_micros_last.load(Relaxed),
        }
    }

    pub(crate) fn record_flush(&self, took: Duration) {
        self.flushes.fetch_add(1, Relaxed);
        self.flush_micros_last.store(micros(took), Relaxed);
    }

    pub(crate) fn record_batch(&self, took: Duration) {
        let us = micros(took);
        self.batches.fetch_add(1, Relaxed);
        self.batch_micros_total.fetch_add(us, Relaxed);
        self.batch_micros_max.fetch_max(us, Relaxed);
    }

    /// Reserves one slot of a capped queue depth; `false` (and nothing
    /// reserved) when the gauge is at `cap` already.
    pub(crate) fn reserve(gauge: &AtomicU64, cap: usize) -> bool {
        gauge
            .fetch_update(Relaxed, Relaxed, |n| (n < cap as u64).then_some(n + 1))
            .is_ok()
    }

    pub(crate) fn release(gauge: &AtomicU64, n: usize) {
        gauge.fetch_sub(n as u64, Relaxed);
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}
