//! What the engine hands to storage on a game's behalf: versioned records
//! and ledger transactions, both opaque bytes to the engine and the store.

use bytes::Bytes;

/// One account's durable state in one game, as the store keeps it.
///
/// The bytes are the game's own encoding; `version` says which of the
/// game's formats they are in, so a newer build reads what an older one
/// wrote. The store keys records by (game, account) and writes them whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The account the record belongs to: the store's key within its game.
    pub account: String,
    /// The game's format version of `data`.
    pub version: u32,
    pub data: Bytes,
    /// The account's session as of this record, written in the same
    /// database transaction, so the saved state and the last input it
    /// reflects never disagree. `None`: the account has no session (it
    /// logged out), and any saved one is deleted. Games leave it `None`;
    /// the engine fills it in on everything it hands to storage.
    pub session: Option<SessionMark>,
}

impl Record {
    /// A record with no session mark (the engine adds it).
    pub fn new(account: impl Into<String>, version: u32, data: Bytes) -> Record {
        Record {
            account: account.into(),
            version,
            data,
            session: None,
        }
    }
}

/// What storage keeps of a session so that it can be resumed after the
/// process is gone (a crash, a restart, an upgrade): its id, the restart
/// token the client was given in `Welcome`, and the last input the saved
/// record reflects.
///
/// The restart token never changes during a session (unlike the resume
/// token, which turns over at every resume and lives only in memory), so a
/// mark written at any flush still admits the client's resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionMark {
    pub session_id: u64,
    pub restart_token: [u8; 16],
    /// Inputs up to and including this number are in the record.
    pub last_input: u32,
}

/// A durable transaction: the account's record as it is after the
/// transaction, and a ledger entry, committed together in one database
/// transaction. The player is told only after the commit.
///
/// Idempotent: a transaction whose id is in the ledger already changes
/// nothing, so a retry after an ambiguous failure is harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tx {
    /// Unique within one server process and game; the ledger keys it with
    /// the process's run, since ids restart with the process.
    pub tx_id: u64,
    /// The account's whole record after the transaction.
    pub record: Record,
    /// What the transaction was, in the game's encoding (a loot drop, a
    /// match result): kept in the ledger for audits and given back to the
    /// game on commit.
    pub entry: Bytes,
}

impl Tx {
    /// The account the transaction belongs to.
    pub fn account(&self) -> &str {
        &self.record.account
    }
}
