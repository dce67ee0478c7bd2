//! Running the `provision` binary in a folder.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `provision ARGS` in `dir`.
pub(crate) fn provision(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout.
pub(crate) fn ok(dir: &Path, args: &[&str]) -> String {
    let out = provision(dir, args);
    assert!(
        out.status.success(),
        "provision {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail with exit code `code`; returns stderr.
pub(crate) fn fails(dir: &Path, args: &[&str], code: i32) -> String {
    let out = provision(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "provision {args:?}: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
    stderr
}

/// Every inventory record of the CA in `dir/root_cert`, from `provision
/// list --json`, in issue order.
pub(crate) fn records(dir: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&ok(dir, &["list", "--json"])).unwrap()
}
