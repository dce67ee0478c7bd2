//! The dependency invariants of `docs/ARCHITECTURE.md`, checked over
//! `cargo metadata` (the resolved graph, features included) and the
//! sources, so that a violation fails CI instead of making the document
//! false. Self-contained: it needs only cargo.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The resolved workspace: package names by id, normal (shipped, not dev
/// or build) dependencies by package name, enabled features by name.
struct Graph {
    members: BTreeSet<String>,
    normal: BTreeMap<String, BTreeSet<String>>,
    features: BTreeMap<String, BTreeSet<String>>,
    manifest_dirs: BTreeMap<String, PathBuf>,
    /// A closure to use instead of cargo's, to show a check can fail.
    extra_edges: BTreeMap<String, BTreeSet<String>>,
    /// Source files added to a package (name, text), to show a check can
    /// fail.
    extra_sources: BTreeMap<String, Vec<(String, String)>>,
}

/// cargo, in the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    cmd
}

fn graph() -> Graph {
    // The graph for this machine's platform (dependencies of other
    // platforms, such as a wasm-only crate, are not built here).
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .expect("rustc runs");
    let host = String::from_utf8(rustc.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let out = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
        ])
        .arg(&host)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names = BTreeMap::new();
    let mut manifest_dirs = BTreeMap::new();
    for p in meta["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap().to_owned();
        names.insert(p["id"].as_str().unwrap().to_owned(), name.clone());
        let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap());
        manifest_dirs.insert(name, manifest.parent().unwrap().to_owned());
    }
    let members = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| names[id.as_str().unwrap()].clone())
        .collect();
    let mut normal = BTreeMap::new();
    let mut features = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let name = names[node["id"].as_str().unwrap()].clone();
        let deps: BTreeSet<String> = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| names[d["pkg"].as_str().unwrap()].clone())
            .collect();
        normal
            .entry(name.clone())
            .or_insert_with(BTreeSet::new)
            .extend(deps);
        let enabled = node["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned());
        features
            .entry(name)
            .or_insert_with(BTreeSet::new)
            .extend(enabled);
    }
    Graph {
        members,
        normal,
        features,
        manifest_dirs,
        extra_edges: BTreeMap::new(),
        extra_sources: BTreeMap::new(),
    }
}

impl Graph {
    /// Everything `package` pulls in at run time on this platform, itself
    /// excluded: `cargo tree -e normal`, which (unlike the metadata's
    /// unified graph) resolves features per package as a build does.
    fn closure(&self, package: &str) -> BTreeSet<String> {
        if let Some(extra) = self.extra_edges.get(package) {
            return extra.clone();
        }
        let out = cargo()
            .args([
                "tree", "--locked", "-e", "normal", "--prefix", "none", "-f", "{p}", "-p",
            ])
            .arg(package)
            .output()
            .expect("cargo tree runs");
        assert!(
            out.status.success(),
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .filter(|name| name != package)
            .collect()
    }

    /// The workspace members that depend directly on `dependency`.
    fn direct_users(&self, dependency: &str) -> BTreeSet<String> {
        self.members
            .iter()
            .filter(|m| self.normal.get(*m).is_some_and(|d| d.contains(dependency)))
            .cloned()
            .collect()
    }

    /// The `.rs` files under `package`'s `src/` whose code (not comments,
    /// not `#[cfg(test)]` modules, which by convention end a file) mentions
    /// `needle`.
    fn sources_mentioning(&self, package: &str, needle: &str) -> BTreeSet<String> {
        let src = self.manifest_dirs[package].join("src");
        let mut found = BTreeSet::new();
        for (name, text) in self.extra_sources.get(package).into_iter().flatten() {
            if code_mentions(text, needle) {
                found.insert(name.clone());
            }
        }
        let mut todo = vec![src.clone()];
        while let Some(dir) = todo.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    todo.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    if code_mentions(&text, needle) {
                        found.insert(path.strip_prefix(&src).unwrap().display().to_string());
                    }
                }
            }
        }
        found
    }
}

/// Whether `text`'s code mentions `needle`: not its comments (which may
/// name anything), not its `#[cfg(test)]` module (which by convention ends
/// a file).
fn code_mentions(text: &str, needle: &str) -> bool {
    text.split("#[cfg(test)]")
        .next()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .any(|l| l.contains(needle))
}

