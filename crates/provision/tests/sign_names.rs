//! What `provision sign` grants of the names a CSR asks for: a server
//! certificate gets only the names the operator gives (or, when asked, the
//! CSR's, wildcards only on request), control characters never reach a
//! certificate, and what was granted and refused is printed.

#![allow(clippy::unwrap_used)]

mod common;

use common::{csr, fails, ok};

#[test]
fn a_server_certificate_gets_only_the_names_granted() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    csr(
        d,
        "b_csr.pem",
        "broker",
        &["evil.example", "*.example.com"],
        None,
    );

    // No names given: refused, saying what the CSR asks for.
    let e = fails(d, &["sign", "b_csr.pem", "--profile", "server"], 1);
    assert!(
        e.contains("--dns") && e.contains("evil.example") && e.contains("--accept-csr-names"),
        "{e}"
    );
    assert!(!d.join("b_cert.pem").exists());

    // The operator's names, and only those.
    let out = ok(
        d,
        &[
            "sign",
            "b_csr.pem",
            "--profile",
            "server",
            "--dns",
            "broker.local",
        ],
    );
    assert!(out.contains("granted: DNS:broker.local"), "{out}");
    assert!(out.contains("not granted: DNS:evil.example"), "{out}");
    let cert = ok(d, &["inspect", "b_cert.pem"]);
    assert!(
        cert.contains("broker.local") && !cert.contains("evil.example"),
        "{cert}"
    );

    // The CSR's names on request; a wildcard still refused...
    let out = ok(
        d,
        &[
            "sign",
            "b_csr.pem",
            "--profile",
            "server",
            "--accept-csr-names",
            "--force",
        ],
    );
    assert!(out.contains("DNS:evil.example"), "{out}");
    assert!(
        out.contains("not granted: DNS:*.example.com (a wildcard"),
        "{out}"
    );
    let cert = ok(d, &["inspect", "b_cert.pem"]);
    assert!(!cert.contains("*.example.com"), "{cert}");
    // ...unless wildcards are allowed too.
    ok(
        d,
        &[
            "sign",
            "b_csr.pem",
            "--profile",
            "server",
            "--accept-csr-names",
            "--allow-wildcards",
            "--force",
        ],
    );
    let cert = ok(d, &["inspect", "b_cert.pem"]);
    assert!(cert.contains("*.example.com"), "{cert}");
}

#[test]
fn control_characters_never_reach_a_certificate_or_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    csr(
        d,
        "c_csr.pem",
        "dev1",
        &[],
        Some("urn:dev1\u{1b}[31m\u{0}x"),
    );
    let out = ok(
        d,
        &[
            "sign",
            "c_csr.pem",
            "--profile",
            "client",
            "--accept-csr-names",
        ],
    );
    assert!(out.contains("not granted: URI:"), "{out}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{0}'), "{out:?}");
    assert!(out.contains("\\u{1b}"), "shown escaped: {out}");
    let cert = std::fs::read(d.join("c_cert.pem")).unwrap();
    let shown = ok(d, &["inspect", "c_cert.pem"]);
    assert!(
        !shown.contains("\\u{1b}"),
        "not in the certificate: {shown}"
    );
    drop(cert);
    // inspect shows a CSR's control characters escaped.
    let shown = ok(d, &["inspect", "c_csr.pem"]);
    assert!(
        !shown.contains('\u{1b}') && shown.contains("\\u{1b}"),
        "{shown:?}"
    );
}

#[test]
fn a_csr_file_holds_exactly_one_csr() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    csr(d, "one.pem", "dev1", &[], None);
    csr(d, "two.pem", "dev2", &[], None);
    let both = std::fs::read_to_string(d.join("one.pem")).unwrap()
        + &std::fs::read_to_string(d.join("two.pem")).unwrap();
    std::fs::write(d.join("both_csr.pem"), both).unwrap();
    let e = fails(d, &["sign", "both_csr.pem", "--profile", "client"], 1);
    assert!(
        e.contains("both_csr.pem") && e.contains("exactly one"),
        "{e}"
    );
}

/// A client's CN is its MQTT username and the `{name}` of its topic rules:
/// a CSR whose CN would reach into another device's topics (`dev-b/x`,
/// wildcards, spaces) is refused.
#[test]
fn a_client_cn_is_a_plain_name() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    for (file, cn) in [
        ("a_csr.pem", "dev-b/x"),
        ("b_csr.pem", "dev+"),
        ("c_csr.pem", "two words"),
    ] {
        csr(d, file, cn, &[], None);
        let e = fails(d, &["sign", file, "--profile", "client"], 1);
        assert!(e.contains(file) && e.contains("MQTT username"), "{cn}: {e}");
    }
    assert_eq!(common::records(d).len(), 0);
}
