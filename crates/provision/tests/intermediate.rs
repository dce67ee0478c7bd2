//! An online intermediate CA under an offline root (issue #15): `init-ca
//! --intermediate` signs an intermediate with the root key once; from then
//! on every command signs with the intermediate and the root key may be
//! away, issued certificate files carry the chain (leaf, intermediate),
//! and the root certificate stays the trust anchor. What is asserted is
//! what the peers observed: OpenSSL's `verify`, and a real Mosquitto
//! running the configuration `broker-config` wrote (the root as its CA
//! file, the intermediate's CRL), which accepts a device through the
//! intermediate and refuses it at the handshake once it is revoked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::{ok, ok_env, tls};
use peers::mosquitto::{Mosquitto, free_port, mosquitto_client};
use pki_core::Certificate;

const ROOT_CERT: &str = "root_cert/root_ca_cert.pem";
const ROOT_KEY: &str = "root_cert/root_ca.key";
const INT_CERT: &str = "root_cert/intermediate_ca_cert.pem";
const INT_KEY: &str = "root_cert/intermediate_ca.key";
const PASS: [(&str, &str); 1] = [("CA_PASS", "open sesame")];

/// Every certificate in a PEM file, in order.
fn certs(path: &Path) -> Vec<Certificate> {
    Certificate::all_from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `openssl verify -CAfile ROOT -untrusted INTERMEDIATE ARGS CERT`.
fn openssl_verify(d: &Path, cert: &str, args: &[&str]) -> Output {
    Command::new(peers::openssl())
        .current_dir(d)
        .args(["verify", "-CAfile", ROOT_CERT, "-untrusted", INT_CERT])
        .args(args)
        .arg(cert)
        .output()
        .unwrap()
}

/// `name` publishes `message` on `topic` at QoS 1 with our client.
fn publish(d: &Path, port: u16, name: &str, topic: &str, message: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(d)
        .args(["pub", "-H", "localhost", "-p", &port.to_string()])
        .args(["-t", topic, "-m", message, "-q", "1"])
        .args(tls(name))
        .output()
        .unwrap()
}

/// `name` publishes with `mosquitto_pub` (OpenSSL, libmosquitto): a second
/// client that sends the chain of its certificate file.
fn mosquitto_pub(d: &Path, port: u16, name: &str, topic: &str) -> Output {
    Command::new(mosquitto_client("mosquitto_pub"))
        .current_dir(d)
        .args(["-h", "localhost", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", "from-mosquitto_pub", "-i", name])
        .args(["--cafile", ROOT_CERT])
        .args(["--cert", &format!("backend_certs/{name}_cert.pem")])
        .args(["--key", &format!("backend_certs/{name}.key")])
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `provision sub` whose printed lines arrive one by one; killed on drop.
struct Sub {
    child: Option<Child>,
    lines: Receiver<String>,
}

impl Sub {
    fn start(d: &Path, port: u16, name: &str, topic: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_provision"))
            .current_dir(d)
            .args(["sub", "-H", "localhost", "-p", &port.to_string()])
            .args(["-t", topic, "-W", "60", "-i", name])
            .args(tls(name))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
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

/// A temp folder the broker's user can read (Mosquitto started as root
/// reads its files as `mosquitto`).
fn folder() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

#[test]
fn a_device_through_the_intermediate_on_a_real_broker() {
    let tmp = folder();
    let d = tmp.path();
    // A root with an encrypted key, and an inventory under the root alone.
    ok_env(
        d,
        &[
            "init-ca",
            "--cn",
            "Offline Root",
            "--passphrase-env",
            "CA_PASS",
        ],
        &PASS,
    );
    ok_env(
        d,
        &["issue", "client", "early", "--passphrase-env", "CA_PASS"],
        &PASS,
    );

    // A root-issued client would be cut off by the switch: refused, with
    // nothing written, unless forced.
    let refused = common::provision_env(
        d,
        &[
            "init-ca",
            "--intermediate",
            "--root-passphrase-env",
            "CA_PASS",
        ],
        &PASS,
    );
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("1 valid client certificate(s)") && err.contains("--force"),
        "{err}"
    );
    assert!(!d.join(INT_CERT).exists() && !d.join(INT_KEY).exists());
    // The intermediate, signed by the root (its key unlocked once).
    let made = ok_env(
        d,
        &[
            "init-ca",
            "--intermediate",
            "--root-passphrase-env",
            "CA_PASS",
            "--force",
        ],
        &PASS,
    );
    assert!(made.contains("mv root_cert/root_ca.key"), "{made}");
    let root = certs(&d.join(ROOT_CERT)).remove(0);
    let intermediate = certs(&d.join(INT_CERT)).remove(0);
    assert_eq!(intermediate.issuer(), root.subject());
    assert_ne!(intermediate.subject(), root.subject());
    assert_eq!(intermediate.ca_constraint().unwrap(), Some(Some(0)));
    assert!(intermediate.not_after() <= root.not_after());
    let mode = std::fs::metadata(d.join(INT_KEY))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = Command::new(peers::openssl())
        .current_dir(d)
        .args(["verify", "-CAfile", ROOT_CERT, INT_CERT])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // The root key goes offline; everything that signs still works.
    let offline = tempfile::tempdir().unwrap();
    std::fs::rename(d.join(ROOT_KEY), offline.path().join("root_ca.key")).unwrap();
    ok(d, &["issue", "server", "broker", "--dns", "localhost"]);
    ok(d, &["issue", "client", "dev-1"]);
    ok(d, &["issue", "client", "announcer", "--role", "service"]);

    // Each certificate file carries the chain: leaf, then the intermediate.
    for name in ["broker", "dev-1"] {
        let chain = certs(&d.join(format!("backend_certs/{name}_cert.pem")));
        assert_eq!(chain.len(), 2, "{name}");
        assert_eq!(chain[0].issuer(), intermediate.subject(), "{name}");
        assert_eq!(chain[1].der(), intermediate.der(), "{name}");
    }
    // OpenSSL: through the intermediate to the root, and not without it.
    for (name, purpose) in [("dev-1", "sslclient"), ("broker", "sslserver")] {
        let cert = format!("backend_certs/{name}_cert.pem");
        let out = openssl_verify(d, &cert, &["-purpose", purpose]);
        assert!(out.status.success(), "{name}: {}", text(&out));
    }
    let out = Command::new(peers::openssl())
        .current_dir(d)
        .args([
            "verify",
            "-CAfile",
            ROOT_CERT,
            "backend_certs/dev-1_cert.pem",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));

    // verify and inspect show the chain.
    let verified = ok(
        d,
        &[
            "verify",
            "backend_certs/dev-1_cert.pem",
            "--profile",
            "client",
        ],
    );
    assert!(verified.contains(&intermediate.subject()), "{verified}");
    assert!(verified.contains(&root.subject()), "{verified}");
    let inspected = ok(d, &["inspect", "backend_certs/dev-1_cert.pem"]);
    assert!(inspected.contains("chain:"), "{inspected}");
    assert!(inspected.contains(&intermediate.subject()), "{inspected}");
    // The inventory made under the root alone goes on: one owner, both eras.
    let records = common::records(d);
    assert_eq!(records.len(), 4, "{records:#?}");

    // The broker: the root is its CA file, its certificate file the chain,
    // its CRL the intermediate's.
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
    assert_eq!(
        std::fs::read(d.join("broker/ca.pem")).unwrap(),
        std::fs::read(d.join(ROOT_CERT)).unwrap()
    );
    assert_eq!(certs(&d.join("broker/server.pem")).len(), 2);
    let crl = pki_core::Crl::from_pem(&std::fs::read_to_string(d.join("broker/crl.pem")).unwrap())
        .unwrap();
    assert_eq!(crl.issuer(), intermediate.subject());
    let out = openssl_verify(
        d,
        "backend_certs/dev-1_cert.pem",
        &["-crl_check", "-CRLfile", "root_cert/crl.pem"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let broker = Mosquitto::with_config(&d.join("broker/mosquitto.conf"), port);

    // The device connects over mTLS with both clients.
    let out = publish(d, port, "dev-1", "devices/dev-1/data", "hello");
    assert!(out.status.success(), "{}\n{}", text(&out), broker.log());
    let out = mosquitto_pub(d, port, "dev-1", "devices/dev-1/data");
    assert!(out.status.success(), "{}\n{}", text(&out), broker.log());

    // Revoked while connected: the broker's plugin takes its connection
    // off and reloads the broker, whose CRL (the intermediate's) then
    // refuses its reconnects.
    let sub = Sub::start(d, port, "dev-1", "fleet/broadcast/#");
    sub.wait_ready(|| {
        let out = publish(d, port, "announcer", "fleet/broadcast/w", "warmup");
        assert!(out.status.success(), "{}", text(&out));
    });
    let revoked = ok(
        d,
        &[
            "revoke",
            "backend_certs/dev-1_cert.pem",
            "--reason",
            "key-compromise",
        ],
    );
    assert!(
        revoked.contains("its plugin takes revoked connections off"),
        "{revoked}\n{}",
        broker.log()
    );
    let mut child = sub.into_child();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "dev-1 is still subscribed:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("CertificateRevoked"), "{stderr}");
    // A new connection is refused at the handshake, by both clients.
    let out = publish(d, port, "dev-1", "devices/dev-1/data", "after");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("CertificateRevoked"), "{}", text(&out));
    let out = mosquitto_pub(d, port, "dev-1", "devices/dev-1/data");
    assert!(!out.status.success(), "{}", text(&out));
    // OpenSSL reads the same from the intermediate's new CRL.
    let out = openssl_verify(
        d,
        "backend_certs/dev-1_cert.pem",
        &["-crl_check", "-CRLfile", "root_cert/crl.pem"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("certificate revoked"), "{}", text(&out));
    // The others go on.
    let out = publish(d, port, "announcer", "fleet/broadcast/all", "still");
    assert!(out.status.success(), "{}", text(&out));
    // And every signature since the root key left was the intermediate's:
    // the root key was never needed.
    assert!(!d.join(ROOT_KEY).exists());
}

/// A broker configured under the root alone: `init-ca --intermediate`
/// gives it the intermediate's CRL, which its plugin has it reload, so
/// that clients of the
/// intermediate get in (Mosquitto refuses a client whose issuer's CRL it
/// lacks), while its own certificate from the root keeps serving.
#[test]
fn a_broker_configured_before_the_intermediate_takes_its_crl() {
    let tmp = folder();
    let d = tmp.path();
    ok(d, &["init-ca", "--cn", "Early Root"]);
    ok(d, &["issue", "server", "broker", "--dns", "localhost"]);
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
    let broker = Mosquitto::with_config(&d.join("broker/mosquitto.conf"), port);
    let made = ok(d, &["init-ca", "--intermediate"]);
    assert!(
        made.contains(
            "CRL and rules updated; its plugin takes revoked connections off and reloads it"
        ),
        "{made}"
    );
    let intermediate = certs(&d.join(INT_CERT)).remove(0);
    let crl = pki_core::Crl::from_pem(&std::fs::read_to_string(d.join("broker/crl.pem")).unwrap())
        .unwrap();
    assert_eq!(crl.issuer(), intermediate.subject());
    ok(d, &["issue", "client", "late"]);
    // The reload is the broker's to finish: the first attempts may come
    // before it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = publish(d, port, "late", "devices/late/data", "hello");
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            text(&out),
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
