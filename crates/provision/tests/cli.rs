//! Every command of `provision`, run as a process in a temp dir, including
//! its refusals. Self-contained; the flows cross-checked with OpenSSL are in
//! `cli_openssl.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{fails, mode, ok};

#[test]
fn device_side_csr_then_sign() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    ok(
        d,
        &[
            "csr",
            "sensor-7",
            "--out",
            "device",
            "--key-type",
            "ed25519",
        ],
    );
    assert_eq!(mode(&d.join("device/sensor-7.key")), 0o600);
    let out = ok(
        d,
        &[
            "sign",
            "device/sensor-7_csr.pem",
            "--profile",
            "client",
            "--days",
            "30",
        ],
    );
    assert!(out.contains("device/sensor-7_cert.pem"), "{out}");
    ok(
        d,
        &["verify", "device/sensor-7_cert.pem", "--profile", "client"],
    );
    // Signing again refuses to overwrite.
    let e = fails(
        d,
        &["sign", "device/sensor-7_csr.pem", "--profile", "client"],
        1,
    );
    assert!(e.contains("already exists: pass --force"), "{e}");
    ok(
        d,
        &[
            "sign",
            "device/sensor-7_csr.pem",
            "--profile",
            "client",
            "--force",
        ],
    );

    // A tampered CSR is refused, naming the file.
    let pem = std::fs::read_to_string(d.join("device/sensor-7_csr.pem")).unwrap();
    let der_b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    // Flip one base64 character in the middle of the body.
    let target = der_b64.len() / 3;
    let c = der_b64.as_bytes()[target] as char;
    let swapped = if c == 'A' { 'B' } else { 'A' };
    let mut body = der_b64.clone();
    body.replace_range(target..=target, &swapped.to_string());
    let rebuilt = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        body.as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    );
    std::fs::write(d.join("device/tampered_csr.pem"), rebuilt).unwrap();
    let e = fails(
        d,
        &["sign", "device/tampered_csr.pem", "--profile", "client"],
        1,
    );
    assert!(e.starts_with("error: device/tampered_csr.pem:"), "{e}");
    assert!(!d.join("device/tampered_cert.pem").exists());
}

#[test]
fn refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Nothing works without a CA, and it says where it looked, how to
    // name the right folder, and how to make one.
    let e = fails(d, &["issue", "client", "c1"], 1);
    assert!(
        e.contains("no CA in root_cert (looked for root_cert/root_ca_cert.pem, from ")
            && e.contains("give the CA folder with --ca-dir DIR, or make a new CA there with `provision init-ca --ca-dir root_cert`"),
        "{e}"
    );

    ok(d, &["init-ca"]);
    let before = std::fs::read(d.join("root_cert/root_ca.key")).unwrap();
    let e = fails(d, &["init-ca"], 1);
    assert!(e.contains("already exists: pass --force"), "{e}");
    assert_eq!(
        std::fs::read(d.join("root_cert/root_ca.key")).unwrap(),
        before,
        "the CA key was touched"
    );

    ok(d, &["issue", "client", "c1"]);
    let cert = std::fs::read(d.join("backend_certs/c1_cert.pem")).unwrap();
    let e = fails(d, &["issue", "client", "c1"], 1);
    assert!(e.contains("backend_certs/c1.key already exists"), "{e}");
    assert_eq!(
        std::fs::read(d.join("backend_certs/c1_cert.pem")).unwrap(),
        cert
    );

    for bad in ["../escape", "a/b", ".hidden", "with space"] {
        let e = fails(d, &["issue", "client", bad], 1);
        assert!(e.contains("invalid name"), "{e}");
    }
    assert!(!d.join("escape.key").exists());

    let e = fails(d, &["issue", "server", "nosan"], 1);
    assert!(e.contains("needs at least one DNS or IP"), "{e}");
    let e = fails(d, &["issue", "client", "c2", "--country", "USA"], 1);
    assert!(e.contains("countryName"), "{e}");
    assert!(
        !d.join("backend_certs/c2.key").exists(),
        "nothing is written on error"
    );

    // Usage errors exit 2.
    fails(d, &["issue", "client"], 2);
    fails(d, &["issue", "client", "c3", "--key-type", "dsa"], 2);
    fails(d, &["frobnicate"], 2);

    // A truncated certificate is an error naming the file.
    let pem = String::from_utf8(cert).unwrap();
    std::fs::write(d.join("cut.pem"), &pem[..pem.len() / 2]).unwrap();
    let e = fails(d, &["inspect", "cut.pem"], 1);
    assert!(e.contains("cut.pem") && e.contains("truncated"), "{e}");
    let e = fails(d, &["verify", "missing.pem"], 1);
    assert!(e.contains("reading missing.pem"), "{e}");
}

