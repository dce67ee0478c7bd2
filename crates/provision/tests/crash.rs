//! Crash safety: `provision fleet` for 5,000 devices is killed with SIGKILL
//! at several moments; a plain re-run then completes, and afterwards every
//! identity is a complete, matching, valid key/certificate pair, and every
//! inventory line matches a certificate on disk (and the other way round).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::ok;
use pki_core::{Certificate, KeyPair, Profile, VerifyOptions};

const DEVICES: usize = 5_000;

/// A delay in `0..max_ms` ms, different each run (std's random hasher
/// keys), printed so a failing run can be told apart.
fn random_ms(max_ms: u64) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(max_ms);
    h.finish() % max_ms
}

fn fleet(dir: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(dir)
        .args(["fleet", "fleet.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_fleet_killed_at_random_moments_is_repaired_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("fleet.toml"),
        format!(
            "[ca]\ndir = \"root_cert\"\ncommon_name = \"Crash Root\"\n\
             [[devices]]\nprefix = \"dev-\"\ncount = {DEVICES}\n"
        ),
    )
    .unwrap();

    // How long an uninterrupted run takes here, to aim the kills inside it
    // (measured on a copy, so the kills start from nothing).
    let probe = tempfile::tempdir().unwrap();
    std::fs::copy(d.join("fleet.toml"), probe.path().join("fleet.toml")).unwrap();
    let started = std::time::Instant::now();
    assert!(fleet(probe.path()).wait().unwrap().success());
    let full = started.elapsed().as_millis() as u64;
    drop(probe);

    // Five rounds at least, more (up to 20) until one interrupted a run.
    // A run that finished before its kill says runs here are quicker than
    // the probe (a cold first start, a slow sync): later kills aim inside
    // that, and start again from nothing, so there is work to interrupt.
    let mut interrupted = 0;
    let mut window = full.max(50);
    let mut round = 0;
    while round < 5 || (interrupted == 0 && round < 20) {
        let mut child = fleet(d);
        let delay = random_ms(window);
        std::thread::sleep(Duration::from_millis(delay));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap_or(());
        let status = child.wait().unwrap();
        // Killed, not finished: SIGKILL ended it.
        let killed = std::os::unix::process::ExitStatusExt::signal(&status) == Some(9);
        interrupted += usize::from(killed);
        eprintln!(
            "round {round}: killed after {delay} ms of ~{window} ms (finished: {finished}, \
             interrupted: {killed})"
        );
        if finished && !killed {
            window = delay.max(20);
            for entry in std::fs::read_dir(d).unwrap() {
                let path = entry.unwrap().path();
                if path.file_name() != Some("fleet.toml".as_ref()) {
                    if path.is_dir() {
                        std::fs::remove_dir_all(&path).unwrap();
                    } else {
                        std::fs::remove_file(&path).unwrap();
                    }
                }
            }
        }
        round += 1;
    }
    assert!(
        interrupted > 0,
        "no kill interrupted a run: the test proved nothing"
    );

    let out = ok(d, &["fleet", "fleet.toml"]);
    eprintln!("{out}");
    let again = ok(d, &["fleet", "fleet.toml"]);
    assert!(
        again.contains(" 0 issued"),
        "a second run issues nothing: {again}"
    );

    // Every identity: the three files, a key that matches its certificate,
    // valid under the CA as a client.
    let ca = Certificate::from_pem(
        &std::fs::read_to_string(d.join("root_cert/root_ca_cert.pem")).unwrap(),
    )
    .unwrap();
    let options = VerifyOptions {
        profile: Some(Profile::Client),
        ..VerifyOptions::now()
    };
    let mut on_disk = HashMap::new();
    for i in 1..=DEVICES {
        let base = d.join("backend_certs").join(format!("dev-{i}"));
        let cert_path = d.join("backend_certs").join(format!("dev-{i}_cert.pem"));
        let cert = Certificate::from_pem(&std::fs::read_to_string(&cert_path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", cert_path.display()));
        let key = KeyPair::from_pem(&std::fs::read_to_string(base.with_extension("key")).unwrap())
            .unwrap_or_else(|e| panic!("dev-{i}.key: {e}"));
        assert!(
            key.matches_public_key(&cert.public_key_der().unwrap()),
            "dev-{i}: the key is not the certificate's"
        );
        pki_core::verify(&cert, std::slice::from_ref(&ca), &options).unwrap();
        assert!(
            d.join("backend_certs")
                .join(format!("dev-{i}_csr.pem"))
                .is_file()
        );
        on_disk.insert(cert.serial().to_string(), cert_path);
    }
    let files = std::fs::read_dir(d.join("backend_certs")).unwrap().count();
    assert_eq!(files, 3 * DEVICES, "no stray or temp files");

    // Every inventory record names a certificate on disk with its serial,
    // and every certificate on disk is in the inventory, once.
    let mut recorded = HashSet::new();
    for record in common::records(d) {
        let line = record.to_string();
        let serial = record["serial"].as_str().unwrap().to_owned();
        let path = d.join(record["cert_path"].as_str().unwrap());
        assert_eq!(
            on_disk.get(&serial).map(|p| p.file_name()),
            Some(path.file_name()),
            "inventory line without its certificate on disk: {line}"
        );
        assert!(recorded.insert(serial), "recorded twice: {line}");
    }
    assert_eq!(recorded.len(), DEVICES);
}
