//! A CSR cannot choose its role: what `provision sign` grants, read back
//! with OpenSSL (feature `external-tools`); the rest of `sign`'s names are in
//! the self-contained `sign_names.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use common::{csr, fails, ok};

/// A role is the CA's to grant: a CSR asking for one is refused (with or
/// without --accept-csr-names), and `--role` puts it in the certificate,
/// where a service reads it without the CA folder.
#[test]
fn a_csr_cannot_choose_its_role() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    csr(
        d,
        "x_csr.pem",
        "sneaky",
        &[],
        Some("urn:mqtt-mtls:role:service"),
    );
    for extra in [&[][..], &["--accept-csr-names"][..]] {
        let mut args = vec!["sign", "x_csr.pem", "--profile", "client"];
        args.extend(extra);
        let e = fails(d, &args, 1);
        assert!(e.contains("x_csr.pem") && e.contains("--role"), "{e}");
    }
    assert!(!d.join("x_cert.pem").exists());
    csr(d, "y_csr.pem", "reader1", &[], None);
    ok(
        d,
        &[
            "sign",
            "y_csr.pem",
            "--profile",
            "client",
            "--role",
            "reader",
        ],
    );
    let shown = ok(d, &["inspect", "y_cert.pem"]);
    assert!(shown.contains("urn:mqtt-mtls:role:reader"), "{shown}");
    let listed = ok(d, &["list", "--name", "reader1", "--json"]);
    assert!(listed.contains("\"role\":\"reader\""), "{listed}");
    // And from OpenSSL's point of view, an ordinary URI SAN.
    let text = peers::run_ok(
        std::process::Command::new(peers::openssl())
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(d.join("y_cert.pem")),
    );
    assert!(text.contains("URI:urn:mqtt-mtls:role:reader"), "{text}");
}
