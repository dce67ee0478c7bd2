//! `provision fleet`: a CA, brokers and many devices from one manifest,
//! issued in parallel, idempotent and resumable.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pki_core::{
    Certificate, CertificateAuthority, DnsName, KeyPair, KeyType, Profile, RevocationReason,
    Subject, SubjectAltName, VerifyOptions,
};
use rayon::prelude::*;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::files::{Durability, check_name, flush_all, read_text};
use crate::ops::{
    CsrRequest, IdentityPaths, InitCa, IssueRequest, SubjectOptions, init_ca, issue_files,
    write_crl_locked,
};
use crate::store::{CaDir, Record, Status, refuse_ca_folder};

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
    pub key_type: Option<String>,
    /// Validity of a new CA in days (3650 default).
    pub days: Option<u32>,
    /// The variable holding the CA key's passphrase.
    pub passphrase_env: Option<String>,
}

fn default_ca_dir() -> PathBuf {
    PathBuf::from("root_cert")
}

/// `[[broker]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// File-name stem and default common name.
    pub name: String,
    /// DNS names.
    #[serde(default)]
    pub dns: Vec<String>,
    /// IP addresses.
    #[serde(default)]
    pub ip: Vec<IpAddr>,
    /// Validity in days (365 default).
    pub days: Option<u32>,
    /// Key type.
    pub key_type: Option<String>,
    /// Output folder.
    pub out: Option<PathBuf>,
    /// Issue a new certificate once the current one has fewer days left
    /// (default: 30, or a third of `days` when that is less).
    pub renew_before_days: Option<u32>,
}

/// `[[devices]]`: one device (`name`) or a numbered range (`prefix`, `count`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    /// One device's name.
    pub name: Option<String>,
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
    /// Key type.
    pub key_type: Option<String>,
    /// Output folder.
    pub out: Option<PathBuf>,
    /// Issue a new certificate once the current one has fewer days left
    /// (default: 30, or a third of `days` when that is less).
    pub renew_before_days: Option<u32>,
}

/// What a fleet run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Whether the CA was created by this run.
    pub ca_created: bool,
    /// Identities issued now.
    pub issued: usize,
    /// Valid identities found and kept.
    pub kept: usize,
    /// Of the issued, those that replaced a certificate (revoked, about to
    /// expire, or no longer what the manifest asks for), which is now
    /// revoked as superseded.
    pub replaced: usize,
    /// The CA folder.
    pub ca_dir: PathBuf,
    /// The broker identities, with their files.
    pub brokers: Vec<(String, IdentityPaths)>,
    /// The folders the devices went into, each once, in manifest order.
    pub device_folders: Vec<PathBuf>,
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

