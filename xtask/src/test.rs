//! `cargo xtask test`: the one test command (README, `.ci/run`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::{broker, cargo, sh, tools};

/// fmt, clippy, cargo deny, the whole test suite with OpenSSL and pkilint,
/// and docs.
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
    deny()?;
    let pkilint = tools::pkilint()?;
    let totals = sh_counting_tests(
        cargo()
            .args(["test", "--workspace"])
            .args(extra)
            .envs(broker::test_env()?)
            .env("MQTT_MTLS_PKILINT_BIN", pkilint),
    )?;
    sh(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    // One closing line for the whole run, after everything else passed.
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

/// `cargo deny check` with `deny.toml`: licenses, duplicate versions,
/// sources, and the RustSec advisories when their database can be fetched
/// (it is a git repository on GitHub; where that is out of reach, the run
/// says so loudly and checks the rest).
fn deny() -> Result<(), String> {
    tools::cargo_subcommand("deny", "cargo-deny")?;
    let fetched = cargo()
        .args(["deny", "fetch"])
        .status()
        .is_ok_and(|s| s.success());
    if fetched {
        return sh(cargo().args(["deny", "check"]));
    }
    eprintln!(
        "xtask: WARNING: the RustSec advisory database cannot be fetched from here; \
         advisories are NOT checked in this run (licenses, bans and sources are). \
         Run `cargo deny check advisories` where GitHub is reachable."
    );
    sh(cargo().args(["deny", "--offline", "check", "licenses", "bans", "sources"]))
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Runs `cargo test`, passing its output through, and adds up the
/// `test result:` lines of every test binary.
fn sh_counting_tests(cmd: &mut Command) -> Result<Totals, String> {
    eprintln!("$ {}", crate::describe(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start cargo test: {e}"))?;
    let mut totals = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(|e| format!("reading cargo test output: {e}"))?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                totals.passed += count(rest, " passed");
                totals.failed += count(rest, " failed");
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo test: {e}"))?;
    if status.success() {
        Ok(totals)
    } else {
        Err(format!("cargo test failed: {status}"))
    }
}

/// The number before `label` in `ok. 38 passed; 0 failed; ...`.
fn count(summary: &str, label: &str) -> u64 {
    summary
        .split(['.', ';'])
        .find_map(|part| part.trim().strip_suffix(label.trim()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