/// Crates that bring an async runtime, sockets or a network protocol.
const ASYNC_OR_NETWORK: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "futures",
    "futures-util",
    "futures-core",
    "async-trait",
    "hyper",
    "h2",
    "http",
    "reqwest",
    "rustls",
    "tokio-rustls",
    "rumqttc",
    "rumqttc-mtls",
    "sqlx",
    "axum",
];

/// `pki-core` does no I/O and has no async or network dependency.
fn pki_core_violations(g: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    let closure = g.closure("pki-core");
    for c in ASYNC_OR_NETWORK.iter().filter(|c| closure.contains(**c)) {
        found.push(format!("pki-core pulls in {c}"));
    }
    for ours in closure.intersection(&g.members) {
        found.push(format!("pki-core depends on our {ours}"));
    }
    for needle in [
        "std::fs",
        "std::net::Tcp",
        "std::net::Udp",
        "File::",
        "std::process",
        "std::env::var",
        "stdin()",
    ] {
        for file in g.sources_mentioning("pki-core", needle) {
            found.push(format!("pki-core's {file} uses {needle}"));
        }
    }
    found
}

/// Only `mqtt-tls` knows the MQTT client (our fork; upstream is not in the
/// graph at all).
fn mqtt_client_violations(g: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for user in g.direct_users("rumqttc-mtls") {
        if user != "mqtt-tls" {
            found.push(format!("{user} depends on rumqttc-mtls"));
        }
    }
    if g.normal.contains_key("rumqttc") {
        found.push("upstream rumqttc is in the graph".to_owned());
    }
    for member in &g.members {
        if member == "mqtt-tls" || member == "rumqttc-mtls" {
            continue;
        }
        for path in ["rumqttc::", "rumqttc_mtls::", "use rumqttc"] {
            for file in g.sources_mentioning(member, path) {
                found.push(format!("{member}'s {file} uses {path}"));
            }
        }
    }
    found
}

/// rustls only in `mqtt-tls` and the ingest's HTTPS listener, both with an
/// explicit aws-lc-rs provider; no `ring` anywhere.
fn rustls_violations(g: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for user in g.direct_users("rustls") {
        if user != "mqtt-tls" && user != "mqtt-ingest" {
            found.push(format!("{user} depends on rustls"));
        }
    }
    for member in &g.members {
        // The fork's TLS transport is part of the MQTT client, which only
        // mqtt-tls knows.
        let allowed: &[&str] = match member.as_str() {
            "mqtt-tls" | "rumqttc-mtls" => continue,
            "mqtt-ingest" => &["https.rs"],
            // The empty stand-in for crates.io's webpki-roots names the
            // type of its (empty) list.
            "webpki-roots" => &["lib.rs"],
            _ => &[],
        };
        for path in ["rustls::", "use rustls", "tokio_rustls", "rustls_pki_types"] {
            for file in g.sources_mentioning(member, path) {
                if !allowed.contains(&file.as_str()) {
                    found.push(format!("{member}'s {file} uses {path}"));
                }
            }
        }
    }
    let features = &g.features["rustls"];
    if !features.contains("aws_lc_rs") || features.contains("ring") {
        found.push(format!("rustls is built with {features:?}"));
    }
    // Database TLS: sqlx's rustls backend on aws-lc-rs, its bundled roots
    // replaced by the workspace's empty set (only `sslrootcert` trusted).
    if !g
        .features
        .get("sqlx-core")
        .is_some_and(|f| f.contains("_tls-rustls-aws-lc-rs"))
    {
        found.push("sqlx is built without TLS on aws-lc-rs".to_owned());
    }
    // The lock file's webpki-roots must be the path crate (no registry
    // source): crates.io's carries Mozilla's roots.
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .unwrap_or_default();
    for package in lock.split("[[package]]") {
        if package.contains("name = \"webpki-roots\"") && package.contains("source = ") {
            found.push("webpki-roots comes from a registry, not the empty patch".to_owned());
        }
    }
    for member in &g.members {
        if g.closure(member).contains("ring") {
            found.push(format!("{member} pulls in ring"));
        }
    }
    for member in ["mqtt-tls", "mqtt-ingest"] {
        if g.sources_mentioning(member, "builder_with_provider")
            .is_empty()
        {
            found.push(format!(
                "{member} builds no rustls config with an explicit provider"
            ));
        }
        for default in ["ClientConfig::builder()", "ServerConfig::builder()"] {
            for file in g.sources_mentioning(member, default) {
                found.push(format!("{member}'s {file} uses the default provider"));
            }
        }
    }
    found
}

