//! The TLS failure matrix against a real Mosquitto (`require_certificate
//! true`): for each case, what `provision pub` reports and its exit code.
//! The table in `docs/troubleshooting.md` is this test's output; the test
//! fails when they differ, and `UPDATE_DOCS=1` rewrites it. Each case's
//! outcome is also asserted in the test itself (`check_outcomes`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use peers::mosquitto::{BrokerOptions, Mosquitto, Pki};
use peers::write;
use pki_core::{
    CertificateAuthority, CrlParams, Csr, CsrParams, IssueParams, KeyPair, KeyType, Profile,
    RevocationReason, RevokedEntry, Subject, SubjectAltName, Validity,
};

const DAY: Duration = Duration::from_secs(86_400);

/// One identity's files, relative to the PKI folder.
struct Files {
    cert: String,
    key: String,
}

/// Issues `name` from `ca` as `profile`, written as `name_cert.pem` (with
/// `chain` after the leaf) and `name.key` into `dir`.
fn issue(
    dir: &Path,
    ca: &CertificateAuthority,
    name: &str,
    profile: Profile,
    validity: Validity,
    chain: &str,
) -> Files {
    let key = KeyPair::generate(KeyType::P256).unwrap();
    let mut params = CsrParams::new(Subject::new(name).unwrap());
    if profile == Profile::Server {
        params.sans = vec![
            SubjectAltName::Dns("localhost".parse().unwrap()),
            SubjectAltName::Ip("127.0.0.1".parse().unwrap()),
        ];
    }
    let csr = Csr::new(&params, &key).unwrap();
    let issue = IssueParams {
        csr_names: pki_core::CsrNames::ALL,
        ..IssueParams::new(profile, validity)
    };
    let cert = ca.sign(&csr, &issue).unwrap().certificate;
    write(dir, &format!("{name}_cert.pem"), &(cert.to_pem() + chain));
    write(dir, &format!("{name}.key"), &key.to_pkcs8_pem().unwrap());
    Files {
        cert: format!("{name}_cert.pem"),
        key: format!("{name}.key"),
    }
}

fn root(name: &str, validity: Validity) -> CertificateAuthority {
    CertificateAuthority::new_root(
        &Subject::new(name).unwrap(),
        KeyPair::generate(KeyType::P256).unwrap(),
        validity,
    )
    .unwrap()
}

/// Runs `provision pub` in `dir`; returns the exit code and what it said
/// (the error line, or the success line), made stable for the docs.
fn publish(
    dir: &Path,
    host: &str,
    broker: &Mosquitto,
    files: &Files,
    ca: &str,
    extra: &[&str],
) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(dir)
        .args(["pub", "-H", host, "-p", &broker.port.to_string()])
        .args(["-t", "matrix/test", "-m", "hello", "-i", "matrix"])
        .args(["--cert", &files.cert, "--key", &files.key, "--ca", ca])
        .args(extra)
        .env("MATRIX_KEY_PASS", "the wrong passphrase")
        .output()
        .unwrap();
    let text = if out.status.success() {
        "(published; prints nothing)".to_owned()
    } else {
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let line = text.lines().next().unwrap_or_default();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    let line = line.replace(&broker.port.to_string(), "PORT");
    (out.status.code().unwrap_or(-1), without_times(&line))
}

