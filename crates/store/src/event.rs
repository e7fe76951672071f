//! What the writer sends back to a shard.

use tether_engine::{Record, Tx};

use crate::StoreError;

/// Whether the database is taking writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The last call to the database succeeded.
    Healthy,
    /// The database is unreachable: writes are held in memory and retried
    /// with backoff. Nothing acknowledged is lost; loads of records not
    /// held in memory wait, then fail.
    Degraded,
}

/// A completion, delivered on the events channel of the shard that asked.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreEvent {
    /// The answer to [`crate::StoreHandle::load`]: the account's record
    /// (`None`: the account has none yet, the game creates one), or why
    /// there is no answer ([`StoreError::Unavailable`]: the database stayed
    /// away past the load timeout; refuse the login with
    /// `STORAGE_UNAVAILABLE`).
    Loaded {
        account: String,
        /// The caller's own tag, given back unchanged (a connection id, say).
        tag: u64,
        result: Result<Option<Record>, StoreError>,
    },
    /// The answer to [`crate::StoreHandle::load_session`]: the record of
    /// the account whose saved session has this id, its `session` the saved
    /// mark (restart token, last input the record reflects); `None` when no
    /// account has that session (it ended, or was never saved: refuse the
    /// resume); or why there is no answer, as for `Loaded`.
    SessionLoaded {
        session_id: u64,
        /// The caller's own tag, given back unchanged.
        tag: u64,
        result: Result<Option<Record>, StoreError>,
    },
    /// The transaction is durable: now tell the player (the MMO sends
    /// `LootGranted`).
    Committed(Tx),
    /// The database refused the transaction as bad data; it will never be
    /// committed. The player must not be told it happened. (Logged and
    /// counted too: this is a bug to look into, not an outage.)
    Rejected { tx: Tx, error: StoreError },
    /// The database went away or came back. Sent to every shard.
    Health(Health),
    /// The answer to [`crate::StoreHandle::hand_over`]: the account's
    /// records are written and the cluster gave it to the other server
    /// (`ok`), or could not (it stays this server's).
    HandedOver { account: String, tag: u64, ok: bool },
}