/// Runs `provision ARGS` in `dir` on a pseudo-terminal (util-linux's
/// `script`), typing `input`; returns the exit code and the terminal text.
fn at_a_terminal(dir: &Path, args: &[&str], input: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let command = std::iter::once(env!("CARGO_BIN_EXE_provision"))
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("script")
        .current_dir(dir)
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux's `script` (package bsdutils) runs a command on a terminal");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn an_encrypted_ca_key_is_made_and_unlocked_at_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Two different passphrases: refused, nothing written.
    let (code, text) = at_a_terminal(d, &["init-ca", "--encrypt"], "one\ntwo\n");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("the two passphrases differ"), "{text}");
    assert!(!d.join("root_cert/root_ca.key").exists());
    // Without a terminal, --encrypt says what to do instead.
    let e = fails(d, &["init-ca", "--encrypt"], 1);
    assert!(e.contains("use --passphrase-env VAR"), "{e}");

    let (code, text) = at_a_terminal(d, &["init-ca", "--encrypt"], "pass phrase\npass phrase\n");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("new passphrase for root_cert/root_ca.key:"),
        "{text}"
    );
    let key = std::fs::read_to_string(d.join("root_cert/root_ca.key")).unwrap();
    assert!(key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));

    let (code, text) = at_a_terminal(d, &["issue", "client", "c1"], "wrong\n");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("wrong passphrase"), "{text}");
    assert!(!d.join("backend_certs/c1.key").exists());
    let (code, text) = at_a_terminal(d, &["issue", "client", "c1"], "pass phrase\n");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("passphrase for root_cert/root_ca.key:"),
        "{text}"
    );
    assert!(d.join("backend_certs/c1_cert.pem").exists());
    // Not at a terminal: the same command says how to give the passphrase.
    let e = fails(d, &["issue", "client", "c2"], 1);
    assert!(e.contains("or run the command at a terminal"), "{e}");
}

#[test]
fn broker_config_refuses_what_no_client_could_use() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca", "--cn", "Broker Root"]);
    ok(d, &["issue", "client", "c1"]);
    ok(d, &["issue", "server", "broker", "--dns", "localhost"]);

    // A client certificate as the broker's: Mosquitto would load it, and
    // every client would then refuse the broker.
    let e = fails(d, &["broker-config", "--server", "c1", "--out", "b1"], 1);
    assert!(e.contains("backend_certs/c1_cert.pem"), "{e}");
    assert!(!d.join("b1").exists(), "nothing written");

    // The broker's certificate with another identity's key.
    std::fs::copy(
        d.join("backend_certs/c1.key"),
        d.join("backend_certs/broker.key"),
    )
    .unwrap();
    let e = fails(
        d,
        &["broker-config", "--server", "broker", "--out", "b2"],
        1,
    );
    assert!(
        e.contains("backend_certs/broker.key") && e.contains("does not match"),
        "{e}"
    );
    assert!(!d.join("b2").exists(), "nothing written");
}

/// Eight issuers and eight revokers at once on one CA, its inventory in
/// SQLite in the CA folder (see `common::concurrent_issuers_and_revokers`).
#[test]
fn concurrent_issuers_and_revokers_share_one_inventory() {
    let tmp = tempfile::tempdir().unwrap();
    common::concurrent_issuers_and_revokers(tmp.path(), &[]);
}

