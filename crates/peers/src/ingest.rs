//! The `mqtt-ingest` service as a process: its command line, its log,
//! its HTTP endpoints, a clean or a hard stop. Shared by the ingest's suites
//! and `mqtt-bench`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_tls::ClientCert;

use crate::postgres::Postgres;

/// The database under test.
pub enum Db {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL of its own.
    Postgres(Postgres),
}

impl Db {
    /// The database URL `mqtt-ingest --db` takes.
    pub fn url(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::Postgres(pg) => pg.url(),
        }
    }
}

/// A running `mqtt-ingest` process; killed on drop.
pub struct Ingest {
    child: Option<Child>,
    http: String,
    log: Arc<Mutex<String>>,
}

impl Ingest {
    /// The command line of the `mqtt-ingest` binary `bin` as `bundle`'s
    /// identity with `client_id`, against the broker (or a proxy in front
    /// of it) on `port` of localhost, subscribed to `topic` at QoS 1,
    /// storing into `db`, HTTP on `listen` (`127.0.0.1:0`: a free port).
    pub fn command_line(
        bin: &Path,
        bundle: &ClientCert,
        port: u16,
        db: &Db,
        client_id: &str,
        topic: &str,
        listen: &str,
    ) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("--cert")
            .arg(&bundle.cert_path)
            .arg("--key")
            .arg(&bundle.key_path)
            .arg("--ca")
            .arg(&bundle.ca_cert_path)
            .args(["--host", "localhost", "--port", &port.to_string()])
            .args(["--client-id", client_id, "--topic", topic])
            .arg("--db")
            .arg(db.url())
            .args(["--listen", listen])
            .env("RUST_LOG", "info");
        cmd
    }

    /// Runs `cmd` (an `mqtt-ingest` command line), collecting its log.
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let http = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("mqtt-ingest did not start:\n{}", log.lock().unwrap()));
        let ingest = Self {
            child: Some(child),
            http,
            log,
        };
        ingest.wait_healthy();
        ingest
    }

    /// `GET path` over plain HTTP: the status and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.http).unwrap();
        // An answer that never comes fails the test instead of hanging it.
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.http
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// Waits (at most 20 s) until `/healthz` answers 200.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.get("/healthz");
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never healthy: {body}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of the metric `name` in `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    }

    /// A metric that may have a fraction (a histogram's `_sum`).
    pub fn metric_f64(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and waits for the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then waits at most `limit` for the process to end; `None`
    /// (and a SIGKILL) if it did not.
    pub fn terminate_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take().unwrap();
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM: a clean shutdown; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let mut c = self.child.take().unwrap();
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .unwrap();
        c.wait().unwrap().success()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.kill9();
    }
}
