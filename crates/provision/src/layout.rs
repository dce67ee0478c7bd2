//! Every path `provision` reads or writes: the CA folder's files, an
//! identity's three files, the broker folder. The original design's names
//! (`root_cert/root_ca_cert.pem`, `root_cert/root_ca.key`,
//! `backend_certs/NAME.key`, `NAME_csr.pem`, `NAME_cert.pem`) are spelled
//! here and nowhere else.

use std::path::{Path, PathBuf};

/// The CA folder unless told otherwise.
pub const DEFAULT_CA_DIR: &str = "root_cert";
/// Where identities go unless told otherwise.
pub const DEFAULT_IDENTITY_DIR: &str = "backend_certs";
/// Where `broker-config` writes unless told otherwise.
pub const DEFAULT_BROKER_DIR: &str = "broker";
/// The default CA certificate, for commands that only read it.
pub const DEFAULT_CA_CERT: &str = "root_cert/root_ca_cert.pem";

/// The CA certificate's file name.
pub const CA_CERT: &str = "root_ca_cert.pem";
/// The CA key's file name.
pub const CA_KEY: &str = "root_ca.key";
/// The stem no identity may take: it would be the CA's own files.
pub const CA_STEM: &str = "root_ca";
/// The intermediate CA's certificate (`init-ca --intermediate`): when it
/// is there, it signs everything (certificates, CRLs) and the root key may
/// be offline; the root certificate stays the trust anchor.
pub const INTERMEDIATE_CERT: &str = "intermediate_ca_cert.pem";
/// The intermediate CA's key.
pub const INTERMEDIATE_KEY: &str = "intermediate_ca.key";
/// The inventory database (SQLite) in the CA folder.
pub const INVENTORY_DB: &str = "inventory.db";
/// The inventory of earlier versions, one JSON record per line; imported
/// once into the database.
pub const INVENTORY_JSONL: &str = "inventory.jsonl";
/// Names the PostgreSQL inventory (without a password) when the CA uses
/// one, so that a command run without the URL is refused.
pub const INVENTORY_URL: &str = "inventory.url";
/// The CRL's file name.
pub const CRL: &str = "crl.pem";
/// The CRL counter of earlier versions (the database keeps it now).
pub const CRL_NUMBER: &str = "crl_number";
/// The CA folder's lock file.
pub const LOCK: &str = ".lock";
/// Where `init-ca --force` moves a replaced CA.
pub const ARCHIVE: &str = "archive";

/// What moves into the archive when a CA is replaced: the keys, the
/// certificates (root and intermediate), the CRL and what an earlier
/// version kept. The inventory's database stays in place (other processes
/// may have it open): its records are exported into the archive as
/// `inventory.jsonl` and removed.
pub const CA_FILES: [&str; 8] = [
    CA_KEY,
    CA_CERT,
    INTERMEDIATE_KEY,
    INTERMEDIATE_CERT,
    INVENTORY_JSONL,
    "inventory.jsonl.imported",
    CRL,
    CRL_NUMBER,
];

/// What moves into the archive when only the intermediate is replaced
/// (`init-ca --intermediate --force`).
pub const INTERMEDIATE_FILES: [&str; 2] = [INTERMEDIATE_KEY, INTERMEDIATE_CERT];

/// The three files of an identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IdentityPaths {
    /// `NAME.key`.
    pub key: PathBuf,
    /// `NAME_csr.pem`.
    pub csr: PathBuf,
    /// `NAME_cert.pem`.
    pub cert: PathBuf,
}

impl IdentityPaths {
    /// The original layout's file names for `name` in `out`.
    pub fn new(out: &Path, name: &str) -> Self {
        Self {
            key: out.join(format!("{name}.key")),
            csr: out.join(format!("{name}_csr.pem")),
            cert: out.join(format!("{name}_cert.pem")),
        }
    }
}

/// The certificate file for a CSR file: `dev_csr.pem` → `dev_cert.pem`;
/// anything else → `<stem>_cert.pem`.
pub fn cert_for_csr(csr: &Path) -> PathBuf {
    let name = csr
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix("_csr.pem")
        .or_else(|| name.strip_suffix(".pem"))
        .or_else(|| name.strip_suffix(".csr"))
        .unwrap_or(&name);
    csr.with_file_name(format!("{stem}_cert.pem"))
}

/// The broker plugin's file name (`crates/mosquitto-plugin`).
pub const PLUGIN_FILE: &str = "libmqtt_mtls_auth.so";

/// The files of a broker folder (`broker-config`'s output).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BrokerPaths {
    /// `mosquitto.conf`.
    pub config: PathBuf,
    /// `ca.pem`: the CA certificate clients are checked against.
    pub ca: PathBuf,
    /// `server.pem`.
    pub cert: PathBuf,
    /// `server.key` (owned by the broker's user when we are root).
    pub key: PathBuf,
    /// `crl.pem`.
    pub crl: PathBuf,
    /// `acl`: the topic rules of each role as Mosquitto's `acl_file` (only
    /// for a broker without the plugin: `broker-config --without-plugin`).
    pub acl: PathBuf,
    /// `libmqtt_mtls_auth.so`: the broker plugin, copied here so that the
    /// broker's user can read it.
    pub plugin: PathBuf,
    /// `rules`: the plugin's rules file (each role's topic rules).
    pub rules: PathBuf,
    /// `enroll.rules`: the enrollment broker's (claims and the CA service
    /// only).
    pub enroll_rules: PathBuf,
    /// `enroll.conf`: the enrollment broker, where claims connect (when
    /// asked for).
    pub enroll_config: PathBuf,
    /// `enroll.acl`: its topic rules (claims and the CA service only).
    pub enroll_acl: PathBuf,
}

impl BrokerPaths {
    /// The files in `out`.
    pub fn new(out: &Path) -> Self {
        Self {
            config: out.join("mosquitto.conf"),
            ca: out.join("ca.pem"),
            cert: out.join("server.pem"),
            key: out.join("server.key"),
            crl: out.join("crl.pem"),
            acl: out.join("acl"),
            plugin: out.join(PLUGIN_FILE),
            rules: out.join("rules"),
            enroll_rules: out.join("enroll.rules"),
            enroll_config: out.join("enroll.conf"),
            enroll_acl: out.join("enroll.acl"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_names() {
        let p = IdentityPaths::new(Path::new(DEFAULT_IDENTITY_DIR), "client1");
        assert_eq!(p.key, Path::new("backend_certs/client1.key"));
        assert_eq!(p.csr, Path::new("backend_certs/client1_csr.pem"));
        assert_eq!(p.cert, Path::new("backend_certs/client1_cert.pem"));
        assert_eq!(
            Path::new(DEFAULT_CA_DIR).join(CA_CERT),
            Path::new(DEFAULT_CA_CERT)
        );
        assert_eq!(
            cert_for_csr(Path::new("d/dev_csr.pem")),
            Path::new("d/dev_cert.pem")
        );
        assert_eq!(cert_for_csr(Path::new("x.csr")), Path::new("x_cert.pem"));
    }
}
