//! Docs that cannot drift: the README's offline CLI examples (its
//! `console` blocks) and the `--help` of every command, run as snapshot
//! tests with trycmd (as clap and cargo do). Commands that need a broker
//! stay in the broker suites. After a deliberate change to a help text,
//! `TRYCMD=overwrite cargo test -p provision --test cli_docs` rewrites the
//! snapshots in `tests/cmd/`; the README is edited by hand.

#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn every_help_text() {
    trycmd::TestCases::new()
        .register_bin("provision", Path::new(env!("CARGO_BIN_EXE_provision")))
        .case("tests/cmd/*.toml");
}

/// Every command listed by `provision --help` (and `issue --help`) has its
/// snapshot in `tests/cmd/`.
#[test]
fn every_command_has_a_help_snapshot() {
    let commands = |args: &[&str]| -> Vec<String> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_provision"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines()
            .skip_while(|l| *l != "Commands:")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .filter(|c| c != "help")
            .collect()
    };
    let top = commands(&[]);
    assert!(top.len() > 10, "{top:?}");
    let mut cases: Vec<String> = top.iter().map(|c| format!("help-{c}")).collect();
    cases.extend(
        commands(&["issue"])
            .iter()
            .map(|c| format!("help-issue-{c}")),
    );
    for case in cases {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/cmd/{case}.toml"));
        assert!(path.is_file(), "no help snapshot {}", path.display());
    }
}

#[test]
fn the_readme_examples() {
    // A copy beside an empty `.out` folder: trycmd then runs the block's
    // commands one after the other in one fresh temp folder (its sandbox),
    // never in the checkout.
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("readme.md");
    std::fs::copy(&readme, &copy).unwrap();
    std::fs::create_dir(dir.path().join("readme.out")).unwrap();
    trycmd::TestCases::new()
        .register_bin("provision", Path::new(env!("CARGO_BIN_EXE_provision")))
        .case(&copy);
}
