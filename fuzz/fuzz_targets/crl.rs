//! CRLs: parsing and accessors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pki_core::Crl;

fuzz_target!(|data: &[u8]| {
    let crl = match std::str::from_utf8(data) {
        Ok(text) => Crl::from_pem(text),
        Err(_) => Crl::from_der(data),
    };
    if let Ok(crl) = crl {
        let _ = (crl.issuer(), crl.this_update(), crl.next_update(), crl.number());
        for entry in crl.entries() {
            let _ = crl.is_revoked(&entry.serial);
        }
    }
});
