//! Where characters live between sessions.
//!
//! Shards load a character at login, save it when its session ends, and
//! commit loot before the player is told about it (durable before
//! acknowledged). [`MemoryStore`] keeps everything for the life of the process.

use std::collections::HashMap;
use std::sync::Mutex;

use tether_world::{CharacterRecord, LootTx};

/// Persistence as the shards see it. Called at login, logout and on loot,
/// never per game frame.
pub trait Store: Send + Sync {
    /// The saved character of `account`, if it has one.
    fn load(&self, account: &str) -> Option<CharacterRecord>;
    /// Saves a character's current state.
    fn save(&self, record: &CharacterRecord);
    /// Makes a loot transaction durable. Returns once committed.
    fn commit_loot(&self, tx: &LootTx);
}

/// Characters kept in memory for the life of the process.
#[derive(Default)]
pub struct MemoryStore {
    characters: Mutex<HashMap<String, CharacterRecord>>,
}

impl MemoryStore {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, CharacterRecord>> {
        self.characters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn load(&self, account: &str) -> Option<CharacterRecord> {
        self.map().get(account).cloned()
    }

    fn save(&self, record: &CharacterRecord) {
        self.map().insert(record.name.clone(), record.clone());
    }

    fn commit_loot(&self, tx: &LootTx) {
        if let Some(c) = self.map().get_mut(&tx.character) {
            c.gold = tx.total_gold;
            c.inventory = tx.inventory.clone();
        }
    }
}
