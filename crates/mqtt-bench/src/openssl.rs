//! The `openssl` CLI peer: the same work as our issuance, the way shell
//! scripts do it, one `openssl` process per step (key, CSR, CSR check,
//! signature).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

/// Identities per second of the `openssl` loop, `count` of them in `dir`
/// (created), after a root CA made outside the clock.
pub(crate) fn identities(openssl: &Path, count: usize, dir: &Path) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new(openssl)
            .current_dir(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("running {}", openssl.display()))?;
        if !status.success() {
            bail!("openssl {args:?} failed: {status}");
        }
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        "/CN=Bench Root",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ])?;
    let started = Instant::now();
    for i in 0..count {
        let key = format!("dev-{i}.key");
        let csr = format!("dev-{i}_csr.pem");
        let cert = format!("dev-{i}_cert.pem");
        run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ])?;
        run(&[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN=dev-{i}"),
            "-out",
            &csr,
        ])?;
        run(&["req", "-verify", "-noout", "-in", &csr])?;
        run(&[
            "x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "365",
            "-out", &cert,
        ])?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
