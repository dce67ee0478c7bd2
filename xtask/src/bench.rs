//! `cargo xtask bench [--quick] [--fleet-devices N]`: release builds, the
//! peers installed, then `mqtt-bench all` (every measurement, ours and the
//! peers', into `target/bench/results.json`) and `mqtt-bench report`
//! (`docs/benchmarks.md` and `docs/benchmarks.svg`).
//!
//! What is measured and how lives in `crates/mqtt-bench`; this module only
//! builds, installs (Mosquitto and its clients, openssl, GNU time, the
//! Python venv with `cryptography` and paho-mqtt) and passes the paths.

use std::path::PathBuf;
use std::process::Command;

use crate::{cargo, project_root, sh, tools};

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut all_args: Vec<String> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--quick" => all_args.push(arg.clone()),
            // The fleet step's size (a million: about 12 GB and a few
            // minutes; not for CI).
            "--fleet-devices" => {
                let n = rest
                    .next()
                    .filter(|n| n.parse::<usize>().is_ok())
                    .ok_or("--fleet-devices takes a number")?;
                all_args.extend(["--fleet-devices".to_owned(), n.clone()]);
            }
            other => return Err(format!("cargo xtask bench: unknown argument {other:?}")),
        }
    }
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "mqtt-bench",
        "-p",
        "mqtt-ingest",
        "-p",
        "provision",
        // The binaries step sizes the plugin too.
        "-p",
        "mosquitto-plugin",
    ]))?;
    tools::mosquitto()?;
    // objcopy, for the stripped sizes.
    tools::packaging()?;
    let openssl = tools::openssl()?;
    let time = tools::gnu_time()?;
    let python = tools::bench_python()?;
    let softhsm = tools::softhsm()?;
    // The hsm step's device keys: a software TPM beside SoftHSM2.
    let tpm2_pkcs11 = tools::software_tpm()?;

    let root = project_root();
    let release = target_dir().join("release");
    let bench = release.join("mqtt-bench");
    let results = root.join("target/bench/results.json");
    sh(Command::new(&bench)
        .current_dir(&root)
        .arg("all")
        .args(&all_args)
        .arg("--python")
        .arg(&python)
        .arg("--openssl")
        .arg(&openssl)
        .arg("--time")
        .arg(&time)
        .arg("--provision")
        .arg(release.join("provision"))
        .arg("--ingest")
        .arg(release.join("mqtt-ingest"))
        .arg("--softhsm-module")
        .arg(&softhsm)
        .arg("--out")
        .arg(&results)
        .env("MQTT_MTLS_SOFTHSM_MODULE", &softhsm)
        .env("MQTT_MTLS_TPM2_PKCS11_MODULE", &tpm2_pkcs11)
        .stdout(std::process::Stdio::null()))?;
    sh(Command::new(&bench)
        .current_dir(&root)
        .arg("report")
        .arg("--results")
        .arg(&results)
        .arg("--markdown")
        .arg(root.join("docs/benchmarks.md"))
        .arg("--chart")
        .arg(root.join("docs/benchmarks.svg")))?;
    Ok(())
}

/// Where cargo puts its builds: `CARGO_TARGET_DIR` (relative to the
/// workspace root) when set, else `target/`.
fn target_dir() -> PathBuf {
    let root = project_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| root.join("target"), |d| root.join(d))
}
