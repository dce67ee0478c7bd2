//! The typed results: one struct per step, as each subcommand prints it
//! (one JSON object on standard output), and [`Results`], what `all`
//! writes to `target/bench/results.json` and `report` reads back.
//!
//! Field names are those of the JSON the bench has always written, so a
//! reader of `results.json` finds the same keys.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Everything one `mqtt-bench all` run measured. A step left out with
/// `all --only` is `None` (or empty); the report and the chart skip it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Results {
    /// CPU, cores and memory of the machine, from `/proc`.
    pub(crate) machine: String,
    /// `--quick` sizes.
    pub(crate) quick: bool,
    /// How much of each step was run.
    pub(crate) sizes: Sizes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) identities_p256: Option<IdentitiesP256>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) identities_rsa2048: Option<IdentitiesRsa>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fleet: Option<Fleet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fleet_process: Option<FleetProcess>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) store: Option<Store>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ingest: Option<Ingest>,
    /// QoS 0, then QoS 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) throughput: Vec<Throughput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) connects: Option<Connects>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) idle: Option<Idle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) storm: Option<Storm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lifecycle: Option<Lifecycle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) plugin: Option<Plugin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) binaries: Option<Binaries>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hsm: Option<Hsm>,
}

impl Results {
    /// No step measured yet.
    pub(crate) fn new(machine: String, quick: bool, sizes: Sizes) -> Self {
        Self {
            machine,
            quick,
            sizes,
            identities_p256: None,
            identities_rsa2048: None,
            fleet: None,
            fleet_process: None,
            store: None,
            ingest: None,
            throughput: Vec::new(),
            connects: None,
            idle: None,
            storm: None,
            lifecycle: None,
            plugin: None,
            binaries: None,
            hsm: None,
        }
    }

    /// The throughput run at `qos`, if measured.
    pub(crate) fn throughput_at(&self, qos: u8) -> Option<&Throughput> {
        self.throughput.iter().find(|t| t.qos == qos)
    }

    pub(crate) fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub(crate) fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// How much each step does: `--quick` or the full run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sizes {
    /// Runs of each compared measurement; the median is reported.
    pub(crate) repetitions: usize,
    /// P-256 identities per run, ours and Python's.
    pub(crate) identities: usize,
    /// P-256 identities per run of the `openssl` CLI loop.
    pub(crate) openssl_identities: usize,
    /// RSA-2048 identities per run, ours and Python's.
    pub(crate) rsa_identities: usize,
    pub(crate) fleet_devices: usize,
    /// P-256 devices of the whole-process fleet run, ours and Python's.
    #[serde(default = "default_fleet_process_devices")]
    pub(crate) fleet_process_devices: usize,
    /// Identities in the CA whose per-command cost is compared with an
    /// empty CA's.
    pub(crate) store_identities: usize,
    pub(crate) ingest_messages: usize,
    pub(crate) throughput_messages: usize,
    /// Sequential connections per run.
    pub(crate) connects: usize,
    pub(crate) idle_connections: usize,
    pub(crate) storm_devices: usize,
    pub(crate) lifecycle_devices: usize,
    /// QoS 1 messages through each broker in the plugin step.
    #[serde(default)]
    pub(crate) plugin_messages: usize,
    /// Serials in the plugin step's large CRL.
    #[serde(default)]
    pub(crate) plugin_crl_entries: usize,
    /// Identities issued with the CA key in a token, and in a PEM file.
    #[serde(default)]
    pub(crate) hsm_identities: usize,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                repetitions: 1,
                identities: 300,
                openssl_identities: 5,
                rsa_identities: 10,
                fleet_devices: 1_000,
                fleet_process_devices: 500,
                store_identities: 100_000,
                ingest_messages: 5_000,
                throughput_messages: 10_000,
                connects: 100,
                idle_connections: 200,
                storm_devices: 200,
                lifecycle_devices: 200,
                plugin_messages: 10_000,
                plugin_crl_entries: 50_000,
                hsm_identities: 200,
            }
        } else {
            Self {
                repetitions: 3,
                identities: 3_000,
                openssl_identities: 30,
                rsa_identities: 40,
                fleet_devices: 10_000,
                fleet_process_devices: default_fleet_process_devices(),
                store_identities: 1_000_000,
                ingest_messages: 100_000,
                throughput_messages: 50_000,
                connects: 500,
                idle_connections: 1_000,
                storm_devices: 1_000,
                lifecycle_devices: 1_000,
                plugin_messages: 50_000,
                plugin_crl_entries: 500_000,
                hsm_identities: 2_000,
            }
        }
    }
}

