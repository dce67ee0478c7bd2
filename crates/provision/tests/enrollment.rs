//! The device lifecycle over MQTT against real Mosquittos (the main broker
//! and the enrollment broker `provision broker-config --enroll-port`
//! wrote, with their generated ACLs) and a real `provision serve`:
//! enrollment with a claim and its policy, renewal with a proof, one
//! certificate per request across a SIGKILL, a renewal in the middle of a
//! QoS 1 stream, two instances sharing one CA. Every check is on what came
//! back over the wire and what the inventory holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Serve, ok, provision, records, tls};
use mqtt_tls::lifecycle::{Answer, Rejection, RenewOptions, Renewer};
use mqtt_tls::{ClientCert, ConnectOptions, MqttClient, QoS};
use peers::mosquitto::{Mosquitto, free_port};
use pki_core::{Certificate, Csr, CsrParams, KeyPair, KeyType, Subject};

/// A CA folder the brokers can read, its broker identity, the CA
/// service's identities `ca-1` and `ca-2`, and these extra clients.
struct Fleet {
    tmp: tempfile::TempDir,
    main: Mosquitto,
    enroll: Mosquitto,
}

impl Fleet {
    fn new(clients: &[(&str, &str)], claim: &[&str]) -> Self {
        Self::with(false, clients, claim)
    }

