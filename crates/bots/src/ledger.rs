//! The bots' ledger of durable confirmations, and its check against the
//! server.
//!
//! `LootGranted` is the server's promise that loot is committed to storage
//! (docs/PROTOCOL.md, section 11.4). With `--ledger FILE` every bot appends
//! each one it receives to FILE as one JSON line:
//!
//! ```text
//! {"character":"bot7","tx_id":16777301,"gold":3,"total_gold":41,"items":[{"item_id":1,"count":1}]}
//! ```
//!
//! Each line goes to the kernel in one `write` on an `O_APPEND` file before
//! the bot reads its next frame, so the ledger holds every confirmation the
//! bots saw even when the bots or the server are killed mid-run.
//!
//! `--verify-ledger FILE` reads the ledger back, logs every character in it
//! in (dev auth), reads the `SelfState` that starts the snapshot, and checks
//! that the character holds at least what the ledger promised:
//!
//! - gold: at least the largest `total_gold` confirmed, and at least the sum
//!   of the `gold` amounts (nothing in the game spends gold, so both are
//!   lower bounds);
//! - each item: at least the sum of the confirmed `count`s (`items` lists
//!   only what was actually added, and nothing in the game removes items).
//!
//! It prints one JSON line ([`Verdict`]) on stdout. A character that cannot
//! be logged in within [`VERIFY_LOGIN_FOR`] counts as missing: nothing
//! proves its loot is there.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tether_client::{Client, ClientConfig, Event, GameEvent, Login, ReconnectPolicy, Transport};
use tether_proto::pb;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Characters checked at once: enough to check thousands in seconds, few
/// enough not to look like a login flood to the server's guard.
const VERIFY_CONCURRENCY: usize = 32;

/// How long one character may take to log in and show its `SelfState`
/// (covers a server that refuses logins with a retry hint while its storage
/// comes back).
pub const VERIFY_LOGIN_FOR: Duration = Duration::from_secs(60);

/// After reading the character, how long to wait for the logout's `Close`.
const VERIFY_LOGOUT_FOR: Duration = Duration::from_secs(3);

/// Misses listed in full in the verdict; the rest are only counted.
const MAX_MISSES_LISTED: usize = 20;

/// One confirmation, as a ledger line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub character: String,
    pub tx_id: u64,
    /// Gold this transaction added.
    pub gold: u64,
    /// The character's gold after this transaction.
    pub total_gold: u64,
    /// Items this transaction added.
    #[serde(default)]
    pub items: Vec<Stack>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stack {
    pub item_id: u32,
    pub count: u32,
}

impl Entry {
    pub fn new(character: &str, loot: &pb::LootGranted) -> Entry {
        Entry {
            character: character.to_string(),
            tx_id: loot.tx_id,
            gold: loot.gold,
            total_gold: loot.total_gold,
            items: loot
                .items
                .iter()
                .map(|s| Stack {
                    item_id: s.item_id,
                    count: s.count,
                })
                .collect(),
        }
    }
}

/// The open ledger file, shared by every bot of a run.
pub struct Ledger {
    path: PathBuf,
    file: Mutex<File>,
}

impl Ledger {
    /// Opens `path` for appending (created if missing): a ledger may span
    /// several runs against the same server data.
    pub fn open(path: &Path) -> anyhow::Result<Ledger> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the ledger {}", path.display()))?;
        Ok(Ledger {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one confirmation. The line reaches the kernel before this
    /// returns (one unbuffered `write`), so it survives this process being
    /// killed right after.
    pub fn record(&self, character: &str, loot: &pb::LootGranted) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&Entry::new(character, loot))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(&line)
    }
}

/// The character a login is for (a ticket's name is its first field).
pub fn character_of(login: &Login) -> String {
    match login {
        Login::Dev(name) => name.clone(),
        Login::Ticket(t) => t.split('.').next().unwrap_or_default().to_string(),
    }
}

/// What the ledger promises one character.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Promised {
    /// Confirmations (distinct transactions) for this character.
    pub confirmations: u64,
    /// Gold the character must hold at least.
    pub gold: u64,
    /// Per item id, the count the character must hold at least.
    pub items: BTreeMap<u32, u64>,
}