/// `mqtt-bench identities`: one run of our issuance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct IdentitiesRun {
    pub(crate) key_type: String,
    pub(crate) threads: usize,
    pub(crate) count: usize,
    /// Up to the end of the final sync.
    pub(crate) seconds: f64,
    /// The final sync's share of `seconds`.
    pub(crate) flush_seconds: f64,
    pub(crate) per_second: f64,
}

impl IdentitiesRun {
    /// The rate up to the final sync (the Python flow never syncs).
    pub(crate) fn unflushed_per_second(&self) -> f64 {
        self.count as f64 / (self.seconds - self.flush_seconds)
    }
}

/// P-256 identities: ours, the original Python flow, the `openssl` CLI
/// (medians).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct IdentitiesP256 {
    pub(crate) ours_one_core_per_s: f64,
    pub(crate) ours_all_cores_per_s: f64,
    pub(crate) ours_all_cores_unflushed_per_s: f64,
    pub(crate) python_cryptography_per_s: f64,
    pub(crate) openssl_cli_per_s: f64,
    pub(crate) ratio_vs_python: f64,
    pub(crate) ratio_vs_python_unflushed: f64,
    pub(crate) ratio_vs_openssl: f64,
}

impl IdentitiesP256 {
    /// The comparison, ratios derived from the rates.
    pub(crate) fn new(
        ours_one_core: f64,
        ours_all_cores: f64,
        ours_unflushed: f64,
        python: f64,
        openssl: f64,
    ) -> Self {
        Self {
            ours_one_core_per_s: ours_one_core,
            ours_all_cores_per_s: ours_all_cores,
            ours_all_cores_unflushed_per_s: ours_unflushed,
            python_cryptography_per_s: python,
            openssl_cli_per_s: openssl,
            ratio_vs_python: ours_all_cores / python,
            ratio_vs_python_unflushed: ours_unflushed / python,
            ratio_vs_openssl: ours_all_cores / openssl,
        }
    }
}

/// RSA-2048 identities: ours on all cores against Python (medians).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct IdentitiesRsa {
    pub(crate) ours_all_cores_per_s: f64,
    pub(crate) python_cryptography_per_s: f64,
    pub(crate) ratio_vs_python: f64,
}

impl IdentitiesRsa {
    pub(crate) fn new(ours: f64, python: f64) -> Self {
        Self {
            ours_all_cores_per_s: ours,
            python_cryptography_per_s: python,
            ratio_vs_python: ours / python,
        }
    }
}

/// `mqtt-bench fleet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Fleet {
    pub(crate) issued: usize,
    /// Kept by a second run changing nothing.
    pub(crate) kept: usize,
    pub(crate) seconds: f64,
    pub(crate) rerun_seconds: f64,
    pub(crate) peak_rss_mb: f64,
}

/// The whole-process fleet step's size in results written before it
/// existed.
fn default_fleet_process_devices() -> usize {
    2_000
}

/// The whole-process fleet step (medians): `provision fleet` started as a
/// process in a fresh folder and timed to its exit (the CA, the files, the
/// inventory, the sync), against the original Python flow for as many
/// identities, started as a process and timed to its exit and a `sync`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FleetProcess {
    pub(crate) devices: usize,
    pub(crate) ours_seconds: f64,
    pub(crate) python_seconds: f64,
    /// `python_seconds / ours_seconds`: how many times quicker ours is.
    pub(crate) ratio: f64,
}

/// `mqtt-bench store`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Store {
    /// Identities in the large CA's inventory.
    pub(crate) identities: usize,
    pub(crate) populate_seconds: f64,
    pub(crate) inventory_db_mb: f64,
    pub(crate) ops: Vec<StoreOp>,
}

impl Store {
    /// The largest peak memory of any command, on either CA.
    pub(crate) fn peak_rss_mb(&self) -> f64 {
        self.ops
            .iter()
            .map(StoreOp::peak_rss_mb)
            .fold(0.0, f64::max)
    }
}

