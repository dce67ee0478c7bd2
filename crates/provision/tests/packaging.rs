//! The Debian packages and their systemd units, built from this test build
//! (`deb-package`, what `cargo xtask dist` runs on the release build):
//! `lintian` reports no error, `systemd-analyze verify` accepts every unit
//! with the packaged binaries in place, `systemd-analyze security` scores
//! every service at most 3.0, and each unit's `ExecStart` line, run as
//! systemd would (its working directory, environment file, `%i` and
//! `$VAR` expanded) with the packaged, stripped binary, does its job:
//! the CRL check exits 0, `provision serve` and `mqtt-ingest` become
//! healthy against real Mosquittos, log JSON lines, and stop on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ok;
use peers::ingest::Ingest;
use peers::mosquitto::{Mosquitto, free_port};

/// The packages, built once per test into its own folder.
struct Built {
    _tmp: tempfile::TempDir,
    packages: Vec<deb_package::Built>,
}

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn build() -> Built {
    let built_dir = Path::new(env!("CARGO_BIN_EXE_provision")).parent().unwrap();
    // The test build's binaries, and the plugin where cargo left it
    // (`cargo test` puts a cdylib in deps/, `cargo build` beside the
    // binaries; the newest), gathered in one folder as `dist` has them.
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    for name in ["provision", "mqtt-ingest"] {
        let path = built_dir.join(name);
        assert!(
            path.is_file(),
            "{name} is not built in {}: build the workspace first (cargo xtask test does)",
            built_dir.display()
        );
        std::os::unix::fs::symlink(&path, bin_dir.join(name)).unwrap();
    }
    let plugin = [
        built_dir.join("libmqtt_mtls_auth.so"),
        built_dir.join("deps/libmqtt_mtls_auth.so"),
    ]
    .into_iter()
    .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
    .max()
    .map(|(_, p)| p)
    .expect("the broker plugin is not built: build the workspace first (cargo xtask test does)");
    std::os::unix::fs::symlink(&plugin, bin_dir.join("libmqtt_mtls_auth.so")).unwrap();
    let packages = deb_package::build_all(
        &deb_package::Inputs {
            bin_dir,
            source_dir: source_dir(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            compress: false,
            separate_debug: false,
        },
        &tmp.path().join("out"),
    )
    .unwrap();
    Built {
        _tmp: tmp,
        packages,
    }
}

impl Built {
    fn package(&self, name: &str) -> &deb_package::Built {
        self.packages.iter().find(|p| p.package == name).unwrap()
    }

    /// A root with this machine's systemd units (the targets ours name)
    /// and everything the packages install.
    fn system_root(&self, into: &Path) {
        copy_tree(
            Path::new("/usr/lib/systemd/system"),
            &into.join("usr/lib/systemd/system"),
        );
        for package in &self.packages {
            copy_tree(&package.root, into);
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        let kind = item.file_type().unwrap();
        if item.file_name() == "DEBIAN" {
            continue;
        } else if kind.is_dir() {
            copy_tree(&item.path(), &target);
        } else if kind.is_symlink() {
            let link = std::fs::read_link(item.path()).unwrap();
            let _ = std::os::unix::fs::symlink(link, &target);
        } else {
            std::fs::copy(item.path(), &target).unwrap();
        }
    }
}

fn tool(program: &str, package: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{program} is missing: apt-get install {package} (cargo xtask test installs it)"
    );
    Command::new(program)
}

#[test]
fn lintian_reports_no_error() {
    let built = build();
    let out = tool("lintian", "lintian")
        .args(["--fail-on", "error", "--no-tag-display-limit"])
        .args(built.packages.iter().map(|p| &p.deb))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    println!("lintian:\n{said}");
    assert!(out.status.success(), "lintian: {said}");
    assert!(
        !said.contains("\nE: ") && !said.starts_with("E: "),
        "{said}"
    );
    // What the packages hold, as dpkg sees it.
    let listing = |name: &str| {
        let deb = &built.package(name).deb;
        String::from_utf8(
            Command::new("dpkg-deb")
                .arg("--contents")
                .arg(deb)
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    let provision = listing("mqtt-mtls-provision");
    for path in [
        "./usr/bin/provision",
        "./usr/lib/systemd/system/provision-serve.service",
        "./usr/lib/systemd/system/provision-crl.service",
        "./usr/lib/systemd/system/provision-crl.timer",
        "./usr/lib/sysusers.d/mqtt-mtls-provision.conf",
        "./usr/share/man/man1/provision.1.gz",
    ] {
        assert!(provision.contains(path), "{path} missing:\n{provision}");
    }
    assert!(
        provision.contains("-rw------- root/root")
            && provision.contains("./etc/mqtt-mtls/provision-serve.env"),
        "{provision}"
    );
    let ingest = listing("mqtt-mtls-ingest");
    assert!(
        ingest.contains("./usr/lib/systemd/system/mqtt-ingest@.service")
            && ingest.contains("./etc/mqtt-ingest/\n"),
        "{ingest}"
    );
    let plugin = listing("mqtt-mtls-mosquitto-plugin");
    assert!(
        plugin.contains("./usr/lib/mqtt-mtls/libmqtt_mtls_auth.so"),
        "{plugin}"
    );
    // Stripped: no DWARF left in what is installed.
    for package in &built.packages {
        for elf in &package.elves {
            let sections = Command::new("objdump").arg("-h").arg(elf).output().unwrap();
            let sections = String::from_utf8_lossy(&sections.stdout);
            assert!(
                !sections.contains(".debug_info"),
                "{} is not stripped",
                elf.display()
            );
        }
    }
}

#[test]
fn systemd_accepts_every_unit_and_scores_each_service_at_most_3() {
    let built = build();
    let root = tempfile::tempdir().unwrap();
    built.system_root(root.path());
    let units: Vec<String> = built
        .packages
        .iter()
        .flat_map(|p| &p.units)
        .map(|u| {
            let name = u.file_name().unwrap().to_str().unwrap();
            // A template is verified through an instance.
            name.replace("@.", "@example.")
        })
        .collect();
    assert_eq!(units.len(), 4, "{units:?}");
    let out = tool("systemd-analyze", "systemd")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("--man=no")
        .args(&units)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );

    for unit in built.packages.iter().flat_map(|p| &p.units) {
        if unit.extension().is_some_and(|e| e == "timer") {
            continue;
        }
        let out = tool("systemd-analyze", "systemd")
            .args(["security", "--offline=true", "--threshold=30", "--no-pager"])
            .arg(unit)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        let score: f64 = said
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no score for {}:\n{said}", unit.display()));
        println!("{}: exposure {score}", unit.display());
        assert!(
            out.status.success() && score <= 3.0,
            "{}: {score}\n{said}",
            unit.display()
        );
    }
}

/// Where `package` put the file it installs at `path`.
fn installed(package: &deb_package::Built, path: &str) -> PathBuf {
    package.root.join(path.trim_start_matches('/'))
}

/// `package`'s unit `name`, as systemd reads it for `instance`.
fn unit_of(package: &deb_package::Built, name: &str, instance: &str) -> Unit {
    read_unit(
        &installed(package, &format!("/usr/lib/systemd/system/{name}")),
        instance,
    )
}

/// A unit's service settings as systemd reads them (the keys this project
/// uses, last one wins).
struct Unit {
    exec_start: String,
    working_directory: String,
    environment: Vec<(String, String)>,
    environment_file: String,
}

fn read_unit(path: &Path, instance: &str) -> Unit {
    let text = std::fs::read_to_string(path).unwrap();
    let mut keys: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=')
            && !line.starts_with('#')
        {
            keys.entry(key)
                .or_default()
                .push(value.replace("%i", instance));
        }
    }
    let one = |k: &str| {
        keys.get(k)
            .and_then(|v| v.last())
            .cloned()
            .unwrap_or_default()
    };
    Unit {
        exec_start: one("ExecStart"),
        working_directory: one("WorkingDirectory"),
        environment: keys
            .get("Environment")
            .into_iter()
            .flatten()
            .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect(),
        environment_file: one("EnvironmentFile").trim_start_matches('-').to_owned(),
    }
}

/// `VAR=value` lines of an environment file.
fn read_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

/// The unit's command line as systemd runs it: `$VAR` split on spaces from
/// `env`, absolute paths under `/usr` and `/etc` replaced through `paths`,
/// in `work` for its working directory; with its environment.
fn command(
    unit: &Unit,
    env: &[(String, String)],
    paths: &[(&str, PathBuf)],
    work: &Path,
) -> Command {
    let map = |word: &str| {
        paths
            .iter()
            .find(|(from, _)| word == *from)
            .map(|(_, to)| to.display().to_string())
            .unwrap_or_else(|| word.to_owned())
    };
    let mut words = Vec::new();
    for word in unit.exec_start.split_whitespace() {
        match word.strip_prefix('$') {
            Some(var) => {
                let value = env
                    .iter()
                    .rev()
                    .find(|(k, _)| k == var)
                    .map(|(_, v)| v.as_str());
                words.extend(value.unwrap_or("").split_whitespace().map(str::to_owned));
            }
            None => words.push(map(word)),
        }
    }
    assert_eq!(
        map(&unit.working_directory),
        work.display().to_string(),
        "the test runs the unit in its working directory"
    );
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..])
        .current_dir(work)
        .env_remove("RUST_LOG");
    for (k, v) in unit.environment.iter().chain(env) {
        cmd.env(k, v);
    }
    cmd
}

