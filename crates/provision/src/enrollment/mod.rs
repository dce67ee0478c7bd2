//! The CA's side of the device lifecycle (`docs/lifecycle.md`): claims
//! and their policies, and the answer to each enrollment, renewal and
//! confirmation, decided inside one [`LockedCa`] transaction so that a
//! request is answered once (a copy gets the stored answer, never a second
//! certificate). [`crate::serve`] carries them over MQTT.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use mqtt_tls::lifecycle::{
    Answer, EnrollRequest, Rejection, RenewDone, RenewRequest, RequestId, topics,
};
use pki_core::{
    Certificate, Csr, IssueParams, Profile, RevocationReason, Serial, Timestamp, Validity,
};

pub mod decide;

use decide::{Checked, EnrollFacts, Refused, RenewFacts, refused};

use crate::error::{Error, Result};
use crate::files::check_name;
use crate::inventory::{ClaimPolicy, LockedCa, Record, Status};
use crate::roles::Role;

/// What one request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Where the answer goes (`None`: nothing to answer, a confirmation).
    pub topic: Option<String>,
    /// The answer (JSON).
    pub answer: Vec<u8>,
    /// Whether it was the stored answer to an earlier copy.
    pub repeated: bool,
    /// The certificate issued now, if any.
    pub issued: Option<Serial>,
    /// Its name (CN).
    pub issued_name: Option<String>,
    /// The reason of a refusal.
    pub rejected: Option<Rejection>,
    /// Certificates revoked (a confirmed renewal's old one).
    pub revoked: Vec<Serial>,
}

impl Outcome {
    /// A request not answered (malformed, or reusing another's id).
    fn ignored() -> Self {
        Self {
            topic: None,
            answer: Vec::new(),
            repeated: false,
            issued: None,
            issued_name: None,
            rejected: Some(Rejection::BadRequest),
            revoked: Vec::new(),
        }
    }

    fn answer(topic: String, answer: &Answer, repeated: bool) -> Result<Self> {
        let (issued, rejected) = match answer {
            Answer::Issued { serial, .. } if !repeated => (serial.parse().ok(), None),
            Answer::Rejected { reason, .. } => (None, Some(*reason)),
            _ => (None, None),
        };
        let issued_name = match answer {
            Answer::Issued { certificate, .. } if issued.is_some() => {
                Certificate::from_pem(certificate)
                    .ok()
                    .and_then(|c| c.common_name())
            }
            _ => None,
        };
        Ok(Self {
            topic: Some(topic),
            answer: encode(answer)?,
            repeated,
            issued,
            issued_name,
            rejected,
            revoked: Vec::new(),
        })
    }
}

fn encode(answer: &Answer) -> Result<Vec<u8>> {
    serde_json::to_vec(answer).map_err(|e| Error::Lifecycle {
        reason: format!("encoding an answer: {e}"),
    })
}

/// How [`handle`] issues.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Validity of an enrolled or renewed certificate, in days (capped at
    /// the CA's own end).
    pub days: u32,
}