/// One `provision` command on the empty and on the large CA (medians).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoreOp {
    pub(crate) op: String,
    pub(crate) empty_ms: f64,
    pub(crate) full_ms: f64,
    /// `full_ms / empty_ms`.
    pub(crate) ratio: f64,
    pub(crate) empty_peak_rss_mb: f64,
    pub(crate) full_peak_rss_mb: f64,
}

impl StoreOp {
    pub(crate) fn peak_rss_mb(&self) -> f64 {
        self.full_peak_rss_mb.max(self.empty_peak_rss_mb)
    }
}

/// `mqtt-bench ingest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ingest {
    pub(crate) count: usize,
    pub(crate) mosquitto_sub_per_second: f64,
    pub(crate) ingest_stored_per_second: f64,
    pub(crate) ratio: f64,
    /// Batches the ingest committed (`None` in results from before).
    #[serde(default)]
    pub(crate) batches: Option<u64>,
    /// Messages per committed batch, on average.
    #[serde(default)]
    pub(crate) mean_batch: Option<f64>,
    /// Milliseconds per commit, on average.
    #[serde(default)]
    pub(crate) mean_commit_ms: Option<f64>,
    /// The ratio of every run, in order (`all` runs the step until the
    /// last two agree within 10 %); the median's figures are the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) runs: Option<Vec<f64>>,
}

/// `mqtt-bench throughput`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Throughput {
    pub(crate) qos: u8,
    pub(crate) count: usize,
    /// `None` when run without `--python`.
    pub(crate) paho_per_second: Option<f64>,
    pub(crate) ours_per_second: f64,
    pub(crate) ours_received: usize,
    pub(crate) mosquitto_clients_per_second: f64,
    pub(crate) mosquitto_received: usize,
    /// Ours over Mosquitto's clients.
    pub(crate) ratio: f64,
}

/// `mqtt-bench connects`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Connects {
    pub(crate) count: usize,
    pub(crate) ours_sequential_per_second: f64,
    pub(crate) ours_100_concurrent_per_second: f64,
    pub(crate) python_ssl_per_second: f64,
    pub(crate) paho_per_second: f64,
    /// Ours (sequential) over Python's `ssl`.
    pub(crate) ratio_vs_python: f64,
}

/// `mqtt-bench binaries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Binaries {
    pub(crate) binaries: Vec<Binary>,
}

/// One release binary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Binary {
    pub(crate) name: String,
    pub(crate) built_bytes: u64,
    pub(crate) stripped_bytes: u64,
    /// `--version` from exec to exit, its pages not in the page cache
    /// (programs only).
    pub(crate) cold_start_ms: Option<f64>,
    pub(crate) warm_start_ms: Option<f64>,
    /// The programs' largest sources of code, bytes by crate (or C
    /// library), largest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) code_by_crate: Option<Vec<(String, u64)>>,
}

/// `mqtt-bench hsm`: the CA key in SoftHSM2 against a PEM key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Hsm {
    /// Identities in each `provision fleet` run.
    pub(crate) identities: usize,
    pub(crate) pem_per_second: f64,
    pub(crate) token_per_second: f64,
    /// `provision crl`, median of 5.
    pub(crate) pem_crl_ms: f64,
    pub(crate) token_crl_ms: f64,
    /// A device's key: mTLS handshakes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) handshakes: Option<Handshakes>,
}

/// mTLS handshakes per second (one after another, full handshakes) with a
/// device's P-256 key in a PEM file, SoftHSM2 and a software TPM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Handshakes {
    /// Handshakes in each run (medians of three).
    pub(crate) count: usize,
    pub(crate) pem_per_second: f64,
    pub(crate) softhsm_per_second: f64,
    pub(crate) tpm_per_second: f64,
}

/// What `mqtt-bench handshakes` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HandshakeRate {
    pub(crate) per_second: f64,
}

/// `mqtt-bench idle`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Idle {
    pub(crate) count: usize,
    pub(crate) connected: usize,
    pub(crate) kb_per_connection: f64,
}