/// The ledger, read back and summed per character.
#[derive(Debug, Default)]
pub struct Totals {
    pub characters: BTreeMap<String, Promised>,
    /// Lines read (duplicates included).
    pub lines: u64,
    /// The same confirmation seen twice (not counted again).
    pub duplicates: u64,
    /// A last line cut short (the writer was killed mid-line): ignored.
    pub torn_tail: bool,
}

/// Sums a ledger. A line that is not a confirmation is an error, except a
/// last line without its newline, which is a write cut short and ignored.
pub fn read_totals(path: &Path) -> anyhow::Result<Totals> {
    let file =
        File::open(path).with_context(|| format!("cannot open the ledger {}", path.display()))?;
    totals_from(BufReader::new(file)).with_context(|| format!("ledger {}", path.display()))
}

fn totals_from(mut r: impl BufRead) -> anyhow::Result<Totals> {
    let mut t = Totals::default();
    // Per character: the sum of gold amounts and the largest total.
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    // total_gold grows with every transaction of a character (a kill pays
    // at least 1 gold), so (character, tx_id, total_gold) names one
    // transaction even when a restarted server numbers its transactions
    // from the start again.
    let mut seen: HashSet<(String, u64, u64)> = HashSet::new();
    let mut buf = String::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        if r.read_line(&mut buf)? == 0 {
            break;
        }
        line_no += 1;
        let complete = buf.ends_with('\n');
        let text = buf.trim();
        if text.is_empty() {
            continue;
        }
        let e: Entry = match serde_json::from_str(text) {
            Ok(e) => e,
            Err(_) if !complete => {
                t.torn_tail = true;
                break;
            }
            Err(err) => anyhow::bail!("line {line_no} is not a confirmation: {err}"),
        };
        t.lines += 1;
        if !seen.insert((e.character.clone(), e.tx_id, e.total_gold)) {
            t.duplicates += 1;
            continue;
        }
        let p = t.characters.entry(e.character.clone()).or_default();
        p.confirmations += 1;
        for s in &e.items {
            *p.items.entry(s.item_id).or_default() += u64::from(s.count);
        }
        let g = sums.entry(e.character).or_default();
        g.0 = g.0.saturating_add(e.gold);
        g.1 = g.1.max(e.total_gold);
    }
    for (name, (sum, max_total)) in sums {
        if let Some(p) = t.characters.get_mut(&name) {
            p.gold = sum.max(max_total);
        }
    }
    Ok(t)
}

/// What the server showed for one character.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub gold: u64,
    pub items: BTreeMap<u32, u64>,
}

impl Held {
    pub fn from_self_state(s: &pb::SelfState) -> Held {
        let mut items = BTreeMap::new();
        // One item may fill several stacks.
        for st in &s.inventory {
            *items.entry(st.item_id).or_default() += u64::from(st.count);
        }
        Held {
            gold: s.gold,
            items,
        }
    }
}

/// One character short of its ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Miss {
    pub character: String,
    /// Why: `short` (holds less than promised) or what stopped the login.
    pub reason: String,
    pub want_gold: u64,
    /// `None` when the character could not be read.
    pub have_gold: Option<u64>,
    /// Items held short: (item id, promised, held).
    pub items_short: Vec<(u32, u64, u64)>,
}

/// Compares one character; `None` when it holds at least the promise.
pub fn compare(character: &str, want: &Promised, have: &Held) -> Option<Miss> {
    let items_short: Vec<(u32, u64, u64)> = want
        .items
        .iter()
        .filter_map(|(&id, &n)| {
            let h = have.items.get(&id).copied().unwrap_or(0);
            (h < n).then_some((id, n, h))
        })
        .collect();
    if have.gold >= want.gold && items_short.is_empty() {
        return None;
    }
    Some(Miss {
        character: character.to_string(),
        reason: "short".into(),
        want_gold: want.gold,
        have_gold: Some(have.gold),
        items_short,
    })
}

/// The one JSON line `--verify-ledger` prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    pub ledger: String,
    /// Distinct confirmations in the ledger.
    pub confirmations: u64,
    pub duplicates: u64,
    pub torn_tail: bool,
    /// Characters of the ledger looked at (every one of them).
    pub checked: u64,
    /// Characters holding less than the ledger says, or that could not be
    /// read.
    pub missing: u64,
    /// Of `missing`, those that could not be logged in at all.
    pub unreadable: u64,
    /// The first misses, in full.
    pub misses: Vec<Miss>,
}

