//! Private keys: PEM (PKCS#8, PKCS#1, SEC1, encrypted PKCS#8) and DER.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::key(data));
