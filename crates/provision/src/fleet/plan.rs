//! The plan of each identity: issue, reissue (and why), keep, or leave to
//! a renewal made elsewhere; read-only, printable with `--dry-run`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pki_core::{Certificate, KeyPair, Profile, Serial, Subject, SubjectAltName, VerifyOptions};

use crate::error::{Error, Result};
use crate::files::read_text;
use crate::inventory::{Filter, Inventory, Record, Status};
use crate::layout::IdentityPaths;
use crate::ops::IssueRequest;
use crate::roles::Role;

use super::RunOptions;
use super::manifest::{Prepared, prepare};

/// What a run of a manifest would do, without writing anything (the CA's
/// key is not read): each identity's [`Step`], in manifest order.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    /// The CA folder.
    pub ca_dir: PathBuf,
    /// Whether the run would create the CA first.
    pub ca_created: bool,
    /// Each identity's name and step.
    pub steps: Vec<(String, Step)>,
}

/// Plans a run of the manifest at `path` (`provision fleet --dry-run`):
/// the same checks and the same decision per identity as [`super::run`], from
/// the files and the inventory as they are; nothing is written or signed.
pub fn plan(path: &Path, options: &RunOptions) -> Result<Plan> {
    let Prepared {
        ca_dir,
        requests,
        renew_before,
        names,
        ..
    } = prepare(path, options)?;
    if !ca_dir.cert_path().exists() {
        return Ok(Plan {
            ca_dir: ca_dir.dir().to_owned(),
            ca_created: true,
            steps: requests
                .iter()
                .map(|r| (r.identity.name.to_string(), Step::Issue))
                .collect(),
        });
    }
    let signer = ca_dir.signer_cert_path();
    let ca_cert = Certificate::from_pem(&read_text(&signer)?).map_err(|source| Error::Pki {
        path: signer,
        source,
    })?;
    // No inventory yet (SQLite in the folder): nothing recorded, and none
    // made for a plan.
    let in_folder = ca_dir.inventory_url().is_none()
        && !ca_dir.dir().join(crate::layout::INVENTORY_DB).exists();
    let history = if in_folder {
        HashMap::new()
    } else {
        let inventory = Inventory::open(&ca_dir)?;
        read_history(&names, &mut |filter, f| inventory.visit(filter, f))?
    };
    let decisions = Decisions::new(history, ca_cert.not_after(), &requests);
    let steps = requests
        .iter()
        .zip(&renew_before)
        .map(|(request, renew_before)| {
            let lifecycle = decisions.lifecycle(request, *renew_before);
            let decision = decide(&ca_cert, request, &lifecycle);
            (request.identity.name.to_string(), decision.step)
        })
        .collect();
    Ok(Plan {
        ca_dir: ca_dir.dir().to_owned(),
        ca_created: false,
        steps,
    })
}

/// What the inventory holds for one name.
#[derive(Debug, Default)]
pub(super) struct History {
    /// Its valid certificates, oldest first (the last is the current one).
    pub(super) valid: Vec<Current>,
    /// Its revoked certificates.
    pub(super) revoked: HashSet<Serial>,
}

/// A valid certificate of a name, as the inventory records it.
#[derive(Debug)]
pub(super) struct Current {
    pub(super) serial: Serial,
    pub(super) not_before: SystemTime,
    pub(super) cert_path: PathBuf,
    pub(super) role: Option<Role>,
}

/// Reads the records a filter selects, one at a time (a locked
/// transaction's `visit`, or the inventory's).
pub(super) type Visit<'v> =
    dyn FnMut(&Filter, &mut dyn FnMut(Record) -> Result<()>) -> Result<()> + 'v;

/// What the inventory says of the manifest's names: each one's valid
/// certificates (oldest first) and its revoked serials, read through
/// `visit` (a locked transaction's, or the inventory's for a plan).
pub(super) fn read_history(
    names: &HashSet<String>,
    visit: &mut Visit<'_>,
) -> Result<HashMap<String, History>> {
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
    // A small manifest looks its names up (indexed), a chunk of names a
    // query (one a name was a round trip to the database's thread each);
    // a large one reads the inventory once.
    if names.len() <= 10_000 {
        let names: Vec<&String> = names.iter().collect();
        for chunk in names.chunks(Filter::MAX_NAMES) {
            let filter = Filter {
                common_names: chunk.iter().map(|n| (*n).clone()).collect(),
                valid_only: false,
            };
            visit(&filter, &mut note)?;
        }
    } else {
        visit(&Filter::default(), &mut note)?;
    }
    Ok(history)
}

/// What a run does with one identity, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Issued: it has no certificate of its own yet.
    Issue,
    /// Issued anew; the certificate it replaces is revoked.
    Reissue {
        /// Why.
        why: String,
        /// The certificate it replaces had another role (revoked as
        /// privilege-withdrawn).
        role_changed: bool,
    },
    /// Kept as it is.
    Keep,
    /// Renewed elsewhere (over MQTT, or by `provision issue`): left to the
    /// certificate the inventory holds.
    RenewedElsewhere {
        /// That certificate's serial.
        serial: String,
    },
}

/// [`decide`]'s answer: the step, and for a kept identity its record and
/// whether the inventory has it.
pub(super) struct Decision {
    pub(super) step: Step,
    pub(super) kept: Option<(Record, bool)>,
}

