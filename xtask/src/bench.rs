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
    /// Identities in the CA whose per-command cost is compared with an
    /// empty CA's.
    store_identities: usize,
    throughput_messages: usize,
    identities: usize,
    openssl_identities: usize,
    fleet_devices: usize,
    ingest_messages: usize,
    repetitions: usize,
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    // `--fleet-devices N`: the fleet step's size (a million: about 12 GB
    // and a few minutes; not for CI).
    let fleet_devices = match args.iter().position(|a| a == "--fleet-devices") {
        Some(i) => Some(
            args.get(i + 1)
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or("--fleet-devices takes a number")?,
        ),
        None => None,
    };
    let mut sizes = if quick {
        Sizes {
            store_identities: 100_000,
            throughput_messages: 10_000,
            identities: 300,
            openssl_identities: 5,
            fleet_devices: 1_000,
            ingest_messages: 2_000,
            repetitions: 1,
        }
    } else {
        Sizes {
            store_identities: 1_000_000,
            throughput_messages: 50_000,
            identities: 3_000,
            openssl_identities: 30,
            fleet_devices: 10_000,
            ingest_messages: 20_000,
            repetitions: 3,
        }
    };
    if let Some(n) = fleet_devices {
        sizes.fleet_devices = n;
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
    let rate = |args: &[String]| number(&run_json(&bench, args)?, "per_second");

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
        ours_all.push(run_json(
            &bench,
            &identities_args("p256", &n, "0", &fresh()),
        )?);
        openssl_rate.push(openssl_identities(
            &openssl,
            sizes.openssl_identities,
            &fresh(),
        )?);
    }
    // Our rate includes the final sync (the files are on disk); the Python
    // flow never syncs. `unflushed` is ours up to the sync: like for like.
    let all = median_run(ours_all, "per_second");
    let oa = number(&all, "per_second")?;
    let unflushed =
        number(&all, "count")? / (number(&all, "seconds")? - number(&all, "flush_seconds")?);
    let (o1, os, py) = (median(ours_1), median(openssl_rate), median(py));
    results.push(format!(
        "{{\"what\":\"identities_p256\",\"ours_one_core_per_s\":{o1:.1},\"ours_all_cores_per_s\":{oa:.1},\"ours_all_cores_unflushed_per_s\":{unflushed:.1},\"python_cryptography_per_s\":{py:.1},\"openssl_cli_per_s\":{os:.2},\"ratio_vs_python\":{:.2},\"ratio_vs_python_unflushed\":{:.2},\"ratio_vs_openssl\":{:.1}}}",
        oa / py,
        unflushed / py,
        oa / os
    ));
    // RSA key generation is a random prime search: single runs swing, so
    // the sides take turns and each reports its median.
    let rsa_n: usize = if quick { 10 } else { 40 };
    let (mut rsa, mut rsa_py) = (Vec::new(), Vec::new());
    for _ in 0..sizes.repetitions {
        rsa.push(rate(&identities_args(
            "rsa2048",
            &rsa_n.to_string(),
            "0",
            &fresh(),
        ))?);
        rsa_py.push(python_identities(&python, "rsa2048", rsa_n, &fresh())?);
    }
    let (rsa, rsa_py) = (median(rsa), median(rsa_py));
    results.push(format!(
        "{{\"what\":\"identities_rsa2048\",\"ours_all_cores_per_s\":{rsa:.1},\"python_cryptography_per_s\":{rsa_py:.1},\"ratio_vs_python\":{:.2}}}",
        rsa / rsa_py
    ));

    // 2. A fleet of P-256 devices.
    let fleet_dir = tempdir(&out_dir, "fleet")?;
    let manifest = fleet_dir.join("fleet.toml");
    std::fs::write(
        &manifest,
        format!("[ca]\ndir = \"root_cert\"\ncommon_name = \"Bench Fleet\"\n[[devices]]\nprefix = \"sensor-\"\ncount = {}\n", sizes.fleet_devices),
    )
    .map_err(|e| format!("writing {}: {e}", manifest.display()))?;
    let fleet = run_json(&bench, &["fleet".into(), manifest.display().to_string()])?;
    results.push(fleet.clone());

    // 2b. One command on a CA with many identities against an empty CA's.
    let store = run_json(
        &bench,
        &[
            "store".into(),
            root.join("target/release/provision").display().to_string(),
            tools::gnu_time()?.display().to_string(),
            sizes.store_identities.to_string(),
        ],
    )?;
    results.push(store.clone());

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
    let ingest = median_run(ingest, "ratio");
    results.push(ingest.clone());

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
        let run = median_run(runs, "ratio");
        results.push(run.clone());
        throughput.push(run);
    }

    // 5. mTLS connections per second, and memory per idle connection.
    let connects_script = root.join("xtask/bench/python_connects.py");
    // The broker's side of each handshake is most of the work and is the
    // same for every client, so single runs swing: the median of several.
    let connects: Vec<String> = (0..sizes.repetitions)
        .map(|_| {
            run_json(
                &bench,
                &[
                    "connects".into(),
                    if quick { "100" } else { "500" }.into(),
                    python.display().to_string(),
                    connects_script.display().to_string(),
                    paho_script.display().to_string(),
                ],
            )
        })
        .collect::<Result<_, _>>()?;
    let connects = median_run(connects, "ratio_vs_python");
    results.push(connects.clone());
    let idle = run_json(
        &bench,
        &["idle".into(), if quick { "200" } else { "1000" }.into()],
    )?;
    results.push(idle.clone());
    // 6. A fleet connecting at once, and coming back after a broker restart.
    let storm = run_json(
        &bench,
        &["storm".into(), if quick { "200" } else { "1000" }.into()],
    )?;
    results.push(storm.clone());
    // 7. Enrollment and renewal over MQTT: a fleet enrolls at once from
    // one claim, then renews at once while publishing.
    let lifecycle = run_json(
        &bench,
        &[
            "lifecycle".into(),
            if quick { "200" } else { "1000" }.into(),
        ],
    )?;
    results.push(lifecycle.clone());

    // Deleted only now: see the identities' comment on ext4.
    for dir in [&ids, &fleet_dir] {
        let _ = std::fs::remove_dir_all(dir);
    }
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
        (&connects, &idle, &storm),
        &throughput,
        quick,
        &sizes,
        (o1, oa, unflushed, os, py),
        (rsa, rsa_py),
        &fleet,
        &store,
        &ingest,
    );
    let doc = format!("{doc}{}", render_lifecycle(&lifecycle));
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

