//! The harness shared by the ingest suites: the service as a process, the
//! database under test, and an independent publisher.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_tls::{ClientCert, ConnectOptions, MqttClient, QoS};
use peers::mosquitto::{BrokerOptions, Mosquitto, Pki};

pub(crate) use peers::ingest::{Db, Ingest};

/// Starting the `mqtt-ingest` built for these suites.
pub(crate) trait IngestCommands {
    /// An instance with the client id `ingest-under-test`.
    fn start(bundle: &ClientCert, broker: &Mosquitto, db: &Db) -> Ingest {
        Ingest::spawn(&mut Self::command(bundle, broker, db, "ingest-under-test"))
    }

    /// The command line of an instance with `client_id`, subscribed to
    /// `load/#` at QoS 1, HTTP on a free port.
    fn command(bundle: &ClientCert, broker: &Mosquitto, db: &Db, client_id: &str) -> Command {
        Self::command_at(bundle, broker.port, db, client_id)
    }

    /// [`IngestCommands::command`] for a broker (or a proxy in front of it)
    /// on `port`.
    fn command_at(bundle: &ClientCert, port: u16, db: &Db, client_id: &str) -> Command {
        Self::command_listening(bundle, port, db, client_id, "127.0.0.1:0")
    }

    /// [`IngestCommands::command_at`] with HTTP on `listen`.
    fn command_listening(
        bundle: &ClientCert,
        port: u16,
        db: &Db,
        client_id: &str,
        listen: &str,
    ) -> Command {
        Ingest::command_line(
            std::path::Path::new(env!("CARGO_BIN_EXE_mqtt-ingest")),
            bundle,
            port,
            db,
            client_id,
            "load/#",
            listen,
        )
    }
}

impl IngestCommands for Ingest {}

/// Rows as (number, duplicate flag).
pub(crate) async fn rows(db: &Db) -> Vec<(u32, bool)> {
    let rows: Vec<(Vec<u8>, bool)> =
        fetch_rows(db, "SELECT payload, duplicate FROM messages ORDER BY id").await;
    rows.into_iter()
        .map(|(payload, duplicate)| {
            let number = String::from_utf8(payload).unwrap().parse().unwrap();
            (number, duplicate)
        })
        .collect()
}

/// The `dead_letters` table: (topic, payload, reason) in order.
pub(crate) async fn dead_letters(db: &Db) -> Vec<(String, String, String)> {
    let rows: Vec<(String, Vec<u8>, String)> = fetch_rows(
        db,
        "SELECT topic, payload, reason FROM dead_letters ORDER BY id",
    )
    .await;
    rows.into_iter()
        .map(|(topic, payload, reason)| (topic, String::from_utf8(payload).unwrap(), reason))
        .collect()
}

/// Another process's write lock on the SQLite database (`BEGIN
/// EXCLUSIVE`), held until [`SqliteLock::release`]: the ingest can store
/// nothing meanwhile.
pub(crate) struct SqliteLock {
    pool: sqlx::SqlitePool,
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
}

impl SqliteLock {
    pub(crate) async fn take(db: &Db) -> Self {
        let pool = sqlx::SqlitePool::connect(&db.url()).await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut *conn)
            .await
            .unwrap();
        Self { pool, conn }
    }

    /// The database is back.
    pub(crate) async fn release(mut self) {
        sqlx::query("COMMIT")
            .execute(&mut *self.conn)
            .await
            .unwrap();
        drop(self.conn);
        self.pool.close().await;
    }
}

