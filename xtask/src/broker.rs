//! Which Mosquitto the end-to-end tests use, and `cargo xtask e2e`.

use std::process::{Command, Stdio};

use crate::{cargo, sh, tools};

/// The image used when a Docker engine answers and has it.
const IMAGE: &str = "eclipse-mosquitto:2";

/// Environment for the test harness: a container when a Docker engine
/// answers and the image is there, otherwise the local binary (installed
/// with apt-get when missing and we are root).
pub(crate) fn test_env() -> Result<Vec<(&'static str, String)>, String> {
    let mut env = vec![
        ("MQTT_MTLS_OPENSSL", tools::openssl()?.display().to_string()),
        // For the test of a client bundle whose key passphrase comes from
        // the environment (`passphrase_env`).
        ("MQTT_MTLS_TEST_PASSPHRASE", "open sesame".to_owned()),
        // PostgreSQL for the ingest suites (each test starts its own server).
        (
            "MQTT_MTLS_PG_BINDIR",
            tools::postgres()?.display().to_string(),
        ),
    ];
    // The tests also run Mosquitto's own clients, so those are needed in
    // both modes.
    let local = tools::mosquitto()?;
    if docker_has_image() {
        eprintln!("xtask: using the {IMAGE} container for the broker");
        env.push(("MQTT_MTLS_BROKER", "container".to_owned()));
    } else {
        eprintln!("xtask: using the local broker {}", local.display());
        env.push(("MQTT_MTLS_MOSQUITTO", local.display().to_string()));
    }
    Ok(env)
}

fn docker_has_image() -> bool {
    let quiet = |args: &[&str]| {
        Command::new("docker")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    quiet(&["info"]) && quiet(&["image", "inspect", IMAGE])
}

/// The feature that turns on the suites needing outside tools (OpenSSL,
/// pkilint, Mosquitto, PostgreSQL, curl, schemathesis): `[[test]]` targets
/// with `required-features`, so that a plain `cargo test` needs nothing
/// installed.
pub(crate) const EXTERNAL_TOOLS: &str = "external-tools";

/// `cargo xtask e2e`: only the suites that run against a real broker (and
/// PostgreSQL).
pub(crate) fn e2e(extra: &[String]) -> Result<(), String> {
    let env = test_env()?;
    sh(cargo()
        .args([
            "test",
            "--features",
            EXTERNAL_TOOLS,
            "-p",
            "verify-tests",
            "--test",
            "mqtt",
            "-p",
            "provision",
            "--test",
            "e2e",
            "--test",
            "matrix",
            "--test",
            "storm",
            "-p",
            "mqtt-ingest",
            "--test",
            "ingest",
            "--test",
            "scale",
        ])
        .args(extra)
        .envs(env))
}

/// `cargo xtask soak [--minutes N]`: the ingest soak
/// (`crates/mqtt-ingest/tests/soak.rs`, on SQLite and PostgreSQL) for N
/// minutes (default 10), against a Mosquitto at its defaults, with link
/// cuts, broker restarts and kills, database locks, identity swaps, QoS 0
/// bursts and an ingest SIGKILL; then ten rounds of the client's burst over
/// its in-flight window through link cuts and a hot swap (`faults.rs`).
/// `cargo xtask test` runs the soak for 20 s and one burst round.
pub(crate) fn soak(args: &[String]) -> Result<(), String> {
    let minutes: u64 = match args {
        [] => 10,
        [flag, n] if flag == "--minutes" => n
            .parse()
            .map_err(|_| format!("--minutes wants a whole number, not {n:?}"))?,
        _ => return Err("usage: cargo xtask soak [--minutes N]".to_owned()),
    };
    if minutes == 0 {
        return Err("--minutes must be at least 1".to_owned());
    }
    // A release test run of `package`'s `test` (only `filter`, if given),
    // printing as it goes.
    let release_test = |package: &str, test: &str, filter: Option<&str>| {
        let mut cmd = cargo();
        cmd.args(["test", "--release", "--features", EXTERNAL_TOOLS])
            .args(["-p", package, "--test", test])
            .args(filter)
            .args(["--", "--nocapture"]);
        cmd
    };
    sh(release_test("mqtt-ingest", "soak", None)
        .envs(test_env()?)
        .env("MQTT_MTLS_SOAK_SECONDS", (minutes * 60).to_string()))?;
    // Then the client's bursts: ten rounds of 3,000 publishes over a
    // window of 10, through link cuts and a hot swap, two cores kept busy.
    sh(release_test(
        "verify-tests",
        "faults",
        Some("a_burst_over_the_window_survives_link_cuts"),
    )
    .envs(test_env()?)
    .env("MQTT_MTLS_BURST_ROUNDS", "10"))
}
