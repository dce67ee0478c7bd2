//! The ingest's HTTP side over mutual TLS, with real clients: `curl` with a
//! reader certificate reads `/api/messages`; without a certificate, or with
//! one from another CA, the handshake fails; a device certificate gets 403;
//! a reader revoked in the CRL file is refused at the handshake (the file
//! is read again when it changes); the OpenAPI contract is served and
//! schemathesis, run against it with the reader's certificate, finds no
//! server error and no answer outside the contract. Plain HTTP on an
//! address other than loopback is refused at startup.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use common::{Db, IngestCommands, Publisher};
use mqtt_tls::ClientCert;
use peers::mosquitto::{BrokerOptions, Mosquitto, Pki};
use pki_core::{
    CertificateAuthority, CrlParams, Csr, CsrParams, IssueParams, KeyPair, KeyType, Profile,
    RevocationReason, RevokedEntry, Subject, SubjectAltName, Validity,
};

/// A client certificate from `ca` for `name` with `role` (the URI SAN
/// `provision` gives), written into `dir`.
fn identity(ca: &CertificateAuthority, dir: &Path, name: &str, role: &str) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate(KeyType::P256).unwrap();
    let csr = Csr::new(&CsrParams::new(Subject::new(name).unwrap()), &key).unwrap();
    let mut params = IssueParams::new(Profile::Client, Validity::days_from_now(30).unwrap());
    params
        .sans
        .push(SubjectAltName::uri(format!("urn:mqtt-mtls:role:{role}")).unwrap());
    let cert = ca.sign(&csr, &params).unwrap().certificate;
    let cert_path = dir.join(format!("{name}_cert.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.to_pem()).unwrap();
    std::fs::write(&key_path, key.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
    (cert_path, key_path)
}

/// Writes the CA's CRL revoking `serials` (CRL number `number`).
fn write_crl(ca: &CertificateAuthority, path: &Path, number: u64, serials: &[pki_core::Serial]) {
    let now = SystemTime::now();
    let revoked: Vec<RevokedEntry> = serials
        .iter()
        .map(|s| RevokedEntry {
            serial: s.clone(),
            revoked_at: now - Duration::from_secs(60),
            reason: RevocationReason::KeyCompromise,
        })
        .collect();
    let crl = ca
        .crl(
            &revoked,
            &CrlParams {
                number,
                this_update: now - Duration::from_secs(60),
                next_update: now + Duration::from_secs(86_400),
            },
        )
        .unwrap();
    // Replaced atomically, as `provision` does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, crl.to_pem()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `mqtt-ingest` over HTTPS; its two addresses.
struct Served {
    child: Child,
    https: String,
    probe: String,
    /// Its log lines after the start, as they come.
    log: std::sync::mpsc::Receiver<String>,
}

impl Served {
    /// Waits (up to 10 s) for a log line containing `needle`; every line
    /// read meanwhile.
    fn log_until(&self, needle: &str) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.log.recv_timeout(Duration::from_secs(10)) {
            let done = line.contains(needle);
            lines.push(line);
            if done {
                return lines;
            }
        }
        panic!("no {needle:?} in the log:\n{}", lines.join("\n"));
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(mut cmd: Command) -> Served {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut https, mut probe) = (None, None);
    let mut seen = String::new();
    while https.is_none() || probe.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("mqtt-ingest did not start:\n{seen}"));
        let after = |marker: &str| {
            line.split(marker)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned)
        };
        https = https.or(after("listening on https://"));
        probe = probe.or(after("health and metrics on http://"));
        seen.push_str(&line);
        seen.push('\n');
    }
    Served {
        child,
        https: https.unwrap(),
        probe: probe.unwrap(),
        log: rx,
    }
}

/// `curl` to `url` with this client certificate (or none): the HTTP status
/// and body, or `Err` with curl's message when there was no HTTP answer.
fn curl(
    ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
    url: &str,
) -> Result<(u16, String), String> {
    let mut cmd = Command::new("curl");
    // TLS 1.2: the server's verdict on our certificate comes within the
    // handshake, so curl reports its alert.
    cmd.args([
        "--silent",
        "--show-error",
        "--max-time",
        "10",
        "--tls-max",
        "1.2",
    ])
    .arg("--cacert")
    .arg(ca)
    .args(["--write-out", "\n%{http_code}"]);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd.arg(url).output().expect("curl is installed");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    Ok((code.trim().parse().unwrap(), body.to_owned()))
}

