//! `provision fleet`: a CA, brokers and many devices from one manifest,
//! issued in parallel, idempotent and resumable.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pki_core::{
    Certificate, CertificateAuthority, DnsName, KeyPair, KeyType, Profile, RevocationReason,
    Serial, Subject, SubjectAltName, VerifyOptions,
};
use rayon::prelude::*;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::files::{Durability, Name, flush_all, read_text};
use crate::inventory::{Filter, Inventory, Record, Status};
use crate::layout::{DEFAULT_CA_DIR, DEFAULT_IDENTITY_DIR, IdentityPaths};
use crate::ops::{CsrRequest, InitCa, IssueRequest, SubjectOptions, init_ca, issue_files};
use crate::roles::{AclPolicy, Role};
use crate::store::{CaDir, refuse_ca_folder};

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
fn key_type<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<KeyType>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

fn default_ca_dir() -> PathBuf {
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
    /// Of the kept, those whose current certificate is not the one on disk
    /// but a newer one issued elsewhere (e.g. renewed by the device over
    /// MQTT): neither reissued nor superseded.
    pub renewed_elsewhere: usize,
    /// The CA folder.
    pub ca_dir: PathBuf,
    /// The broker identities, with their files.
    pub brokers: Vec<(String, IdentityPaths)>,
    /// The folders the devices went into, each once, in manifest order.
    pub device_folders: Vec<PathBuf>,
    /// The manifest's first device and its files (an example to try).
    pub first_device: Option<(String, IdentityPaths)>,
    /// The manifest's first service and its files.
    pub first_service: Option<(String, IdentityPaths)>,
    /// Names reissued with another role: their old certificates are
    /// revoked as privilege-withdrawn (so the brokers' plugins take their
    /// connections off), not merely superseded.
    pub role_changed: Vec<String>,
    /// The run's change taken to this host's broker folders.
    pub applied: crate::broker::Applied,
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

/// How to run a manifest.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Worker threads (0: one per core).
    pub jobs: usize,
    /// The inventory's PostgreSQL URL (`None`: SQLite in the CA folder).
    pub inventory_url: Option<String>,
    /// Allow a remote PostgreSQL link that is not verified TLS.
    pub insecure_db: bool,
}

