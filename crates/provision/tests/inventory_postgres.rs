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

    // A fleet reads its names' history in one query (the names bound as
    // PostgreSQL's $1, $2, ...): run again, it finds and keeps all three.
    std::fs::write(
        d.join("fleet.toml"),
        "[ca]\ndir = \"root_cert\"\n[[devices]]\nprefix = \"pg-\"\ncount = 3\n",
    )
    .unwrap();
    ok_env(d, &["fleet", "fleet.toml"], &envs);
    let again: serde_json::Value =
        serde_json::from_str(&ok_env(d, &["fleet", "fleet.toml", "--json"], &envs)).unwrap();
    assert_eq!(
        (again["issued"].as_u64(), again["kept"].as_u64()),
        (Some(0), Some(3)),
        "{again}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok_env(d, &["list", "--name", "pg-2", "--json"], &envs)).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
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
    // Each host's own broker: a revocation on host A reaches host B's
    // broker folder at B's timer (`crl --if-due`), though B's own CRL is
    // not due.
    ok_env(
        a.path(),
        &["issue", "server", "broker-a", "--dns", "localhost"],
        &envs,
    );
    ok_env(
        b.path(),
        &["issue", "server", "broker-b", "--dns", "localhost"],
        &envs,
    );
    ok_env(
        a.path(),
        &[
            "broker-config",
            "--server",
            "broker-a",
            "--out",
            "broker",
            "--without-plugin",
        ],
        &envs,
    );
    ok_env(
        b.path(),
        &[
            "broker-config",
            "--server",
            "broker-b",
            "--out",
            "broker",
            "--without-plugin",
        ],
        &envs,
    );
    // Host A cannot see host B's folder (another machine): moved away
    // while A revokes.
    std::fs::rename(b.path().join("broker"), b.path().join("elsewhere")).unwrap();
    ok_env(
        a.path(),
        &["revoke", "--name", "new-0", "--reason", "key-compromise"],
        &envs,
    );
    std::fs::rename(b.path().join("elsewhere"), b.path().join("broker")).unwrap();
    let broker_crl = |dir: &std::path::Path| {
        pki_core::Crl::from_pem(&std::fs::read_to_string(dir.join("broker/crl.pem")).unwrap())
            .unwrap()
    };
    let on_a = broker_crl(a.path());
    assert_ne!(broker_crl(b.path()).number(), on_a.number());
    let out = ok_env(b.path(), &["crl", "--if-due"], &envs);
    assert!(out.contains("another host"), "{out}");
    let on_b = broker_crl(b.path());
    assert_eq!(
        on_b.number(),
        on_a.number(),
        "host B's broker has host A's CRL"
    );
    assert_eq!(on_b.entries().len(), 9);

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

/// The inventory's link to PostgreSQL is TLS with the server's certificate
/// checked against the operator's CA alone, and the CA host authenticates
/// with a certificate our CA issued (PostgreSQL's `cert` method, no
/// password), against a server that refuses plaintext (`hostnossl ...
/// reject`) and anyone without a certificate.
#[test]
fn the_inventory_link_is_verified_tls_with_a_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // The database's PKI: a CA of ours, the server's certificate, and the
    // CA host's identity (its CN, the database user).
    let db_ca = ["--ca-dir", "db_ca"];
    ok_env(
        d,
        // `--dir`: the old spelling of `--ca-dir`, kept as a hidden alias.
        &["init-ca", "--dir", "db_ca", "--cn", "Database CA"],
        &[],
    );
    let mut args = vec![
        "issue",
        "server",
        "pg",
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
    ];
    args.extend(db_ca);
    ok_env(d, &args, &[]);
    let mut args = vec!["issue", "client", "ca-host", "--role", "service"];
    args.extend(db_ca);
    ok_env(d, &args, &[]);
    // Another CA's server certificate, for a server no one should trust.
    ok_env(
        d,
        &["init-ca", "--dir", "other_ca", "--cn", "Other CA"],
        &[],
    );
    let pg = Postgres::start_tls(
        &d.join("backend_certs/pg_cert.pem"),
        &d.join("backend_certs/pg.key"),
        &d.join("db_ca/root_ca_cert.pem"),
    );
    pg.psql("CREATE ROLE \"ca-host\" LOGIN");
    pg.psql("CREATE DATABASE inventory OWNER \"ca-host\"");
    let path = |p: &str| d.join(p).display().to_string();
    let url = |mode: &str, root: &str, client: bool| {
        let mut url = format!(
            "postgres://ca-host@localhost:{}/inventory?sslmode={mode}&sslrootcert={}",
            pg.port,
            path(root)
        );
        if client {
            url.push_str(&format!(
                "&sslcert={}&sslkey={}",
                path("backend_certs/ca-host_cert.pem"),
                path("backend_certs/ca-host.key")
            ));
        }
        url
    };
    let good = url("verify-full", "db_ca/root_ca_cert.pem", true);
    let envs = [("PROVISION_INVENTORY", good.as_str())];
    let host = tempfile::tempdir().unwrap();
    let h = host.path();
    ok_env(h, &["init-ca", "--cn", "Fleet Root"], &envs);
    ok_env(h, &["issue", "client", "dev1"], &envs);
    let listed = ok_env(h, &["list"], &envs);
    assert!(listed.contains("dev1"), "{listed}");

    let refused = |url: &str| {
        let out = provision_env(h, &["list"], &[("PROVISION_INVENTORY", url)]);
        assert_eq!(out.status.code(), Some(1), "{url}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // The server refuses plaintext, and a client without a certificate.
    let plain = format!(
        "postgres://ca-host@localhost:{}/inventory?sslmode=disable",
        pg.port
    );
    let e = refused(&plain);
    assert!(e.contains("pg_hba.conf") || e.contains("reject"), "{e}");
    let e = refused(&url("verify-full", "db_ca/root_ca_cert.pem", false));
    assert!(e.contains("certificate"), "{e}");
    // A server whose certificate is not from the operator's CA file is
    // refused by us, client certificate or not.
    let e = refused(&url("verify-full", "other_ca/root_ca_cert.pem", true));
    assert!(
        e.contains("UnknownIssuer") || e.contains("certificate"),
        "{e}"
    );
    // To a host that is not this machine, no link but verified TLS, unless
    // the operator says --insecure-db; nothing is tried before that.
    let fresh = tempfile::tempdir().unwrap();
    for (remote, says) in [
        (
            "postgres://ca-host@db.invalid/inventory?sslmode=require",
            "without checking",
        ),
        ("postgres://ca-host@db.invalid/inventory", "plaintext"),
    ] {
        let out = provision_env(fresh.path(), &["init-ca", "--inventory", remote], &[]);
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{e}");
        assert!(e.contains("--insecure-db") && e.contains(says), "{e}");
        assert!(!fresh.path().join("root_cert").exists(), "nothing written");
    }
}