/// Revokes `serial` (superseded) if it is still valid; whether it was.
fn supersede(locked: &mut LockedCa<'_>, serial: &Serial) -> Result<bool> {
    match locked.find(serial)? {
        Some(r) if r.status == Status::Valid => {
            locked.revoke(serial, RevocationReason::Superseded)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// A request's fingerprint: a copy of it has the same; another request
/// reusing its id does not.
fn fingerprint(payload: &[u8]) -> String {
    pki_core::sha256_fingerprint(payload)
}

/// The stored answer to a copy of a request; a different request reusing
/// the id is refused (not stored).
fn repeat(
    stored: crate::inventory::StoredRequest,
    topic: String,
    id: &RequestId,
    payload: &[u8],
) -> Result<Outcome> {
    if stored.request_sha256 != fingerprint(payload) {
        // Not answered on the id's topic: the holder of the id is waiting
        // there for the answer to its own request, and another holder of
        // the claim (who can read the ids) must not be able to send it a
        // refusal.
        tracing::warn!("a request reuses the id {id} of another one: ignored");
        return Ok(Outcome::ignored());
    }
    let answer: Answer = serde_json::from_str(&stored.answer).map_err(|e| Error::Lifecycle {
        reason: format!("the stored answer to {id} is corrupt: {e}"),
    })?;
    Outcome::answer(topic, &answer, true)
}

/// Answers the request that arrived on `topic` with `payload` (the caller
/// commits `locked`, then publishes the answer, then acknowledges the
/// request).
pub fn handle(
    locked: &mut LockedCa<'_>,
    policy: &Policy,
    topic: &str,
    payload: &[u8],
) -> Result<Outcome> {
    match topics::parse(topic) {
        Some(("enroll", claim, "req")) => enroll(locked, policy, claim, payload),
        Some(("renew", name, "req")) => renew(locked, policy, name, payload),
        Some(("renew", name, "done")) => done(locked, name, payload),
        _ => Ok(Outcome::ignored()),
    }
}

/// The request id of a payload that did not parse, when it has one.
fn loose_id(payload: &[u8]) -> Option<RequestId> {
    #[derive(serde::Deserialize)]
    struct Id {
        request_id: RequestId,
    }
    serde_json::from_slice::<Id>(payload)
        .ok()
        .map(|i| i.request_id)
}

/// A request that does not parse: logged, not answered (an answer on its
/// id's topic could be a refusal sent to another device waiting there),
/// not stored.
fn unreadable(payload: &[u8], e: serde_json::Error) -> Result<Outcome> {
    let id = loose_id(payload);
    tracing::info!(
        "a request{} does not parse: {e}; ignored",
        id.map(|i| format!(" with id {i}")).unwrap_or_default()
    );
    Ok(Outcome::ignored())
}

/// A certificate a request got, before its answer is stored.
struct Issued {
    cert: Certificate,
    chain: String,
    /// A renewal's old certificate.
    old: Option<Serial>,
    /// When a renewal's grace period starts.
    grace_from: SystemTime,
}

/// Stores the answer to `requester`'s request `id` (`kind`: `enroll` or
/// `renew`) with its fingerprint, and returns it.
fn store(
    locked: &mut LockedCa<'_>,
    kind: &str,
    requester: &str,
    id: &RequestId,
    payload: &[u8],
    decided: Checked<Issued>,
    now: SystemTime,
) -> Result<Answer> {
    let (answer, rejected, old, new, at) = match decided {
        Ok(issued) => (
            Answer::Issued {
                request_id: id.clone(),
                serial: issued.cert.serial().to_string(),
                certificate: issued.chain,
            },
            false,
            issued.old,
            Some(issued.cert.serial()),
            issued.grace_from,
        ),
        Err(Refused(reason, detail)) => (
            Answer::Rejected {
                request_id: id.to_string(),
                reason,
                detail,
            },
            true,
            None,
            None,
            now,
        ),
    };
    // An enrollment counts for its claim's quota by its new serial.
    locked.store_answer(
        requester,
        id.as_str(),
        kind,
        &fingerprint(payload),
        &String::from_utf8_lossy(&encode(&answer)?),
        rejected,
        (old.as_ref(), new.as_ref()),
        at,
    )?;
    Ok(answer)
}

fn enroll(
    locked: &mut LockedCa<'_>,
    policy: &Policy,
    claim: &str,
    payload: &[u8],
) -> Result<Outcome> {
    let request: EnrollRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return unreadable(payload, e),
    };
    let id = request.request_id.clone();
    let topic = topics::enroll_response(claim, id.as_str());
    if let Some(stored) = locked.answer(claim, id.as_str())? {
        return repeat(stored, topic, &id, payload);
    }
    let now = SystemTime::now();
    let decided = enroll_checked(locked, policy, claim, &request)?.map(|(cert, chain)| Issued {
        cert,
        chain,
        old: None,
        grace_from: now,
    });
    let answer = store(locked, "enroll", claim, &id, payload, decided, now)?;
    Outcome::answer(topic, &answer, false)
}

fn enroll_checked(
    locked: &mut LockedCa<'_>,
    policy: &Policy,
    claim: &str,
    request: &EnrollRequest,
) -> Result<Checked<(Certificate, String)>> {
    let now = SystemTime::now();
    let claim_policy = locked.claim_policy(claim)?;
    let facts = EnrollFacts {
        claim_current: claim_policy.is_some()
            && locked
                .valid_for(claim)?
                .into_iter()
                .any(|r| r.role == Some(Role::Claim) && r.not_after.0 > now),
        enrolled: if claim_policy.is_some() {
            locked.enrolled_by(claim)?
        } else {
            0
        },
        name_used: locked.name_used(&request.name)?,
        policy: claim_policy,
    };
    let csr = match decide::enroll(&facts, claim, request, now) {
        Ok(csr) => csr,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let validity = Validity::days_from_now(policy.days)?;
    signed(issue(
        locked,
        &csr,
        validity,
        Role::Device,
        &format!("enroll/{claim}"),
    ))
}

/// What signing decided: a certificate, or a refusal when the CA would
/// not sign this CSR (its subject's attributes, a key it does not take,
/// its own validity), never an error that would hold up the batch.
fn signed<T>(issued: Result<T>) -> Result<Checked<T>> {
    match issued {
        Ok(t) => Ok(Ok(t)),
        // The CA's own trouble (its validity over, randomness or signing
        // failing) is an error: retried, never a stored refusal.
        Err(Error::Invalid(
            e @ (pki_core::Error::InvalidValidity { .. } | pki_core::Error::Crypto { .. }),
        )) => Err(Error::Invalid(e)),
        Err(Error::Invalid(e)) => Ok(Err(refused(Rejection::BadCsr, e.to_string()))),
        Err(e) => Err(e),
    }
}

/// Signs, records (its path names how it was issued: no file here) and
/// returns the certificate and the chain to send (the leaf, then the
/// issuing CA when it is an intermediate).
fn issue(
    locked: &mut LockedCa<'_>,
    csr: &Csr,
    validity: Validity,
    role: Role,
    how: &str,
) -> Result<(Certificate, String)> {
    let mut params = IssueParams::new(Profile::Client, validity);
    params.sans.push(role.san()?);
    let issued = locked.sign(csr, &params)?;
    let cert = issued.certificate;
    let mut record = Record::new(
        &cert,
        Profile::Client,
        &PathBuf::from(format!("mqtt:{how}")),
    );
    record.role = Some(role);
    locked.record(std::slice::from_ref(&record))?;
    let chain = crate::ops::cert_file_pem(&cert, locked.ca_certificate()?);
    Ok((cert, chain))
}

fn renew(
    locked: &mut LockedCa<'_>,
    policy: &Policy,
    name: &str,
    payload: &[u8],
) -> Result<Outcome> {
    let request: RenewRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return unreadable(payload, e),
    };
    let id = request.request_id.clone();
    let topic = topics::renew_response(name, id.as_str());
    if let Some(stored) = locked.answer(name, id.as_str())? {
        return repeat(stored, topic, &id, payload);
    }
    let mut revoked = Vec::new();
    let now = SystemTime::now();
    let decided = renew_checked(locked, policy, name, &request, &mut revoked)?.map(
        |(old, cert, chain, grace_from)| Issued {
            cert,
            chain,
            old: Some(old),
            grace_from,
        },
    );
    let answer = store(locked, "renew", name, &id, payload, decided, now)?;
    let mut outcome = Outcome::answer(topic, &answer, false)?;
    outcome.revoked = revoked;
    Ok(outcome)
}

/// A renewal's old serial, the new certificate and chain, and when its
/// grace period starts.
type Renewed = (Serial, Certificate, String, SystemTime);

fn renew_checked(
    locked: &mut LockedCa<'_>,
    policy: &Policy,
    name: &str,
    request: &RenewRequest,
    revoked: &mut Vec<Serial>,
) -> Result<Checked<Renewed>> {
    let now = SystemTime::now();
    let mut facts = RenewFacts::default();
    if let Ok(serial) = request.serial.parse::<Serial>() {
        facts.record = locked.find(&serial)?;
        for renewal in locked.descendants(&serial)? {
            if let Some(Record {
                status: Status::Revoked { reason, .. },
                ..
            }) = locked.find(&renewal)?
                && reason != RevocationReason::Superseded
            {
                facts.revoked_renewal = Some((renewal, reason));
                break;
            }
        }
    }
    let renewal = match decide::renew(&facts, name, request, now) {
        Ok(renewal) => renewal,
        Err(refusal) => return Ok(Err(refusal)),
    };
    // One renewal pending per certificate: a new request (the answer to an
    // earlier one lost) gives up the certificate that one issued, and the
    // old certificate's grace period still runs from the first renewal (so
    // renewing again and again does not keep it alive).
    let validity = Validity::days_from_now(policy.days)?;
    let (cert, chain) = match signed(issue(
        locked,
        &renewal.csr,
        validity,
        renewal.role,
        &format!("renew/{name}"),
    ))? {
        Ok(issued) => issued,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let mut grace_from = now;
    for pending in locked.unsettled(None)? {
        if pending.requester == name && pending.old == renewal.old {
            if supersede(locked, &pending.new)? {
                revoked.push(pending.new);
            }
            grace_from = grace_from.min(pending.at.0);
            locked.settle(&pending.requester, &pending.request_id)?;
        }
    }
    Ok(Ok((renewal.old, cert, chain, grace_from)))
}

fn done(locked: &mut LockedCa<'_>, name: &str, payload: &[u8]) -> Result<Outcome> {
    let mut outcome = Outcome {
        rejected: None,
        ..Outcome::ignored()
    };
    let Ok(done) = serde_json::from_slice::<RenewDone>(payload) else {
        outcome.rejected = Some(Rejection::BadRequest);
        return Ok(outcome);
    };
    let Some(stored) = locked.answer(name, done.request_id.as_str())? else {
        outcome.rejected = Some(Rejection::BadRequest);
        return Ok(outcome);
    };
    let (Some(old), Some(new)) = (stored.old_serial, stored.new_serial) else {
        outcome.rejected = Some(Rejection::BadRequest);
        return Ok(outcome);
    };
    if stored.settled || done.serial.parse::<Serial>().ok() != Some(new) {
        outcome.repeated = true;
        return Ok(outcome);
    }
    if supersede(locked, &old)? {
        outcome.revoked.push(old);
    }
    locked.settle(name, done.request_id.as_str())?;
    Ok(outcome)
}

/// Revokes (superseded) the old certificate of every renewal answered
/// more than `grace` ago and never confirmed; their serials.
pub fn settle_overdue(locked: &mut LockedCa<'_>, grace: Duration) -> Result<Vec<Serial>> {
    let before = SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut revoked = Vec::new();
    for pending in locked.unsettled(Some(before))? {
        if supersede(locked, &pending.old)? {
            revoked.push(pending.old);
        }
        locked.settle(&pending.requester, &pending.request_id)?;
    }
    Ok(revoked)
}

/// A claim to issue: [`crate::ops::IssueRequest`] with role
/// [`Role::Claim`], and its policy.
pub fn claim_policy(
    names: Vec<String>,
    pattern: Option<String>,
    quota: Option<u64>,
    until: SystemTime,
) -> Result<ClaimPolicy> {
    for n in &names {
        check_name(n)?;
    }
    if let Some(p) = &pattern {
        check_name(&p.replace('*', "x"))?;
    }
    if names.is_empty() && pattern.is_none() {
        return Err(Error::InvalidName {
            name: String::new(),
            reason: "a claim needs the names it may enroll: --allow NAME (repeated), \
                     --allow-file FILE or --allow-pattern 'sensor-*'",
        });
    }
    Ok(ClaimPolicy {
        names,
        pattern,
        quota,
        until: Timestamp(until),
    })
}