/// Replaces `YYYY-MM-DD HH:MM:SS` (with an optional ` UTC` or `Z`) by
/// `<time>`: the table must not change from run to run.
fn without_times(line: &str) -> String {
    let shape = b"dddd-dd-dd dd:dd:dd";
    let bytes = line.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let fits = bytes.len() - i >= shape.len()
            && shape.iter().zip(&bytes[i..]).all(|(s, b)| match s {
                b'd' => b.is_ascii_digit(),
                b' ' => *b == b' ' || *b == b'T',
                s => s == b,
            });
        if fits {
            out.push_str("<time>");
            i += shape.len();
            for suffix in [" UTC", "Z"] {
                if line[i..].starts_with(suffix) {
                    i += suffix.len();
                }
            }
        } else {
            let c = line[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[test]
fn the_tls_failure_matrix_matches_docs_troubleshooting() {
    let pki = Pki::new();
    let dir = pki.dir.path().to_owned();
    let ca_file = "ca.pem";
    let now = SystemTime::now();
    let month = Validity::days_from_now(30).unwrap();
    let mut rows: Vec<(&str, (i32, String))> = Vec::new();

    // The broker every ordinary case uses, refusing one revoked client.
    let good = issue(&dir, &pki.ca, "good", Profile::Client, month, "");
    let revoked = issue(&dir, &pki.ca, "revoked", Profile::Client, month, "");
    let revoked_serial =
        pki_core::Certificate::from_pem(&std::fs::read_to_string(dir.join(&revoked.cert)).unwrap())
            .unwrap()
            .serial();
    let crl = pki
        .ca
        .crl(
            &[RevokedEntry {
                serial: revoked_serial,
                revoked_at: now - Duration::from_secs(60),
                reason: RevocationReason::KeyCompromise,
            }],
            &CrlParams {
                number: 1,
                this_update: now - Duration::from_secs(60),
                next_update: now + DAY,
            },
        )
        .unwrap();
    let crl_path = write(&dir, "crl.pem", &crl.to_pem());
    let broker = Mosquitto::start(
        &pki,
        &BrokerOptions {
            extra: format!("crlfile {}\n", crl_path.display()),
            ..Default::default()
        },
    );
    let pubs = |host: &str, files: &Files, ca: &str, extra: &[&str]| {
        publish(&dir, host, &broker, files, ca, extra)
    };

    rows.push((
        "a valid client certificate",
        pubs("localhost", &good, ca_file, &[]),
    ));

    // Another CA's client: the bundle trusts both CAs, so only the broker
    // can refuse it.
    let other = root("Other Root", month);
    let foreign = issue(&dir, &other, "foreign", Profile::Client, month, "");
    let both = "both.pem";
    write(
        &dir,
        both,
        &(pki.ca.certificate().to_pem() + &other.certificate().to_pem()),
    );
    rows.push((
        "client certificate from another CA",
        pubs("localhost", &foreign, both, &[]),
    ));
    rows.push((
        "client certificate from another CA, only that CA in the bundle",
        pubs("localhost", &foreign, ca_file, &[]),
    ));

    // A fake CA with our CA's exact subject: same name, other key.
    let our_name =
        Subject::from_name(pki.ca.certificate().as_x509().tbs_certificate().subject()).unwrap();
    let fake =
        CertificateAuthority::new_root(&our_name, KeyPair::generate(KeyType::P256).unwrap(), month)
            .unwrap();
    let impostor = issue(&dir, &fake, "impostor", Profile::Client, month, "");
    let fake_ca = "fake-ca.pem";
    write(&dir, fake_ca, &fake.certificate().to_pem());
    rows.push((
        "a fake CA with our CA's name (the bundle trusts the fake)",
        pubs("localhost", &impostor, fake_ca, &[]),
    ));
    let both_fake = "real-and-fake.pem";
    write(
        &dir,
        both_fake,
        &(pki.ca.certificate().to_pem() + &fake.certificate().to_pem()),
    );
    rows.push((
        "a fake CA with our CA's name (the bundle trusts both)",
        pubs("localhost", &impostor, both_fake, &[]),
    ));

    // Dates.
    let old_root = root(
        "Old Root",
        Validity::new(now - 60 * DAY, now + 60 * DAY).unwrap(),
    );
    let old_ca = "old-ca.pem";
    write(&dir, old_ca, &old_root.certificate().to_pem());
    let expired = issue(
        &dir,
        &old_root,
        "expired",
        Profile::Client,
        Validity::new(now - 30 * DAY, now - DAY).unwrap(),
        "",
    );
    rows.push((
        "expired client certificate",
        pubs("localhost", &expired, old_ca, &[]),
    ));
    let early = issue(
        &dir,
        &old_root,
        "early",
        Profile::Client,
        Validity::new(now + DAY, now + 30 * DAY).unwrap(),
        "",
    );
    rows.push((
        "client certificate not yet valid",
        pubs("localhost", &early, old_ca, &[]),
    ));

    rows.push((
        "revoked client (the broker loads our CRL)",
        pubs("localhost", &revoked, ca_file, &[]),
    ));

    let server_as_client = issue(&dir, &pki.ca, "srv", Profile::Server, month, "");
    rows.push((
        "a server certificate used as a client certificate",
        pubs("localhost", &server_as_client, ca_file, &[]),
    ));

    // An encrypted client key, with the wrong passphrase.
    let key = KeyPair::from_pem(&std::fs::read_to_string(dir.join(&good.key)).unwrap()).unwrap();
    write(
        &dir,
        "good-encrypted.key",
        &key.to_encrypted_pkcs8_pem(b"the right passphrase").unwrap(),
    );
    let encrypted = Files {
        cert: good.cert.clone(),
        key: "good-encrypted.key".into(),
    };
    rows.push((
        "encrypted client key, wrong passphrase",
        pubs(
            "localhost",
            &encrypted,
            ca_file,
            &["--passphrase-env", "MATRIX_KEY_PASS"],
        ),
    ));
    rows.push((
        "encrypted client key, no passphrase given",
        pubs("localhost", &encrypted, ca_file, &[]),
    ));
    drop(broker);

    // The wrong name dialled: a broker certificate for localhost only,
    // reached at 127.0.0.1.
    let narrow = Pki::with_server_names(&["localhost"], &[]);
    let broker = Mosquitto::start(
        &narrow,
        &BrokerOptions {
            cafile: Some(pki.ca_path.clone()),
            ..Default::default()
        },
    );
    // Our client trusts the CA of that broker certificate too.
    let narrow_ca = "with-narrow-ca.pem";
    write(
        &dir,
        narrow_ca,
        &(pki.ca.certificate().to_pem() + &narrow.ca.certificate().to_pem()),
    );
    rows.push((
        "the wrong name dialled (127.0.0.1; the broker certificate names localhost only)",
        publish(&dir, "127.0.0.1", &broker, &good, narrow_ca, &[]),
    ));
    drop(broker);

    // A broker presenting a client certificate as its server certificate.
    let wrong_server = issue(
        &dir,
        &pki.ca,
        "client-as-server",
        Profile::Client,
        month,
        "",
    );
    let broker = Mosquitto::start(
        &pki,
        &BrokerOptions {
            server: Some((dir.join(&wrong_server.cert), dir.join(&wrong_server.key))),
            ..Default::default()
        },
    );
    rows.push((
        "the broker presents a client certificate",
        publish(&dir, "localhost", &broker, &good, ca_file, &[]),
    ));
    drop(broker);

    // A chain through an intermediate CA: the broker's certificate and the
    // client's each carry the intermediate; both trust only the root.
    let inter_key = KeyPair::generate(KeyType::P256).unwrap();
    let inter_csr = Csr::new(
        &CsrParams::new(Subject::new("Matrix Intermediate").unwrap()),
        &inter_key,
    )
    .unwrap();
    let inter_cert = pki
        .ca
        .sign_intermediate(&inter_csr, Validity::days_from_now(60).unwrap(), 0)
        .unwrap()
        .certificate;
    let intermediate = CertificateAuthority::from_parts(inter_cert.clone(), inter_key).unwrap();
    let chain = inter_cert.to_pem();
    let chained_server = issue(
        &dir,
        &intermediate,
        "chained-broker",
        Profile::Server,
        month,
        &chain,
    );
    let chained_client = issue(
        &dir,
        &intermediate,
        "chained",
        Profile::Client,
        month,
        &chain,
    );
    let broker = Mosquitto::start(
        &pki,
        &BrokerOptions {
            server: Some((
                dir.join(&chained_server.cert),
                dir.join(&chained_server.key),
            )),
            ..Default::default()
        },
    );
    rows.push((
        "a chain through an intermediate CA (full chains on both sides)",
        publish(&dir, "localhost", &broker, &chained_client, ca_file, &[]),
    ));
    drop(broker);

    // TLS versions.
    for (case, version) in [
        ("a broker that speaks only TLS 1.2", "tlsv1.2"),
        ("a broker that speaks only TLS 1.3", "tlsv1.3"),
    ] {
        let broker = Mosquitto::start(
            &pki,
            &BrokerOptions {
                extra: format!("tls_version {version}\n"),
                ..Default::default()
            },
        );
        rows.push((
            case,
            publish(&dir, "localhost", &broker, &good, ca_file, &[]),
        ));
    }

    check_outcomes(&rows);
    let table = render(&rows);
    check_docs(&table);
}

/// Each case's outcome, asserted here and not only compared with the doc
/// (which `UPDATE_DOCS=1` rewrites: a revoked client that got through would
/// be recorded, not caught): what must connect connects, what must be
/// refused is refused for the right reason.
fn check_outcomes(rows: &[(&str, (i32, String))]) {
    let expected: &[(&str, i32, &str)] = &[
        ("a valid client certificate", 0, ""),
        ("client certificate from another CA", 1, "(UnknownCA)"),
        (
            "client certificate from another CA, only that CA in the bundle",
            1,
            "not issued by the CA",
        ),
        (
            "a fake CA with our CA's name (the bundle trusts the fake)",
            1,
            "signature does not verify",
        ),
        (
            "a fake CA with our CA's name (the bundle trusts both)",
            1,
            "(UnknownCA)",
        ),
        ("expired client certificate", 1, "expired"),
        ("client certificate not yet valid", 1, "not valid before"),
        (
            "revoked client (the broker loads our CRL)",
            1,
            "(CertificateRevoked)",
        ),
        (
            "a server certificate used as a client certificate",
            1,
            "not a client certificate",
        ),
        (
            "encrypted client key, wrong passphrase",
            1,
            "cannot decrypt",
        ),
        (
            "encrypted client key, no passphrase given",
            1,
            "is encrypted",
        ),
        (
            "the wrong name dialled (127.0.0.1; the broker certificate names localhost only)",
            1,
            "not valid for 127.0.0.1",
        ),
        (
            "the broker presents a client certificate",
            1,
            "not a server certificate",
        ),
        (
            "a chain through an intermediate CA (full chains on both sides)",
            0,
            "",
        ),
        ("a broker that speaks only TLS 1.2", 0, ""),
        ("a broker that speaks only TLS 1.3", 0, ""),
    ];
    assert_eq!(rows.len(), expected.len(), "every case has its expectation");
    for ((case, (code, said)), (name, want_code, want_said)) in rows.iter().zip(expected) {
        assert_eq!(case, name);
        assert_eq!(code, want_code, "{case}: {said}");
        assert!(said.contains(want_said), "{case}: {said}");
    }
}

fn render(rows: &[(&str, (i32, String))]) -> String {
    let mut table =
        String::from("| case | what `provision pub` says | exit code |\n| --- | --- | --- |\n");
    for (case, (code, said)) in rows {
        let said = said.replace('|', "\\|");
        table.push_str(&format!("| {case} | {said} | {code} |\n"));
    }
    table
}

const START: &str = "<!-- matrix:start (generated by crates/provision/tests/matrix.rs) -->\n";
const END: &str = "<!-- matrix:end -->";

fn check_docs(table: &str) {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/troubleshooting.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (Some(start), Some(end)) = (doc.find(START), doc.find(END)) else {
        panic!("{} has no matrix markers", path.display());
    };
    let current = &doc[start + START.len()..end];
    if current == table {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let updated = format!("{}{START}{table}{}", &doc[..start], &doc[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    panic!(
        "docs/troubleshooting.md's matrix is out of date; run `UPDATE_DOCS=1 cargo test -p provision --features external-tools --test matrix` to rewrite it.\n\
         --- in the docs\n{current}\n--- observed now\n{table}"
    );
}
