//! `provision audit`: the checks a fleet operator runs daily, each finding
//! named with what to do.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pki_core::{Certificate, Crl, Serial, Timestamp};
use serde::Serialize;

use crate::error::Result;
use crate::inventory::{Filter, Inventory, Status};

/// One thing the operator should look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "check")]
pub enum Finding {
    /// A valid certificate ends within the window.
    Expiring {
        /// Its name.
        name: String,
        /// Its serial.
        serial: String,
        /// Its end.
        not_after: String,
    },
    /// The CA's own certificate ends within the window.
    CaExpiring {
        /// Its end.
        not_after: String,
    },
    /// The CRL is missing, unreadable, or past half its lifetime.
    CrlDue {
        /// The CRL.
        path: PathBuf,
        /// Its nextUpdate, when it has one.
        next_update: Option<String>,
    },
    /// A revoked certificate is still in place where it was issued.
    RevokedStillDeployed {
        /// Its name.
        name: String,
        /// Its serial.
        serial: String,
        /// Where it still is.
        path: PathBuf,
    },
    /// Several valid certificates for one name (the MQTT username).
    DuplicateName {
        /// The name.
        name: String,
        /// Their serials, oldest first.
        serials: Vec<String>,
    },
    /// A private key others can read.
    KeyPermissions {
        /// The key.
        path: PathBuf,
        /// Its mode.
        mode: String,
    },
    /// A valid certificate the inventory records is not on disk.
    MissingFiles {
        /// Its name.
        name: String,
        /// Where it should be.
        path: PathBuf,
    },
    /// A broker folder of this CA whose broker does not load the plugin
    /// (`broker-config --without-plugin`, or a configuration from before
    /// it): Mosquitto's `acl_file` never checks SUBSCRIBE.
    BrokerWithoutPlugin {
        /// Its `mosquitto.conf` (or `enroll.conf`).
        config: PathBuf,
    },
    /// A certificate of this CA on disk that the inventory does not have.
    Unrecorded {
        /// The file.
        path: PathBuf,
        /// Its serial.
        serial: String,
    },
}

/// What [`run`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Valid certificates looked at.
    pub valid: usize,
    /// Revoked certificates looked at.
    pub revoked: usize,
    /// Everything found; empty when all is well.
    pub findings: Vec<Finding>,
}

/// Runs every check: expiry within `within`, the CA's, the CRL's, revoked
/// certificates still deployed, duplicate names, key permissions, broker
/// folders without the plugin, and the inventory against the files.
pub fn run(inventory: &Inventory, within: Duration) -> Result<Report> {
    let now = SystemTime::now();
    let horizon = now + within;
    let ca_dir = inventory.ca_dir();
    let mut report = Report::default();
    let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
    let mut folders: HashSet<PathBuf> = HashSet::new();
    let mut known: HashSet<Serial> = HashSet::new();
    inventory.visit(&Filter::default(), |r| {
        known.insert(r.serial.clone());
        // The takeover identities `revoke` makes have no files.
        let has_files = r.cert_path.extension().is_some_and(|e| e == "pem");
        match r.status {
            // A takeover identity left valid by an interrupted `revoke`
            // lives ten minutes and has no files: not a duplicate or an
            // expiry to act on.
            Status::Valid if !has_files => {}
            Status::Valid => {
                report.valid += 1;
                by_name
                    .entry(r.common_name.clone())
                    .or_default()
                    .push(r.serial.to_string());
                if r.not_after.0 < horizon {
                    report.findings.push(Finding::Expiring {
                        name: r.common_name.clone(),
                        serial: r.serial.to_string(),
                        not_after: r.not_after.to_string(),
                    });
                }
                if has_files {
                    if let Some(folder) = r.cert_path.parent() {
                        folders.insert(folder.to_owned());
                    }
                    if !r.cert_path.exists() {
                        report.findings.push(Finding::MissingFiles {
                            name: r.common_name.clone(),
                            path: r.cert_path.clone(),
                        });
                    } else if let Some(key) = key_of(&r.cert_path)
                        && let Some(finding) = loose_key(&key)
                    {
                        report.findings.push(finding);
                    }
                }
            }
            Status::Revoked { .. } => {
                report.revoked += 1;
                if has_files && on_disk_serial(&r.cert_path).as_ref() == Some(&r.serial) {
                    report.findings.push(Finding::RevokedStillDeployed {
                        name: r.common_name.clone(),
                        serial: r.serial.to_string(),
                        path: r.cert_path.clone(),
                    });
                }
            }
        }
        Ok(())
    })?;
    let mut duplicates: Vec<_> = by_name
        .into_iter()
        .filter(|(_, serials)| serials.len() > 1)
        .collect();
    duplicates.sort();
    for (name, serials) in duplicates {
        report
            .findings
            .push(Finding::DuplicateName { name, serials });
    }
    // The CA itself: the root, and the intermediate that signs when there
    // is one.
    let read_cert = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| Certificate::from_pem(&t).ok())
    };
    let root = read_cert(&ca_dir.cert_path());
    let signer = read_cert(&ca_dir.signer_cert_path());
    if let Some(end) = root.iter().chain(&signer).map(Certificate::not_after).min()
        && end < horizon
    {
        report.findings.push(Finding::CaExpiring {
            not_after: Timestamp(end).to_string(),
        });
    }
    for key in [ca_dir.key_path(), ca_dir.intermediate_key_path()] {
        if let Some(finding) = loose_key(&key) {
            report.findings.push(finding);
        }
    }
    if crate::ops::crl_due(&ca_dir.crl_path(), now) {
        let next_update = std::fs::read_to_string(ca_dir.crl_path())
            .ok()
            .and_then(|t| Crl::from_pem(&t).ok())
            .and_then(|c| c.next_update())
            .map(|t| Timestamp(t).to_string());
        report.findings.push(Finding::CrlDue {
            path: ca_dir.crl_path(),
            next_update,
        });
    }
    // Broker folders whose broker enforces the rules without the plugin.
    for config in inventory.broker_configs()? {
        let enroll = config.with_file_name("enroll.conf");
        for config in [config, enroll] {
            if let Ok(text) = std::fs::read_to_string(&config)
                && text.starts_with("# Generated by `provision broker-config`")
                && !crate::broker::loads_plugin(&text)
            {
                report
                    .findings
                    .push(Finding::BrokerWithoutPlugin { config });
            }
        }
    }
    // Certificates of this CA (the root's or the intermediate's) in the
    // identity folders that the inventory does not have.
    let mut folders: Vec<PathBuf> = folders.into_iter().collect();
    folders.sort();
    for folder in folders {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("_cert.pem"))
            .collect();
        files.sort();
        for path in files {
            let Some(cert) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| Certificate::from_pem(&t).ok())
            else {
                continue;
            };
            let ours = root
                .iter()
                .chain(&signer)
                .any(|ca| crate::ops::signed_by(&cert, ca));
            if ours && !known.contains(&cert.serial()) {
                report.findings.push(Finding::Unrecorded {
                    serial: cert.serial().to_string(),
                    path,
                });
            }
        }
    }
    Ok(report)
}

