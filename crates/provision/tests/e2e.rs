//! End to end: `provision` issues everything, `broker-config` configures a
//! real Mosquitto, `pub`/`sub` and Mosquitto's own clients talk through it,
//! a revoked client is refused, and a 1,000-device fleet is provisioned.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ok, provision, tls};
use peers::mosquitto::{Mosquitto, free_port, mosquitto_client};
use peers::{openssl, run_ok};

/// A folder the broker's user can traverse (Mosquitto started as root drops
/// to `mosquitto` before reading its files).
fn world_readable_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

fn spawn_sub(dir: &Path, port: u16, host: &str, name: &str, topic: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(dir)
        .args([
            "sub",
            "-H",
            host,
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "30",
            "-i",
            &format!("sub-{name}"),
        ])
        .args(tls(name))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Publishes with `publish` until `sub` has exited (its subscription may
/// not be active at first); returns what it printed.
fn deliver(sub: Child, publish: impl FnMut() -> Output) -> String {
    String::from_utf8_lossy(&delivered(sub, publish).stdout).into_owned()
}

/// [`deliver`], returning the subscriber's whole output.
fn delivered(mut sub: Child, mut publish: impl FnMut() -> Output) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = publish();
        assert!(
            out.status.success(),
            "publishing failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
        if sub.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber never got a message"
        );
    }
    let out = sub.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn provisioned_broker_and_clients_work_together() {
    let tmp = world_readable_tempdir();
    let d = tmp.path();
    ok(d, &["init-ca", "--cn", "E2E Root"]);
    ok(
        d,
        &[
            "issue",
            "server",
            "broker",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
        ],
    );
    // client1 is a service (reads every device, writes the broadcast);
    // client2 and client3 are devices (their own topics).
    ok(d, &["issue", "client", "client1", "--role", "service"]);
    ok(d, &["issue", "client", "client2"]);
    ok(d, &["issue", "client", "client3"]);
    let port = free_port();
    let p = port.to_string();
    ok(
        d,
        &[
            "broker-config",
            "--server",
            "broker",
            "--out",
            "broker",
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
        ],
    );
    let conf = std::fs::read_to_string(d.join("broker/mosquitto.conf")).unwrap();
    for line in [
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "per_listener_settings false",
        "plugin ",
        "plugin_opt_rules ",
        "plugin_opt_crl ",
        "crlfile ",
        "set_tcp_nodelay true",
        "max_queued_messages",
    ] {
        assert!(conf.contains(line), "{line} missing from:\n{conf}");
    }
    assert!(!conf.contains("acl_file"), "{conf}");
    let broker = Mosquitto::with_config(&d.join("broker/mosquitto.conf"), port);

    // provision pub (by IP) → provision sub (by name), QoS 1.
    let sub = spawn_sub(d, port, "localhost", "client1", "devices/client2/one");
    let got = deliver(sub, || {
        let mut args = vec![
            "pub",
            "-H",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            "devices/client2/one",
            "-q",
            "1",
            "-m",
            "hello over mTLS",
        ];
        let b = tls("client2");
        args.extend(b.iter().map(String::as_str));
        provision(d, &args)
    });
    assert_eq!(got.trim(), "hello over mTLS");

    // mosquitto_pub with an issued bundle → provision sub.
    let sub = spawn_sub(d, port, "127.0.0.1", "client2", "fleet/broadcast/two");
    let got = deliver(sub, || {
        Command::new(mosquitto_client("mosquitto_pub"))
            .current_dir(d)
            .args([
                "-h",
                "localhost",
                "-p",
                &p,
                "-t",
                "fleet/broadcast/two",
                "-q",
                "1",
                "-m",
                "from mosquitto_pub",
            ])
            .args([
                "--cafile",
                "root_cert/root_ca_cert.pem",
                "--cert",
                "backend_certs/client1_cert.pem",
                "--key",
                "backend_certs/client1.key",
            ])
            .output()
            .unwrap()
    });
    assert_eq!(got.trim(), "from mosquitto_pub");

    // provision pub (stdin) → mosquitto_sub.
    let msub = Command::new(mosquitto_client("mosquitto_sub"))
        .current_dir(d)
        .args([
            "-h",
            "localhost",
            "-p",
            &p,
            "-t",
            "fleet/broadcast/three",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "30",
        ])
        .args([
            "--cafile",
            "root_cert/root_ca_cert.pem",
            "--cert",
            "backend_certs/client2_cert.pem",
            "--key",
            "backend_certs/client2.key",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let got = deliver(msub, || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_provision"))
            .current_dir(d)
            .args([
                "pub",
                "-H",
                "localhost",
                "-p",
                &p,
                "-t",
                "fleet/broadcast/three",
            ])
            .args(tls("client1"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"from stdin")
            .unwrap();
        child.wait_with_output().unwrap()
    });
    assert_eq!(got.trim(), "from stdin");

    // Revoke client2: `revoke` refreshes the broker folder's CRL, and the
    // broker's plugin reloads the running broker (no restart, no second
    // broker-config, no signal from us): client2 is refused with the
    // broker's verdict, client3 gets through.
    let revoked = ok(
        d,
        &[
            "revoke",
            "backend_certs/client2_cert.pem",
            "--reason",
            "key-compromise",
        ],
    );
    assert!(
        revoked.contains("its plugin takes revoked connections off and reloads it"),
        "{revoked}"
    );
    let mut args = vec![
        "pub",
        "-H",
        "localhost",
        "-p",
        &p,
        "-t",
        "devices/client2/x",
        "-m",
        "revoked?",
    ];
    let b = tls("client2");
    args.extend(b.iter().map(String::as_str));
    // The broker reloads on its own loop: refused within the 5 s goal.
    let deadline = Instant::now() + Duration::from_secs(5);
    let stderr = loop {
        let out = provision(d, &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() == Some(1) {
            break stderr;
        }
        assert!(
            Instant::now() < deadline,
            "client2 still connects 5 s after its revocation:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        stderr.contains("rejected our client certificate (CertificateRevoked)"),
        "{stderr}"
    );
    let mut args = vec![
        "pub",
        "-H",
        "localhost",
        "-p",
        &p,
        "-t",
        "devices/client3/x",
        "-m",
        "still fine",
    ];
    let b = tls("client3");
    args.extend(b.iter().map(String::as_str));
    ok(d, &args);

    // A 60 KiB message with the defaults, as a new user would send one
    // (rumqttc's 10 KiB default refused it both ways; 60, not 64, so that
    // the subscriber's output fits the 64 KiB pipe this harness reads only
    // at the end)...
    let big = "x".repeat(60 * 1024);
    let sub = spawn_sub(d, port, "localhost", "client1", "devices/client3/big");
    let got = deliver(sub, || {
        let mut args = vec![
            "pub",
            "-H",
            "localhost",
            "-p",
            &p,
            "-t",
            "devices/client3/big",
            "-m",
            &big,
        ];
        args.extend(b.iter().map(String::as_str));
        provision(d, &args)
    });
    assert!(
        got.contains(&big),
        "the subscriber printed {} bytes",
        got.len()
    );
    // ...and --max-packet-size refuses a bigger one, naming both sizes.
    let mut args = vec![
        "pub",
        "-H",
        "localhost",
        "-p",
        &p,
        "-t",
        "devices/client3/big",
        "--max-packet-size",
        "1000",
        "-m",
        &big,
    ];
    args.extend(b.iter().map(String::as_str));
    let out = provision(d, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the packet would be 61467 bytes")
            && stderr.contains("limit of 1000 bytes"),
        "{stderr}"
    );
    // A subscriber with --max-packet-size 1000 cannot read the big one: it
    // says so, naming topic, size and limit, and goes on to the next.
    let sub = Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(d)
        .args([
            "sub",
            "-H",
            "localhost",
            "-p",
            &p,
            "-t",
            "devices/client3/limit/#",
        ])
        .args(["-C", "2", "-W", "30", "-i", "sub-limited"])
        .args(["--max-packet-size", "1000"])
        .args(tls("client1"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = delivered(sub, || {
        let mut last = None;
        for (topic, message) in [
            ("devices/client3/limit/big", big.as_str()),
            ("devices/client3/limit/small", "after"),
        ] {
            let mut args = vec![
                "pub",
                "-H",
                "localhost",
                "-p",
                &p,
                "-t",
                topic,
                "-m",
                message,
            ];
            args.extend(b.iter().map(String::as_str));
            last = Some(provision(d, &args));
        }
        last.unwrap()
    });
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // Two small ones: the first may come from a round published before
    // the subscription took (its big one missed); the second's big one was
    // surely received, and dropped.
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["after", "after"],
        "{stderr}"
    );
    assert!(
        stderr.contains("a message on devices/client3/limit/big was dropped: the message is 61469 bytes, over the incoming limit of 1000 bytes"),
        "{stderr}"
    );
}

#[test]
fn a_thousand_device_fleet() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("fleet.toml"),
        r#"
[ca]
dir = "root_cert"
common_name = "Fleet Root"
organization = "MyOrg"
country = "US"

[[broker]]
name = "broker"
dns = ["localhost"]
ip = ["127.0.0.1"]

[[devices]]
name = "client1"

[[devices]]
prefix = "sensor-"
count = 1000
"#,
    )
    .unwrap();
    let out = ok(d, &["fleet", "fleet.toml"]);
    assert!(
        out.contains("CA created") && out.contains("1002 issued, 0 already valid"),
        "{out}"
    );
    let ca_key = std::fs::read(d.join("root_cert/root_ca.key")).unwrap();

    // A re-run changes nothing.
    let out = ok(d, &["fleet", "fleet.toml"]);
    assert!(
        out.contains("CA kept") && out.contains("0 issued, 1002 already valid"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(d.join("root_cert/root_ca.key")).unwrap(),
        ca_key
    );

    // After a "crash" that left a device half-written, a re-run repairs it.
    std::fs::remove_file(d.join("backend_certs/sensor-500_cert.pem")).unwrap();
    let out = ok(d, &["fleet", "fleet.toml"]);
    assert!(out.contains("1 issued, 1001 already valid"), "{out}");

    // Every device certificate verifies, with OpenSSL, in one process.
    let mut cmd = Command::new(openssl());
    cmd.current_dir(d).args([
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        "root_cert/root_ca_cert.pem",
    ]);
    for i in 1..=1000 {
        cmd.arg(format!("backend_certs/sensor-{i}_cert.pem"));
    }
    let text = run_ok(&mut cmd);
    assert_eq!(text.lines().filter(|l| l.ends_with(": OK")).count(), 1000);

    // The inventory has each identity once, and serials are unique.
    let list: serde_json::Value = serde_json::from_str(&ok(d, &["list", "--json"])).unwrap();
    let records = list.as_array().unwrap();
    assert_eq!(
        records.len(),
        1003,
        "1002 identities + the re-issued sensor-500"
    );
    let serials: std::collections::HashSet<_> =
        records.iter().map(|r| r["serial"].to_string()).collect();
    assert_eq!(serials.len(), records.len());

    // A bad manifest is refused before anything is written.
    std::fs::write(
        d.join("bad.toml"),
        "[ca]\ndir = \"other\"\n[[devices]]\nprefix = \"x-\"\n",
    )
    .unwrap();
    let out = provision(d, &["fleet", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.toml: [[devices]] entry 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.join("other").exists());
}
