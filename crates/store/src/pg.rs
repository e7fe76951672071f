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
//! "durable before acknowledged" for loot; do not.

use std::time::Duration;

use postgres::{Client, Config, NoTls};
use tether_world::{CharacterRecord, LootTx};

use crate::backend::{
    decode_inventory, encode_inventory, from_sql_int, last_per_name, to_sql_int, tx_key, unix_ms,
    Backend, SCHEMA_VERSION,
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
    // 1: accounts, characters, the loot ledger.
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
];

/// One statement per table for a whole batch: the columns travel as arrays
/// and `UNNEST` turns them back into rows, so a batch of a thousand
/// characters is two round trips, not two thousand.
const SAVE_ACCOUNTS: &str = "INSERT INTO accounts (name, created_at)
    SELECT n, $2 FROM UNNEST($1::text[]) AS t(n)
    ON CONFLICT (name) DO NOTHING";

const SAVE_CHARACTERS: &str = "INSERT INTO characters
        (name, account, x, y, hp, level, xp, gold, inventory, updated_at)
    SELECT n, n, x, y, hp, lv, xp, g, inv, $9
    FROM UNNEST($1::text[], $2::real[], $3::real[], $4::int[], $5::bigint[], $6::bigint[],
                $7::bigint[], $8::text[]) AS t(n, x, y, hp, lv, xp, g, inv)
    ON CONFLICT (name) DO UPDATE SET
        account = EXCLUDED.account, x = EXCLUDED.x, y = EXCLUDED.y, hp = EXCLUDED.hp,
        level = EXCLUDED.level, xp = EXCLUDED.xp, gold = EXCLUDED.gold,
        inventory = EXCLUDED.inventory, updated_at = EXCLUDED.updated_at";

const UPSERT_ACCOUNT: &str =
    "INSERT INTO accounts (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";

