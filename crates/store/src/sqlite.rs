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
//! the writer keeps that small by writing records in batches and by
//! committing the transactions that are waiting together
//! ([`Backend::commit_batch`]).
//!
//! What a crash can lose is only what was never written: the record changes
//! of the last flush interval (write-behind), never an acknowledged
//! transaction.
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

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tether_engine::{Record, SessionMark, Tx};

use crate::backend::{
    check_game, last_per_account, mark_from_sql, session_key, session_writes, tx_key, unix_ms,
    version_from_sql, Backend, SCHEMA_VERSION,
};
use crate::StoreError;

/// How long a statement waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// The migrations, in order; migration `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, characters, the loot ledger (the MMO's own tables; kept
    // as they were so that a version-1 database upgrades through 2).
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
    // 2: game-agnostic tables. Every character becomes a version-0 record of
    // the game "mmo" (the only game schema 1 knew), its columns as text
    // joined by TABs: name, x, y, hp, level, xp, gold, inventory (x and y
    // empty when NULL, numbers in SQLite's own text form, the inventory
    // column as it was). Its loot ledger rows become ledger entries "gold
    // TAB items TAB total_gold". An account with several characters (none
    // was ever written so) keeps the first by name, the one a load returned.
    // Then the old tables go. The CHECKs make an empty account a rejected
    // row rather than a key nobody can log in as.
    "CREATE TABLE records (
        game        TEXT NOT NULL,
        account     TEXT NOT NULL CHECK (account <> ''),
        version     INTEGER NOT NULL,
        data        BLOB NOT NULL,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (game, account)
    );
    CREATE TABLE tx_ledger (
        game        TEXT NOT NULL,
        run_id      INTEGER NOT NULL REFERENCES store_runs(id),
        tx_id       INTEGER NOT NULL,
        account     TEXT NOT NULL CHECK (account <> ''),
        entry       BLOB NOT NULL,
        committed_at INTEGER NOT NULL,
        PRIMARY KEY (game, run_id, tx_id)
    );
    INSERT INTO records (game, account, version, data, updated_at)
        SELECT 'mmo', c.account, 0,
            CAST(c.name || char(9) || COALESCE(CAST(c.x AS TEXT), '') || char(9)
                || COALESCE(CAST(c.y AS TEXT), '') || char(9) || CAST(c.hp AS TEXT)
                || char(9) || CAST(c.level AS TEXT) || char(9) || CAST(c.xp AS TEXT)
                || char(9) || CAST(c.gold AS TEXT) || char(9) || c.inventory AS BLOB),
            c.updated_at
        FROM characters c
        WHERE c.name = (SELECT MIN(o.name) FROM characters o WHERE o.account = c.account);
    INSERT INTO tx_ledger (game, run_id, tx_id, account, entry, committed_at)
        SELECT 'mmo', run_id, tx_id, character,
            CAST(CAST(gold AS TEXT) || char(9) || items || char(9)
                || CAST(total_gold AS TEXT) AS BLOB),
            committed_at
        FROM loot_ledger;
    DROP TABLE loot_ledger;
    DROP INDEX characters_by_account;
    DROP TABLE characters;
    DROP TABLE accounts;",
    // 3: the saved session of each account (at most one per game), written
    // with the account's record in the same transaction, so that a session
    // survives a restart. A session id names one session of a game; the
    // unique index finds a resumed session's account. The foreign key holds
    // what the writes guarantee: a saved session always has a record.
    // IF NOT EXISTS: idempotent, whatever a crash left.
    "CREATE TABLE IF NOT EXISTS sessions (
        game        TEXT NOT NULL,
        account     TEXT NOT NULL CHECK (account <> ''),
        session_id  INTEGER NOT NULL,
        restart_token BLOB NOT NULL CHECK (length(restart_token) = 16),
        last_input  INTEGER NOT NULL,
        saved_at    INTEGER NOT NULL,
        PRIMARY KEY (game, account),
        FOREIGN KEY (game, account) REFERENCES records (game, account)
    );
    CREATE UNIQUE INDEX IF NOT EXISTS sessions_by_id ON sessions (game, session_id);",
];

const UPSERT_RECORD: &str = "INSERT INTO records (game, account, version, data, updated_at)
        VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (game, account) DO UPDATE SET
        version = excluded.version, data = excluded.data, updated_at = excluded.updated_at";

/// A record's session mark: first the id is taken from any other account
/// holding it (see [`Backend`]), then the account's row is written.
const TAKE_SESSION_ID: &str =
    "DELETE FROM sessions WHERE game = ?1 AND session_id = ?2 AND account <> ?3";

const UPSERT_SESSION: &str = "INSERT INTO sessions
        (game, account, session_id, restart_token, last_input, saved_at)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT (game, account) DO UPDATE SET
        session_id = excluded.session_id, restart_token = excluded.restart_token,
        last_input = excluded.last_input, saved_at = excluded.saved_at";

/// A record without a session mark: the account's session ended.
const END_SESSION: &str = "DELETE FROM sessions WHERE game = ?1 AND account = ?2";

/// A record with the account's saved session, if any.
const LOAD: &str = "SELECT r.version, r.data, s.session_id, s.restart_token, s.last_input
    FROM records r
    LEFT JOIN sessions s ON s.game = r.game AND s.account = r.account
    WHERE r.game = ?1 AND r.account = ?2";

const LOAD_SESSION: &str =
    "SELECT r.account, r.version, r.data, s.session_id, s.restart_token, s.last_input
    FROM sessions s
    JOIN records r ON r.game = s.game AND r.account = s.account
    WHERE s.game = ?1 AND s.session_id = ?2";