/// The one place `unsafe` may appear: the broker plugin's FFI module.
const FFI_MODULE: (&str, &str) = ("mosquitto-plugin", "ffi.rs");

/// `unsafe` only in [`FFI_MODULE`]; every other member forbids it through
/// the workspace's lints.
fn unsafe_violations(g: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for member in &g.members {
        for needle in [
            "unsafe {",
            "unsafe fn",
            "unsafe extern",
            "unsafe impl",
            "unsafe(",
        ] {
            for file in g.sources_mentioning(member, needle) {
                if (member.as_str(), file.as_str()) != FFI_MODULE {
                    found.push(format!("{member}: {file} uses `{needle}`"));
                }
            }
        }
        if member == FFI_MODULE.0 {
            continue;
        }
        let manifest = g.manifest_dirs[member].join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let inherits = text
            .split("[lints]")
            .nth(1)
            .is_some_and(|rest| rest.trim_start().starts_with("workspace = true"))
            || text.contains("unsafe_code = \"forbid\"");
        if !inherits && !g.extra_sources.contains_key(member) {
            found.push(format!(
                "{member} forbids no unsafe code (the workspace's lints, or unsafe_code = \"forbid\")"
            ));
        }
    }
    found.sort();
    found.dedup();
    found
}

/// `xtask` depends on none of our crates.
fn xtask_violations(g: &Graph) -> Vec<String> {
    g.normal["xtask"]
        .intersection(&g.members)
        .map(|ours| format!("xtask depends on {ours}"))
        .collect()
}

#[test]
fn pki_core_does_no_io_and_has_no_async_or_network_dependency() {
    let found = pki_core_violations(&graph());
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn only_mqtt_tls_knows_the_mqtt_client() {
    let found = mqtt_client_violations(&graph());
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn rustls_only_in_mqtt_tls_and_the_ingest_https_listener_with_aws_lc_rs() {
    let found = rustls_violations(&graph());
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn unsafe_only_in_the_broker_plugins_ffi_module() {
    let found = unsafe_violations(&graph());
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn xtask_depends_on_none_of_our_crates() {
    let found = xtask_violations(&graph());
    assert!(found.is_empty(), "{found:#?}");
}

/// Each check above fails on a graph that breaks its invariant: the
/// checks are not vacuous.
#[test]
fn each_check_catches_a_broken_invariant() {
    let mut g = graph();
    assert!(g.closure("mqtt-tls").contains("rustls"));
    g.extra_edges
        .insert("pki-core".to_owned(), BTreeSet::from(["tokio".to_owned()]));
    g.extra_sources
        .entry("pki-core".to_owned())
        .or_default()
        .push((
            "planted.rs".to_owned(),
            "fn f() { let _ = std::fs::read(\"x\"); }".to_owned(),
        ));
    g.normal
        .get_mut("provision")
        .unwrap()
        .extend(["rumqttc-mtls".to_owned(), "rustls".to_owned()]);
    g.extra_sources
        .entry("mqtt-ingest".to_owned())
        .or_default()
        .push((
            "api.rs".to_owned(),
            "use tokio_rustls::rustls::ServerConfig;".to_owned(),
        ));
    g.normal
        .get_mut("xtask")
        .unwrap()
        .insert("pki-core".to_owned());

    let found = pki_core_violations(&g);
    assert!(
        found.iter().any(|v| v.contains("pulls in tokio")),
        "{found:?}"
    );
    assert!(found.iter().any(|v| v.contains("planted.rs")), "{found:?}");
    let found = mqtt_client_violations(&g);
    assert!(
        found.iter().any(|v| v.starts_with("provision")),
        "{found:?}"
    );
    let found = rustls_violations(&g);
    assert!(
        found.iter().any(|v| v.starts_with("provision depends")),
        "{found:?}"
    );
    assert!(found.iter().any(|v| v.contains("api.rs")), "{found:?}");
    let found = xtask_violations(&g);
    assert!(!found.is_empty(), "{found:?}");
    let mut g = graph();
    g.extra_sources
        .entry("mqtt-tls".to_owned())
        .or_default()
        .push((
            "fast.rs".to_owned(),
            "fn f(p: *const u8) -> u8 { unsafe { *p } }".to_owned(),
        ));
    let found = unsafe_violations(&g);
    assert!(
        found.iter().any(|v| v.contains("mqtt-tls: fast.rs")),
        "{found:?}"
    );
}
