//! The first ten minutes, as a newcomer walks them: the README's *With the
//! CLI* (its `console` block, then its `sh` block on localhost), the next
//! steps `cargo xtask provision --out DIR` prints, then the README's enrollment
//! recipe (*Devices enroll and renew*) and its first web-app block, each
//! command run as written (read from README.md and from what the xtask
//! printed) in a 0755 folder against real Mosquittos, on the ports the
//! README names (8883, 8884, 8080): one test, so they run one at a time. A
//! README edit that breaks the path fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

mod common;

use peers::mosquitto::Mosquitto;

/// The folder of the binaries this test runs (`provision`, `mqtt-ingest`,
/// and the `xtask` that `cargo xtask` built).
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_provision"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A shell command line, as a user types it, with the binaries on PATH.
fn shell(dir: &Path, line: &str) -> Command {
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", line]).current_dir(dir).env("PATH", path);
    cmd
}

/// Runs a command that must succeed within 2 minutes; its standard output.
fn run(dir: &Path, line: &str) -> String {
    let out = shell(dir, &format!("timeout 120 bash -c {}", quoted(line)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `line` as one shell word.
fn quoted(line: &str) -> String {
    format!("'{}'", line.replace('\'', "'\\''"))
}

/// A command left running (a line ending in `&`), its output lines as they
/// come; killed when dropped.
struct Background {
    child: Child,
    lines: Receiver<String>,
}

impl Background {
    fn start(dir: &Path, line: &str) -> Self {
        let line = line.trim_end_matches('&').trim();
        let mut child = shell(dir, &format!("exec {line} 2>&1"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits (up to 60 s) for a line containing `needle`.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(needle) {
                return line;
            }
            seen.push(line);
        }
        panic!("no {needle:?} within 60 s:\n{}", seen.join("\n"));
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `mosquitto -c CONFIG` line, run until the broker listens on `port`.
fn broker(dir: &Path, line: &str, port: u16) -> Mosquitto {
    let config = line
        .trim_end_matches('&')
        .split_whitespace()
        .skip_while(|w| *w != "-c")
        .nth(1)
        .unwrap_or_else(|| panic!("no -c CONFIG in {line:?}"));
    Mosquitto::with_config(&dir.join(config), port)
}

#[test]
fn the_readme_paths_work_as_printed() {
    // The README's ports, free (a quick start left running would take
    // them: the test says so instead of failing somewhere below).
    for port in [8883, 8884, 8080] {
        assert!(
            std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(),
            "port {port}, which the README names, is in use: stop what listens there"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let xtask = bin_dir().join("xtask");
    assert!(
        xtask.exists(),
        "{} is not built: run this suite with `cargo xtask test`",
        xtask.display()
    );
    let ingest = bin_dir().join("mqtt-ingest");
    assert!(
        ingest.exists(),
        "{} is not built: run this suite with `cargo xtask test`",
        ingest.display()
    );

    // 0. *With the CLI*: the console block's commands (but the refusal
    // it shows), then the broker, the subscriber and the publisher.
    {
        let cli = tempfile::tempdir().unwrap();
        let c = cli.path();
        std::fs::set_permissions(c, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let text = std::fs::read_to_string(path).unwrap();
        let at = text.find("### With the CLI").unwrap();
        let console = &text[at..];
        let console = &console[console.find("```console\n").unwrap()..];
        let console = &console[..console[3..].find("```").unwrap()];
        let commands: Vec<&str> = console
            .lines()
            .filter_map(|l| l.strip_prefix("$ "))
            .filter(|l| !l.ends_with("issue client root_ca"))
            .collect();
        assert!(commands.len() >= 8, "{commands:?}");
        for line in commands {
            run(c, line);
        }
        let mut main = None;
        let mut sub = None;
        for line in common::readme_block("### With the CLI") {
            if line.starts_with("mosquitto ") {
                main = Some(broker(c, &line, 8883));
            } else if line.ends_with('&') {
                sub = Some(Background::start(c, &line));
            } else {
                let sub = sub
                    .as_ref()
                    .expect("the block subscribes before it publishes");
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    run(c, &line);
                    if sub
                        .lines
                        .recv_timeout(Duration::from_millis(500))
                        .is_ok_and(|l| l == "hello")
                    {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the subscriber never printed hello"
                    );
                }
            }
        }
        assert!(main.is_some() && sub.is_some());
        eprintln!("with the CLI: the subscriber printed what was published");
    }

    // 1. `cargo xtask provision --out DIR` and the next steps it prints.
    let out = Command::new(&xtask)
        .args(["provision", "--out"])
        .arg(d)
        .current_dir(d)
        .env("MQTT_MTLS_PROVISION_BIN", env!("CARGO_BIN_EXE_provision"))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains(&format!("export PATH=\"{}:$PATH\"", bin_dir().display())),
        "{printed}"
    );
    let step = |label: &str| -> String {
        printed
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .unwrap_or_else(|| panic!("no step {label:?} in:\n{printed}"))
            .trim()
            .to_owned()
    };
    let _main = broker(d, &step("1. Start the broker:"), 8883);
    let sub = Background::start(d, &step("2. Subscribe:"));
    // Published until the subscriber, connecting, has it.
    let publish = step("3. Publish:");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        run(d, &publish);
        if sub
            .lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok_and(|line| line == "hello")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber never printed hello"
        );
    }
    drop(sub);
    eprintln!("the next steps of cargo xtask provision: the subscriber printed hello");

    // 2. The enrollment recipe, continuing from the quick start.
    let mut background = Vec::new();
    let mut enroll_broker = None;
    for line in common::readme_block("### Devices enroll and renew over MQTT") {
        if line.starts_with("mosquitto ") {
            enroll_broker = Some(broker(d, &line, 8884));
        } else if line.ends_with('&') {
            let serve = Background::start(d, &line);
            serve.wait_for("serving enrollments on");
            background.push(serve);
        } else {
            run(d, &line);
        }
    }
    assert!(
        enroll_broker.is_some(),
        "the recipe starts the enrollment broker"
    );
    assert!(d.join("device/sensor-1_cert.pem").exists());
    drop(background);
    eprintln!("the enrollment recipe: enrolled and renewed");

    // 3. The first web-app block: the ingest (its `cargo run -p
    // mqtt-ingest --` is the binary cargo builds) stores what client1
    // publishes, and the reader reads it over HTTPS.
    let block = common::readme_block("## The web-app integration");
    let mut ingest_run = None;
    let mut curl = None;
    for line in &block {
        if line.contains("mqtt-ingest") {
            let line = line.replace("cargo run -p mqtt-ingest --", &ingest.display().to_string());
            let started = Background::start(d, &line);
            started.wait_for("listening on https://");
            ingest_run = Some(started);
        } else if line.starts_with("curl ") {
            curl = Some(line.clone());
        } else {
            run(d, line);
        }
    }
    let _ingest = ingest_run.expect("the block runs mqtt-ingest");
    let curl = curl.expect("the block reads with curl");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        run(d, &publish);
        let body = run(d, &curl);
        if body.contains("\"payload\":\"hello\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API never returned the message: {body}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("the web-app block: the API returned the message");
}
