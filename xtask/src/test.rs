//! `cargo xtask test`: the one test command (README, `.ci/run`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{broker, cargo, project_root, sh, tools};

/// fmt, clippy, cargo deny, the whole test suite with the outside tools
/// installed (feature `external-tools`: OpenSSL, pkilint, Mosquitto,
/// PostgreSQL, curl, schemathesis), and docs.
/// Arguments after `test` go to `cargo test` (e.g. a test-name filter).
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let (advisory_db, extra) = advisory_db_arg(args)?;
    sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        broker::EXTERNAL_TOOLS,
        "--",
        "-D",
        "warnings",
    ]))?;
    deny(advisory_db)?;
    let pkilint = tools::pkilint()?;
    let schemathesis = tools::schemathesis()?;
    tools::curl()?;
    // The packaging suite (provision's tests/packaging.rs).
    tools::packaging()?;
    // Keys in hardware (provision's tests/hsm.rs, enrollment.rs): SoftHSM2,
    // and a software TPM behind tpm2-pkcs11.
    let softhsm = tools::softhsm()?;
    let tpm2_pkcs11 = tools::software_tpm()?;
    let totals = sh_counting_tests(
        cargo()
            .args(["test", "--workspace", "--features", broker::EXTERNAL_TOOLS])
            .args(&extra)
            .envs(broker::test_env()?)
            .env("MQTT_MTLS_PKILINT_BIN", pkilint)
            .env("MQTT_MTLS_SCHEMATHESIS", schemathesis)
            .env("MQTT_MTLS_SOFTHSM_MODULE", softhsm)
            .env("MQTT_MTLS_TPM2_PKCS11_MODULE", tpm2_pkcs11),
    )?;
    sh(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    // One closing line for the whole run, after everything else passed.
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

/// The environment variable naming an offline RustSec advisory database (a
/// git bundle, or a git repository), used when the live one cannot be
/// fetched. `--advisory-db PATH` says the same on the command line.
const ADVISORY_DB_VAR: &str = "MQTT_MTLS_ADVISORY_DB";

/// The folder name cargo-deny gives the default database
/// (`https://github.com/rustsec/advisory-db`) under its `db-path`.
const DEFAULT_DB_DIR: &str = "advisory-db-3157b0e258782691";

/// Splits `--advisory-db PATH` off the arguments meant for `cargo test`.
fn advisory_db_arg(args: &[String]) -> Result<(Option<PathBuf>, Vec<String>), String> {
    let mut db = std::env::var_os(ADVISORY_DB_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let mut rest = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--advisory-db" {
            let path = args
                .next()
                .ok_or("--advisory-db needs a path (a git bundle or repository)")?;
            db = Some(PathBuf::from(path));
        } else if let Some(path) = arg.strip_prefix("--advisory-db=") {
            db = Some(PathBuf::from(path));
        } else {
            rest.push(arg.clone());
        }
    }
    Ok((db, rest))
}

/// `cargo deny check` with `deny.toml`: licenses, duplicate versions,
/// sources and the RustSec advisories. The live database when it can be
/// fetched; else the offline one given by `--advisory-db` or
/// `MQTT_MTLS_ADVISORY_DB`, whose date is printed; else (neither) a loud
/// warning and every check but advisories.
fn deny(offline_db: Option<PathBuf>) -> Result<(), String> {
    tools::cargo_subcommand("deny", "cargo-deny")?;
    let fetched = cargo()
        .args(["deny", "fetch"])
        .status()
        .is_ok_and(|s| s.success());
    if fetched {
        return sh(cargo().args(["deny", "check"]));
    }
    if let Some(source) = offline_db {
        let config = offline_config(&source)?;
        return sh(cargo()
            .args(["deny", "--offline", "--config"])
            .arg(&config)
            .arg("check"));
    }
    eprintln!(
        "xtask: WARNING: the RustSec advisory database cannot be fetched from here and no \
         offline copy was given; advisories are NOT checked in this run (licenses, bans and \
         sources are). Give one with --advisory-db PATH or {ADVISORY_DB_VAR}=PATH (a git \
         bundle or repository of github.com/rustsec/advisory-db)."
    );
    sh(cargo().args(["deny", "--offline", "check", "licenses", "bans", "sources"]))
}

