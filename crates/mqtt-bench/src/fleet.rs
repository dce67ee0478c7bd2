//! `mqtt-bench fleet MANIFEST`: `provision fleet` in-process, wall time and
//! peak memory, then again changing nothing.

use std::path::Path;
use std::time::Instant;

use anyhow::bail;

use crate::memory::peak_rss_kb;
use crate::results::Fleet;

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
