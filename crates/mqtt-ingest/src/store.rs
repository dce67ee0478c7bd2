//! Message storage through sqlx: SQLite (a file, WAL) or PostgreSQL.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::error::{Error, Result};

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Its topic.
    pub topic: String,
    /// Its payload (shared with the received message: not copied).
    pub payload: bytes::Bytes,
    /// Its QoS (0, 1, 2).
    pub qos: u8,
    /// The retain flag.
    pub retain: bool,
    /// The broker's duplicate flag: it may have been delivered before.
    pub duplicate: bool,
    /// When it arrived, microseconds since the Unix epoch.
    pub received_at_us: i64,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredMessage {
    /// Row id, increasing.
    pub id: i64,
    /// Topic.
    pub topic: String,
    /// Payload bytes.
    #[serde(skip)]
    pub payload: Vec<u8>,
    /// QoS.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Duplicate flag.
    pub duplicate: bool,
    /// Arrival time, microseconds since the Unix epoch.
    pub received_at_us: i64,
}

/// The database: SQLite by default (a file in WAL mode with
/// synchronous=FULL: a committed batch survives a crash and a power loss),
/// PostgreSQL by URL (verified TLS to a remote host, see [`db_link`]).
#[derive(Debug, Clone)]
pub struct Store {
    pool: db_link::Pool,
}

const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    duplicate INTEGER NOT NULL,
    received_at_us INTEGER NOT NULL
)";

const POSTGRES_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS messages (
    id BIGSERIAL PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BYTEA NOT NULL,
    qos SMALLINT NOT NULL,
    retain BOOLEAN NOT NULL,
    duplicate BOOLEAN NOT NULL,
    received_at_us BIGINT NOT NULL
)";

const INDEX: &str = "CREATE INDEX IF NOT EXISTS messages_topic_id ON messages (topic, id)";

/// Messages that could not go into `messages`, with the reason: today,
/// those no subscription matches (a filter left in the persistent session).
const SQLITE_DEAD_LETTERS: &str = "CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    duplicate INTEGER NOT NULL,
    received_at_us INTEGER NOT NULL,
    reason TEXT NOT NULL
)";

const POSTGRES_DEAD_LETTERS: &str = "CREATE TABLE IF NOT EXISTS dead_letters (
    id BIGSERIAL PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BYTEA NOT NULL,
    qos SMALLINT NOT NULL,
    retain BOOLEAN NOT NULL,
    duplicate BOOLEAN NOT NULL,
    received_at_us BIGINT NOT NULL,
    reason TEXT NOT NULL
)";

const INSERT_MESSAGES: &str =
    "INSERT INTO messages (topic, payload, qos, retain, duplicate, received_at_us) ";

/// Rows in one INSERT: 3,000 parameters, under both databases' limits
/// (SQLite 32,766, PostgreSQL 65,535).
const ROWS_PER_STATEMENT: usize = 500;

/// Bytes of topics and payloads in one INSERT, unless a single row is
/// larger: far under PostgreSQL's 1 GiB message limit.
const BYTES_PER_STATEMENT: usize = 16 << 20;

// Six parameters a row: within SQLite's 32,766 (a system SQLite built with
// the old limit of 999 would refuse a full statement as too many
// variables, an error that is retried, never a dead letter).
const _: () = assert!(ROWS_PER_STATEMENT * 6 <= 32_766);

/// `batch` cut into the rows of each INSERT, in order: at most
/// [`ROWS_PER_STATEMENT`] rows and [`BYTES_PER_STATEMENT`] bytes (or one
/// larger row alone).
fn statements(batch: &[NewMessage]) -> impl Iterator<Item = &[NewMessage]> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut len = 0;
        for m in rest.iter().take(ROWS_PER_STATEMENT) {
            bytes += m.topic.len() + m.payload.len();
            if len > 0 && bytes > BYTES_PER_STATEMENT {
                break;
            }
            len += 1;
        }
        let (rows, after) = rest.split_at(len);
        rest = after;
        Some(rows)
    })
}

