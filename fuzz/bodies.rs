//! What each fuzz target does with one input: the public parsers, and what
//! a caller does next with what they accept. Included by the targets in
//! `fuzz_targets/` and by the replay test
//! (`crates/provision/tests/fuzz_regressions.rs`), so the fuzzer and the
//! ordinary test suite run the very same code.

use std::path::Path;
use std::sync::OnceLock;

use pki_core::{
    Certificate, CertificateAuthority, Crl, Csr, IssueParams, KeyPair, KeyType, Profile, Subject,
    Validity, VerifyOptions,
};

/// One CA for the whole run (key generation is not what is fuzzed).
fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        CertificateAuthority::new_root(
            &Subject::new("Fuzz Root").expect("a valid name"),
            KeyPair::generate(KeyType::P256).expect("a key"),
            Validity::days_from_now(30).expect("a validity"),
        )
        .expect("a CA")
    })
}

/// Private keys: PEM (PKCS#8, PKCS#1, SEC1, encrypted PKCS#8) and DER.
pub(crate) fn key(data: &[u8]) {
    let _ = KeyPair::from_pkcs8_der(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = KeyPair::from_pem(text) {
            let _ = key.to_pkcs8_pem();
        }
        // The KDF's cost is in the input; absurd costs are refused unrun.
        let _ = KeyPair::from_pem_with_passphrase(text, b"fuzz");
    }
}

/// CSRs: parsing (with the signature check) and the CA's signing policy.
pub(crate) fn csr(data: &[u8]) {
    let csr = match std::str::from_utf8(data) {
        Ok(text) => Csr::from_pem(text),
        Err(_) => Csr::from_der(data),
    };
    if let Ok(csr) = csr {
        let _ = (csr.subject(), csr.common_name(), csr.requested_sans());
        let _ = csr.requested_ca_powers();
        for profile in [Profile::Client, Profile::Server] {
            if let Ok(validity) = Validity::days_from_now(1) {
                // Both ways: no CSR name granted (the default), and all
                // of them (what `provision sign --accept-csr-names` does).
                let _ = ca().sign(&csr, &IssueParams::new(profile, validity));
                let _ = ca().sign(
                    &csr,
                    &IssueParams {
                        csr_names: pki_core::CsrNames::ALL,
                        ..IssueParams::new(profile, validity)
                    },
                );
            }
        }
    }
}

/// Certificates: parsing, accessors, and verification both ways against a CA.
pub(crate) fn certificate(data: &[u8]) {
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

/// CRLs: parsing and accessors.
pub(crate) fn crl(data: &[u8]) {
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

/// Fleet manifests (TOML).
pub(crate) fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = provision::fleet::Manifest::parse(text, Path::new("fuzz.toml"));
    }
}