const INSERT_LEDGER: &str = "INSERT INTO tx_ledger
        (game, run_id, tx_id, account, entry, committed_at)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT (game, run_id, tx_id) DO NOTHING";

/// One game's state in one SQLite file (which other games may share).
pub struct SqliteBackend {
    path: PathBuf,
    game: String,
    conn: Option<Connection>,
    /// This process's row in `store_runs`: with the game's transaction id
    /// it keys the ledger (transaction ids restart with the process).
    run_id: Option<i64>,
}

impl SqliteBackend {
    /// Opens (creating if needed) the database file at `path` for `game`,
    /// sets WAL and `synchronous=FULL`, and applies migrations. The parent
    /// directory must exist. Any failure here is a start-up error to report
    /// and exit on.
    pub fn open(path: impl AsRef<Path>, game: &str) -> Result<Self, StoreError> {
        check_game(game)?;
        let mut b = SqliteBackend {
            path: path.as_ref().to_path_buf(),
            game: game.to_string(),
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
        f: impl FnOnce(&mut Connection, &str, &mut Option<i64>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = match self.connect() {
            Ok(_) => {
                let conn = self.conn.as_mut().expect("connected");
                f(conn, &self.game, &mut self.run_id)
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

/// Sets `account`'s saved session: `mark`, or none.
fn write_session(
    tx: &rusqlite::Transaction<'_>,
    game: &str,
    account: &str,
    mark: Option<&SessionMark>,
    now: i64,
) -> Result<(), StoreError> {
    match mark {
        Some(m) => {
            let id = session_key(m.session_id);
            tx.prepare_cached(TAKE_SESSION_ID)?
                .execute(params![game, id, account])?;
            tx.prepare_cached(UPSERT_SESSION)?.execute(params![
                game,
                account,
                id,
                &m.restart_token[..],
                m.last_input,
                now
            ])?;
        }
        None => {
            tx.prepare_cached(END_SESSION)?
                .execute(params![game, account])?;
        }
    }
    Ok(())
}

/// A record row and its saved session's columns, as [`LOAD`] and
/// [`LOAD_SESSION`] read them (from column `first` on).
type Row = (i64, Vec<u8>, Option<i64>, Option<Vec<u8>>, Option<i64>);

fn read_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Row> {
    Ok((
        r.get(first)?,
        r.get(first + 1)?,
        r.get(first + 2)?,
        r.get(first + 3)?,
        r.get(first + 4)?,
    ))
}

fn record_from_row(account: String, row: Row) -> Result<Record, StoreError> {
    let (version, data, session_id, token, last_input) = row;
    let session = match (session_id, token, last_input) {
        (Some(id), Some(token), Some(last)) => Some(mark_from_sql(id, &token, last)?),
        _ => None,
    };
    Ok(Record {
        account,
        version: version_from_sql(version)?,
        data: Bytes::from(data),
        session,
    })
}

impl Backend for SqliteBackend {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn game(&self) -> &str {
        &self.game
    }

    fn migrate(&mut self) -> Result<u32, StoreError> {
        self.with_conn(|c, _, _| migrate_conn(c))
    }

    fn load(&mut self, account: &str) -> Result<Option<Record>, StoreError> {
        self.with_conn(|c, game, _| {
            let row = c
                .prepare_cached(LOAD)?
                .query_row(params![game, account], |r| read_row(r, 0))
                .optional()?;
            row.map(|row| record_from_row(account.to_string(), row))
                .transpose()
        })
    }

    fn load_session(&mut self, session_id: u64) -> Result<Option<Record>, StoreError> {
        self.with_conn(|c, game, _| {
            let row = c
                .prepare_cached(LOAD_SESSION)?
                .query_row(params![game, session_key(session_id)], |r| {
                    Ok((r.get::<_, String>(0)?, read_row(r, 1)?))
                })
                .optional()?;
            row.map(|(account, row)| record_from_row(account, row))
                .transpose()
        })
    }

    fn save_batch(&mut self, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = last_per_account(records);
        let sessions = session_writes(&batch);
        batch.sort_by(|a, b| a.account.cmp(&b.account));
        self.with_conn(|c, game, _| {
            let now = unix_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut upsert = tx.prepare_cached(UPSERT_RECORD)?;
                for r in batch {
                    upsert.execute(params![game, r.account, r.version, &r.data[..], now])?;
                }
            }
            for account in sessions.ends {
                write_session(&tx, game, account, None, now)?;
            }
            for (account, mark) in &sessions.saves {
                write_session(&tx, game, account, Some(mark), now)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn commit_batch(&mut self, txs: &[Tx]) -> Result<usize, StoreError> {
        if txs.is_empty() {
            return Ok(0);
        }
        self.with_conn(|c, game, run| {
            let run = run_id(c, run)?;
            let now = unix_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut applied = 0;
            {
                let mut ledger = tx.prepare_cached(INSERT_LEDGER)?;
                let mut upsert = tx.prepare_cached(UPSERT_RECORD)?;
                for t in txs {
                    let inserted = ledger.execute(params![
                        game,
                        run,
                        tx_key(t.tx_id),
                        t.account(),
                        &t.entry[..],
                        now,
                    ])?;
                    if inserted == 0 {
                        continue;
                    }
                    applied += 1;
                    let r = &t.record;
                    upsert.execute(params![game, r.account, r.version, &r.data[..], now])?;
                    write_session(&tx, game, &r.account, r.session.as_ref(), now)?;
                }
            }
            tx.commit()?;
            Ok(applied)
        })
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.with_conn(|c, _, _| {
            c.query_row("SELECT COUNT(*) FROM schema_version", [], |_| Ok(()))?;
            Ok(())
        })
    }
}