/// Runs a manifest, calling `progress` with (done, total) as identities
/// complete.
pub fn run(
    path: &Path,
    options: &RunOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Summary> {
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

    let passphrase = manifest
        .ca
        .passphrase_env
        .as_deref()
        .map(mqtt_tls::secrets::passphrase_from_env)
        .transpose()
        .map_err(|e| Error::Passphrase {
            path: ca_dir.key_path(),
            reason: e.to_string(),
        })?;
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
                key_type: manifest.ca.key_type.unwrap_or_default(),
                days: manifest.ca.days.unwrap_or(3650),
                passphrase: passphrase.clone(),
                force: false,
            },
        )?
    } else {
        ca_dir.load(passphrase.as_ref().map(|p| p.as_slice()))?
    };

    let inventory = Inventory::open(&ca_dir)?;
    let mut locked = inventory.lock(&ca)?;
    // The manifest's topic rules are the broker configuration's.
    locked.set_acl_policy(manifest.acl.as_ref().unwrap_or(&AclPolicy::default()))?;
    // What the inventory says of the manifest's names: each one's valid
    // certificates (oldest first) and its revoked serials.
    let mut history: HashMap<String, History> = HashMap::new();
    let mut note = |r: Record| {
        if names.contains(&r.common_name) {
            let h = history.entry(r.common_name).or_default();
            match r.status {
                Status::Valid => h.valid.push(Current {
                    serial: r.serial,
                    not_before: r.not_before.0,
                    cert_path: r.cert_path,
                    role: r.role,
                }),
                Status::Revoked { .. } => {
                    h.revoked.insert(r.serial);
                }
            }
        }
        Ok(())
    };
    // A small manifest looks its names up (indexed); a large one reads the
    // inventory once.
    if names.len() <= 10_000 {
        for name in &names {
            let filter = Filter {
                common_name: Some(name.to_string()),
                valid_only: false,
            };
            locked.visit(&filter, &mut note)?;
        }
    } else {
        locked.visit(&Filter::default(), &mut note)?;
    }
    drop(names);
    let total = requests.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.jobs)
        .build()
        .map_err(|e| bad(format!("cannot start worker threads: {e}")))?;
    let no_history = History::default();
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
                .push((id.name.to_string(), IdentityPaths::new(&id.out, &id.name)));
        } else {
            let first = match r.role {
                Role::Device => &mut summary.first_device,
                Role::Service => &mut summary.first_service,
                Role::Reader | Role::Claim | Role::CaService => &mut None,
            };
            if first.is_none() {
                *first = Some((id.name.to_string(), IdentityPaths::new(&id.out, &id.name)));
            }
            if !summary.device_folders.contains(&id.out) {
                summary.device_folders.push(id.out.clone());
            }
        }
    }
    let mut first_error = None;
    let mut superseded: Vec<(Serial, RevocationReason)> = Vec::new();
    // An identity's current certificate supersedes every other valid one
    // with its CN (older: one whose files went missing, one a crash left
    // unrevoked).
    // Only older ones: a newer certificate (renewed elsewhere) is never
    // superseded by the fleet.
    // Each with its reason: a certificate with another role than the
    // current one is withdrawn, not superseded, so that the brokers take
    // its live connection off.
    let others = |record: &Record| -> Vec<(Serial, RevocationReason)> {
        let role = |r: Option<Role>| r.unwrap_or(Role::Device);
        history
            .get(&record.common_name)
            .map(|h| {
                h.valid
                    .iter()
                    .filter(|c| c.serial != record.serial && c.not_before <= record.not_before.0)
                    .map(|c| {
                        let reason = if role(c.role) == role(record.role) {
                            RevocationReason::Superseded
                        } else {
                            RevocationReason::PrivilegeWithdrawn
                        };
                        (c.serial.clone(), reason)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // In chunks, each recorded into the (uncommitted) transaction as it
    // completes: a million outcomes are never all in memory. The
    // transaction commits only after every file is flushed.
    for (requests, renew_before) in requests.chunks(CHUNK).zip(renew_before.chunks(CHUNK)) {
        let outcomes: Vec<Result<Outcome>> = pool.install(|| {
            requests
                .par_iter()
                .zip(renew_before.par_iter())
                .map(|(request, renew_before)| {
                    let lifecycle = Lifecycle {
                        history: history
                            .get(request.identity.name.as_str())
                            .unwrap_or(&no_history),
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
        for outcome in outcomes {
            match outcome {
                Ok(Outcome::Issued {
                    record,
                    replaces,
                    role_changed,
                }) => {
                    summary.issued += 1;
                    superseded.extend(others(&record));
                    if replaces {
                        summary.replaced += 1;
                    }
                    if role_changed {
                        summary.role_changed.push(record.common_name.clone());
                    }
                    new_records.push(record);
                }
                Ok(Outcome::Kept { record, recorded }) => {
                    summary.kept += 1;
                    superseded.extend(others(&record));
                    if !recorded {
                        new_records.push(record);
                    }
                }
                Ok(Outcome::RenewedElsewhere) => {
                    summary.kept += 1;
                    summary.renewed_elsewhere += 1;
                }
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
        // Record what was made even if some identities failed.
        locked.record(&new_records)?;
    }
    drop(history);
    // Everything written must be on disk before the inventory says so
    // (at the commit below).
    flush_all();
    // The certificates replaced are revoked as superseded (their CN, the
    // MQTT username, stays with one valid certificate), and the CRL says so.
    if !superseded.is_empty() {
        for (serial, reason) in &superseded {
            locked.revoke(serial, *reason)?;
        }
        // A name whose role changed: connections still on an earlier
        // renewal's certificate lose the old role's rights too.
        for name in &summary.role_changed {
            locked.withdraw_superseded(name, RevocationReason::PrivilegeWithdrawn, None)?;
        }
        let crl = ca_dir.crl_path();
        locked.write_crl(&crl, CRL_DAYS)?;
    }
    let committed = locked.commit()?;
    // What was recorded reaches the brokers even when some identity
    // failed.
    let applied = crate::broker::apply(&inventory, &committed);
    match (first_error, applied) {
        (Some(e), applied) => {
            if let Err(a) = applied {
                tracing::warn!("bringing the broker folders in step: {a}");
            }
            Err(e)
        }
        (None, applied) => {
            summary.applied = applied?;
            Ok(summary)
        }
    }
}

/// Days until the nextUpdate of a CRL a fleet run writes.
const CRL_DAYS: u32 = 30;

/// Identities issued between two writes into the inventory's transaction.
const CHUNK: usize = 20_000;

/// What the inventory holds for one name.
#[derive(Debug, Default)]
struct History {
    /// Its valid certificates, oldest first (the last is the current one).
    valid: Vec<Current>,
    /// Its revoked certificates.
    revoked: HashSet<Serial>,
}

/// A valid certificate of a name, as the inventory records it.
#[derive(Debug)]
struct Current {
    serial: Serial,
    not_before: SystemTime,
    cert_path: PathBuf,
    role: Option<Role>,
}

enum Outcome {
    /// Issued; `replaces`: in place of a valid certificate on disk.
    Issued {
        record: Record,
        replaces: bool,
        /// The certificate it replaces had another role.
        role_changed: bool,
    },
    /// Kept, with its record and whether the inventory has it already (an
    /// earlier run may have stopped before recording).
    Kept { record: Record, recorded: bool },
    /// The inventory holds a newer certificate for the name than the one
    /// on disk (renewed elsewhere, e.g. by the device over MQTT): left as
    /// it is, neither reissued nor superseded.
    RenewedElsewhere,
}

/// What decides whether an existing identity is kept.
struct Lifecycle<'a> {
    /// What the inventory holds for the name.
    history: &'a History,
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
    let history = lifecycle.history;
    let mut replaces = false;
    let mut role_changed = false;
    let on_disk = existing_valid(ca, request.profile, &paths);
    // The inventory's current certificate for the name decides, not only
    // the files: when it was issued elsewhere (renewed by the device over
    // MQTT, or by `provision issue`) and the fleet's files hold nothing
    // newer, the identity lives on there and the fleet leaves it alone,
    // even when its own files expired or went missing.
    let renewed_elsewhere = history.valid.last().filter(|current| {
        crate::files::resolve(&current.cert_path) != crate::files::resolve(&paths.cert)
            && on_disk
                .as_ref()
                .is_none_or(|cert| cert.validity().not_before() <= current.not_before)
            && on_disk
                .as_ref()
                .is_none_or(|cert| cert.serial() != current.serial)
    });
    if let Some(current) = renewed_elsewhere {
        // Renewal state decides only whether an unchanged identity is
        // reissued: a manifest change wins. The role is the inventory's
        // (the current certificate's); subject, key type and names are
        // compared with what the fleet last issued (its files, expired or
        // not), since a device renewing on its own picks its CSR.
        let role_now = current.role.unwrap_or(Role::Device);
        let last_issued = on_disk.clone().or_else(|| {
            std::fs::read_to_string(&paths.cert)
                .ok()
                .and_then(|pem| Certificate::from_pem(&pem).ok())
        });
        let change = role_change(current.role, request).or_else(|| {
            last_issued
                .as_ref()
                .and_then(|cert| manifest_changed(cert, request))
        });
        let Some(why) = change else {
            tracing::info!(
                "{}: renewed elsewhere (the inventory's current certificate is serial {} in \
                 {}); left as it is",
                request.identity.name,
                current.serial,
                current.cert_path.display()
            );
            return Ok(Outcome::RenewedElsewhere);
        };
        tracing::info!(
            "{}: issuing anew although renewed elsewhere (serial {}): {why}",
            request.identity.name,
            current.serial
        );
        replaces = true;
        role_changed = request.profile == Profile::Client && role_now != request.role;
    } else if let Some(cert) = on_disk {
        let serial = cert.serial();
        let why = if history.revoked.contains(&serial) {
            Some("its certificate is revoked".to_owned())
        } else {
            renewal_due(&cert, lifecycle)
                .or_else(|| manifest_changed(&cert, request))
                .or_else(|| role_change(Role::of(&cert), request))
        };
        match why {
            None => {
                return Ok(Outcome::Kept {
                    record: Record::new(&cert, request.profile, &paths.cert),
                    recorded: history.valid.iter().any(|c| c.serial == serial),
                });
            }
            Some(why) => {
                tracing::info!("{}: issuing anew: {why}", request.identity.name);
                replaces = true;
                role_changed = request.profile == Profile::Client
                    && Role::of(&cert).unwrap_or(Role::Device) != request.role;
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
    // Serials: random, 16 bytes; the inventory's key refuses a repeat when
    // the batch is recorded.
    let issued = issue_files(
        |csr, params| Ok(ca.sign(csr, params)?),
        ca.certificate(),
        request,
        durability,
    )?;
    Ok(Outcome::Issued {
        record: issued.record,
        replaces,
        role_changed,
    })
}

/// How a client's role `had` (a certificate from before roles is a
/// device's) differs from the manifest's, if it does.
fn role_change(had: Option<Role>, request: &IssueRequest) -> Option<String> {
    let had = had.unwrap_or(Role::Device);
    (request.profile == Profile::Client && had != request.role)
        .then(|| format!("its role is now {} (was {had})", request.role))
}

/// Why a valid certificate must be renewed, if it must: inside its
/// renewal window.
fn renewal_due(cert: &Certificate, lifecycle: &Lifecycle<'_>) -> Option<String> {
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
    None
}

/// How `cert` is no longer what the manifest asks for (subject, key type,
/// names), if it is not (the role: [`role_change`]).
fn manifest_changed(cert: &Certificate, request: &IssueRequest) -> Option<String> {
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
    let pem = zeroize::Zeroizing::new(std::fs::read_to_string(&paths.key).ok()?);
    let key = KeyPair::from_pem(&pem).ok()?;
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
        intermediates: &[],
        expect_ca: false,
    };
    pki_core::verify(&cert, std::slice::from_ref(ca.certificate()), &options).ok()?;
    Some(cert)
}
