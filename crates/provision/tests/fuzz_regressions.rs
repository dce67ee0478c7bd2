//! Replays the fuzz inputs kept in the repository: the seeds
//! (`fuzz/seeds/TARGET`) and every input a fuzz run once failed on
//! (`fuzz/regressions/TARGET`), through the targets' own code
//! (`fuzz/bodies.rs`), so that a fixed crash stays fixed without libFuzzer.
//! `cargo xtask fuzz` runs the targets themselves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use pki_core::{Certificate, KeyPair};

// The targets' own code (see fuzz/bodies.rs).
#[path = "../../../fuzz/bodies.rs"]
mod bodies;

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        files.extend(dir.map(|e| e.unwrap().path()));
    }
    files.sort();
    files
}

#[test]
fn every_kept_fuzz_input_is_handled() {
    type Target = fn(&[u8]);
    let targets: [(&str, Target); 5] = [
        ("key", bodies::key),
        ("csr", bodies::csr),
        ("certificate", bodies::certificate),
        ("crl", bodies::crl),
        ("manifest", bodies::manifest),
    ];
    for (target, run) in targets {
        let files = inputs(target);
        assert!(!files.is_empty(), "no seeds for fuzz target {target}");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            // A panic here names the input through the test's output.
            eprintln!("{target}: {}", file.display());
            run(&data);
        }
    }
}

#[test]
fn the_seeds_are_what_they_claim() {
    // The seeds start the fuzzer from valid objects: they must parse, or
    // the fuzzer starts from nothing.
    for file in inputs("key")
        .iter()
        .filter(|f| !f.to_string_lossy().contains("encrypted"))
    {
        KeyPair::from_pem(&std::fs::read_to_string(file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    let encrypted = inputs("key")
        .into_iter()
        .find(|f| f.to_string_lossy().contains("encrypted"))
        .unwrap();
    KeyPair::from_pem_with_passphrase(&std::fs::read_to_string(encrypted).unwrap(), b"fuzz")
        .unwrap();
    for file in inputs("certificate") {
        let data = std::fs::read(&file).unwrap();
        let ok = match std::str::from_utf8(&data) {
            Ok(text) => Certificate::from_pem(text).is_ok(),
            Err(_) => Certificate::from_der(data).is_ok(),
        };
        assert!(ok, "{}", file.display());
    }
}
