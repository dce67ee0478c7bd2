//! `mqtt-bench`: every measurement of `cargo xtask bench`, ours and the
//! peers' (the `openssl` CLI, the original Python flow, Python's `ssl`,
//! paho-mqtt, Mosquitto's own clients), and the report.
//!
//! `mqtt-bench all` runs every step, each in a process of its own, and
//! writes the typed results (`target/bench/results.json`); `mqtt-bench
//! report` turns them into `docs/benchmarks.md` and `docs/benchmarks.svg`.
//! Each single step prints its result as one JSON object. Run by the xtask
//! in release builds; see `docs/benchmarks.md` for the figures.

mod all;
mod binaries;
mod chart;
mod connects;
mod fleet;
mod hsm;
mod identities;
mod ingest;
mod lifecycle;
mod memory;
mod openssl;
mod plugin;
mod python;
mod report;
mod results;
mod store;
mod storm;
mod throughput;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use pki_core::KeyType;
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "mqtt-bench",
    about = "Measurements for `cargo xtask bench`, ours and the peers', and the report"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every step (or those given to --only), each in a process of its
    /// own; writes the results as JSON.
    All(all::AllArgs),
    /// docs/benchmarks.md and the chart from the results.
    Report {
        #[arg(long, default_value = "target/bench/results.json")]
        results: PathBuf,
        #[arg(long, default_value = "docs/benchmarks.md")]
        markdown: PathBuf,
        #[arg(long, default_value = "docs/benchmarks.svg")]
        chart: PathBuf,
    },
    /// Only the chart: every target, the ratio measured against the target.
    Chart { results: PathBuf, out: PathBuf },
    /// Ours: key + CSR + the CA's checks + signature + 3 files, per second.
    Identities {
        /// p256, p384, ed25519, rsa2048, ...
        key_type: KeyType,
        count: usize,
        /// 0: all cores.
        threads: usize,
        /// A new folder for the files.
        out_dir: PathBuf,
    },
    /// The `openssl` CLI loop (one process per step), per second.
    OpensslIdentities {
        count: usize,
        /// A folder for the files.
        out_dir: PathBuf,
        #[arg(long, default_value = "openssl")]
        openssl: PathBuf,
    },
    /// The original Python flow (`cryptography`, one process), per second.
    PythonIdentities {
        /// p256 or rsa2048.
        key_type: String,
        count: usize,
        /// A folder for the files.
        out_dir: PathBuf,
        #[arg(long, default_value = "python3")]
        python: PathBuf,
    },
    /// `provision fleet` in-process: seconds and peak memory.
    Fleet { manifest: PathBuf },
    /// Stored/s with acknowledgements after commit vs mosquitto_sub's
    /// receive rate.
    Ingest {
        mqtt_ingest_bin: PathBuf,
        count: usize,
    },
    /// Publisher → subscriber msgs/s: ours vs mosquitto_pub -l →
    /// mosquitto_sub (and paho, given --python).
    Throughput {
        /// 0 or 1.
        #[arg(value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
        count: usize,
        /// A Python with paho-mqtt.
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// mTLS connect + CONNACK + disconnect per second: ours sequential and
    /// 100 concurrent, Python ssl and paho.
    Connects {
        count: usize,
        /// A Python with paho-mqtt.
        #[arg(long, default_value = "python3")]
        python: PathBuf,
    },
    /// Memory per idle mTLS connection (COUNT clients, own certificates).
    Idle { count: usize },
    /// COUNT devices (own certificates) connecting at once, then a broker
    /// restart.
    Storm { count: usize },
    /// COUNT devices enroll at once from one claim and connect; then renew
    /// at once while publishing.
    Lifecycle { count: usize },
    /// The broker plugin against Mosquitto's acl_file: QoS 1 throughput,
    /// connects, the cost of a decision, and a CRL of CRL_ENTRIES serials
    /// reloaded mid-stream.
    Plugin { count: usize, crl_entries: usize },
    /// The CA key in a PKCS#11 token (SoftHSM2) against a PEM key:
    /// `provision fleet` of COUNT identities and `provision crl`.
    Hsm {
        provision_bin: PathBuf,
        /// The SoftHSM2 module.
        module: PathBuf,
        count: usize,
    },
    /// COUNT mTLS handshakes one after another against the broker on
    /// PORT, with the key at KEY (a PEM file, or a token's record): part
    /// of `hsm`, run in a process of its own.
    Handshakes {
        port: u16,
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        count: usize,
    },
    /// Sizes (as built, stripped) and start-up times of the release
    /// binaries in DIR.
    Binaries { dir: PathBuf },
    /// issue/revoke/verify/list --name on an empty CA and one with N
    /// identities.
    Store {
        provision_bin: PathBuf,
        /// GNU time.
        time_bin: PathBuf,
        identities: usize,
    },
}

/// What the identity loops of the peers print.
#[derive(Serialize)]
struct Rate {
    per_second: f64,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::All(args) => {
            let results = all::run(&args)?;
            print(&results)
        }
        Cmd::Report {
            results,
            markdown,
            chart,
        } => {
            let doc = report::write(&results::Results::read(&results)?, &markdown, &chart)?;
            println!("{doc}");
            eprintln!("wrote {} and {}", markdown.display(), chart.display());
            Ok(())
        }
        Cmd::Chart { results, out } => {
            chart::chart(&results::Results::read(&results)?, &out)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Cmd::Identities {
            key_type,
            count,
            threads,
            out_dir,
        } => print(&identities::run(key_type, count, threads, &out_dir)?),
        Cmd::OpensslIdentities {
            count,
            out_dir,
            openssl,
        } => print(&Rate {
            per_second: openssl::identities(&openssl, count, &out_dir)?,
        }),
        Cmd::PythonIdentities {
            key_type,
            count,
            out_dir,
            python,
        } => print(&Rate {
            per_second: python::identities(&python, &key_type, count, &out_dir)?,
        }),
        Cmd::Fleet { manifest } => print(&fleet::run(&manifest)?),
        Cmd::Ingest {
            mqtt_ingest_bin,
            count,
        } => print(&ingest::run(&mqtt_ingest_bin, count)?),
        Cmd::Throughput { qos, count, python } => {
            print(&throughput::run(qos, count, python.as_deref())?)
        }
        Cmd::Connects { count, python } => print(&connects::run(count, &python)?),
        Cmd::Idle { count } => print(&connects::idle(count)?),
        Cmd::Storm { count } => print(&storm::run(count)?),
        Cmd::Lifecycle { count } => print(&lifecycle::run(count)?),
        Cmd::Plugin { count, crl_entries } => print(&plugin::run(count, crl_entries)?),
        Cmd::Store {
            provision_bin,
            time_bin,
            identities,
        } => print(&store::run(&provision_bin, &time_bin, identities)?),
        Cmd::Binaries { dir } => print(&binaries::run(&dir)?),
        Cmd::Hsm {
            provision_bin,
            module,
            count,
        } => print(&hsm::run(&provision_bin, &module, count)?),
        Cmd::Handshakes {
            port,
            cert,
            key,
            ca,
            count,
        } => print(&hsm::measure_handshakes(
            port,
            mqtt_tls::ClientCert::new(cert, key, ca),
            count,
        )?),
    }
}

/// A step's result, as one line of JSON on standard output.
fn print(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
