//! `mqtt-bench hsm PROVISION MODULE COUNT`: the CA key in a PKCS#11 token
//! (SoftHSM2) against a PEM key, side by side: `provision fleet` issuing
//! COUNT P-256 identities (a process, to its exit), and `provision crl`
//! (median of 5), each with a fresh CA of either kind.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::results::{Hsm, median};

const PIN: &str = "1234";

pub(crate) fn run(provision: &Path, module: &Path, count: usize) -> anyhow::Result<Hsm> {
    let dir = tempfile::tempdir().context("a scratch folder")?;
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens)?;
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )?;
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--so-pin",
            "000000",
            "--pin",
            PIN,
        ])
        .output()
        .context("running softhsm2-util (Debian: softhsm2)")?;
    if !out.status.success() {
        bail!("softhsm2-util: {}", String::from_utf8_lossy(&out.stderr));
    }
    let uri = format!(
        "pkcs11:token=bench;object=ca?module-path={}",
        module.display()
    );
    let run = |folder: &Path, args: &[&str]| -> anyhow::Result<f64> {
        let started = Instant::now();
        let out = Command::new(provision)
            .current_dir(folder)
            .env("SOFTHSM2_CONF", &conf)
            .env("BENCH_PIN", PIN)
            .args(args)
            .stdout(Stdio::null())
            .output()
            .with_context(|| format!("running {}", provision.display()))?;
        let seconds = started.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "provision {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(seconds)
    };
    let manifest = crate::fleet::manifest(count);
    let measure = |name: &str, init: &[&str]| -> anyhow::Result<(f64, f64)> {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder)?;
        std::fs::write(folder.join("fleet.toml"), &manifest)?;
        run(&folder, init)?;
        let fleet = run(&folder, &["fleet", "fleet.toml"])?;
        let crl = median(
            (0..5)
                .map(|_| run(&folder, &["crl"]).map(|s| s * 1e3))
                .collect::<anyhow::Result<_>>()?,
        );
        Ok((count as f64 / fleet, crl))
    };
    let (pem_per_second, pem_crl_ms) = measure("pem", &["init-ca"])?;
    let (token_per_second, token_crl_ms) = measure(
        "token",
        &["init-ca", "--key-uri", &uri, "--pin-env", "BENCH_PIN"],
    )?;
    Ok(Hsm {
        identities: count,
        pem_per_second,
        token_per_second,
        pem_crl_ms,
        token_crl_ms,
    })
}
