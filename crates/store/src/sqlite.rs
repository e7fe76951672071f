//! The embedded backend: one SQLite file, nothing to install.
//!
//! # Durability
//!
//! The file runs in WAL mode with `synchronous=FULL`: every committed
//! transaction has had its WAL frames fsynced before `COMMIT` returns, so it
//! survives both a crash of the process and a power loss (on a disk that
//! honours fsync). `synchronous=NORMAL` would only survive a process crash: a
//! power cut could take back the last transactions, and those include loot a
//! player has been told is theirs. The price is one fsync per transaction;
//! the writer keeps that small by writing characters in batches and by
//! committing the loot that is waiting together
//! ([`Backend::commit_loot_batch`]).
//!
//! What a crash can lose is only what was never written: the position and hp
//! changes of the last flush interval (write-behind), never acknowledged
//! loot.
//!
//! # Connection
//!
//! One connection, owned by the writer thread. `busy_timeout` bounds how
//! long a statement waits for another process holding the file (1 s) before
//! the call fails as [`StoreError::Unavailable`]. After any retryable error
//! the connection is dropped and reopened (and the schema checked) on the
//! next call, which is what brings a file on a remounted disk back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tether_world::{CharacterRecord, LootTx};

use crate::backend::{
    decode_inventory, encode_inventory, from_sql_int, last_per_name, to_sql_int, tx_key, unix_ms,
    Backend, SCHEMA_VERSION,
};
use crate::StoreError;

/// How long a statement waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// The migrations, in order; migration `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, characters, the loot ledger.
    "CREATE TABLE accounts (
        name        TEXT PRIMARY KEY,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE characters (
        name        TEXT PRIMARY KEY,
        account     TEXT NOT NULL REFERENCES accounts(name),
        x           REAL,
        y           REAL,
        hp          INTEGER NOT NULL,
        level       INTEGER NOT NULL,
        xp          INTEGER NOT NULL,
        gold        INTEGER NOT NULL,
        inventory   TEXT NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE INDEX characters_by_account ON characters(account);
    CREATE TABLE store_runs (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at  INTEGER NOT NULL
    );
    CREATE TABLE loot_ledger (
        run_id      INTEGER NOT NULL REFERENCES store_runs(id),
        tx_id       INTEGER NOT NULL,
        character   TEXT NOT NULL,
        gold        INTEGER NOT NULL,
        items       TEXT NOT NULL,
        total_gold  INTEGER NOT NULL,
        committed_at INTEGER NOT NULL,
        PRIMARY KEY (run_id, tx_id)
    );",
];

const UPSERT_ACCOUNT: &str =
    "INSERT INTO accounts (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING";

const UPSERT_CHARACTER: &str = "INSERT INTO characters
        (name, account, x, y, hp, level, xp, gold, inventory, updated_at)
        VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
    ON CONFLICT (name) DO UPDATE SET
        account = excluded.account, x = excluded.x, y = excluded.y, hp = excluded.hp,
        level = excluded.level, xp = excluded.xp, gold = excluded.gold,
        inventory = excluded.inventory, updated_at = excluded.updated_at";

const INSERT_LEDGER: &str = "INSERT INTO loot_ledger
        (run_id, tx_id, character, gold, items, total_gold, committed_at)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT (run_id, tx_id) DO NOTHING";

/// Loot for a character with no row yet creates one as a brand-new
/// character would be (no position, level 0: the world places and fills it
/// in on join); the character's own save lands on top of it.
const APPLY_LOOT: &str = "INSERT INTO characters
        (name, account, x, y, hp, level, xp, gold, inventory, updated_at)
        VALUES (?1, ?1, NULL, NULL, 0, 0, 0, ?2, ?3, ?4)
    ON CONFLICT (name) DO UPDATE SET
        gold = excluded.gold, inventory = excluded.inventory, updated_at = excluded.updated_at";

/// Tether's state in one SQLite file.
pub struct SqliteBackend {
    path: PathBuf,
    conn: Option<Connection>,
    /// This process's row in `store_runs`: with the world's transaction id
    /// it keys the loot ledger (transaction ids restart with the process).
    run_id: Option<i64>,
}

