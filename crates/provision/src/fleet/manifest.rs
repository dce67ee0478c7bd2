//! The manifest (`fleet.toml`): its sections, and reading and checking
//! it into the requests of a run.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use pki_core::{DnsName, KeyType, Profile};
use serde::Deserialize;

use crate::ca_folder::{CaDir, refuse_ca_folder};
use crate::error::{Error, Result};
use crate::files::{Name, read_text};
use crate::layout::{DEFAULT_CA_DIR, DEFAULT_IDENTITY_DIR};
use crate::ops::{CsrRequest, IssueRequest, SubjectOptions};
use crate::roles::{AclPolicy, Role};

use super::RunOptions;

/// The most identities one manifest may ask for: a million devices take
/// minutes and 3 million files; ten million would take hours and is more
/// likely a typo than a plan.
pub const MAX_IDENTITIES: u64 = 1_000_000;

/// A fleet manifest (TOML). Relative paths resolve against its folder.
///
/// ```toml
/// [ca]
/// dir = "root_cert"
/// common_name = "Fleet Root"
/// [[broker]]
/// name = "broker"
/// dns = ["localhost"]
/// ip = ["127.0.0.1"]
/// [[devices]]
/// prefix = "sensor-"
/// count = 10000
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The CA.
    pub ca: CaSection,
    /// Broker (server) identities.
    #[serde(default)]
    pub broker: Vec<BrokerSection>,
    /// Device (client) identities.
    #[serde(default)]
    pub devices: Vec<DeviceSection>,
    /// Service identities (role `service`: the ingest, backends), in the
    /// same form as devices (`prefix` and `count` for several instances,
    /// each with its own identity).
    #[serde(default)]
    pub services: Vec<DeviceSection>,
    /// Reader identities (role `reader`: the ingest's HTTPS API).
    #[serde(default)]
    pub readers: Vec<DeviceSection>,
    /// The topic rules of each role (defaults: devices their own
    /// `devices/{name}/#` and read `fleet/broadcast/#`; services read
    /// `devices/#` and write `fleet/broadcast/#`; readers nothing).
    pub acl: Option<AclPolicy>,
    /// Where identities go unless a section says otherwise; default
    /// `backend_certs/` beside the CA folder.
    pub out: Option<PathBuf>,
}

/// `[ca]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSection {
    /// The CA folder (default `root_cert`).
    #[serde(default = "default_ca_dir")]
    pub dir: PathBuf,
    /// Common name of a new CA.
    pub common_name: Option<String>,
    /// Organization of a new CA.
    pub organization: Option<String>,
    /// Country of a new CA.
    pub country: Option<String>,
    /// Key type of a new CA (`p256` default).
    #[serde(default, deserialize_with = "key_type")]
    pub key_type: Option<KeyType>,
    /// Validity of a new CA in days (3650 default).
    pub days: Option<u32>,
    /// The variable holding the CA key's passphrase.
    pub passphrase_env: Option<String>,
}

/// A key type by its name (`p256`, `rsa2048`, ...), checked as the
/// manifest is read.
pub(super) fn key_type<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<KeyType>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

pub(super) fn default_ca_dir() -> PathBuf {
    PathBuf::from(DEFAULT_CA_DIR)
}

/// `[[broker]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// File-name stem and default common name.
    pub name: Name,
    /// DNS names.
    #[serde(default)]
    pub dns: Vec<String>,
    /// IP addresses.
    #[serde(default)]
    pub ip: Vec<IpAddr>,
    /// Validity in days (365 default).
    pub days: Option<u32>,
    /// Key type (`p256` default).
    #[serde(default, deserialize_with = "key_type")]
    pub key_type: Option<KeyType>,
    /// Output folder.
    pub out: Option<PathBuf>,
    /// Issue a new certificate once the current one has fewer days left
    /// (default: 30, or a third of `days` when that is less).
    pub renew_before_days: Option<u32>,
    /// The largest packet this broker takes from a client, in bytes: what
    /// `provision broker-config --server NAME` writes as Mosquitto's
    /// `max_packet_size` unless told otherwise (default 1 MiB).
    pub max_packet_size: Option<u32>,
}

