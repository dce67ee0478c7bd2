//! The real peers our suites and `mqtt-bench` run against: a Mosquitto
//! ([`mosquitto`]), a PostgreSQL ([`postgres`]), the `mqtt-ingest` process
//! ([`ingest`]), a TCP proxy that injects faults ([`proxy`]), the outside
//! tools (OpenSSL, pkilint, schemathesis) and a fixture of certificates.
//! Each process runs in its own temp folder on a free port of 127.0.0.1 and
//! is stopped by `Drop`.
//!
//! This is harness code: it panics with a message saying what is missing
//! and how to get it, as a test would.
//!
//! `cargo xtask test` installs the tools and passes their paths in
//! `MQTT_MTLS_OPENSSL` and `MQTT_MTLS_PKILINT_BIN`; without them the tools
//! are looked up on `PATH`, and a missing tool fails the test with a message
//! saying how to get it (never a silent skip).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod ingest;
pub mod mosquitto;
pub mod postgres;
pub mod proxy;
pub mod softhsm;
pub mod tpm;
pub mod vocabulary;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pki_core::{
    Certificate, CertificateAuthority, Csr, CsrParams, IssueParams, KeyPair, KeyType, Profile,
    Subject, SubjectAltName, Validity,
};

/// The `openssl` binary.
pub fn openssl() -> PathBuf {
    tool(
        Some("MQTT_MTLS_OPENSSL"),
        "openssl",
        "apt-get install -y openssl",
    )
}

/// A pkilint entry point such as `lint_pkix_cert`.
pub fn pkilint(program: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("MQTT_MTLS_PKILINT_BIN") {
        let path = Path::new(&dir).join(program);
        assert!(path.is_file(), "{} does not exist", path.display());
        return path;
    }
    tool(
        None,
        program,
        "run the suite with `cargo xtask test`, which installs pkilint (pip install pkilint)",
    )
}

/// schemathesis (the OpenAPI fuzzer): `$MQTT_MTLS_SCHEMATHESIS`, else from
/// `PATH`.
pub fn schemathesis() -> PathBuf {
    tool(
        Some("MQTT_MTLS_SCHEMATHESIS"),
        "schemathesis",
        "run the suite with `cargo xtask test`, which installs schemathesis (pip install schemathesis)",
    )
}

/// Whether this process runs as root (then the brokers and databases we
/// start drop to their own users).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `program` from the variable `env` when set, else from `PATH`.
pub(crate) fn tool(env: Option<&str>, program: &str, how: &str) -> PathBuf {
    if let Some(path) = env.and_then(std::env::var_os) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not installed: {how}"))
}

/// Runs a command and returns its output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout and stderr.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A root CA with the given key type.
pub fn root(key_type: KeyType) -> CertificateAuthority {
    let subject = Subject::new(format!("Test Root {key_type}"))
        .unwrap()
        .country("US")
        .unwrap()
        .organization("MyOrg")
        .unwrap();
    CertificateAuthority::new_root(
        &subject,
        KeyPair::generate(key_type).unwrap(),
        Validity::days_from_now(3650).unwrap(),
    )
    .unwrap()
}

/// Issues a certificate of `profile` with a fresh key of `key_type`; server
/// certificates name `broker.example.com` (fully qualified: pkilint rejects
/// single-label names) and 127.0.0.1.
pub fn issue(
    ca: &CertificateAuthority,
    key_type: KeyType,
    profile: Profile,
) -> (KeyPair, Certificate) {
    let key = KeyPair::generate(key_type).unwrap();
    let cn = match profile {
        Profile::Server => "broker",
        _ => "client1",
    };
    let mut params = CsrParams::new(
        Subject::new(cn)
            .unwrap()
            .country("US")
            .unwrap()
            .organization("MyOrg")
            .unwrap(),
    );
    if profile == Profile::Server {
        params.sans = vec![
            SubjectAltName::Dns("broker.example.com".parse().unwrap()),
            SubjectAltName::Ip("127.0.0.1".parse().unwrap()),
        ];
    }
    let csr = Csr::new(&params, &key).unwrap();
    let cert = ca
        .sign(
            &csr,
            &IssueParams {
                csr_names: pki_core::CsrNames::ALL,
                ..IssueParams::new(profile, Validity::days_from_now(365).unwrap())
            },
        )
        .unwrap()
        .certificate;
    (key, cert)
}
