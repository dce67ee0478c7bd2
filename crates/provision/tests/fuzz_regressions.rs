//! Replays the fuzz inputs kept in the repository: the seeds
//! (`fuzz/seeds/TARGET`) and every input a fuzz run once failed on
//! (`fuzz/regressions/TARGET`), through the same calls as the targets in
//! `fuzz/fuzz_targets/`, so that a fixed crash stays fixed without
//! libFuzzer. `cargo xtask fuzz` runs the targets themselves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pki_core::{
    Certificate, CertificateAuthority, Crl, Csr, IssueParams, KeyPair, KeyType, Profile, Subject,
    Validity, VerifyOptions,
};

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        CertificateAuthority::new_root(
            &Subject::new("Fuzz Root").unwrap(),
            KeyPair::generate(KeyType::P256).unwrap(),
            Validity::days_from_now(30).unwrap(),
        )
        .unwrap()
    })
}

fn key(data: &[u8]) {
    let _ = KeyPair::from_pkcs8_der(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = KeyPair::from_pem(text) {
            let _ = key.to_pkcs8_pem();
        }
        let _ = KeyPair::from_pem_with_passphrase(text, b"fuzz");
    }
}

fn csr(data: &[u8]) {
    let csr = match std::str::from_utf8(data) {
        Ok(text) => Csr::from_pem(text),
        Err(_) => Csr::from_der(data),
    };
    if let Ok(csr) = csr {
        let _ = (csr.subject(), csr.common_name(), csr.requested_sans());
        let _ = csr.requested_ca_powers();
        for profile in [Profile::Client, Profile::Server] {
            let params = IssueParams::new(profile, Validity::days_from_now(1).unwrap());
            let _ = ca().sign(&csr, &params);
        }
    }
}

fn certificate(data: &[u8]) {
    let certs = match std::str::from_utf8(data) {
        Ok(text) => Certificate::all_from_pem(text),
        Err(_) => Certificate::from_der(data).map(|c| vec![c]),
    };
    let root = ca().certificate();
    for cert in certs.into_iter().flatten() {
        let _ = (
            cert.subject(),
            cert.issuer(),
            cert.common_name(),
            cert.serial(),
        );
        let _ = (
            cert.not_after(),
            cert.public_key_der(),
            cert.key_algorithm(),
        );
        let _ = cert.ca_constraint();
        let _ = pki_core::verify(&cert, std::slice::from_ref(root), &VerifyOptions::now());
        let _ = pki_core::verify(root, std::slice::from_ref(&cert), &VerifyOptions::now());
    }
}

fn crl(data: &[u8]) {
    let crl = match std::str::from_utf8(data) {
        Ok(text) => Crl::from_pem(text),
        Err(_) => Crl::from_der(data),
    };
    if let Ok(crl) = crl {
        let _ = (
            crl.issuer(),
            crl.this_update(),
            crl.next_update(),
            crl.number(),
        );
        for entry in crl.entries() {
            let _ = crl.is_revoked(&entry.serial);
        }
    }
}

fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = provision::fleet::Manifest::parse(text, Path::new("fuzz.toml"));
    }
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        files.extend(dir.map(|e| e.unwrap().path()));
    }
    files.sort();
    files
}

#[test]
fn every_kept_fuzz_input_is_handled() {
    type Target = fn(&[u8]);
    let targets: [(&str, Target); 5] = [
        ("key", key),
        ("csr", csr),
        ("certificate", certificate),
        ("crl", crl),
        ("manifest", manifest),
    ];
    for (target, run) in targets {
        let files = inputs(target);
        assert!(!files.is_empty(), "no seeds for fuzz target {target}");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            // A panic here names the input through the test's output.
            eprintln!("{target}: {}", file.display());
            run(&data);
        }
    }
}

#[test]
fn the_seeds_are_what_they_claim() {
    // The seeds start the fuzzer from valid objects: they must parse, or
    // the fuzzer starts from nothing.
    for file in inputs("key")
        .iter()
        .filter(|f| !f.to_string_lossy().contains("encrypted"))
    {
        KeyPair::from_pem(&std::fs::read_to_string(file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    let encrypted = inputs("key")
        .into_iter()
        .find(|f| f.to_string_lossy().contains("encrypted"))
        .unwrap();
    KeyPair::from_pem_with_passphrase(&std::fs::read_to_string(encrypted).unwrap(), b"fuzz")
        .unwrap();
    for file in inputs("certificate") {
        let data = std::fs::read(&file).unwrap();
        let ok = match std::str::from_utf8(&data) {
            Ok(text) => Certificate::from_pem(text).is_ok(),
            Err(_) => Certificate::from_der(data).is_ok(),
        };
        assert!(ok, "{}", file.display());
    }
}
