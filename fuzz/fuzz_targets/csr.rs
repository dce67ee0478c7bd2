//! CSRs: parsing (with the signature check) and the CA's signing policy.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::csr(data));
