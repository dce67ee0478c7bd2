//! `mqtt-bench binaries`: each release binary's size as built and stripped
//! (what `cargo xtask dist` ships), and how long each shipped (stripped)
//! program takes from exec to exit on `--version`: cold (the binary's pages
//! dropped from the page cache first, `posix_fadvise(DONTNEED)`) and warm;
//! medians of 5. Not a service's full start (its configuration, TLS
//! identity and database come after).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::results::{Binaries, Binary, median};

/// The release binaries, by file name, and whether they run on their own.
const SHIPPED: [(&str, bool); 3] = [
    ("provision", true),
    ("mqtt-ingest", true),
    ("libmqtt_mtls_auth.so", false),
];

pub(crate) fn run(dir: &Path) -> anyhow::Result<Binaries> {
    let scratch = tempfile::tempdir().context("a scratch folder")?;
    let mut binaries = Vec::new();
    for (name, runs) in SHIPPED {
        let path = dir.join(name);
        let built = std::fs::metadata(&path)
            .with_context(|| {
                format!(
                    "{}: build it first (cargo xtask bench does)",
                    path.display()
                )
            })?
            .len();
        let stripped_path = scratch.path().join(name);
        let out = Command::new("objcopy")
            .args(["--strip-unneeded", "--remove-section=.comment"])
            .arg(&path)
            .arg(&stripped_path)
            .output()
            .context("running objcopy (Debian: binutils)")?;
        if !out.status.success() {
            bail!(
                "objcopy {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stripped = std::fs::metadata(&stripped_path)?.len();
        // Timed as shipped: the stripped copy.
        let (cold_start_ms, warm_start_ms) = if runs {
            let cold = median(
                (0..5)
                    .map(|_| start(&stripped_path, true))
                    .collect::<anyhow::Result<_>>()?,
            );
            let warm = median(
                (0..5)
                    .map(|_| start(&stripped_path, false))
                    .collect::<anyhow::Result<_>>()?,
            );
            (Some(cold), Some(warm))
        } else {
            (None, None)
        };
        binaries.push(Binary {
            name: name.to_owned(),
            built_bytes: built,
            stripped_bytes: stripped,
            cold_start_ms,
            warm_start_ms,
        });
    }
    Ok(Binaries { binaries })
}

/// Milliseconds from exec to exit of `path --version`, its pages evicted
/// from the page cache first when `cold`.
fn start(path: &Path, cold: bool) -> anyhow::Result<f64> {
    if cold {
        let file = std::fs::File::open(path)?;
        // Dirty pages (a copy just written) cannot be dropped: written
        // back first.
        file.sync_all()?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
            .with_context(|| format!("evicting {} from the page cache", path.display()))?;
    }
    let started = Instant::now();
    let status = Command::new(path)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {}", path.display()))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        bail!("{} --version: {status}", path.display());
    }
    Ok(ms)
}
