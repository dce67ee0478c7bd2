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
        let mut todo = vec![src.clone()];
        while let Some(dir) = todo.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    todo.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
                    // Doc and line comments may name anything.
                    let code = text
                        .lines()
                        .filter(|l| !l.trim_start().starts_with("//"))
                        .any(|l| l.contains(needle));
                    if code {
                        found.insert(path.strip_prefix(&src).unwrap().display().to_string());
                    }
                }
            }
        }
        found
    }
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

#[test]
fn pki_core_does_no_io_and_has_no_async_or_network_dependency() {
    let g = graph();
    let closure = g.closure("pki-core");
    let bad: Vec<_> = ASYNC_OR_NETWORK
        .iter()
        .filter(|c| closure.contains(**c))
        .collect();
    assert!(bad.is_empty(), "pki-core pulls in {bad:?}");
    let ours: Vec<_> = closure.intersection(&g.members).collect();
    assert!(ours.is_empty(), "pki-core depends on our {ours:?}");
    for needle in [
        "std::fs",
        "std::net::Tcp",
        "std::net::Udp",
        "File::",
        "std::process",
        "std::env::var",
        "stdin()",
    ] {
        let files = g.sources_mentioning("pki-core", needle);
        assert!(files.is_empty(), "pki-core's {files:?} use {needle}");
    }
}

#[test]
fn only_mqtt_tls_knows_the_mqtt_client() {
    let g = graph();
    assert_eq!(
        g.direct_users("rumqttc-mtls"),
        BTreeSet::from(["mqtt-tls".to_owned()]),
        "only mqtt-tls may depend on the MQTT client"
    );
    assert!(
        !g.normal.contains_key("rumqttc"),
        "upstream rumqttc is in the graph (our fork replaces it)"
    );
    for member in &g.members {
        if member == "mqtt-tls" || member == "rumqttc-mtls" {
            continue;
        }
        for path in ["rumqttc::", "rumqttc_mtls::", "use rumqttc"] {
            let files = g.sources_mentioning(member, path);
            assert!(files.is_empty(), "{member}'s {files:?} use {path}");
        }
    }
}

#[test]
fn rustls_only_in_mqtt_tls_and_the_ingest_https_listener_with_aws_lc_rs() {
    let g = graph();
    let users = g.direct_users("rustls");
    let allowed = BTreeSet::from(["mqtt-tls".to_owned(), "mqtt-ingest".to_owned()]);
    assert!(
        users.is_subset(&allowed),
        "rustls used directly by {:?}",
        users.difference(&allowed).collect::<Vec<_>>()
    );
    // In the ingest, only the HTTPS listener.
    let files = g.sources_mentioning("mqtt-ingest", "rustls");
    assert_eq!(
        files,
        BTreeSet::from(["https.rs".to_owned()]),
        "rustls outside the ingest's HTTPS listener"
    );
    // One provider: aws-lc-rs, never ring.
    let features = &g.features["rustls"];
    assert!(
        features.contains("aws_lc_rs"),
        "rustls features: {features:?}"
    );
    assert!(!features.contains("ring"), "rustls features: {features:?}");
    for member in &g.members {
        let closure = g.closure(member);
        assert!(!closure.contains("ring"), "{member} pulls in ring");
    }
    for member in ["mqtt-tls", "mqtt-ingest"] {
        let files = g.sources_mentioning(member, "builder_with_provider");
        assert!(
            !files.is_empty(),
            "{member} builds no rustls config with an explicit provider"
        );
        let defaults = g.sources_mentioning(member, "ClientConfig::builder()");
        let server_defaults = g.sources_mentioning(member, "ServerConfig::builder()");
        assert!(
            defaults.is_empty() && server_defaults.is_empty(),
            "{member} uses the process-wide default provider in {defaults:?} {server_defaults:?}"
        );
    }
}

#[test]
fn xtask_depends_on_none_of_our_crates() {
    let g = graph();
    let ours: Vec<_> = g.normal["xtask"].intersection(&g.members).collect();
    assert!(ours.is_empty(), "xtask depends on {ours:?}");
}

/// The checks above can fail: a graph with a forbidden edge is caught.
#[test]
fn the_checks_catch_a_forbidden_edge() {
    let mut g = graph();
    assert!(g.closure("mqtt-tls").contains("rustls"));
    assert!(g.closure("provision").contains("pki-core"));
    g.extra_edges
        .insert("pki-core".to_owned(), BTreeSet::from(["tokio".to_owned()]));
    assert!(g.closure("pki-core").contains("tokio"));
    g.normal
        .get_mut("provision")
        .unwrap()
        .insert("rumqttc-mtls".to_owned());
    assert!(g.direct_users("rumqttc-mtls").contains("provision"));
}
