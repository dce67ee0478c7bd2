//! Certificates: parsing, accessors and verification against a CA.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pki_core::{Certificate, CertificateAuthority, KeyPair, KeyType, Subject, Validity, VerifyOptions};

fn ca() -> &'static Certificate {
    static CA: OnceLock<Certificate> = OnceLock::new();
    CA.get_or_init(|| {
        CertificateAuthority::new_root(
            &Subject::new("Fuzz Root").expect("a valid name"),
            KeyPair::generate(KeyType::P256).expect("a key"),
            Validity::days_from_now(30).expect("a validity"),
        )
        .expect("a CA")
        .certificate()
        .clone()
    })
}

fuzz_target!(|data: &[u8]| {
    let certs = match std::str::from_utf8(data) {
        Ok(text) => Certificate::all_from_pem(text),
        Err(_) => Certificate::from_der(data).map(|c| vec![c]),
    };
    for cert in certs.into_iter().flatten() {
        let _ = (cert.subject(), cert.issuer(), cert.common_name(), cert.serial());
        let _ = (cert.not_after(), cert.public_key_der(), cert.key_algorithm());
        let _ = cert.ca_constraint();
        let _ = pki_core::verify(&cert, std::slice::from_ref(ca()), &VerifyOptions::now());
        let _ = pki_core::verify(ca(), std::slice::from_ref(&cert), &VerifyOptions::now());
    }
});
