//! The inventory in PostgreSQL (`--inventory URL`, `PROVISION_INVENTORY`),
//! against a real server: CA services on several hosts can share one CA.

#![allow(clippy::unwrap_used)]

mod common;

use common::{fails, ok_env, provision_env};
use peers::postgres::Postgres;

/// Concurrent issuers and revokers keep one whole inventory in PostgreSQL
/// (its advisory lock orders them, as the folder's lock does for SQLite).
#[test]
fn concurrent_issuers_and_revokers_share_one_postgres_inventory() {
    let pg = Postgres::start();
    let url = pg.url();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let envs = [("PROVISION_INVENTORY", url.as_str())];
    common::concurrent_issuers_and_revokers(d, &envs);
    // Nothing went to SQLite in the CA folder.
    assert!(!d.join("root_cert/inventory.db").exists());

    // A command without the URL is refused (instead of starting a second,
    // empty inventory in the folder), and says where the inventory is.
    let e = fails(d, &["list"], 1);
    assert!(
        e.contains("PostgreSQL") && e.contains(&format!("127.0.0.1:{}", pg.port)),
        "{e}"
    );
    assert!(!d.join("root_cert/inventory.db").exists());

    // Another CA pointed at this CA's database is refused, naming both.
    let other = tempfile::tempdir().unwrap();
    ok_env(other.path(), &["init-ca", "--cn", "Other Root"], &[]);
    let out = provision_env(other.path(), &["issue", "client", "intruder"], &envs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("belongs to another CA"), "{stderr}");
    let listed: serde_json::Value =
        serde_json::from_str(&ok_env(d, &["list", "--json"], &envs)).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        16,
        "nothing recorded for it"
    );
}

/// Two hosts, each with its own copy of the CA folder (no shared file
/// lock), issue and revoke into one PostgreSQL inventory at once: only
/// the database's lock orders them. Every issuance recorded once, every
/// revocation kept, and a CRL made on one host reaches the other's folder.
#[test]
fn two_hosts_share_one_ca_through_postgres() {
    let pg = Postgres::start();
    let url = pg.url();
    let envs = [("PROVISION_INVENTORY", url.as_str())];
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    ok_env(a.path(), &["init-ca"], &envs);
    std::fs::create_dir(b.path().join("root_cert")).unwrap();
    for f in ["root_ca_cert.pem", "root_ca.key"] {
        std::fs::copy(
            a.path().join("root_cert").join(f),
            b.path().join("root_cert").join(f),
        )
        .unwrap();
    }
    for i in 0..8 {
        ok_env(a.path(), &["issue", "client", &format!("old-{i}")], &envs);
    }
    let spawn = |dir: &std::path::Path, args: Vec<String>| common::spawn(dir, &args, &envs);
    let mut children = Vec::new();
    for i in 0..8 {
        let host = if i % 2 == 0 { a.path() } else { b.path() };
        children.push(spawn(
            host,
            vec!["issue".into(), "client".into(), format!("new-{i}")],
        ));
        children.push(spawn(
            host,
            vec![
                "revoke".into(),
                a.path()
                    .join(format!("backend_certs/old-{i}_cert.pem"))
                    .display()
                    .to_string(),
            ],
        ));
    }
    common::succeed_all(children);
    let list: serde_json::Value =
        serde_json::from_str(&ok_env(b.path(), &["list", "--json"], &envs)).unwrap();
    let records = list.as_array().unwrap();
    let mut serials: Vec<String> = records.iter().map(|r| r["serial"].to_string()).collect();
    serials.sort();
    serials.dedup();
    assert_eq!((records.len(), serials.len()), (16, 16), "{list:#}");
    let revoked = records
        .iter()
        .filter(|r| r["status"]["state"] == "revoked")
        .count();
    assert_eq!(revoked, 8, "{list:#}");
    // A CRL signed on host A reaches host B's folder at B's next command
    // (the database keeps the latest): both list all eight.
    let crl = |dir: &std::path::Path| -> (usize, u64) {
        let text = ok_env(dir, &["inspect", "root_cert/crl.pem"], &[]);
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("number:"))
            .unwrap();
        (
            text.matches(" (unspecified, ").count(),
            line.split(':').nth(1).unwrap().trim().parse().unwrap(),
        )
    };
    ok_env(a.path(), &["crl"], &envs);
    let on_a = crl(a.path());
    assert_eq!(on_a.0, 8);
    assert!(on_a.1 > 8, "{on_a:?}: one counter for both hosts");
    ok_env(b.path(), &["issue", "client", "late"], &envs);
    assert_eq!(
        crl(b.path()),
        on_a,
        "host B's folder has host A's latest CRL"
    );

    // Another database for this CA (a typo, a wrong environment): refused,
    // naming the one it uses.
    let wrong = url.replace("/postgres", "/template1");
    let out = provision_env(
        a.path(),
        &["list"],
        &[("PROVISION_INVENTORY", wrong.as_str())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not here") && stderr.contains("/postgres"),
        "{stderr}"
    );
}