/// The report's section on enrollment and renewal over MQTT.
fn render_lifecycle(lifecycle: &str) -> String {
    format!(
        "\n## Enrollment and renewal over MQTT\n\n\
         {n} devices enroll at once from one claim certificate through the enrollment\n\
         Mosquitto and `provision serve` (in-process, SQLite inventory): all enrolled in\n\
         {es} s ({eps} enrollments/s), and all connected to the main Mosquitto with their\n\
         new identities {ecs} s after the start (target: 8 s; the {hs} mTLS handshakes\n\
         alone take about 4.2 s at Mosquitto's ~475/s on this machine). Then all {n}\n\
         renew at once while each publishes a QoS 1 message every 200 ms: {rn} renewed\n\
         in {rs} s (target: 10 s), {p} messages acknowledged, {r} received by a\n\
         service, {l} lost (target: 0).\n",
        n = field(lifecycle, "count").trim_end_matches(".00"),
        es = field(lifecycle, "enroll_seconds"),
        eps = field(lifecycle, "enrollments_per_second"),
        ecs = field(lifecycle, "enroll_and_connect_seconds"),
        hs = number(lifecycle, "count").map_or(0.0, |n| 2.0 * n),
        rn = field(lifecycle, "renewed").trim_end_matches(".00"),
        rs = field(lifecycle, "renew_seconds"),
        p = field(lifecycle, "published").trim_end_matches(".00"),
        r = field(lifecycle, "received").trim_end_matches(".00"),
        l = field(lifecycle, "lost").trim_end_matches(".00"),
    )
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
    number(&String::from_utf8_lossy(&out.stdout), "per_second")
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

/// The run whose `name` field is the median of `runs`.
fn median_run(runs: Vec<String>, name: &str) -> String {
    let mut by: Vec<(f64, String)> = runs
        .into_iter()
        .map(|r| (field(&r, name).parse().unwrap_or(0.0), r))
        .collect();
    by.sort_by(|a, b| a.0.total_cmp(&b.0));
    by.swap_remove(by.len() / 2).1
}

/// The table rows of `mqtt-bench store`'s operations.
fn store_rows(store: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(store) else {
        return String::new();
    };
    value["ops"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|op| {
            let n = |k: &str| op[k].as_f64().unwrap_or(f64::NAN);
            format!(
                "| `provision {}` | {:.1} ms | {:.1} ms | {:.2}× | {:.1} MB |\n",
                op["op"].as_str().unwrap_or_default(),
                n("empty_ms"),
                n("full_ms"),
                n("ratio"),
                n("full_peak_rss_mb").max(n("empty_peak_rss_mb")),
            )
        })
        .collect()
}

/// A number field of one of mqtt-bench's JSON objects (flat, so a split
/// does; xtask stays free of dependencies).
fn number(json: &str, name: &str) -> Result<f64, String> {
    json.split(&format!("\"{name}\":"))
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|n| n.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("no number \"{name}\" in {json}"))
}

