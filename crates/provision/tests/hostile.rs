//! Hostile input: every file of the corpus in `verify-tests/hostile/` (and a
//! 50 MB file made here) is handed to every command that reads files, in
//! every role a file plays there. Each run must fail with exit code 1 and a
//! one-line error naming the file, never panic, and leave the folder (the CA
//! key and inventory included) byte-identical.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{ok, provision};

/// Every file under `dir`, by relative path, with its contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            // SQLite's own journal beside the inventory (`-wal`, `-shm`)
            // comes and goes as connections open and close; the database
            // itself is compared.
            let name = path.to_string_lossy();
            if name.ends_with(".db-wal") || name.ends_with(".db-shm") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_owned();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// The corpus, copied into `dir/hostile/`, plus a 50 MB file.
fn corpus(dir: &Path) -> Vec<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../verify-tests/hostile");
    let target = dir.join("hostile");
    std::fs::create_dir(&target).unwrap();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "py") {
            continue;
        }
        let copy = target.join(path.file_name().unwrap());
        std::fs::copy(&path, &copy).unwrap();
        files.push(copy);
    }
    let huge = target.join("huge-50mb.pem");
    let mut text = String::from("-----BEGIN CERTIFICATE-----\n");
    while text.len() < 50 << 20 {
        text.push_str(&"A".repeat(64));
        text.push('\n');
    }
    std::fs::write(&huge, text).unwrap();
    files.push(huge);
    files.sort();
    assert!(files.len() >= 20, "the corpus is missing: {files:?}");
    files
}

/// One way a command reads a file: the arguments with `{}` for the
/// hostile file, or a CA-folder file it replaces for the run.
struct Role {
    what: &'static str,
    args: &'static [&'static str],
    /// Copied over this file for the run (and restored after).
    replaces: Option<&'static str>,
    /// Files that are valid for this role (well-formed objects `inspect`
    /// shows, an empty inventory): these must succeed, still writing nothing.
    valid: &'static [&'static str],
}

/// Well-formed PEM objects in the corpus: a certificate, and CSRs whose
/// signatures verify (what they ask for is refused by `sign`, not here).
const WELL_FORMED: &[&str] = &[
    "certificate-as-key.pem",
    "csr-ca-true.pem",
    "csr-key-usage.pem",
    "csr-long-cn.pem",
    "csr-non-utf8-cn.pem",
];

const CLOSED_PORT: &str = "9"; // discard: nothing listens on 127.0.0.1:9 here
const PUB: [&str; 9] = [
    "pub",
    "-H",
    "127.0.0.1",
    "-p",
    CLOSED_PORT,
    "-t",
    "t",
    "-m",
    "x",
];

fn roles() -> Vec<Role> {
    let role = |what, args, replaces| Role {
        what,
        args,
        replaces,
        valid: &[],
    };
    let valid = |role: Role, valid| Role { valid, ..role };
    vec![
        valid(role("inspect", &["inspect", "{}"], None), WELL_FORMED),
        valid(
            role("inspect --json", &["inspect", "{}", "--json"], None),
            WELL_FORMED,
        ),
        role("verify (certificate)", &["verify", "{}"], None),
        role(
            "verify --ca",
            &["verify", "backend_certs/good_cert.pem", "--ca", "{}"],
            None,
        ),
        role(
            "verify --crl",
            &["verify", "backend_certs/good_cert.pem", "--crl", "{}"],
            None,
        ),
        role(
            "sign (CSR)",
            &["sign", "{}", "--profile", "client", "--out", "signed.pem"],
            None,
        ),
        role("revoke (certificate)", &["revoke", "{}"], None),
        role("fleet (manifest)", &["fleet", "{}"], None),
        role("pub --bundle", &["--bundle", "{}"], None),
        role(
            "pub --cert",
            &[
                "--cert",
                "{}",
                "--key",
                "backend_certs/good.key",
                "--ca",
                "root_cert/root_ca_cert.pem",
            ],
            None,
        ),
        role(
            "pub --key",
            &[
                "--cert",
                "backend_certs/good_cert.pem",
                "--key",
                "{}",
                "--ca",
                "root_cert/root_ca_cert.pem",
            ],
            None,
        ),
        role(
            "pub --ca",
            &[
                "--cert",
                "backend_certs/good_cert.pem",
                "--key",
                "backend_certs/good.key",
                "--ca",
                "{}",
            ],
            None,
        ),
        role(
            "issue with this CA certificate",
            &["issue", "client", "newcomer"],
            Some("root_cert/root_ca_cert.pem"),
        ),
        role(
            "issue with this CA key",
            &["issue", "client", "newcomer"],
            Some("root_cert/root_ca.key"),
        ),
        valid(
            role(
                "issue with this inventory",
                &["issue", "client", "newcomer"],
                Some("root_cert/inventory.jsonl"),
            ),
            &["empty.pem"],
        ),
        valid(
            role(
                "list with this inventory",
                &["list"],
                Some("root_cert/inventory.jsonl"),
            ),
            &["empty.pem"],
        ),
        role(
            "broker-config with this server certificate",
            &["broker-config", "--server", "broker", "--out", "broker-out"],
            Some("backend_certs/broker_cert.pem"),
        ),
        role(
            "broker-config with this server key",
            &["broker-config", "--server", "broker", "--out", "broker-out"],
            Some("backend_certs/broker.key"),
        ),
    ]
}

