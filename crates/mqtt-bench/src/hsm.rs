//! `mqtt-bench hsm PROVISION MODULE COUNT`: the CA key in a PKCS#11 token
//! (SoftHSM2) against a PEM key, side by side: `provision fleet` issuing
//! COUNT P-256 identities (a process, to its exit), and `provision crl`
//! (median of 5), each with a fresh CA of either kind; three rounds taking
//! turns, medians.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

use crate::results::{Hsm, median};

const PIN: &str = "1234";

/// Runs of each kind, taking turns; medians.
const ROUNDS: usize = 3;

pub(crate) fn run(provision: &Path, module: &Path, count: usize) -> anyhow::Result<Hsm> {
    // Run from other folders: an absolute path.
    let provision = &std::fs::canonicalize(provision)
        .with_context(|| format!("finding {}", provision.display()))?;
    // The bench's own token (peers' harness: it panics, as a step may,
    // with what is missing).
    let tokens = peers::softhsm::Tokens::new();
    tokens.init("bench", PIN);
    let conf = tokens.conf.clone();
    let dir = tokens.scratch();
    let run = |folder: &Path, args: &[&str]| -> anyhow::Result<f64> {
        crate::fleet::timed(
            Command::new(provision)
                .current_dir(folder)
                .env("SOFTHSM2_CONF", &conf)
                .env("BENCH_PIN", PIN)
                .args(args),
        )
    };
    let manifest = crate::fleet::manifest(count);
    // A fresh CA folder for each run; none deleted until the end (see
    // `identities::compare` on ext4); the two kinds take turns.
    let mut runs = 0;
    let mut measure = |init: &[&str]| -> anyhow::Result<(f64, f64)> {
        runs += 1;
        let folder = dir.join(format!("run-{runs}"));
        std::fs::create_dir(&folder)?;
        std::fs::write(folder.join("fleet.toml"), &manifest)?;
        run(&folder, init)?;
        let _ = Command::new("sync").status();
        let fleet = run(&folder, &["fleet", "fleet.toml"])?;
        let crl = median(
            (0..5)
                .map(|_| run(&folder, &["crl"]).map(|s| s * 1e3))
                .collect::<anyhow::Result<_>>()?,
        );
        Ok((count as f64 / fleet, crl))
    };
    let (mut pem, mut token) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let object = format!("ca-{round}");
        let uri = format!(
            "pkcs11:token=bench;object={object}?module-path={}",
            module.display()
        );
        token.push(measure(&[
            "init-ca",
            "--key-uri",
            &uri,
            "--pin-env",
            "BENCH_PIN",
        ])?);
        pem.push(measure(&["init-ca"])?);
    }
    let part = |runs: &[(f64, f64)], which: fn(&(f64, f64)) -> f64| {
        median(runs.iter().map(which).collect())
    };
    let (pem_per_second, pem_crl_ms) = (part(&pem, |r| r.0), part(&pem, |r| r.1));
    let (token_per_second, token_crl_ms) = (part(&token, |r| r.0), part(&token, |r| r.1));
    Ok(Hsm {
        identities: count,
        pem_per_second,
        token_per_second,
        pem_crl_ms,
        token_crl_ms,
    })
}