#[test]
fn help_has_examples_for_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    for cmd in [
        vec!["init-ca"],
        vec!["issue", "client"],
        vec!["issue", "server"],
        vec!["csr"],
        vec!["sign"],
        vec!["inspect"],
        vec!["verify"],
        vec!["list"],
        vec!["revoke"],
        vec!["crl"],
        vec!["fleet"],
        vec!["broker-config"],
        vec!["pub"],
        vec!["sub"],
        vec!["completions"],
        vec!["man"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let help = ok(tmp.path(), &args);
        assert!(
            help.contains("Example"),
            "{cmd:?} --help has no example:\n{help}"
        );
    }
}

/// `fleet --json` says where everything went, whatever the manifest's
/// layout: `cargo xtask provision` reads it instead of assuming
/// `root_cert/` and `backend_certs/`.
#[test]
fn fleet_json_names_what_it_made() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("m.toml"),
        "[ca]\ndir = \"my_ca\"\n[[broker]]\nname = \"mq\"\ndns = [\"localhost\"]\nout = \"srv\"\n\
         [[devices]]\nname = \"client1\"\nout = \"devs\"\n",
    )
    .unwrap();
    let made: serde_json::Value =
        serde_json::from_str(&ok(d, &["fleet", "--json", "m.toml"])).unwrap();
    let path = |v: &serde_json::Value| d.join(v.as_str().unwrap());
    assert!(path(&made["ca_cert"]).ends_with("my_ca/root_ca_cert.pem"));
    assert!(path(&made["ca_cert"]).exists());
    assert_eq!(made["brokers"][0]["name"], "mq");
    assert!(path(&made["brokers"][0]["cert"]).ends_with("srv/mq_cert.pem"));
    assert!(path(&made["brokers"][0]["key"]).exists());
    assert!(
        path(&made["device_folders"][0])
            .join("client1_cert.pem")
            .exists()
    );
    assert_eq!(
        (made["issued"].as_u64(), made["ca_created"].as_bool()),
        (Some(2), Some(true))
    );
}

/// A fleet's files get their modes whatever the umask: certificates and
/// CSRs 0644 (the broker reads them as another user), keys 0600. Under
/// umask 077 new certificates came out 0600.
#[test]
fn fleet_files_get_their_modes_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("m.toml"),
        "[ca]\ncommon_name = \"Umask Root\"\n[[broker]]\nname = \"mq\"\ndns = [\"localhost\"]\n[[devices]]\nprefix = \"s-\"\ncount = 2\n",
    )
    .unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 077 && exec {} fleet m.toml",
            env!("CARGO_BIN_EXE_provision")
        ))
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["mq", "s-1", "s-2"] {
        let file = |suffix: &str| d.join(format!("backend_certs/{name}{suffix}"));
        assert_eq!(common::mode(&file("_cert.pem")), 0o644, "{name}");
        assert_eq!(common::mode(&file("_csr.pem")), 0o644, "{name}");
        assert_eq!(common::mode(&file(".key")), 0o600, "{name}");
    }
}

/// Two runs of one manifest started together, into a folder that does not
/// exist yet: whichever takes the CA folder's lock second finds the first
/// one's identities and keeps them (a run that decided the folder was new
/// before waiting for the lock reissued them all and revoked the first
/// run's certificates).
#[test]
fn two_fleet_runs_at_once_keep_each_others_identities() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca", "--cn", "Race Root"]);
    std::fs::write(
        d.join("m.toml"),
        "[ca]\n[[devices]]\nprefix = \"r-\"\ncount = 300\n",
    )
    .unwrap();
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_provision"))
            .args(["fleet", "m.toml", "--json"])
            .current_dir(d)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let runs = [start(), start()];
    let outcomes: Vec<serde_json::Value> = runs
        .into_iter()
        .map(|run| {
            let out = run.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    let counts =
        |key: &str| -> Vec<u64> { outcomes.iter().map(|o| o[key].as_u64().unwrap()).collect() };
    let (mut issued, mut kept) = (counts("issued"), counts("kept"));
    issued.sort_unstable();
    kept.sort_unstable();
    assert_eq!((issued, kept), (vec![0, 300], vec![0, 300]));
    let records = common::records(d);
    assert_eq!(records.len(), 300);
    assert!(
        records.iter().all(|r| r["status"]["state"] == "valid"),
        "a certificate of the first run was revoked"
    );
}

/// A device folder given as `out = ""` is the manifest's own folder, which
/// exists: a second run finds its identities there and keeps them.
#[test]
fn a_fleet_into_its_own_folder_keeps_what_it_made() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("m.toml"),
        "[ca]\n[[devices]]\nprefix = \"h-\"\ncount = 2\nout = \"\"\n",
    )
    .unwrap();
    let run = || -> serde_json::Value {
        serde_json::from_str(&ok(d, &["fleet", "m.toml", "--json"])).unwrap()
    };
    assert_eq!(run()["issued"], 2);
    assert!(d.join("h-1_cert.pem").is_file());
    let again = run();
    assert_eq!(
        (again["issued"].as_u64(), again["kept"].as_u64()),
        (Some(0), Some(2)),
        "{again}"
    );
}