/// What decides whether an existing identity is kept.
pub(super) struct Lifecycle<'a> {
    /// What the inventory holds for the name.
    pub(super) history: &'a History,
    /// Renew when fewer days than this are left (`None`: the default).
    pub(super) renew_before: Option<u32>,
    /// The CA's own end: a certificate ending with it cannot be renewed
    /// into a longer one.
    pub(super) ca_not_after: SystemTime,
    /// The identity's folder did not exist when the run began: it has no
    /// files to read.
    pub(super) new_folder: bool,
}

/// What every identity's decision in one run shares: the inventory's
/// history by name, the CA's end, and the identity folders that do not
/// exist (looked at when this is made: a run makes it under the CA
/// folder's lock).
pub(super) struct Decisions {
    pub(super) history: HashMap<String, History>,
    /// The history of a name the inventory has nothing of.
    none: History,
    ca_not_after: SystemTime,
    new_folders: HashSet<PathBuf>,
}

impl Decisions {
    pub(super) fn new(
        history: HashMap<String, History>,
        ca_not_after: SystemTime,
        requests: &[IssueRequest],
    ) -> Self {
        Self {
            history,
            none: History::default(),
            ca_not_after,
            new_folders: super::manifest::new_folders(requests),
        }
    }

    /// What decides `request`'s identity.
    pub(super) fn lifecycle(
        &self,
        request: &IssueRequest,
        renew_before: Option<u32>,
    ) -> Lifecycle<'_> {
        Lifecycle {
            history: self
                .history
                .get(request.identity.name.as_str())
                .unwrap_or(&self.none),
            renew_before,
            ca_not_after: self.ca_not_after,
            new_folder: self.new_folders.contains(&request.identity.out),
        }
    }
}

/// The plan for one identity: what is on disk and in the inventory against
/// what the manifest asks. Reads only (the CA's certificate, no key).
pub(super) fn decide(
    ca_cert: &Certificate,
    request: &IssueRequest,
    lifecycle: &Lifecycle<'_>,
) -> Decision {
    let paths = IdentityPaths::new(&request.identity.out, &request.identity.name);
    let history = lifecycle.history;
    let on_disk = if lifecycle.new_folder {
        None
    } else {
        existing_valid(ca_cert, request.profile, &paths)
    };
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
    let step = |step| Decision { step, kept: None };
    if let Some(current) = renewed_elsewhere {
        // Renewal state decides only whether an unchanged identity is
        // reissued: a manifest change wins. The role is the inventory's
        // (the current certificate's); subject, key type and names are
        // compared with what the fleet last issued (its files, expired or
        // not), since a device renewing on its own picks its CSR.
        let role_now = current.role.unwrap_or(Role::Device);
        let last_issued = on_disk.clone().or_else(|| {
            (!lifecycle.new_folder).then_some(())?;
            read_text(&paths.cert)
                .ok()
                .and_then(|pem| Certificate::from_pem(&pem).ok())
        });
        let change = role_change(current.role, request).or_else(|| {
            last_issued
                .as_ref()
                .and_then(|cert| manifest_changed(cert, request))
        });
        return match change {
            None => step(Step::RenewedElsewhere {
                serial: current.serial.to_string(),
            }),
            Some(why) => step(Step::Reissue {
                why: format!(
                    "{why} (it was renewed elsewhere as serial {})",
                    current.serial
                ),
                role_changed: request.profile == Profile::Client && role_now != request.role,
            }),
        };
    }
    let Some(cert) = on_disk else {
        return step(Step::Issue);
    };
    let serial = cert.serial();
    let why = if history.revoked.contains(&serial) {
        Some("its certificate is revoked".to_owned())
    } else {
        renewal_due(&cert, lifecycle)
            .or_else(|| manifest_changed(&cert, request))
            .or_else(|| role_change(Role::of(&cert), request))
    };
    match why {
        None => Decision {
            step: Step::Keep,
            kept: Some((
                Record::new(&cert, request.profile, &paths.cert),
                history.valid.iter().any(|c| c.serial == serial),
            )),
        },
        Some(why) => step(Step::Reissue {
            why,
            role_changed: request.profile == Profile::Client
                && Role::of(&cert).unwrap_or(Role::Device) != request.role,
        }),
    }
}

/// How a client's role `had` (a certificate from before roles is a
/// device's) differs from the manifest's, if it does.
pub(super) fn role_change(had: Option<Role>, request: &IssueRequest) -> Option<String> {
    let had = had.unwrap_or(Role::Device);
    (request.profile == Profile::Client && had != request.role)
        .then(|| format!("its role is now {} (was {had})", request.role))
}

/// Why a valid certificate must be renewed, if it must: inside its
/// renewal window.
pub(super) fn renewal_due(cert: &Certificate, lifecycle: &Lifecycle<'_>) -> Option<String> {
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
pub(super) fn manifest_changed(cert: &Certificate, request: &IssueRequest) -> Option<String> {
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
pub(super) fn existing_valid(
    ca: &Certificate,
    profile: Profile,
    paths: &IdentityPaths,
) -> Option<Certificate> {
    let cert = Certificate::from_pem(&read_text(&paths.cert).ok()?).ok()?;
    let pem = zeroize::Zeroizing::new(read_text(&paths.key).ok()?);
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
    pki_core::verify(&cert, std::slice::from_ref(ca), &options).ok()?;
    Some(cert)
}
