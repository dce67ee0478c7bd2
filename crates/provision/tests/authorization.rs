//! Per-identity authorization on a real Mosquitto running the configuration
//! `provision broker-config` wrote: devices keep to their own topics, a
//! service reads every device, a device cannot forge the broadcast or take
//! over another device's session, and a certificate from another CA gets
//! nothing. Each check is on what subscribers actually receive: a marker
//! published after the forbidden message (and acknowledged after it) must
//! be the next thing a subscriber sees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use common::{ok, tls};
use peers::mosquitto::{Mosquitto, free_port};

/// A `provision sub` whose printed lines arrive one by one.
struct Sub {
    child: Option<Child>,
    lines: Receiver<String>,
}

impl Sub {
    fn start(d: &Path, port: u16, name: &str, topic: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_provision"))
            .current_dir(d)
            .args(["sub", "-H", "localhost", "-p", &port.to_string()])
            // Its natural client id: its own name.
            .args(["-t", topic, "-W", "60", "-i", name])
            .args(tls(name))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child: Some(child),
            lines,
        }
    }

    /// The next message other than the warm-ups.
    fn next(&self) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("the subscriber received nothing within 30 s");
            if line != "warmup" {
                return line;
            }
        }
    }

    /// Publishes `warmup` with `publish` until this subscriber prints it:
    /// its subscription is then active.
    fn wait_ready(&self, mut publish: impl FnMut()) {
        for _ in 0..300 {
            publish();
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                assert_eq!(line, "warmup");
                return;
            }
        }
        panic!("the subscription never became active");
    }
}

