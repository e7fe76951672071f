//! One suite, both backends: SQLite in a temporary directory, always;
//! PostgreSQL where `TETHER_TEST_POSTGRES` holds a connection URL (each test
//! in a schema of its own, dropped afterwards), reported as skipped
//! elsewhere.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tether_engine::{Record, SessionMark, Tx};
use tether_store::{
    Backend, PostgresBackend, SqliteBackend, StoreError, StoreEvent, StoreWriter, TxOutcome,
    WriterConfig, SCHEMA_VERSION,
};

const PG_ENV: &str = "TETHER_TEST_POSTGRES";

/// The game the suite opens its backends for.
const GAME: &str = "mmo";

/// A `records` row as stored: game, account, version, data.
type RecordRow = (String, String, i64, Vec<u8>);

/// A `tx_ledger` row as stored: game, run id, tx id, account, entry.
type LedgerRow = (String, i64, i64, String, Vec<u8>);

/// A `sessions` row as stored: game, account, session id, restart token,
/// last input.
type SessionRow = (String, String, i64, Vec<u8>, i64);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test, run or process uses.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database for one test: opens backends on it, and runs raw SQL on it
/// behind the backend's back.
trait Fixture {
    fn kind(&self) -> &'static str;
    fn open_game(&self, game: &str) -> Result<Box<dyn Backend>, StoreError>;
    fn open(&self) -> Result<Box<dyn Backend>, StoreError> {
        self.open_game(GAME)
    }
    fn exec(&self, sql: &str);
    /// Creates the schema as a version-1 build left it (nothing opened
    /// yet): that build's migration 1, verbatim, recorded as applied.
    fn create_v1(&self);
    /// Creates the schema as a version-2 build left it (nothing opened
    /// yet): its tables, versions 1 and 2 recorded as applied.
    fn create_v2(&self);
    /// Every `records` row, by game and account.
    fn records(&self) -> Vec<RecordRow>;
    /// Every `tx_ledger` row, by game, run and transaction id.
    fn ledger(&self) -> Vec<LedgerRow>;
    /// Every `sessions` row, by game and account.
    fn sessions(&self) -> Vec<SessionRow>;
    /// The schema versions recorded as applied, in order.
    fn versions(&self) -> Vec<i64>;
    /// The names of the tables there are.
    fn tables(&self) -> Vec<String>;
}

const RECORDS_SQL: &str = "SELECT game, account, version, data FROM records ORDER BY game, account";
const LEDGER_SQL: &str =
    "SELECT game, run_id, tx_id, account, entry FROM tx_ledger ORDER BY game, run_id, tx_id";
const SESSIONS_SQL: &str = "SELECT game, account, session_id, restart_token, last_input \
     FROM sessions ORDER BY game, account";
const VERSIONS_SQL: &str = "SELECT CAST(version AS BIGINT) FROM schema_version ORDER BY version";

/// Migration 1 of the SQLite backend as a version-1 build shipped it.
const SQLITE_V1: &str = "CREATE TABLE schema_version (
        version     INTEGER PRIMARY KEY,
        applied_at  INTEGER NOT NULL
    );
    INSERT INTO schema_version (version, applied_at) VALUES (1, 0);
    CREATE TABLE accounts (
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
    );";

/// The SQLite tables as a version-2 build left them.
const SQLITE_V2: &str = "CREATE TABLE schema_version (
        version     INTEGER PRIMARY KEY,
        applied_at  INTEGER NOT NULL
    );
    INSERT INTO schema_version (version, applied_at) VALUES (1, 0), (2, 0);
    CREATE TABLE store_runs (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at  INTEGER NOT NULL
    );
    CREATE TABLE records (
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
    );";

/// The PostgreSQL tables as a version-2 build left them.
const PG_V2: &str = "CREATE TABLE schema_version (
        version     INTEGER PRIMARY KEY,
        applied_at  BIGINT NOT NULL
    );
    INSERT INTO schema_version (version, applied_at) VALUES (1, 0), (2, 0);
    CREATE TABLE store_runs (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        started_at  BIGINT NOT NULL
    );
    CREATE TABLE records (
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
    );";

/// Migration 1 of the PostgreSQL backend as a version-1 build shipped it.
const PG_V1: &str = "CREATE TABLE schema_version (
        version     INTEGER PRIMARY KEY,
        applied_at  BIGINT NOT NULL
    );
    INSERT INTO schema_version (version, applied_at) VALUES (1, 0);
    CREATE TABLE accounts (
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
    );";

struct SqliteFx {
    dir: PathBuf,
}

impl SqliteFx {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("tether_store_test"));
        std::fs::create_dir_all(&dir).unwrap();
        SqliteFx { dir }
    }

    fn path(&self) -> PathBuf {
        tether_store::default_sqlite_path(&self.dir)
    }
}

impl Drop for SqliteFx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl SqliteFx {
    fn conn(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.path()).unwrap()
    }
}

impl Fixture for SqliteFx {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn open_game(&self, game: &str) -> Result<Box<dyn Backend>, StoreError> {
        Ok(Box::new(SqliteBackend::open(self.path(), game)?))
    }

    fn exec(&self, sql: &str) {
        self.conn().execute_batch(sql).unwrap();
    }

