//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the cargo-fuzz
//! targets in `fuzz/` (outside the workspace), each for N seconds (default
//! 60), one after another.
//!
//! Each target starts from its committed seeds (`fuzz/seeds/TARGET`) and
//! the corpus earlier runs grew (`fuzz/corpus/TARGET`, not committed). A
//! crash, a timeout or an out-of-memory stops the run with the input
//! libFuzzer saved under `fuzz/artifacts/TARGET/`; once fixed, that input
//! goes into `fuzz/regressions/TARGET/`, which the ordinary test suite
//! replays (`crates/provision/tests/fuzz_regressions.rs`).
//!
//! cargo-fuzz needs nightly-only compiler flags; no nightly toolchain can be
//! installed here, so the stable one is told to accept them
//! (`RUSTC_BOOTSTRAP=1`). Sanitizers are off (`-s none`): the code under
//! test forbids `unsafe`, and the coverage instrumentation is what finds
//! inputs.

use crate::{cargo, project_root, sh, tools};

/// The targets, as named in `fuzz/Cargo.toml`.
pub(crate) const TARGETS: [&str; 5] = ["key", "csr", "certificate", "crl", "manifest"];

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut seconds = 60u64;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seconds takes a whole number")?;
            }
            t if TARGETS.contains(&t) => targets.push(t),
            other => {
                return Err(format!(
                    "unknown fuzz target {other:?}; the targets are {}",
                    TARGETS.join(", ")
                ));
            }
        }
    }
    if targets.is_empty() {
        targets.extend(TARGETS);
    }
    tools::cargo_subcommand("fuzz", "cargo-fuzz")?;
    let fuzz = project_root().join("fuzz");
    for target in targets {
        let corpus = fuzz.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .map_err(|e| format!("creating {}: {e}", corpus.display()))?;
        sh(cargo()
            .current_dir(&fuzz)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "-s", "none", "-O", target])
            .arg(&corpus)
            .arg(fuzz.join("seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // A single input may take at most 10 s and 2 GB.
            .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]))
        .map_err(|e| {
            format!(
                "{e}\nfuzz target {target} found an input that fails: see fuzz/artifacts/{target}/"
            )
        })?;
    }
    Ok(())
}