const INSERT_LEDGER: &str = "INSERT INTO loot_ledger
        (run_id, tx_id, character, gold, items, total_gold, committed_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (run_id, tx_id) DO NOTHING";

/// See the SQLite backend: loot for a character with no row yet creates a
/// new-character row that its own save lands on.
const APPLY_LOOT: &str = "INSERT INTO characters
        (name, account, x, y, hp, level, xp, gold, inventory, updated_at)
        VALUES ($1, $1, NULL, NULL, 0, 0, 0, $2, $3, $4)
    ON CONFLICT (name) DO UPDATE SET
        gold = EXCLUDED.gold, inventory = EXCLUDED.inventory, updated_at = EXCLUDED.updated_at";

/// Tether's state in a PostgreSQL database.
pub struct PostgresBackend {
    config: Config,
    /// Where the tables live, when not the connection's default search path.
    schema: Option<String>,
    client: Option<Client>,
    /// This process's row in `store_runs` (see the loot ledger key).
    run_id: Option<i64>,
}

impl PostgresBackend {
    /// Connects to `url` (`postgres://user@host:port/db?...`) and applies
    /// migrations. Failure is a start-up error to report and exit on.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_inner(url, None)
    }

    /// Like [`PostgresBackend::connect`], with every table inside `schema`
    /// (created if missing). For running several independent stores in one
    /// database, tests among them. `schema` must be a plain lower-case
    /// identifier (`[a-z_][a-z0-9_]*`).
    pub fn connect_in_schema(url: &str, schema: &str) -> Result<Self, StoreError> {
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
        Self::connect_inner(url, Some(schema.to_string()))
    }

    fn connect_inner(url: &str, schema: Option<String>) -> Result<Self, StoreError> {
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
        f: impl FnOnce(&mut Client, &mut Option<i64>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = match self.client() {
            Ok(_) => {
                let client = self.client.as_mut().expect("connected");
                f(client, &mut self.run_id)
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

impl Backend for PostgresBackend {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn migrate(&mut self) -> Result<u32, StoreError> {
        self.with_client(|c, _| migrate_client(c))
    }

    fn load(&mut self, account: &str) -> Result<Option<CharacterRecord>, StoreError> {
        self.with_client(|c, _| {
            let Some(row) = c.query_opt(
                "SELECT name, x, y, hp, level, xp, gold, inventory FROM characters
                 WHERE account = $1 ORDER BY name LIMIT 1",
                &[&account],
            )?
            else {
                return Ok(None);
            };
            let x: Option<f32> = row.try_get(1).map_err(row_error)?;
            let y: Option<f32> = row.try_get(2).map_err(row_error)?;
            let level: i64 = row.try_get(4).map_err(row_error)?;
            let inventory: String = row.try_get(7).map_err(row_error)?;
            Ok(Some(CharacterRecord {
                name: row.try_get(0).map_err(row_error)?,
                pos: x.zip(y),
                hp: row.try_get(3).map_err(row_error)?,
                level: u32::try_from(level)
                    .map_err(|_| StoreError::Rejected(format!("level {level} out of range")))?,
                xp: from_sql_int("xp", row.try_get(5).map_err(row_error)?)?,
                gold: from_sql_int("gold", row.try_get(6).map_err(row_error)?)?,
                inventory: decode_inventory(&inventory)?,
            }))
        })
    }

    fn save_batch(&mut self, records: &[CharacterRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = last_per_name(records);
        // One lock order for every writer: two processes saving overlapping
        // batches cannot deadlock.
        batch.sort_by(|a, b| a.name.cmp(&b.name));
        let n = batch.len();
        let mut names = Vec::with_capacity(n);
        let mut xs = Vec::with_capacity(n);
        let mut ys = Vec::with_capacity(n);
        let mut hps = Vec::with_capacity(n);
        let mut levels = Vec::with_capacity(n);
        let mut xps = Vec::with_capacity(n);
        let mut golds = Vec::with_capacity(n);
        let mut inventories = Vec::with_capacity(n);
        for r in batch {
            names.push(r.name.as_str());
            xs.push(r.pos.map(|p| p.0));
            ys.push(r.pos.map(|p| p.1));
            hps.push(r.hp);
            levels.push(i64::from(r.level));
            xps.push(to_sql_int("xp", r.xp)?);
            golds.push(to_sql_int("gold", r.gold)?);
            inventories.push(encode_inventory(&r.inventory));
        }
        self.with_client(|c, _| {
            let now = unix_ms();
            let mut tx = c.transaction()?;
            tx.execute(SAVE_ACCOUNTS, &[&names, &now])?;
            tx.execute(
                SAVE_CHARACTERS,
                &[
                    &names,
                    &xs,
                    &ys,
                    &hps,
                    &levels,
                    &xps,
                    &golds,
                    &inventories,
                    &now,
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn commit_loot_batch(&mut self, txs: &[LootTx]) -> Result<usize, StoreError> {
        if txs.is_empty() {
            return Ok(0);
        }
        self.with_client(|c, run| {
            let run = run_id(c, run)?;
            let now = unix_ms();
            let mut tx = c.transaction()?;
            let ledger = tx.prepare(INSERT_LEDGER)?;
            let account = tx.prepare(UPSERT_ACCOUNT)?;
            let apply = tx.prepare(APPLY_LOOT)?;
            let mut applied = 0;
            for t in txs {
                let inserted = tx.execute(
                    &ledger,
                    &[
                        &run,
                        &tx_key(t.tx_id),
                        &t.character,
                        &to_sql_int("gold", t.gold)?,
                        &encode_inventory(&t.items),
                        &to_sql_int("gold", t.total_gold)?,
                        &now,
                    ],
                )?;
                if inserted == 0 {
                    continue;
                }
                applied += 1;
                tx.execute(&account, &[&t.character, &now])?;
                tx.execute(
                    &apply,
                    &[
                        &t.character,
                        &to_sql_int("gold", t.total_gold)?,
                        &encode_inventory(&t.inventory),
                        &now,
                    ],
                )?;
            }
            tx.commit()?;
            Ok(applied)
        })
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.with_client(|c, _| {
            c.simple_query("SELECT 1")?;
            Ok(())
        })
    }
}
