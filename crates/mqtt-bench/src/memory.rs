//! This process's memory, from `/proc/self/status`.

use anyhow::Context;

/// Resident memory now, in KiB (`VmRSS`).
pub(crate) fn rss_kb() -> anyhow::Result<u64> {
    status_kb("VmRSS:")
}

/// Peak resident memory so far, in KiB (`VmHWM`): why every step runs in a
/// process of its own.
pub(crate) fn peak_rss_kb() -> anyhow::Result<u64> {
    status_kb("VmHWM:")
}

fn status_kb(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}
