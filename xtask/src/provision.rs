//! `cargo xtask provision`: the main job on a built-in default.

use std::path::{Path, PathBuf};

use crate::{cargo, describe, project_root, sh};

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
    // Commands below run in the project root (`cargo run`): paths the user
    // gave relative to where they are must not move with them.
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let out = absolute(out);
    let manifest = manifest.map(absolute);
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

    // `cargo run`, not a path under target/: CARGO_TARGET_DIR may put the
    // binary anywhere. The fleet says what it made and where.
    let run_provision = || {
        let mut cmd = cargo();
        cmd.args(["run", "--quiet", "-p", "provision", "--"]);
        cmd
    };
    let mut fleet = run_provision();
    fleet.arg("fleet").arg("--json").arg(&manifest);
    eprintln!("$ {}", describe(&fleet));
    let output = fleet
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start {}: {e}", describe(&fleet)))?;
    if !output.status.success() {
        return Err(format!("{} failed: {}", describe(&fleet), output.status));
    }
    let made: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("reading what `provision fleet --json` printed: {e}"))?;
    let path = |v: &serde_json::Value| v.as_str().map(PathBuf::from);
    let ca_dir = path(&made["ca_dir"]).ok_or("`provision fleet --json` printed no ca_dir")?;
    let ca_cert = path(&made["ca_cert"]).ok_or("`provision fleet --json` printed no ca_cert")?;
    let base = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
    let broker_dir = base.join("broker");
    let broker = made["brokers"].as_array().and_then(|b| b.first());
    if let Some(broker) = broker {
        let name = broker["name"].as_str().ok_or("a broker without a name")?;
        let cert = path(&broker["cert"]).ok_or("a broker without its certificate path")?;
        let certs = cert.parent().unwrap_or(Path::new(".")).to_path_buf();
        sh(run_provision()
            .arg("broker-config")
            .args(["--server", name, "--port", "8883"])
            .arg("--certs-dir")
            .arg(&certs)
            .arg("--ca-dir")
            .arg(&ca_dir)
            .arg("--out")
            .arg(&broker_dir)
            .arg("--force"))?;
    }
    let devices = made["device_folders"]
        .as_array()
        .and_then(|d| d.first())
        .and_then(path);
    let rel = |p: PathBuf| {
        p.strip_prefix(std::env::current_dir().unwrap_or_default())
            .map(Path::to_path_buf)
            .unwrap_or(p)
    };
    let broker_conf = rel(broker_dir.join("mosquitto.conf"));
    let certs = rel(devices.unwrap_or_else(|| base.join("backend_certs")));
    let ca = rel(ca_cert);
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
