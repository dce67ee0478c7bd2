//! `cargo xtask bench [--quick]`: release builds, side-by-side measurements
//! in one run, `target/bench/results.json` and `docs/benchmarks.md`.
//!
//! Compared in the same run: identity issuance (ours on one and all cores,
//! the original Python flow, an `openssl` CLI loop), a fleet, MQTT
//! throughput (ours, Mosquitto's clients, paho-mqtt), mTLS connections
//! (ours, Python `ssl`, paho), memory per idle connection, and ingest
//! against `mosquitto_sub`. The Python side runs in a venv under `target/`.
//! `mqtt-bench chart` draws every target into `docs/benchmarks.svg`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::{cargo, project_root, sh, tools};

struct Sizes {
    throughput_messages: usize,
    identities: usize,
    openssl_identities: usize,
    fleet_devices: usize,
    ingest_messages: usize,
    repetitions: usize,
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            throughput_messages: 10_000,
            identities: 300,
            openssl_identities: 5,
            fleet_devices: 1_000,
            ingest_messages: 2_000,
            repetitions: 1,
        }
    } else {
        Sizes {
            throughput_messages: 50_000,
            identities: 3_000,
            openssl_identities: 30,
            fleet_devices: 10_000,
            ingest_messages: 20_000,
            repetitions: 3,
        }
    };
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "mqtt-bench",
        "-p",
        "mqtt-ingest",
        "-p",
        "provision",
    ]))?;
    tools::mosquitto()?;
    let openssl = tools::openssl()?;
    let root = project_root();
    let bench = root.join("target/release/mqtt-bench");
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("creating {}: {e}", out_dir.display()))?;

    let mut results = Vec::new();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rate = |args: &[String]| -> Result<f64, String> {
        let v = run_json(&bench, args)?;
        v.split("\"per_second\":")
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no per_second in {v}"))
    };

    // 1. Identities: ours vs the original Python flow and the openssl CLI.
    // Every run writes into a folder of its own under `ids`, kept until all
    // runs are done: deleting thousands of files just before a run makes
    // ext4 skip the freed inodes one by one (`recently_deleted`), and that,
    // not the work measured, would then set the pace. Each timed run starts
    // after a `sync`, with no other run's writes pending, and the sides take
    // turns so that the machine's noise falls on both alike.
    let ids = tempdir(&out_dir, "identities")?;
    let python = python_env()?;
    let n = sizes.identities.to_string();
    let mut run_no = 0;
    let mut fresh = || {
        run_no += 1;
        flush_disks();
        ids.join(format!("run-{run_no}"))
    };
    let (mut ours_1, mut ours_all, mut openssl_rate, mut py) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..sizes.repetitions {
        ours_1.push(rate(&identities_args("p256", &n, "1", &fresh()))?);
        py.push(python_identities(
            &python,
            "p256",
            sizes.identities,
            &fresh(),
        )?);
        ours_all.push(rate(&identities_args("p256", &n, "0", &fresh()))?);
        openssl_rate.push(openssl_identities(
            &openssl,
            sizes.openssl_identities,
            &fresh(),
        )?);
    }
    let (o1, oa, os, py) = (
        median(ours_1),
        median(ours_all),
        median(openssl_rate),
        median(py),
    );
    results.push(format!(
        "{{\"what\":\"identities_p256\",\"ours_one_core_per_s\":{o1:.1},\"ours_all_cores_per_s\":{oa:.1},\"python_cryptography_per_s\":{py:.1},\"openssl_cli_per_s\":{os:.2},\"ratio_vs_python\":{:.2},\"ratio_vs_openssl\":{:.1}}}",
        oa / py,
        oa / os
    ));
    let rsa_n = if quick { "10" } else { "40" };
    let rsa = rate(&identities_args("rsa2048", rsa_n, "0", &fresh()))?;
    let rsa_py = python_identities(&python, "rsa2048", rsa_n.parse().unwrap_or(10), &fresh())?;
    results.push(format!(
        "{{\"what\":\"identities_rsa2048\",\"ours_all_cores_per_s\":{rsa:.1},\"python_cryptography_per_s\":{rsa_py:.1},\"ratio_vs_python\":{:.2}}}",
        rsa / rsa_py
    ));
    let _ = std::fs::remove_dir_all(&ids);

    // 2. A fleet of P-256 devices.
    let fleet_dir = tempdir(&out_dir, "fleet")?;
    let manifest = fleet_dir.join("fleet.toml");
    std::fs::write(
        &manifest,
        format!("[ca]\ndir = \"root_cert\"\ncommon_name = \"Bench Fleet\"\n[[devices]]\nprefix = \"sensor-\"\ncount = {}\n", sizes.fleet_devices),
    )
    .map_err(|e| format!("writing {}: {e}", manifest.display()))?;
    let fleet = run_json(&bench, &["fleet".into(), manifest.display().to_string()])?;
    let _ = std::fs::remove_dir_all(&fleet_dir);
    results.push(fleet.clone());

    // 3. Ingest against mosquitto_sub on the same QoS 1 stream.
    let ingest_bin = root.join("target/release/mqtt-ingest");
    let ingest: Vec<String> = (0..sizes.repetitions)
        .map(|_| {
            run_json(
                &bench,
                &[
                    "ingest".into(),
                    ingest_bin.display().to_string(),
                    sizes.ingest_messages.to_string(),
                ],
            )
        })
        .collect::<Result<_, _>>()?;
    let ratios: Vec<f64> = ingest
        .iter()
        .filter_map(|v| {
            v.split("\"ratio\":")
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .and_then(|n| n.parse().ok())
        })
        .collect();
    let median_ratio = median(ratios);
    let median_run = ingest
        .iter()
        .find(|v| v.contains(&format!("\"ratio\":{median_ratio}")))
        .cloned()
        .unwrap_or_else(|| ingest[0].clone());
    results.push(median_run.clone());

    // 4. MQTT over mTLS, publisher to subscriber through one broker.
    let paho_script = root.join("xtask/bench/python_paho.py");
    let mut throughput = Vec::new();
    for qos in ["0", "1"] {
        let runs: Vec<String> = (0..sizes.repetitions)
            .map(|_| {
                run_json(
                    &bench,
                    &[
                        "throughput".into(),
                        qos.into(),
                        sizes.throughput_messages.to_string(),
                        python.display().to_string(),
                        paho_script.display().to_string(),
                    ],
                )
            })
            .collect::<Result<_, _>>()?;
        let mut by_ratio: Vec<(f64, String)> = runs
            .into_iter()
            .map(|r| (field(&r, "ratio").parse().unwrap_or(0.0), r))
            .collect();
        by_ratio.sort_by(|a, b| a.0.total_cmp(&b.0));
        let median_run = by_ratio[by_ratio.len() / 2].1.clone();
        results.push(median_run.clone());
        throughput.push(median_run);
    }

    // 5. mTLS connections per second, and memory per idle connection.
    let connects_script = root.join("xtask/bench/python_connects.py");
    let connects = run_json(
        &bench,
        &[
            "connects".into(),
            if quick { "100" } else { "500" }.into(),
            python.display().to_string(),
            connects_script.display().to_string(),
            paho_script.display().to_string(),
        ],
    )?;
    results.push(connects.clone());
    let idle = run_json(
        &bench,
        &["idle".into(), if quick { "200" } else { "1000" }.into()],
    )?;
    results.push(idle.clone());

    let json = format!("[\n  {}\n]\n", results.join(",\n  "));
    let results_path = out_dir.join("results.json");
    std::fs::write(&results_path, &json)
        .map_err(|e| format!("writing {}: {e}", results_path.display()))?;
    let chart_path = root.join("docs/benchmarks.svg");
    run_json(
        &bench,
        &[
            "chart".into(),
            results_path.display().to_string(),
            chart_path.display().to_string(),
        ],
    )?;
    let doc = render_markdown(
        (&connects, &idle),
        &throughput,
        quick,
        &sizes,
        (o1, oa, os, py),
        (rsa, rsa_py),
        &fleet,
        &median_run,
    );
    let doc_path = root.join("docs/benchmarks.md");
    std::fs::write(&doc_path, &doc).map_err(|e| format!("writing {}: {e}", doc_path.display()))?;
    println!("{doc}");
    println!(
        "wrote {}, {} and {}",
        results_path.display(),
        doc_path.display(),
        chart_path.display()
    );
    Ok(())
}

