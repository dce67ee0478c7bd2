//! A real PostgreSQL server per test: `initdb` into a temp folder, `pg_ctl
//! start` on a free port on 127.0.0.1, trust authentication, stopped and
//! removed on drop.
//!
//! The binaries come from `MQTT_MTLS_PG_BINDIR` (set by `cargo xtask
//! test`/`e2e`, which installs Debian's `postgresql` when missing), else
//! the newest `/usr/lib/postgresql/*/bin`, else `PATH`. PostgreSQL refuses
//! to run as root: as root, the server runs as the `postgres` user the
//! Debian package creates.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running PostgreSQL; dropping it stops it and removes its files.
pub struct Postgres {
    bindir: PathBuf,
    data: PathBuf,
    /// The server's options (port, listen address, socket folder).
    options: String,
    /// The port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Initialises and starts a server with a `postgres` superuser.
    pub fn start() -> Self {
        let bindir = bindir();
        let dir = tempfile::tempdir().unwrap();
        // The server's user must reach its folder.
        set_mode(dir.path(), 0o755);
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let port = crate::mosquitto::free_port();
        if crate::running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown to postgres failed");
        }
        let initdb = run_as_server_user(&bindir.join("initdb"))
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb from {}: {e}", bindir.display()));
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let server = Self {
            options: format!(
                "-p {port} -h 127.0.0.1 -k {} -c fsync=on -c max_connections=200",
                data.display()
            ),
            bindir,
            data,
            port,
            _dir: dir,
        };
        server.restart();
        server
    }

    /// Initialises and starts a server that speaks TLS only, with this
    /// server certificate and key, and authenticates clients by their
    /// certificate from `client_ca` (PostgreSQL's `cert` method: the CN is
    /// the user): `hostssl ... cert`, `hostnossl ... reject`. The Unix
    /// socket stays `trust` for [`Postgres::psql`].
    pub fn start_tls(cert: &Path, key: &Path, client_ca: &Path) -> Self {
        let mut server = Self::start();
        server.stop();
        let tls = server.data.with_file_name("tls");
        std::fs::create_dir(&tls).unwrap();
        for (from, to) in [
            (cert, "server.crt"),
            (key, "server.key"),
            (client_ca, "ca.crt"),
        ] {
            std::fs::copy(from, tls.join(to)).unwrap();
        }
        set_mode(&tls.join("server.key"), 0o600);
        if crate::running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&tls)
                .status()
                .unwrap();
            assert!(status.success(), "chown to postgres failed");
        }
        std::fs::write(
            server.data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 cert\n\
             hostssl all all ::1/128 cert\n\
             hostnossl all all all reject\n",
        )
        .unwrap();
        server.options = format!(
            "{} -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c ssl_ca_file={}",
            server.options,
            tls.join("server.crt").display(),
            tls.join("server.key").display(),
            tls.join("ca.crt").display()
        );
        server.restart();
        server
    }

    /// Runs `sql` as the `postgres` superuser over the Unix socket.
    pub fn psql(&self, sql: &str) {
        let out = run_as_server_user(&self.bindir.join("psql"))
            .args(["-h"])
            .arg(&self.data)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The URL of the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (no shutdown checkpoint, as a crash).
    pub fn stop(&self) {
        let _ = run_as_server_user(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    /// Starts the server (again, after [`Postgres::stop`]) on its port.
    pub fn restart(&self) {
        let log = self.data.with_file_name("postgres.log");
        let start = run_as_server_user(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(&self.options)
            .args(["-w", "-t", "60", "start"])
            .output()
            .unwrap();
        assert!(
            start.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&start.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MQTT_MTLS_PG_BINDIR") {
        return dir.into();
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .max_by_key(|bin| {
            bin.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
        });
    if let Some(bin) = newest {
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|dir| dir.join("initdb").is_file()))
        .expect(
            "PostgreSQL's initdb and pg_ctl are needed: run `cargo xtask test`, which installs \
             them, or apt-get install -y postgresql",
        )
}

/// `program`, run as the `postgres` user when we are root.
fn run_as_server_user(program: &Path) -> Command {
    if crate::running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