/// Every command that prints data prints it as JSON with `--json` (a
/// typed outcome, not scraped text), and the completions and man page come
/// from the same definitions.
#[test]
fn every_command_speaks_json() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = ok(d, &all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    };
    let ca = json(&["init-ca", "--cn", "Json Root"]);
    assert_eq!(ca["subject"], "CN=Json Root");
    assert_eq!(ca["key"], "root_cert/root_ca.key");
    let issued = json(&["issue", "client", "dev1"]);
    assert_eq!(issued["cert"], "backend_certs/dev1_cert.pem");
    let serial = issued["serial"].as_str().unwrap().to_owned();
    let again = json(&["issue", "client", "dev1", "--force"]);
    assert_eq!(again["superseded"][0], serial.as_str());
    let made = json(&["csr", "dev2", "--out", "device"]);
    assert_eq!(made["csr"], "device/dev2_csr.pem");
    let signed = json(&["sign", "device/dev2_csr.pem", "--profile", "client"]);
    assert_eq!(signed["cert"], "device/dev2_cert.pem");
    let verified = json(&["verify", "device/dev2_cert.pem", "--profile", "client"]);
    assert_eq!(verified["valid"], true);
    let revoked = json(&[
        "revoke",
        "device/dev2_cert.pem",
        "--reason",
        "key-compromise",
    ]);
    assert_eq!(
        revoked["certificates"][0]["status"]["reason"],
        "key-compromise"
    );
    assert_eq!(revoked["certificates"][0]["change"], "revoked");
    let crl = json(&["crl"]);
    assert_eq!(crl["revoked"], 2, "the superseded and the revoked: {crl}");
    let listed = json(&["list", "--name", "dev1"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "both of dev1's certificates, no other");
    assert_eq!(listed[1]["serial"], again["serial"]);
    assert_eq!(
        json(&["list", "--name", "dev1", "--valid"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    json(&["issue", "server", "broker", "--dns", "localhost"]);
    let broker = json(&["broker-config", "--out", "b"]);
    assert!(
        broker["config"]
            .as_str()
            .unwrap()
            .ends_with("b/mosquitto.conf"),
        "{broker}"
    );
    assert_eq!(broker["with_crl"], true);
    let shown = json(&["inspect", "backend_certs/dev1_cert.pem"]);
    assert_eq!(shown["serial"], again["serial"]);

    let bash = ok(d, &["completions", "bash"]);
    assert!(
        bash.contains("broker-config") && bash.contains("--accept-csr-names"),
        "{bash}"
    );
    let man = ok(d, &["man"]);
    assert!(
        man.contains(".TH provision 1") && man.contains("init\\-ca"),
        "{man}"
    );
}

/// A long-running process (a CA service) keeps the CA and the inventory
/// open and issues through the library while `provision` processes issue
/// and revoke beside it: every issuance recorded once, each under the
/// lock, whichever side made it.
#[test]
fn a_long_running_holder_shares_the_store_with_cli_processes() {
    use provision::ca_folder::CaDir;
    use provision::inventory::{Filter, Inventory};
    use provision::ops::{CsrRequest, IssueRequest, SubjectOptions, issue};

    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_owned();
    ok(&d, &["init-ca"]);
    let ca_dir = CaDir::new(d.join("root_cert"));
    let ca = ca_dir.load(None).unwrap();
    let inventory = Inventory::open(&ca_dir).unwrap();
    let children: Vec<_> = (0..6)
        .map(|i| common::spawn(&d, &["issue", "client", &format!("cli-{i}")], &[]))
        .collect();
    for i in 0..6 {
        let mut locked = inventory.lock(&ca).unwrap();
        issue(
            &mut locked,
            &IssueRequest {
                identity: CsrRequest {
                    name: format!("service-{i}").parse().unwrap(),
                    subject: SubjectOptions::default(),
                    key_type: pki_core::KeyType::P256,
                    dns: vec![],
                    ip: vec![],
                    out: d.join("backend_certs"),
                    force: false,
                    token: None,
                },
                profile: pki_core::Profile::Client,
                days: 30,
                role: provision::roles::Role::Service,
            },
        )
        .unwrap();
        provision::broker::apply(&inventory, &locked.commit().unwrap()).unwrap();
    }
    common::succeed_all(children);
    // The holder sees the CLI's records, and the CLI the holder's.
    let mut names = Vec::new();
    inventory
        .visit(&Filter::default(), |r| {
            names.push(r.common_name);
            Ok(())
        })
        .unwrap();
    names.sort();
    let mut expected: Vec<String> = (0..6)
        .flat_map(|i| [format!("cli-{i}"), format!("service-{i}")])
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(common::records(&d).len(), 12);
}

/// `broker-config --systemd` writes a service and timer whose command runs:
/// `crl --if-due` on this CA (here: not due yet, nothing signed).
#[test]
fn broker_config_writes_a_crl_timer_that_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    ok(d, &["issue", "server", "broker", "--dns", "localhost"]);
    let out = ok(
        d,
        &[
            "broker-config",
            "--out",
            "b",
            "--systemd",
            "--crl-lifetime",
            "12h",
        ],
    );
    assert!(
        out.contains("systemctl enable --now provision-crl.timer"),
        "{out}"
    );
    let timer = std::fs::read_to_string(d.join("b/provision-crl.timer")).unwrap();
    assert!(timer.contains("OnCalendar=hourly") && timer.contains("WantedBy=timers.target"));
    let service = std::fs::read_to_string(d.join("b/provision-crl.service")).unwrap();
    let line = |key: &str| {
        service
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {service}"))
            .to_owned()
    };
    let exec = line("ExecStart=");
    let work = line("WorkingDirectory=");
    // Paths are quoted (systemd's command-line quoting); these have no
    // spaces.
    let mut words = exec.split_whitespace().map(|w| w.trim_matches('"'));
    let program = words.next().unwrap();
    assert!(Path::new(program).is_absolute(), "{exec}");
    let ran = Command::new(program)
        .args(words)
        .current_dir(&work)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(stdout.contains("is not due"), "{stdout}");
}

/// One passphrase policy for the command line and a fleet manifest: a
/// variable that is unset or empty is refused, naming it, and nothing is
/// written (a manifest used to accept an empty one).
#[test]
fn an_unset_or_empty_passphrase_variable_is_refused_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    common::ok_env(
        d,
        &["init-ca", "--passphrase-env", "CA_PASS"],
        &[("CA_PASS", "s3cret passphrase")],
    );
    std::fs::write(
        d.join("fleet.toml"),
        "[ca]\npassphrase_env = \"CA_PASS\"\n[[devices]]\nname = \"d1\"\n",
    )
    .unwrap();
    for (value, says) in [
        (None, "the passphrase variable CA_PASS is not set"),
        (Some(""), "the passphrase variable CA_PASS is empty"),
    ] {
        for args in [
            &["issue", "client", "c1", "--passphrase-env", "CA_PASS"][..],
            &["fleet", "fleet.toml"][..],
        ] {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_provision"));
            cmd.current_dir(d).args(args);
            match value {
                Some(v) => cmd.env("CA_PASS", v),
                None => cmd.env_remove("CA_PASS"),
            };
            let out = cmd.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(stderr.contains(says), "{args:?}: {stderr}");
        }
    }
    assert!(!d.join("backend_certs").exists());
}

/// `enroll`'s name becomes file names: a path is refused before anything
/// is read or written.
#[test]
fn enroll_refuses_a_name_that_is_a_path() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("device");
    std::fs::create_dir(&d).unwrap();
    let e = fails(
        &d,
        &[
            "enroll",
            "../escaped",
            "--cert",
            "claim_cert.pem",
            "--key",
            "claim.key",
            "--ca",
            "ca.pem",
            "--out",
            ".",
        ],
        1,
    );
    assert!(e.contains("invalid name \"../escaped\""), "{e}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
}

/// `verify` checks revocation against the CA folder's CRL by default: a
/// revoked certificate is refused without `--crl`; `--no-crl` skips it; a
/// stale CRL fails and names the way out; a certificate of another CA is
/// verified without this CA's CRL.
#[test]
fn verify_checks_the_ca_folders_crl_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca", "--cn", "Verify Root"]);
    ok(d, &["issue", "client", "good"]);
    ok(d, &["issue", "client", "gone"]);
    ok(d, &["crl"]);
    let out = ok(d, &["verify", "backend_certs/good_cert.pem"]);
    assert!(
        out.contains("not revoked: checked against root_cert/crl.pem"),
        "{out}"
    );
    ok(d, &["revoke", "backend_certs/gone_cert.pem"]);
    let e = fails(d, &["verify", "backend_certs/gone_cert.pem"], 1);
    assert!(e.contains("is revoked"), "{e}");
    let out = ok(d, &["verify", "backend_certs/gone_cert.pem", "--no-crl"]);
    assert!(out.contains("revocation not checked"), "{out}");
    // Revoking it again changes nothing, and says so.
    let again = ok(d, &["revoke", "backend_certs/gone_cert.pem"]);
    assert!(
        again.contains("was already revoked on ") && again.contains("its revocation is unchanged"),
        "{again}"
    );
    // A CRL past its nextUpdate says nothing reliable: refused, with the
    // opt-out named.
    ok(d, &["crl", "--crl-lifetime", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let e = fails(d, &["verify", "backend_certs/good_cert.pem"], 1);
    assert!(e.contains("out of date") && e.contains("--no-crl"), "{e}");
    ok(d, &["verify", "backend_certs/good_cert.pem", "--no-crl"]);
    // Another CA's certificate, verified against that CA: this folder's CRL
    // is not its issuer's and is left out.
    let other = tempfile::tempdir().unwrap();
    ok(other.path(), &["init-ca", "--cn", "Other Root"]);
    ok(other.path(), &["issue", "client", "stranger"]);
    let cert = other.path().join("backend_certs/stranger_cert.pem");
    let ca = other.path().join("root_cert/root_ca_cert.pem");
    let out = ok(
        d,
        &[
            "verify",
            cert.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ],
    );
    assert!(out.contains("revocation not checked"), "{out}");
}

/// A common name given with `--cn` passes the same name rule as NAME: it
/// is the MQTT username, `{name}` in the broker's rules.
#[test]
fn a_cn_given_with_cn_passes_the_name_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca", "--cn", "Name Root"]);
    for cn in ["sensor-1/cmd", "sensor-1 ", "a+b", "#", ""] {
        let e = fails(d, &["issue", "client", "spy", "--cn", cn], 1);
        assert!(e.contains("invalid name"), "{cn:?}: {e}");
        assert!(!d.join("backend_certs/spy.key").exists(), "{cn:?}");
        assert!(!d.join("backend_certs/spy_cert.pem").exists(), "{cn:?}");
    }
    ok(d, &["issue", "client", "spy", "--cn", "sensor-2"]);
}

/// `init-ca --inventory URL` reaches the database before it writes the CA:
/// a server that refuses the connection fails the command, naming the
/// inventory, and no CA is left in the folder.
#[test]
fn init_ca_with_an_unreachable_inventory_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://ca@127.0.0.1:{port}/inventory");
    let e = fails(d, &["init-ca", "--inventory", &url], 1);
    assert!(
        e.contains("inventory postgres://ca@127.0.0.1") && e.contains("connecting to"),
        "{e}"
    );
    assert!(!d.join("root_cert/root_ca_cert.pem").exists());
    assert!(!d.join("root_cert/root_ca.key").exists());
}

