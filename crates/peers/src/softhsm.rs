//! SoftHSM2 tokens in a temp folder of their own (`SOFTHSM2_CONF` names
//! it to each process that uses them): the PKCS#11 token of the
//! keys-in-hardware suite and the `hsm` bench step.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The SoftHSM2 module: `$MQTT_MTLS_SOFTHSM_MODULE` (which `cargo xtask
/// test` sets), else Debian's path.
pub fn module() -> PathBuf {
    let path = std::env::var_os("MQTT_MTLS_SOFTHSM_MODULE").map_or_else(
        || PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "no SoftHSM2 module at {} (cargo xtask test installs softhsm2)",
        path.display()
    );
    path
}

/// A folder of tokens and the configuration naming it; removed on drop.
pub struct Tokens {
    dir: tempfile::TempDir,
    /// The configuration file: `SOFTHSM2_CONF` for every process using
    /// these tokens.
    pub conf: PathBuf,
}

impl Tokens {
    /// No token yet.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        Self { dir, conf }
    }

    /// Where the tokens' files are.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// A folder beside the tokens, for the caller's files.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// `softhsm2-util ARGS` on these tokens; panics when it fails.
    pub fn util(&self, args: &[&str]) {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(args)
            .output()
            .expect("softhsm2-util (cargo xtask test installs softhsm2)");
        assert!(
            out.status.success(),
            "softhsm2-util {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new token `label` with the user PIN `pin`.
    pub fn init(&self, label: &str, pin: &str) {
        self.util(&[
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            "000000",
            "--pin",
            pin,
        ]);
    }

    /// Deletes token `label`, as if it were unplugged.
    pub fn delete(&self, label: &str) {
        self.util(&["--delete-token", "--token", label]);
    }
}

impl Default for Tokens {
    fn default() -> Self {
        Self::new()
    }
}
