//! Cross-checks of what this workspace makes against independent peers:
//! OpenSSL, pkilint and a real Mosquitto (the suites in `tests/`, which need
//! the feature `external-tools`; `cargo xtask test` turns it on and installs
//! the tools), and the workspace README's examples, compiled and run as doc
//! tests so that they stay true.

/// The workspace README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
