//! CSRs: parsing (with the signature check) and the CA's signing policy.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pki_core::{CertificateAuthority, Csr, IssueParams, KeyPair, KeyType, Profile, Subject, Validity};

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

fuzz_target!(|data: &[u8]| {
    let csr = match std::str::from_utf8(data) {
        Ok(text) => Csr::from_pem(text),
        Err(_) => Csr::from_der(data),
    };
    if let Ok(csr) = csr {
        let _ = (csr.subject(), csr.common_name(), csr.requested_sans());
        let _ = csr.requested_ca_powers();
        for profile in [Profile::Client, Profile::Server] {
            if let Ok(validity) = Validity::days_from_now(1) {
                let _ = ca().sign(&csr, &IssueParams::new(profile, validity));
            }
        }
    }
});
