//! The PostgreSQL backend, for deployments that already run one (and for
//! the later plan of several server processes sharing durable state).
//!
//! Uses the synchronous `postgres` client (a small private tokio runtime
//! inside), so the writer stays a plain thread. TLS is not built in: reach
//! the database over a local socket, a private network or a tunnel.
//!
//! # Connection loss
//!
//! Any retryable error drops the client; the next call reconnects (and
//! re-checks the schema). The connection is configured so that a dead
//! database is noticed in bounded time rather than after the kernel's TCP
//! timeouts, unless the URL sets these itself: `connect_timeout` 5 s,
//! `tcp_user_timeout` 10 s (unacknowledged data), keepalives after 10 s idle.
//!
//! # Durability
//!
//! A commit returns after the server has made it durable under its own
//! `synchronous_commit` setting (on, by default: flushed to the server's
//! WAL). Running the database with `synchronous_commit=off` would weaken
//! "durable before acknowledged" for transactions; do not.

use std::time::Duration;

use bytes::Bytes;
use postgres::{Client, Config, NoTls};
use tether_engine::{Record, Tx};

use crate::backend::{
    check_game, last_per_account, mark_from_sql, session_key, session_writes, tx_key, unix_ms,
    version_from_sql, Backend, SessionWrites, SCHEMA_VERSION,
};
use crate::StoreError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// The library's default keepalive idle time; a config still holding it
/// was not set by the URL.
const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// Key of the advisory lock that serializes migrations between server
/// processes starting at the same time ("tether" in ASCII).
const MIGRATION_LOCK: i64 = 0x7465_7468_6572;

/// The migrations, in order; migration `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, characters, the loot ledger (the MMO's own tables; kept
    // as they were so that a version-1 database upgrades through 2).
    "CREATE TABLE accounts (
        name        TEXT PRIMARY KEY,
        created_at  BIGINT NOT NULL
    );
    CREATE TABLE characters (
        name        TEXT PRIMARY KEY,
        account     TEXT NOT NULL REFERENCES accounts(name),
        x           REAL,
        y           REAL,
        hp          INTEGER NOT NULL,
        level       BIGINT NOT NULL,
        xp          BIGINT NOT NULL,
        gold        BIGINT NOT NULL,
        inventory   TEXT NOT NULL,
        updated_at  BIGINT NOT NULL
    );
    CREATE INDEX characters_by_account ON characters(account);
    CREATE TABLE store_runs (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        started_at  BIGINT NOT NULL
    );
    CREATE TABLE loot_ledger (
        run_id      BIGINT NOT NULL REFERENCES store_runs(id),
        tx_id       BIGINT NOT NULL,
        character   TEXT NOT NULL,
        gold        BIGINT NOT NULL,
        items       TEXT NOT NULL,
        total_gold  BIGINT NOT NULL,
        committed_at BIGINT NOT NULL,
        PRIMARY KEY (run_id, tx_id)
    );",
    // 2: game-agnostic tables; see the SQLite migration 2, which this one
    // mirrors. Numbers go to text in PostgreSQL's own form (`x::text`: a
    // REAL 100 is "100" here, "100.0" in SQLite). `version` is BIGINT so
    // that every u32 fits.
    "CREATE TABLE records (
        game        TEXT NOT NULL,
        account     TEXT NOT NULL CHECK (account <> ''),
        version     BIGINT NOT NULL,
        data        BYTEA NOT NULL,
        updated_at  BIGINT NOT NULL,
        PRIMARY KEY (game, account)
    );
    CREATE TABLE tx_ledger (
        game        TEXT NOT NULL,
        run_id      BIGINT NOT NULL REFERENCES store_runs(id),
        tx_id       BIGINT NOT NULL,
        account     TEXT NOT NULL CHECK (account <> ''),
        entry       BYTEA NOT NULL,
        committed_at BIGINT NOT NULL,
        PRIMARY KEY (game, run_id, tx_id)
    );
    INSERT INTO records (game, account, version, data, updated_at)
        SELECT 'mmo', c.account, 0,
            convert_to(c.name || chr(9) || COALESCE(c.x::text, '') || chr(9)
                || COALESCE(c.y::text, '') || chr(9) || c.hp::text || chr(9)
                || c.level::text || chr(9) || c.xp::text || chr(9) || c.gold::text
                || chr(9) || c.inventory, 'UTF8'),
            c.updated_at
        FROM characters c
        WHERE c.name = (SELECT MIN(o.name) FROM characters o WHERE o.account = c.account);
    INSERT INTO tx_ledger (game, run_id, tx_id, account, entry, committed_at)
        SELECT 'mmo', run_id, tx_id, character,
            convert_to(gold::text || chr(9) || items || chr(9) || total_gold::text, 'UTF8'),
            committed_at
        FROM loot_ledger;
    DROP TABLE loot_ledger;
    DROP TABLE characters;
    DROP TABLE accounts;",
    // 3: the saved session of each account; see the SQLite migration 3,
    // which this one mirrors.
    "CREATE TABLE IF NOT EXISTS sessions (
        game        TEXT NOT NULL,
        account     TEXT NOT NULL CHECK (account <> ''),
        session_id  BIGINT NOT NULL,
        restart_token BYTEA NOT NULL CHECK (octet_length(restart_token) = 16),
        last_input  BIGINT NOT NULL,
        saved_at    BIGINT NOT NULL,
        PRIMARY KEY (game, account),
        FOREIGN KEY (game, account) REFERENCES records (game, account)
    );
    CREATE UNIQUE INDEX IF NOT EXISTS sessions_by_id ON sessions (game, session_id);",
];