/// `[[devices]]`: one device (`name`) or a numbered range (`prefix`, `count`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    /// One device's name.
    pub name: Option<Name>,
    /// A range's name prefix: `sensor-` gives `sensor-1`, `sensor-2`, ...
    pub prefix: Option<String>,
    /// How many in the range.
    pub count: Option<u32>,
    /// The first number of the range (default 1).
    pub start: Option<u32>,
    /// Organization in the subject.
    pub organization: Option<String>,
    /// Country in the subject.
    pub country: Option<String>,
    /// Validity in days (365 default).
    pub days: Option<u32>,
    /// Key type (`p256` default).
    #[serde(default, deserialize_with = "key_type")]
    pub key_type: Option<KeyType>,
    /// Output folder.
    pub out: Option<PathBuf>,
    /// Issue a new certificate once the current one has fewer days left
    /// (default: 30, or a third of `days` when that is less).
    pub renew_before_days: Option<u32>,
}

impl Manifest {
    /// Reads a manifest file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&read_text(path)?, path)
    }

    /// Parses manifest text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Manifest {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// A manifest read and checked: every identity it asks for, nothing
/// written yet.
pub(super) struct Prepared {
    pub(super) manifest: Manifest,
    pub(super) ca_dir: CaDir,
    pub(super) requests: Vec<IssueRequest>,
    /// Per request: renew when fewer days than this are left.
    pub(super) renew_before: Vec<Option<u32>>,
    pub(super) names: HashSet<String>,
}

/// The identity folders of `requests` that do not exist: nothing in them to
/// keep, so their identities are not looked up file by file. A run asks
/// under the CA folder's lock, so no other run or `provision issue` can
/// make files there between this look and its decisions.
pub(super) fn new_folders(requests: &[IssueRequest]) -> HashSet<PathBuf> {
    let mut seen: HashSet<&Path> = HashSet::new();
    requests
        .iter()
        .map(|r| r.identity.out.as_path())
        .filter(|out| seen.insert(out))
        .filter(|out| {
            // An empty path is the current folder.
            let folder = if out.as_os_str().is_empty() {
                Path::new(".")
            } else {
                out
            };
            std::fs::symlink_metadata(folder)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        })
        .map(Path::to_path_buf)
        .collect()
}

