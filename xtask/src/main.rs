//! `cargo xtask`: the project's automation, in Rust.
//!
//! `main` only dispatches; each task lives in its own module.

mod bench;
mod broker;
mod dist;
mod fuzz;
mod provision;
mod test;
mod tools;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const HELP: &str = "\
cargo xtask <TASK>

Tasks:
  provision [--out DIR] [--manifest FILE]
            the main job: a root CA, a broker certificate for localhost and
            127.0.0.1, client1, and a Mosquitto config (out: the repository
            root, in the original layout root_cert/, backend_certs/, broker/)
  e2e       only the suites against a real Mosquitto and PostgreSQL (the
            eclipse-mosquitto:2 container when a Docker engine has the
            image, else the local binary; both installed with apt-get when
            missing and root): pub/sub, the TLS failure matrix, the
            connection storm, ingest on SQLite and PostgreSQL, scale-out
  test [--advisory-db PATH] [CARGO TEST ARGS]
            fmt --check, clippy -D warnings, cargo deny, the whole test
            suite (OpenSSL and pkilint cross-checks, end-to-end tests against
            a real Mosquitto and PostgreSQL) and cargo doc. Installs what is
            missing: openssl, mosquitto, postgresql, lintian and dpkg-dev
            with apt-get (as root), curl, pkilint and schemathesis into venvs under target/,
            cargo-deny. Advisories
            come from the live RustSec database, else from the offline copy
            (a git bundle or clone) given by --advisory-db or
            MQTT_MTLS_ADVISORY_DB; the run prints the snapshot's date
  bench [--quick] [--fleet-devices N]
            release builds, then mqtt-bench's measurements side by side:
            identities (ours vs the openssl CLI and Python), a fleet, one
            command on a large CA, MQTT throughput and connects (vs
            Mosquitto's clients, Python ssl, paho), idle memory, a connection
            storm, enrollment and renewal, ingest vs mosquitto_sub; writes
            target/bench/results.json, docs/benchmarks.md and .svg
  soak [--minutes N]
            the ingest under a steady QoS 1 stream for N minutes (default
            10) against Mosquitto at its defaults, with link cuts, broker
            restarts, database locks, an ingest SIGKILL and 200 KiB messages
            over its packet limit; checks every acknowledged message is
            stored (or a dead letter) and memory stayed bounded (cargo xtask
            test runs it for 20 s)
  dist [--out DIR]
            stripped release binaries (debug information apart) and Debian
            packages for provision, mqtt-ingest and the broker plugin, with
            hardened systemd units (out: target/dist); installs lintian,
            dpkg-dev and binutils when missing
  fuzz [--seconds N] [TARGET...]
            the cargo-fuzz targets in fuzz/ (key, csr, certificate, crl,
            manifest), N seconds each (default 60); installs cargo-fuzz
  help      this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test::run(&args[1..]),
        Some("e2e") => broker::e2e(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("provision") => provision::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("soak") => broker::soak(&args[1..]),
        Some("dist") => dist::run(&args[1..]),
        None | Some("help" | "--help" | "-h") => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(format!("unknown task {other:?}\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the folder above `xtask/`).
pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `cargo`, as the one that runs us (`$CARGO`), in the project root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(project_root());
    cmd
}

/// Runs `cmd`, echoing it, and fails unless it exits successfully.
pub(crate) fn sh(cmd: &mut Command) -> Result<(), String> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {}: {e}", describe(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {status}", describe(cmd)))
    }
}

pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
