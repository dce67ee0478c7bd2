//! `mqtt-bench all`: every step in one session, in the order of the report,
//! each measured in a process of its own (this binary again: peak memory
//! and allocator state never carry over from one step to the next), the
//! compared ones `repetitions` times with their medians; writes
//! [`Results`] as JSON.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::de::DeserializeOwned;

use crate::results::{
    Connects, Idle, Ingest, Lifecycle, Plugin, Results, Sizes, Store, Storm, Throughput, machine,
    median_by,
};

/// A step of `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Step {
    /// P-256 and RSA-2048 identities: ours, Python, the openssl CLI.
    Identities,
    /// `provision fleet` in-process.
    Fleet,
    /// `provision fleet` as a process against the Python flow.
    FleetProcess,
    /// One `provision` command on an empty and on a large CA.
    Store,
    /// `mqtt-ingest` against `mosquitto_sub`.
    Ingest,
    /// QoS 0 and 1: ours, Mosquitto's clients, paho.
    Throughput,
    /// mTLS connections per second: ours, Python `ssl`, paho.
    Connects,
    /// Memory per idle connection.
    Idle,
    /// A fleet connecting at once, and after a broker restart.
    Storm,
    /// Enrollment and renewal over MQTT.
    Lifecycle,
    /// The broker plugin against Mosquitto's acl_file.
    Plugin,
    /// Release binaries: sizes as built and stripped, start-up time.
    Binaries,
    /// The CA key in SoftHSM2 against a PEM key.
    Hsm,
}

/// What `all` runs and with which peers.
#[derive(Debug, Args)]
pub(crate) struct AllArgs {
    /// Smaller sizes and one run of each measurement.
    #[arg(long)]
    quick: bool,
    /// Devices in the fleet step (a million: about 12 GB and a few
    /// minutes; not for CI).
    #[arg(long, value_name = "N")]
    fleet_devices: Option<usize>,
    /// Only these steps (comma-separated); the others are left out of the
    /// results and the report.
    #[arg(long, value_delimiter = ',', value_name = "STEP")]
    only: Vec<Step>,
    #[command(flatten)]
    peers: Peers,
    /// Where the results go; the working folders go beside it.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
}

/// The programs the steps compare with or drive.
#[derive(Debug, Args)]
pub(crate) struct Peers {
    /// A Python with `cryptography` and `paho-mqtt`.
    #[arg(long, default_value = "python3")]
    pub(crate) python: PathBuf,
    /// The `openssl` CLI.
    #[arg(long, default_value = "openssl")]
    pub(crate) openssl: PathBuf,
    /// GNU time (a child's peak memory).
    #[arg(long, default_value = "/usr/bin/time")]
    pub(crate) time: PathBuf,
    /// The release `provision` binary [default: beside this one].
    #[arg(long)]
    pub(crate) provision: Option<PathBuf>,
    /// The release `mqtt-ingest` binary [default: beside this one].
    #[arg(long)]
    pub(crate) ingest: Option<PathBuf>,
    /// The SoftHSM2 PKCS#11 module.
    #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
    pub(crate) softhsm_module: PathBuf,
}

impl Peers {
    /// `given`, else the binary `name` in this binary's folder.
    fn sibling(given: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
        if let Some(path) = given {
            return Ok(path.to_owned());
        }
        let me = std::env::current_exe().context("finding mqtt-bench's own path")?;
        Ok(me.with_file_name(name))
    }
}

