//! What the writer sends back to a shard.

use tether_world::{CharacterRecord, LootTx};

use crate::StoreError;

/// Whether the database is taking writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The last call to the database succeeded.
    Healthy,
    /// The database is unreachable: writes are held in memory and retried
    /// with backoff. Nothing acknowledged is lost; loads of characters not
    /// held in memory wait, then fail.
    Degraded,
}

/// A completion, delivered on the events channel of the shard that asked.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreEvent {
    /// The answer to [`crate::StoreHandle::load`]: the character (`None`:
    /// the account has none yet, create one), or why there is no answer
    /// ([`StoreError::Unavailable`]: the database stayed away past the load
    /// timeout; refuse the login with `STORAGE_UNAVAILABLE`).
    Loaded {
        account: String,
        /// The caller's own tag, given back unchanged (a connection id, say).
        tag: u64,
        result: Result<Option<CharacterRecord>, StoreError>,
    },
    /// The transaction is durable: now tell the player (`LootGranted`).
    LootCommitted(LootTx),
    /// The database refused the transaction as bad data; it will never be
    /// committed. The player must not be told it was granted. (Logged and
    /// counted too: this is a bug to look into, not an outage.)
    LootRejected { tx: LootTx, error: StoreError },
    /// The database went away or came back. Sent to every shard.
    Health(Health),
}
