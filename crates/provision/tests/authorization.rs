//! Per-identity authorization on a real Mosquitto running the configuration
//! `provision broker-config` wrote, with the broker plugin loaded: devices
//! keep to their own topics, a service reads every device, a device cannot
//! forge the broadcast, subscribe beyond its rules (SUBACK 0x80) or join a
//! service's shared subscription, nor take over another device's session,
//! a certificate from another CA gets nothing, and a revoked certificate's
//! connection is taken off within a second. Each check is on what the
//! broker answered and logged and what subscribers actually receive: a
//! marker published after the forbidden message (and acknowledged after
//! it) must be the next thing a subscriber sees.

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
    /// Waits until the process exits (at most until `deadline`): its
    /// status and standard error.
    fn exited_by(&mut self, deadline: std::time::Instant) -> (std::process::ExitStatus, String) {
        let child = self.child.as_mut().unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the subscriber is still running"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    }

    /// Every line it printed so far.
    fn printed(&self) -> Vec<String> {
        self.lines.try_iter().collect()
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
    start_broker_with(d, "broker", &[])
}

/// [`start_broker`] into `out`, with more `broker-config` arguments.
fn start_broker_with(d: &Path, out: &str, extra: &[&str]) -> (Mosquitto, u16) {
    let port = free_port();
    let p = port.to_string();
    let mut args = vec![
        "broker-config",
        "--out",
        out,
        "--port",
        &p,
        "--bind",
        "127.0.0.1",
    ];
    args.extend_from_slice(extra);
    ok(d, &args);
    (
        Mosquitto::with_config(&d.join(out).join("mosquitto.conf"), port),
        port,
    )
}

/// Mosquitto's own `mosquitto_sub` as `name`: what the broker answered to
/// its SUBSCRIBE (its `-d` output) and what it printed, within `wait_s`.
fn mosquitto_sub(d: &Path, port: u16, name: &str, topic: &str, wait_s: u32) -> String {
    let out = Command::new(peers::mosquitto::mosquitto_client("mosquitto_sub"))
        .current_dir(d)
        .args([
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-d",
        ])
        .args(["-W", &wait_s.to_string(), "-C", "1"])
        .args(["--cafile", "root_cert/root_ca_cert.pem"])
        .args(["--cert", &format!("backend_certs/{name}_cert.pem")])
        .args(["--key", &format!("backend_certs/{name}.key")])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
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
    // The plugin's rules: role templates, no identity named.
    let rules = std::fs::read_to_string(d.join("broker/rules")).unwrap();
    assert!(rules.contains("[service]\nread devices/#\n"), "{rules}");
    assert!(!rules.contains("ingest\n"), "{rules}");
    assert!(
        broker.log().contains("mqtt-mtls auth: started"),
        "{}",
        broker.log()
    );

    // A device asking for more than its rules: SUBACK 0x80, as Mosquitto's
    // own client reports it, and the broker's log says why; `provision
    // sub` ends with the refusal instead of waiting for ever.
    for filter in ["devices/#", "#", "devices/+/telemetry", "$SYS/#"] {
        let seen = mosquitto_sub(d, port, "dev-a", filter, 2);
        assert!(
            seen.contains("Subscribed (mid: 1): 128")
                && seen.contains("All subscription requests were denied"),
            "{filter}: {seen}"
        );
    }
    assert!(
        broker
            .log()
            .contains("denied SUBSCRIBE to \"devices/#\" by dev-a"),
        "{}",
        broker.log()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(d)
        .args([
            "sub",
            "-H",
            "localhost",
            "-p",
            &p,
            "-t",
            "devices/#",
            "-W",
            "20",
        ])
        .args(tls("dev-a"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the broker refused the subscription to \"devices/#\""),
        "{stderr}"
    );
    // Its own topics and the broadcast are granted.
    let seen = mosquitto_sub(d, port, "dev-a", "devices/dev-a/+/x", 1);
    assert!(seen.contains("Subscribed (mid: 1): 0"), "{seen}");
    // A service may read every device, and join the group its rules name
    // (`share ingest devices/#`), but no other group: reading a topic is
    // not joining a group.
    let seen = mosquitto_sub(d, port, "ingest", "$share/ingest/devices/+/x", 1);
    assert!(seen.contains("Subscribed (mid: 1): 0"), "{seen}");
    let seen = mosquitto_sub(d, port, "ingest", "$share/other/devices/+/x", 1);
    assert!(seen.contains("Subscribed (mid: 1): 128"), "{seen}");

    let service = Sub::start(d, port, "ingest", "devices/#");
    service.wait_ready(|| publish(d, port, "dev-d", "devices/dev-d/w", "warmup", None));
    let b = Sub::start(d, port, "dev-b", "fleet/broadcast/#");
    b.wait_ready(|| publish(d, port, "announcer", "fleet/broadcast/w", "warmup", None));
    let c = Sub::start(d, port, "dev-c", "fleet/broadcast/#");
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
    // B and C, subscribed to the broadcast: the real one and not the
    // forgery.
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

/// Revoking a device that is connected takes it off the broker within a
/// second of `revoke` returning: the broker's plugin sees the CRL change,
/// kicks exactly the revoked certificate's connection and reloads its
/// broker, so the device's reconnects fail at the handshake; a renewal's
/// superseded certificate, and every other device, keep their
/// connections.
#[test]
fn a_revoked_device_is_taken_off_the_broker() {
    let tmp = ca_with(
        "Revocation Root",
        &[
            ("dev-x", "device"),
            ("dev-y", "device"),
            ("dev-z", "device"),
            ("announcer", "service"),
        ],
    );
    let d = tmp.path();
    let (broker, port) = start_broker(d);
    let warm = || publish(d, port, "announcer", "fleet/broadcast/w", "warmup", None);
    let mut x = Sub::start(d, port, "dev-x", "fleet/broadcast/#");
    x.wait_ready(warm);
    let y = Sub::start(d, port, "dev-y", "fleet/broadcast/#");
    y.wait_ready(warm);
    let z = Sub::start(d, port, "dev-z", "fleet/broadcast/#");
    z.wait_ready(warm);

    // Y is renewed meanwhile: its old certificate, the one it is connected
    // with, is superseded, and that never kicks (the device moves to its
    // new certificate at its own pace).
    let renewed = ok(d, &["issue", "client", "dev-y", "--force"]);
    assert!(renewed.contains("superseded:"), "{renewed}");
    // One reload for that CRL, before the revocation.
    let reloads = || broker.log().matches("Reloading config").count();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reloads() < 1 {
        assert!(std::time::Instant::now() < deadline, "{}", broker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
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
    assert!(
        out.contains("its plugin takes revoked connections off"),
        "{out}"
    );
    taken_off_within_a_second(&broker, "dev-x", returned);
    // The broker reloaded for the new CRL: X's reconnects fail at the
    // handshake, and its client gives up with the broker's verdict.
    let (status, stderr) = x.exited_by(returned + Duration::from_secs(10));
    assert!(!status.success());
    assert!(stderr.contains("CertificateRevoked"), "{stderr}");
    // One revocation, one CRL, one reload (the rules file rewritten with
    // it changes nothing the plugin reloads for).
    assert_eq!(reloads(), 2, "{}", broker.log());
    let out = Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(d)
        .args(["pub", "-H", "localhost", "-p", &port.to_string()])
        .args(["-t", "devices/dev-x/again", "-m", "x"])
        .args(tls("dev-x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CertificateRevoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A message after the revocation reaches the others, on the
    // connections they had: Z (another device) and Y (superseded) were
    // never disconnected, and X never saw it.
    publish(d, port, "announcer", "fleet/broadcast/all", "after", None);
    assert_eq!(z.next(), "after");
    assert_eq!(y.next(), "after");
    assert!(
        !x.printed().iter().any(|l| l == "after"),
        "the revoked client got a message"
    );
    let log = broker.log();
    for kept in ["dev-y", "dev-z"] {
        assert_eq!(
            log.matches(&format!(" as {kept} ")).count(),
            1,
            "{kept} connected more than once:\n{log}"
        );
        assert!(!log.contains(&format!("disconnecting {kept}")), "{log}");
    }

    // Y is retired while its connection is still on the certificate its
    // renewal superseded: revoking the current one withdraws that one too,
    // and Y is off.
    let out = ok(
        d,
        &[
            "revoke",
            "backend_certs/dev-y_cert.pem",
            "--reason",
            "cessation-of-operation",
        ],
    );
    let returned = std::time::Instant::now();
    assert!(out.contains("also revoked: "), "{out}");
    taken_off_within_a_second(&broker, "dev-y", returned);
}

/// Waits for the broker's log to show `name` disconnected by the plugin
/// (its kick, and the broker's own line), failing 1 s after `since`.
fn taken_off_within_a_second(broker: &Mosquitto, name: &str, since: std::time::Instant) {
    loop {
        let log = broker.log();
        if log.contains(&format!(
            "Client {name} been disconnected by administrative action"
        )) {
            assert!(
                log.contains(&format!(
                    "mqtt-mtls auth: disconnecting {name}: its certificate is revoked"
                )),
                "{log}"
            );
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "{name} still connected 1 s after revoke returned:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The measurement that made the plugin: with Mosquitto's `acl_file`
/// (which never checks SUBSCRIBE) a device joining the ingest's shared
/// subscription takes its turn of the messages and drops them (the READ
/// check fails after the group chose it), so the service misses about
/// half of what publishers had acknowledged. With the plugin the device's
/// SUBSCRIBE is refused and the service gets every message.
#[test]
fn a_device_cannot_join_a_services_shared_subscription() {
    let tmp = ca_with(
        "Share Root",
        &[
            ("ingest", "service"),
            ("squatter", "device"),
            ("sensor-1", "device"),
        ],
    );
    let d = tmp.path();
    let group = "$share/ingest/devices/+/telemetry";
    let mut received = Vec::new();
    for (out, extra) in [
        ("broker", &[][..]),
        ("broker-acl", &["--without-plugin"][..]),
    ] {
        let (_broker, port) = start_broker_with(d, out, extra);
        let squatter = SubProcess::start(d, port, "squatter", group, 1, None);
        let squatter_answer = squatter.wait_for("received SUBACK");
        let service = SubProcess::start(d, port, "ingest", group, 40, Some(8));
        service.wait_for("received SUBACK");
        let mut publisher = Command::new(peers::mosquitto::mosquitto_client("mosquitto_pub"))
            .current_dir(d)
            .args(["-h", "localhost", "-p", &port.to_string(), "-q", "1", "-l"])
            .args(["-t", "devices/sensor-1/telemetry"])
            .args(["--cafile", "root_cert/root_ca_cert.pem"])
            .args(["--cert", "backend_certs/sensor-1_cert.pem"])
            .args(["--key", "backend_certs/sensor-1.key"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = publisher.stdin.take().unwrap();
        for i in 0..40 {
            std::io::Write::write_all(&mut stdin, format!("m-{i}\n").as_bytes()).unwrap();
        }
        drop(stdin);
        assert!(
            publisher.wait().unwrap().success(),
            "every publish acknowledged"
        );
        let got = service.messages();
        received.push((out, got.len(), squatter_answer));
    }
    eprintln!("stored by the service of 40 acknowledged: {received:?}");
    let (_, with_plugin, answer) = &received[0];
    assert_eq!(*with_plugin, 40, "{received:?}");
    assert!(answer.contains("128"), "the squatter was refused: {answer}");
    let (_, without, answer) = &received[1];
    assert!(*without < 40, "the hole the plugin closes: {received:?}");
    assert!(!answer.contains("128"), "{answer}");
}

/// `mosquitto_sub -d` at QoS 1, its lines read as they come.
struct SubProcess {
    child: Child,
    lines: Receiver<String>,
}

impl SubProcess {
    fn start(d: &Path, port: u16, name: &str, topic: &str, count: u32, wait: Option<u32>) -> Self {
        // Line-buffered, so that its debug lines (the SUBACK) come at once.
        let mut cmd = Command::new("stdbuf");
        cmd.arg("-oL")
            .arg(peers::mosquitto::mosquitto_client("mosquitto_sub"))
            .current_dir(d)
            .args(["-h", "localhost", "-p", &port.to_string(), "-q", "1", "-d"])
            .args(["-t", topic, "-C", &count.to_string()])
            .args(["--cafile", "root_cert/root_ca_cert.pem"])
            .args(["--cert", &format!("backend_certs/{name}_cert.pem")])
            .args(["--key", &format!("backend_certs/{name}.key")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(wait) = wait {
            cmd.args(["-W", &wait.to_string()]);
        }
        let mut child = cmd.spawn().unwrap();
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
        Self { child, lines }
    }

    /// The line after the one containing `needle` (the SUBACK's codes).
    fn wait_for(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no {needle:?} within 10 s"));
            if line.contains(needle) {
                return self.lines.recv_timeout(Duration::from_secs(10)).unwrap();
            }
        }
    }

    /// The payloads it printed until it exited (`-C` reached or `-W`).
    fn messages(mut self) -> Vec<String> {
        let _ = self.child.wait();
        // The reader thread ends with the process's output.
        std::thread::sleep(Duration::from_millis(100));
        self.lines
            .try_iter()
            .filter(|l| l.starts_with("m-"))
            .collect()
    }
}

impl Drop for SubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    // `--lifetime`: the old spelling of `--crl-lifetime`, a hidden alias.
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
        json(&["crl", "--if-due", "--crl-lifetime", "8s"])["written"],
        false
    );
    // Past half its lifetime it is signed again (a timer would run this).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if json(&["crl", "--if-due", "--crl-lifetime", "8s"])["written"] == true {
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

/// A device that connects with a Last Will and drops without ever
/// publishing or subscribing: the plugin first hears of it at its
/// disconnect, reads its certificate then, and its Will (on its own
/// topics) reaches the service; a Will outside its topics does not.
#[test]
fn a_last_will_of_a_client_that_made_no_check_is_delivered() {
    let tmp = ca_with(
        "Will Root",
        &[
            ("dev-w", "device"),
            ("dev-v", "device"),
            ("ingest", "service"),
        ],
    );
    let d = tmp.path();
    let (broker, port) = start_broker(d);
    let service = Sub::start(d, port, "ingest", "devices/#");
    service.wait_ready(|| publish(d, port, "dev-v", "devices/dev-v/w", "warmup", None));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (name, topic) in [
        ("dev-v", "devices/dev-w/status"),
        ("dev-w", "devices/dev-w/status"),
    ] {
        let bundle = mqtt_tls::ClientCert::new(
            d.join(format!("backend_certs/{name}_cert.pem")),
            d.join(format!("backend_certs/{name}.key")),
            d.join("root_cert/root_ca_cert.pem"),
        );
        let identity = bundle.load().unwrap();
        let mut options = mqtt_tls::ConnectOptions::new("localhost", port, name);
        options.last_will = Some(mqtt_tls::LastWill {
            topic: topic.into(),
            payload: format!("{name} is offline").into_bytes().into(),
            qos: mqtt_tls::QoS::AtLeastOnce,
            retain: false,
        });
        runtime.block_on(async {
            let (client, mut connection) = mqtt_tls::MqttClient::new(&options, &identity).unwrap();
            connection.connect().await.unwrap();
            // Dropped without DISCONNECT: the broker publishes the Will.
            drop(connection);
            drop(client);
        });
    }
    // dev-v's Will names dev-w's topic: refused; dev-w's own arrives.
    assert_eq!(service.next(), "dev-w is offline", "{}", broker.log());
}

/// The plugin refuses a revoked certificate on its own, whatever the
/// broker's TLS lets in: on a copy of the generated configuration without
/// `crlfile` (so the handshake of a revoked certificate succeeds, as in
/// the moments before the broker's reload), the revoked device's SUBSCRIBE
/// gets 0x80 and its connection is taken off, while another device's is
/// granted.
#[test]
fn the_plugin_refuses_a_revoked_certificate_that_got_through_the_handshake() {
    let tmp = ca_with(
        "Handshake Root",
        &[("dev-r", "device"), ("dev-s", "device")],
    );
    let d = tmp.path();
    let (_generated, _) = start_broker(d);
    ok(
        d,
        &[
            "revoke",
            "backend_certs/dev-r_cert.pem",
            "--reason",
            "key-compromise",
        ],
    );
    let port = free_port();
    let conf = std::fs::read_to_string(d.join("broker/mosquitto.conf")).unwrap();
    let listener = conf
        .lines()
        .find(|l| l.starts_with("listener "))
        .unwrap()
        .to_owned();
    let copy: String = conf
        .lines()
        .filter(|l| !l.starts_with("crlfile "))
        .map(|l| {
            if l == listener {
                format!("listener {port} 127.0.0.1\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let path = d.join("broker/no-crlfile.conf");
    std::fs::write(&path, copy).unwrap();
    let broker = Mosquitto::with_config(&path, port);
    let seen = mosquitto_sub(d, port, "dev-r", "devices/dev-r/#", 2);
    assert!(
        seen.contains("Subscribed (mid: 1): 128"),
        "{seen}\n{}",
        broker.log()
    );
    let seen = mosquitto_sub(d, port, "dev-s", "devices/dev-s/#", 1);
    assert!(seen.contains("Subscribed (mid: 1): 0"), "{seen}");
    let log = broker.log();
    assert!(
        log.contains("disconnecting dev-r: its certificate is revoked"),
        "{log}"
    );
}

/// The main broker takes at most `--max-packet-size` from a client (1 MiB
/// by default): a device sending a 2 MB message is disconnected and the
/// message reaches no one, while a 512 KB one reaches the service.
#[test]
fn the_broker_disconnects_a_device_sending_more_than_max_packet_size() {
    let tmp = ca_with("Size Root", &[("dev-big", "device"), ("ingest", "service")]);
    let d = tmp.path();
    let (broker, port) = start_broker(d);
    let conf = std::fs::read_to_string(d.join("broker/mosquitto.conf")).unwrap();
    assert!(conf.contains("\nmax_packet_size 1048576\n"), "{conf}");
    let service = Sub::start(d, port, "ingest", "devices/#");
    service.wait_ready(|| publish(d, port, "dev-big", "devices/dev-big/w", "warmup", None));
    let send = |size: usize| {
        let file = d.join(format!("{size}.bin"));
        std::fs::write(&file, vec![b'x'; size]).unwrap();
        Command::new(peers::mosquitto::mosquitto_client("mosquitto_pub"))
            .current_dir(d)
            .args(["-h", "localhost", "-p", &port.to_string()])
            .args(["-t", &format!("devices/dev-big/{size}"), "-q", "1", "-f"])
            .arg(&file)
            .args(["--cafile", "root_cert/root_ca_cert.pem"])
            .args(["--cert", "backend_certs/dev-big_cert.pem"])
            .args(["--key", "backend_certs/dev-big.key"])
            .output()
            .unwrap()
    };
    let refused = send(2_000_000);
    assert!(!refused.status.success(), "{refused:?}");
    let taken = send(512_000);
    assert!(taken.status.success(), "{taken:?}");
    let first = service.next();
    assert!(
        first.len() == 512_000 && first.bytes().all(|b| b == b'x'),
        "the first message the service got has {} bytes",
        first.len()
    );
    assert_eq!(
        broker
            .log()
            .matches("Client dev-big disconnected due to oversize packet.")
            .count(),
        1,
        "{}",
        broker.log()
    );
}
