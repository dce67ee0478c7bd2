//! The Python peers: the original design's identity flow
//! (`cryptography`), mTLS connections with Python's `ssl`, and paho-mqtt.
//! The scripts live in `python/` and are compiled into the binary; each
//! runs with `python -c` under the interpreter given (the venv `cargo xtask
//! bench` installs `cryptography` and `paho-mqtt` into) and prints one JSON
//! object whose `per_second` is the figure.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use mqtt_tls::ClientCert;
use serde::Deserialize;

/// One of the Python measurements.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Script {
    /// `python/identities.py KEY_TYPE COUNT OUT_DIR`.
    Identities,
    /// `python/connects.py PORT CA CERT KEY COUNT`.
    Connects,
    /// `python/paho.py throughput|connects PORT CA CERT KEY ...`.
    Paho,
}

impl Script {
    fn source(self) -> &'static str {
        match self {
            Self::Identities => include_str!("../python/identities.py"),
            Self::Connects => include_str!("../python/connects.py"),
            Self::Paho => include_str!("../python/paho.py"),
        }
    }

    /// `python -c SCRIPT`, to which the caller adds the arguments.
    pub(crate) fn command(self, python: &Path) -> Command {
        let mut cmd = Command::new(python);
        cmd.arg("-c").arg(self.source());
        cmd
    }
}

/// What every script prints (other fields ignored).
#[derive(Debug, Deserialize)]
struct Rate {
    per_second: f64,
}

/// Runs a Python measurement and returns its `per_second`.
pub(crate) fn per_second(script: Script, cmd: &mut Command) -> anyhow::Result<f64> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?} ({script:?})", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "the Python {script:?} measurement failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_rate(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("reading the Python {script:?} measurement's output"))
}

/// The `per_second` of the last line printed (the JSON object).
fn parse_rate(stdout: &str) -> anyhow::Result<f64> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("no output")?;
    let rate: Rate = serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
    Ok(rate.per_second)
}

/// The original Python flow's rate (one process, one core, as the
/// original), writing `count` identities of `key_type` (`p256` or
/// `rsa2048`) into `dir`.
pub(crate) fn identities(
    python: &Path,
    key_type: &str,
    count: usize,
    dir: &Path,
) -> anyhow::Result<f64> {
    per_second(
        Script::Identities,
        Script::Identities
            .command(python)
            .args([key_type, &count.to_string()])
            .arg(dir),
    )
}

/// CA, certificate and key paths, in the order the scripts take them.
pub(crate) fn bundle_args(b: &ClientCert) -> [&Path; 3] {
    [&b.ca_cert_path, &b.cert_path, &b.key_path]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rate_from_the_last_line() {
        let out =
            "warming up\n{\"what\": \"paho_connects\", \"count\": 5, \"per_second\": 12.5}\n\n";
        assert_eq!(parse_rate(out).unwrap(), 12.5);
    }

    #[test]
    fn a_missing_rate_is_an_error() {
        assert!(parse_rate("{\"count\": 5}").is_err());
        assert!(parse_rate("").is_err());
    }
}
