//! A real Mosquitto for end-to-end tests: its own temp dir and port,
//! `require_certificate true`, stopped by `Drop`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use mqtt_tls::ClientCert;
use pki_core::{
    CertificateAuthority, Csr, CsrParams, IssueParams, KeyPair, KeyType, Profile, Subject,
    SubjectAltName, Validity,
};

use crate::{root, tool, write};

/// The `mosquitto` broker binary (Debian puts it in /usr/sbin).
pub fn mosquitto_bin() -> PathBuf {
    if std::env::var_os("MQTT_MTLS_MOSQUITTO").is_none()
        && Path::new("/usr/sbin/mosquitto").is_file()
    {
        return PathBuf::from("/usr/sbin/mosquitto");
    }
    tool(
        Some("MQTT_MTLS_MOSQUITTO"),
        "mosquitto",
        "run `cargo xtask test`, which installs it, or apt-get install -y mosquitto mosquitto-clients",
    )
}

/// `mosquitto_pub` or `mosquitto_sub`.
pub fn mosquitto_client(program: &str) -> PathBuf {
    tool(None, program, "apt-get install -y mosquitto-clients")
}

/// The `--cafile --cert --key` arguments of `mosquitto_pub`/`mosquitto_sub`
/// for a client bundle.
pub fn tls_args(bundle: &ClientCert) -> Vec<String> {
    vec![
        "--cafile".to_owned(),
        bundle.ca_cert_path.display().to_string(),
        "--cert".to_owned(),
        bundle.cert_path.display().to_string(),
        "--key".to_owned(),
        bundle.key_path.display().to_string(),
    ]
}

/// `mosquitto_pub` or `mosquitto_sub` (`program`) as `bundle`'s identity
/// on `topic` at `qos`, against the broker on `port` of localhost; the
/// caller adds what the program does (`-m`, `-l`, `-C`, `-W`, ...).
pub fn cli(program: &str, port: u16, topic: &str, qos: u8, bundle: &ClientCert) -> Command {
    let mut cmd = Command::new(mosquitto_client(program));
    cmd.args(["-h", "localhost", "-p", &port.to_string(), "-t", topic])
        .args(["-q", &qos.to_string()])
        .args(tls_args(bundle));
    cmd
}

/// A CA and a broker certificate in a temp dir, and a way to make clients.
pub struct Pki {
    /// The folder holding every file.
    pub dir: tempfile::TempDir,
    /// The CA.
    pub ca: CertificateAuthority,
    /// `ca.pem`.
    pub ca_path: PathBuf,
    /// The broker's certificate.
    pub server_cert: PathBuf,
    /// The broker's key.
    pub server_key: PathBuf,
}

impl Pki {
    /// A P-256 CA and a broker certificate for `localhost` and 127.0.0.1.
    pub fn new() -> Self {
        Self::with_server_names(&["localhost"], &["127.0.0.1"])
    }

    /// A broker certificate naming exactly these hosts.
    pub fn with_server_names(dns: &[&str], ips: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = root(KeyType::P256);
        let ca_path = write(dir.path(), "ca.pem", &ca.certificate().to_pem());
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let mut params = CsrParams::new(Subject::new("broker").unwrap());
        params.sans = dns
            .iter()
            .map(|d| SubjectAltName::Dns(d.parse().unwrap()))
            .chain(ips.iter().map(|i| SubjectAltName::Ip(i.parse().unwrap())))
            .collect();
        let csr = Csr::new(&params, &key).unwrap();
        let cert = ca
            .sign(
                &csr,
                &IssueParams {
                    csr_names: pki_core::CsrNames::ALL,
                    ..IssueParams::new(Profile::Server, Validity::days_from_now(30).unwrap())
                },
            )
            .unwrap()
            .certificate;
        let server_cert = write(dir.path(), "server.pem", &cert.to_pem());
        let server_key = write(dir.path(), "server.key", &key.to_pkcs8_pem().unwrap());
        Self {
            dir,
            ca,
            ca_path,
            server_cert,
            server_key,
        }
    }