/// A revocation through the library's one way: one transaction, one CRL
/// (the number up by one), taken by `broker::apply` to the broker folder,
/// whose CRL copy and rules are then the CA folder's; applying again
/// rewrites nothing (so a plugin polling the files reloads once).
#[test]
fn a_revocation_is_one_transaction_one_crl_and_one_write_per_broker() {
    use provision::inventory::{Committed, Inventory};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    ok(d, &["issue", "server", "broker", "--dns", "localhost"]);
    ok(d, &["issue", "client", "dev1"]);
    ok(d, &["issue", "client", "ingest", "--role", "service"]);
    ok(d, &["broker-config", "--out", "b", "--without-plugin"]);
    let number = |path: &Path| {
        pki_core::Crl::from_pem(&std::fs::read_to_string(path).unwrap())
            .unwrap()
            .number()
            .unwrap()
    };
    let before = number(&d.join("root_cert/crl.pem"));
    let ca_dir = provision::ca_folder::CaDir::new(d.join("root_cert"));
    let ca = ca_dir.load(None).unwrap();
    let inventory = Inventory::open(&ca_dir).unwrap();
    let mut locked = inventory.lock(&ca).unwrap();
    let revocation = provision::ops::revoke(
        &mut locked,
        &provision::ops::RevokeTarget::Name("dev1".into()),
        pki_core::RevocationReason::KeyCompromise,
        30,
    )
    .unwrap();
    let committed = locked.commit().unwrap();
    let applied = provision::broker::apply(&inventory, &committed).unwrap();
    assert_eq!(inventory.transactions(), 1);
    assert_eq!(committed.revoked.len(), 1, "{committed:?}");
    assert_eq!(committed.revoked[0].0, revocation.records[0].0.serial);
    assert_eq!(committed.crl.as_ref().unwrap().number(), Some(before + 1));
    assert_eq!(number(&d.join("root_cert/crl.pem")), before + 1);
    assert_eq!(applied.brokers.len(), 1, "{applied:?}");
    assert_eq!(applied.brokers[0].error, None);
    assert_eq!(
        std::fs::read_to_string(d.join("b/crl.pem")).unwrap(),
        std::fs::read_to_string(d.join("root_cert/crl.pem")).unwrap()
    );
    let acl = std::fs::read_to_string(d.join("b/acl")).unwrap();
    assert!(acl.contains("user ingest"), "{acl}");
    // Nothing changed: nothing is written again. Every write is a new file
    // renamed into place, so the same inode means no write (no clock or
    // sleep involved).
    use std::os::unix::fs::MetadataExt;
    let inode = |p: &str| std::fs::metadata(d.join(p)).unwrap().ino();
    let (crl_at, acl_at) = (inode("b/crl.pem"), inode("b/acl"));
    provision::broker::apply(&inventory, &Committed::default()).unwrap();
    assert_eq!(inode("b/crl.pem"), crl_at);
    assert_eq!(inode("b/acl"), acl_at);
}

