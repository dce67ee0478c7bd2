//! Certificates: parsing, accessors and verification against a CA.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::certificate(data));
