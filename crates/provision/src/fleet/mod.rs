//! `provision fleet`: a CA, brokers and many devices from one manifest,
//! issued in parallel, idempotent and resumable.

mod manifest;
mod plan;

pub use manifest::{BrokerSection, CaSection, DeviceSection, MAX_IDENTITIES, Manifest};
pub use plan::{Plan, Step, plan};

use std::path::{Path, PathBuf};

use pki_core::{CertificateAuthority, Profile, RevocationReason, Serial};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::files::{Durability, flush_all};
use crate::inventory::{Inventory, Record};
use crate::layout::IdentityPaths;
use crate::ops::{InitCa, IssueRequest, SubjectOptions, init_ca, issue_files};
use crate::roles::{AclPolicy, Role};

use manifest::{Prepared, prepare};
use plan::{Decisions, Lifecycle, decide, read_history};

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
/// complete: the plan of each identity (its [`Step`]), issuing in chunks,
/// one commit, and one [`crate::broker::apply`].
pub fn run(
    path: &Path,
    options: &RunOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Summary> {
    let Prepared {
        manifest,
        ca_dir,
        requests,
        renew_before,
        names,
    } = prepare(path, options)?;
    let bad = |reason: String| Error::Manifest {
        path: path.to_owned(),
        reason,
    };
    let passphrase = manifest
        .ca
        .passphrase_env
        .as_deref()
        .map(safe_files::passphrase_from_env)
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
                token: None,
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
    // And each broker's packet limit, for `broker-config --server NAME`.
    for broker in &manifest.broker {
        locked.set_broker_max_packet_size(
            broker.name.as_str(),
            broker
                .max_packet_size
                .unwrap_or(crate::broker::DEFAULT_MAX_PACKET_SIZE),
        )?;
    }
    // Under the lock: no other run makes files in the identity folders
    // before the decisions.
    let decisions = Decisions::new(
        read_history(&names, &mut |filter, f| locked.visit(filter, f))?,
        ca.certificate().not_after(),
        &requests,
    );
    drop(names);
    let total = requests.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.jobs)
        .build()
        .map_err(|e| bad(format!("cannot start worker threads: {e}")))?;
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
        decisions
            .history
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
    let chunks = requests.len().div_ceil(CHUNK);
    let mut flushing = None;
    for (chunk, (requests, renew_before)) in requests
        .chunks(CHUNK)
        .zip(renew_before.chunks(CHUNK))
        .enumerate()
    {
        let outcomes: Vec<Result<Outcome>> = pool.install(|| {
            requests
                .par_iter()
                .zip(renew_before.par_iter())
                .map(|(request, renew_before)| {
                    let lifecycle = decisions.lifecycle(request, *renew_before);
                    let outcome = provision_one(&ca, request, &lifecycle);
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    progress(n, total);
                    outcome
                })
                .collect()
        });
        if chunk + 1 == chunks {
            // Every file is written: flushing them to disk (I/O, the cores
            // idle) runs while the last records go into the transaction.
            // A thread the system refuses: flushed below instead.
            flushing = std::thread::Builder::new()
                .name("flush".into())
                .spawn(flush_all)
                .ok();
        }
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
    drop(decisions);
    // Everything written must be on disk before the inventory says so
    // (at the commit below).
    match flushing.map(std::thread::JoinHandle::join) {
        Some(Ok(())) => {}
        // None: nothing to issue, or no thread; a flush that panicked is
        // made again.
        None | Some(Err(_)) => flush_all(),
    }
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

fn provision_one(
    ca: &CertificateAuthority,
    request: &IssueRequest,
    lifecycle: &Lifecycle<'_>,
) -> Result<Outcome> {
    let decision = decide(ca.certificate(), request, lifecycle);
    let (replaces, role_changed) = match decision.step {
        Step::Keep => {
            let Some((record, recorded)) = decision.kept else {
                return Err(Error::Lifecycle {
                    reason: format!("{}: kept without a record", request.identity.name),
                });
            };
            return Ok(Outcome::Kept { record, recorded });
        }
        Step::RenewedElsewhere { serial } => {
            tracing::info!(
                "{}: renewed elsewhere (the inventory's current certificate is serial {serial}); \
                 left as it is",
                request.identity.name
            );
            return Ok(Outcome::RenewedElsewhere);
        }
        Step::Issue => (false, false),
        Step::Reissue { why, role_changed } => {
            tracing::info!("{}: issuing anew: {why}", request.identity.name);
            (true, role_changed)
        }
    };
    // New identities in bulk: one flush for the whole run instead of three
    // per identity. One replacing files that exist is written file by file
    // atomically (temp file, rename), so no file is ever truncated or
    // half written (a failure between two files can leave the new key
    // beside the old certificate: the next run finds the pair broken and
    // issues anew); which it is, the exclusive create of each file says
    // (no look at each file first).
    let durability = Durability::DeferredIfNew;
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