/// Every line of a JSON log is one object with the fields promised.
fn assert_json_log(log: &str) {
    assert!(!log.trim().is_empty(), "nothing logged");
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["time", "level", "target", "message", "fields"] {
            assert!(v.get(key).is_some(), "{key} missing: {line}");
        }
    }
}

#[test]
fn the_crl_unit_runs_as_written() {
    let built = build();
    let provision = built.package("mqtt-mtls-provision");
    let state = tempfile::tempdir().unwrap();
    ok(state.path(), &["init-ca", "--cn", "Packaged Root"]);
    let unit = unit_of(provision, "provision-crl.service", "");
    let paths = [
        (
            "/usr/bin/provision",
            installed(provision, "/usr/bin/provision"),
        ),
        ("/var/lib/mqtt-mtls", state.path().to_owned()),
    ];
    // No environment file: the unit's `-` makes it optional.
    let out = command(&unit, &[], &paths, state.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The journal gets JSON from it too: the outcome on standard output.
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(outcome["written"], true, "{outcome}");
    assert!(state.path().join("root_cert/crl.pem").is_file());
    let log = String::from_utf8_lossy(&out.stderr);
    if !log.trim().is_empty() {
        assert_json_log(&log);
    }
}

#[test]
fn the_serve_unit_runs_as_written() {
    let built = build();
    let provision = built.package("mqtt-mtls-provision");
    // The state folder private (0700, as StateDirectoryMode says); the
    // broker's folder apart, where the broker can read it (README, Install:
    // /etc/mosquitto/mqtt-mtls).
    let state = tempfile::tempdir().unwrap();
    let d = state.path();
    let broker_dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(broker_dir.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    let broker_out = broker_dir.path().join("mqtt-mtls");
    ok(d, &["init-ca", "--cn", "Packaged Root"]);
    ok(d, &["issue", "server", "broker", "--dns", "localhost"]);
    ok(
        d,
        &["issue", "client", "ca-service", "--role", "ca-service"],
    );
    let (port, enroll, http) = (free_port(), free_port(), free_port());
    ok(
        d,
        &[
            "broker-config",
            "--out",
            broker_out.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--enroll-port",
            &enroll.to_string(),
        ],
    );
    let _main = Mosquitto::with_config(&broker_out.join("mosquitto.conf"), port);
    let _enroll = Mosquitto::with_config(&broker_out.join("enroll.conf"), enroll);

    let unit = unit_of(provision, "provision-serve.service", "");
    // The shipped environment file, this test's ports in place of its
    // examples.
    let shipped =
        std::fs::read_to_string(installed(provision, "/etc/mqtt-mtls/provision-serve.env"))
            .unwrap();
    let env = read_env(
        &shipped
            .replace("--port 8883", &format!("--port {port}"))
            .replace("--enroll-port 8884", &format!("--enroll-port {enroll}"))
            .replace("127.0.0.1:9102", &format!("127.0.0.1:{http}")),
    );
    assert_eq!(unit.environment_file, "/etc/mqtt-mtls/provision-serve.env");
    let paths = [
        (
            "/usr/bin/provision",
            installed(provision, "/usr/bin/provision"),
        ),
        ("/var/lib/mqtt-mtls", d.to_owned()),
    ];
    let mut child = command(&unit, &env, &paths, d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut { stderr }, &mut s).unwrap();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(http, "/healthz").starts_with("HTTP/1.1 200") {
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "provision serve did not get healthy:\n{}",
                log.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    terminate(&mut child);
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "{status}:\n{log}");
    assert_json_log(&log);
}

#[test]
fn the_ingest_unit_runs_as_written() {
    let built = build();
    let ingest = built.package("mqtt-mtls-ingest");
    let pki = peers::mosquitto::Pki::new();
    let broker = Mosquitto::start(&pki, &Default::default());
    let state = tempfile::tempdir().unwrap();
    let d = state.path();
    // The identity in the state folder under the example's names.
    let bundle = pki.client("ingest");
    std::fs::copy(&bundle.cert_path, d.join("ingest_cert.pem")).unwrap();
    std::fs::copy(&bundle.key_path, d.join("ingest.key")).unwrap();
    std::fs::copy(&bundle.ca_cert_path, d.join("root_ca_cert.pem")).unwrap();
    // The shipped example, pointed at this broker and a free port.
    let example = std::fs::read_to_string(installed(
        ingest,
        "/usr/share/doc/mqtt-mtls-ingest/examples/mqtt-ingest.example.toml",
    ))
    .unwrap();
    let http = free_port();
    // As the example says: NAME is the instance; the file goes in the
    // configuration folder, apart from the state.
    let etc = tempfile::tempdir().unwrap();
    let config = etc.path().join("site.toml");
    std::fs::write(
        &config,
        example
            .replace("NAME", "site")
            .replace("/var/lib/mqtt-ingest/site", d.to_str().unwrap())
            .replace("port = 8883", &format!("port = {}", broker.port))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{http}")),
    )
    .unwrap();
    let unit = unit_of(ingest, "mqtt-ingest@.service", "site");
    let paths = [
        (
            "/usr/bin/mqtt-ingest",
            installed(ingest, "/usr/bin/mqtt-ingest"),
        ),
        ("/var/lib/mqtt-ingest/site", d.to_owned()),
        ("/etc/mqtt-ingest/site.toml", config),
    ];
    // Spawn waits for its "listening on" line and for /healthz.
    let mut running = Ingest::spawn(&mut command(&unit, &[], &paths, d));
    assert!(
        d.join("ingest.db").is_file(),
        "the database is in the state folder"
    );
    assert!(running.terminate(), "{}", running.log());
    assert_json_log(&running.log());
    // A failure to start says why in JSON as well (here: its identity is
    // gone).
    std::fs::remove_file(d.join("ingest.key")).unwrap();
    let failed = command(&unit, &[], &paths, d).output().unwrap();
    assert!(!failed.status.success());
    let log = String::from_utf8_lossy(&failed.stderr);
    assert_json_log(&log);
    assert!(
        log.lines()
            .any(|l| l.contains("\"level\":\"ERROR\"") && l.contains("ingest.key")),
        "{log}"
    );
}

fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

fn terminate(child: &mut std::process::Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}