pub(crate) fn run(args: &AllArgs) -> anyhow::Result<Results> {
    let mut sizes = Sizes::new(args.quick);
    if let Some(n) = args.fleet_devices {
        sizes.fleet_devices = n;
    }
    let wanted = |s: Step| args.only.is_empty() || args.only.contains(&s);
    let out_dir = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut results = Results::new(machine(), args.quick, sizes.clone());
    let reps = sizes.repetitions;
    let peers = &args.peers;

    // Kept until every step is done: see `identities::compare` on ext4.
    let mut scratch = Vec::new();

    // 1. Identities: ours vs the original Python flow and the openssl CLI.
    if wanted(Step::Identities) {
        let ids = scratch_dir(&out_dir, "identities")?;
        let (p256, rsa) = crate::identities::compare(&sizes, peers, &ids)?;
        results.identities_p256 = Some(p256);
        results.identities_rsa2048 = Some(rsa);
        scratch.push(ids);
    }

    // 2. A fleet of P-256 devices.
    if wanted(Step::Fleet) {
        let dir = scratch_dir(&out_dir, "fleet")?;
        let manifest = dir.join("fleet.toml");
        std::fs::write(&manifest, crate::fleet::manifest(sizes.fleet_devices))
            .with_context(|| format!("writing {}", manifest.display()))?;
        results.fleet = Some(step(&["fleet".into(), manifest.into_os_string()])?);
        scratch.push(dir);
    }

    // 2a. The same as a process, to its exit, against the Python flow.
    if wanted(Step::FleetProcess) {
        let dir = scratch_dir(&out_dir, "fleet-process")?;
        let provision = Peers::sibling(peers.provision.as_deref(), "provision")?;
        results.fleet_process = Some(crate::fleet::compare_processes(
            &provision,
            &peers.python,
            sizes.fleet_process_devices,
            reps,
            &dir,
        )?);
        scratch.push(dir);
    }

    // 2b. One command on a CA with many identities against an empty CA's.
    if wanted(Step::Store) {
        let provision = Peers::sibling(peers.provision.as_deref(), "provision")?;
        results.store = Some(step::<Store>(&[
            "store".into(),
            provision.into_os_string(),
            peers.time.clone().into_os_string(),
            sizes.store_identities.to_string().into(),
        ])?);
    }

    // 3. Ingest against mosquitto_sub on the same QoS 1 stream.
    if wanted(Step::Ingest) {
        // Until the figure is stable: at least `reps` runs, and more (up
        // to INGEST_MAX_RUNS) until the last two agree within 10 %.
        let ingest = Peers::sibling(peers.ingest.as_deref(), "mqtt-ingest")?;
        let mut runs: Vec<Ingest> = Vec::new();
        while runs.len() < reps || (!last_two_agree(&runs) && runs.len() < INGEST_MAX_RUNS) {
            runs.push(step::<Ingest>(&[
                "ingest".into(),
                ingest.clone().into_os_string(),
                sizes.ingest_messages.to_string().into(),
            ])?);
        }
        let ratios: Vec<f64> = runs.iter().map(|r| r.ratio).collect();
        results.ingest = median_by(runs, |r| r.ratio).map(|mut median| {
            median.runs = Some(ratios);
            median
        });
    }

    // 4. MQTT over mTLS, publisher to subscriber through one broker.
    if wanted(Step::Throughput) {
        for qos in [0u8, 1] {
            let runs = (0..reps)
                .map(|_| {
                    step::<Throughput>(&[
                        "throughput".into(),
                        qos.to_string().into(),
                        sizes.throughput_messages.to_string().into(),
                        "--python".into(),
                        peers.python.clone().into_os_string(),
                    ])
                })
                .collect::<anyhow::Result<_>>()?;
            results.throughput.extend(median_by(runs, |r| r.ratio));
        }
    }

    // 5. mTLS connections per second, and memory per idle connection. The
    // broker's side of each handshake is most of the work and is the same
    // for every client, so single runs swing: the median of several.
    if wanted(Step::Connects) {
        let runs = (0..reps)
            .map(|_| {
                step::<Connects>(&[
                    "connects".into(),
                    sizes.connects.to_string().into(),
                    "--python".into(),
                    peers.python.clone().into_os_string(),
                ])
            })
            .collect::<anyhow::Result<_>>()?;
        results.connects = median_by(runs, |r| r.ratio_vs_python);
    }
    if wanted(Step::Idle) {
        results.idle = Some(step::<Idle>(&[
            "idle".into(),
            sizes.idle_connections.to_string().into(),
        ])?);
    }

    // 6. A fleet connecting at once, and coming back after a broker restart.
    if wanted(Step::Storm) {
        results.storm = Some(step::<Storm>(&[
            "storm".into(),
            sizes.storm_devices.to_string().into(),
        ])?);
    }

    // 7. Enrollment and renewal over MQTT: a fleet enrolls at once from
    // one claim, then renews at once while publishing.
    if wanted(Step::Lifecycle) {
        results.lifecycle = Some(step::<Lifecycle>(&[
            "lifecycle".into(),
            sizes.lifecycle_devices.to_string().into(),
        ])?);
    }

    // 8. The broker plugin against Mosquitto's acl_file (medians by the
    // throughput ratio).
    if wanted(Step::Plugin) {
        let runs = (0..reps)
            .map(|_| {
                step::<Plugin>(&[
                    "plugin".into(),
                    sizes.plugin_messages.to_string().into(),
                    sizes.plugin_crl_entries.to_string().into(),
                ])
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        results.plugin = median_by(runs, |r| r.throughput_ratio);
    }

    // 9. What ships: sizes and start-up.
    if wanted(Step::Binaries) {
        let me = std::env::current_exe().context("finding mqtt-bench's own path")?;
        let dir = me.parent().context("mqtt-bench's folder")?;
        results.binaries = Some(step::<crate::results::Binaries>(&[
            "binaries".into(),
            dir.as_os_str().to_owned(),
        ])?);
    }

    // 10. The CA key in a token against a PEM key.
    if wanted(Step::Hsm) {
        let provision = Peers::sibling(peers.provision.as_deref(), "provision")?;
        results.hsm = Some(step::<crate::results::Hsm>(&[
            "hsm".into(),
            provision.into_os_string(),
            peers.softhsm_module.clone().into_os_string(),
            sizes.hsm_identities.to_string().into(),
        ])?);
    }

    for dir in scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    results.write(&args.out)?;
    Ok(results)
}

/// Runs of the ingest step at most, looking for two that agree.
const INGEST_MAX_RUNS: usize = 8;

/// Whether the last two ingest runs' ratios are within 10 % of each other.
fn last_two_agree(runs: &[Ingest]) -> bool {
    match runs {
        [.., a, b] => (a.ratio - b.ratio).abs() <= 0.1 * a.ratio.min(b.ratio),
        _ => false,
    }
}

/// Runs one step in a process of its own (this binary with `args`) and
/// reads the result it prints.
pub(crate) fn step<T: DeserializeOwned>(args: &[OsString]) -> anyhow::Result<T> {
    let me = std::env::current_exe().context("finding mqtt-bench's own path")?;
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("mqtt-bench: {shown}");
    let out = Command::new(&me)
        .args(args)
        .output()
        .with_context(|| format!("running {}", me.display()))?;
    if !out.status.success() {
        bail!(
            "mqtt-bench {shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "reading what mqtt-bench {shown} printed: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A fresh folder `NAME-PID` under `base`.
fn scratch_dir(base: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ratio: f64) -> Ingest {
        Ingest {
            count: 1,
            mosquitto_sub_per_second: 1.0,
            ingest_stored_per_second: ratio,
            ratio,
            batches: None,
            mean_batch: None,
            mean_commit_ms: None,
            runs: None,
        }
    }

    #[test]
    fn ingest_runs_agree_only_within_a_tenth() {
        assert!(!last_two_agree(&[]));
        assert!(!last_two_agree(&[run(1.0)]));
        assert!(last_two_agree(&[run(0.5), run(0.95), run(1.0)]));
        assert!(last_two_agree(&[run(1.0), run(1.09)]));
        assert!(!last_two_agree(&[run(1.0), run(1.11)]));
        assert!(!last_two_agree(&[run(0.95), run(1.0), run(0.8)]));
    }
}