/// `mqtt-bench storm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Storm {
    pub(crate) count: usize,
    pub(crate) seconds_until_all_connected: f64,
    pub(crate) connects_per_second: f64,
    pub(crate) kb_per_connection: f64,
    pub(crate) seconds_until_all_reconnected: f64,
}

/// `mqtt-bench lifecycle`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Lifecycle {
    pub(crate) count: usize,
    pub(crate) enroll_seconds: f64,
    pub(crate) enrollments_per_second: f64,
    pub(crate) enroll_and_connect_seconds: f64,
    pub(crate) renew_seconds: f64,
    pub(crate) renewed: usize,
    pub(crate) published: usize,
    pub(crate) received: usize,
    pub(crate) lost: usize,
}

/// `mqtt-bench plugin`: the broker plugin against Mosquitto's `acl_file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Plugin {
    /// QoS 1 messages through each broker.
    pub(crate) count: usize,
    pub(crate) plugin_qos1_per_second: f64,
    pub(crate) acl_file_qos1_per_second: f64,
    /// Plugin over acl_file (target: at least 0.9).
    pub(crate) throughput_ratio: f64,
    /// Sequential connections (each with one SUBSCRIBE) through each.
    pub(crate) connects: usize,
    pub(crate) plugin_connects_per_second: f64,
    pub(crate) acl_file_connects_per_second: f64,
    /// Plugin over acl_file (target: at least 0.9).
    pub(crate) connects_ratio: f64,
    /// One decision (READ or WRITE) on the default rules, in ns.
    pub(crate) check_ns: f64,
    pub(crate) crl_entries: usize,
    pub(crate) crl_bytes: usize,
    pub(crate) crl_sign_seconds: f64,
    /// The longest pause between two deliveries of a 500/s QoS 1 stream,
    /// before the CRL changed.
    pub(crate) baseline_max_gap_ms: f64,
    /// The same from the CRL change on: the plugin reads it (on a thread
    /// of its own) and reloads the broker, which parses it itself.
    pub(crate) reload_max_gap_ms: f64,
    pub(crate) broker_reloaded: bool,
}