    /// With `intermediate`, the CA folder signs with an intermediate and
    /// the root key is moved away first.
    fn with(intermediate: bool, clients: &[(&str, &str)], claim: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        ok(d, &["init-ca", "--cn", "Lifecycle Root"]);
        if intermediate {
            ok(
                d,
                &["init-ca", "--intermediate", "--cn", "Lifecycle Issuing"],
            );
            std::fs::rename(
                d.join("root_cert/root_ca.key"),
                d.join("root_ca.key.offline"),
            )
            .unwrap();
        }
        ok(d, &["issue", "server", "broker", "--dns", "localhost"]);
        for name in ["ca-1", "ca-2"] {
            ok(d, &["issue", "client", name, "--role", "ca-service"]);
        }
        for (name, role) in clients {
            ok(d, &["issue", "client", name, "--role", role]);
        }
        let mut args = vec!["issue", "claim", "factory"];
        args.extend_from_slice(claim);
        ok(d, &args);
        let (p, e) = (free_port(), free_port());
        ok(
            d,
            &[
                "broker-config",
                "--out",
                "broker",
                "--port",
                &p.to_string(),
                "--bind",
                "127.0.0.1",
                "--enroll-port",
                &e.to_string(),
            ],
        );
        let main = Mosquitto::with_config(&d.join("broker/mosquitto.conf"), p);
        let enroll = Mosquitto::with_config(&d.join("broker/enroll.conf"), e);
        Self { tmp, main, enroll }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn files(&self, name: &str) -> ClientCert {
        let d = self.dir();
        ClientCert::new(
            d.join(format!("backend_certs/{name}_cert.pem")),
            d.join(format!("backend_certs/{name}.key")),
            d.join("root_cert/root_ca_cert.pem"),
        )
    }

    /// `provision serve` as `name`, the enrollment broker at `enroll_port`.
    fn serve(&self, name: &str, enroll_port: u16) -> Serve {
        self.serve_with(name, enroll_port, &[])
    }

    /// [`Fleet::serve`] with more arguments.
    fn serve_with(&self, name: &str, enroll_port: u16, extra: &[&str]) -> Serve {
        let http = free_port();
        Serve::start(
            Command::new(env!("CARGO_BIN_EXE_provision"))
                .current_dir(self.dir())
                .args([
                    "serve",
                    "-H",
                    "localhost",
                    "-p",
                    &self.main.port.to_string(),
                ])
                .args(["--enroll-port", &enroll_port.to_string()])
                .args(["--grace", "30s", "--listen", &format!("127.0.0.1:{http}")])
                .args(tls(name))
                .args(extra),
            http,
        )
    }

    /// An in-process enrollment of `name` into `out` through the
    /// enrollment broker, trusting the root.
    fn enrollment(&self, name: &str, out: &str) -> mqtt_tls::lifecycle::Enrollment {
        mqtt_tls::lifecycle::Enrollment::new(
            ConnectOptions::new("localhost", self.enroll.port, "x"),
            name,
            self.dir().join(out),
            self.dir().join("root_cert/root_ca_cert.pem"),
        )
    }

    /// `provision enroll NAME` with the claim, into `out`.
    fn enroll(&self, name: &str, out: &str) -> std::process::Output {
        provision(
            self.dir(),
            &[
                "enroll",
                name,
                "--cert",
                "backend_certs/factory_cert.pem",
                "--key",
                "backend_certs/factory.key",
                "--ca",
                "root_cert/root_ca_cert.pem",
                "-H",
                "localhost",
                "-p",
                &self.enroll.port.to_string(),
                "--out",
                out,
                "--timeout",
                "20",
            ],
        )
    }
}

/// What the broker at `port` says to a TLS handshake with this client
/// certificate (OpenSSL's report of the alert it sent, if any).
fn handshake(d: &Path, port: u16, cert: &str, key: &str) -> String {
    let out = Command::new(peers::openssl())
        .current_dir(d)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        // TLS 1.2: the broker's verdict on our certificate comes within the
        // handshake (with 1.3 it may come after OpenSSL stopped reading).
        .args(["-tls1_2", "-servername", "localhost"])
        .args(["-CAfile", "root_cert/root_ca_cert.pem"])
        .args(["-cert", cert, "-key", key])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// As `identity`, subscribes to `response`, publishes `request` on
/// `topic`, and returns the answer.
async fn ask(
    port: u16,
    identity: &ClientCert,
    topic: &str,
    response: &str,
    request: String,
) -> Answer {
    ask_within(
        port,
        identity,
        topic,
        response,
        request,
        Duration::from_secs(20),
    )
    .await
    .expect("no answer within 20 s")
}

/// [`ask`], `None` when no answer came within `wait`.
async fn ask_within(
    port: u16,
    identity: &ClientCert,
    topic: &str,
    response: &str,
    request: String,
    wait: Duration,
) -> Option<Answer> {
    let tls = identity.load().unwrap();
    let cn = tls.certificate().common_name().unwrap();
    let (client, mut connection) =
        MqttClient::new(&ConnectOptions::new("localhost", port, cn), &tls).unwrap();
    connection.connect().await.unwrap();
    let runner = tokio::spawn(connection.run());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    client
        .subscribe(response, QoS::AtLeastOnce, move |m| {
            let _ = tx.send(m.payload);
            async { Ok::<(), std::io::Error>(()) }
        })
        .unwrap()
        .granted()
        .await
        .unwrap();
    client
        .publish(topic, request, QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let answer = tokio::time::timeout(wait, rx.recv()).await.ok().flatten();
    client.disconnect().await.unwrap();
    let _ = runner.await;
    answer.map(|a| serde_json::from_slice(&a).unwrap())
}

fn rejected(answer: &Answer) -> Rejection {
    match answer {
        Answer::Rejected { reason, .. } => *reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn csr_pem(name: &str, key: &KeyPair) -> Csr {
    Csr::new(&CsrParams::new(Subject::new(name).unwrap()), key).unwrap()
}

fn cert_of(path: &Path) -> Certificate {
    Certificate::from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The inventory's record of `serial`.
fn record(d: &Path, serial: &str) -> serde_json::Value {
    records(d)
        .into_iter()
        .find(|r| r["serial"].as_str() == Some(serial))
        .unwrap_or_else(|| panic!("no record of {serial}"))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn enrollment_follows_the_claims_policy() {
    let fleet = Fleet::new(
        &[("ingest", "service")],
        &["--allow-pattern", "sensor-*", "--quota", "3"],
    );
    let d = fleet.dir();
    let serve = fleet.serve("ca-1", fleet.enroll.port);

    // The happy path: a key made here, a certificate back, and it works
    // on the main broker as a device.
    let out = fleet.enroll("sensor-1", "device1");
    assert!(out.status.success(), "{}", stderr(&out));
    let key = d.join("device1/sensor-1.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cert = cert_of(&d.join("device1/sensor-1_cert.pem"));
    assert_eq!(cert.common_name().as_deref(), Some("sensor-1"));
    ok(
        d,
        &["verify", "device1/sensor-1_cert.pem", "--profile", "client"],
    );
    let r = record(d, &cert.serial().to_string());
    assert_eq!(r["role"], "device", "{r}");
    // Again into the same folder: refused before anything is sent, naming
    // the flag that would replace the files; the key is untouched.
    let key_before = std::fs::read(&key).unwrap();
    let again = fleet.enroll("sensor-1", "device1");
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("sensor-1.key exists; pass --force to replace it"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
    // The device's own topics on the main broker: a service reads what it
    // publishes.
    let device = ClientCert::new(
        d.join("device1/sensor-1_cert.pem"),
        &key,
        d.join("root_cert/root_ca_cert.pem"),
    );
    let ingest = fleet.files("ingest");
    rt().block_on(async {
        let tls = ingest.load().unwrap();
        let (client, mut connection) = MqttClient::new(
            &ConnectOptions::new("localhost", fleet.main.port, "ingest"),
            &tls,
        )
        .unwrap();
        connection.connect().await.unwrap();
        let runner = tokio::spawn(connection.run());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        client
            .subscribe("devices/#", QoS::AtLeastOnce, move |m| {
                let _ = tx.send((m.topic, m.payload));
                async { Ok::<(), std::io::Error>(()) }
            })
            .unwrap()
            .granted()
            .await
            .unwrap();
        let dev = device.load().unwrap();
        let (dc, mut dconn) = MqttClient::new(
            &ConnectOptions::new("localhost", fleet.main.port, "sensor-1"),
            &dev,
        )
        .unwrap();
        dconn.connect().await.unwrap();
        let drunner = tokio::spawn(dconn.run());
        dc.publish("devices/sensor-1/data", "hello", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let (topic, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (topic.as_str(), &payload[..]),
            ("devices/sensor-1/data", &b"hello"[..])
        );
        dc.disconnect().await.unwrap();
        client.disconnect().await.unwrap();
        let _ = (runner.await, drunner.await);
    });

    // Outside the policy: refused with the reason, nothing written.
    let out = fleet.enroll("gateway-1", "device2");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("name_not_allowed"),
        "{}",
        stderr(&out)
    );
    assert!(!d.join("device2/gateway-1.key").exists());
    // Already enrolled; and revoked (a stolen device holds the claim too),
    // the name is still not given out again.
    let out = fleet.enroll("sensor-1", "device2");
    assert!(
        stderr(&out).contains("already_enrolled"),
        "{}",
        stderr(&out)
    );
    ok(d, &["revoke", "--serial", &cert.serial().to_string()]);
    let out = fleet.enroll("sensor-1", "device2");
    assert!(
        stderr(&out).contains("already_enrolled"),
        "{}",
        stderr(&out)
    );
    assert!(!d.join("device2/sensor-1.key").exists());
    // A CSR whose subject is not the name asked for.
    let claim = fleet.files("factory");
    let key = KeyPair::generate(KeyType::P256).unwrap();
    let request = serde_json::json!({
        "request_id": "mismatch-1",
        "name": "sensor-5",
        "csr": csr_pem("sensor-9", &key).to_pem(),
    });
    let answer = rt().block_on(ask(
        fleet.enroll.port,
        &claim,
        "pki/v1/enroll/factory/req",
        "pki/v1/enroll/factory/res/mismatch-1",
        request.to_string(),
    ));
    assert_eq!(rejected(&answer), Rejection::BadCsr, "{answer:?}");
    // The quota: two more, then no more.
    for name in ["sensor-2", "sensor-3"] {
        let out = fleet.enroll(name, "device3");
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    let out = fleet.enroll("sensor-4", "device3");
    assert!(stderr(&out).contains("quota_exhausted"), "{}", stderr(&out));
    assert!(!d.join("device3/sensor-4.key").exists());

    let devices: Vec<_> = records(d)
        .into_iter()
        .filter(|r| r["role"] == "device")
        .map(|r| r["common_name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(devices, ["sensor-1", "sensor-2", "sensor-3"]);
    assert_eq!(serve.counter("issued"), 3);

    // An expired claim is refused at the handshake.
    let ca = pki_core::CertificateAuthority::from_pem(
        &std::fs::read_to_string(d.join("root_cert/root_ca_cert.pem")).unwrap(),
        &std::fs::read_to_string(d.join("root_cert/root_ca.key")).unwrap(),
        None,
    )
    .unwrap();
    let old_key = KeyPair::generate(KeyType::P256).unwrap();
    // Ended a minute ago (it cannot start before the CA does).
    let ended = pki_core::Validity::new(
        ca.certificate().validity().not_before(),
        std::time::SystemTime::now() - Duration::from_secs(60),
    )
    .unwrap();
    let mut params = pki_core::IssueParams::new(pki_core::Profile::Client, ended);
    params
        .sans
        .push(pki_core::SubjectAltName::uri("urn:mqtt-mtls:role:claim").unwrap());
    let old_claim = ca.sign(&csr_pem("factory", &old_key), &params).unwrap();
    std::fs::write(
        d.join("backend_certs/old-claim_cert.pem"),
        old_claim.certificate.to_pem(),
    )
    .unwrap();
    std::fs::write(
        d.join("backend_certs/old-claim.key"),
        old_key.to_pkcs8_pem().unwrap().as_bytes(),
    )
    .unwrap();
    let enroll_port = fleet.enroll.port.to_string();
    let out = provision(
        d,
        &[
            "enroll",
            "sensor-5",
            "--cert",
            "backend_certs/old-claim_cert.pem",
            "--key",
            "backend_certs/old-claim.key",
            "--ca",
            "root_cert/root_ca_cert.pem",
            "-H",
            "localhost",
            "-p",
            &enroll_port,
            "--out",
            "device5",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    assert!(!d.join("device5/sensor-5.key").exists());
    // And the broker itself refuses it (not only our client's own check).
    let said = handshake(
        d,
        fleet.enroll.port,
        "backend_certs/old-claim_cert.pem",
        "backend_certs/old-claim.key",
    );
    assert!(said.contains("alert certificate expired"), "{said}");

    // A revoked claim is refused at the handshake: the enrollment broker's
    // plugin saw its CRL change and reloaded it.
    let reloads = || fleet.enroll.log().matches("Reloading config").count();
    let before = reloads();
    ok(d, &["revoke", "backend_certs/factory_cert.pem"]);
    wait_for("the enrollment broker reloads", || reloads() > before);
    let out = fleet.enroll("sensor-6", "device4");
    assert!(!out.status.success());
    assert!(
        !stderr(&out).contains("CA service refused"),
        "{}",
        stderr(&out)
    );
    let said = handshake(
        d,
        fleet.enroll.port,
        "backend_certs/factory_cert.pem",
        "backend_certs/factory.key",
    );
    assert!(said.contains("alert certificate revoked"), "{said}");
}

#[test]
fn a_claim_can_do_nothing_but_enroll() {
    let fleet = Fleet::new(
        &[("ingest", "service"), ("dev-a", "device")],
        &["--allow", "sensor-1"],
    );
    let d = fleet.dir();
    let _serve = fleet.serve("ca-1", fleet.enroll.port);
    // The broker plugin's rules: on the enrollment broker a claim may ask
    // and read its answers; on the main broker a claim has no section.
    let rules = std::fs::read_to_string(d.join("broker/enroll.rules")).unwrap();
    assert!(
        rules.contains(
            "[claim]\nwrite pki/v1/enroll/{name}/req\n\
             read pki/v1/enroll/{name}/res/+\n"
        ),
        "{rules}"
    );
    assert!(!rules.contains("[device]"), "{rules}");
    let main_rules = std::fs::read_to_string(d.join("broker/rules")).unwrap();
    assert!(!main_rules.contains("[claim]"), "{main_rules}");

    let claim = fleet.files("factory");
    let ingest = fleet.files("ingest");
    rt().block_on(async {
        // On the main broker, a service listens to everything it may
        // read; on the enrollment broker the claim tries to read every
        // request and every answer.
        let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        // (Answers to the claim's own requests, `pki/v1/enroll/factory/res/+`,
        // are every holder's to read: certificates, public.)
        for (identity, port, id, filter) in [
            (&ingest, fleet.main.port, "ingest", "devices/#"),
            (&claim, fleet.enroll.port, "snoop", "pki/v1/enroll/+/req"),
            (&claim, fleet.enroll.port, "snoop-2", "devices/#"),
            (&claim, fleet.main.port, "factory", "#"),
        ] {
            let tls = identity.load().unwrap();
            let (client, mut connection) =
                MqttClient::new(&ConnectOptions::new("localhost", port, id), &tls).unwrap();
            connection.connect().await.unwrap();
            let runner = tokio::spawn(connection.run());
            let tx = tx.clone();
            let who = id.to_owned();
            // The service's subscription is granted; the claim's are
            // refused (SUBACK 0x80), and nothing may arrive for them.
            let granted = client
                .subscribe(filter, QoS::AtLeastOnce, move |m| {
                    let _ = tx.send((who.clone(), m.topic));
                    async { Ok::<(), std::io::Error>(()) }
                })
                .unwrap()
                .granted()
                .await;
            assert_eq!(granted.is_ok(), id == "ingest", "{id}: {granted:?}");
            clients.push((client, runner));
        }
        // The claim writes where only devices and services may.
        let (main_claim, _) = &clients[3];
        for topic in [
            "devices/dev-a/cmd",
            "devices/factory/data",
            "fleet/broadcast/x",
        ] {
            main_claim
                .publish(topic, "forged", QoS::AtLeastOnce, false)
                .await
                .unwrap();
        }
        // A real enrollment goes through meanwhile.
        let claim_tls = claim.load().unwrap();
        let mut request = fleet.enrollment("sensor-1", "device1");
        request.timeout = Duration::from_secs(20);
        mqtt_tls::lifecycle::enroll(&claim_tls, &request)
            .await
            .unwrap();
        // The marker: published after everything above, so the service
        // has seen all it was going to see once it arrives.
        let dev = fleet.files("dev-a").load().unwrap();
        let (dc, mut dconn) = MqttClient::new(
            &ConnectOptions::new("localhost", fleet.main.port, "dev-a"),
            &dev,
        )
        .unwrap();
        dconn.connect().await.unwrap();
        let drunner = tokio::spawn(dconn.run());
        dc.publish("devices/dev-a/data", "marker", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            first,
            ("ingest".to_owned(), "devices/dev-a/data".to_owned())
        );
        // Nothing for the claim: not another device's answer, not the
        // requests, not anything on the main broker.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(seen.try_recv().is_err());
        dc.disconnect().await.unwrap();
        let _ = drunner.await;
        for (client, runner) in clients {
            let _ = client.disconnect().await;
            let _ = runner.await;
        }
    });
}

#[test]
fn renewal_checks_the_proof_the_certificate_and_the_names() {
    let fleet = Fleet::new(
        &[("dev-a", "device"), ("dev-b", "device")],
        &["--allow", "nobody"],
    );
    let d = fleet.dir();
    let _serve = fleet.serve("ca-1", fleet.enroll.port);
    let port = fleet.main.port.to_string();
    let a = fleet.files("dev-a");
    let b = fleet.files("dev-b");
    let a_old_pem = std::fs::read_to_string(&a.cert_path).unwrap();
    let a_old = Certificate::from_pem(&a_old_pem).unwrap();

    // The CLI face: renewed in place, the old certificate revoked once the
    // device confirmed.
    let mut args = vec!["renew", "-H", "localhost", "-p", &port];
    let t = tls("dev-a");
    args.extend(t.iter().map(String::as_str));
    let out = ok(d, &args);
    assert!(out.contains("renewed"), "{out}");
    let a_new = cert_of(&a.cert_path);
    assert_ne!(a_new.serial(), a_old.serial());
    assert!(a.load().is_ok(), "the new files are a matching pair");
    wait_for("the old certificate revoked", || {
        record(d, &a_old.serial().to_string())["status"]["state"] == "revoked"
    });
    assert_eq!(
        record(d, &a_old.serial().to_string())["status"]["reason"],
        "superseded"
    );
    assert_eq!(
        record(d, &a_new.serial().to_string())["status"]["state"],
        "valid"
    );

    let b_pem = std::fs::read_to_string(&b.cert_path).unwrap();
    let b_cert = Certificate::from_pem(&b_pem).unwrap();
    let b_key = KeyPair::from_pem(&std::fs::read_to_string(&b.key_path).unwrap()).unwrap();
    let new_key = KeyPair::generate(KeyType::P256).unwrap();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let renew = |id: &str, cert: &str, serial: String, csr: &Csr, proof: String| {
        serde_json::json!({
            "request_id": id, "serial": serial, "certificate": cert,
            "csr": csr.to_pem(), "proof": proof,
        })
        .to_string()
    };
    let ask_b = |id: &str, body: String| {
        rt().block_on(ask(
            fleet.main.port,
            &b,
            "pki/v1/renew/dev-b/req",
            &format!("pki/v1/renew/dev-b/res/{id}"),
            body,
        ))
    };
    let csr_b = csr_pem("dev-b", &new_key);
    // A wrong proof: signed by another key.
    let wrong = b64(new_key.sign(csr_b.der()).unwrap().as_bytes());
    let answer = ask_b(
        "wrong-proof",
        renew(
            "wrong-proof",
            &b_pem,
            b_cert.serial().to_string(),
            &csr_b,
            wrong,
        ),
    );
    assert_eq!(rejected(&answer), Rejection::BadProof, "{answer:?}");
    // dev-b asks with dev-a's certificate: the names differ.
    let proof = b64(b_key.sign(csr_b.der()).unwrap().as_bytes());
    let a_new_pem = std::fs::read_to_string(&a.cert_path).unwrap();
    let answer = ask_b(
        "other-cert",
        renew(
            "other-cert",
            &a_new_pem,
            a_new.serial().to_string(),
            &csr_b,
            proof.clone(),
        ),
    );
    assert_eq!(rejected(&answer), Rejection::NameMismatch, "{answer:?}");
    // A CSR for another name.
    let csr_other = csr_pem("dev-a", &new_key);
    let proof_other = b64(b_key.sign(csr_other.der()).unwrap().as_bytes());
    let answer = ask_b(
        "other-csr",
        renew(
            "other-csr",
            &b_pem,
            b_cert.serial().to_string(),
            &csr_other,
            proof_other,
        ),
    );
    assert_eq!(rejected(&answer), Rejection::NameMismatch, "{answer:?}");
    // dev-a (its new identity) asks with its revoked old certificate.
    let a_old_key_proof = "AAAA".to_owned();
    let answer = rt().block_on(ask(
        fleet.main.port,
        &a,
        "pki/v1/renew/dev-a/req",
        "pki/v1/renew/dev-a/res/revoked-1",
        renew(
            "revoked-1",
            &a_old_pem,
            a_old.serial().to_string(),
            &csr_pem("dev-a", &new_key),
            a_old_key_proof,
        ),
    ));
    assert_eq!(rejected(&answer), Rejection::NotCurrent, "{answer:?}");
    // A good request, sent twice: one certificate, the same answer.
    let body = renew("good-1", &b_pem, b_cert.serial().to_string(), &csr_b, proof);
    let first = ask_b("good-1", body.clone());
    let again = ask_b("good-1", body);
    assert!(matches!(first, Answer::Issued { .. }), "{first:?}");
    assert_eq!(first, again);
    let issued_for_b = records(d)
        .into_iter()
        .filter(|r| r["common_name"] == "dev-b")
        .count();
    assert_eq!(issued_for_b, 2, "the original and one renewal");
    // Not confirmed: the old one stays valid (until the grace period).
    assert_eq!(
        record(d, &b_cert.serial().to_string())["status"]["state"],
        "valid"
    );
}

#[test]
fn a_service_killed_before_answering_answers_with_the_same_certificate() {
    let fleet = Fleet::new(&[], &["--allow-pattern", "sensor-*"]);
    let d = fleet.dir().to_owned();
    let runtime = rt();
    // The service reaches the enrollment broker through a proxy that,
    // when told, holds everything it sends: its answer and its
    // acknowledgement never arrive.
    let proxy = runtime.block_on(peers::proxy::FaultProxy::start(fleet.enroll.port));
    let serve = fleet.serve("ca-1", proxy.port);
    proxy.hold_to_broker_after(0);
    // The device sends its request once (no resend): the answer can only
    // come from the broker handing the unacknowledged request to the
    // restarted service.
    let claim = fleet.files("factory").load().unwrap();
    let mut request = fleet.enrollment("sensor-7", "device");
    request.timeout = Duration::from_secs(60);
    request.resend = Duration::from_secs(600);
    let enrolling =
        std::thread::spawn(move || rt().block_on(mqtt_tls::lifecycle::enroll(&claim, &request)));
    // Received and committed (the inventory has it), not answered.
    let mut issued = None;
    wait_for("the certificate recorded", || {
        issued = records(&d)
            .into_iter()
            .find(|r| r["common_name"] == "sensor-7")
            .map(|r| r["serial"].as_str().unwrap().to_owned());
        issued.is_some()
    });
    assert!(!d.join("device/sensor-7_cert.pem").exists());
    let mut serve = serve;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    drop(proxy);
    // Restarted (directly): the broker gives it the request again.
    let again = fleet.serve("ca-1", fleet.enroll.port);
    let files = enrolling.join().unwrap().unwrap();
    let got = cert_of(&files.cert_path).serial().to_string();
    assert_eq!(Some(got), issued.clone());
    assert_eq!(
        again.counter("repeated"),
        1,
        "the stored answer, given again"
    );
    assert_eq!(again.counter("issued"), 0);
    let for_name = records(&d)
        .into_iter()
        .filter(|r| r["common_name"] == "sensor-7")
        .count();
    assert_eq!(for_name, 1, "one certificate for one request");
    assert_eq!(
        cert_of(&d.join("device/sensor-7_cert.pem"))
            .serial()
            .to_string(),
        issued.unwrap()
    );
}

#[test]
fn a_renewal_in_the_middle_of_a_qos1_stream_loses_nothing() {
    let fleet = Fleet::new(
        &[("ingest", "service"), ("dev-s", "device")],
        &["--allow", "nobody"],
    );
    let d = fleet.dir().to_owned();
    let _serve = fleet.serve("ca-1", fleet.enroll.port);
    let dev = fleet.files("dev-s");
    let old = cert_of(&dev.cert_path);
    const MESSAGES: usize = 400;
    let received = rt().block_on(async {
        let tls = fleet.files("ingest").load().unwrap();
        let mut options = ConnectOptions::new("localhost", fleet.main.port, "ingest");
        options.clean_session = false;
        let (ingest, mut connection) = MqttClient::new(&options, &tls).unwrap();
        connection.connect().await.unwrap();
        let ingest_runner = tokio::spawn(connection.run());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        ingest
            .subscribe("devices/dev-s/data", QoS::AtLeastOnce, move |m| {
                let _ = tx.send(String::from_utf8(m.payload.to_vec()).unwrap());
                async { Ok::<(), std::io::Error>(()) }
            })
            .unwrap()
            .granted()
            .await
            .unwrap();

        let mut options = ConnectOptions::new("localhost", fleet.main.port, "dev-s");
        options.clean_session = false;
        let (client, mut connection) = MqttClient::new(&options, &dev.load().unwrap()).unwrap();
        connection.connect().await.unwrap();
        let runner = tokio::spawn(connection.run());
        let renewer = Renewer::new(client.clone(), dev.clone(), RenewOptions::default()).unwrap();
        let stream = {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..MESSAGES {
                    client
                        .publish("devices/dev-s/data", i.to_string(), QoS::AtLeastOnce, false)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        let renewed = renewer.renew_now().await.unwrap();
        assert_eq!(renewed.previous, old.serial().to_string());
        assert!(!stream.is_finished(), "the renewal happened mid-stream");
        stream.await.unwrap();
        let mut got = BTreeSet::new();
        while got.len() < MESSAGES {
            match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
                Ok(Some(m)) => {
                    got.insert(m);
                }
                _ => break,
            }
        }
        client.disconnect().await.unwrap();
        ingest.disconnect().await.unwrap();
        let _ = (runner.await, ingest_runner.await);
        got
    });
    let want: BTreeSet<String> = (0..MESSAGES).map(|i| i.to_string()).collect();
    let missing: Vec<_> = want.difference(&received).collect();
    assert!(
        missing.is_empty(),
        "lost {} messages: {missing:?}",
        missing.len()
    );
    // The files are the new identity; the old certificate is revoked.
    let new = cert_of(&dev.cert_path);
    assert_ne!(new.serial(), old.serial());
    wait_for("the old certificate revoked", || {
        record(&d, &old.serial().to_string())["status"]["state"] == "revoked"
    });
}

#[test]
fn two_instances_share_the_requests_of_one_ca() {
    let fleet = Fleet::new(&[], &["--allow-pattern", "sensor-*"]);
    let d = fleet.dir().to_owned();
    let one = fleet.serve("ca-1", fleet.enroll.port);
    let two = fleet.serve("ca-2", fleet.enroll.port);
    let enroll_port = fleet.enroll.port.to_string();
    let children: Vec<Child> = (0..12)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_provision"))
                .current_dir(&d)
                .args(["enroll", &format!("sensor-{i}"), "-H", "localhost"])
                .args(["-p", &enroll_port, "--out", "devices", "--timeout", "30"])
                .args(["--cert", "backend_certs/factory_cert.pem"])
                .args(["--key", "backend_certs/factory.key"])
                .args(["--ca", "root_cert/root_ca_cert.pem"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let serials: BTreeSet<String> = records(&d)
        .into_iter()
        .filter(|r| r["role"] == "device")
        .map(|r| r["serial"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serials.len(), 12);
    let (a, b) = (one.counter("issued"), two.counter("issued"));
    assert_eq!(a + b, 12);
    assert!(a > 0 && b > 0, "both instances served: {a} and {b}");
    // Each certificate issued is in a log, with its name, serial and how.
    let log = format!("{}{}", one.stop(), two.stop());
    for serial in &serials {
        let line = log
            .lines()
            .find(|l| l.contains(serial.as_str()))
            .unwrap_or_else(|| panic!("{serial} not logged:\n{log}"));
        assert!(
            line.contains("issued a certificate")
                && line.contains("name=\"sensor-")
                && line.contains("via=\"claim\""),
            "{line}"
        );
    }
    let _: PathBuf = d;
}

/// A device that holds ten persistent sessions in the CA service's shared
/// subscription group on the enrollment broker would take its turn of the
/// requests and drop them (measured with Mosquitto's `acl_file`: 3 of 5
/// enrollments unanswered). The broker plugin refuses its SUBSCRIBE
/// (SUBACK 0x80), and every enrollment is answered.
#[test]
fn devices_cannot_squat_the_ca_services_group() {
    let fleet = Fleet::new(&[("squat", "device")], &["--allow-pattern", "sensor-*"]);
    let _serve = fleet.serve("ca-1", fleet.enroll.port);
    let squat = fleet.files("squat").load().unwrap();
    let claim = fleet.files("factory").load().unwrap();
    rt().block_on(async {
        let mut squatters = Vec::new();
        for i in 0..10 {
            let mut options =
                ConnectOptions::new("localhost", fleet.enroll.port, format!("squat-{i}"));
            options.clean_session = false;
            let (client, mut connection) = MqttClient::new(&options, &squat).unwrap();
            connection.connect().await.unwrap();
            let runner = tokio::spawn(connection.run());
            let answer = client
                .subscribe(
                    "$share/pki/pki/v1/enroll/+/req",
                    QoS::AtLeastOnce,
                    |_m| async { Ok::<(), std::io::Error>(()) },
                )
                .unwrap()
                .granted()
                .await;
            assert!(
                matches!(answer, Err(mqtt_tls::Error::SubscriptionRefused { .. })),
                "squat-{i}: {answer:?}"
            );
            squatters.push((client, runner));
        }
        for i in 0..5 {
            let mut request = fleet.enrollment(&format!("sensor-{i}"), "devices");
            request.timeout = Duration::from_secs(20);
            mqtt_tls::lifecycle::enroll(&claim, &request)
                .await
                .unwrap_or_else(|e| panic!("sensor-{i}: {e}"));
        }
        for (client, runner) in squatters {
            let _ = client.disconnect().await;
            let _ = runner.await;
        }
    });
    assert!(
        fleet
            .enroll
            .log()
            .contains("denied SUBSCRIBE to \"$share/pki/pki/v1/enroll/+/req\" by squat-0"),
        "{}",
        fleet.enroll.log()
    );
    let enrolled = records(fleet.dir())
        .into_iter()
        .filter(|r| {
            r["common_name"]
                .as_str()
                .is_some_and(|n| n.starts_with("sensor-"))
        })
        .count();
    assert_eq!(enrolled, 5);
}

/// Two `provision serve` with one identity: the main broker binds the
/// client id to the certificate's name, so each connection knocks the
/// other off; after three short connections in a row the service says
/// what is the likely cause (once, on standard error).
#[test]
fn one_identity_twice_is_named_as_the_likely_cause() {
    let fleet = Fleet::new(&[], &["--allow-pattern", "sensor-*"]);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut children = Vec::new();
    for _ in 0..2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_provision"))
            .current_dir(fleet.dir())
            .args([
                "serve",
                "-H",
                "localhost",
                "-p",
                &fleet.main.port.to_string(),
            ])
            .args(["--enroll-port", &fleet.enroll.port.to_string()])
            // `--http`: the old spelling of `--listen`, kept as a hidden alias.
            .args(["--http", &format!("127.0.0.1:{}", free_port())])
            .args(tls("ca-1"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let warned = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("3 connections in a row ended within 2 s") => break line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no warning within 60 s:\n{}", seen.join("\n")),
        }
    };
    assert!(
        warned.contains("another client is connected with the same identity"),
        "{warned}"
    );
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        fleet
            .main
            .log()
            .contains("Client ca-1 already connected, closing old connection"),
        "{}",
        fleet.main.log()
    );
}

/// A claim holder enrolling with a CSR that asks for a broker's DNS name,
/// an IP address and another identity's URI gets none of them: the
/// certificate carries the enrolled name's identity and its role only.
#[test]
fn enrollment_grants_none_of_the_csrs_names() {
    let fleet = Fleet::new(&[], &["--allow-pattern", "node-*"]);
    let _serve = fleet.serve("ca-1", fleet.enroll.port);
    let claim = fleet.files("factory");
    let key = KeyPair::generate(KeyType::P256).unwrap();
    let mut params = CsrParams::new(Subject::new("node-9").unwrap());
    params.sans = vec![
        pki_core::SubjectAltName::Dns("broker.example.com".parse().unwrap()),
        pki_core::SubjectAltName::Ip("10.0.0.1".parse().unwrap()),
        pki_core::SubjectAltName::uri("urn:mqtt-client:ca-1").unwrap(),
    ];
    let csr = Csr::new(&params, &key).unwrap();
    let answer = rt().block_on(ask(
        fleet.enroll.port,
        &claim,
        "pki/v1/enroll/factory/req",
        "pki/v1/enroll/factory/res/names-1",
        serde_json::json!({"request_id": "names-1", "name": "node-9", "csr": csr.to_pem()})
            .to_string(),
    ));
    let Answer::Issued { certificate, .. } = answer else {
        panic!("expected a certificate, got {answer:?}");
    };
    let cert = Certificate::from_pem(&certificate).unwrap();
    let names: Vec<String> = cert
        .subject_alt_names()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        names,
        [
            "URI:urn:mqtt-client:node-9",
            "URI:urn:mqtt-mtls:role:device"
        ],
        "{names:?}"
    );
}

#[test]
fn enrollment_and_renewal_through_an_intermediate_with_the_root_key_away() {
    let fleet = Fleet::with(true, &[], &["--allow", "sensor-1"]);
    let d = fleet.dir();
    let _serve = fleet.serve("ca-1", fleet.enroll.port);
    let out = fleet.enroll("sensor-1", "device");
    assert!(out.status.success(), "{}", stderr(&out));
    let intermediate = cert_of(&d.join("root_cert/intermediate_ca_cert.pem"));
    let chain = |p: &Path| Certificate::all_from_pem(&std::fs::read_to_string(p).unwrap()).unwrap();
    let enrolled = chain(&d.join("device/sensor-1_cert.pem"));
    assert_eq!(enrolled.len(), 2, "leaf and intermediate");
    assert_eq!(enrolled[1], intermediate);
    assert_eq!(enrolled[0].issuer(), intermediate.subject());
    // Renewed over the main broker (which took the new chain: the switch
    // returns once it sent CONNACK), through the intermediate too.
    let port = fleet.main.port.to_string();
    let out = ok(
        d,
        &[
            "renew",
            "-H",
            "localhost",
            "-p",
            &port,
            "--cert",
            "device/sensor-1_cert.pem",
            "--key",
            "device/sensor-1.key",
            "--ca",
            "root_cert/root_ca_cert.pem",
        ],
    );
    assert!(out.contains("renewed"), "{out}");
    let renewed = chain(&d.join("device/sensor-1_cert.pem"));
    assert_eq!(renewed.len(), 2);
    assert_eq!(renewed[1], intermediate);
    assert_ne!(renewed[0].serial(), enrolled[0].serial());
    ok(
        d,
        &["verify", "device/sensor-1_cert.pem", "--profile", "client"],
    );
    wait_for("the old certificate revoked", || {
        record(d, &enrolled[0].serial().to_string())["status"]["state"] == "revoked"
    });
}

#[test]
fn a_hostile_claim_holder_cannot_stop_the_service() {
    let fleet = Fleet::new(&[], &["--allow-pattern", "sensor-*"]);
    let d = fleet.dir();
    let serve = fleet.serve("ca-1", fleet.enroll.port);
    let claim = fleet.files("factory");
    let openssl = peers::openssl();
    // A CSR the CA will not sign: a subject attribute it does not take
    // (emailAddress), and one asking for CA powers.
    peers::run_ok(
        Command::new(&openssl)
            .current_dir(d)
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-out", "evil.key"]),
    );
    for (id, extra) in [
        (
            "poison-email",
            vec!["-subj", "/CN=sensor-1/emailAddress=x@example.com"],
        ),
        (
            "poison-ca",
            vec![
                "-subj",
                "/CN=sensor-1",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
            ],
        ),
    ] {
        let mut cmd = Command::new(&openssl);
        cmd.current_dir(d)
            .args(["req", "-new", "-key", "evil.key", "-out", "evil.csr"])
            .args(&extra);
        peers::run_ok(&mut cmd);
        let csr = std::fs::read_to_string(d.join("evil.csr")).unwrap();
        let answer = rt().block_on(ask(
            fleet.enroll.port,
            &claim,
            "pki/v1/enroll/factory/req",
            &format!("pki/v1/enroll/factory/res/{id}"),
            serde_json::json!({"request_id": id, "name": "sensor-1", "csr": csr}).to_string(),
        ));
        assert_eq!(rejected(&answer), Rejection::BadCsr, "{id}: {answer:?}");
    }
    // The same id with another request (a claim holder can read the ids
    // of others' requests): ignored, neither a certificate nor a refusal
    // sent to whoever waits on that id.
    let key = KeyPair::generate(KeyType::P256).unwrap();
    let answer = rt().block_on(ask_within(
        fleet.enroll.port,
        &claim,
        "pki/v1/enroll/factory/req",
        "pki/v1/enroll/factory/res/poison-ca",
        serde_json::json!({
            "request_id": "poison-ca", "name": "sensor-1",
            "csr": csr_pem("sensor-1", &key).to_pem(),
        })
        .to_string(),
        Duration::from_secs(3),
    ));
    assert_eq!(answer, None);
    // A claim holder takes the service's name as its client id on the
    // enrollment broker, and stays.
    rt().block_on(async {
        let tls = claim.load().unwrap();
        let mut options = ConnectOptions::new("localhost", fleet.enroll.port, "ca-1");
        options.clean_session = false;
        let (squatter, mut connection) = MqttClient::new(&options, &tls).unwrap();
        connection.connect().await.unwrap();
        let runner = tokio::spawn(connection.run());
        // A request far over the limit: the broker drops it (and the
        // sender), the service never sees it.
        let (big, mut big_conn) = MqttClient::new(
            &ConnectOptions::new("localhost", fleet.enroll.port, "big"),
            &tls,
        )
        .unwrap();
        big_conn.connect().await.unwrap();
        let big_runner = tokio::spawn(big_conn.run());
        let huge = serde_json::json!({
            "request_id": "huge", "name": "x".repeat(100 * 1024), "csr": "",
        })
        .to_string();
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            big.publish("pki/v1/enroll/factory/req", huge, QoS::AtLeastOnce, false),
        )
        .await;
        let _ = big.disconnect().await;
        big_runner.abort();
        // Enrollment goes on.
        let mut request = fleet.enrollment("sensor-1", "device");
        request.timeout = Duration::from_secs(20);
        mqtt_tls::lifecycle::enroll(&tls, &request).await.unwrap();
        let _ = squatter.disconnect().await;
        let _ = runner.await;
    });
    // The service's session was never taken over, and it never saw the
    // huge request (3 refused, 1 issued).
    assert!(
        !fleet.enroll.log().contains("Client ca-1 already connected"),
        "{}",
        fleet.enroll.log()
    );
    assert_eq!(serve.counter("issued"), 1);
    assert_eq!(serve.counter("requests"), 4);
    assert!(serve.get("/healthz").starts_with("HTTP/1.1 200"));
}

#[test]
fn an_enrollment_that_timed_out_gets_its_certificate_on_the_next_try() {
    let fleet = Fleet::new(&[], &["--allow-pattern", "sensor-*"]);
    let d = fleet.dir();
    // The service connects once (its session stays with the broker), then
    // is away while the device asks and gives up.
    let mut first = fleet.serve("ca-1", fleet.enroll.port);
    let _ = Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status();
    first.child.wait().unwrap();
    let port = fleet.enroll.port.to_string();
    let try_enroll = |timeout: &str| {
        provision(
            d,
            &[
                "enroll",
                "sensor-1",
                "-H",
                "localhost",
                "-p",
                &port,
                "--cert",
                "backend_certs/factory_cert.pem",
                "--key",
                "backend_certs/factory.key",
                "--ca",
                "root_cert/root_ca_cert.pem",
                "--out",
                "device",
                "--timeout",
                timeout,
            ],
        )
    };
    let out = try_enroll("2");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no answer"), "{}", stderr(&out));
    assert!(!d.join("device/sensor-1.key").exists());
    // The service comes back and answers the request that waited for it;
    // the device asks again with the same key and id, and gets that
    // certificate (not already_enrolled).
    let serve = fleet.serve("ca-1", fleet.enroll.port);
    wait_for("the waiting request answered", || {
        serve.counter("issued") == 1
    });
    let out = try_enroll("20");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        ClientCert::new(
            d.join("device/sensor-1_cert.pem"),
            d.join("device/sensor-1.key"),
            d.join("root_cert/root_ca_cert.pem"),
        )
        .load()
        .is_ok()
    );
    assert_eq!(serve.counter("repeated"), 1);
    assert!(!d.join("device/sensor-1.key.enrolling").exists());
    assert!(!d.join("device/sensor-1.enrolling.json").exists());
    assert!(!d.join("device/sensor-1.enrolling.json").exists());
}

/// `provision pub` with the certificate and key in `dir` (`dir/NAME_cert.pem`
/// and `dir/NAME.key`) on the main broker.
fn publish_as(fleet: &Fleet, dir: &str, name: &str) -> std::process::Output {
    provision(
        fleet.dir(),
        &[
            "pub",
            "-H",
            "localhost",
            "-p",
            &fleet.main.port.to_string(),
            "-t",
            &format!("devices/{name}/data"),
            "-m",
            "x",
            "-q",
            "1",
            "--cert",
            &format!("{dir}/{name}_cert.pem"),
            "--key",
            &format!("{dir}/{name}.key"),
            "--ca",
            "root_cert/root_ca_cert.pem",
        ],
    )
}

/// A renewal request of `name` (its files in `backend_certs`) for a new
/// key, answered but never confirmed: the new certificate's serial.
fn renew_unconfirmed(fleet: &Fleet, name: &str, id: &str) -> Result<String, Rejection> {
    let files = fleet.files(name);
    let pem = std::fs::read_to_string(&files.cert_path).unwrap();
    let cert = Certificate::from_pem(&pem).unwrap();
    let key = KeyPair::from_pem(&std::fs::read_to_string(&files.key_path).unwrap()).unwrap();
    let csr = csr_pem(name, &KeyPair::generate(KeyType::P256).unwrap());
    let proof =
        base64::engine::general_purpose::STANDARD.encode(key.sign(csr.der()).unwrap().as_bytes());
    let body = serde_json::json!({
        "request_id": id, "serial": cert.serial().to_string(), "certificate": pem,
        "csr": csr.to_pem(), "proof": proof,
    })
    .to_string();
    let answer = rt().block_on(ask(
        fleet.main.port,
        &files,
        &format!("pki/v1/renew/{name}/req"),
        &format!("pki/v1/renew/{name}/res/{id}"),
        body,
    ));
    match answer {
        Answer::Issued { certificate, .. } => Ok(Certificate::from_pem(&certificate)
            .unwrap()
            .serial()
            .to_string()),
        other => Err(rejected(&other)),
    }
}

fn revocation(d: &Path, serial: &str) -> (String, String) {
    let r = record(d, serial);
    (
        r["status"]["state"].as_str().unwrap().to_owned(),
        r["status"]["reason"].as_str().unwrap_or("").to_owned(),
    )
}

#[test]
fn a_revocation_for_key_compromise_follows_the_renewals_made_with_the_key() {
    let fleet = Fleet::new(
        &[
            ("dev-t", "device"),
            ("dev-p", "device"),
            ("dev-n", "device"),
        ],
        &["--allow", "nobody"],
    );
    let d = fleet.dir();
    let _serve = fleet.serve("ca-1", fleet.enroll.port);
    let port = fleet.main.port.to_string();

    // A thief copies dev-t's key and certificate and renews with them.
    std::fs::create_dir(d.join("thief")).unwrap();
    for f in ["dev-t_cert.pem", "dev-t.key"] {
        std::fs::copy(d.join("backend_certs").join(f), d.join("thief").join(f)).unwrap();
    }
    let stolen = cert_of(&d.join("backend_certs/dev-t_cert.pem"))
        .serial()
        .to_string();
    let out = ok(
        d,
        &[
            "renew",
            "-H",
            "localhost",
            "-p",
            &port,
            "--cert",
            "thief/dev-t_cert.pem",
            "--key",
            "thief/dev-t.key",
            "--ca",
            "root_cert/root_ca_cert.pem",
        ],
    );
    assert!(out.contains("renewed"), "{out}");
    let thiefs = cert_of(&d.join("thief/dev-t_cert.pem"))
        .serial()
        .to_string();
    wait_for("the stolen certificate superseded", || {
        revocation(d, &stolen) == ("revoked".into(), "superseded".into())
    });
    assert!(publish_as(&fleet, "thief", "dev-t").status.success());

    // The operator revokes the device's certificate for key compromise: it
    // was revoked as superseded, and now says why; the thief's renewal goes
    // with it.
    let out = ok(
        d,
        &[
            "revoke",
            "backend_certs/dev-t_cert.pem",
            "--reason",
            "key-compromise",
        ],
    );
    assert!(out.contains(&thiefs), "{out}");
    assert!(out.contains("renewed from"), "{out}");
    assert_eq!(
        revocation(d, &stolen),
        ("revoked".into(), "key-compromise".into())
    );
    assert_eq!(
        revocation(d, &thiefs),
        ("revoked".into(), "key-compromise".into())
    );
    // On the wire: the broker refuses the thief's certificate.
    wait_for("the thief's certificate refused", || {
        let out = publish_as(&fleet, "thief", "dev-t");
        !out.status.success() && stderr(&out).contains("CertificateRevoked")
    });

    // A renewal still pending (answered, never confirmed) goes too.
    let p_old = cert_of(&d.join("backend_certs/dev-p_cert.pem"))
        .serial()
        .to_string();
    let p_new = renew_unconfirmed(&fleet, "dev-p", "p-1").unwrap();
    assert_eq!(revocation(d, &p_old), ("valid".into(), String::new()));
    let out = ok(
        d,
        &[
            "revoke",
            "--serial",
            &p_old,
            "--reason",
            "key-compromise",
            "--json",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["renewals"][0], p_new, "{out}");
    assert_eq!(
        revocation(d, &p_new),
        ("revoked".into(), "key-compromise".into())
    );

    // A renewal revoked (for any reason but superseded): the certificate it
    // renewed may not renew again, and revoke names what it left valid.
    let n_old = cert_of(&d.join("backend_certs/dev-n_cert.pem"))
        .serial()
        .to_string();
    let n_new = renew_unconfirmed(&fleet, "dev-n", "n-1").unwrap();
    let out = ok(d, &["revoke", "--serial", &n_new]);
    assert!(
        out.contains("still valid") && out.contains(&n_old) && out.contains("--name dev-n"),
        "{out}"
    );
    assert_eq!(
        renew_unconfirmed(&fleet, "dev-n", "n-2"),
        Err(Rejection::NotCurrent)
    );
    // revoke --name: every valid certificate of the identity.
    let out = ok(
        d,
        &[
            "revoke",
            "--name",
            "dev-n",
            "--reason",
            "cessation-of-operation",
        ],
    );
    assert!(out.contains(&n_old), "{out}");
    assert_eq!(
        revocation(d, &n_old),
        ("revoked".into(), "cessation-of-operation".into())
    );
    let out = ok(d, &["revoke", "--name", "dev-n"]);
    assert!(out.contains("no valid certificate"), "{out}");
    let e = common::fails(d, &["revoke", "--name", "dev-never"], 1);
    assert!(e.contains("dev-never"), "{e}");
}

/// `provision serve` stops within `--shutdown-timeout` of SIGTERM while its
/// CA store fails (here the CA folder is gone, so every tick's transaction
/// fails and is retried): before, its worker retried for ever and the
/// process never exited.
#[test]
fn serve_stops_on_sigterm_while_its_ca_store_fails() {
    let fleet = Fleet::new(&[], &["--allow", "nobody"]);
    let d = fleet.dir();
    let mut serve = fleet.serve_with("ca-1", fleet.enroll.port, &["--shutdown-timeout", "3"]);
    std::fs::rename(d.join("root_cert"), d.join("root_cert.gone")).unwrap();
    wait_for("the CA store failing", || {
        serve.counter("retried_batches") > 0
    });
    let pid = serve.child.id().to_string();
    let sent = Instant::now();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(15),
            "provision serve still running {:?} after SIGTERM",
            sent.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    // It stopped on its own (the worker saw the stop), not by the timeout.
    assert!(status.success(), "{status:?}: {}", serve.stop());
}

/// Its worker stuck inside the CA store (here waiting for the CA folder's
/// lock, which another process holds), `provision serve` still exits
/// within `--shutdown-timeout` of SIGTERM, with exit code 1: requests it
/// had not answered stay with the broker.
#[test]
fn serve_stops_in_time_while_its_worker_is_stuck_in_the_store() {
    let fleet = Fleet::new(&[], &["--allow", "nobody"]);
    let d = fleet.dir();
    let mut serve = fleet.serve_with("ca-1", fleet.enroll.port, &["--shutdown-timeout", "2"]);
    // Another process's lock on the CA folder: the worker's next tick
    // waits for it.
    let lock = std::fs::File::options()
        .write(true)
        .open(d.join("root_cert/.lock"))
        .unwrap();
    lock.lock().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = serve.child.id().to_string();
    let sent = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(15),
            "provision serve still running {:?} after SIGTERM",
            sent.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        sent.elapsed() < Duration::from_secs(6),
        "{:?}",
        sent.elapsed()
    );
    let err = serve.stop();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("--shutdown-timeout"), "{err}");
    drop(lock);
}

/// Set for the child process of
/// [`a_device_key_in_a_token_enrolls_and_renews_mid_stream_losing_nothing`]:
/// "FOLDER\nPORT".
const TOKEN_STREAM: &str = "MQTT_MTLS_TEST_TOKEN_STREAM";
const DEVICE_PIN: &str = "2468";

#[test]
fn a_device_key_in_a_token_enrolls_and_renews_mid_stream_losing_nothing() {
    let fleet = Fleet::new(&[("ingest", "service")], &["--allow", "sensor-t"]);
    let d = fleet.dir().to_owned();
    let _serve = fleet.serve("ca-1", fleet.enroll.port);
    let tokens = peers::softhsm::Tokens::new();
    tokens.init("devices", DEVICE_PIN);
    let in_tokens = |cmd: &mut Command| {
        cmd.current_dir(&d)
            .env("SOFTHSM2_CONF", &tokens.conf)
            .env("DEVICE_PIN", DEVICE_PIN);
    };
    // Enrolled with a claim, the new key made in the token.
    let mut enroll = Command::new(env!("CARGO_BIN_EXE_provision"));
    in_tokens(&mut enroll);
    let out = enroll
        .args(["enroll", "sensor-t", "-H", "localhost"])
        .args(["-p", &fleet.enroll.port.to_string(), "--out", "device"])
        .args(["--cert", "backend_certs/factory_cert.pem"])
        .args(["--key", "backend_certs/factory.key"])
        .args(["--ca", "root_cert/root_ca_cert.pem", "--timeout", "20"])
        .args([
            "--key-uri",
            &format!(
                "pkcs11:token=devices?module-path={}",
                peers::softhsm::module().display()
            ),
            "--key-pin-env",
            "DEVICE_PIN",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let first = std::fs::read_to_string(d.join("device/sensor-t.key")).unwrap();
    assert!(
        first.starts_with("pkcs11:token=devices;object=sensor-t;id=")
            && !first.contains("PRIVATE KEY"),
        "{first}"
    );
    let old = cert_of(&d.join("device/sensor-t_cert.pem"));

    // An independent subscriber (mosquitto_sub, a PEM identity): its
    // persistent session subscribed before the stream starts (-E: it
    // leaves once subscribed), the broker keeping what comes meanwhile.
    let watcher =
        |extra: &[&str]| ingest_watcher(&d, fleet.main.port, "devices/sensor-t/data", extra);
    let subscribed = watcher(&["-E"]);
    assert!(subscribed.status.success(), "{}", stderr(&subscribed));

    // The stream and the renewal, in a process of their own (SoftHSM2
    // reads SOFTHSM2_CONF once per process).
    let mut child = Command::new(std::env::current_exe().unwrap());
    in_tokens(&mut child);
    let out = child
        .args([
            "--exact",
            "token_stream_probe",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            TOKEN_STREAM,
            format!("{}\n{}", d.display(), fleet.main.port),
        )
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success() && said.contains("RENEWED\t"), "{said}");

    let sent: usize = said
        .lines()
        .find_map(|l| l.split_once("RENEWED\t").map(|(_, r)| r))
        .and_then(|r| r.split('\t').nth(2))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    let seen = watcher(&["-C", &sent.to_string(), "-W", "20"]);
    let rest = String::from_utf8_lossy(&seen.stdout).into_owned();
    let got: BTreeSet<String> = rest
        .lines()
        .filter_map(|l| l.strip_prefix("devices/sensor-t/data "))
        .map(str::to_owned)
        .collect();
    let want: BTreeSet<String> = (0..sent).map(|i| i.to_string()).collect();
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "lost {} ({} seen): {}\n{}",
        missing.len(),
        got.len(),
        rest.lines().take(12).collect::<Vec<_>>().join("\n"),
        fleet.main.log()
    );

    // The key file records the new key; the token holds it alone (the old
    // one deleted once the broker took the new certificate); the old
    // certificate is revoked.
    let now = std::fs::read_to_string(d.join("device/sensor-t.key")).unwrap();
    assert_ne!(now.lines().next(), first.lines().next());
    assert!(!now.contains("PRIVATE KEY"), "{now}");
    let objects: Vec<&str> = said
        .lines()
        .filter_map(|l| l.split_once("OBJECT\t").map(|(_, o)| o))
        .collect();
    let new_id = now.lines().next().unwrap().split("id=").nth(1).unwrap();
    let new_id = new_id.split(['?', ';']).next().unwrap();
    assert_eq!(objects.len(), 2, "{said}");
    assert!(
        objects.iter().all(|o| *o == format!("sensor-t\t{new_id}")),
        "{objects:?} vs {new_id}"
    );
    assert!(!d.join("device/sensor-t.key.old").exists());
    assert!(!d.join("device/sensor-t.key.new").exists());
    let new = cert_of(&d.join("device/sensor-t_cert.pem"));
    assert_ne!(new.serial(), old.serial());
    wait_for("the old certificate revoked", || {
        record(&d, &old.serial().to_string())["status"]["state"] == "revoked"
    });
}

/// Not a test of its own: the device side of
/// [`a_device_key_in_a_token_enrolls_and_renews_mid_stream_losing_nothing`]
/// in a child process: a QoS 1 stream signed from the token, renewed in
/// the middle, then the token's objects (`OBJECT` lines). Does nothing
/// unless [`TOKEN_STREAM`] is set.
#[test]
fn token_stream_probe() {
    let Ok(args) = std::env::var(TOKEN_STREAM) else {
        return;
    };
    let (dir, port) = args.split_once('\n').unwrap();
    let d = Path::new(dir);
    let port: u16 = port.parse().unwrap();
    let dev = ClientCert::new(
        d.join("device/sensor-t_cert.pem"),
        d.join("device/sensor-t.key"),
        d.join("root_cert/root_ca_cert.pem"),
    );
    let (renewed, sent) = rt().block_on(async {
        let mut options = ConnectOptions::new("localhost", port, "sensor-t");
        options.clean_session = false;
        let (client, mut connection) = MqttClient::new(&options, &dev.load().unwrap()).unwrap();
        connection.connect().await.unwrap();
        let runner = tokio::spawn(connection.run());
        let renewer = Renewer::new(client.clone(), dev.clone(), RenewOptions::default()).unwrap();
        // The stream goes on until the renewal is done and 50 more: the
        // renewal is in its middle however slow the machine.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stream = {
            let client = client.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let (mut sent, mut after) = (0usize, 0);
                while after < 50 {
                    client
                        .publish(
                            "devices/sensor-t/data",
                            sent.to_string(),
                            QoS::AtLeastOnce,
                            false,
                        )
                        .await
                        .unwrap();
                    sent += 1;
                    if done.load(std::sync::atomic::Ordering::SeqCst) {
                        after += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                sent
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let renewed = renewer.renew_now().await.unwrap();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let sent = stream.await.unwrap();
        client.disconnect().await.unwrap();
        let _ = runner.await;
        (renewed, sent)
    });
    println!("RENEWED\t{}\t{}\t{sent}", renewed.previous, renewed.serial);
    // What the token holds now, read with cryptoki directly.
    use cryptoki::object::{Attribute, AttributeType};
    let pkcs11 = cryptoki::context::Pkcs11::new(peers::softhsm::module()).unwrap();
    pkcs11
        .initialize(cryptoki::context::CInitializeArgs::new(
            cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
        ))
        .ok();
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let session = pkcs11.open_ro_session(slot).unwrap();
    session
        .login(
            cryptoki::session::UserType::User,
            Some(&cryptoki::types::AuthPin::new(DEVICE_PIN.into())),
        )
        .ok();
    for object in session.find_objects(&[]).unwrap() {
        let attrs = session
            .get_attributes(object, &[AttributeType::Label, AttributeType::Id])
            .unwrap();
        let (mut label, mut id) = (String::new(), String::new());
        for a in attrs {
            match a {
                Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                Attribute::Id(i) => {
                    id = i.iter().map(|b| format!("%{b:02X}")).collect();
                }
                _ => {}
            }
        }
        println!("OBJECT\t{label}\t{id}");
    }
}

#[test]
fn a_device_key_in_a_software_tpm_enrolls_publishes_and_renews() {
    let fleet = Fleet::new(&[("ingest", "service")], &["--allow", "tpm-dev"]);
    let d = fleet.dir().to_owned();
    let _serve = fleet.serve("ca-1", fleet.enroll.port);
    let tpm = peers::tpm::SoftTpm::start("device", DEVICE_PIN);
    let main_port = fleet.main.port.to_string();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_provision"))
            .current_dir(&d)
            .envs(tpm.envs())
            .env("DEVICE_PIN", DEVICE_PIN)
            .args(args)
            .output()
            .unwrap();
        tpm.after_process();
        assert!(out.status.success(), "provision {args:?}: {}", stderr(&out));
    };
    let identity = [
        "--cert",
        "device/tpm-dev_cert.pem",
        "--key",
        "device/tpm-dev.key",
        "--ca",
        "root_cert/root_ca_cert.pem",
        "-p",
        &main_port,
    ];
    let publish = |message: &str| {
        let mut args = vec![
            "pub",
            "-t",
            "devices/tpm-dev/data",
            "-m",
            message,
            "-i",
            "tpm-dev",
        ];
        args.extend_from_slice(&identity);
        run(&args);
    };
    // Enrolled with a claim, the key made in the TPM.
    run(&[
        "enroll",
        "tpm-dev",
        "-H",
        "localhost",
        "-p",
        &fleet.enroll.port.to_string(),
        "--out",
        "device",
        "--cert",
        "backend_certs/factory_cert.pem",
        "--key",
        "backend_certs/factory.key",
        "--ca",
        "root_cert/root_ca_cert.pem",
        "--timeout",
        "20",
        "--key-uri",
        &format!(
            "pkcs11:token=device?module-path={}",
            peers::tpm::module().display()
        ),
        "--key-pin-env",
        "DEVICE_PIN",
    ]);
    let first = std::fs::read_to_string(d.join("device/tpm-dev.key")).unwrap();
    assert!(
        first.starts_with("pkcs11:token=device;object=tpm-dev;id=") && first.contains("made-here"),
        "{first}"
    );
    let old = cert_of(&d.join("device/tpm-dev_cert.pem"));

    // An independent subscriber's persistent session, then a publish, a
    // renewal and a publish with the new key, each a process signing in
    // the TPM.
    let watcher =
        |extra: &[&str]| ingest_watcher(&d, fleet.main.port, "devices/tpm-dev/data", extra);
    assert!(watcher(&["-E"]).status.success());
    publish("before");
    let mut renew = vec!["renew"];
    renew.extend_from_slice(&identity);
    run(&renew);
    publish("after");
    let seen = watcher(&["-C", "2", "-W", "20"]);
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout),
        "devices/tpm-dev/data before\ndevices/tpm-dev/data after\n",
        "{}",
        stderr(&seen)
    );

    // The key file names the new key; the TPM holds it alone; the old
    // certificate is revoked.
    let now = std::fs::read_to_string(d.join("device/tpm-dev.key")).unwrap();
    assert_ne!(now.lines().next(), first.lines().next(), "{now}");
    let objects = tpm.objects("device", DEVICE_PIN);
    assert_eq!(
        objects.matches("Private Key Object").count(),
        1,
        "{objects}"
    );
    let new_id = now.lines().next().unwrap().split("id=").nth(1).unwrap();
    let new_id: String = new_id
        .split(['?', ';'])
        .next()
        .unwrap()
        .replace('%', "")
        .to_ascii_lowercase();
    assert!(
        objects.contains(&format!("ID:         {new_id}")),
        "{objects}\n{new_id}"
    );
    assert!(pem_files(&d.join("device")).is_empty());
    let new = cert_of(&d.join("device/tpm-dev_cert.pem"));
    assert_ne!(new.serial(), old.serial());
    wait_for("the old certificate revoked", || {
        record(&d, &old.serial().to_string())["status"]["state"] == "revoked"
    });
}

/// Every file under `dir` holding a PEM private key.
fn pem_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            std::fs::read(p).is_ok_and(|b| String::from_utf8_lossy(&b).contains("PRIVATE KEY-----"))
        })
        .collect()
}

/// Mosquitto's own `mosquitto_sub` as the `ingest` identity (its PEM
/// files), a persistent session on `topic` at QoS 1 (`-c`), printing
/// `topic payload` lines; `extra` says what it does (`-E`: subscribe and
/// leave; `-C N -W S`: take N messages within S seconds).
fn ingest_watcher(d: &Path, port: u16, topic: &str, extra: &[&str]) -> std::process::Output {
    Command::new(peers::mosquitto::mosquitto_client("mosquitto_sub"))
        .current_dir(d)
        .args(["-h", "localhost", "-p", &port.to_string()])
        .args(["-t", topic, "-q", "1", "-v"])
        .args([
            "-c",
            "-i",
            "ingest",
            "--cafile",
            "root_cert/root_ca_cert.pem",
        ])
        .args(["--cert", "backend_certs/ingest_cert.pem"])
        .args(["--key", "backend_certs/ingest.key"])
        .args(extra)
        .output()
        .unwrap()
}
