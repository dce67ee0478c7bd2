//! `cargo xtask dist`: release binaries, stripped (debug information kept
//! apart), and the Debian packages with their systemd units.

use std::path::PathBuf;

use crate::{cargo, project_root, sh, tools};

/// Builds `provision`, `mqtt-ingest` and the broker plugin in release mode,
/// then runs `deb-package` on them: `OUT/*.deb`, `OUT/bin/` (stripped),
/// `OUT/debug/` (their debug information). `OUT` is `target/dist` unless
/// `--out DIR` says otherwise.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let out = match args {
        [] => project_root().join("target/dist"),
        [flag, dir] if flag == "--out" => PathBuf::from(dir),
        _ => return Err("usage: cargo xtask dist [--out DIR]".to_owned()),
    };
    tools::packaging()?;
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "provision",
        "-p",
        "mqtt-ingest",
        "-p",
        "mosquitto-plugin",
    ]))?;
    let release = project_root().join("target/release");
    sh(cargo()
        .args(["run", "--release", "-p", "deb-package", "--"])
        .arg("--bin-dir")
        .arg(&release)
        .arg("--source-dir")
        .arg(project_root())
        .arg("--out")
        .arg(&out))?;
    println!(
        "packages in {}: install with `apt install ./FILE.deb` (README, Install)",
        out.display()
    );
    Ok(())
}
