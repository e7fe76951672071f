//! The one error type of the store layer, and how backend errors map onto it.

use std::fmt;

/// Why a store operation did not happen.
///
/// The split that matters to the writer is [`StoreError::is_retryable`]: an
/// unavailable database is waited out (everything kept, retried with
/// backoff, health reported degraded); a rejected request is dropped and
/// reported, because sending it again cannot succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The database cannot be reached or cannot take writes right now:
    /// connection refused or lost, timeout, database locked, disk full or
    /// failing. Keep the data and try again later. A write that failed this
    /// way may or may not have been committed (the answer was lost), which is
    /// why a transaction carries an idempotency key.
    Unavailable(String),
    /// The request itself cannot be stored (constraint violation, a value out
    /// of range, a row that does not parse). Retrying will not help: drop it
    /// and tell someone.
    Rejected(String),
    /// The database holds a schema newer than this build knows. Refusing to
    /// run is the only safe answer: an older binary would write rows the
    /// newer schema does not expect. Upgrade the server.
    SchemaTooNew { found: u32, supported: u32 },
    /// The writer has shut down; nothing more is accepted or answered.
    Closed,
    /// In a cluster: the account is served by another server (see
    /// [`crate::Ownership`]). Not a failure of the database.
    Elsewhere(crate::Redirect),
    /// In a cluster: nobody may hold the account for a moment (the server
    /// that held it stopped answering and its lease has not ended yet); ask
    /// again after `retry_after_ms`. Not a failure of the database.
    Wait { reason: String, retry_after_ms: u32 },
}

impl StoreError {
    /// Whether the same request may succeed later (the database was away),
    /// as opposed to never (the request is bad, or the store is closed).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(m) => write!(f, "storage unavailable: {m}"),
            StoreError::Rejected(m) => write!(f, "storage rejected the request: {m}"),
            StoreError::SchemaTooNew { found, supported } => write!(
                f,
                "database schema version {found} is newer than this build supports \
                 ({supported}); upgrade the server"
            ),
            StoreError::Closed => write!(f, "the store writer has shut down"),
            StoreError::Wait {
                reason,
                retry_after_ms,
            } => write!(f, "{reason} (retry in {retry_after_ms} ms)"),
            StoreError::Elsewhere(r) => {
                write!(
                    f,
                    "the account is served by node {} ({})",
                    r.node, r.address
                )
            }
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let retryable = match &e {
            rusqlite::Error::SqliteFailure(f, _) => matches!(
                f.code,
                // Another process holds the file, or the disk is failing or
                // full, or the file went away: an outage, not a bad row.
                C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::SystemIoFailure
                    | C::DiskFull
                    | C::CannotOpen
                    | C::FileLockingProtocolFailed
                    | C::OutOfMemory
                    | C::ReadOnly
                    | C::PermissionDenied
                    | C::SchemaChanged
                    | C::OperationInterrupted
            ),
            _ => false,
        };
        if retryable {
            StoreError::Unavailable(format!("sqlite: {e}"))
        } else {
            StoreError::Rejected(format!("sqlite: {e}"))
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        if pg_retryable(&e) {
            StoreError::Unavailable(format!("postgres: {e}"))
        } else {
            StoreError::Rejected(format!("postgres: {e}"))
        }
    }
}

/// Whether a PostgreSQL error is an outage rather than a bad request.
///
/// Anything that is not a server-side error report (I/O, closed connection,
/// timeout, TLS) is an outage. Of the server's reports, the SQLSTATE classes
/// that mean "not now" are: 08 (connection exception), 53 (insufficient
/// resources: disk full, out of memory, too many connections), 57P01-57P03
/// (admin shutdown, crash shutdown, cannot connect now), 40001 / 40P01
/// (serialization failure, deadlock: the transaction may simply be re-run)
/// and 25006 (read-only transaction: a fail-over in progress).
pub(crate) fn pg_retryable(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    let Some(db) = e.as_db_error() else {
        return true;
    };
    let code = db.code().code();
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "25006"
        )
}