/// A whole batch of records in one statement: the columns travel as arrays
/// and `UNNEST` turns them back into rows, so a batch of a thousand records
/// is one round trip, not a thousand.
const SAVE_RECORDS: &str = "INSERT INTO records (game, account, version, data, updated_at)
    SELECT $1, a, v, d, $5
    FROM UNNEST($2::text[], $3::bigint[], $4::bytea[]) AS t(a, v, d)
    ON CONFLICT (game, account) DO UPDATE SET
        version = EXCLUDED.version, data = EXCLUDED.data, updated_at = EXCLUDED.updated_at";

const UPSERT_RECORD: &str = "INSERT INTO records (game, account, version, data, updated_at)
        VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (game, account) DO UPDATE SET
        version = EXCLUDED.version, data = EXCLUDED.data, updated_at = EXCLUDED.updated_at";

/// The sessions of a batch's records without a mark end.
const END_SESSIONS: &str = "DELETE FROM sessions WHERE game = $1 AND account = ANY($2::text[])";

/// The ids a batch saves are taken from any other account holding them
/// (see [`Backend`]), so that [`SAVE_SESSIONS`] never meets the unique
/// index.
const TAKE_SESSION_IDS: &str = "DELETE FROM sessions s
    USING UNNEST($2::text[], $3::bigint[]) AS t(a, id)
    WHERE s.game = $1 AND s.session_id = t.id AND s.account <> t.a";

/// A batch's marks, one statement like [`SAVE_RECORDS`].
const SAVE_SESSIONS: &str = "INSERT INTO sessions
        (game, account, session_id, restart_token, last_input, saved_at)
    SELECT $1, a, id, tok, li, $6
    FROM UNNEST($2::text[], $3::bigint[], $4::bytea[], $5::bigint[]) AS t(a, id, tok, li)
    ON CONFLICT (game, account) DO UPDATE SET
        session_id = EXCLUDED.session_id, restart_token = EXCLUDED.restart_token,
        last_input = EXCLUDED.last_input, saved_at = EXCLUDED.saved_at";

/// A record with the account's saved session, if any.
const LOAD: &str = "SELECT r.version, r.data, s.session_id, s.restart_token, s.last_input
    FROM records r
    LEFT JOIN sessions s ON s.game = r.game AND s.account = r.account
    WHERE r.game = $1 AND r.account = $2";

const LOAD_SESSION: &str =
    "SELECT r.version, r.data, s.session_id, s.restart_token, s.last_input, r.account
    FROM sessions s
    JOIN records r ON r.game = s.game AND r.account = s.account
    WHERE s.game = $1 AND s.session_id = $2";

const INSERT_LEDGER: &str = "INSERT INTO tx_ledger
        (game, run_id, tx_id, account, entry, committed_at)
        VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (game, run_id, tx_id) DO NOTHING";

/// One game's state in a PostgreSQL database (which other games may share).
pub struct PostgresBackend {
    config: Config,
    /// Where the tables live, when not the connection's default search path.
    schema: Option<String>,
    game: String,
    client: Option<Client>,
    /// This process's row in `store_runs` (see the ledger key).
    run_id: Option<i64>,
}

