//! `cargo xtask test`: the one test command (README, `.ci/run`).

use crate::{cargo, sh, tools};

/// fmt, clippy, the whole test suite with OpenSSL and pkilint, and docs.
/// Arguments after `test` go to `cargo test` (e.g. a test-name filter).
pub(crate) fn run(extra: &[String]) -> Result<(), String> {
    sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let openssl = tools::openssl()?;
    let pkilint = tools::pkilint()?;
    sh(cargo()
        .args(["test", "--workspace"])
        .args(extra)
        .env("MQTT_MTLS_OPENSSL", openssl)
        .env("MQTT_MTLS_PKILINT_BIN", pkilint))?;
    sh(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))
}
