//! Every kind of certificate and the CRL lint clean under pkilint's RFC 5280
//! linters: no finding at WARNING or above.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use peers::{issue, output, pkilint, root, write};
use pki_core::{
    CertificateAuthority, CrlParams, Csr, CsrParams, IssueParams, KeyPair, KeyType, Profile,
    RevocationReason, RevokedEntry, Subject, Validity,
};

/// pkilint checks URI names with the `validators` library's `url()`, which
/// accepts only web URLs (http, https, ftp, ...) on fully qualified hosts. An
/// RFC 8141 URN such as `urn:mqtt-client:client1` is a valid RFC 3986 URI
/// that it reports anyway. That one finding, on exactly our identity URN, is
/// the only one tolerated; `client_with_fqdn_identity_lints_with_no_finding`
/// shows the rest of a client certificate is clean.
const PKILINT_URN_FALSE_POSITIVE: &str =
    "pkix.invalid_uri_syntax (ERROR): Invalid URI syntax: \"urn:mqtt-client:";

fn lint(program: &str, args: &[&Path], extra: &[&str]) {
    let mut cmd = Command::new(pkilint(program));
    cmd.arg("lint")
        .args(extra)
        .args(["-s", "WARNING"])
        .args(args);
    let out = output(&mut cmd);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // pkilint prints each finding indented under the validator that found it.
    let findings: Vec<&str> = report.lines().filter(|l| l.starts_with("    ")).collect();
    let only_urn_false_positive = !findings.is_empty()
        && findings
            .iter()
            .all(|l| l.trim_start().starts_with(PKILINT_URN_FALSE_POSITIVE));
    assert!(
        (out.status.success() && findings.is_empty()) || only_urn_false_positive,
        "{program} {args:?} found problems:\n{report}"
    );
}

#[test]
fn client_with_fqdn_identity_lints_with_no_finding() {
    let dir = tempfile::tempdir().unwrap();
    let ca = root(KeyType::P256);
    let key = KeyPair::generate(KeyType::P256).unwrap();
    let csr = Csr::new(
        &CsrParams::new(Subject::new("sensor-1.fleet.example.com").unwrap()),
        &key,
    )
    .unwrap();
    let cert = ca
        .sign(
            &csr,
            &IssueParams::new(Profile::Client, Validity::days_from_now(30).unwrap()),
        )
        .unwrap()
        .certificate;
    let path = write(dir.path(), "fqdn-client.pem", &cert.to_pem());
    let out = output(
        Command::new(pkilint("lint_pkix_cert"))
            .args(["lint", "-s", "WARNING"])
            .arg(&path),
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "{:?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn certificates_lint_clean() {
    let dir = tempfile::tempdir().unwrap();
    for ca_type in [KeyType::P256, KeyType::Rsa2048] {
        let ca = root(ca_type);
        let ca_path = write(
            dir.path(),
            &format!("root-{ca_type}.pem"),
            &ca.certificate().to_pem(),
        );
        lint("lint_pkix_cert", &[&ca_path], &[]);
        for leaf_type in [
            KeyType::P256,
            KeyType::P384,
            KeyType::Ed25519,
            KeyType::Rsa2048,
        ] {
            for profile in [Profile::Client, Profile::Server] {
                let (_, cert) = issue(&ca, leaf_type, profile);
                let path = write(
                    dir.path(),
                    &format!("{profile}-{leaf_type}-under-{ca_type}.pem"),
                    &cert.to_pem(),
                );
                lint("lint_pkix_cert", &[&path], &[]);
                lint(
                    "lint_pkix_signer_signee_cert_chain",
                    &[&ca_path, &path],
                    &[],
                );
            }
        }
    }
}

#[test]
fn intermediate_chain_lints_clean() {
    let dir = tempfile::tempdir().unwrap();
    let ca = root(KeyType::P384);
    let key = KeyPair::generate(KeyType::P256).unwrap();
    let csr = Csr::new(
        &CsrParams::new(Subject::new("Test Intermediate").unwrap()),
        &key,
    )
    .unwrap();
    let inter = ca
        .sign_intermediate(&csr, Validity::days_from_now(365).unwrap(), 0)
        .unwrap()
        .certificate;
    let inter_ca = CertificateAuthority::from_parts(inter.clone(), key).unwrap();
    let (_, leaf) = issue(&inter_ca, KeyType::P256, Profile::Client);
    let root_path = write(dir.path(), "root.pem", &ca.certificate().to_pem());
    let inter_path = write(dir.path(), "inter.pem", &inter.to_pem());
    let leaf_path = write(dir.path(), "leaf.pem", &leaf.to_pem());
    lint("lint_pkix_cert", &[&inter_path], &[]);
    lint(
        "lint_pkix_signer_signee_cert_chain",
        &[&root_path, &inter_path],
        &[],
    );
    lint(
        "lint_pkix_signer_signee_cert_chain",
        &[&inter_path, &leaf_path],
        &[],
    );
}

#[test]
fn crl_lints_clean() {
    let dir = tempfile::tempdir().unwrap();
    let ca = root(KeyType::P256);
    let (_, revoked) = issue(&ca, KeyType::P256, Profile::Client);
    let now = SystemTime::now();
    for (i, entries) in [
        vec![],
        vec![RevokedEntry {
            serial: revoked.serial(),
            revoked_at: now,
            reason: RevocationReason::KeyCompromise,
        }],
    ]
    .into_iter()
    .enumerate()
    {
        let crl = ca
            .crl(
                &entries,
                &CrlParams {
                    number: i as u64 + 1,
                    this_update: now,
                    next_update: now + Duration::from_secs(7 * 86_400),
                },
            )
            .unwrap();
        let path = write(dir.path(), &format!("crl-{i}.pem"), &crl.to_pem());
        lint("lint_crl", &[&path], &["-t", "CRL", "-p", "PKIX"]);
    }
}
