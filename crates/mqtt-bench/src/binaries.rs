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

/// Code (`nm`'s text symbols) by where it comes from: a Rust crate by the
/// first path segment of each demangled name (generic code counted in the
/// crate that defines it: `core::ptr::drop_in_place<sqlx_core::..>` is
/// `core`'s), aws-lc and SQLite by their C prefixes; largest first.
pub(crate) fn code_by_crate(path: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let out = Command::new("nm")
        .args([
            "--print-size",
            "--size-sort",
            "--demangle",
            "--defined-only",
        ])
        .arg(path)
        .output()
        .context("running nm (Debian: binutils)")?;
    if !out.status.success() {
        bail!(
            "nm {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(attribute(&String::from_utf8_lossy(&out.stdout)))
}

/// [`code_by_crate`] from `nm -S -C` output.
fn attribute(nm: &str) -> Vec<(String, u64)> {
    let mut sizes: std::collections::BTreeMap<String, u64> = Default::default();
    for line in nm.lines() {
        let mut fields = line.splitn(4, ' ');
        let (Some(_), Some(size), Some(kind), Some(name)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !matches!(kind, "t" | "T" | "w" | "W") {
            continue;
        }
        let Ok(size) = u64::from_str_radix(size, 16) else {
            continue;
        };
        *sizes.entry(origin(name)).or_default() += size;
    }
    let mut sizes: Vec<_> = sizes.into_iter().collect();
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sizes
}

/// Where a symbol's code comes from.
fn origin(name: &str) -> String {
    let rust = name.trim_start_matches(['<', '&', '*', ' ']);
    let rust = rust
        .strip_prefix("dyn ")
        .or_else(|| rust.strip_prefix("mut "))
        .unwrap_or(rust);
    if let Some((krate, _)) = rust.split_once("::")
        && !krate.is_empty()
        && krate.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return krate.to_owned();
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("aws_lc") {
        "aws-lc (C)".to_owned()
    } else if lower.starts_with("sqlite") {
        "SQLite (C)".to_owned()
    } else {
        "other C and assembly".to_owned()
    }
}

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
        // Where the code comes from, for the programs (the largest).
        let code_by_crate = if runs {
            Some(
                code_by_crate(&path)?
                    .into_iter()
                    .take(CRATES_SHOWN)
                    .collect(),
            )
        } else {
            None
        };
        binaries.push(Binary {
            code_by_crate,
            name: name.to_owned(),
            built_bytes: built,
            stripped_bytes: stripped,
            cold_start_ms,
            warm_start_ms,
        });
    }
    Ok(Binaries { binaries })
}

/// The crates named in a program's code table; the rest are left out.
const CRATES_SHOWN: usize = 12;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_counted_by_crate_and_c_library() {
        let nm = "\
0000000000001000 0000000000000100 T sqlx_core::pool::Pool<DB>::acquire
0000000000001100 0000000000000010 t <sqlx_core::error::Error as core::fmt::Display>::fmt
0000000000001200 0000000000000200 t core::ptr::drop_in_place<sqlx_core::pool::Pool>
0000000000001400 0000000000000040 T aws_lc_0_47_0_EVP_DigestSign
0000000000001440 0000000000000020 t ecp_nistz256_point_add
0000000000001460 0000000000000080 T sqlite3VdbeExec
0000000000001500 0000000000000008 W <&T as core::fmt::Debug>::fmt
0000000000001600 0000000000001000 r some_read_only_table
0000000000001700 0000000000000004 t <dyn provision::Trait>::call
";
        assert_eq!(
            attribute(nm),
            [
                ("core".to_owned(), 0x200),
                ("sqlx_core".to_owned(), 0x110),
                ("SQLite (C)".to_owned(), 0x80),
                ("aws-lc (C)".to_owned(), 0x40),
                ("other C and assembly".to_owned(), 0x28),
                ("provision".to_owned(), 4),
            ]
        );
    }
}