    fn create_v1(&self) {
        self.exec(SQLITE_V1);
    }

    fn create_v2(&self) {
        self.exec(SQLITE_V2);
    }

    fn records(&self) -> Vec<RecordRow> {
        let c = self.conn();
        let mut st = c.prepare(RECORDS_SQL).unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn ledger(&self) -> Vec<LedgerRow> {
        let c = self.conn();
        let mut st = c.prepare(LEDGER_SQL).unwrap();
        st.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    fn sessions(&self) -> Vec<SessionRow> {
        let c = self.conn();
        let mut st = c.prepare(SESSIONS_SQL).unwrap();
        st.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    fn versions(&self) -> Vec<i64> {
        let c = self.conn();
        let mut st = c.prepare(VERSIONS_SQL).unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn tables(&self) -> Vec<String> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

struct PgFx {
    url: String,
    schema: String,
}

impl PgFx {
    /// `None` (and a line on the terminal saying so) without a database.
    fn new(test: &str) -> Option<Self> {
        match std::env::var(PG_ENV) {
            Ok(url) if !url.is_empty() => Some(PgFx {
                url,
                schema: unique("tether_test"),
            }),
            _ => {
                // Straight to the terminal: test output capture would hide a
                // println, and a skip must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "postgres::{test}: skipped: {PG_ENV} not set"
                );
                None
            }
        }
    }

    fn client(&self) -> ::postgres::Client {
        ::postgres::Client::connect(&self.url, ::postgres::NoTls).unwrap()
    }
}

impl Drop for PgFx {
    fn drop(&mut self) {
        if let Ok(mut c) = ::postgres::Client::connect(&self.url, ::postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

impl PgFx {
    /// A client whose search path is the test's schema.
    fn in_schema(&self) -> ::postgres::Client {
        let mut c = self.client();
        c.batch_execute(&format!("SET search_path TO {}", self.schema))
            .unwrap();
        c
    }
}

impl Fixture for PgFx {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn open_game(&self, game: &str) -> Result<Box<dyn Backend>, StoreError> {
        Ok(Box::new(PostgresBackend::connect_in_schema(
            &self.url,
            &self.schema,
            game,
        )?))
    }

    fn exec(&self, sql: &str) {
        self.in_schema().batch_execute(sql).unwrap();
    }

    fn create_v1(&self) {
        self.client()
            .batch_execute(&format!("CREATE SCHEMA {}", self.schema))
            .unwrap();
        self.exec(PG_V1);
    }

    fn create_v2(&self) {
        self.client()
            .batch_execute(&format!("CREATE SCHEMA {}", self.schema))
            .unwrap();
        self.exec(PG_V2);
    }

    fn sessions(&self) -> Vec<SessionRow> {
        self.in_schema()
            .query(SESSIONS_SQL, &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect()
    }

    fn versions(&self) -> Vec<i64> {
        self.in_schema()
            .query(VERSIONS_SQL, &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    fn records(&self) -> Vec<RecordRow> {
        self.in_schema()
            .query(RECORDS_SQL, &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    fn ledger(&self) -> Vec<LedgerRow> {
        self.in_schema()
            .query(LEDGER_SQL, &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect()
    }

    fn tables(&self) -> Vec<String> {
        self.in_schema()
            .query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() ORDER BY table_name",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

fn rec(account: &str, data: &[u8]) -> Record {
    Record::new(account, 7, Bytes::copy_from_slice(data))
}

fn tx(tx_id: u64, account: &str, data: &[u8]) -> Tx {
    Tx {
        tx_id,
        record: rec(account, data),
        entry: Bytes::from(format!("entry of {tx_id}")),
    }
}

/// A session mark; its token is `id`'s low byte repeated, its last input
/// `last_input`.
fn mark(session_id: u64, last_input: u32) -> SessionMark {
    SessionMark {
        session_id,
        restart_token: [session_id as u8; 16],
        last_input,
    }
}

/// `rec(account, data)` in session `m`.
fn in_session(account: &str, data: &[u8], m: SessionMark) -> Record {
    Record {
        session: Some(m),
        ..rec(account, data)
    }
}

/// A transaction leaving `account` in session `m`.
fn tx_in_session(tx_id: u64, account: &str, data: &[u8], m: SessionMark) -> Tx {
    Tx {
        record: in_session(account, data, m),
        ..tx(tx_id, account, data)
    }
}

/// A session row as [`Fixture::sessions`] reads it, for the suite's game.
fn session_row(account: &str, m: SessionMark) -> SessionRow {
    (
        GAME.to_string(),
        account.to_string(),
        m.session_id as i64,
        m.restart_token.to_vec(),
        i64::from(m.last_input),
    )
}

/// A session id of shard 200: stored negative, read back exactly.
const HIGH_SESSION: u64 = (200 << 56) | 12;

/// Bytes no text column would keep: NUL, invalid UTF-8, every byte value.
fn binary() -> Vec<u8> {
    (0..=255u8).rev().chain([0, 0xff, 0xfe]).collect()
}

// --- the suite ---

fn migrations_are_idempotent(fx: &dyn Fixture) {
    let mut b = fx.open().unwrap();
    assert_eq!(b.migrate(), Ok(SCHEMA_VERSION));
    assert_eq!(b.migrate(), Ok(SCHEMA_VERSION));
    drop(b);
    let mut b = fx.open().unwrap();
    assert_eq!(b.migrate(), Ok(SCHEMA_VERSION));
    b.ping().unwrap();
    assert_eq!(b.game(), GAME);
    let tables = fx.tables();
    for t in [
        "records",
        "tx_ledger",
        "sessions",
        "store_runs",
        "schema_version",
    ] {
        assert!(tables.iter().any(|n| n == t), "{t} missing: {tables:?}");
    }
    for t in ["characters", "loot_ledger", "accounts"] {
        assert!(!tables.iter().any(|n| n == t), "{t} still there");
    }
}

fn records_round_trip_byte_for_byte(fx: &dyn Fixture) {
    let mut b = fx.open().unwrap();
    assert_eq!(b.load("ann").unwrap(), None);
    let ann = rec("ann", &binary());
    let empty = Record::new("empty", 0, Bytes::new());
    let newest = Record::new("newest", u32::MAX, Bytes::from_static(b"v"));
    b.save_batch(&[ann.clone(), empty.clone(), newest.clone()])
        .unwrap();
    assert_eq!(b.load("ann").unwrap(), Some(ann.clone()));
    assert_eq!(b.load("empty").unwrap(), Some(empty));
    assert_eq!(b.load("newest").unwrap(), Some(newest));

    // Updates overwrite; within one batch the last record of an account
    // wins.
    let moved = rec("ann", b"moved");
    let later = Record {
        version: 8,
        ..rec("ann", b"later")
    };
    b.save_batch(&[moved, later.clone()]).unwrap();
    assert_eq!(b.load("ann").unwrap(), Some(later.clone()));
    assert_eq!(b.save_batch(&[]), Ok(()));
    let rows = fx.records();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0],
        (GAME.to_string(), "ann".to_string(), 8, b"later".to_vec())
    );
}

fn commits_are_idempotent_by_tx_id(fx: &dyn Fixture) {
    let mut b = fx.open().unwrap();
    b.save_batch(&[rec("ann", b"start")]).unwrap();
    let t1 = tx(1, "ann", b"after 1");
    assert_eq!(b.commit(&t1), Ok(TxOutcome::Applied));
    assert_eq!(b.load("ann").unwrap(), Some(t1.record.clone()));

    // A retry of a transaction that did commit changes nothing, even if
    // the account has moved on since.
    b.save_batch(&[rec("ann", b"spent")]).unwrap();
    assert_eq!(b.commit(&t1), Ok(TxOutcome::AlreadyApplied));
    assert_eq!(b.load("ann").unwrap(), Some(rec("ann", b"spent")));

    let t2 = tx(2, "ann", b"after 2");
    assert_eq!(b.commit_batch(&[t1.clone(), t2.clone()]), Ok(1));
    assert_eq!(b.load("ann").unwrap(), Some(t2.record.clone()));

    // In one batch, applied in order: the last transaction's record stays.
    let t3 = tx(3, "ann", b"after 3");
    let t4 = tx(4, "ann", &binary());
    assert_eq!(b.commit_batch(&[t3, t4.clone()]), Ok(2));
    assert_eq!(b.load("ann").unwrap(), Some(t4.record));

    // Ids of high shards (top byte set) are keys like any other.
    let t5 = tx((200 << 56) | 2, "ann", b"after 5");
    assert_eq!(b.commit(&t5), Ok(TxOutcome::Applied));
    assert_eq!(b.commit(&t5), Ok(TxOutcome::AlreadyApplied));

    // The ledger holds each once, with its entry byte for byte.
    let ledger = fx.ledger();
    let ids: Vec<u64> = ledger.iter().map(|l| l.2 as u64).collect();
    assert_eq!(ids, vec![(200 << 56) | 2, 1, 2, 3, 4], "sorted as signed");
    for l in &ledger {
        assert_eq!(l.0, GAME);
        assert_eq!(l.1, ledger[0].1, "one run");
        assert_eq!(l.3, "ann");
        assert_eq!(l.4, format!("entry of {}", l.2 as u64).into_bytes());
    }
}

fn a_commit_for_an_unsaved_account_creates_its_record(fx: &dyn Fixture) {
    let mut b = fx.open().unwrap();
    let t = tx(1, "fresh", b"first loot");
    b.commit(&t).unwrap();
    assert_eq!(b.load("fresh").unwrap(), Some(t.record));
    // Its own save lands on top.
    let full = rec("fresh", b"full");
    b.save_batch(std::slice::from_ref(&full)).unwrap();
    assert_eq!(b.load("fresh").unwrap(), Some(full));
}

fn reopening_keeps_data_and_a_new_run_reuses_tx_ids(fx: &dyn Fixture) {
    let mut b = fx.open().unwrap();
    b.save_batch(&[rec("ann", b"saved")]).unwrap();
    b.commit(&tx(1, "ann", b"run 1 tx 1")).unwrap();
    drop(b);

    let mut b = fx.open().unwrap();
    assert_eq!(b.load("ann").unwrap(), Some(rec("ann", b"run 1 tx 1")));
    // The game numbers transactions from 1 again after a restart: the new
    // run's tx 1 is a new transaction, not a retry of the old one.
    assert_eq!(
        b.commit(&tx(1, "ann", b"run 2 tx 1")),
        Ok(TxOutcome::Applied)
    );
    assert_eq!(b.load("ann").unwrap(), Some(rec("ann", b"run 2 tx 1")));
    let ledger = fx.ledger();
    assert_eq!(ledger.len(), 2);
    assert_ne!(ledger[0].1, ledger[1].1, "two runs");
}

fn games_share_a_database_and_never_see_each_other(fx: &dyn Fixture) {
    let mut mmo = fx.open().unwrap();
    let mut chess = fx.open_game("chess").unwrap();
    assert_eq!(chess.game(), "chess");
    mmo.save_batch(&[rec("ann", b"mmo ann")]).unwrap();
    assert_eq!(chess.load("ann").unwrap(), None);
    chess.save_batch(&[rec("ann", b"chess ann")]).unwrap();
    chess.commit(&tx(1, "ann", b"chess ann won")).unwrap();
    mmo.commit(&tx(1, "ann", b"mmo ann looted")).unwrap();
    assert_eq!(
        mmo.load("ann").unwrap(),
        Some(rec("ann", b"mmo ann looted"))
    );
    assert_eq!(
        chess.load("ann").unwrap(),
        Some(rec("ann", b"chess ann won"))
    );
    assert_eq!(fx.open_game("go").unwrap().load("ann").unwrap(), None);
    let games: Vec<_> = fx.ledger().into_iter().map(|l| (l.0, l.2)).collect();
    assert_eq!(games, vec![("chess".into(), 1), (GAME.into(), 1)]);
    assert!(matches!(fx.open_game(""), Err(StoreError::Rejected(_))));
}

fn a_schema_newer_than_the_build_is_refused(fx: &dyn Fixture) {
    drop(fx.open().unwrap());
    fx.exec("INSERT INTO schema_version (version, applied_at) VALUES (99, 0)");
    match fx.open() {
        Err(e) => assert_eq!(
            e,
            StoreError::SchemaTooNew {
                found: 99,
                supported: SCHEMA_VERSION
            }
        ),
        Ok(_) => panic!("opened a database from the future"),
    }
}

fn bad_data_is_rejected_whole_and_not_retryable(fx: &dyn Fixture) {
    let mut b = fx.open().unwrap();
    // An empty account is refused by the schema itself.
    let err = b
        .save_batch(&[rec("good", b"1"), rec("", b"bad")])
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Rejected(_)),
        "{err:?} should be Rejected"
    );
    assert!(!err.is_retryable());
    assert_eq!(b.load("good").unwrap(), None, "all or nothing");
    // The backend is still usable.
    b.save_batch(&[rec("good", b"1")]).unwrap();
    assert!(b.load("good").unwrap().is_some());

    // The good transaction goes first and is written before the bad one
    // fails: the whole database transaction is rolled back.
    let err = b
        .commit_batch(&[tx(1, "good", b"2"), tx(2, "", b"bad")])
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(
        b.load("good").unwrap(),
        Some(rec("good", b"1")),
        "nothing applied"
    );
    assert!(fx.ledger().is_empty());
    assert_eq!(
        b.commit(&tx(1, "good", b"2")),
        Ok(TxOutcome::Applied),
        "the rolled-back ledger row is not there"
    );
}

/// A database a version-1 build left: the MMO's typed rows, migrated to
/// records and ledger entries byte for byte.
fn a_version_1_database_is_migrated(fx: &dyn Fixture) {
    fx.create_v1();
    fx.exec(
        "INSERT INTO accounts (name, created_at) VALUES ('ann', 1), ('new', 1), ('rich', 1);
         INSERT INTO characters (name, account, x, y, hp, level, xp, gold, inventory, updated_at)
         VALUES ('ann', 'ann', 12.5, -3.25, 77, 4, 1234, 50, '1:3 9:1', 11),
                ('new', 'new', NULL, NULL, 0, 0, 0, 5, '', 12),
                ('rich', 'rich', 100, 0.5, -5, 7, 9223372036854775807, 9223372036854775807,
                 '4000000000:12', 13),
                ('zed_alt', 'ann', 1, 1, 1, 1, 1, 1, '', 14);
         INSERT INTO store_runs (started_at) VALUES (0), (0);
         INSERT INTO loot_ledger (run_id, tx_id, character, gold, items, total_gold, committed_at)
         VALUES (1, 1, 'ann', 5, '4:1', 55, 21),
                (1, -5, 'ann', 1, '', 56, 22),
                (2, 1, 'rich', 0, '4:1 9:2', 7, 23);",
    );
    let mut b = fx.open().unwrap();
    assert_eq!(b.migrate(), Ok(SCHEMA_VERSION));

    // A whole REAL is written as text the way each database writes it.
    let hundred = if fx.kind() == "sqlite" {
        "100.0"
    } else {
        "100"
    };
    let text = |s: &str| s.as_bytes().to_vec();
    let row =
        |account: &str, data: String| (GAME.to_string(), account.to_string(), 0i64, text(&data));
    assert_eq!(
        fx.records(),
        vec![
            // ann's first character by name; zed_alt (same account) is not
            // carried over, as a load never returned it.
            row("ann", "ann\t12.5\t-3.25\t77\t4\t1234\t50\t1:3 9:1".into()),
            row("new", "new\t\t\t0\t0\t0\t5\t".into()),
            row(
                "rich",
                format!(
                    "rich\t{hundred}\t0.5\t-5\t7\t9223372036854775807\t\
                     9223372036854775807\t4000000000:12"
                )
            ),
        ]
    );
    let entry = |run: i64, id: i64, account: &str, e: &str| {
        (GAME.to_string(), run, id, account.to_string(), text(e))
    };
    assert_eq!(
        fx.ledger(),
        vec![
            entry(1, -5, "ann", "1\t\t56"),
            entry(1, 1, "ann", "5\t4:1\t55"),
            entry(2, 1, "rich", "0\t4:1 9:2\t7"),
        ]
    );
    let tables = fx.tables();
    for t in ["characters", "loot_ledger", "accounts"] {
        assert!(!tables.iter().any(|n| n == t), "{t} still there");
    }

    // Through the backend: version 0, the text as data.
    let ann = b.load("ann").unwrap().unwrap();
    assert_eq!(ann.version, 0);
    assert_eq!(&ann.data[..], b"ann\t12.5\t-3.25\t77\t4\t1234\t50\t1:3 9:1");
    // The old runs stay taken: this run's tx 1 is new, not a retry.
    assert_eq!(b.commit(&tx(1, "ann", b"v7")), Ok(TxOutcome::Applied));
    assert_eq!(fx.ledger().len(), 4);
    drop(b);
    // Opening again changes nothing more.
    let before = fx.records();
    drop(fx.open().unwrap());
    assert_eq!(fx.records(), before);
}

fn a_session_mark_is_saved_and_loaded_with_its_record(fx: &dyn Fixture) {
    let mut b = fx.open().unwrap();
    let ann = in_session("ann", b"ann 1", mark(11, 5));
    let bob = in_session("bob", &binary(), mark(HIGH_SESSION, u32::MAX));
    let cat = rec("cat", b"never in a session");
    b.save_batch(&[ann.clone(), bob.clone(), cat.clone()])
        .unwrap();
    assert_eq!(b.load("ann").unwrap(), Some(ann));
    assert_eq!(b.load("bob").unwrap(), Some(bob));
    assert_eq!(b.load("cat").unwrap(), Some(cat));
    assert_eq!(
        fx.sessions(),
        vec![
            session_row("ann", mark(11, 5)),
            session_row("bob", mark(HIGH_SESSION, u32::MAX)),
        ]
    );

    // A later input of the same session moves the mark with the record.
    let ann = in_session("ann", b"ann 2", mark(11, 9));
    b.save_batch(std::slice::from_ref(&ann)).unwrap();
    assert_eq!(b.load("ann").unwrap(), Some(ann));

    // No mark: the session ended, the saved one goes, the record stays.
    b.save_batch(&[rec("bob", b"logged out")]).unwrap();
    assert_eq!(b.load("bob").unwrap(), Some(rec("bob", b"logged out")));
    assert_eq!(fx.sessions(), vec![session_row("ann", mark(11, 9))]);

    // Within a batch the last record of an account wins, mark included.
    b.save_batch(&[
        in_session("ann", b"ann 3", mark(11, 10)),
        rec("ann", b"ann out"),
        rec("dan", b"dan out"),
        in_session("dan", b"dan in", mark(14, 1)),
    ])
    .unwrap();
    assert_eq!(b.load("ann").unwrap(), Some(rec("ann", b"ann out")));
    assert_eq!(
        b.load("dan").unwrap(),
        Some(in_session("dan", b"dan in", mark(14, 1)))
    );
    assert_eq!(fx.sessions(), vec![session_row("dan", mark(14, 1))]);

    // A batch that fails writes neither records nor marks: they cannot
    // disagree.
    let err = b
        .save_batch(&[
            in_session("dan", b"dan later", mark(14, 2)),
            in_session("eve", b"eve", mark(15, 1)),
            rec("", b"bad"),
        ])
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(
        b.load("dan").unwrap(),
        Some(in_session("dan", b"dan in", mark(14, 1)))
    );
    assert_eq!(fx.sessions(), vec![session_row("dan", mark(14, 1))]);
}

fn load_session_finds_the_account_by_session_id(fx: &dyn Fixture) {
    let mut b = fx.open().unwrap();
    assert_eq!(b.load_session(11).unwrap(), None, "an empty database");
    let ann = in_session("ann", b"ann", mark(11, 3));
    let bob = in_session("bob", b"bob", mark(HIGH_SESSION, 4));
    b.save_batch(&[ann.clone(), bob.clone(), rec("cat", b"cat")])
        .unwrap();
    assert_eq!(b.load_session(11).unwrap(), Some(ann));
    assert_eq!(b.load_session(HIGH_SESSION).unwrap(), Some(bob));
    assert_eq!(b.load_session(12).unwrap(), None, "an unknown id");

    // Another game with the same session id sees nothing of this one.
    let mut chess = fx.open_game("chess").unwrap();
    assert_eq!(chess.load_session(11).unwrap(), None);
    let chess_ann = in_session("ann", b"chess ann", mark(11, 1));
    chess.save_batch(std::slice::from_ref(&chess_ann)).unwrap();
    assert_eq!(chess.load_session(11).unwrap(), Some(chess_ann));
    assert_eq!(b.load_session(11).unwrap().unwrap().data, "ann".as_bytes());

    // A new session of the account: the old id is gone, the new one finds
    // it.
    let ann = in_session("ann", b"ann again", mark(21, 0));
    b.save_batch(std::slice::from_ref(&ann)).unwrap();
    assert_eq!(b.load_session(11).unwrap(), None);
    assert_eq!(b.load_session(21).unwrap(), Some(ann));

    // An ended session is not found.
    b.save_batch(&[rec("ann", b"ann out")]).unwrap();
    assert_eq!(b.load_session(21).unwrap(), None);

    // An id saved for another account moves to it: the older session can
    // no longer be resumed (and the save is not refused).
    let cat = in_session("cat", b"cat", mark(HIGH_SESSION, 1));
    b.save_batch(std::slice::from_ref(&cat)).unwrap();
    assert_eq!(b.load_session(HIGH_SESSION).unwrap(), Some(cat));
    assert_eq!(b.load("bob").unwrap(), Some(rec("bob", b"bob")));
    // Two accounts of one batch with one id: the later keeps it.
    b.save_batch(&[
        in_session("dan", b"dan", mark(30, 1)),
        in_session("eve", b"eve", mark(30, 2)),
    ])
    .unwrap();
    assert_eq!(b.load_session(30).unwrap().unwrap().account, "eve");
    assert_eq!(b.load("dan").unwrap().unwrap().session, None);
    // Two accounts swapping ids in one batch.
    b.save_batch(&[
        in_session("dan", b"dan", mark(30, 3)),
        in_session("eve", b"eve", mark(HIGH_SESSION, 3)),
        in_session("cat", b"cat", mark(31, 3)),
    ])
    .unwrap();
    assert_eq!(b.load_session(30).unwrap().unwrap().account, "dan");
    assert_eq!(
        b.load_session(HIGH_SESSION).unwrap().unwrap().account,
        "eve"
    );
    assert_eq!(b.load_session(31).unwrap().unwrap().account, "cat");
    assert_eq!(fx.sessions().len(), 4, "chess ann, cat, dan, eve");
}

fn commits_write_the_session_mark(fx: &dyn Fixture) {
    let mut b = fx.open().unwrap();
    let t1 = tx_in_session(1, "ann", b"after 1", mark(11, 7));
    assert_eq!(b.commit(&t1), Ok(TxOutcome::Applied));
    assert_eq!(b.load("ann").unwrap(), Some(t1.record.clone()));
    assert_eq!(b.load_session(11).unwrap(), Some(t1.record.clone()));

    // A retry changes nothing, its mark included.
    b.save_batch(&[in_session("ann", b"moved", mark(11, 9))])
        .unwrap();
    assert_eq!(b.commit(&t1), Ok(TxOutcome::AlreadyApplied));
    assert_eq!(b.load("ann").unwrap().unwrap().session, Some(mark(11, 9)));

    // In one batch, in order: the last transaction's mark stays; a
    // transaction of another account takes an id, a later one gives an
    // account's session up.
    let t2 = tx_in_session(2, "ann", b"after 2", mark(11, 10));
    let t3 = tx_in_session(3, "bob", b"bob after 3", mark(HIGH_SESSION, 1));
    let t4 = tx_in_session(4, "ann", b"after 4", mark(11, 12));
    let t5 = tx_in_session(5, "cat", b"cat after 5", mark(HIGH_SESSION, 2));
    let t6 = tx(6, "dan", b"dan after 6");
    assert_eq!(
        b.commit_batch(&[t2, t3, t4.clone(), t5.clone(), t6.clone()]),
        Ok(5)
    );
    assert_eq!(b.load("ann").unwrap(), Some(t4.record));
    assert_eq!(b.load_session(HIGH_SESSION).unwrap(), Some(t5.record));
    assert_eq!(b.load("bob").unwrap().unwrap().session, None);
    assert_eq!(b.load("dan").unwrap(), Some(t6.record));
    let t7 = tx(7, "ann", b"ann logged out, then looted");
    b.commit(&t7).unwrap();
    assert_eq!(b.load_session(11).unwrap(), None);
    assert_eq!(
        fx.sessions(),
        vec![session_row("cat", mark(HIGH_SESSION, 2))]
    );

    // A batch that fails writes no mark.
    let err = b
        .commit_batch(&[
            tx_in_session(8, "dan", b"dan", mark(40, 1)),
            tx(9, "", b"bad"),
        ])
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(b.load_session(40).unwrap(), None);
    assert_eq!(fx.sessions().len(), 1);
}

/// A database a version-2 build left: its rows kept, the sessions table
/// added.
fn a_version_2_database_is_migrated(fx: &dyn Fixture) {
    fx.create_v2();
    fx.exec(
        "INSERT INTO store_runs (started_at) VALUES (0);
         INSERT INTO records (game, account, version, data, updated_at)
         VALUES ('mmo', 'ann', 4, CAST('ann v4' AS BLOB_TYPE), 1),
                ('chess', 'ann', 1, CAST('chess ann' AS BLOB_TYPE), 2);
         INSERT INTO tx_ledger (game, run_id, tx_id, account, entry, committed_at)
         VALUES ('mmo', 1, 1, 'ann', CAST('loot 1' AS BLOB_TYPE), 3);"
            .replace(
                "BLOB_TYPE",
                if fx.kind() == "sqlite" {
                    "BLOB"
                } else {
                    "BYTEA"
                },
            )
            .as_str(),
    );
    let records = fx.records();
    let ledger = fx.ledger();
    assert!(!fx.tables().iter().any(|t| t == "sessions"));

    let mut b = fx.open().unwrap();
    assert_eq!(b.migrate(), Ok(SCHEMA_VERSION));
    assert_eq!(fx.versions(), vec![1, 2, 3]);
    assert!(fx.tables().iter().any(|t| t == "sessions"));
    assert_eq!(fx.records(), records, "records kept");
    assert_eq!(fx.ledger(), ledger, "ledger kept");
    assert!(fx.sessions().is_empty());

    let ann = b.load("ann").unwrap().unwrap();
    assert_eq!(
        (ann.version, &ann.data[..], ann.session),
        (4, &b"ann v4"[..], None)
    );
    let ann = in_session("ann", b"ann v5", mark(11, 1));
    b.save_batch(std::slice::from_ref(&ann)).unwrap();
    assert_eq!(b.load_session(11).unwrap(), Some(ann));
    drop(b);
    // Opening again changes nothing more.
    let mut b = fx.open().unwrap();
    assert_eq!(b.migrate(), Ok(SCHEMA_VERSION));
    assert_eq!(fx.versions(), vec![1, 2, 3]);
    assert_eq!(fx.sessions(), vec![session_row("ann", mark(11, 1))]);
}

/// A session saved by one writer (one server process) is found by id by
/// the next, and a logout handed to the next one ends it.
fn sessions_outlive_the_writer(fx: &dyn Fixture) {
    let cfg = WriterConfig {
        flush_interval: Duration::from_secs(60),
        ..WriterConfig::default()
    };
    let writer = StoreWriter::start(fx.open().unwrap(), cfg.clone()).unwrap();
    let (h, _ev) = writer.client(None);
    let ann = in_session("ann", b"ann", mark(11, 40));
    h.mark_dirty(rec("ann", b"ann joined"));
    h.mark_dirty(ann.clone());
    h.commit(tx_in_session(
        1,
        "bob",
        b"bob looted",
        mark(HIGH_SESSION, 8),
    ))
    .unwrap();
    // The process goes away; what it held is written on the way out.
    assert!(writer.shutdown(Duration::from_secs(10)).is_complete());

    let writer = StoreWriter::start(fx.open().unwrap(), cfg).unwrap();
    let (h, ev) = writer.client(None);
    let session_loaded = |id: u64| {
        h.load_session(id, id ^ 1).unwrap();
        match ev.recv_timeout(Duration::from_secs(10)) {
            Some(StoreEvent::SessionLoaded {
                session_id,
                tag,
                result,
            }) => {
                assert_eq!((session_id, tag), (id, id ^ 1));
                result.unwrap()
            }
            other => panic!("expected a session answer, got {other:?}"),
        }
    };
    assert_eq!(session_loaded(11), Some(ann));
    assert_eq!(
        session_loaded(HIGH_SESSION).unwrap().session,
        Some(mark(HIGH_SESSION, 8))
    );
    assert_eq!(session_loaded(12), None);
    // Logged out, not yet written: the database still has the session,
    // the answer does not.
    h.save_now(rec("ann", b"ann out"));
    assert_eq!(session_loaded(11), None);
    assert!(writer.shutdown(Duration::from_secs(10)).is_complete());
    assert_eq!(
        fx.sessions(),
        vec![session_row("bob", mark(HIGH_SESSION, 8))]
    );
}

fn the_writer_over_a_real_database(fx: &dyn Fixture) {
    let writer = StoreWriter::start(
        fx.open().unwrap(),
        WriterConfig {
            flush_interval: Duration::from_secs(60),
            ..WriterConfig::default()
        },
    )
    .unwrap();
    let (h, ev) = writer.client(None);
    h.load("ann", 1).unwrap();
    match ev.recv_timeout(Duration::from_secs(10)) {
        Some(StoreEvent::Loaded { result, .. }) => assert_eq!(result, Ok(None)),
        other => panic!("expected a load answer, got {other:?}"),
    }
    h.mark_dirty(rec("ann", b"older than the loot"));
    h.commit(tx(1, "ann", b"looted")).unwrap();
    match ev.recv_timeout(Duration::from_secs(10)) {
        Some(StoreEvent::Committed(t)) => assert_eq!(t.tx_id, 1),
        other => panic!("expected the commit, got {other:?}"),
    }
    h.save_now(rec("bob", b"bob"));
    for i in 0..300 {
        h.mark_dirty(rec(&format!("p{i}"), format!("p{i} data").as_bytes()));
    }
    let report = writer.shutdown(Duration::from_secs(10));
    assert!(report.is_complete(), "{report:?}");

    let mut b = fx.open().unwrap();
    assert_eq!(
        b.load("ann").unwrap(),
        Some(rec("ann", b"looted")),
        "the older record did not take the loot back"
    );
    assert_eq!(b.load("bob").unwrap(), Some(rec("bob", b"bob")));
    assert_eq!(b.load("p299").unwrap(), Some(rec("p299", b"p299 data")));
    assert_eq!(fx.records().len(), 302);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    let fx = super::SqliteFx::new();
                    super::$name(&fx);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    let Some(fx) = super::PgFx::new(stringify!($name)) else {
                        return;
                    };
                    super::$name(&fx);
                }
            )*
        }
    };
}

suite!(
    migrations_are_idempotent,
    records_round_trip_byte_for_byte,
    commits_are_idempotent_by_tx_id,
    a_commit_for_an_unsaved_account_creates_its_record,
    reopening_keeps_data_and_a_new_run_reuses_tx_ids,
    games_share_a_database_and_never_see_each_other,
    a_schema_newer_than_the_build_is_refused,
    bad_data_is_rejected_whole_and_not_retryable,
    a_version_1_database_is_migrated,
    the_writer_over_a_real_database,
    a_session_mark_is_saved_and_loaded_with_its_record,
    load_session_finds_the_account_by_session_id,
    commits_write_the_session_mark,
    a_version_2_database_is_migrated,
    sessions_outlive_the_writer,
);

// --- one backend only ---

#[test]
fn sqlite_file_is_in_wal_mode() {
    let fx = SqliteFx::new();
    drop(fx.open().unwrap());
    let c = rusqlite::Connection::open(fx.path()).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn postgres_reconnects_after_the_connection_is_killed() {
    let Some(fx) = PgFx::new("reconnects_after_the_connection_is_killed") else {
        return;
    };
    let app = unique("tether_kill");
    let sep = if fx.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}application_name={app}", fx.url);
    let mut b = PostgresBackend::connect_in_schema(&url, &fx.schema, GAME).unwrap();
    b.save_batch(&[rec("ann", b"ann")]).unwrap();

    let killed: i64 = fx
        .client()
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&app],
        )
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);

    // The first call may find the dead connection (an outage: retryable);
    // the next one reconnects.
    match b.load("ann") {
        Ok(r) => assert!(r.is_some()),
        Err(e) => {
            assert!(e.is_retryable(), "{e:?}");
            assert!(b.load("ann").unwrap().is_some());
        }
    }
}

#[test]
fn start_up_errors_are_clear() {
    let fx = SqliteFx::new();
    let missing = fx.dir.join("no/such/dir/tether.db");
    let err = tether_store::open(&format!("sqlite:{}", missing.display()), GAME)
        .err()
        .expect("a file in a missing directory cannot open");
    assert!(err.to_string().contains("no/such/dir"), "{err}");

    // Nothing listens on port 1: refused at once.
    let err = tether_store::open("postgres://postgres@127.0.0.1:1/test", GAME)
        .err()
        .expect("nothing listens there");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("postgres"), "{err}");

    let err = tether_store::open("mysql://x", GAME).err().unwrap();
    assert!(matches!(err, StoreError::Rejected(_)), "{err}");
    assert!(tether_store::open("sqlite:", GAME).is_err());

    // The happy path through the same door, and a game is named.
    let spec = format!("sqlite:{}", fx.path().display());
    let err = tether_store::open(&spec, "").err().unwrap();
    assert!(matches!(err, StoreError::Rejected(_)), "{err}");
    let mut b = tether_store::open(&spec, "chess").unwrap();
    assert_eq!((b.kind(), b.game()), ("sqlite", "chess"));
    assert_eq!(b.migrate(), Ok(SCHEMA_VERSION));
}

#[test]
fn postgres_writer_rides_out_a_killed_connection() {
    let Some(fx) = PgFx::new("writer_rides_out_a_killed_connection") else {
        return;
    };
    let app = unique("tether_kill");
    let sep = if fx.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}application_name={app}", fx.url);
    let backend = PostgresBackend::connect_in_schema(&url, &fx.schema, GAME).unwrap();
    let writer = StoreWriter::start(
        backend,
        WriterConfig {
            backoff_initial: Duration::from_millis(10),
            ..WriterConfig::default()
        },
    )
    .unwrap();
    let (h, ev) = writer.client(None);
    h.save_now(rec("ann", b"ann"));
    for round in 1..=3u64 {
        fx.client()
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1",
                &[&app],
            )
            .unwrap();
        h.commit(tx(round, "ann", format!("round {round}").as_bytes()))
            .unwrap();
        let t = loop {
            match ev.recv_timeout(Duration::from_secs(10)) {
                Some(StoreEvent::Committed(t)) => break t,
                Some(_) => continue,
                None => panic!("round {round}: no commit"),
            }
        };
        assert_eq!(t.tx_id, round);
    }
    let report = writer.shutdown(Duration::from_secs(10));
    assert!(report.is_complete(), "{report:?}");
    let rows: i64 = fx
        .client()
        .query_one(
            &format!("SELECT COUNT(*) FROM {}.tx_ledger", fx.schema),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 3, "each transaction exactly once");
    let mut b = fx.open().unwrap();
    assert_eq!(b.load("ann").unwrap(), Some(rec("ann", b"round 3")));
}