/// A virtualenv under target/ with the original design's dependencies.
fn python_env() -> Result<std::path::PathBuf, String> {
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

/// The Python flow's rate (one process, one core, as the original), writing
/// into `dir`.
fn python_identities(
    python: &Path,
    key_type: &str,
    count: usize,
    dir: &Path,
) -> Result<f64, String> {
    let script = project_root().join("xtask/bench/python_identities.py");
    let out = Command::new(python)
        .arg(&script)
        .args([key_type, &count.to_string()])
        .arg(dir)
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "the Python flow failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("\"per_second\": ")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("no per_second in {text}"))
}

/// `mqtt-bench identities` arguments.
fn identities_args(key_type: &str, count: &str, threads: &str, dir: &Path) -> Vec<String> {
    vec![
        "identities".into(),
        key_type.into(),
        count.into(),
        threads.into(),
        dir.display().to_string(),
    ]
}

/// Waits until the disks have written what earlier runs left pending, so
/// that a timed run does not pay for them.
fn flush_disks() {
    let _ = Command::new("sync").status();
}

fn run_json(bin: &Path, args: &[String]) -> Result<String, String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "mqtt-bench {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn tempdir(base: &Path, name: &str) -> Result<std::path::PathBuf, String> {
    let dir = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The same work as ours, the way shell scripts do it: one `openssl`