/// The machine, for the report: CPU model, cores, memory.
pub(crate) fn machine() -> String {
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

/// The median of `values` (the upper one of an even count).
///
/// # Panics
/// Never on the bench's inputs: every caller measures at least once.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The run whose `key` is the median of `runs` (`None` for no runs).
pub(crate) fn median_by<T>(runs: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    let mut runs = runs;
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = runs.len() / 2;
    (middle < runs.len()).then(|| runs.swap_remove(middle))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A complete set of results, small round figures.
    pub(crate) fn sample() -> Results {
        let mut r = Results::new(
            "Test CPU, 2 cores, 1 kB memory".into(),
            true,
            Sizes::new(true),
        );
        r.identities_p256 = Some(IdentitiesP256::new(4000.0, 6000.0, 7000.0, 1000.0, 20.0));
        r.identities_rsa2048 = Some(IdentitiesRsa::new(14.0, 10.0));
        r.fleet = Some(Fleet {
            issued: 1000,
            kept: 1000,
            seconds: 5.0,
            rerun_seconds: 1.0,
            peak_rss_mb: 20.0,
        });
        r.fleet_process = Some(FleetProcess {
            devices: 500,
            ours_seconds: 0.2,
            python_seconds: 1.2,
            ratio: 6.0,
        });
        r.store = Some(Store {
            identities: 100_000,
            populate_seconds: 3.0,
            inventory_db_mb: 40.0,
            ops: vec![
                StoreOp {
                    op: "issue".into(),
                    empty_ms: 10.0,
                    full_ms: 12.0,
                    ratio: 1.2,
                    empty_peak_rss_mb: 8.0,
                    full_peak_rss_mb: 9.0,
                },
                StoreOp {
                    op: "list --name".into(),
                    empty_ms: 5.0,
                    full_ms: 15.0,
                    ratio: 3.0,
                    empty_peak_rss_mb: 7.0,
                    full_peak_rss_mb: 60.0,
                },
            ],
        });
        r.ingest = Some(Ingest {
            count: 2000,
            mosquitto_sub_per_second: 1000.0,
            ingest_stored_per_second: 950.0,
            ratio: 0.95,
            batches: Some(40),
            mean_batch: Some(50.0),
            mean_commit_ms: Some(2.5),
            runs: Some(vec![0.9, 0.95, 0.96]),
        });
        r.throughput = [(0, 1.1), (1, 1.3)]
            .into_iter()
            .map(|(qos, ratio)| Throughput {
                qos,
                count: 10_000,
                paho_per_second: (qos == 0).then_some(500.0),
                ours_per_second: 1000.0 * ratio,
                ours_received: 10_000,
                mosquitto_clients_per_second: 1000.0,
                mosquitto_received: 10_000,
                ratio,
            })
            .collect();
        r.connects = Some(Connects {
            count: 100,
            ours_sequential_per_second: 125.0,
            ours_100_concurrent_per_second: 300.0,
            python_ssl_per_second: 100.0,
            paho_per_second: 80.0,
            ratio_vs_python: 1.25,
        });
        r.idle = Some(Idle {
            count: 200,
            connected: 200,
            kb_per_connection: 60.0,
        });
        r.storm = Some(Storm {
            count: 200,
            seconds_until_all_connected: 1.0,
            connects_per_second: 200.0,
            kb_per_connection: 25.0,
            seconds_until_all_reconnected: 2.0,
        });
        r.lifecycle = Some(Lifecycle {
            count: 200,
            enroll_seconds: 2.0,
            enrollments_per_second: 100.0,
            enroll_and_connect_seconds: 4.0,
            renew_seconds: 5.0,
            renewed: 200,
            published: 3000,
            received: 3000,
            lost: 0,
        });
        r.plugin = Some(Plugin {
            count: 10_000,
            plugin_qos1_per_second: 9_500.0,
            acl_file_qos1_per_second: 10_000.0,
            throughput_ratio: 0.95,
            connects: 100,
            plugin_connects_per_second: 400.0,
            acl_file_connects_per_second: 400.0,
            connects_ratio: 1.0,
            check_ns: 120.0,
            crl_entries: 50_000,
            crl_bytes: 3_500_000,
            crl_sign_seconds: 0.5,
            baseline_max_gap_ms: 10.0,
            reload_max_gap_ms: 50.0,
            broker_reloaded: true,
        });
        r.hsm = Some(Hsm {
            identities: 200,
            pem_per_second: 5000.0,
            token_per_second: 1000.0,
            pem_crl_ms: 8.0,
            token_crl_ms: 12.5,
            handshakes: Some(Handshakes {
                count: 200,
                pem_per_second: 400.0,
                softhsm_per_second: 350.0,
                tpm_per_second: 20.0,
            }),
        });
        r.binaries = Some(Binaries {
            binaries: vec![
                Binary {
                    name: "provision".into(),
                    built_bytes: 100_000_000,
                    stripped_bytes: 18_500_000,
                    cold_start_ms: Some(12.5),
                    warm_start_ms: Some(1.5),
                    code_by_crate: Some(vec![
                        ("core".into(), 2_000_000),
                        ("aws-lc (C)".into(), 900_000),
                    ]),
                },
                Binary {
                    name: "libmqtt_mtls_auth.so".into(),
                    built_bytes: 18_000_000,
                    stripped_bytes: 1_000_000,
                    cold_start_ms: None,
                    warm_start_ms: None,
                    code_by_crate: None,
                },
            ],
        });
        r
    }

    #[test]
    fn results_survive_a_round_trip_through_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        let results = sample();
        results.write(&path).unwrap();
        assert_eq!(Results::read(&path).unwrap(), results);
        // Named keys, as readers of results.json expect them.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"ratio_vs_python_unflushed\": 7.0"),
            "{text}"
        );
        assert!(text.contains("\"paho_per_second\": null"), "{text}");
    }

    #[test]
    fn steps_left_out_stay_out() {
        let results = Results::new("m".into(), true, Sizes::new(true));
        let text = serde_json::to_string(&results).unwrap();
        assert!(!text.contains("fleet\":"), "{text}");
        let back: Results = serde_json::from_str(&text).unwrap();
        assert_eq!(back, results);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0]), 5.0);
        assert_eq!(
            median_by(vec![(1, 9.0), (2, 1.0), (3, 5.0)], |r| r.1),
            Some((3, 5.0))
        );
        assert_eq!(median_by(Vec::<f64>::new(), |r| *r), None);
    }
}