#[test]
fn readers_read_over_mutual_tls_and_nobody_else() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = Db::Sqlite(d.join("ingest.db"));
    let bundle = pki.client("ingest");
    let reader = identity(&pki.ca, d, "dash", "reader");
    let device = identity(&pki.ca, d, "sensor-1", "device");
    let other_ca = peers::root(KeyType::P256);
    let stranger = identity(&other_ca, d, "stranger", "reader");
    let crl = d.join("crl.pem");
    write_crl(&pki.ca, &crl, 1, &[]);

    let mut cmd = common::Ingest::command(&bundle, &broker, &db, "ingest-https");
    cmd.arg("--http-cert")
        .arg(&pki.server_cert)
        .arg("--http-key")
        .arg(&pki.server_key)
        .arg("--http-client-ca")
        .arg(&pki.ca_path)
        .arg("--http-crl")
        .arg(&crl)
        .args(["--probe-listen", "127.0.0.1:0"]);
    let served = start(cmd);
    let port = served.https.rsplit(':').next().unwrap().to_owned();
    let url = |path: &str| format!("https://localhost:{port}{path}");

    // A message to read (sent again until the ingest, subscribing, has it).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let publisher = runtime.block_on(Publisher::connect(&pki, &broker));
    let ca = &pki.ca_path;
    let mut body = String::new();
    for i in 0..100 {
        if i % 10 == 0 {
            runtime.block_on(publisher.publish("load/1", "hello over mtls"));
        }
        let (status, b) = curl(ca, Some(&reader), &url("/api/messages")).unwrap();
        assert_eq!(status, 200, "{b}");
        body = b;
        if body.contains("hello over mtls") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(body.contains("hello over mtls"), "{body}");

    // No certificate, or another CA's: no TLS session, no HTTP answer.
    let none = curl(ca, None, &url("/api/messages")).unwrap_err();
    assert!(!none.is_empty());
    let foreign = curl(ca, Some(&stranger), &url("/api/messages")).unwrap_err();
    assert!(foreign.contains("alert"), "{foreign}");
    // Logged at WARN once for the address (the second refusal within the
    // minute is counted, not logged).
    let lines = served.log_until("HTTPS: refused 127.0.0.1");
    assert!(lines.iter().any(|l| l.contains("WARN")), "{lines:?}");
    let (status, _) = curl(ca, Some(&reader), &url("/healthz")).unwrap();
    assert_eq!(status, 200);
    // A device: 403, saying why.
    let (status, body) = curl(ca, Some(&device), &url("/api/messages")).unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("reader"), "{body}");
    let (status, _) = curl(ca, Some(&device), &url("/metrics")).unwrap();
    assert_eq!(status, 403);
    // Health and the contract: any identity of the CA.
    let (status, _) = curl(ca, Some(&device), &url("/healthz")).unwrap();
    assert_eq!(status, 200);
    let (status, contract) = curl(ca, Some(&device), &url("/api/openapi.json")).unwrap();
    assert_eq!(status, 200);
    let contract: serde_json::Value = serde_json::from_str(&contract).unwrap();
    assert!(
        contract["paths"]["/api/messages"]["get"].is_object(),
        "{contract}"
    );
    let (status, metrics) = curl(ca, Some(&reader), &url("/metrics")).unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("mqtt_ingest_"), "{metrics}");
    // The probe port: plain HTTP on loopback, health and metrics only.
    let probe = |path: &str| {
        let out = Command::new("curl")
            .args([
                "--silent",
                "--write-out",
                "%{http_code}",
                "--output",
                "/dev/null",
            ])
            .arg(format!("http://{}{path}", served.probe))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(probe("/healthz"), "200");
    assert_eq!(probe("/api/messages"), "404");

    // The reader revoked: refused at the handshake once the CRL file
    // changed, without a restart.
    let serial = pki_core::Certificate::from_pem(&std::fs::read_to_string(&reader.0).unwrap())
        .unwrap()
        .serial();
    write_crl(&pki.ca, &crl, 2, &[serial]);
    let revoked = curl(ca, Some(&reader), &url("/api/messages")).unwrap_err();
    assert!(revoked.contains("revoked"), "{revoked}");

    // schemathesis against the contract, with a reader certificate
    // (another one: the first is revoked).
    let fuzzer = identity(&pki.ca, d, "fuzzer", "reader");
    let st = peers::schemathesis();
    let out = Command::new(&st)
        .current_dir(d)
        .args(["run", &url("/api/openapi.json")])
        .args(["--checks", "all", "--max-examples", "60"])
        .arg("--tls-verify")
        .arg(ca)
        .arg("--request-cert")
        .arg(&fuzzer.0)
        .arg("--request-cert-key")
        .arg(&fuzzer.1)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
    // It ran: the one operation tested, and cases generated.
    assert!(report.contains("Tested: 1"), "{report}");
    assert!(report.contains("No issues found"), "{report}");
    drop(served);
}

#[test]
fn plain_http_beyond_loopback_is_refused_at_startup() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let db = Db::Sqlite(dir.path().join("ingest.db"));
    let bundle: ClientCert = pki.client("ingest");
    let plain = |extra: &[&str]| {
        let mut cmd = common::Ingest::command_listening(
            &bundle,
            broker.port,
            &db,
            "ingest-plain",
            "0.0.0.0:0",
        );
        cmd.args(extra);
        cmd
    };
    let out = plain(&[]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve every stored message over plain HTTP on 0.0.0.0"),
        "{err}"
    );
    assert!(err.contains("--insecure-plain-http"), "{err}");
    // Said loudly, it starts.
    let ingest = common::Ingest::spawn(&mut plain(&["--insecure-plain-http"]));
    assert!(
        ingest.log().contains("listening on http://0.0.0.0:"),
        "{}",
        ingest.log()
    );
}
