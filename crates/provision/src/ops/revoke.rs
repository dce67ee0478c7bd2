//! Revoking, and the CRL.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pki_core::{Certificate, Profile, RevocationReason, Serial, Timestamp};

use crate::error::{Error, Result};
use crate::files::read_text;
use crate::inventory::{LockedCa, Record, Status};

/// What to revoke.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    /// The certificate in this file.
    File(PathBuf),
    /// This serial.
    Serial(Serial),
    /// Every valid certificate of this identity (common name).
    Name(String),
}

/// What [`revoke`] did to one certificate it was asked to revoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// It was valid and is revoked now.
    Revoked,
    /// It was revoked as superseded and now carries the new reason.
    ReasonChanged,
    /// It was revoked already and keeps its first revocation.
    Unchanged,
}

/// What [`revoke`] did.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The certificates asked for, as they are now, with what changed
    /// (none for a name with no valid certificate left).
    pub records: Vec<(Record, Change)>,
    /// Certificates renewed from them (transitively), any renewal still
    /// pending included, revoked for the same reason: whoever holds a
    /// compromised key could have renewed with it.
    pub renewals: Vec<Serial>,
    /// The name's superseded certificates (a renewal's predecessors) now
    /// revoked for this reason too, so that a connection still on one ends.
    pub withdrawn: Vec<Serial>,
    /// Other certificates of the same names this left valid.
    pub still_valid: Vec<Record>,
}

/// A certificate to revoke: its serial, how the operator named it, and
/// its file when named by one.
pub(super) type Named<'p> = (Serial, String, Option<(Certificate, &'p PathBuf)>);

/// Whether a revocation for `reason` follows the certificate's renewals:
/// those that say its key or its subject's standing is no good.
pub(super) fn follows_renewals(reason: RevocationReason) -> bool {
    !matches!(
        reason,
        RevocationReason::Superseded | RevocationReason::Unspecified
    )
}

/// Marks certificates revoked in the inventory and rewrites the CRL in
/// the CA folder (the caller commits `locked`), all in one transaction.
///
/// A certificate revoked already keeps its first revocation, but one
/// revoked as superseded takes a new reason. For every reason but
/// `unspecified` and `superseded`, the certificates renewed from it are
/// revoked too, transitively, and its pending renewals end.
pub fn revoke(
    locked: &mut LockedCa<'_>,
    target: &RevokeTarget,
    reason: RevocationReason,
    crl_days: u32,
) -> Result<Revocation> {
    let serials: Vec<Named<'_>> = match target {
        RevokeTarget::Serial(s) => vec![(s.clone(), format!("serial {s}"), None)],
        RevokeTarget::File(path) => {
            let cert = Certificate::from_pem(&read_text(path)?).map_err(|source| Error::Pki {
                path: path.clone(),
                source,
            })?;
            let serial = cert.serial();
            let what = format!("{} (serial {serial})", path.display());
            vec![(serial, what, Some((cert, path)))]
        }
        RevokeTarget::Name(name) => {
            if !locked.name_used(name)? {
                return Err(Error::NotInInventory {
                    what: format!("a certificate named {name:?}"),
                    location: locked.location().to_owned(),
                });
            }
            locked
                .valid_for(name)?
                .into_iter()
                .map(|r| {
                    let what = format!("serial {}", r.serial);
                    (r.serial, what, None)
                })
                .collect()
        }
    };
    let mut records = Vec::new();
    for (serial, what, file) in serials {
        let before = locked.find(&serial)?.map(|r| r.status);
        let record = match locked.revoke(&serial, reason)? {
            Some(record) => record,
            // A certificate this CA signed that the inventory never recorded
            // (a crash between writing its files and the commit) can still be
            // revoked: it is recorded first.
            None => match file {
                Some((cert, path)) if signed_by(&cert, locked.ca_certificate()?) => {
                    let usages = cert.tls_usages()?;
                    let profile = if usages.server_auth && !usages.client_auth {
                        Profile::Server
                    } else {
                        Profile::Client
                    };
                    locked.record(&[Record::new(&cert, profile, path)])?;
                    locked
                        .revoke(&serial, reason)?
                        .ok_or_else(|| Error::NotInInventory {
                            what: what.clone(),
                            location: locked.location().to_owned(),
                        })?
                }
                _ => {
                    return Err(Error::NotInInventory {
                        what,
                        location: locked.location().to_owned(),
                    });
                }
            },
        };
        let change = match before {
            None | Some(Status::Valid) => Change::Revoked,
            Some(old) if old != record.status => Change::ReasonChanged,
            Some(_) => Change::Unchanged,
        };
        records.push((record, change));
    }
    let mut renewals = Vec::new();
    let mut withdrawn = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (record, _) in &records {
        if !names.contains(&record.common_name) {
            names.push(record.common_name.clone());
        }
        if reason == RevocationReason::Superseded {
            continue;
        }
        // Its grace period revokes nothing more, and a renewal it was
        // waiting on ends (revoked below when this reason follows them).
        locked.settle_renewals_involving(&record.serial)?;
        for serial in
            locked.withdraw_superseded(&record.common_name, reason, Some(&record.serial))?
        {
            if !withdrawn.contains(&serial) {
                withdrawn.push(serial);
            }
        }
        if !follows_renewals(reason) {
            continue;
        }
        for serial in locked.descendants(&record.serial)? {
            let changed = locked.find(&serial)?.map(|r| r.status);
            let now = locked.revoke(&serial, reason)?.map(|r| r.status);
            locked.settle_renewals_involving(&serial)?;
            if changed != now && !renewals.contains(&serial) {
                renewals.push(serial);
            }
        }
    }
    let mut still_valid = Vec::new();
    for name in &names {
        still_valid.extend(locked.valid_for(name)?);
    }
    let crl = locked.ca_dir().crl_path();
    locked.write_crl(&crl, crl_days)?;
    Ok(Revocation {
        records,
        renewals,
        withdrawn,
        still_valid,
    })
}

