//! The inventory's schema: an inventory of an earlier version (the CRL's
//! revocations indexed by time alone) is brought up to date when a command
//! opens it, waiting for another process's write lock like any writer
//! instead of failing at once; a current one is opened without a write.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::ok;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};

async fn connect(db: &std::path::Path) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(db))
        .await
        .unwrap()
}

async fn indexes(db: &std::path::Path) -> Vec<String> {
    let mut c = connect(db).await;
    sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'certificates_revoked%'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.get::<String, _>(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_earlier_schema_is_migrated_behind_another_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_owned();
    ok(&d, &["init-ca"]);
    ok(&d, &["issue", "client", "a"]);
    ok(&d, &["revoke", "backend_certs/a_cert.pem"]);
    let db = d.join("root_cert/inventory.db");
    assert_eq!(indexes(&db).await, ["certificates_revoked_crl"]);

    // As an earlier version left it.
    let mut c = connect(&db).await;
    sqlx::raw_sql(
        "DROP INDEX certificates_revoked_crl; \
         CREATE INDEX certificates_revoked ON certificates (revoked_at) \
         WHERE revoked_at IS NOT NULL",
    )
    .execute(&mut c)
    .await
    .unwrap();

    // Another process writes for a while, then commits.
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut c)
        .await
        .unwrap();
    let d2 = d.clone();
    let reader = tokio::task::spawn_blocking(move || common::provision(&d2, &["list", "--json"]));
    tokio::time::sleep(Duration::from_millis(700)).await;
    sqlx::query("INSERT INTO ca_state (name, value) VALUES ('test', 'x')")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut c).await.unwrap();
    let out = reader.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(indexes(&db).await, ["certificates_revoked_crl"]);
    // The CRL still lists the revocation, read from the new index.
    let crl = ok(&d, &["crl", "--json"]);
    assert!(
        crl.contains("\"revoked\": 1") || crl.contains("\"revoked\":1"),
        "{crl}"
    );

    // Current: opened under another writer's lock without waiting for it.
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut c)
        .await
        .unwrap();
    let d3 = d.clone();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || common::provision(&d3, &["list", "--json"]))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
}