/// `NAME_cert.pem` → `NAME.key` beside it.
fn key_of(cert: &Path) -> Option<PathBuf> {
    let name = cert.file_name()?.to_str()?.strip_suffix("_cert.pem")?;
    Some(cert.with_file_name(format!("{name}.key")))
}

fn loose_key(key: &Path) -> Option<Finding> {
    let mode = std::fs::metadata(key).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| Finding::KeyPermissions {
        path: key.to_owned(),
        mode: format!("{mode:04o}"),
    })
}

fn on_disk_serial(cert: &Path) -> Option<Serial> {
    let text = std::fs::read_to_string(cert).ok()?;
    Some(Certificate::from_pem(&text).ok()?.serial())
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Expiring {
                name,
                serial,
                not_after,
            } => write!(
                f,
                "{name}: certificate {serial} ends {not_after} (renew: provision issue ... --force, or the fleet)"
            ),
            Self::CaExpiring { not_after } => {
                write!(
                    f,
                    "the CA certificate ends {not_after}: plan its replacement"
                )
            }
            Self::CrlDue { path, next_update } => write!(
                f,
                "{}: due for re-signing (next update {}): provision crl --if-due",
                path.display(),
                next_update.as_deref().unwrap_or("none")
            ),
            Self::RevokedStillDeployed { name, serial, path } => write!(
                f,
                "{name}: revoked certificate {serial} still at {}: remove it",
                path.display()
            ),
            Self::DuplicateName { name, serials } => write!(
                f,
                "{name}: {} valid certificates ({}); one name, one certificate outside a renewal",
                serials.len(),
                serials.join(", ")
            ),
            Self::KeyPermissions { path, mode } => {
                write!(
                    f,
                    "{}: mode {mode}, readable by others: chmod 600",
                    path.display()
                )
            }
            Self::MissingFiles { name, path } => {
                write!(f, "{name}: {} is missing", path.display())
            }
            Self::BrokerWithoutPlugin { config } => write!(
                f,
                "{}: the broker runs without the plugin: its acl_file never checks SUBSCRIBE, so \
                 any certificate holder can join a service's shared subscription and take its \
                 messages, and a revoked device stays connected until the broker restarts \
                 (provision broker-config --force, without --without-plugin)",
                config.display()
            ),
            Self::Unrecorded { path, serial } => write!(
                f,
                "{}: certificate {serial} of this CA is not in the inventory",
                path.display()
            ),
        }
    }
}