/// A key-compromise revocation follows renewals of renewals: A renewed as
/// B, B as C (as `provision serve` records them); revoking A revokes B and
/// C for the same reason, and says so.
#[test]
fn a_key_compromise_revocation_follows_renewals_of_renewals() {
    use provision::inventory::Inventory;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    ok(d, &["issue", "client", "dev"]);
    let ca_dir = provision::ca_folder::CaDir::new(d.join("root_cert"));
    let ca = ca_dir.load(None).unwrap();
    let inventory = Inventory::open(&ca_dir).unwrap();
    let mut locked = inventory.lock(&ca).unwrap();
    let a = locked.valid_for("dev").unwrap().remove(0);
    let renewal = |serial: &str| provision::inventory::Record {
        serial: serial.parse().unwrap(),
        sha256: format!("{serial}00"),
        ..a.clone()
    };
    let (b, c) = (renewal("0B0B"), renewal("0C0C"));
    locked.record(&[b.clone(), c.clone()]).unwrap();
    let at = std::time::SystemTime::now();
    for (id, old, new) in [("r1", &a, &b), ("r2", &b, &c)] {
        locked
            .store_answer(
                "dev",
                id,
                "renew",
                "x",
                "{}",
                false,
                (Some(&old.serial), Some(&new.serial)),
                at,
            )
            .unwrap();
    }
    provision::broker::apply(&inventory, &locked.commit().unwrap()).unwrap();
    let mut locked = inventory.lock(&ca).unwrap();
    let revocation = provision::ops::revoke(
        &mut locked,
        &provision::ops::RevokeTarget::Serial(a.serial.clone()),
        pki_core::RevocationReason::KeyCompromise,
        30,
    )
    .unwrap();
    provision::broker::apply(&inventory, &locked.commit().unwrap()).unwrap();
    assert_eq!(revocation.renewals, [b.serial.clone(), c.serial.clone()]);
    assert!(
        revocation.still_valid.is_empty(),
        "{:?}",
        revocation.still_valid
    );
    for serial in [&a.serial, &b.serial, &c.serial] {
        let record = inventory.by_serial(serial).unwrap().unwrap();
        assert!(
            matches!(
                record.status,
                provision::inventory::Status::Revoked {
                    reason: pki_core::RevocationReason::KeyCompromise,
                    ..
                }
            ),
            "{record:?}"
        );
    }
}