impl SqliteBackend {
    /// Opens (creating if needed) the database file at `path`, sets WAL and
    /// `synchronous=FULL`, and applies migrations. The parent directory must
    /// exist. Any failure here is a start-up error to report and exit on.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let mut b = SqliteBackend {
            path: path.as_ref().to_path_buf(),
            conn: None,
            run_id: None,
        };
        b.connect()?;
        Ok(b)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connect(&mut self) -> Result<&mut Connection, StoreError> {
        if self.conn.is_none() {
            let conn = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| {
                StoreError::Unavailable(format!("sqlite: cannot open {}: {e}", self.path.display()))
            })?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Unavailable(format!(
                    "sqlite: {} refused WAL mode (got {mode})",
                    self.path.display()
                )));
            }
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            let mut conn = conn;
            migrate_conn(&mut conn)?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Runs `f` on the connection; a retryable error drops the connection so
    /// that the next call starts from a fresh one.
    fn with_conn<T>(
        &mut self,
        f: impl FnOnce(&mut Connection, &mut Option<i64>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = match self.connect() {
            Ok(_) => {
                let conn = self.conn.as_mut().expect("connected");
                f(conn, &mut self.run_id)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            if e.is_retryable() {
                self.conn = None;
            }
        }
        result
    }
}

fn migrate_conn(conn: &mut Connection) -> Result<u32, StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version     INTEGER PRIMARY KEY,
            applied_at  INTEGER NOT NULL
        )",
    )?;
    loop {
        // IMMEDIATE takes the write lock first, so two processes opening
        // the same file at once apply each migration exactly once.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: u32 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: current,
                supported: SCHEMA_VERSION,
            });
        }
        if current == SCHEMA_VERSION {
            return Ok(current);
        }
        let next = current + 1;
        tx.execute_batch(MIGRATIONS[(next - 1) as usize])?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![next, unix_ms()],
        )?;
        tx.commit()?;
        tracing::info!(version = next, "sqlite: applied schema migration");
    }
}

fn run_id(conn: &Connection, slot: &mut Option<i64>) -> Result<i64, StoreError> {
    if let Some(id) = *slot {
        return Ok(id);
    }
    conn.execute(
        "INSERT INTO store_runs (started_at) VALUES (?1)",
        params![unix_ms()],
    )?;
    let id = conn.last_insert_rowid();
    *slot = Some(id);
    Ok(id)
}

impl Backend for SqliteBackend {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn migrate(&mut self) -> Result<u32, StoreError> {
        self.with_conn(|c, _| migrate_conn(c))
    }

    fn load(&mut self, account: &str) -> Result<Option<CharacterRecord>, StoreError> {
        self.with_conn(|c, _| {
            let row = c
                .prepare_cached(
                    "SELECT name, x, y, hp, level, xp, gold, inventory FROM characters
                     WHERE account = ?1 ORDER BY name LIMIT 1",
                )?
                .query_row([account], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<f64>>(1)?,
                        r.get::<_, Option<f64>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, String>(7)?,
                    ))
                })
                .optional()?;
            let Some((name, x, y, hp, level, xp, gold, inventory)) = row else {
                return Ok(None);
            };
            Ok(Some(CharacterRecord {
                name,
                pos: x.zip(y).map(|(x, y)| (x as f32, y as f32)),
                hp: i32::try_from(hp)
                    .map_err(|_| StoreError::Rejected(format!("hp {hp} out of range")))?,
                level: u32::try_from(level)
                    .map_err(|_| StoreError::Rejected(format!("level {level} out of range")))?,
                xp: from_sql_int("xp", xp)?,
                gold: from_sql_int("gold", gold)?,
                inventory: decode_inventory(&inventory)?,
            }))
        })
    }

    fn save_batch(&mut self, records: &[CharacterRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = last_per_name(records);
        batch.sort_by(|a, b| a.name.cmp(&b.name));
        self.with_conn(|c, _| {
            let now = unix_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut account = tx.prepare_cached(UPSERT_ACCOUNT)?;
                let mut character = tx.prepare_cached(UPSERT_CHARACTER)?;
                for r in batch {
                    account.execute(params![r.name, now])?;
                    character.execute(params![
                        r.name,
                        r.pos.map(|p| p.0 as f64),
                        r.pos.map(|p| p.1 as f64),
                        r.hp,
                        r.level,
                        to_sql_int("xp", r.xp)?,
                        to_sql_int("gold", r.gold)?,
                        encode_inventory(&r.inventory),
                        now,
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn commit_loot_batch(&mut self, txs: &[LootTx]) -> Result<usize, StoreError> {
        if txs.is_empty() {
            return Ok(0);
        }
        self.with_conn(|c, run| {
            let run = run_id(c, run)?;
            let now = unix_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut applied = 0;
            {
                let mut ledger = tx.prepare_cached(INSERT_LEDGER)?;
                let mut account = tx.prepare_cached(UPSERT_ACCOUNT)?;
                let mut apply = tx.prepare_cached(APPLY_LOOT)?;
                for t in txs {
                    let inserted = ledger.execute(params![
                        run,
                        tx_key(t.tx_id),
                        t.character,
                        to_sql_int("gold", t.gold)?,
                        encode_inventory(&t.items),
                        to_sql_int("gold", t.total_gold)?,
                        now,
                    ])?;
                    if inserted == 0 {
                        continue;
                    }
                    applied += 1;
                    account.execute(params![t.character, now])?;
                    apply.execute(params![
                        t.character,
                        to_sql_int("gold", t.total_gold)?,
                        encode_inventory(&t.inventory),
                        now,
                    ])?;
                }
            }
            tx.commit()?;
            Ok(applied)
        })
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.with_conn(|c, _| {
            c.query_row("SELECT COUNT(*) FROM schema_version", [], |_| Ok(()))?;
            Ok(())
        })
    }
}