#[test]
fn every_command_refuses_every_hostile_file_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca", "--cn", "Hostile Root"]);
    ok(d, &["issue", "client", "good"]);
    ok(d, &["issue", "server", "broker", "--dns", "localhost"]);
    ok(d, &["crl"]);
    let files = corpus(d);

    let mut checked = 0;
    let mut failures = Vec::new();
    for role in roles() {
        for file in &files {
            let rel = file.strip_prefix(d).unwrap().to_str().unwrap();
            let name = file.file_name().unwrap().to_str().unwrap();
            let mut args: Vec<&str> = Vec::new();
            if role.what.starts_with("pub ") {
                args.extend(PUB);
            }
            args.extend(role.args.iter().map(|a| if *a == "{}" { rel } else { a }));
            // An earlier version's inventory (`inventory.jsonl`) is not
            // there until planted: it is imported once, then renamed.
            let saved = role.replaces.map(|target| {
                let original = std::fs::read(d.join(target)).ok();
                std::fs::copy(file, d.join(target)).unwrap();
                (target, original)
            });
            let before = snapshot(d);
            let out = provision(d, &args);
            let mut after = snapshot(d);
            if let Some((target, original)) = saved {
                match original {
                    Some(original) => std::fs::write(d.join(target), original).unwrap(),
                    None => {
                        let imported = d.join(format!("{target}.imported"));
                        for planted in [d.join(target), imported] {
                            if planted.exists() {
                                std::fs::remove_file(planted).unwrap();
                            }
                        }
                        // A valid one is imported and renamed: not a write.
                        if role.valid.contains(&name) {
                            let moved = after.remove(Path::new(&format!("{target}.imported")));
                            after.extend(moved.map(|c| (PathBuf::from(target), c)));
                        }
                    }
                }
            }

            let stderr = String::from_utf8_lossy(&out.stderr);
            let named = role.replaces.unwrap_or(rel);
            let mut problems = Vec::new();
            if role.valid.contains(&name) {
                if !out.status.success() {
                    problems.push(format!("refused a valid file: {stderr}"));
                }
                // Issuing with an empty inventory rightly writes; the
                // identity is removed again for the next run.
                if role.what.starts_with("issue") {
                    for f in ["newcomer.key", "newcomer_csr.pem", "newcomer_cert.pem"] {
                        std::fs::remove_file(d.join("backend_certs").join(f)).unwrap();
                    }
                } else if before != after {
                    problems.push("wrote files".to_owned());
                }
            } else if out.status.code() != Some(1) {
                problems.push(format!("exit {:?}", out.status.code()));
            }
            if role.valid.contains(&name) {
                // Checked above.
            } else if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
                problems.push("panicked".to_owned());
            } else {
                // One line names the file at fault and the problem (TOML
                // parse errors add the offending line under it); a valid
                // certificate offered as a trust anchor makes the checked
                // certificate fail instead.
                let first = stderr.lines().next().unwrap_or_default();
                if !first.starts_with("error: ") {
                    problems.push("not an error line".to_owned());
                }
                let names_it = first.contains(named)
                    || (role.what == "verify --ca" && first.contains("good_cert.pem"));
                if !names_it {
                    problems.push(format!("does not name {named}"));
                }
            }
            if before != after && !role.valid.contains(&name) {
                let changed: Vec<_> = after
                    .iter()
                    .filter(|(p, c)| before.get(*p) != Some(c))
                    .map(|(p, _)| p.display().to_string())
                    .chain(
                        before
                            .keys()
                            .filter(|p| !after.contains_key(*p))
                            .map(|p| format!("{} (removed)", p.display())),
                    )
                    .collect();
                problems.push(format!("wrote {changed:?}"));
            }
            if stderr.len() > 2_000 {
                problems.push(format!("a {}-byte message", stderr.len()));
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "{} with {name}: {}\n    {}",
                    role.what,
                    problems.join(", "),
                    stderr.trim_end().chars().take(300).collect::<String>()
                ));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} runs misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 18 * 20, "{checked}");
}

#[test]
fn hostile_csrs_are_refused_for_what_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca", "--cn", "Hostile Root"]);
    let files = corpus(d);
    let reason = |name: &str| {
        let file = files.iter().find(|f| f.ends_with(name)).unwrap();
        let out = provision(d, &["sign", file.to_str().unwrap(), "--profile", "client"]);
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (file, expected) in [
        ("csr-flipped-signature.pem", "signature does not verify"),
        ("csr-ca-true.pem", "asks for basicConstraints CA:true"),
        ("csr-key-usage.pem", "asks for key usage keyCertSign"),
        ("csr-rsa1024.pem", "RSA-1024"),
        (
            "csr-long-cn.pem",
            "5000 characters long; RFC 5280 allows at most 64",
        ),
        ("csr-non-utf8-cn.pem", "is not valid UTF-8"),
        ("huge-50mb.pem", "larger than 16 MiB"),
        ("empty.pem", "no CERTIFICATE REQUEST"),
    ] {
        let stderr = reason(file);
        assert!(stderr.contains(expected), "{file}: {stderr}");
    }
    for (file, expected) in [
        ("manifest-unknown-key.toml", "unknown field `surprise`"),
        ("manifest-duplicate-names.toml", "appears twice"),
        ("manifest-ten-million.toml", "at most 1000000"),
        ("manifest-escaping-name.toml", "invalid name \"../x\""),
    ] {
        let file = files.iter().find(|f| f.ends_with(file)).unwrap();
        let out = provision(d, &["fleet", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{}: {stderr}", file.display());
    }
}
