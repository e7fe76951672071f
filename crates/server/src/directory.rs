//! Which shard holds which account.
//!
//! Consulted on login, on whispers to players of other shards and when a
//! session ends — never per game frame — so a mutex is fine here. It makes an
//! account live on one shard at a time: a second login for it is routed to
//! the shard that already has it, which takes the session over (or refuses).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

pub struct Directory {
    accounts: Mutex<HashMap<String, u16>>,
    /// Sessions per shard, for placing new accounts on the emptiest one.
    population: Vec<AtomicUsize>,
}

impl Directory {
    pub fn new(shards: usize) -> Directory {
        Directory {
            accounts: Mutex::new(HashMap::new()),
            population: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u16>> {
        // A panic elsewhere while holding the lock leaves the map consistent
        // (every operation is a single insert or remove), so keep going.
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shard a login for `account` goes to: where it already lives, or
    /// the least populated shard (which is recorded as its home).
    pub fn route_login(&self, account: &str) -> u16 {
        let mut map = self.lock();
        if let Some(&shard) = map.get(account) {
            return shard;
        }
        let shard = (0..self.population.len())
            .min_by_key(|&i| self.population[i].load(Ordering::Relaxed))
            .unwrap_or(0) as u16;
        map.insert(account.to_string(), shard);
        shard
    }

    /// A shard is about to create a session for `account`: true if the
    /// account is unclaimed or already this shard's.
    pub fn claim(&self, account: &str, shard: u16) -> bool {
        let mut map = self.lock();
        match map.get(account) {
            Some(&owner) if owner != shard => false,
            _ => {
                map.insert(account.to_string(), shard);
                true
            }
        }
    }

    /// The account's session on `shard` ended.
    pub fn release(&self, account: &str, shard: u16) {
        let mut map = self.lock();
        if map.get(account) == Some(&shard) {
            map.remove(account);
        }
    }

    /// Where a player is, by character name.
    pub fn locate(&self, account: &str) -> Option<u16> {
        self.lock().get(account).copied()
    }

    /// Sessions on every shard.
    pub fn total(&self) -> u64 {
        self.population
            .iter()
            .map(|p| p.load(Ordering::Relaxed) as u64)
            .sum()
    }

    pub fn add_population(&self, shard: u16, delta: isize) {
        let p = &self.population[shard as usize];
        if delta >= 0 {
            p.fetch_add(delta as usize, Ordering::Relaxed);
        } else {
            p.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_stay_on_their_shard() {
        let d = Directory::new(2);
        let a = d.route_login("alice");
        d.add_population(a, 1);
        let b = d.route_login("bob");
        assert_ne!(a, b, "the emptier shard gets the new account");
        assert_eq!(d.route_login("alice"), a);
        assert!(!d.claim("alice", b));
        d.release("alice", a);
        assert_eq!(d.locate("alice"), None);
    }
}