pub(crate) async fn wait_for_rows(db: &Db, at_least: usize) -> Vec<(u32, bool)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = rows(db).await;
        let distinct: BTreeSet<u32> = r.iter().map(|(n, _)| *n).collect();
        if distinct.len() >= at_least {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {at_least} messages stored",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An independent publisher: our client under its own identity, numbered
/// QoS 1 messages, 100 in flight; a publish that fails is sent again.
pub(crate) struct Publisher {
    client: MqttClient,
    acked: Arc<Mutex<BTreeSet<u32>>>,
}

impl Publisher {
    pub(crate) async fn connect(pki: &Pki, broker: &Mosquitto) -> Self {
        Self::connect_as(pki, broker, "load-publisher").await
    }

    /// A publisher with its own identity and client id `name`.
    pub(crate) async fn connect_as(pki: &Pki, broker: &Mosquitto, name: &str) -> Self {
        let identity = pki.client(name).load().unwrap();
        let mut options = ConnectOptions::new("localhost", broker.port, name);
        options.clean_session = false;
        options.reconnect.initial = Duration::from_millis(50);
        options.reconnect.max = Duration::from_millis(500);
        let (client, mut connection) = MqttClient::new(&options, &identity).unwrap();
        connection.connect().await.unwrap();
        tokio::spawn(connection.run());
        Self {
            client,
            acked: Arc::new(Mutex::new(BTreeSet::new())),
        }
    }

    /// Publishes one QoS 1 message and waits for its PUBACK.
    pub(crate) async fn publish(&self, topic: &str, payload: &str) {
        self.publish_at(topic, payload, QoS::AtLeastOnce).await;
    }

    /// Publishes one message at `qos` and waits for the broker's answer.
    pub(crate) async fn publish_at(&self, topic: &str, payload: &str, qos: QoS) {
        self.client
            .publish(topic, payload.to_owned(), qos, false)
            .await
            .unwrap();
    }

    pub(crate) fn send(&self, range: std::ops::Range<u32>) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let acked = self.acked.clone();
        tokio::spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(100));
            let mut tasks = tokio::task::JoinSet::new();
            for n in range {
                let permit = permits.clone().acquire_owned().await.unwrap();
                let client = client.clone();
                let acked = acked.clone();
                tasks.spawn(async move {
                    for _ in 0..500 {
                        if client
                            .publish(
                                &format!("load/{}", n % 10),
                                n.to_string(),
                                QoS::AtLeastOnce,
                                false,
                            )
                            .await
                            .is_ok()
                        {
                            acked.lock().unwrap().insert(n);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    drop(permit);
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    }

    pub(crate) fn acked(&self) -> BTreeSet<u32> {
        self.acked.lock().unwrap().clone()
    }
}

/// A broker with `persistence true`, so sessions survive its restart.
pub(crate) fn persistent_broker(pki: &Pki) -> Mosquitto {
    Mosquitto::start(
        pki,
        &BrokerOptions {
            persistence: true,
            ..Default::default()
        },
    )
}

/// Checks that every acknowledged number is stored, and that a number
/// stored twice has a copy flagged as a redelivery; returns (distinct
/// numbers stored, numbers stored twice).
pub(crate) fn check_at_least_once(rows: &[(u32, bool)], acked: &BTreeSet<u32>) -> (usize, usize) {
    let mut copies: std::collections::BTreeMap<u32, Vec<bool>> = Default::default();
    for (n, dup) in rows {
        copies.entry(*n).or_default().push(*dup);
    }
    let stored: BTreeSet<u32> = copies.keys().copied().collect();
    assert!(
        acked.is_subset(&stored),
        "{} acknowledged messages missing from the database",
        acked.difference(&stored).count()
    );
    let twice: Vec<_> = copies.iter().filter(|(_, c)| c.len() > 1).collect();
    for (n, flags) in &twice {
        assert!(
            flags.iter().any(|d| *d),
            "message {n} stored twice without the duplicate flag"
        );
    }
    (stored.len(), twice.len())
}

/// Every row `sql` selects, as `T` (a tuple of the columns), from SQLite
/// or PostgreSQL alike; none when the table is not there yet.
pub(crate) async fn fetch_rows<T>(db: &Db, sql: &'static str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + Send
        + Unpin,
{
    match db {
        Db::Sqlite(_) => {
            let pool = sqlx::SqlitePool::connect(&db.url()).await.unwrap();
            let rows = sqlx::query_as(sql)
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
            pool.close().await;
            rows
        }
        Db::Postgres(_) => {
            let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
            let rows = sqlx::query_as(sql)
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
            pool.close().await;
            rows
        }
    }
}
