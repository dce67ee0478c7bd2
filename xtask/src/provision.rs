//! `cargo xtask provision`: the main job on a built-in default.

use std::path::{Path, PathBuf};

use crate::{cargo, project_root, sh};

/// The default fleet: a root CA, a broker for localhost and 127.0.0.1, and
/// `client1`, in the original design's layout.
const DEFAULT_MANIFEST: &str = r#"# Written by `cargo xtask provision`; edit it and run the command again.
[ca]
dir = "root_cert"
common_name = "MQTT Root CA"

[[broker]]
name = "broker"
dns = ["localhost"]
ip = ["127.0.0.1"]

[[devices]]
name = "client1"
"#;

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut out = project_root();
    let mut manifest = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--out" => out = PathBuf::from(it.next().ok_or("--out needs a folder")?),
            "--manifest" => {
                manifest = Some(PathBuf::from(it.next().ok_or("--manifest needs a file")?))
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?} (expected --out DIR, --manifest FILE)"
                ));
            }
        }
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let manifest = match manifest {
        Some(m) => m,
        None => {
            let path = out.join("provision.toml");
            if !path.exists() {
                std::fs::write(&path, DEFAULT_MANIFEST)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
            path
        }
    };

    sh(cargo().args(["build", "--quiet", "-p", "provision"]))?;
    let provision = project_root().join("target/debug/provision");
    sh(std::process::Command::new(&provision)
        .arg("fleet")
        .arg(&manifest))?;

    let base = manifest.parent().unwrap_or(Path::new("."));
    let certs = base.join("backend_certs");
    if certs.join("broker_cert.pem").exists() {
        sh(std::process::Command::new(&provision)
            .arg("broker-config")
            .args(["--server", "broker", "--port", "8883"])
            .arg("--certs-dir")
            .arg(&certs)
            .arg("--ca-dir")
            .arg(base.join("root_cert"))
            .arg("--out")
            .arg(base.join("broker"))
            .arg("--force"))?;
    }
    let rel = |p: PathBuf| {
        p.strip_prefix(std::env::current_dir().unwrap_or_default())
            .map(Path::to_path_buf)
            .unwrap_or(p)
    };
    let broker_conf = rel(base.join("broker/mosquitto.conf"));
    let certs = rel(certs);
    let ca = rel(base.join("root_cert/root_ca_cert.pem"));
    println!(
        "\nDone. Next steps:\n\
         \x20 1. Start the broker:   mosquitto -c {conf}\n\
         \x20 2. Subscribe:          cargo run -p provision -- sub -t test/data -C 1 --cert {certs}/client1_cert.pem --key {certs}/client1.key --ca {ca}\n\
         \x20 3. Publish:            cargo run -p provision -- pub -t test/data -m hello --cert {certs}/client1_cert.pem --key {certs}/client1.key --ca {ca}\n\
         \x20 Inspect anything:      cargo run -p provision -- inspect {certs}/client1_cert.pem\n\
         \x20 Run the tests:         cargo xtask test",
        conf = broker_conf.display(),
        certs = certs.display(),
        ca = ca.display(),
    );
    Ok(())
}
