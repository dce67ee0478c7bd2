//! Private keys: PEM (PKCS#8, PKCS#1, SEC1, encrypted PKCS#8) and DER.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pki_core::KeyPair;

fuzz_target!(|data: &[u8]| {
    let _ = KeyPair::from_pkcs8_der(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = KeyPair::from_pem(text) {
            let _ = key.to_pkcs8_pem();
        }
        // A cheap passphrase: the KDF's cost is in the input, bounded by
        // the library (an absurd iteration count is refused, not run).
        let _ = KeyPair::from_pem_with_passphrase(text, b"fuzz");
    }
});