/// Reads `path` and checks every entry (names, subjects, folders, one
/// identity per name) before anything is written.
pub(super) fn prepare(path: &Path, options: &RunOptions) -> Result<Prepared> {
    let manifest = Manifest::load(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let bad = |reason: String| Error::Manifest {
        path: path.to_owned(),
        reason,
    };
    let ca_dir = CaDir::new(base.join(&manifest.ca.dir))
        .with_inventory_url(options.inventory_url.clone())
        .with_insecure_db(options.insecure_db);
    let default_out = manifest
        .out
        .as_ref()
        .map(|o| base.join(o))
        .unwrap_or_else(|| {
            ca_dir
                .dir()
                .parent()
                .unwrap_or(base)
                .join(DEFAULT_IDENTITY_DIR)
        });

    let mut requests = Vec::new();
    // Per request: renew when fewer days than this are left.
    let mut renew_before: Vec<Option<u32>> = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    for b in &manifest.broker {
        if let Some(bytes) = b.max_packet_size
            && !crate::broker::MAX_PACKET_SIZE_RANGE.contains(&bytes)
        {
            return Err(bad(format!(
                "[[broker]] {}: max_packet_size {bytes} is outside what Mosquitto takes \
                 ({} to {})",
                b.name.as_str(),
                crate::broker::MAX_PACKET_SIZE_RANGE.start(),
                crate::broker::MAX_PACKET_SIZE_RANGE.end()
            )));
        }
        let dns = b
            .dns
            .iter()
            .map(|d| d.parse::<DnsName>())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        requests.push(IssueRequest {
            identity: CsrRequest {
                name: b.name.clone(),
                subject: SubjectOptions::default(),
                key_type: b.key_type.unwrap_or_default(),
                dns,
                ip: b.ip.clone(),
                out: b
                    .out
                    .as_ref()
                    .map_or_else(|| default_out.clone(), |o| base.join(o)),
                force: true,
                token: None,
            },
            profile: Profile::Server,
            days: b.days.unwrap_or(365),
            role: Role::default(),
        });
        renew_before.push(b.renew_before_days);
    }
    let total: u64 = manifest
        .devices
        .iter()
        .chain(&manifest.services)
        .chain(&manifest.readers)
        .map(|d| u64::from(d.count.unwrap_or(1)))
        .sum::<u64>()
        + manifest.broker.len() as u64;
    if total > MAX_IDENTITIES {
        return Err(bad(format!(
            "{total} identities in one manifest; at most {MAX_IDENTITIES} \
             (split the fleet into several manifests and CA runs)"
        )));
    }
    let sections = [
        (&manifest.devices, Role::Device, "devices"),
        (&manifest.services, Role::Service, "services"),
        (&manifest.readers, Role::Reader, "readers"),
    ]
    .into_iter()
    .flat_map(|(sections, role, table)| {
        sections
            .iter()
            .enumerate()
            .map(move |(i, d)| (i, d, role, table))
    });
    for (i, d, role, table) in sections {
        let device_names: Vec<Name> = match (&d.name, &d.prefix, d.count) {
            (Some(name), None, None) => vec![name.clone()],
            (None, Some(prefix), Some(count)) => {
                let start = d.start.unwrap_or(1);
                (start..start.saturating_add(count))
                    .map(|n| Name::new(format!("{prefix}{n}")))
                    .collect::<Result<_>>()
                    .map_err(|e| bad(format!("[[{table}]] entry {}: {e}", i + 1)))?
            }
            _ => {
                return Err(bad(format!(
                    "[[{table}]] entry {}: give either `name`, or `prefix` and `count`",
                    i + 1
                )));
            }
        };
        let subject = SubjectOptions {
            common_name: None,
            organization: d.organization.clone(),
            country: d.country.clone(),
        };
        for name in device_names {
            requests.push(IssueRequest {
                identity: CsrRequest {
                    name,
                    subject: subject.clone(),
                    key_type: d.key_type.unwrap_or_default(),
                    dns: Vec::new(),
                    ip: Vec::new(),
                    out: d
                        .out
                        .as_ref()
                        .map_or_else(|| default_out.clone(), |o| base.join(o)),
                    force: true,
                    token: None,
                },
                profile: Profile::Client,
                days: d.days.unwrap_or(365),
                role,
            });
            renew_before.push(d.renew_before_days);
        }
    }
    for (r, renew) in requests.iter().zip(&renew_before) {
        if let Some(before) = renew
            && *before >= r.days
        {
            return Err(bad(format!(
                "{}: renew_before_days = {before} is not less than days = {}: every run \
                 would replace it",
                r.identity.name, r.days
            )));
        }
    }
    for r in &requests {
        // Catch bad subjects before anything is written.
        r.identity
            .subject
            .identity_subject(&r.identity.name, r.profile)
            .map_err(|e| bad(format!("{}: {e}", r.identity.name)))?;
    }
    let mut folders_checked: HashSet<&Path> = HashSet::new();
    for r in requests.iter().map(|r| &r.identity) {
        // Once per folder: a million devices usually share one.
        if folders_checked.insert(r.out.as_path()) {
            refuse_ca_folder(&r.out, Some(&ca_dir)).map_err(|e| bad(e.to_string()))?;
        }
        // The name is the CN, the MQTT username: one identity per name,
        // whatever folder it goes to.
        if !names.insert(r.name.to_string()) {
            return Err(bad(format!(
                "the name {:?} appears twice (it is the certificate's CN, the MQTT \
                 username: one identity per name)",
                r.name
            )));
        }
    }

    Ok(Prepared {
        manifest,
        ca_dir,
        requests,
        renew_before,
        names,
    })
}
