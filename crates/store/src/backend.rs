//! The storage backend trait, and what the backends share: how a
//! transaction id, a session id and a record version fit SQL integers, what
//! a batch of records does to the saved sessions, and the schema version
//! this build knows.

use tether_engine::{Record, SessionMark, Tx};

use crate::StoreError;

/// The schema version this build creates and understands. Each backend keeps
/// its own list of migrations, numbered 1..=`SCHEMA_VERSION`.
///
/// Version 2 replaced the MMO's typed tables with game-agnostic ones
/// (`records`, `tx_ledger`) and carried the old rows over; version 3 added
/// `sessions`, the saved session of each account. See the crate docs'
/// "Schema" section.
pub const SCHEMA_VERSION: u32 = 3;

/// The game a database's rows belong to when they came from schema 1, which
/// knew only the MMO: migration 2 files every old row under this name.
pub const LEGACY_GAME: &str = "mmo";

/// Whether a transaction changed the database or had been applied already
/// (a retry after an answer that was lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOutcome {
    Applied,
    AlreadyApplied,
}

/// A database that holds one game's durable state: a versioned byte record
/// per account, and a ledger of transactions.
///
/// A backend is opened for one game ([`crate::open`]) and keys every row
/// by that game's name, so several games can share one database without
/// seeing each other's accounts or transactions.
///
/// Blocking, and used only from the writer thread ([`crate::StoreWriter`]),
/// which owns it: nothing here is ever called from a world thread. Every
/// write method is one database transaction, all or nothing.
///
/// Every record written (by [`Backend::save_batch`] or inside a transaction)
/// also sets its account's saved session, in the same database
/// transaction: `record.session` `Some(mark)` saves the mark, `None` deletes
/// the saved session. So after a crash the saved session and the saved
/// record always agree: the mark's `last_input` is the last input the
/// record reflects. A session id belongs to one account: saving a mark
/// whose id another account's saved session holds deletes that one (its
/// session can no longer be resumed; the id now means the newer session).
///
/// Errors say whether to retry ([`StoreError::is_retryable`]). After a
/// retryable error the backend reconnects by itself on the next call.
pub trait Backend: Send {
    /// A short name for logs and metrics (`"sqlite"`, `"postgres"`).
    fn kind(&self) -> &'static str;

    /// The game this backend was opened for: the first part of every key.
    fn game(&self) -> &str;

    /// Brings the schema to [`SCHEMA_VERSION`], applying each missing
    /// migration and recording it in `schema_version`. Idempotent. Returns
    /// the version now in place.
    fn migrate(&mut self) -> Result<u32, StoreError>;

    /// The record of `account` in this game, or `None` for an account never
    /// saved. Its `session` is the account's saved session, if it has one.
    fn load(&mut self, account: &str) -> Result<Option<Record>, StoreError>;

    /// The record of the account whose saved session has this id, with
    /// that session as its `session`; `None` when no saved session has it
    /// (the session ended, was never saved, or the id is unknown).
    fn load_session(&mut self, session_id: u64) -> Result<Option<Record>, StoreError>;

    /// Writes these records whole (version, bytes and session mark, as
    /// given) in one transaction. Within a batch, the last record of an
    /// account wins; if records of two accounts carry the same session id,
    /// the later one keeps it and the earlier account's saved session is
    /// deleted.
    fn save_batch(&mut self, records: &[Record]) -> Result<(), StoreError>;

    /// Commits one transaction: a ledger row keyed by the transaction id
    /// is written and the account's record (with its session mark) becomes
    /// `tx.record`, in one database transaction. A transaction whose ledger row exists already
    /// changes nothing, so a retry after an ambiguous failure (committed,
    /// but the answer was lost) is harmless.
    fn commit(&mut self, tx: &Tx) -> Result<TxOutcome, StoreError> {
        let applied = self.commit_batch(std::slice::from_ref(tx))?;
        Ok(if applied == 1 {
            TxOutcome::Applied
        } else {
            TxOutcome::AlreadyApplied
        })
    }