impl Sub {
    /// The process, no longer killed on drop.
    fn into_child(mut self) -> Child {
        self.child.take().unwrap()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `name` publishes `message` on `topic` at QoS 1 (returns once the broker
/// acknowledged it, whether or not its ACL let it through).
fn publish(d: &Path, port: u16, name: &str, topic: &str, message: &str, client_id: Option<&str>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_provision"));
    cmd.current_dir(d)
        .args(["pub", "-H", "localhost", "-p", &port.to_string()])
        .args(["-t", topic, "-m", message, "-q", "1"])
        .args(tls(name));
    if let Some(id) = client_id {
        cmd.args(["-i", id]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{name} publishing to {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA in a folder the broker's user can read (Mosquitto started as root
/// reads its files as `mosquitto`), a broker identity for localhost, and
/// these clients: (name, role).
fn ca_with(cn: &str, clients: &[(&str, &str)]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(d, &["init-ca", "--cn", cn]);
    ok(d, &["issue", "server", "broker", "--dns", "localhost"]);
    for (name, role) in clients {
        ok(d, &["issue", "client", name, "--role", role]);
    }
    tmp
}

/// `broker-config` on a free port on 127.0.0.1, and Mosquitto running it.
fn start_broker(d: &Path) -> (Mosquitto, u16) {
    let port = free_port();
    let p = port.to_string();
    ok(
        d,
        &[
            "broker-config",
            "--out",
            "broker",
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
        ],
    );
    (
        Mosquitto::with_config(&d.join("broker/mosquitto.conf"), port),
        port,
    )
}

#[test]
fn each_identity_gets_only_its_roles_topics() {
    // One connection per identity (the client id is the username), so
    // each role here has its own: dev-a attacks, dev-b and dev-c listen,
    // dev-d publishes its data, ingest reads, announcer broadcasts, dash
    // reads over HTTPS only.
    let tmp = ca_with(
        "Authz Root",
        &[
            ("dev-a", "device"),
            ("dev-b", "device"),
            ("dev-c", "device"),
            ("dev-d", "device"),
            ("ingest", "service"),
            ("announcer", "service"),
            ("dash", "reader"),
        ],
    );
    let d = tmp.path();
    let (broker, port) = start_broker(d);
    let p = port.to_string();
    let acl = std::fs::read_to_string(d.join("broker/acl")).unwrap();
    assert!(acl.contains("user ingest\ntopic read devices/#"), "{acl}");

    let service = Sub::start(d, port, "ingest", "devices/#");
    service.wait_ready(|| publish(d, port, "dev-d", "devices/dev-d/w", "warmup", None));
    let b = Sub::start(d, port, "dev-b", "#");
    b.wait_ready(|| publish(d, port, "announcer", "fleet/broadcast/w", "warmup", None));
    let c = Sub::start(d, port, "dev-c", "#");
    c.wait_ready(|| publish(d, port, "announcer", "fleet/broadcast/w", "warmup", None));

    // A writes into B's topics and forges the broadcast: acknowledged (MQTT
    // 3.1.1 cannot say no) and dropped. Then A's and D's own data, then the
    // real broadcast.
    publish(d, port, "dev-a", "devices/dev-b/cmd", "intrusion", None);
    publish(d, port, "dev-a", "fleet/broadcast/all", "forged", None);
    // A reader has nothing on the broker: not even the device patterns.
    publish(d, port, "dash", "devices/dash/data", "reader-forged", None);
    publish(d, port, "dev-a", "devices/dev-a/data", "a-data", None);
    publish(d, port, "dev-d", "devices/dev-d/data", "d-data", None);
    publish(
        d,
        port,
        "announcer",
        "fleet/broadcast/all",
        "official",
        None,
    );

    // The service read every device's data, and never the intrusion.
    assert_eq!(service.next(), "a-data");
    assert_eq!(service.next(), "d-data");
    // B and C, subscribed to `#`: the real broadcast and nothing else
    // (not the intrusion, the forgery, or another device's data).
    assert_eq!(b.next(), "official");
    assert_eq!(c.next(), "official");

    // A connects with B's client id: the id is A's username, so B's
    // session is not taken over (B keeps its connection and its messages).
    publish(
        d,
        port,
        "dev-a",
        "devices/dev-a/again",
        "as-b",
        Some("dev-b"),
    );
    publish(
        d,
        port,
        "announcer",
        "fleet/broadcast/all",
        "still-there",
        None,
    );
    assert_eq!(b.next(), "still-there");
    let log = broker.log();
    assert!(
        !log.contains("already connected, closing old connection"),
        "a session was taken over:\n{log}"
    );

    // A certificate from another CA with a colliding CN gets nothing: the
    // handshake fails.
    let other = tempfile::tempdir().unwrap();
    ok(other.path(), &["init-ca", "--cn", "Impostor Root"]);
    ok(
        other.path(),
        &["issue", "client", "ingest", "--role", "service"],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(d)
        .args([
            "pub",
            "-H",
            "localhost",
            "-p",
            &p,
            "-t",
            "fleet/broadcast/all",
        ])
        .args(["-m", "impostor"])
        .arg("--cert")
        .arg(other.path().join("backend_certs/ingest_cert.pem"))
        .arg("--key")
        .arg(other.path().join("backend_certs/ingest.key"))
        .args(["--ca", "root_cert/root_ca_cert.pem"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    publish(d, port, "announcer", "fleet/broadcast/all", "last", None);
    assert_eq!(b.next(), "last", "the impostor's message never arrived");
}

/// Revoking a device that is connected takes it off the broker (its live
/// session taken over, its reconnect refused at the handshake) within the
/// 5 s goal, while the other devices keep their connections.
#[test]
fn a_revoked_device_is_taken_off_the_broker() {
    let tmp = ca_with(
        "Revocation Root",
        &[
            ("dev-x", "device"),
            ("dev-y", "device"),
            ("announcer", "service"),
        ],
    );
    let d = tmp.path();
    let (broker, port) = start_broker(d);
    let x = Sub::start(d, port, "dev-x", "#");
    x.wait_ready(|| publish(d, port, "announcer", "fleet/broadcast/w", "warmup", None));
    let y = Sub::start(d, port, "dev-y", "#");
    y.wait_ready(|| publish(d, port, "announcer", "fleet/broadcast/w", "warmup", None));

    // Y is renewed meanwhile: its old certificate, the one it is connected
    // with, is superseded, and that never kicks (the device moves to its
    // new certificate at its own pace).
    let renewed = ok(d, &["issue", "client", "dev-y", "--force"]);
    assert!(renewed.contains("superseded:"), "{renewed}");
    assert!(!renewed.contains("taken over"), "{renewed}");
    let out = ok(
        d,
        &[
            "revoke",
            "backend_certs/dev-x_cert.pem",
            "--reason",
            "key-compromise",
        ],
    );
    let returned = std::time::Instant::now();
    assert!(out.contains("dev-x's live session taken over"), "{out}");
    // X's client is off: its connection taken over and its reconnects
    // refused; it gives up with the broker's verdict, within 5 s of
    // `revoke` returning.
    let mut child = x.into_child();
    let deadline = returned + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dev-x is still subscribed:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("CertificateRevoked"), "{stderr}");
    // Y kept its connection: it gets the next broadcast, and the broker
    // took over no session but X's.
    publish(d, port, "announcer", "fleet/broadcast/all", "after", None);
    assert_eq!(y.next(), "after");
    let log = broker.log();
    assert!(
        log.contains("Client dev-x already connected, closing old connection"),
        "{log}"
    );
    assert!(!log.contains("Client dev-y already connected"), "{log}");
}

/// A CRL never lapses: thisUpdate is backdated like a certificate's start
/// (a broker whose clock is behind still takes it), `crl --if-due` signs a
/// new one past half the old one's lifetime and reloads the broker, and
/// clients keep connecting after the first CRL's nextUpdate has passed
/// (with a lapsed CRL Mosquitto refuses every client).
#[test]
fn a_crl_is_renewed_before_it_lapses() {
    let tmp = ca_with("Lifetime Root", &[("dev-1", "device")]);
    let d = tmp.path();
    // The short-lived CRL first, so that it is the only one the broker ever
    // loads (Mosquitto 2.0 keeps every CRL it loaded).
    ok(d, &["crl", "--lifetime", "8s"]);
    let (_broker, port) = start_broker(d);
    let crl = |d: &Path| {
        pki_core::Crl::from_pem(&std::fs::read_to_string(d.join("root_cert/crl.pem")).unwrap())
            .unwrap()
    };
    let first = crl(d);
    let now = std::time::SystemTime::now();
    assert!(
        first.this_update() + Duration::from_secs(240) < now,
        "thisUpdate is backdated"
    );
    let lapses = first.next_update().unwrap();
    // Not due yet: nothing signed.
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&ok(d, &all)).unwrap()
    };
    assert_eq!(
        json(&["crl", "--if-due", "--lifetime", "8s"])["written"],
        false
    );
    // Past half its lifetime it is signed again (a timer would run this).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if json(&["crl", "--if-due", "--lifetime", "8s"])["written"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never due");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(crl(d).number(), first.number().map(|n| n + 1));
    // After the first CRL's nextUpdate, clients still connect.
    while std::time::SystemTime::now() <= lapses + Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(100));
    }
    publish(
        d,
        port,
        "dev-1",
        "devices/dev-1/after",
        "still connecting",
        None,
    );
}