impl PostgresBackend {
    /// Connects to `url` (`postgres://user@host:port/db?...`) for `game` and
    /// applies migrations. Failure is a start-up error to report and exit
    /// on.
    pub fn connect(url: &str, game: &str) -> Result<Self, StoreError> {
        Self::connect_inner(url, None, game)
    }

    /// Like [`PostgresBackend::connect`], with every table inside `schema`
    /// (created if missing). For running several independent stores in one
    /// database, tests among them. `schema` must be a plain lower-case
    /// identifier (`[a-z_][a-z0-9_]*`).
    pub fn connect_in_schema(url: &str, schema: &str, game: &str) -> Result<Self, StoreError> {
        let plain = !schema.is_empty()
            && schema.len() < 64
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !schema.starts_with(|c: char| c.is_ascii_digit());
        if !plain {
            return Err(StoreError::Rejected(format!(
                "postgres: schema name {schema:?} is not a plain identifier"
            )));
        }
        Self::connect_inner(url, Some(schema.to_string()), game)
    }

    fn connect_inner(url: &str, schema: Option<String>, game: &str) -> Result<Self, StoreError> {
        check_game(game)?;
        let mut config: Config = url
            .parse()
            .map_err(|e| StoreError::Rejected(format!("postgres: bad connection URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if config.get_keepalives_idle() == DEFAULT_KEEPALIVE_IDLE {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if config.get_application_name().is_none() {
            config.application_name("tether");
        }
        let mut b = PostgresBackend {
            config,
            schema,
            game: game.to_string(),
            client: None,
            run_id: None,
        };
        b.client()?;
        Ok(b)
    }

    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.is_none() {
            let mut client = self.config.connect(NoTls)?;
            if let Some(schema) = &self.schema {
                client.batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
                ))?;
            }
            migrate_client(&mut client)?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Runs `f` on the client; a retryable error drops the client so that
    /// the next call reconnects.
    fn with_client<T>(
        &mut self,
        f: impl FnOnce(&mut Client, &str, &mut Option<i64>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = match self.client() {
            Ok(_) => {
                let client = self.client.as_mut().expect("connected");
                f(client, &self.game, &mut self.run_id)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            if e.is_retryable() {
                self.client = None;
            }
        }
        result
    }
}

fn migrate_client(client: &mut Client) -> Result<u32, StoreError> {
    // DDL is transactional in PostgreSQL: all missing migrations and their
    // version rows commit together or not at all.
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version     INTEGER PRIMARY KEY,
            applied_at  BIGINT NOT NULL
        )",
    )?;
    let current: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
        .try_get(0)
        .map_err(row_error)?;
    let current = current.max(0) as u32;
    if current > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for version in current + 1..=SCHEMA_VERSION {
        tx.batch_execute(MIGRATIONS[(version - 1) as usize])?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
            &[&(version as i32), &unix_ms()],
        )?;
        tracing::info!(version, "postgres: applied schema migration");
    }
    tx.commit()?;
    Ok(SCHEMA_VERSION)
}

/// A row that does not convert is bad data, not an outage.
fn row_error(e: postgres::Error) -> StoreError {
    StoreError::Rejected(format!("postgres: {e}"))
}

fn run_id(client: &mut Client, slot: &mut Option<i64>) -> Result<i64, StoreError> {
    if let Some(id) = *slot {
        return Ok(id);
    }
    let id: i64 = client
        .query_one(
            "INSERT INTO store_runs (started_at) VALUES ($1) RETURNING id",
            &[&unix_ms()],
        )?
        .try_get(0)
        .map_err(row_error)?;
    *slot = Some(id);
    Ok(id)
}

/// Applies a batch's session writes (see [`session_writes`]).
fn write_sessions(
    tx: &mut postgres::Transaction<'_>,
    game: &str,
    w: &SessionWrites<'_>,
    now: i64,
) -> Result<(), StoreError> {
    if !w.ends.is_empty() {
        tx.execute(END_SESSIONS, &[&game, &w.ends])?;
    }
    if !w.saves.is_empty() {
        let accounts: Vec<&str> = w.saves.iter().map(|(a, _)| *a).collect();
        let ids: Vec<i64> = w
            .saves
            .iter()
            .map(|(_, m)| session_key(m.session_id))
            .collect();
        let tokens: Vec<&[u8]> = w.saves.iter().map(|(_, m)| &m.restart_token[..]).collect();
        let last: Vec<i64> = w
            .saves
            .iter()
            .map(|(_, m)| i64::from(m.last_input))
            .collect();
        tx.execute(TAKE_SESSION_IDS, &[&game, &accounts, &ids])?;
        tx.execute(
            SAVE_SESSIONS,
            &[&game, &accounts, &ids, &tokens, &last, &now],
        )?;
    }
    Ok(())
}

