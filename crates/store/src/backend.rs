//! The storage backend trait, and what the backends share: how an inventory
//! is written into one column, how game numbers fit SQL integers, and the
//! schema version this build knows.

use tether_proto::pb;
use tether_world::{CharacterRecord, LootTx};

use crate::StoreError;

/// The schema version this build creates and understands. Each backend keeps
/// its own list of migrations, numbered 1..=`SCHEMA_VERSION`.
pub const SCHEMA_VERSION: u32 = 1;

/// Whether a loot transaction changed the database or had been applied
/// already (a retry after an answer that was lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LootOutcome {
    Applied,
    AlreadyApplied,
}

/// A database that holds Tether's durable state.
///
/// Blocking, and used only from the writer thread ([`crate::StoreWriter`]),
/// which owns it: nothing here is ever called from a world thread. Every
/// write method is one database transaction, all or nothing.
///
/// Errors say whether to retry ([`StoreError::is_retryable`]). After a
/// retryable error the backend reconnects by itself on the next call.
pub trait Backend: Send {
    /// A short name for logs and metrics (`"sqlite"`, `"postgres"`).
    fn kind(&self) -> &'static str;

    /// Brings the schema to [`SCHEMA_VERSION`], applying each missing
    /// migration in its own transaction and recording it in
    /// `schema_version`. Idempotent. Returns the version now in place.
    fn migrate(&mut self) -> Result<u32, StoreError>;

    /// The character of `account`, or `None` for an account never saved.
    fn load(&mut self, account: &str) -> Result<Option<CharacterRecord>, StoreError>;

    /// Writes these characters (and their accounts) in one transaction:
    /// position, hp, level, experience, gold and inventory, as given.
    fn save_batch(&mut self, records: &[CharacterRecord]) -> Result<(), StoreError>;

    /// Commits one loot transaction: the character's gold and inventory
    /// become the totals in `tx`, and a ledger row keyed by the transaction
    /// id is written, in one database transaction. A transaction whose
    /// ledger row exists already changes nothing, so a retry after an
    /// ambiguous failure (committed, but the answer was lost) is harmless.
    fn commit_loot(&mut self, tx: &LootTx) -> Result<LootOutcome, StoreError> {
        let applied = self.commit_loot_batch(std::slice::from_ref(tx))?;
        Ok(if applied == 1 {
            LootOutcome::Applied
        } else {
            LootOutcome::AlreadyApplied
        })
    }

    /// Commits several loot transactions, in order, in one database
    /// transaction (one disk flush for all of them). Same idempotency as
    /// [`Backend::commit_loot`]. Returns how many were newly applied.
    fn commit_loot_batch(&mut self, txs: &[LootTx]) -> Result<usize, StoreError>;

    /// A cheap round trip to see whether the database is back.
    fn ping(&mut self) -> Result<(), StoreError>;
}

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn migrate(&mut self) -> Result<u32, StoreError> {
        (**self).migrate()
    }
    fn load(&mut self, account: &str) -> Result<Option<CharacterRecord>, StoreError> {
        (**self).load(account)
    }
    fn save_batch(&mut self, records: &[CharacterRecord]) -> Result<(), StoreError> {
        (**self).save_batch(records)
    }
    fn commit_loot(&mut self, tx: &LootTx) -> Result<LootOutcome, StoreError> {
        (**self).commit_loot(tx)
    }
    fn commit_loot_batch(&mut self, txs: &[LootTx]) -> Result<usize, StoreError> {
        (**self).commit_loot_batch(txs)
    }
    fn ping(&mut self) -> Result<(), StoreError> {
        (**self).ping()
    }
}

/// Writes an inventory into its column: `item_id:count` pairs separated by
/// single spaces, in slot order (`"3:1 7:12"`; empty for none).
///
/// An inventory is bounded (64 stacks) and always read and written whole,
/// so it is one column of the character row rather than a table: a save is
/// one row write, and the text reads plainly in `sqlite3` or `psql`.
pub fn encode_inventory(items: &[pb::ItemStack]) -> String {
    let mut s = String::with_capacity(items.len() * 6);
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&it.item_id.to_string());
        s.push(':');
        s.push_str(&it.count.to_string());
    }
    s
}

/// Reads an inventory column written by [`encode_inventory`].
pub fn decode_inventory(s: &str) -> Result<Vec<pb::ItemStack>, StoreError> {
    s.split_ascii_whitespace()
        .map(|pair| {
            let bad =
                || StoreError::Rejected(format!("inventory entry {pair:?} is not item:count"));
            let (id, count) = pair.split_once(':').ok_or_else(bad)?;
            Ok(pb::ItemStack {
                item_id: id.parse().map_err(|_| bad())?,
                count: count.parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

/// A game counter (gold, experience) as an SQL BIGINT.
pub(crate) fn to_sql_int(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Rejected(format!("{what} {v} exceeds BIGINT")))
}

/// An SQL BIGINT back into a game counter.
pub(crate) fn from_sql_int(what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Rejected(format!("{what} {v} is negative")))
}

/// A loot transaction id as stored: the same 64 bits, read as signed (the
/// shard index sits in the top byte, so ids of shards 128..=255 are stored
/// negative; they read back exactly).
pub(crate) fn tx_key(tx_id: u64) -> i64 {
    tx_id as i64
}

/// Deduplicates a batch by character name, the last record of a name
/// winning, so a batch never touches one row twice.
pub(crate) fn last_per_name(records: &[CharacterRecord]) -> Vec<&CharacterRecord> {
    let mut seen = std::collections::HashSet::with_capacity(records.len());
    let mut out: Vec<&CharacterRecord> = records
        .iter()
        .rev()
        .filter(|r| seen.insert(r.name.as_str()))
        .collect();
    out.reverse();
    out
}

/// Milliseconds since the Unix epoch, for `created_at` / `updated_at`
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

    #[test]
    fn inventory_round_trips() {
        let items = vec![
            pb::ItemStack {
                item_id: 3,
                count: 1,
            },
            pb::ItemStack {
                item_id: 4_000_000_000,
                count: 12,
            },
        ];
        let s = encode_inventory(&items);
        assert_eq!(s, "3:1 4000000000:12");
        assert_eq!(decode_inventory(&s).unwrap(), items);
        assert_eq!(decode_inventory("").unwrap(), vec![]);
        assert!(matches!(
            decode_inventory("3:x"),
            Err(StoreError::Rejected(_))
        ));
        assert!(decode_inventory("3").is_err());
    }

    #[test]
    fn tx_ids_of_high_shards_read_back() {
        let id = (200u64 << 56) | 7;
        assert_eq!(tx_key(id) as u64, id);
    }

    #[test]
    fn batch_dedup_keeps_the_last_of_a_name() {
        let mut a = CharacterRecord::new("a");
        a.gold = 1;
        let b = CharacterRecord::new("b");
        let mut a2 = a.clone();
        a2.gold = 2;
        let recs = [a, b, a2];
        let out = last_per_name(&recs);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].name, "b");
        assert_eq!(out[1].gold, 2);
    }
}