    /// A client bundle for `name` from this CA.
    pub fn client(&self, name: &str) -> ClientCert {
        self.issue(
            &self.ca,
            name,
            Profile::Client,
            Validity::days_from_now(30).unwrap(),
        )
    }

    /// A bundle for `name` from `ca` with the given profile and validity;
    /// the bundle's CA file is this PKI's CA.
    pub fn issue(
        &self,
        ca: &CertificateAuthority,
        name: &str,
        profile: Profile,
        validity: Validity,
    ) -> ClientCert {
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let mut params = CsrParams::new(Subject::new(name).unwrap());
        if profile == Profile::Server {
            params.sans = vec![SubjectAltName::Dns("localhost".parse().unwrap())];
        }
        let csr = Csr::new(&params, &key).unwrap();
        let cert = ca
            .sign(
                &csr,
                &IssueParams {
                    csr_names: pki_core::CsrNames::ALL,
                    ..IssueParams::new(profile, validity)
                },
            )
            .unwrap()
            .certificate;
        ClientCert::new(
            write(self.dir.path(), &format!("{name}_cert.pem"), &cert.to_pem()),
            write(
                self.dir.path(),
                &format!("{name}.key"),
                &key.to_pkcs8_pem().unwrap(),
            ),
            self.ca_path.clone(),
        )
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// Broker settings that tests vary.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// `persistence true` (sessions survive a restart).
    pub persistence: bool,
    /// The broker's certificate (chain) and key instead of the PKI's.
    pub server: Option<(PathBuf, PathBuf)>,
    /// The CA file clients are checked against instead of the PKI's.
    pub cafile: Option<PathBuf>,
    /// More configuration lines (e.g. `tls_version tlsv1.2`, `crlfile ...`).
    pub extra: String,
    /// Leave `max_queued_messages` and `max_inflight_messages` at
    /// Mosquitto's defaults (1000 and 20) instead of the suite's generous
    /// 100000 and 100.
    pub mosquitto_defaults: bool,
    /// With `persistence`: seconds between the broker's saves of its
    /// sessions (`autosave_interval`); `None` is 1. A crash
    /// ([`Mosquitto::crash`]) loses what changed since the last save.
    pub autosave_interval: Option<u32>,
}

/// A running Mosquitto. Dropping it kills the process.
pub struct Mosquitto {
    child: Option<Child>,
    config: PathBuf,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a broker for `pki` on a free port.
    pub fn start(pki: &Pki, options: &BrokerOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = format!(
            "per_listener_settings false\n\
             allow_anonymous true\n\
             listener {port} 127.0.0.1\n\
             cafile {ca}\n\
             certfile {cert}\n\
             keyfile {key}\n\
             require_certificate true\n\
             use_identity_as_username true\n\
             {limits}\
             set_tcp_nodelay true\n\
             log_dest file {log}\n\
             log_type all\n",
            ca = options.cafile.as_ref().unwrap_or(&pki.ca_path).display(),
            cert = options
                .server
                .as_ref()
                .map_or(&pki.server_cert, |s| &s.0)
                .display(),
            key = options
                .server
                .as_ref()
                .map_or(&pki.server_key, |s| &s.1)
                .display(),
            log = dir.path().join("mosquitto.log").display(),
            limits = if options.mosquitto_defaults {
                ""
            } else {
                "max_queued_messages 100000\nmax_inflight_messages 100\n"
            },
        );
        if running_as_root() {
            // Mosquitto started as root drops to the `mosquitto` user, which
            // cannot write our temp dir (log, persistence file).
            conf.push_str("user root\n");
        }
        if options.persistence {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval {}\n",
                dir.path().display(),
                options.autosave_interval.unwrap_or(1)
            ));
        }
        conf.push_str(&options.extra);
        let config = write(dir.path(), "mosquitto.conf", &conf);
        let mut broker = Self {
            child: None,
            config,
            port,
            dir,
        };
        broker.spawn();
        broker
    }

    /// Starts a broker from a configuration someone else wrote (it must
    /// listen on 127.0.0.1:`port`); its output goes to `dir`/mosquitto.log.
    pub fn with_config(config: &Path, port: u16) -> Self {
        let mut broker = Self {
            child: None,
            config: config.to_owned(),
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .unwrap();
        let child = self
            .command()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto: {e}"));
        self.child = Some(child);
        // Ready when it logs that it runs and accepts connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mosquitto exited with {status}:\n{}", self.log());
            }
            if self.log().contains(" running")
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The command that runs the broker: the local binary, or the
    /// `eclipse-mosquitto:2` container when `MQTT_MTLS_BROKER=container`
    /// (set by `cargo xtask e2e` when a Docker engine and the image are
    /// there). The container shares the host network and the temp folder at
    /// the same path, and runs as our user so it can read our files.
    fn command(&self) -> Command {
        if !use_container() {
            let mut cmd = Command::new(mosquitto_bin());
            cmd.arg("-c").arg(&self.config);
            return cmd;
        }
        let tmp = std::env::temp_dir();
        let mut cmd = Command::new("docker");
        cmd.args([
            "run",
            "--rm",
            "--name",
            &self.container_name(),
            "--network",
            "host",
        ])
        .arg("--user")
        .arg(format!(
            "{}:{}",
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw()
        ))
        .arg("-v")
        .arg(format!("{0}:{0}", tmp.display()))
        .args([CONTAINER_IMAGE, "mosquitto", "-c"])
        .arg(&self.config);
        cmd
    }

    fn container_name(&self) -> String {
        format!("mqtt-mtls-test-{}-{}", std::process::id(), self.port)
    }

    /// Stops the broker gracefully (SIGTERM: it saves its persistence file).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if use_container() {
                let _ = Command::new("docker")
                    .args(["kill", "--signal", "TERM", &self.container_name()])
                    .status();
            } else {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Kills the broker (SIGKILL): no goodbye to clients, no save of its
    /// persistence file; [`Mosquitto::restart`] starts it again from its
    /// last save.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            if use_container() {
                let _ = Command::new("docker")
                    .args(["kill", "--signal", "KILL", &self.container_name()])
                    .status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts the broker again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The broker's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if use_container() && self.child.is_some() {
            let _ = Command::new("docker")
                .args(["rm", "-f", &self.container_name()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The image the container mode runs.
pub const CONTAINER_IMAGE: &str = "eclipse-mosquitto:2";

fn use_container() -> bool {
    std::env::var("MQTT_MTLS_BROKER").is_ok_and(|v| v == "container")
}

fn running_as_root() -> bool {
    // In a container the broker runs as our user already.
    !use_container() && crate::running_as_root()
}

/// Raises this process's soft open-file limit to at least `at_least`
/// (within the hard limit), for many clients against one broker; a broker
/// started afterwards inherits it. The usual soft limit, 1,024, is less
/// than 1,000 clients and their broker need.
pub fn raise_open_file_limit(at_least: u64) -> Result<(), String> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < at_least {
        return Err(format!(
            "need {at_least} open files; the hard limit is {hard} (raise it: ulimit -Hn)"
        ));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(at_least.max(limit.current.unwrap_or(0))),
            maximum: limit.maximum,
        },
    )
    .map_err(|e| format!("raising the open-file limit to {at_least}: {e}"))
}

/// A port nothing listens on right now, on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A validity window that ended yesterday.
pub fn expired() -> Validity {
    let now = SystemTime::now();
    Validity::new(
        now - Duration::from_secs(10 * 86_400),
        now - Duration::from_secs(86_400),
    )
    .unwrap()
}
