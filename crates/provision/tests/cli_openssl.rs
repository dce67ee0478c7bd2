//! The original design's flow through the `provision` CLI, and an encrypted
//! CA key, with what they write cross-checked by OpenSSL (feature
//! `external-tools`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{fails, mode, ok};
use peers::{openssl, run_ok};

#[test]
fn the_original_layout_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(
        d,
        &[
            "init-ca",
            "--cn",
            "MyRootCA",
            "--org",
            "MyOrg",
            "--country",
            "US",
        ],
    );
    assert_eq!(mode(&d.join("root_cert/root_ca.key")), 0o600);
    ok(
        d,
        &[
            "issue",
            "client",
            "client1",
            "--org",
            "MyOrg",
            "--country",
            "US",
        ],
    );
    ok(
        d,
        &[
            "issue",
            "server",
            "broker",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
        ],
    );
    for f in [
        "client1.key",
        "client1_csr.pem",
        "client1_cert.pem",
        "broker.key",
        "broker_cert.pem",
    ] {
        assert!(d.join("backend_certs").join(f).is_file(), "{f}");
    }
    assert_eq!(mode(&d.join("backend_certs/client1.key")), 0o600);
    assert_eq!(mode(&d.join("backend_certs/client1_cert.pem")), 0o644);

    // OpenSSL agrees.
    let ca = d.join("root_cert/root_ca_cert.pem");
    run_ok(
        Command::new(openssl())
            .args(["verify", "-purpose", "sslclient", "-CAfile"])
            .arg(&ca)
            .arg(d.join("backend_certs/client1_cert.pem")),
    );
    run_ok(
        Command::new(openssl())
            .args([
                "verify",
                "-purpose",
                "sslserver",
                "-verify_hostname",
                "localhost",
                "-CAfile",
            ])
            .arg(&ca)
            .arg(d.join("backend_certs/broker_cert.pem")),
    );
    let subject = run_ok(
        Command::new(openssl())
            .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
            .arg(d.join("backend_certs/client1_cert.pem")),
    );
    assert_eq!(subject.trim(), "subject=CN=client1,O=MyOrg,C=US");

    // verify: exit 0 when valid, 1 with the reason when not.
    ok(
        d,
        &[
            "verify",
            "backend_certs/client1_cert.pem",
            "--profile",
            "client",
        ],
    );
    ok(
        d,
        &[
            "verify",
            "backend_certs/broker_cert.pem",
            "--profile",
            "server",
            "--dns",
            "localhost",
        ],
    );
    ok(
        d,
        &[
            "verify",
            "backend_certs/broker_cert.pem",
            "--profile",
            "server",
            "--ip",
            "127.0.0.1",
        ],
    );
    let e = fails(
        d,
        &[
            "verify",
            "backend_certs/client1_cert.pem",
            "--profile",
            "server",
        ],
        1,
    );
    assert!(e.contains("does not include serverAuth"), "{e}");
    let e = fails(
        d,
        &[
            "verify",
            "backend_certs/broker_cert.pem",
            "--dns",
            "example.com",
        ],
        1,
    );
    assert!(
        e.contains("not valid for example.com (it names: DNS:localhost, IP:127.0.0.1)"),
        "{e}"
    );

    // inspect every kind of file.
    let text = ok(d, &["inspect", "backend_certs/broker_cert.pem"]);
    assert!(
        text.contains("SANs:         DNS:localhost, IP:127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("ext. usage:   serverAuth"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&ok(
        d,
        &["inspect", "--json", "backend_certs/client1_cert.pem"],
    ))
    .unwrap();
    assert_eq!(json["kind"], "certificate");
    assert_eq!(json["extended_key_usage"][0], "clientAuth");
    let fp = run_ok(
        Command::new(openssl())
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(d.join("backend_certs/client1_cert.pem")),
    );
    assert!(fp.contains(json["sha256"].as_str().unwrap()), "{fp}");
    assert!(ok(d, &["inspect", "backend_certs/client1_csr.pem"]).contains("signature verified"));
    let key = ok(d, &["inspect", "backend_certs/client1.key"]);
    assert!(
        key.contains("ECDSA P-256") && !key.contains("PRIVATE"),
        "{key}"
    );

    // The inventory lists both.
    let list: serde_json::Value = serde_json::from_str(&ok(d, &["list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["profile"], "client");

    // Revocation: the inventory, the CRL, and OpenSSL all see it.
    ok(
        d,
        &[
            "revoke",
            "backend_certs/client1_cert.pem",
            "--reason",
            "key-compromise",
        ],
    );
    let list: serde_json::Value = serde_json::from_str(&ok(d, &["list", "--json"])).unwrap();
    assert_eq!(list[0]["status"]["state"], "revoked");
    let out = Command::new(openssl())
        .args(["verify", "-crl_check", "-CAfile"])
        .arg(&ca)
        .arg("-CRLfile")
        .arg(d.join("root_cert/crl.pem"))
        .arg(d.join("backend_certs/client1_cert.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = fails(
        d,
        &[
            "verify",
            "backend_certs/client1_cert.pem",
            "--crl",
            "root_cert/crl.pem",
        ],
        1,
    );
    assert!(e.contains("is revoked"), "{e}");
    let crl = ok(d, &["crl"]);
    assert!(crl.contains("number 2, 1 revoked"), "{crl}");
}

#[test]
fn encrypted_ca_key_needs_its_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = |args: &[&str], pass: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_provision"));
        cmd.current_dir(d).args(args);
        match pass {
            Some(p) => cmd.env("CA_PASS", p),
            None => cmd.env_remove("CA_PASS"),
        };
        cmd.output().unwrap()
    };
    let out = run(
        &["init-ca", "--passphrase-env", "CA_PASS"],
        Some("s3cret passphrase"),
    );
    assert!(out.status.success());
    let key = std::fs::read_to_string(d.join("root_cert/root_ca.key")).unwrap();
    assert!(key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    run_ok(
        Command::new(openssl())
            .args(["pkey", "-noout", "-passin", "pass:s3cret passphrase", "-in"])
            .arg(d.join("root_cert/root_ca.key")),
    );

    let out = run(&["issue", "client", "c1"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the CA key is encrypted: pass --passphrase-env")
    );
    let out = run(
        &["issue", "client", "c1", "--passphrase-env", "CA_PASS"],
        Some("wrong"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.join("backend_certs/c1.key").exists());
    let out = run(
        &["issue", "client", "c1", "--passphrase-env", "CA_PASS"],
        Some("s3cret passphrase"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
