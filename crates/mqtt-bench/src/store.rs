//! `mqtt-bench store`: the cost of one CA operation, the `provision` CLI
//! itself, on an empty CA and on one whose inventory holds N identities.
//! Wall time and peak memory of each command come from GNU time (the
//! child's own `ru_maxrss`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use pki_core::{Profile, Serial, Timestamp};
use provision::ca_folder::CaDir;
use provision::inventory::{Inventory, Record, Status};
use provision::layout::{self, IdentityPaths};

use crate::results::{Store, StoreOp, median};

/// The arguments of an operation's `k`-th run.
type Args = dyn Fn(usize) -> Vec<String>;

/// Runs of each operation; the median is reported.
const RUNS: usize = 5;

/// One command's cost.
struct Cost {
    seconds: f64,
    rss_mb: f64,
}

fn timed(time: &Path, provision: &Path, dir: &Path, args: &[String]) -> anyhow::Result<Cost> {
    let started = std::time::Instant::now();
    let out = Command::new(time)
        .args(["-f", "%e %M", "--"])
        .arg(provision)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {} under {}", provision.display(), time.display()))?;
    // Wall time measured here (GNU time counts in 10 ms steps); its peak
    // memory is the child's own.
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("provision {args:?} failed: {stderr}");
    }
    // GNU time's line is the last one.
    let last = stderr.lines().last().unwrap_or_default();
    let mut fields = last.split_whitespace();
    let (Some(_), Some(kb)) = (fields.next(), fields.next()) else {
        bail!("no timing from {}: {stderr}", time.display());
    };
    Ok(Cost {
        seconds,
        rss_mb: kb.parse::<f64>()? / 1024.0,
    })
}

/// Adds `count` synthetic identities to the CA in `dir` (distinct serials
/// and names, one in a thousand revoked), through the inventory's own
/// transaction, as `fleet` records them.
fn populate(dir: &Path, count: usize) -> anyhow::Result<f64> {
    let started = std::time::Instant::now();
    let ca_dir = CaDir::new(dir.join(layout::DEFAULT_CA_DIR));
    let ca = ca_dir.load(None)?;
    let inventory = Inventory::open(&ca_dir)?;
    let now = SystemTime::now();
    for start in (0..count).step_by(100_000) {
        let mut locked = inventory.lock(&ca)?;
        let batch: Vec<Record> = (start..count.min(start + 100_000))
            .map(|i| {
                let name = format!("sensor-{i}");
                let paths = IdentityPaths::new(Path::new(layout::DEFAULT_IDENTITY_DIR), &name);
                Ok(Record {
                    serial: format!("7F{i:030X}").parse::<Serial>()?,
                    subject: format!("CN={name}"),
                    common_name: name,
                    profile: Profile::Client,
                    not_before: Timestamp(now),
                    not_after: Timestamp(now + Duration::from_secs(365 * 86_400)),
                    sha256: "00".repeat(32),
                    cert_path: paths.cert,
                    role: Some(provision::roles::Role::Device),
                    status: if i % 1000 == 999 {
                        Status::Revoked {
                            at: Timestamp(now),
                            reason: pki_core::RevocationReason::KeyCompromise,
                        }
                    } else {
                        Status::Valid
                    },
                })
            })
            .collect::<anyhow::Result<_>>()?;
        locked.record(&batch)?;
        // Timed: the inventory alone, no broker folder to take it to.
        let _recorded = locked.commit()?;
    }
    Ok(started.elapsed().as_secs_f64())
}

pub(crate) fn run(provision: &Path, time: &Path, count: usize) -> anyhow::Result<Store> {
    let tmp = tempfile::tempdir()?;
    let folders: Vec<PathBuf> = ["empty", "full"]
        .iter()
        .map(|name| tmp.path().join(name))
        .collect();
    let args = |a: &[&str]| -> Vec<String> { a.iter().map(|s| s.to_string()).collect() };
    for dir in &folders {
        std::fs::create_dir(dir)?;
        timed(time, provision, dir, &args(&["init-ca"]))?;
        timed(time, provision, dir, &args(&["issue", "client", "probe"]))?;
    }
    let populate_seconds = populate(&folders[1], count)?;
    let db_mb = std::fs::metadata(folders[1].join("root_cert").join(layout::INVENTORY_DB))?.len()
        as f64
        / 1e6;
    let ops: [(&str, Box<Args>); 4] = [
        (
            "issue",
            Box::new(move |k| args(&["issue", "client", &format!("new-{k}")])),
        ),
        (
            "revoke",
            Box::new(move |k| {
                args(&[
                    "revoke",
                    &format!("backend_certs/new-{k}_cert.pem"),
                    "--reason",
                    "key-compromise",
                ])
            }),
        ),
        (
            "verify",
            Box::new(move |_| {
                args(&[
                    "verify",
                    "backend_certs/probe_cert.pem",
                    "--profile",
                    "client",
                    "--crl",
                    "root_cert/crl.pem",
                ])
            }),
        ),
        (
            "list --name",
            Box::new(move |_| args(&["list", "--name", "probe", "--json"])),
        ),
    ];
    let mut rows = Vec::new();
    for (op, make) in &ops {
        let mut per_folder = Vec::new();
        for dir in &folders {
            let mut seconds = Vec::new();
            let mut rss: f64 = 0.0;
            for k in 0..RUNS {
                let cost = timed(time, provision, dir, &make(k))?;
                seconds.push(cost.seconds);
                rss = rss.max(cost.rss_mb);
            }
            per_folder.push((median(seconds), rss));
        }
        let ((empty_s, empty_mb), (full_s, full_mb)) = (per_folder[0], per_folder[1]);
        rows.push(StoreOp {
            op: (*op).to_owned(),
            empty_ms: empty_s * 1000.0,
            full_ms: full_s * 1000.0,
            ratio: if empty_s > 0.0 { full_s / empty_s } else { 1.0 },
            empty_peak_rss_mb: empty_mb,
            full_peak_rss_mb: full_mb,
        });
    }
    Ok(Store {
        identities: count,
        populate_seconds,
        inventory_db_mb: db_mb,
        ops: rows,
    })
}
