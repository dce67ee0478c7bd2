//! Outside tools the tests need, found or installed.
//!
//! - `openssl`: Debian's package, installed with apt-get when missing and we
//!   are root.
//! - `mosquitto`, `mosquitto_pub`, `mosquitto_sub`: Debian's packages, the
//!   same way.
//! - pkilint (PyPI): installed into `target/pkilint-venv` on first use.
//! - schemathesis (PyPI, the OpenAPI fuzzer): into
//!   `target/schemathesis-venv` on first use.
//! - `curl` (the HTTPS client of the ingest's tests): Debian's package.
//! - PostgreSQL's server binaries (`initdb`, `pg_ctl`, `postgres`): Debian's
//!   `postgresql`, the same way.
//! - The benchmark's Python side (PyPI's `cryptography` and `paho-mqtt`):
//!   into `target/bench-venv` on first use.
//! - GNU time (`/usr/bin/time`): Debian's `time`.
//! - `cargo fuzz`, `cargo deny`: from crates.io with `cargo install`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{project_root, sh};

/// The pkilint version the suite is known to pass with.
const PKILINT: &str = "pkilint==0.13.3";

/// The schemathesis version the suite is known to pass with.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// `curl`, installing Debian's package when missing.
pub(crate) fn curl() -> Result<PathBuf, String> {
    if let Some(path) = which("curl") {
        return Ok(path);
    }
    apt_install(&["curl"])?;
    which("curl").ok_or_else(|| "curl is still not on PATH after installing it".into())
}

/// The `schemathesis` program, installed into a venv under `target/`.
pub(crate) fn schemathesis() -> Result<PathBuf, String> {
    python_tool("schemathesis-venv", SCHEMATHESIS, "schemathesis")
}

/// The `openssl` binary, installing Debian's package when missing.
pub(crate) fn openssl() -> Result<PathBuf, String> {
    if let Some(path) = which("openssl") {
        return Ok(path);
    }
    apt_install(&["openssl"])?;
    which("openssl").ok_or_else(|| "openssl is still not on PATH after installing it".into())
}

/// What building and checking the Debian packages takes: `lintian`,
/// `dpkg-shlibdeps` (dpkg-dev), `objcopy` (binutils) and `systemd-analyze`
/// (systemd), installed when missing.
pub(crate) fn packaging() -> Result<(), String> {
    let missing: Vec<&str> = [
        ("lintian", "lintian"),
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("objcopy", "binutils"),
        ("systemd-analyze", "systemd"),
    ]
    .into_iter()
    .filter(|(program, _)| which(program).is_none())
    .map(|(_, package)| package)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        apt_install(&missing)
    }
}

/// SoftHSM2 (a PKCS#11 token in files: `softhsm2-util` and the module) and
/// OpenSC's `pkcs11-tool`, for the keys-in-hardware suite, installed when
/// missing; returns the module's path.
pub(crate) fn softhsm() -> Result<PathBuf, String> {
    const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
    if which("softhsm2-util").is_none()
        || which("pkcs11-tool").is_none()
        || !Path::new(MODULE).exists()
    {
        apt_install(&["softhsm2", "opensc"])?;
    }
    Ok(PathBuf::from(MODULE))
}

/// A software TPM (`swtpm`), `tpm2-tools` (`tpm2_flushcontext`, the
/// resource manager's cleanup between processes), tpm2-pkcs11 (the module
/// and `tpm2_ptool`) and OpenSC's `pkcs11-tool`, installed when missing;
/// returns the tpm2-pkcs11 module's path.
pub(crate) fn software_tpm() -> Result<PathBuf, String> {
    const MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so";
    if ["swtpm", "tpm2_flushcontext", "tpm2_ptool", "pkcs11-tool"]
        .iter()
        .any(|tool| which(tool).is_none())
        || !Path::new(MODULE).exists()
    {
        apt_install(&[
            "swtpm",
            "swtpm-tools",
            "tpm2-tools",
            "libtpm2-pkcs11-1",
            "libtpm2-pkcs11-tools",
            "opensc",
        ])?;
    }
    Ok(PathBuf::from(MODULE))
}

/// GNU time (`/usr/bin/time`: a child's peak memory), installing Debian's
/// `time` when missing.
pub(crate) fn gnu_time() -> Result<PathBuf, String> {
    let path = PathBuf::from("/usr/bin/time");
    if !path.is_file() {
        apt_install(&["time"])?;
    }
    path.is_file()
        .then_some(path)
        .ok_or_else(|| "/usr/bin/time is still missing after installing `time`".into())
}