/// process per step (key, CSR, CSR check, signature), in `dir`.
fn openssl_identities(openssl: &Path, count: usize, dir: &Path) -> Result<f64, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let run = |args: &[&str]| -> Result<(), String> {
        let status = Command::new(openssl)
            .current_dir(dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("openssl: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("openssl {args:?} failed"))
        }
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        "/CN=Bench Root",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ])?;
    let started = Instant::now();
    for i in 0..count {
        let key = format!("dev-{i}.key");
        let csr = format!("dev-{i}_csr.pem");
        let cert = format!("dev-{i}_cert.pem");
        run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ])?;
        run(&[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN=dev-{i}"),
            "-out",
            &csr,
        ])?;
        run(&["req", "-verify", "-noout", "-in", &csr])?;
        run(&[
            "x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "365",
            "-out", &cert,
        ])?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem} memory")
}

fn field(json: &str, name: &str) -> String {
    json.split(&format!("\"{name}\":"))
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|n| n.parse::<f64>().ok())
        .map_or_else(|| "?".into(), |v| format!("{v:.2}"))
}

#[allow(clippy::too_many_arguments)] // one call site; each argument is one section
fn render_markdown(
    (connects, idle): (&str, &str),
    throughput: &[String],
    quick: bool,
    sizes: &Sizes,
    ids: (f64, f64, f64, f64),
    rsa: (f64, f64),
    fleet: &str,
    ingest: &str,
) -> String {
    let (o1, oa, os, py) = ids;
    let (rsa, rsa_py) = rsa;
    format!(
        "# Benchmarks\n\n\
         Generated by `cargo xtask bench{q}` (release builds); do not edit by hand.\n\
         Machine: {machine}. Figures are medians of {reps} run(s) in one session; the\n\
         machine is shared and noisy, so read the ratios, not single absolute times.\n\n\
         ![every target: the ratio measured (bar) against the target (tick)](benchmarks.svg)\n\n\
         ## Issuing identities (P-256: key + CSR + CSR check + signature + 3 files written)\n\n\
         | who | identities/s |\n| --- | --- |\n\
         | ours, one core | {o1:.0} |\n| ours, all cores | {oa:.0} |\n\
         | the original Python flow (`cryptography`, one process) | {py:.0} |\n\
         | `openssl` CLI, one process per step | {os:.1} |\n\
         | **ratio ours (all cores) / Python** | **{ratio_py:.1}×** |\n\
         | **ratio ours (all cores) / openssl** | **{ratio:.0}×** |\n\n\
         RSA-2048 identities: ours on all cores {rsa:.1}/s, Python {rsa_py:.1}/s\n\
         ({ratio_rsa:.2}×; key generation, a random prime search, bounds both).\n\n\
         Our files are written as `provision fleet` writes them: straight to their final\n\
         name and mode, with one `sync` at the end of the batch (a single `provision issue`\n\
         writes through a temp file, fsync and rename instead). The Python flow writes its\n\
         files without syncing. On this machine creating the 3 files, not the cryptography,\n\
         bounds both (in memory ours does about 8,800 P-256 identities/s on one core).\n\n\
         ## A fleet\n\n\
         `provision fleet` for {devices} P-256 devices, in-process: {fs} s, peak memory {fm} MB.\n\n\
         ## Ingest (QoS 1, 64-byte payloads, SQLite with synchronous=FULL)\n\n\
         | who | messages/s |\n| --- | --- |\n\
         | `mosquitto_sub` receiving the stream | {ms} |\n\
         | `mqtt-ingest` storing it, acknowledging after each commit | {is} |\n\
         | **ratio** | **{ir}** |\n\n\
         ## MQTT over mTLS, publisher → subscriber (64-byte payloads, one local Mosquitto)\n\n\
         | QoS | ours (mqtt-tls → mqtt-tls) | `mosquitto_pub -l` → `mosquitto_sub` | paho-mqtt → paho-mqtt | ours / Mosquitto's clients |\n\
         | --- | --- | --- | --- | --- |\n{rows}\n\
         ## mTLS connections (TLS handshake with a client certificate, CONNECT, CONNACK, DISCONNECT)\n\n\
         | who | connections/s |\n| --- | --- |\n\
         | ours, one after another | {cs} |\n\
         | ours, 100 at once, each with its own certificate | {cc} |\n\
         | Python `ssl`, one after another | {cp} |\n\
         | paho-mqtt, one after another | {cpaho} |\n\
         | **ratio ours / Python (sequential)** | **{cr}×** |\n\n\
         Memory per idle mTLS connection, {ic} clients with their own certificates in one\n\
         process: {ik} KB.\n\n\
         Not measured yet: paho's memory per connection.\n",
        cs = field(connects, "ours_sequential_per_second"),
        cc = field(connects, "ours_100_concurrent_per_second"),
        cp = field(connects, "python_ssl_per_second"),
        cpaho = field(connects, "paho_per_second"),
        cr = field(connects, "ratio_vs_python"),
        ic = field(idle, "count").trim_end_matches(".00"),
        ik = field(idle, "kb_per_connection"),
        rows = throughput
            .iter()
            .zip(["0", "1"])
            .map(|(t, qos)| format!(
                "| {} | {} msg/s | {} msg/s | {} msg/s | {}× |\n",
                qos,
                field(t, "ours_per_second"),
                field(t, "mosquitto_clients_per_second"),
                field(t, "paho_per_second"),
                field(t, "ratio")
            ))
            .collect::<String>(),
        q = if quick { " --quick" } else { "" },
        machine = machine(),
        reps = sizes.repetitions,
        ratio = oa / os,
        ratio_py = oa / py,
        ratio_rsa = rsa / rsa_py,
        devices = sizes.fleet_devices,
        fs = field(fleet, "seconds"),
        fm = field(fleet, "peak_rss_mb"),
        ms = field(ingest, "mosquitto_sub_per_second"),
        is = field(ingest, "ingest_stored_per_second"),
        ir = field(ingest, "ratio"),
    )
}