const INSERT_DEAD_LETTER: &str = "INSERT INTO dead_letters \
    (topic, payload, qos, retain, duplicate, received_at_us, reason) \
    VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// The messages after an id, of one topic; `qos` read as a 64-bit integer
/// from either database.
const LIST_TOPIC: &str = "SELECT id, topic, payload, CAST(qos AS BIGINT) AS qos, retain, \
    duplicate, received_at_us FROM messages WHERE topic = $1 AND id > $2 ORDER BY id LIMIT $3";

/// The messages after an id, of every topic.
const LIST_ALL: &str = "SELECT id, topic, payload, CAST(qos AS BIGINT) AS qos, retain, \
    duplicate, received_at_us FROM messages WHERE id > $1 ORDER BY id LIMIT $2";

/// The PostgreSQL advisory lock that orders writers of `messages`
/// (an arbitrary key: "mqttmsgs" in ASCII).
const MESSAGES_WRITE_LOCK: i64 = 0x6d71_7474_6d73_6773;

impl Store {
    /// Opens (creating a SQLite file if needed) and applies the schema; a
    /// remote PostgreSQL only over verified TLS ([`db_link`]).
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, db_link::Transport::VerifiedTls).await
    }

    /// [`Store::open`], a remote PostgreSQL reached as `transport` allows
    /// (`--insecure-db`: [`db_link::Transport::AllowInsecure`]).
    pub async fn open_with(url: &str, transport: db_link::Transport) -> Result<Self> {
        let db = |e: sqlx::Error| Error::Database {
            url: redact(url),
            reason: e.to_string(),
        };
        let store = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(db)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                // Fail fast when locked so the writer can report it and retry.
                .busy_timeout(Duration::from_millis(500));
            db_link::Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await
                    .map_err(db)?,
            )
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options =
                db_link::postgres_options(url, transport).map_err(|e| Error::Database {
                    url: redact(url),
                    reason: e.to_string(),
                })?;
            db_link::Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options)
                    .await
                    .map_err(db)?,
            )
        } else {
            return Err(Error::Config {
                reason: format!(
                    "unsupported database URL {:?}: use sqlite://FILE or postgres://...",
                    redact(url)
                ),
            });
        };
        let store = Self { pool: store };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let (messages, dead_letters) = match &self.pool {
            db_link::Pool::Sqlite(_) => (SQLITE_SCHEMA, SQLITE_DEAD_LETTERS),
            db_link::Pool::Postgres(_) => (POSTGRES_SCHEMA, POSTGRES_DEAD_LETTERS),
        };
        for sql in [messages, dead_letters, INDEX] {
            db_link::either!(&self.pool, Pool(pool) => sqlx::query(sql).execute(pool).await.map(drop))
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// Stores a batch in one transaction: all or nothing.
    pub async fn insert_batch(&self, batch: &[NewMessage]) -> Result<()> {
        db_link::either!(&self.pool, Pool(pool) => {
            let mut tx = pool.begin().await.map_err(db_err)?;
            if matches!(self.pool, db_link::Pool::Postgres(_)) {
                // Writers take turns, so ids become visible in id order: a
                // reader paging by id (`/api/messages?after=`) never passes
                // an id whose row another instance has yet to commit.
                // Released at commit or rollback. A writer stuck inside its
                // transaction (a partitioned host) must not stop the others
                // for long: the server ends its transaction after a minute
                // idle, and a wait for the lock fails after 30 s (the batch
                // is then retried, unacknowledged meanwhile).
                for setting in [
                    "SET LOCAL lock_timeout = '30s'",
                    "SET LOCAL idle_in_transaction_session_timeout = '60s'",
                ] {
                    sqlx::query(setting)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(MESSAGES_WRITE_LOCK)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
            // Many rows a statement: one trip to the database (and, on
            // SQLite, to sqlx's worker thread) for each, not one a row.
            for rows in statements(batch) {
                let mut insert = sqlx::QueryBuilder::new(INSERT_MESSAGES);
                insert.push_values(rows, |mut row, m| {
                    row.push_bind(&m.topic)
                        .push_bind(m.payload.as_ref())
                        .push_bind(i16::from(m.qos))
                        .push_bind(m.retain)
                        .push_bind(m.duplicate)
                        .push_bind(m.received_at_us);
                });
                insert.build().execute(&mut *tx).await.map_err(row_err)?;
            }
            tx.commit().await.map_err(db_err)
        })
    }

    /// Stores a message that cannot go into `messages`, with `reason`.
    /// ([`Error::Refused`] when the database refuses it there too.)
    pub async fn insert_dead_letter(&self, m: &NewMessage, reason: &str) -> Result<()> {
        db_link::either!(&self.pool, Pool(pool) => sqlx::query(INSERT_DEAD_LETTER)
            .bind(&m.topic)
            .bind(m.payload.as_ref())
            .bind(i16::from(m.qos))
            .bind(m.retain)
            .bind(m.duplicate)
            .bind(m.received_at_us)
            .bind(reason)
            .execute(pool)
            .await
            .map(drop))
        .map_err(row_err)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        db_link::either!(&self.pool, Pool(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)).map_err(db_err)
    }

    /// Messages with `id > after`, optionally of one topic, oldest first.
    pub async fn list(
        &self,
        topic: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>> {
        let sql = match topic {
            Some(_) => LIST_TOPIC,
            None => LIST_ALL,
        };
        db_link::either!(&self.pool, Pool(pool) => {
            let mut query = sqlx::query(sql);
            if let Some(t) = topic {
                query = query.bind(t);
            }
            let rows = query
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(db_err)?;
            rows.iter()
                .map(|r| {
                    Ok(StoredMessage {
                        id: r.try_get("id").map_err(db_err)?,
                        topic: r.try_get("topic").map_err(db_err)?,
                        payload: r.try_get("payload").map_err(db_err)?,
                        qos: u8::try_from(r.try_get::<i64, _>("qos").map_err(db_err)?)
                            .unwrap_or(0),
                        retain: r.try_get("retain").map_err(db_err)?,
                        duplicate: r.try_get("duplicate").map_err(db_err)?,
                        received_at_us: r.try_get("received_at_us").map_err(db_err)?,
                    })
                })
                .collect()
        })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match &self.pool {
            db_link::Pool::Sqlite(pool) => pool.close().await,
            db_link::Pool::Postgres(pool) => pool.close().await,
        }
    }
}

/// An error inserting a row: [`Error::Refused`] when no retry can make
/// the database take it, else [`Error::Store`] (retried).
fn row_err(e: sqlx::Error) -> Error {
    if refused_for_good(&e) {
        Error::Refused {
            reason: e.to_string(),
        }
    } else {
        db_err(e)
    }
}

/// Whether the database refused the row itself, for good: PostgreSQL's
/// SQLSTATE classes 22 (data exception), 23 (integrity constraint) and 54
/// (program limit, such as an index row too large); SQLite's
/// SQLITE_TOOBIG (18), SQLITE_CONSTRAINT (19, a trigger's RAISE(ABORT)
/// included) and SQLITE_MISMATCH (20), by the low byte of the extended
/// code. Everything else (a lost connection, a lock timeout, a full disk)
/// may pass and is retried.
fn refused_for_good(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else {
        return false;
    };
    let Some(code) = db.code() else {
        return false;
    };
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        return ["22", "23", "54"]
            .iter()
            .any(|class| code.starts_with(class));
    }
    code.parse::<i32>()
        .is_ok_and(|c| matches!(c & 0xff, 18..=20))
}

fn db_err(e: sqlx::Error) -> Error {
    Error::Store {
        reason: e.to_string(),
    }
}

/// The URL without a password, for messages
/// ([`db_link::redact_url`]).
pub fn redact(url: &str) -> String {
    db_link::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://me:secret@db/x"),
            "postgres://me:***@db/x"
        );
        assert!(!redact("postgres://me@db/x?password=secret").contains("secret"));
        assert_eq!(redact("sqlite://ingest.db"), "sqlite://ingest.db");
    }

    #[tokio::test]
    async fn stores_and_lists_batches() {
        let dir = tempfile_dir();
        let url = format!("sqlite://{}/t.db", dir.display());
        let store = Store::open(&url).await.unwrap();
        let msg = |topic: &str, n: u8| NewMessage {
            topic: topic.into(),
            payload: vec![n, 0, 255].into(),
            qos: 1,
            retain: false,
            duplicate: n == 2,
            received_at_us: 1,
        };
        store
            .insert_batch(&[msg("a", 1), msg("b", 2), msg("a", 3)])
            .await
            .unwrap();
        let all = store.list(None, 0, 10).await.unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].payload, vec![2, 0, 255]);
        assert!(all[1].duplicate && !all[0].duplicate);
        let a = store.list(Some("a"), 0, 10).await.unwrap();
        assert_eq!(a.iter().map(|m| m.payload[0]).collect::<Vec<_>>(), [1, 3]);
        let page = store.list(None, all[0].id, 1).await.unwrap();
        assert_eq!(page[0].id, all[1].id);
        store.ping().await.unwrap();
        // Reopening keeps the data and the schema.
        store.close().await;
        let again = Store::open(&url).await.unwrap();
        assert_eq!(again.list(None, 0, 10).await.unwrap().len(), 3);
        std::fs::remove_dir_all(dir).ok();
    }

    fn sized(n: usize, payload: usize) -> NewMessage {
        NewMessage {
            topic: format!("t/{n}"),
            payload: vec![b'x'; payload].into(),
            qos: 1,
            retain: false,
            duplicate: false,
            received_at_us: n as i64,
        }
    }

    #[test]
    fn a_batch_is_cut_by_rows_and_by_bytes_in_order() {
        let lens = |batch: &[NewMessage]| statements(batch).map(<[_]>::len).collect::<Vec<_>>();
        let small: Vec<_> = (0..1_201).map(|n| sized(n, 10)).collect();
        assert_eq!(lens(&small), [500, 500, 201]);
        // 6 MiB each: two fit under 16 MiB, a third does not.
        let big: Vec<_> = (0..5).map(|n| sized(n, 6 << 20)).collect();
        assert_eq!(lens(&big), [2, 2, 1]);
        // A row larger than the bound goes alone, never dropped.
        let huge = [sized(0, 1), sized(1, 20 << 20), sized(2, 1)];
        assert_eq!(lens(&huge), [1, 1, 1]);
        assert_eq!(lens(&[]), Vec::<usize>::new());
        let firsts: Vec<_> = statements(&small)
            .map(|rows| rows[0].received_at_us)
            .collect();
        assert_eq!(firsts, [0, 500, 1_000]);
    }

    #[tokio::test]
    async fn a_batch_over_several_statements_is_stored_whole_and_in_order() {
        let dir = tempfile_dir().join("several");
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/t.db", dir.display());
        let store = Store::open(&url).await.unwrap();
        let batch: Vec<_> = (0..1_234).map(|n| sized(n, 3)).collect();
        store.insert_batch(&batch).await.unwrap();
        let rows = store.list(None, 0, 2_000).await.unwrap();
        assert_eq!(
            rows.iter().map(|r| r.topic.clone()).collect::<Vec<_>>(),
            (0..1_234).map(|n| format!("t/{n}")).collect::<Vec<_>>()
        );
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mqtt-ingest-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