/// Clones the offline database `source` into `target/advisory-dbs` and
/// writes `target/deny-offline.toml`: `deny.toml` with its `db-path`
/// pointing there. Prints the snapshot's date.
fn offline_config(source: &Path) -> Result<PathBuf, String> {
    if !source.exists() {
        return Err(format!(
            "the offline advisory database {} does not exist",
            source.display()
        ));
    }
    let root = project_root();
    let dbs = root.join("target").join("advisory-dbs");
    let db = dbs.join(DEFAULT_DB_DIR);
    if db.exists() {
        std::fs::remove_dir_all(&db).map_err(|e| format!("removing {}: {e}", db.display()))?;
    }
    std::fs::create_dir_all(&dbs).map_err(|e| format!("creating {}: {e}", dbs.display()))?;
    sh(Command::new("git")
        .args(["clone", "--quiet", "--no-checkout"])
        .arg(source)
        .arg(&db))?;
    sh(Command::new("git")
        .arg("-C")
        .arg(&db)
        .args(["checkout", "--quiet", "--detach", "HEAD"]))?;
    let date = Command::new("git")
        .arg("-C")
        .arg(&db)
        .args(["show", "-s", "--format=%ct %cs %h", "HEAD"])
        .output()
        .map_err(|e| format!("reading the snapshot's date: {e}"))?;
    let date = String::from_utf8_lossy(&date.stdout).trim().to_owned();
    let mut fields = date.split(' ');
    let (Some(epoch), Some(date), Some(commit)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(format!("{} has no commit to date it by", source.display()));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let age_days = now.saturating_sub(epoch.parse().unwrap_or(now)) / 86_400;
    eprintln!(
        "xtask: the live RustSec database cannot be fetched; checking advisories against the \
         offline snapshot of {date} (commit {commit}), {age_days} days old, from {}",
        source.display()
    );
    if age_days > 90 {
        eprintln!(
            "xtask: WARNING: that snapshot is over 90 days old: advisories published since \
             {date} are not checked. Refresh it where GitHub is reachable."
        );
    }
    let deny = root.join("deny.toml");
    let text =
        std::fs::read_to_string(&deny).map_err(|e| format!("reading {}: {e}", deny.display()))?;
    let header = "[advisories]\n";
    let at = text
        .find(header)
        .ok_or_else(|| format!("{} has no [advisories] table", deny.display()))?
        + header.len();
    // cargo-deny dates a fresh clone by its checkout, not by the
    // snapshot's commit, so its own staleness limit would not see the age
    // of the data; the age is judged above, from the commit date.
    let config = format!(
        "{}db-path = {:?}\nmaximum-db-staleness = \"P3650D\"\n{}",
        &text[..at],
        dbs.display().to_string(),
        &text[at..]
    );
    let path = root.join("target").join("deny-offline.toml");
    std::fs::write(&path, config).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Runs `cargo test`, passing its output through, and adds up the
/// `test result:` lines of every test binary.
fn sh_counting_tests(cmd: &mut Command) -> Result<Totals, String> {
    eprintln!("$ {}", crate::describe(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start cargo test: {e}"))?;
    let mut totals = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(|e| format!("reading cargo test output: {e}"))?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                totals.passed += count(rest, " passed");
                totals.failed += count(rest, " failed");
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo test: {e}"))?;
    if status.success() {
        Ok(totals)
    } else {
        Err(format!("cargo test failed: {status}"))
    }
}

/// The number before `label` in `ok. 38 passed; 0 failed; ...`.
fn count(summary: &str, label: &str) -> u64 {
    summary
        .split(['.', ';'])
        .find_map(|part| part.trim().strip_suffix(label.trim()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
