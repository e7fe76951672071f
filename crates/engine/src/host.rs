//! What the engine asks of the process around it.
//!
//! Every method returns at once: storage calls only queue work for a
//! writer thread, the directory is a short map operation, the bus is a
//! bounded queue. The server implements [`Host`] over its store writer,
//! account directory, shard rings and I/O rings; tests implement it in
//! memory, which is what lets the whole engine run under a virtual clock.

use bytes::Bytes;
use tether_session::ResumeToken;

use crate::game::Undeliverable;
use crate::record::{Record, Tx};

/// Storage could not take the request now (queue full, or closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageBusy;

/// What travels between shards (and, in a cluster, between servers).
#[derive(Debug)]
pub enum BusMsg<R> {
    /// A counted frame for every player of the receiving shard.
    Broadcast(Bytes),
    /// A message for the game on the receiving shard.
    Game { from_shard: u16, msg: R },
    /// A message for the game from another server of the cluster, as
    /// [`crate::Game::encode_remote`] wrote it; the game hears it with
    /// `from_shard` [`crate::FROM_OTHER_NODE`].
    Node(Bytes),
    /// A message this shard sent to another server could not be delivered
    /// there: handed back to the game ([`crate::Game::undeliverable`]).
    Bounced { msg: Bytes, why: Undeliverable },
}

/// The engine's way out: storage, the account directory, other shards and
/// the random source for resume tokens.
pub trait Host<R> {
    /// Writes `t` on its connection, after everything handed over before
    /// it. Never refused: frames go out as the engine makes them, so a tick
    /// that writes to every player holds no copy of its output. A host that
    /// cannot keep up with a connection cuts it after the engine call
    /// returns ([`crate::Engine::closed`]) and may drop what it is given for
    /// that connection meanwhile; every counted frame stays in the session's
    /// replay buffer for its resume.
    fn transmit(&mut self, t: crate::Transmit);

    /// A fresh 128-bit resume token from a cryptographically secure source.
    fn resume_token(&mut self) -> ResumeToken;

    /// Asks storage for the record of `account`; the answer comes back
    /// through [`crate::Engine::loaded`] with the same `tag`.
    fn load(&mut self, account: &str, tag: u64) -> Result<(), StorageBusy>;
    /// Asks storage for the record whose saved session is `session_id`
    /// (a resume after this process, or an earlier one, lost the session
    /// from memory); the answer comes back through
    /// [`crate::Engine::session_loaded`] with the same `tag`. The record's
    /// `session` holds the saved mark. Answers reflect every save handed
    /// over before the call.
    fn load_session(&mut self, session_id: u64, tag: u64) -> Result<(), StorageBusy>;
    /// Writes a record at the next flush, coalesced with later ones of the
    /// same account. Never refused.
    fn save_dirty(&mut self, records: &mut Vec<Record>);
    /// Writes a record promptly (logout, new player). Never refused.
    fn save_now(&mut self, record: Record);
    /// Queues a durable transaction; gives it back when storage is full.
    // The transaction comes back by value when storage is full: boxing it
    // would allocate for every transaction to spare a move on a rare path.
    #[allow(clippy::result_large_err)]
    fn commit(&mut self, tx: Tx) -> Result<(), Tx>;
    /// Whether a login's load would be taken now.
    fn accepts_logins(&self) -> bool;
    /// Whether a transaction would be taken now.
    fn accepts_value(&self) -> bool;

    /// Claims `account` for this shard: false when another shard holds it.
    fn claim(&mut self, account: &str) -> bool;
    /// This shard's session of `account` ended.
    fn release(&mut self, account: &str);
    /// This shard's session of `account` ended because it moves to the
    /// cluster's server `node`: once its last record is durable, the
    /// account is to be that server's. `true`: under way, and the answer
    /// comes back through [`crate::Engine::handed_over`] with `tag`;
    /// `false` (the default, outside a cluster): released now.
    fn hand_over(&mut self, account: &str, node: &str, tag: u64) -> bool {
        let _ = (node, tag);
        self.release(account);
        false
    }
    /// The shard holding `account`'s session, if any.
    fn locate(&self, account: &str) -> Option<u16>;
    /// This shard's population changed by `delta` (for placing new logins).
    fn population(&mut self, delta: isize);

    /// How many shards there are (this one included).
    fn shard_count(&self) -> u16;
    /// Hands a message to another shard; gives it back when that shard's
    /// bus is full.
    fn send_bus(&mut self, shard: u16, msg: BusMsg<R>) -> Result<(), BusMsg<R>>;

    /// In a cluster: hands a message for the game (encoded by
    /// [`crate::Game::encode_remote`]) to whichever other server holds
    /// `account`'s session. If it is found nowhere, it comes back later as
    /// [`BusMsg::Bounced`]. Outside a cluster (the default): no other
    /// server has it.
    fn send_other_node(&mut self, account: &str, msg: Bytes) -> Result<(), Undeliverable> {
        let _ = (account, msg);
        Err(Undeliverable::NoSuchAccount)
    }
    /// In a cluster: a counted frame for every player on every other
    /// server, best effort. Outside a cluster (the default): nothing.
    fn broadcast_other_nodes(&mut self, frame: &Bytes) {
        let _ = frame;
    }
}