    /// Commits several transactions, in order, in one database transaction
    /// (one disk flush for all of them). Same idempotency as
    /// [`Backend::commit`]. Returns how many were newly applied.
    fn commit_batch(&mut self, txs: &[Tx]) -> Result<usize, StoreError>;

    /// A cheap round trip to see whether the database is back.
    fn ping(&mut self) -> Result<(), StoreError>;
}

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn game(&self) -> &str {
        (**self).game()
    }
    fn migrate(&mut self) -> Result<u32, StoreError> {
        (**self).migrate()
    }
    fn load(&mut self, account: &str) -> Result<Option<Record>, StoreError> {
        (**self).load(account)
    }
    fn load_session(&mut self, session_id: u64) -> Result<Option<Record>, StoreError> {
        (**self).load_session(session_id)
    }
    fn save_batch(&mut self, records: &[Record]) -> Result<(), StoreError> {
        (**self).save_batch(records)
    }
    fn commit(&mut self, tx: &Tx) -> Result<TxOutcome, StoreError> {
        (**self).commit(tx)
    }
    fn commit_batch(&mut self, txs: &[Tx]) -> Result<usize, StoreError> {
        (**self).commit_batch(txs)
    }
    fn ping(&mut self) -> Result<(), StoreError> {
        (**self).ping()
    }
}

/// Checks a game name before a backend is opened for it: not empty. Any
/// other text will do (it is only ever a bound parameter).
pub(crate) fn check_game(game: &str) -> Result<(), StoreError> {
    if game.is_empty() {
        return Err(StoreError::Rejected("the game name is empty".into()));
    }
    Ok(())
}

/// A transaction id as stored: the same 64 bits, read as signed (the
/// shard index sits in the top byte, so ids of shards 128..=255 are stored
/// negative; they read back exactly).
pub(crate) fn tx_key(tx_id: u64) -> i64 {
    tx_id as i64
}

/// A session id as stored: the same 64 bits, read as signed (like a
/// transaction id, the shard sits in the top bits).
pub(crate) fn session_key(session_id: u64) -> i64 {
    session_id as i64
}

/// A stored record version back into the game's `u32`.
pub(crate) fn version_from_sql(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Rejected(format!("record version {v} out of range")))
}

/// A `sessions` row's columns (session id, restart token, last input) back
/// into a mark. A row that does not fit is bad data, not an outage.
pub(crate) fn mark_from_sql(
    session_id: i64,
    restart_token: &[u8],
    last_input: i64,
) -> Result<SessionMark, StoreError> {
    let restart_token = <[u8; 16]>::try_from(restart_token).map_err(|_| {
        StoreError::Rejected(format!(
            "session {} has a restart token of {} bytes, not 16",
            session_id as u64,
            restart_token.len()
        ))
    })?;
    let last_input = u32::try_from(last_input).map_err(|_| {
        StoreError::Rejected(format!(
            "session {} has last input {last_input}, out of range",
            session_id as u64
        ))
    })?;
    Ok(SessionMark {
        session_id: session_id as u64,
        restart_token,
        last_input,
    })
}

/// What a batch of records does to the `sessions` table.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionWrites<'a> {
    /// Accounts whose saved session becomes this mark, by account.
    pub saves: Vec<(&'a str, SessionMark)>,
    /// Accounts whose saved session is deleted, by account.
    pub ends: Vec<&'a str>,
}

/// The session writes of a batch already reduced to one record per account
/// ([`last_per_account`], in batch order). Every session id appears at most
/// once among the saves, so the batch can go in one statement under the
/// unique index: when two accounts carry the same id, the later record
/// keeps it and the earlier account's session is ended instead. Both lists
/// come out sorted by account (one lock order for every writer).
pub(crate) fn session_writes<'a>(batch: &[&'a Record]) -> SessionWrites<'a> {
    let mut taken = std::collections::HashSet::with_capacity(batch.len());
    let mut w = SessionWrites::default();
    for r in batch.iter().rev() {
        match r.session {
            Some(mark) if taken.insert(mark.session_id) => {
                w.saves.push((r.account.as_str(), mark));
            }
            _ => w.ends.push(r.account.as_str()),
        }
    }
    w.saves.sort_by(|a, b| a.0.cmp(b.0));
    w.ends.sort_unstable();
    w
}