/// Whether `ca` signed `cert` (its validity aside: an expired certificate
/// may be revoked too).
pub(crate) fn signed_by(cert: &Certificate, ca: &Certificate) -> bool {
    let options = pki_core::VerifyOptions {
        at: cert.validity().not_before(),
        partial_chain: true,
        // A CA certificate may be asked about too.
        expect_ca: cert.is_ca(),
        ..pki_core::VerifyOptions::now()
    };
    pki_core::verify(cert, std::slice::from_ref(ca), &options).is_ok()
}

/// Writes a CRL of every revoked certificate in the inventory to `out`
/// (the caller commits `locked`: the CRL number is the inventory's).
pub fn write_crl(
    locked: &mut LockedCa<'_>,
    out: &Path,
    lifetime: std::time::Duration,
) -> Result<pki_core::Crl> {
    let dir = locked.ca_dir();
    let target = crate::files::resolve(out);
    // Inside the CA folder only its own CRL: every other name there is the
    // CA's (key, certificate, inventory, lock, archive).
    if target.starts_with(crate::files::resolve(dir.dir()))
        && target != crate::files::resolve(&dir.crl_path())
    {
        return Err(Error::UnsafeOutput {
            path: out.to_owned(),
            reason: format!(
                "it is inside the CA folder {}, where only {} is a CRL",
                dir.dir().display(),
                crate::layout::CRL
            ),
        });
    }
    locked.write_crl_for(out, lifetime)
}

/// Whether the CRL at `path` is due to be signed again: missing,
/// unreadable, or past half its lifetime (from its signing, which is
/// thisUpdate plus [`pki_core::CLOCK_SKEW_ALLOWANCE`], to nextUpdate). For
/// `provision crl --if-due` from a timer, so that a CRL never lapses.
pub fn crl_due(path: &Path, now: SystemTime) -> bool {
    let Ok(crl) = read_text(path).and_then(|t| {
        pki_core::Crl::from_pem(&t).map_err(|source| Error::Pki {
            path: path.to_owned(),
            source,
        })
    }) else {
        return true;
    };
    let Some(next) = crl.next_update() else {
        return false;
    };
    let signed = crl.this_update() + pki_core::CLOCK_SKEW_ALLOWANCE;
    let half = next.duration_since(signed).unwrap_or_default() / 2;
    now >= next || now >= signed + half
}

/// Formats for the CLI.
pub fn when(t: SystemTime) -> String {
    Timestamp(t).to_string()
}
