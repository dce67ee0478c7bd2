//! A software TPM (swtpm) behind tpm2-pkcs11, the PKCS#11 door a device
//! with a TPM uses: one token, initialised through PKCS#11 itself
//! (`pkcs11-tool --init-token`), its store in a temp folder.
//!
//! A real device reaches its TPM through the kernel's resource manager
//! (`/dev/tpmrm0`), which flushes what a process left loaded when it
//! exits. swtpm spoken to directly has none, and holds three transient
//! objects: [`SoftTpm::after_process`] flushes them after each process, as
//! the resource manager would.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::mosquitto::free_port;

/// The tpm2-pkcs11 module: `$MQTT_MTLS_TPM2_PKCS11_MODULE` (which `cargo
/// xtask test` sets), else Debian's path.
pub fn module() -> PathBuf {
    let path = std::env::var_os("MQTT_MTLS_TPM2_PKCS11_MODULE").map_or_else(
        || PathBuf::from("/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "no tpm2-pkcs11 module at {} (cargo xtask test installs libtpm2-pkcs11-1)",
        path.display()
    );
    path
}

/// A running swtpm with one tpm2-pkcs11 token; stopped on drop.
pub struct SoftTpm {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl SoftTpm {
    /// A fresh TPM with the token `label`, its user PIN `pin`.
    pub fn start(label: &str, pin: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::create_dir(dir.path().join("store")).unwrap();
        // The swtpm TCTI finds the control channel on the next port.
        let mut tries = 0;
        let tpm = loop {
            tries += 1;
            let port = free_port();
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", state.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("swtpm (cargo xtask test installs swtpm)");
            let deadline = Instant::now() + Duration::from_secs(10);
            let listening = loop {
                if child.try_wait().ok().flatten().is_some() {
                    break false;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", port + 1)).is_ok()
                {
                    break true;
                }
                assert!(Instant::now() < deadline, "swtpm did not listen");
                std::thread::sleep(Duration::from_millis(20));
            };
            if listening {
                break Self { dir, port, child };
            }
            // The next port was taken: another pair.
            assert!(tries < 10, "swtpm could not listen on two free ports");
        };
        let store = tpm.store();
        tpm.run(
            "tpm2_ptool",
            &["init", &format!("--path={}", store.display())],
        );
        tpm.after_process();
        let module = module();
        let module = module.to_str().unwrap();
        tpm.run(
            "pkcs11-tool",
            &[
                "--module",
                module,
                "--init-token",
                "--label",
                label,
                "--so-pin",
                "12345678",
            ],
        );
        tpm.after_process();
        tpm.run(
            "pkcs11-tool",
            &[
                "--module",
                module,
                "--token-label",
                label,
                "--login",
                "--login-type",
                "so",
                "--so-pin",
                "12345678",
                "--init-pin",
                "--pin",
                pin,
            ],
        );
        tpm.after_process();
        tpm
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The environment of a process using the TPM's token.
    pub fn envs(&self) -> Vec<(String, String)> {
        let tcti = format!("swtpm:host=127.0.0.1,port={}", self.port);
        vec![
            ("TPM2_PKCS11_TCTI".into(), tcti.clone()),
            ("TPM2TOOLS_TCTI".into(), tcti),
            (
                "TPM2_PKCS11_STORE".into(),
                self.store().display().to_string(),
            ),
        ]
    }

    /// `program ARGS` with the TPM's environment; panics when it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program)
            .envs(self.envs())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e} (cargo xtask test installs it)"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{program} {args:?}: {text}");
        text
    }

    /// What the kernel's resource manager does when a process exits:
    /// flushes the transient objects and sessions it left in the TPM.
    pub fn after_process(&self) {
        for what in ["--transient-object", "--loaded-session", "--saved-session"] {
            let _ = Command::new("tpm2_flushcontext")
                .envs(self.envs())
                .arg(what)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// The token's objects, as `pkcs11-tool --list-objects` shows them
    /// (logged in with `pin`).
    pub fn objects(&self, label: &str, pin: &str) -> String {
        let module = module();
        let listed = self.run(
            "pkcs11-tool",
            &[
                "--module",
                module.to_str().unwrap(),
                "--token-label",
                label,
                "--login",
                "--pin",
                pin,
                "--list-objects",
            ],
        );
        self.after_process();
        listed
    }

    /// The folder of the TPM's state and the token's store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SoftTpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
