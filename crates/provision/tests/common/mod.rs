//! Running the `provision` binary in a folder.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

/// A file's permission bits.
pub(crate) fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs `provision ARGS` in `dir`.
pub(crate) fn provision(dir: &Path, args: &[&str]) -> Output {
    provision_env(dir, args, &[])
}

/// Runs `provision ARGS` in `dir` with these environment variables.
pub(crate) fn provision_env(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(dir)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout.
pub(crate) fn ok(dir: &Path, args: &[&str]) -> String {
    ok_env(dir, args, &[])
}

/// [`ok`] with these environment variables.
pub(crate) fn ok_env(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = provision_env(dir, args, envs);
    assert!(
        out.status.success(),
        "provision {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail with exit code `code`; returns stderr.
pub(crate) fn fails(dir: &Path, args: &[&str], code: i32) -> String {
    let out = provision(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "provision {args:?}: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
    stderr
}

/// Every inventory record of the CA in `dir/root_cert`, from `provision
/// list --json`, in issue order.
pub(crate) fn records(dir: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&ok(dir, &["list", "--json"])).unwrap()
}

/// Eight issuers and eight revokers at once on one CA (with `envs`, e.g.
/// the inventory's URL). A revocation and an issuance both change the
/// inventory and the CRL; without the CA's lock one is lost, a serial is
/// drawn twice, or a CRL misses a revocation. With it: sixteen records,
/// each serial once, the eight revoked ones revoked, the CRL listing them.
pub(crate) fn concurrent_issuers_and_revokers(d: &Path, envs: &[(&str, &str)]) {
    ok_env(d, &["init-ca"], envs);
    for i in 0..8 {
        ok_env(d, &["issue", "client", &format!("old-{i}")], envs);
    }
    let spawn = |args: Vec<String>| spawn(d, &args, envs);
    let mut children = Vec::new();
    for i in 0..8 {
        children.push(spawn(vec![
            "issue".into(),
            "client".into(),
            format!("new-{i}"),
        ]));
        children.push(spawn(vec![
            "revoke".into(),
            format!("backend_certs/old-{i}_cert.pem"),
        ]));
    }
    succeed_all(children);
    let list: serde_json::Value =
        serde_json::from_str(&ok_env(d, &["list", "--json"], envs)).unwrap();
    let records = list.as_array().unwrap();
    let mut serials: Vec<String> = records.iter().map(|r| r["serial"].to_string()).collect();
    let listed = serials.len();
    serials.sort();
    serials.dedup();
    assert_eq!((listed, serials.len()), (16, 16), "{list:#}");
    let revoked: Vec<&str> = records
        .iter()
        .filter(|r| r["status"].to_string().contains("revoked"))
        .map(|r| r["subject"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(revoked.len(), 8, "{list:#}");
    assert!(revoked.iter().all(|s| s.contains("old-")), "{revoked:?}");
    let crl = ok(d, &["inspect", "root_cert/crl.pem"]);
    assert_eq!(crl.matches(" (unspecified, ").count(), 8, "{crl}");
}

/// Starts `provision ARGS` in `dir` (with `envs`), its errors kept for
/// [`succeed_all`].
pub(crate) fn spawn(
    dir: &Path,
    args: &[impl AsRef<std::ffi::OsStr>],
    envs: &[(&str, &str)],
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(dir)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for every child; each must succeed.
pub(crate) fn succeed_all(children: Vec<std::process::Child>) {
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The TLS arguments (`--cert`, `--key`, `--ca`) of `provision pub`,
/// `sub`, `renew` for the identity `name` issued into `backend_certs`
/// (its certificate file carries any chain), the root as the CA.
pub(crate) fn tls(name: &str) -> Vec<String> {
    vec![
        "--cert".into(),
        format!("backend_certs/{name}_cert.pem"),
        "--key".into(),
        format!("backend_certs/{name}.key"),
        "--ca".into(),
        "root_cert/root_ca_cert.pem".into(),
    ]
}

/// A CSR for `cn` asking for `dns` names and a URI, made with rcgen (an
/// independent implementation).
pub(crate) fn csr(dir: &Path, file: &str, cn: &str, dns: &[&str], uri: Option<&str>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    if let Some(uri) = uri {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
    }
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    std::fs::write(dir.join(file), pem).unwrap();
}

/// The commands of the first `sh` block after `heading` in README.md: a
/// line ending in `\` continues on the next, comments and blank lines go.
pub(crate) fn readme_block(heading: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in README.md"));
    let rest = &text[at..];
    let start = rest.find("```sh\n").expect("an sh block") + "```sh\n".len();
    let block = &rest[start..start + rest[start..].find("```").unwrap()];
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

/// A running `provision serve`: its HTTP endpoints; killed on drop.
pub(crate) struct Serve {
    pub(crate) child: std::process::Child,
    http: u16,
}

impl Serve {
    /// Starts `cmd` (a `provision serve` line listening for HTTP on
    /// 127.0.0.1:`http`) and waits until `/healthz` answers 200; a serve
    /// that exits first fails the test with what it wrote.
    pub(crate) fn start(cmd: &mut Command, http: u16) -> Self {
        use std::io::Read;
        use std::time::{Duration, Instant};
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut serve = Self { child, http };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !serve.get("/healthz").starts_with("HTTP/1.1 200") {
            if let Some(status) = serve.child.try_wait().unwrap() {
                let mut err = String::new();
                serve
                    .child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("provision serve exited with {status}: {err}");
            }
            assert!(Instant::now() < deadline, "provision serve never got ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }

    /// `GET path` on its HTTP listener: the whole answer ("" when it is not
    /// listening).
    pub(crate) fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.http)) else {
            return String::new();
        };
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    }

    /// Stops it; what it wrote to standard error.
    pub(crate) fn stop(mut self) -> String {
        use std::io::Read;
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        err
    }

    /// The value of counter `provision_serve_NAME_total`.
    pub(crate) fn counter(&self, name: &str) -> u64 {
        let text = self.get("/metrics");
        let key = format!("provision_serve_{name}_total ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
