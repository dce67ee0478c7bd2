//! What `init-ca --intermediate` refuses, writing nothing: without the
//! root key, twice without `--force`, an encrypted intermediate key without
//! its passphrase. Self-contained; the intermediate checked by OpenSSL and a
//! real Mosquitto is in `intermediate.rs` (feature `external-tools`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Output;

use common::{fails, ok, ok_env, provision_env};
use pki_core::Certificate;

const ROOT_KEY: &str = "root_cert/root_ca.key";
const INT_CERT: &str = "root_cert/intermediate_ca_cert.pem";
const INT_KEY: &str = "root_cert/intermediate_ca.key";
const PASS: [(&str, &str); 1] = [("CA_PASS", "open sesame")];

/// Every certificate in a PEM file, in order.
fn certs(path: &Path) -> Vec<Certificate> {
    Certificate::all_from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file under `dir` (relative name, contents), sorted: to show that
/// a refused command wrote nothing.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                files.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn init_ca_intermediate_refuses_without_the_root_key_or_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // No CA at all.
    let err = fails(d, &["init-ca", "--intermediate"], 1);
    assert!(err.contains("no CA in root_cert"), "{err}");
    assert!(!d.join(INT_CERT).exists());

    ok(d, &["init-ca", "--cn", "Refusing Root"]);
    // The root key away: refused, naming the file, nothing written.
    let offline = tempfile::tempdir().unwrap();
    std::fs::rename(d.join(ROOT_KEY), offline.path().join("root_ca.key")).unwrap();
    let before = snapshot(d);
    let err = fails(d, &["init-ca", "--intermediate"], 1);
    assert!(err.contains(ROOT_KEY), "{err}");
    assert_eq!(snapshot(d), before, "{err}");
    std::fs::rename(offline.path().join("root_ca.key"), d.join(ROOT_KEY)).unwrap();

    ok(d, &["init-ca", "--intermediate"]);
    // Twice without --force: refused, naming the file, nothing written.
    let before = snapshot(d);
    let err = fails(d, &["init-ca", "--intermediate"], 1);
    assert!(err.contains("intermediate_ca"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(snapshot(d), before, "{err}");

    // With --force: a new intermediate; the old one archived, not lost.
    let old = std::fs::read(d.join(INT_CERT)).unwrap();
    let out = ok(d, &["init-ca", "--intermediate", "--force"]);
    assert_ne!(std::fs::read(d.join(INT_CERT)).unwrap(), old, "{out}");
    let archived = snapshot(&d.join("root_cert/archive"));
    assert!(
        archived
            .iter()
            .any(|(name, bytes)| name.ends_with("intermediate_ca_cert.pem") && *bytes == old),
        "{out}"
    );
    // A new root replaces the intermediate with it (archived whole): the
    // next certificate is the new root's own.
    ok(d, &["init-ca", "--force", "--cn", "Second Root"]);
    assert!(!d.join(INT_CERT).exists());
    ok(d, &["issue", "client", "after-root"]);
    let chain = certs(&d.join("backend_certs/after-root_cert.pem"));
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0].issuer(), "CN=Second Root");
    // The old root's intermediate put back beside the new root: refused,
    // naming it, before anything is signed.
    let archived = std::fs::read_dir(d.join("root_cert/archive"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("intermediate_ca_cert.pem").exists())
        .unwrap();
    for name in ["intermediate_ca_cert.pem", "intermediate_ca.key"] {
        std::fs::copy(archived.join(name), d.join("root_cert").join(name)).unwrap();
    }
    let err = fails(d, &["issue", "client", "stray"], 1);
    assert!(err.contains(INT_CERT), "{err}");
    assert!(!d.join("backend_certs/stray_cert.pem").exists());
}

#[test]
fn an_encrypted_intermediate_key_needs_its_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok_env(d, &["init-ca", "--passphrase-env", "CA_PASS"], &PASS);
    // The root key is encrypted: without its passphrase (and no terminal
    // to ask at), refused, naming the key.
    let out = provision_env(d, &["init-ca", "--intermediate"], &PASS);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(ROOT_KEY), "{}", text(&out));
    assert!(!d.join(INT_CERT).exists());
    let envs = [("CA_PASS", "open sesame"), ("INT_PASS", "second secret")];
    ok_env(
        d,
        &[
            "init-ca",
            "--intermediate",
            "--root-passphrase-env",
            "CA_PASS",
            "--passphrase-env",
            "INT_PASS",
        ],
        &envs,
    );
    assert!(
        std::fs::read_to_string(d.join(INT_KEY))
            .unwrap()
            .contains("ENCRYPTED PRIVATE KEY")
    );
    // Signing now unlocks the intermediate's key, not the root's.
    let out = provision_env(d, &["issue", "client", "dev"], &envs);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(INT_KEY), "{}", text(&out));
    ok_env(
        d,
        &["issue", "client", "dev", "--passphrase-env", "INT_PASS"],
        &envs,
    );
}