/// A record from a [`LOAD`] or [`LOAD_SESSION`] row.
fn record_from_row(account: String, row: &postgres::Row) -> Result<Record, StoreError> {
    let version: i64 = row.try_get(0).map_err(row_error)?;
    let data: Vec<u8> = row.try_get(1).map_err(row_error)?;
    let session_id: Option<i64> = row.try_get(2).map_err(row_error)?;
    let token: Option<Vec<u8>> = row.try_get(3).map_err(row_error)?;
    let last_input: Option<i64> = row.try_get(4).map_err(row_error)?;
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

impl Backend for PostgresBackend {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn game(&self) -> &str {
        &self.game
    }

    fn migrate(&mut self) -> Result<u32, StoreError> {
        self.with_client(|c, _, _| migrate_client(c))
    }

    fn load(&mut self, account: &str) -> Result<Option<Record>, StoreError> {
        self.with_client(|c, game, _| {
            c.query_opt(LOAD, &[&game, &account])?
                .map(|row| record_from_row(account.to_string(), &row))
                .transpose()
        })
    }

    fn load_session(&mut self, session_id: u64) -> Result<Option<Record>, StoreError> {
        self.with_client(|c, game, _| {
            let Some(row) = c.query_opt(LOAD_SESSION, &[&game, &session_key(session_id)])? else {
                return Ok(None);
            };
            let account: String = row.try_get(5).map_err(row_error)?;
            record_from_row(account, &row).map(Some)
        })
    }

    fn save_batch(&mut self, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = last_per_account(records);
        let sessions = session_writes(&batch);
        // One lock order for every writer: two processes saving overlapping
        // batches cannot deadlock.
        batch.sort_by(|a, b| a.account.cmp(&b.account));
        let accounts: Vec<&str> = batch.iter().map(|r| r.account.as_str()).collect();
        let versions: Vec<i64> = batch.iter().map(|r| i64::from(r.version)).collect();
        let data: Vec<&[u8]> = batch.iter().map(|r| &r.data[..]).collect();
        self.with_client(|c, game, _| {
            let now = unix_ms();
            let mut tx = c.transaction()?;
            tx.execute(SAVE_RECORDS, &[&game, &accounts, &versions, &data, &now])?;
            write_sessions(&mut tx, game, &sessions, now)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn commit_batch(&mut self, txs: &[Tx]) -> Result<usize, StoreError> {
        if txs.is_empty() {
            return Ok(0);
        }
        self.with_client(|c, game, run| {
            let run = run_id(c, run)?;
            let now = unix_ms();
            let mut tx = c.transaction()?;
            let ledger = tx.prepare(INSERT_LEDGER)?;
            let upsert = tx.prepare(UPSERT_RECORD)?;
            let mut applied = Vec::with_capacity(txs.len());
            for t in txs {
                let inserted = tx.execute(
                    &ledger,
                    &[
                        &game,
                        &run,
                        &tx_key(t.tx_id),
                        &t.account(),
                        &&t.entry[..],
                        &now,
                    ],
                )?;
                if inserted == 0 {
                    continue;
                }
                let r = &t.record;
                applied.push(r);
                tx.execute(
                    &upsert,
                    &[&game, &r.account, &i64::from(r.version), &&r.data[..], &now],
                )?;
            }
            // The sessions of the records written, in one go: the same
            // outcome as one by one in order (the last record of an account
            // wins, a later record keeps a shared id), in three statements
            // whatever the batch.
            write_sessions(
                &mut tx,
                game,
                &session_writes(&last_per_account(applied.iter().copied())),
                now,
            )?;
            tx.commit()?;
            Ok(applied.len())
        })
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.with_client(|c, _, _| {
            c.simple_query("SELECT 1")?;
            Ok(())
        })
    }
}