/// [`number`] for the report: two decimals, `?` when missing.
fn field(json: &str, name: &str) -> String {
    number(json, name).map_or_else(|_| "?".into(), |v| format!("{v:.2}"))
}

#[allow(clippy::too_many_arguments)] // one call site; each argument is one section
fn render_markdown(
    (connects, idle, storm): (&str, &str, &str),
    throughput: &[String],
    quick: bool,
    sizes: &Sizes,
    ids: (f64, f64, f64, f64, f64),
    rsa: (f64, f64),
    fleet: &str,
    store: &str,
    ingest: &str,
) -> String {
    let (o1, oa, unflushed, os, py) = ids;
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
         | ours, all cores, up to the final sync | {unflushed:.0} |\n\
         | the original Python flow (`cryptography`, one process) | {py:.0} |\n\
         | `openssl` CLI, one process per step | {os:.1} |\n\
         | **ratio ours (all cores) / Python** | **{ratio_py:.1}×** |\n\
         | **ratio like for like, neither synced / Python** | **{ratio_unflushed:.1}×** |\n\
         | **ratio ours (all cores) / openssl** | **{ratio:.0}×** |\n\n\
         RSA-2048 identities (medians): ours on all cores {rsa:.1}/s, Python {rsa_py:.1}/s\n\
         ({ratio_rsa:.2}×; key generation, a random prime search, bounds both: per key\n\
         aws-lc-rs takes longer than the OpenSSL under Python's `cryptography`, so the\n\
         ratio comes from using both cores).\n\n\
         Our files are written as `provision fleet` writes them: the three files created\n\
         first, all or none, with their final mode, then one `sync` at the end of the batch\n\
         (a single `provision issue` writes through a temp file, fsync and rename instead).\n\
         The Python flow writes its files and never syncs, so the like-for-like row stops\n\
         our clock before the sync. Each run writes into a fresh folder after a `sync`, ours\n\
         and Python's taking turns, and no run's files are deleted until all are done:\n\
         deleting thousands of files just before a run makes ext4's inode allocator skip the\n\
         freed inodes one by one (`recently_deleted` was 86% of a profile taken that way;\n\
         inodes freed in the last five minutes count, so a build or test run just before\n\
         the bench still adds noise, to both sides alike).\n\
         What bounds ours is the kernel: creating and writing a file on ext4 is about 30 µs,\n\
         90 µs an identity, and creations in one folder are serialised on the folder's lock,\n\
         while the cryptography is about 90 µs an identity and runs on every core (perf:\n\
         half the cycles in `openat`/`write`, a tenth in the P-256 field arithmetic).\n\n\
         ## A fleet\n\n\
         `provision fleet` for {devices} P-256 devices, in-process: {fs} s, peak memory {fm} MB.\n\
         Run again, changing nothing (every identity's files read and checked): {frs} s.\n\n\
         ## One command on a large CA\n\n\
         The `provision` CLI (release build, a process per command, median of 5) on an\n\
         empty CA and on one whose inventory holds {store_n} identities (SQLite, indexed by\n\
         serial and name; one in a thousand revoked, so its CRL lists {store_revoked}).\n\
         Target: within 2× and under 50 MB.\n\n\
         | command | empty CA | {store_n} identities | ratio | peak memory |\n| --- | --- | --- | --- | --- |\n\
         {store_rows}\n\
         Filling the inventory with {store_n} records took {store_fill} s ({store_db} MB).\n\n\
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
         The broker's half of each handshake is most of the work in a sequential connect\n\
         (perf: Mosquitto 54% of the cycles, our client 22%, Python 23%), and it is the same\n\
         for every client, which caps this ratio; the figure is the median of the runs.\n\n\
         Memory per idle mTLS connection, {ic} clients with their own certificates in one\n\
         process: {ik} KB (target: 30 KB; 52.9 KB with rumqttc 0.25.1, 63.6 KB before\n\
         that). Our fork of rumqttc (`crates/rumqttc-mtls`) holds no fixed tables (rumqttc\n\
         0.25.1: a 65,536-bit id set, an outgoing table sized by `max_inflight`, 8 KiB read\n\
         and write buffers, ~31 KB), the handshake future is boxed, the dispatch channel\n\
         holds boxes and the TLS session store keeps one ticket (OpenSSL sends two, each\n\
         with a copy of the broker's chain). What stays (heaptrack): rustls' 4 KiB\n\
         record buffer, the connection's TLS state and keys, the connection task, the\n\
         client's own `ClientConfig` (its certificate and key), and malloc's overhead.\n\n\
         ## A fleet connecting at once\n\n\
         {sc} devices from `provision fleet`, each with its own certificate, connect over\n\
         mTLS to one Mosquitto at once from one process: all connected in {ss} s ({scps}\n\
         connections/s), {skb} KB each. After a broker restart all {sc} were connected\n\
         again {srs} s later (reconnect backoff with full jitter; the spread of the\n\
         attempts is checked by `crates/provision/tests/storm.rs`).\n\n\
         Not measured: paho's memory per connection.\n",
        sc = field(storm, "count").trim_end_matches(".00"),
        ss = field(storm, "seconds_until_all_connected"),
        scps = field(storm, "connects_per_second"),
        skb = field(storm, "kb_per_connection"),
        srs = field(storm, "seconds_until_all_reconnected"),
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
        ratio_unflushed = unflushed / py,
        ratio_rsa = rsa / rsa_py,
        devices = sizes.fleet_devices,
        fs = field(fleet, "seconds"),
        frs = field(fleet, "rerun_seconds"),
        store_n = field(store, "identities").trim_end_matches(".00"),
        store_revoked = (number(store, "identities").unwrap_or(0.0) / 1000.0).floor(),
        store_fill = field(store, "populate_seconds"),
        store_db = field(store, "inventory_db_mb"),
        store_rows = store_rows(store),
        fm = field(fleet, "peak_rss_mb"),
        ms = field(ingest, "mosquitto_sub_per_second"),
        is = field(ingest, "ingest_stored_per_second"),
        ir = field(ingest, "ratio"),
    )
}