/// A fleet manifest's `[[broker]] max_packet_size` is what `broker-config
/// --server NAME` writes as Mosquitto's limit; the flag overrides it; a
/// value Mosquitto would refuse is refused with the manifest named, and
/// without either the limit is 1 MiB.
#[test]
fn the_manifest_sets_the_brokers_packet_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let manifest = |limit: &str| {
        format!(
            "[ca]\ndir = \"root_cert\"\n\
             [[broker]]\nname = \"mq\"\ndns = [\"localhost\"]\n{limit}\
             [[broker]]\nname = \"plain\"\ndns = [\"localhost\"]\n"
        )
    };
    std::fs::write(d.join("bad.toml"), manifest("max_packet_size = 10\n")).unwrap();
    let e = fails(d, &["fleet", "bad.toml"], 1);
    assert!(
        e.contains("bad.toml") && e.contains("max_packet_size 10 is outside"),
        "{e}"
    );
    std::fs::write(d.join("m.toml"), manifest("max_packet_size = 2097152\n")).unwrap();
    ok(d, &["fleet", "m.toml"]);
    let conf = |out: &str| std::fs::read_to_string(d.join(out).join("mosquitto.conf")).unwrap();
    ok(d, &["broker-config", "--server", "mq", "--out", "b1"]);
    assert!(
        conf("b1").contains("\nmax_packet_size 2097152\n"),
        "{}",
        conf("b1")
    );
    ok(
        d,
        &[
            "broker-config",
            "--server",
            "mq",
            "--out",
            "b2",
            "--max-packet-size",
            "4096",
        ],
    );
    assert!(conf("b2").contains("\nmax_packet_size 4096\n"));
    ok(d, &["broker-config", "--server", "plain", "--out", "b3"]);
    assert!(conf("b3").contains("\nmax_packet_size 1048576\n"));
}

/// A filter on several names (what `fleet` reads its names' history with,
/// a chunk of names a query) yields exactly their records, in order.
#[test]
fn a_filter_on_several_names_yields_exactly_theirs() {
    use provision::ca_folder::CaDir;
    use provision::inventory::{Filter, Inventory};

    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    for name in ["a", "b", "c"] {
        ok(d, &["issue", "client", name]);
    }
    ok(d, &["issue", "client", "a", "--force"]);
    let inventory = Inventory::open(&CaDir::new(d.join("root_cert"))).unwrap();
    let names = |filter: &Filter| {
        let mut seen = Vec::new();
        inventory
            .visit(filter, |r| {
                seen.push(r.common_name);
                Ok(())
            })
            .unwrap();
        seen
    };
    let several = Filter {
        common_names: vec!["c".into(), "a".into()],
        valid_only: false,
    };
    assert_eq!(names(&several), ["a", "c", "a"]);
    let valid = Filter {
        valid_only: true,
        ..several
    };
    assert_eq!(names(&valid), ["c", "a"]);
    assert_eq!(names(&Filter::default()).len(), 4);
}
