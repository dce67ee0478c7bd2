//! `cargo xtask provision`: the main job on a built-in default.

use std::path::{Path, PathBuf};

use crate::{cargo, describe, project_root};

/// The default fleet: a root CA, a broker for localhost and 127.0.0.1,
/// the device `client1` and the service `backend` (which reads every
/// device), in the original design's layout.
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

[[services]]
name = "backend"
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
    // The first build takes minutes on a small machine: cargo's progress
    // shows (the run after it is quiet).
    // A `provision` already built (MQTT_MTLS_PROVISION_BIN: the test of
    // these steps, which cannot run cargo inside cargo) is run as it is.
    let prebuilt = std::env::var_os("MQTT_MTLS_PROVISION_BIN")
        .map(PathBuf::from)
        .map(|p| std::path::absolute(&p).unwrap_or(p));
    if prebuilt.is_none() {
        let mut build = cargo();
        build.args(["build", "-p", "provision"]);
        eprintln!("$ {}", describe(&build));
        let status = build
            .status()
            .map_err(|e| format!("cannot start {}: {e}", describe(&build)))?;
        if !status.success() {
            return Err(format!("{} failed: {status}", describe(&build)));
        }
    }
    let run_provision = || match &prebuilt {
        Some(bin) => std::process::Command::new(bin),
        None => {
            let mut cmd = cargo();
            cmd.args(["run", "--quiet", "-p", "provision", "--"]);
            cmd
        }
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
    let mut broker_conf = None;
    if let Some(broker) = broker {
        let name = broker["name"].as_str().ok_or("a broker without a name")?;
        let cert = path(&broker["cert"]).ok_or("a broker without its certificate path")?;
        let certs = cert.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut config = run_provision();
        config
            .args([
                "--json",
                "broker-config",
                "--server",
                name,
                "--port",
                "8883",
                // The enrollment broker (enroll.conf) for devices with a
                // claim (docs/lifecycle.md).
                "--enroll-port",
                "8884",
            ])
            .arg("--certs-dir")
            .arg(&certs)
            .arg("--ca-dir")
            .arg(&ca_dir)
            .arg("--out")
            .arg(&broker_dir)
            .arg("--force");
        eprintln!("$ {}", describe(&config));
        let output = config
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot start {}: {e}", describe(&config)))?;
        if !output.status.success() {
            return Err(format!("{} failed: {}", describe(&config), output.status));
        }
        let written: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("reading what `provision broker-config --json` printed: {e}"))?;
        broker_conf = path(&written["config"]);
    }
    println!(
        "\nFleet {}: {} issued, {} already valid and kept, {} of them replacing a revoked, \
         expiring or changed certificate.",
        manifest.display(),
        made["issued"],
        made["kept"],
        made["replaced"]
    );
    let device = &made["first_device"];
    let rel = |p: PathBuf| {
        p.strip_prefix(std::env::current_dir().unwrap_or_default())
            .map(Path::to_path_buf)
            .unwrap_or(p)
    };
    let ca = rel(ca_cert);
    let enroll_conf = broker_conf
        .as_ref()
        .map(|c| rel(c.with_file_name("enroll.conf")).display().to_string())
        .unwrap_or_else(|| "broker/enroll.conf".into());
    // The binaries just built, for the steps below.
    let bin_dir = match &prebuilt {
        Some(bin) => bin.parent().unwrap_or(Path::new(".")).to_owned(),
        None => target_dir()?.join("debug"),
    };
    println!(
        "\nPut the binaries just built on the PATH of this shell (or install them: \
         cargo install --locked --path crates/provision):\n  export PATH=\"{}:$PATH\"",
        bin_dir.display()
    );
    println!("\nDone. Next steps:");
    if let Some(conf) = broker_conf {
        println!(
            "  1. Start the broker:   mosquitto -c {}",
            rel(conf).display()
        );
    }
    if let (Some(cert), Some(key)) = (path(&device["cert"]), path(&device["key"])) {
        let (cert, key) = (rel(cert), rel(key));
        let device_name = device["name"].as_str().unwrap_or("client1");
        let tls = |cert: &Path, key: &Path| {
            format!(
                "--cert {} --key {} --ca {}",
                cert.display(),
                key.display(),
                ca.display()
            )
        };
        // A device may only publish on its own topics and cannot read
        // another's, and one identity is one connection: a service
        // (which reads every device) subscribes, the device publishes.
        let service = &made["first_service"];
        match (path(&service["cert"]), path(&service["key"])) {
            (Some(scert), Some(skey)) => {
                let (scert, skey) = (rel(scert), rel(skey));
                println!(
                    "  2. Subscribe:          provision sub -t 'devices/#' -C 1 {}",
                    tls(&scert, &skey)
                );
            }
            _ => println!(
                "  2. Subscribe with a service (add to the manifest, run again):\n\
                 \x20    [[services]]\n\
                 \x20    name = \"backend\""
            ),
        }
        println!(
            "  3. Publish:            provision pub -t devices/{device_name}/data -m hello {}",
            tls(&cert, &key)
        );
        println!(
            "  Inspect anything:      provision inspect {}",
            cert.display()
        );
        let certs = cert
            .parent()
            .unwrap_or(Path::new("."))
            .display()
            .to_string();
        let ca_dir = rel(ca_dir.clone()).display().to_string();
        let p = "provision";
        println!(
            "  Devices without an identity enroll over MQTT with a claim (docs/lifecycle.md):"
        );
        println!(
            "     {p} issue client ca-service --role ca-service --ca-dir {ca_dir} --out {certs}"
        );
        println!(
            "     {p} issue claim factory --allow-pattern 'sensor-*' --quota 100 --ca-dir {ca_dir} --out {certs}"
        );
        println!("     mosquitto -c {enroll_conf}   # beside the main broker");
        println!(
            "     {p} serve --cert {certs}/ca-service_cert.pem --key {certs}/ca-service.key --ca {} --ca-dir {ca_dir} --enroll-port 8884",
            ca.display()
        );
        println!(
            "     {p} enroll sensor-1 --cert {certs}/factory_cert.pem --key {certs}/factory.key --ca {} --port 8884 --out device",
            ca.display()
        );
        println!(
            "     {p} renew --cert device/sensor-1_cert.pem --key device/sensor-1.key --ca {}",
            ca.display()
        );
    }
    println!("  Run the tests:         cargo xtask test");
    Ok(())
}

/// Where cargo puts the builds (`CARGO_TARGET_DIR` or the workspace's
/// `target/`), from `cargo metadata`.
fn target_dir() -> Result<std::path::PathBuf, String> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("reading cargo metadata: {e}"))?;
    meta["target_directory"]
        .as_str()
        .map(std::path::PathBuf::from)
        .ok_or_else(|| "cargo metadata named no target directory".to_owned())
}
