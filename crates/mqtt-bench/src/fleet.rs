//! `mqtt-bench fleet MANIFEST`: `provision fleet` in-process, wall time and
//! peak memory, then again changing nothing; and [`compare_processes`]:
//! `provision fleet` as a process against the Python flow.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::memory::peak_rss_kb;
use crate::results::{Fleet, FleetProcess, median};

/// The manifest of `devices` P-256 devices under a new CA.
pub(crate) fn manifest(devices: usize) -> String {
    format!(
        "[ca]\ndir = \"root_cert\"\ncommon_name = \"Bench Fleet\"\n\
         [[devices]]\nprefix = \"sensor-\"\ncount = {devices}\n"
    )
}

/// Runs a fleet manifest in-process; reports wall time and peak memory.
pub(crate) fn run(manifest: &Path) -> anyhow::Result<Fleet> {
    let started = Instant::now();
    let summary = provision::fleet::run(
        manifest,
        &provision::fleet::RunOptions::default(),
        &|_, _| {},
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_mb = peak_rss_kb()? as f64 / 1024.0;
    // Again, with nothing to change: every identity's files are read and
    // checked against the CA and the inventory.
    let started = Instant::now();
    let rerun = provision::fleet::run(
        manifest,
        &provision::fleet::RunOptions::default(),
        &|_, _| {},
    )?;
    let rerun_seconds = started.elapsed().as_secs_f64();
    if rerun.issued != 0 {
        bail!("a fleet run changing nothing issued {}", rerun.issued);
    }
    Ok(Fleet {
        issued: summary.issued,
        kept: rerun.kept,
        seconds,
        rerun_seconds,
        peak_rss_mb,
    })
}

/// `provision fleet` for `devices` P-256 devices started as a process in a
/// fresh folder and timed to its exit (its CA, files, inventory and sync
/// included), against the original Python flow for as many identities
/// started as a process and timed to its exit and a `sync` (it never syncs
/// itself); the sides take turns, `repetitions` times, medians. Every run
/// gets a folder of its own under `dir` after a `sync`, and none is deleted
/// before the caller is done (see [`crate::identities::compare`] on ext4).
pub(crate) fn compare_processes(
    provision: &Path,
    python: &Path,
    devices: usize,
    repetitions: usize,
    dir: &Path,
) -> anyhow::Result<FleetProcess> {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..repetitions {
        let folder = dir.join(format!("ours-{run}"));
        std::fs::create_dir(&folder).with_context(|| format!("creating {}", folder.display()))?;
        std::fs::write(folder.join("fleet.toml"), manifest(devices))
            .with_context(|| format!("writing {}/fleet.toml", folder.display()))?;
        sync()?;
        ours.push(timed(
            Command::new(provision)
                .args(["fleet", "fleet.toml"])
                .current_dir(&folder),
        )?);

        let folder = dir.join(format!("python-{run}"));
        sync()?;
        let started = Instant::now();
        crate::python::identities(python, "p256", devices, &folder)?;
        sync()?;
        theirs.push(started.elapsed().as_secs_f64());
    }
    let (ours_seconds, python_seconds) = (median(ours), median(theirs));
    Ok(FleetProcess {
        devices,
        ours_seconds,
        python_seconds,
        ratio: python_seconds / ours_seconds,
    })
}

/// Seconds from start to exit of `command` (its output discarded), which
/// must succeed.
pub(crate) fn timed(command: &mut Command) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = command
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed: {}",
            command.get_program(),
            command.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(seconds)
}

/// `sync(1)`: what earlier runs left pending is written before a run
/// starts, and the Python flow's files are on disk before its clock stops.
fn sync() -> anyhow::Result<()> {
    let status = Command::new("sync").status().context("running sync")?;
    if !status.success() {
        bail!("sync: {status}");
    }
    Ok(())
}