/// Runs a manifest with `jobs` worker threads (0: one per core), calling
/// `progress` with (done, total) as identities complete.
pub fn run(path: &Path, jobs: usize, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Summary> {
    let manifest = Manifest::load(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let bad = |reason: String| Error::Manifest {
        path: path.to_owned(),
        reason,
    };
    let ca_dir = CaDir::new(base.join(&manifest.ca.dir));
    let default_out = manifest
        .out
        .as_ref()
        .map(|o| base.join(o))
        .unwrap_or_else(|| ca_dir.dir().parent().unwrap_or(base).join("backend_certs"));
    let key_type = |k: &Option<String>| -> Result<KeyType> {
        Ok(match k {
            Some(k) => k.parse()?,
            None => KeyType::default(),
        })
    };

    let mut requests = Vec::new();
    // Per request: renew when fewer days than this are left.
    let mut renew_before: Vec<Option<u32>> = Vec::new();
    let mut names = HashSet::new();
    for b in &manifest.broker {
        let dns = b
            .dns
            .iter()
            .map(|d| d.parse::<DnsName>())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        requests.push(IssueRequest {
            identity: CsrRequest {
                name: b.name.clone(),
                subject: SubjectOptions::default(),
                key_type: key_type(&b.key_type)?,
                dns,
                ip: b.ip.clone(),
                out: b
                    .out
                    .as_ref()
                    .map_or_else(|| default_out.clone(), |o| base.join(o)),
                force: true,
            },
            profile: Profile::Server,
            days: b.days.unwrap_or(365),
        });
        renew_before.push(b.renew_before_days);
    }
    let total: u64 = manifest
        .devices
        .iter()
        .map(|d| u64::from(d.count.unwrap_or(1)))
        .sum::<u64>()
        + manifest.broker.len() as u64;
    if total > MAX_IDENTITIES {
        return Err(bad(format!(
            "{total} identities in one manifest; at most {MAX_IDENTITIES} \
             (split the fleet into several manifests and CA runs)"
        )));
    }
    for (i, d) in manifest.devices.iter().enumerate() {
        let device_names: Vec<String> = match (&d.name, &d.prefix, d.count) {
            (Some(name), None, None) => vec![name.clone()],
            (None, Some(prefix), Some(count)) => {
                let start = d.start.unwrap_or(1);
                (start..start.saturating_add(count))
                    .map(|n| format!("{prefix}{n}"))
                    .collect()
            }
            _ => {
                return Err(bad(format!(
                    "[[devices]] entry {}: give either `name`, or `prefix` and `count`",
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
                    key_type: key_type(&d.key_type)?,
                    dns: Vec::new(),
                    ip: Vec::new(),
                    out: d
                        .out
                        .as_ref()
                        .map_or_else(|| default_out.clone(), |o| base.join(o)),
                    force: true,
                },
                profile: Profile::Client,
                days: d.days.unwrap_or(365),
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
    let mut folders_checked: HashSet<&Path> = HashSet::new();
    for r in requests.iter().map(|r| &r.identity) {
        check_name(&r.name).map_err(|e| bad(e.to_string()))?;
        // Once per folder: a million devices usually share one.
        if folders_checked.insert(r.out.as_path()) {
            refuse_ca_folder(&r.out, Some(&ca_dir)).map_err(|e| bad(e.to_string()))?;
        }
        // The name is the CN, the MQTT username: one identity per name,
        // whatever folder it goes to.
        if !names.insert(r.name.clone()) {
            return Err(bad(format!(
                "the name {:?} appears twice (it is the certificate's CN, the MQTT \
                 username: one identity per name)",
                r.name
            )));
        }
        // Catch bad subjects before anything is written.
        r.subject
            .subject(&r.name)
            .map_err(|e| bad(format!("{}: {e}", r.name)))?;
    }

    let passphrase = match &manifest.ca.passphrase_env {
        Some(var) => Some(zeroize::Zeroizing::new(
            std::env::var(var)
                .map_err(|_| Error::Passphrase {
                    path: ca_dir.key_path(),
                    reason: format!("the passphrase variable {var} is not set"),
                })?
                .into_bytes(),
        )),
        None => None,
    };
    let ca_created = !ca_dir.cert_path().exists();
    let ca = if ca_created {
        init_ca(
            &ca_dir,
            &InitCa {
                subject: SubjectOptions {
                    common_name: Some(
                        manifest
                            .ca
                            .common_name
                            .clone()
                            .unwrap_or_else(|| "MQTT Fleet Root CA".into()),
                    ),
                    organization: manifest.ca.organization.clone(),
                    country: manifest.ca.country.clone(),
                },
                key_type: key_type(&manifest.ca.key_type)?,
                days: manifest.ca.days.unwrap_or(3650),
                passphrase: passphrase.clone(),
                force: false,
            },
        )?
    } else {
        ca_dir.load(passphrase.as_ref().map(|p| p.as_slice()))?
    };

    let _lock = ca_dir.lock()?;
    let inventory = ca_dir.inventory()?;
    let known: HashSet<String> = inventory.iter().map(|r| r.serial.clone()).collect();
    let revoked: HashSet<String> = inventory
        .iter()
        .filter(|r| r.status != Status::Valid)
        .map(|r| r.serial.clone())
        .collect();
    // Valid certificates by subject: after the run, all but an identity's
    // current one are superseded (one whose files went missing, one issued
    // elsewhere, one a crash left unrevoked).
    let mut valid_by_subject: std::collections::HashMap<String, Vec<String>> =
        std::collections::HashMap::new();
    for r in inventory.iter().filter(|r| r.status == Status::Valid) {
        valid_by_subject
            .entry(r.subject.clone())
            .or_default()
            .push(r.serial.clone());
    }
    drop(inventory);
    let total = requests.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| bad(format!("cannot start worker threads: {e}")))?;
    let outcomes: Vec<Result<Outcome>> = pool.install(|| {
        requests
            .par_iter()
            .zip(renew_before.par_iter())
            .map(|(request, renew_before)| {
                let lifecycle = Lifecycle {
                    known: &known,
                    revoked: &revoked,
                    renew_before: *renew_before,
                    ca_not_after: ca.certificate().not_after(),
                };
                let outcome = provision_one(&ca, request, &lifecycle);
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress(n, total);
                outcome
            })
            .collect()
    });

    let mut new_records = Vec::new();
    let mut summary = Summary {
        ca_created,
        ca_dir: ca_dir.dir().to_owned(),
        ..Summary::default()
    };
    for r in &requests {
        let id = &r.identity;
        if r.profile == Profile::Server {
            summary
                .brokers
                .push((id.name.clone(), IdentityPaths::new(&id.out, &id.name)));
        } else if !summary.device_folders.contains(&id.out) {
            summary.device_folders.push(id.out.clone());
        }
    }
    let mut first_error = None;
    let mut superseded = HashSet::new();
    // An identity's current certificate supersedes every other valid one
    // with its subject.
    let others = |record: &Record| -> Vec<String> {
        valid_by_subject
            .get(&record.subject)
            .map(|serials| {
                serials
                    .iter()
                    .filter(|s| **s != record.serial)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    for outcome in outcomes {
        match outcome {
            Ok(Outcome::Issued(record, replaced)) => {
                summary.issued += 1;
                superseded.extend(others(&record));
                new_records.push(record);
                if let Some(old) = replaced {
                    summary.replaced += 1;
                    superseded.insert(old);
                }
            }
            Ok(Outcome::Kept { record, recorded }) => {
                summary.kept += 1;
                superseded.extend(others(&record));
                if !recorded {
                    new_records.push(record);
                }
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    // Everything written must be on disk before the inventory says so.
    flush_all();
    // Record what was made even if some identities failed.
    ca_dir.append(&new_records)?;
    // The certificates replaced are revoked as superseded (their CN, the
    // MQTT username, stays with one valid certificate), and the CRL says so.
    if !superseded.is_empty() {
        let mut records = ca_dir.inventory()?;
        let mut newly_revoked = false;
        for r in records
            .iter_mut()
            .filter(|r| r.status == Status::Valid && superseded.contains(&r.serial))
        {
            r.revoke(RevocationReason::Superseded);
            newly_revoked = true;
        }
        if newly_revoked {
            ca_dir.rewrite(&records)?;
            write_crl_locked(&ca_dir, &ca, &records, &ca_dir.crl_path(), CRL_DAYS)?;
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// Days until the nextUpdate of a CRL a fleet run writes.
const CRL_DAYS: u32 = 30;

enum Outcome {
    /// Issued; with the serial of the certificate it replaces.
    Issued(Record, Option<String>),
    /// Kept, with its record and whether the inventory has it already (an
    /// earlier run may have stopped before recording).
    Kept { record: Record, recorded: bool },
}

/// What decides whether an existing identity is kept.
struct Lifecycle<'a> {
    /// Serials in the inventory.
    known: &'a HashSet<String>,
    /// Serials the inventory has revoked.
    revoked: &'a HashSet<String>,
    /// Renew when fewer days than this are left (`None`: the default).
    renew_before: Option<u32>,
    /// The CA's own end: a certificate ending with it cannot be renewed
    /// into a longer one.
    ca_not_after: SystemTime,
}

fn provision_one(
    ca: &CertificateAuthority,
    request: &IssueRequest,
    lifecycle: &Lifecycle<'_>,
) -> Result<Outcome> {
    let paths = IdentityPaths::new(&request.identity.out, &request.identity.name);
    let mut replaces = None;
    if let Some(cert) = existing_valid(ca, request.profile, &paths) {
        let serial = cert.serial().to_string();
        match stale(&cert, request, lifecycle) {
            None => {
                return Ok(Outcome::Kept {
                    record: Record::new(&cert, request.profile.as_str(), &paths.cert),
                    recorded: lifecycle.known.contains(&serial),
                });
            }
            Some(why) => {
                tracing::info!("{}: issuing anew: {why}", request.identity.name);
                replaces = Some(serial);
            }
        }
    }
    // New identities in bulk: one flush for the whole run instead of three
    // per identity. One replacing files that exist is written atomically
    // (temp file, rename), so that a failure leaves the working identity
    // as it was instead of truncated or removed.
    let durability = if paths.key.exists() || paths.cert.exists() || paths.csr.exists() {
        Durability::Now
    } else {
        Durability::Deferred
    };
    let issued = issue_files(ca, request, lifecycle.known, durability)?;
    Ok(Outcome::Issued(issued.record, replaces))
}

/// Why a valid certificate must be replaced, if it must: revoked in the
/// inventory, inside its renewal window, or no longer what the manifest
/// asks for (subject, key type, names).
fn stale(cert: &Certificate, request: &IssueRequest, lifecycle: &Lifecycle<'_>) -> Option<String> {
    if lifecycle.revoked.contains(&cert.serial().to_string()) {
        return Some("its certificate is revoked".into());
    }
    let validity = cert.validity();
    let left = validity
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let day = std::time::Duration::from_secs(86_400);
    let window = match lifecycle.renew_before {
        Some(days) => day * days,
        None => {
            let lifetime = validity
                .not_after()
                .duration_since(validity.not_before())
                .unwrap_or_default();
            (day * 30).min(lifetime / 3)
        }
    };
    if left < window
        && validity.not_after() + std::time::Duration::from_secs(86_400) < lifecycle.ca_not_after
    {
        return Some(format!(
            "it expires in {} days, inside the renewal window of {} days",
            left.as_secs() / 86_400,
            window.as_secs() / 86_400
        ));
    }
    let id = &request.identity;
    let wanted = id.subject.subject(&id.name).ok()?;
    match Subject::from_name(cert.as_x509().tbs_certificate().subject()) {
        Ok(subject) if subject == wanted => {}
        _ => return Some("the manifest's subject changed".into()),
    }
    if cert.key_algorithm().ok() != Some(id.key_type.algorithm()) {
        return Some("the manifest's key type changed".into());
    }
    if request.profile == Profile::Server {
        let mut have: Vec<String> = cert
            .subject_alt_names()
            .unwrap_or_default()
            .iter()
            .filter(|s| !matches!(s, SubjectAltName::Uri(_)))
            .map(ToString::to_string)
            .collect();
        let mut want: Vec<String> = id
            .dns
            .iter()
            .map(|d| SubjectAltName::Dns(d.clone()).to_string())
            .chain(id.ip.iter().map(|ip| SubjectAltName::Ip(*ip).to_string()))
            .collect();
        have.sort();
        have.dedup();
        want.sort();
        want.dedup();
        if have != want {
            return Some("the manifest's names changed".into());
        }
    }
    None
}

/// The existing certificate, if it and its key are complete and valid now
/// under this CA and profile.
fn existing_valid(
    ca: &CertificateAuthority,
    profile: Profile,
    paths: &IdentityPaths,
) -> Option<Certificate> {
    let cert = Certificate::from_pem(&std::fs::read_to_string(&paths.cert).ok()?).ok()?;
    let key = KeyPair::from_pem(&std::fs::read_to_string(&paths.key).ok()?).ok()?;
    if !key.matches_public_key(&cert.public_key_der().ok()?) {
        return None;
    }
    let options = VerifyOptions {
        at: SystemTime::now(),
        profile: Some(profile),
        name: None,
        crl: None,
        // Our own CA folder's certificate, root or intermediate.
        partial_chain: true,
    };
    pki_core::verify(&cert, std::slice::from_ref(ca.certificate()), &options).ok()?;
    Some(cert)
}