/// The `mosquitto` broker (Debian installs it in /usr/sbin), installing
/// Debian's `mosquitto` and `mosquitto-clients` when either is missing.
pub(crate) fn mosquitto() -> Result<PathBuf, String> {
    let find = || {
        let broker = which("mosquitto").or_else(|| {
            let sbin = PathBuf::from("/usr/sbin/mosquitto");
            sbin.is_file().then_some(sbin)
        });
        broker.filter(|_| which("mosquitto_pub").is_some() && which("mosquitto_sub").is_some())
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    eprintln!("xtask: Mosquitto is missing; installing Debian's mosquitto and mosquitto-clients");
    apt_install(&["mosquitto", "mosquitto-clients"])?;
    find().ok_or_else(|| "mosquitto is still missing after installing it".into())
}

/// The folder holding PostgreSQL's server binaries (the newest
/// `/usr/lib/postgresql/N/bin`), installing Debian's `postgresql` when
/// there is none.
pub(crate) fn postgres() -> Result<PathBuf, String> {
    let find = || {
        std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|v| v.join("bin/initdb").is_file() && v.join("bin/pg_ctl").is_file())
            .max_by_key(|v| {
                v.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<u32>().ok())
            })
            .map(|v| v.join("bin"))
    };
    if let Some(bin) = find() {
        return Ok(bin);
    }
    eprintln!("xtask: PostgreSQL is missing; installing Debian's postgresql");
    apt_install(&["postgresql"])?;
    find().ok_or_else(|| "PostgreSQL's initdb is still missing after installing it".into())
}

/// The folder holding pkilint's `lint_pkix_cert` and friends.
pub(crate) fn pkilint() -> Result<PathBuf, String> {
    let program = python_tool("pkilint-venv", PKILINT, "lint_pkix_cert")?;
    Ok(program
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target/pkilint-venv/bin")))
}

/// `program` from `package` (PyPI), installed into `target/VENV` on first
/// use.
fn python_tool(venv: &str, package: &str, program: &str) -> Result<PathBuf, String> {
    let venv = project_root().join("target").join(venv);
    let bin = venv.join("bin");
    if bin.join(program).exists() {
        return Ok(bin.join(program));
    }
    let python = which("python3").ok_or(
        "python3 is needed for pkilint (the RFC 5280 linter) and schemathesis (the OpenAPI fuzzer); install it (Debian: apt-get install -y python3 python3-venv)",
    )?;
    if Command::new(&python)
        .args(["-m", "venv", "--help"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        apt_install(&["python3-venv"])?;
    }
    sh(Command::new(&python).arg("-m").arg("venv").arg(&venv))?;
    sh(Command::new(bin.join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        package,
    ]))?;
    Ok(bin.join(program))
}

/// The Python of `target/bench-venv`, with the original design's
/// dependency (`cryptography`) and paho-mqtt, for `cargo xtask bench`.
pub(crate) fn bench_python() -> Result<PathBuf, String> {
    let venv = project_root().join("target/bench-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        sh(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let has = Command::new(&python)
        .args(["-c", "import cryptography, paho.mqtt"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        sh(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "cryptography",
            "paho-mqtt",
        ]))?;
    }
    Ok(python)
}

/// `cargo SUBCOMMAND` (e.g. `deny`), installing `package` from crates.io
/// when it does not answer.
pub(crate) fn cargo_subcommand(subcommand: &str, package: &str) -> Result<(), String> {
    let installed = crate::cargo()
        .args([subcommand, "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("xtask: cargo {subcommand} is missing; installing {package} from crates.io");
        sh(crate::cargo().args(["install", package, "--locked"]))?;
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Installs Debian packages when we are root on a Debian-like system;
/// otherwise says exactly what to run.
pub(crate) fn apt_install(packages: &[&str]) -> Result<(), String> {
    let how = format!("apt-get install -y {}", packages.join(" "));
    if !is_root() || which("apt-get").is_none() {
        return Err(format!(
            "missing {}: install it first (Debian: sudo {how})",
            packages.join(", ")
        ));
    }
    sh(Command::new("apt-get").arg("update").arg("-qq"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