/// Deduplicates a batch by account, the last record of an account winning,
/// so a batch never touches one row twice.
pub(crate) fn last_per_account<'a, I>(records: I) -> Vec<&'a Record>
where
    I: IntoIterator<Item = &'a Record>,
    I::IntoIter: DoubleEndedIterator + ExactSizeIterator,
{
    let records = records.into_iter();
    let mut seen = std::collections::HashSet::with_capacity(records.len());
    let mut out: Vec<&Record> = records
        .rev()
        .filter(|r| seen.insert(r.account.as_str()))
        .collect();
    out.reverse();
    out
}

/// Milliseconds since the Unix epoch, for `updated_at` / `committed_at`
/// columns (informational only; nothing orders by them).
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(account: &str, data: &'static [u8]) -> Record {
        Record::new(account, 1, Bytes::from_static(data))
    }

    fn in_session(account: &str, session_id: u64) -> Record {
        Record {
            session: Some(SessionMark {
                session_id,
                restart_token: [session_id as u8; 16],
                last_input: 9,
            }),
            ..rec(account, b"")
        }
    }

    #[test]
    fn tx_ids_of_high_shards_read_back() {
        let id = (200u64 << 56) | 7;
        assert!(tx_key(id) < 0);
        assert_eq!(tx_key(id) as u64, id);
    }

    #[test]
    fn versions_read_back_and_bad_ones_are_rejected() {
        assert_eq!(version_from_sql(u32::MAX as i64), Ok(u32::MAX));
        assert!(matches!(version_from_sql(-1), Err(StoreError::Rejected(_))));
        assert!(version_from_sql(1 << 32).is_err());
    }

    #[test]
    fn batch_dedup_keeps_the_last_of_an_account() {
        let recs = [rec("a", b"1"), rec("b", b"x"), rec("a", b"2")];
        let out = last_per_account(&recs);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].account, "b");
        assert_eq!(
            (out[1].account.as_str(), &out[1].data[..]),
            ("a", &b"2"[..])
        );
    }

    #[test]
    fn a_session_id_goes_to_the_later_record_and_the_earlier_session_ends() {
        let recs = [
            in_session("cat", 5),
            in_session("ann", 1),
            rec("bob", b"logged out"),
            in_session("dan", 5),
            in_session("eve", 2),
        ];
        let batch: Vec<&Record> = recs.iter().collect();
        let w = session_writes(&batch);
        let saves: Vec<(&str, u64)> = w.saves.iter().map(|(a, m)| (*a, m.session_id)).collect();
        assert_eq!(saves, vec![("ann", 1), ("dan", 5), ("eve", 2)]);
        assert_eq!(w.ends, vec!["bob", "cat"]);
        assert_eq!(w.saves[0].1, recs[1].session.unwrap(), "the mark whole");
    }

    #[test]
    fn session_rows_read_back_and_bad_ones_are_rejected() {
        let id = (200u64 << 56) | 3;
        let m = mark_from_sql(session_key(id), &[7; 16], u32::MAX as i64).unwrap();
        assert_eq!(
            m,
            SessionMark {
                session_id: id,
                restart_token: [7; 16],
                last_input: u32::MAX
            }
        );
        assert!(matches!(
            mark_from_sql(1, &[7; 15], 0),
            Err(StoreError::Rejected(_))
        ));
        assert!(mark_from_sql(1, &[7; 16], -1).is_err());
        assert!(mark_from_sql(1, &[7; 16], 1 << 32).is_err());
    }

    #[test]
    fn an_empty_game_name_is_refused() {
        assert!(check_game("").is_err());
        assert!(check_game("mmo").is_ok());
    }
}