impl Verdict {
    /// 0 when nothing is missing, 4 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.missing == 0 {
            0
        } else {
            4
        }
    }

    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("the verdict is plain data")
    }
}

/// `--verify-ledger`: checks every character of the ledger at `addr`.
pub async fn verify(
    addr: std::net::SocketAddr,
    transport: Transport,
    path: &Path,
    quiet: bool,
) -> anyhow::Result<Verdict> {
    let totals = read_totals(path)?;
    let mut verdict = Verdict {
        ledger: path.display().to_string(),
        confirmations: totals.characters.values().map(|p| p.confirmations).sum(),
        duplicates: totals.duplicates,
        torn_tail: totals.torn_tail,
        ..Verdict::default()
    };
    if !quiet {
        eprintln!(
            "tether-bots: verifying {} confirmations for {} characters against {addr}",
            verdict.confirmations,
            totals.characters.len()
        );
    }
    let mut pending = totals.characters.into_iter();
    let mut set: JoinSet<(String, Promised, Result<Held, String>)> = JoinSet::new();
    let mut misses = Vec::new();
    loop {
        while set.len() < VERIFY_CONCURRENCY {
            let Some((name, want)) = pending.next() else {
                break;
            };
            let transport = transport.clone();
            set.spawn(async move {
                let held = read_character(addr, &transport, &name).await;
                (name, want, held)
            });
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        let (name, want, held) = joined.context("a verification task failed")?;
        verdict.checked += 1;
        let miss = match held {
            Ok(have) => compare(&name, &want, &have),
            Err(why) => {
                verdict.unreadable += 1;
                Some(Miss {
                    character: name,
                    reason: why,
                    want_gold: want.gold,
                    have_gold: None,
                    items_short: Vec::new(),
                })
            }
        };
        if let Some(m) = miss {
            verdict.missing += 1;
            if !quiet {
                eprintln!("tether-bots: MISSING: {m:?}");
            }
            if misses.len() < MAX_MISSES_LISTED {
                misses.push(m);
            }
        }
    }
    misses.sort_by(|a, b| a.character.cmp(&b.character));
    verdict.misses = misses;
    Ok(verdict)
}

/// Logs `name` in, reads its `SelfState`, logs out.
async fn read_character(
    addr: std::net::SocketAddr,
    transport: &Transport,
    name: &str,
) -> Result<Held, String> {
    let deadline = Instant::now() + VERIFY_LOGIN_FOR;
    let mut cfg = ClientConfig::new(addr, Login::Dev(name.to_string()));
    cfg.transport = transport.clone();
    cfg.client_name = concat!("tether-bots-verify/", env!("CARGO_PKG_VERSION")).to_string();
    // Retries (with the server's retry hint while its storage is away)
    // until the deadline rather than a fixed number of times.
    cfg.reconnect = ReconnectPolicy {
        max_attempts: u32::MAX,
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(2),
        jitter_first: true,
    };
    let mut client = match tokio::time::timeout_at(deadline, Client::connect(cfg)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("login failed: {e}")),
        Err(_) => return Err(format!("no login within {VERIFY_LOGIN_FOR:?}")),
    };
    let held = loop {
        match client.next_event_until(deadline).await {
            Some(Ok(Event::Game(GameEvent::SelfState(s)))) => break Ok(Held::from_self_state(&s)),
            Some(Ok(Event::Deadline)) => {
                break Err(format!("no SelfState within {VERIFY_LOGIN_FOR:?}"))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break Err(format!("client ended: {e}")),
            None => break Err("client ended before SelfState".into()),
        }
    };
    client.logout();
    let until = Instant::now() + VERIFY_LOGOUT_FOR;
    while let Some(Ok(ev)) = client.next_event_until(until).await {
        if matches!(ev, Event::LoggedOut | Event::Deadline) {
            break;
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loot(tx_id: u64, gold: u64, total_gold: u64, items: &[(u32, u32)]) -> pb::LootGranted {
        pb::LootGranted {
            tx_id,
            gold,
            total_gold,
            items: items
                .iter()
                .map(|&(item_id, count)| pb::ItemStack { item_id, count })
                .collect(),
        }
    }

    fn line(name: &str, l: &pb::LootGranted) -> String {
        let mut s = serde_json::to_string(&Entry::new(name, l)).unwrap();
        s.push('\n');
        s
    }

    #[test]
    fn totals_sum_items_and_take_the_largest_gold() {
        let text = [
            line("a", &loot(1, 3, 3, &[(1, 1)])),
            line("a", &loot(2, 5, 8, &[(1, 1), (3, 1)])),
            line("b", &loot(7, 2, 2, &[])),
        ]
        .concat();
        let t = totals_from(text.as_bytes()).unwrap();
        assert_eq!(t.lines, 3);
        let a = &t.characters["a"];
        assert_eq!(a.confirmations, 2);
        assert_eq!(a.gold, 8);
        assert_eq!(a.items, BTreeMap::from([(1, 2), (3, 1)]));
        assert_eq!(t.characters["b"].gold, 2);
    }

    #[test]
    fn a_character_with_gold_before_the_ledger_is_held_to_its_total() {
        // The first confirmation the ledger saw already had 100 gold behind
        // it: the total, not the sum, is the bound.
        let text = line("a", &loot(9, 4, 104, &[]));
        let t = totals_from(text.as_bytes()).unwrap();
        assert_eq!(t.characters["a"].gold, 104);
    }

    #[test]
    fn duplicates_count_once_and_a_restarted_numbering_does_not_merge() {
        let l = loot(1, 3, 3, &[(2, 1)]);
        // Same tx twice (a replayed frame), then tx 1 again from a
        // restarted server: a different transaction (the total moved on).
        let text = [
            line("a", &l),
            line("a", &l),
            line("a", &loot(1, 2, 5, &[(2, 1)])),
        ]
        .concat();
        let t = totals_from(text.as_bytes()).unwrap();
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.characters["a"].confirmations, 2);
        assert_eq!(t.characters["a"].items[&2], 2);
        assert_eq!(t.characters["a"].gold, 5);
    }

    #[test]
    fn a_torn_last_line_is_ignored_but_a_bad_middle_line_is_an_error() {
        let full = line("a", &loot(1, 3, 3, &[]));
        let text = format!("{full}{}", &full[..full.len() / 2]);
        let t = totals_from(text.as_bytes()).unwrap();
        assert!(t.torn_tail);
        assert_eq!(t.characters["a"].confirmations, 1);
        let text = format!("{}\n{full}", &full[..full.len() / 2]);
        assert!(totals_from(text.as_bytes()).is_err());
    }

    #[test]
    fn compare_flags_short_gold_and_items() {
        let want = Promised {
            confirmations: 2,
            gold: 10,
            items: BTreeMap::from([(1, 2), (4, 1)]),
        };
        let mut have = Held {
            gold: 12,
            items: BTreeMap::from([(1, 2), (4, 1), (5, 7)]),
        };
        assert_eq!(compare("a", &want, &have), None);
        have.gold = 9;
        have.items.remove(&4);
        let m = compare("a", &want, &have).unwrap();
        assert_eq!(m.have_gold, Some(9));
        assert_eq!(m.items_short, vec![(4, 1, 0)]);
    }

    #[test]
    fn held_adds_up_stacks_of_one_item() {
        let s = pb::SelfState {
            gold: 7,
            inventory: vec![
                pb::ItemStack {
                    item_id: 1,
                    count: 9999,
                },
                pb::ItemStack {
                    item_id: 1,
                    count: 3,
                },
            ],
            ..Default::default()
        };
        let h = Held::from_self_state(&s);
        assert_eq!(h.items[&1], 10_002);
        assert_eq!(h.gold, 7);
    }

    #[test]
    fn the_ledger_appends_lines_that_read_back() {
        let dir = std::env::temp_dir().join(format!("tether-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger.jsonl");
        let _ = std::fs::remove_file(&path);
        let l = Ledger::open(&path).unwrap();
        l.record("a", &loot(1, 3, 3, &[(1, 1)])).unwrap();
        drop(l);
        // A second run appends.
        let l = Ledger::open(&path).unwrap();
        l.record("a", &loot(2, 1, 4, &[])).unwrap();
        let t = read_totals(l.path()).unwrap();
        assert_eq!(t.characters["a"].confirmations, 2);
        assert_eq!(t.characters["a"].gold, 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn characters_of_logins() {
        assert_eq!(character_of(&Login::Dev("bot1".into())), "bot1");
        assert_eq!(
            character_of(&Login::Ticket("Alice.123.abcd".into())),
            "Alice"
        );
    }
}
