//! The CA's decisions on enrollment and renewal, as pure functions: the
//! facts the inventory holds ([`EnrollFacts`], [`RenewFacts`], read by the
//! caller inside its transaction), the request and the time in; what to
//! sign, or the refusal, out. No database, no clock, no I/O: table-tested
//! below.

use std::time::SystemTime;

use base64::Engine;
use mqtt_tls::lifecycle::{EnrollRequest, Rejection, RenewRequest};
use pki_core::{Certificate, Csr, RevocationReason, Serial};

use crate::files::check_name;
use crate::inventory::{ClaimPolicy, Record, Status};
use crate::roles::{Role, claims_role};

/// A refusal, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub Rejection, pub String);

/// A refusal for `reason`, with `detail` for people.
pub fn refused(reason: Rejection, detail: impl Into<String>) -> Refused {
    Refused(reason, detail.into())
}

/// A decision: `T`, or the refusal.
pub type Checked<T> = std::result::Result<T, Refused>;

/// At most this much of a requester's input is echoed in a refusal.
const ECHO: usize = 64;

/// `text` for a refusal's detail: at most 64 characters, escaped.
pub fn echo(text: &str) -> String {
    let shown: String = text.chars().take(ECHO).collect();
    let cut = if shown.len() < text.len() { "…" } else { "" };
    format!("{shown:?}{cut}")
}

/// What the inventory holds that decides an enrollment through a claim.
#[derive(Debug, Clone, Default)]
pub struct EnrollFacts {
    /// The claim's policy (`None`: not a claim this CA issued).
    pub policy: Option<ClaimPolicy>,
    /// Whether the claim holds a valid, unexpired claim certificate now.
    pub claim_current: bool,
    /// How many devices the claim enrolled.
    pub enrolled: u64,
    /// Whether a certificate was ever recorded with the requested name.
    pub name_used: bool,
}

/// Enrollment of `request.name` through `claim`: the CSR to sign for a
/// device, or the refusal.
pub fn enroll(
    facts: &EnrollFacts,
    claim: &str,
    request: &EnrollRequest,
    now: SystemTime,
) -> Checked<Csr> {
    let Some(policy) = &facts.policy else {
        return Err(refused(
            Rejection::NotAClaim,
            format!("{claim:?} is not a claim this CA issued"),
        ));
    };
    // The claim's own certificate must be current too (the broker checks
    // it at the handshake; a revocation since is seen here).
    if policy.until.0 <= now || !facts.claim_current {
        return Err(refused(
            Rejection::ClaimExpired,
            format!(
                "the claim {claim:?} ended at {} or was revoked",
                policy.until
            ),
        ));
    }
    let name = &request.name;
    if check_name(name).is_err() || !policy.allows(name) {
        return Err(refused(
            Rejection::NameNotAllowed,
            format!("the claim {claim:?} may not enroll {}", echo(name)),
        ));
    }
    if let Some(quota) = policy.quota
        && facts.enrolled >= quota
    {
        return Err(refused(
            Rejection::QuotaExhausted,
            format!("the claim {claim:?} enrolled its {quota} devices"),
        ));
    }
    // A name is given out once: not again after a revocation (a stolen
    // device holds the claim too) or an expiry (its session and any rules
    // under that name would pass to whoever enrolls it), and never a name
    // another role has (a service's rights).
    if facts.name_used {
        return Err(refused(
            Rejection::AlreadyEnrolled,
            format!(
                "{name:?} was enrolled or issued before: a name is given out once (an operator \
                 may issue it again with `provision issue client {name} --force`)"
            ),
        ));
    }
    checked_csr(&request.csr, name)
}

/// What the inventory holds that decides a renewal.
#[derive(Debug, Clone, Default)]
pub struct RenewFacts {
    /// The record of the serial the request names (`None`: not this CA's).
    pub record: Option<Record>,
    /// A certificate renewed from it (transitively) that was revoked for
    /// another reason than superseded, if any.
    pub revoked_renewal: Option<(Serial, RevocationReason)>,
}

/// A renewal to sign.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// The certificate renewed.
    pub old: Serial,
    /// The CSR, its proof checked.
    pub csr: Csr,
    /// The role the new certificate carries: the old one's.
    pub role: Role,
}

/// Renewal of `name`'s current certificate: what to sign, or the refusal.
pub fn renew(
    facts: &RenewFacts,
    name: &str,
    request: &RenewRequest,
    now: SystemTime,
) -> Checked<Renewal> {
    let current = Certificate::from_pem(&request.certificate).map_err(|e| {
        refused(
            Rejection::BadRequest,
            format!("the current certificate: {e}"),
        )
    })?;
    let serial = current.serial();
    if request.serial.parse::<Serial>().ok().as_ref() != Some(&serial) {
        return Err(refused(
            Rejection::BadRequest,
            "the serial is not the current certificate's",
        ));
    }
    let record = match &facts.record {
        Some(r) if r.serial == serial && r.sha256 == current.sha256_fingerprint() => r,
        _ => {
            return Err(refused(
                Rejection::UnknownCertificate,
                format!("serial {serial} is not a certificate this CA issued"),
            ));
        }
    };
    let cn = current.common_name();
    if record.common_name != name || cn.as_deref() != Some(name) {
        return Err(refused(
            Rejection::NameMismatch,
            format!("the certificate is for {cn:?}, the request came from {name:?}"),
        ));
    }
    if record.status != Status::Valid || record.not_after.0 <= now {
        return Err(refused(
            Rejection::NotCurrent,
            format!("serial {serial} is revoked or expired"),
        ));
    }
    // A renewal of it revoked for a reason that is not its own renewal
    // (the operator's): this certificate may not renew around that.
    if let Some((renewal, reason)) = &facts.revoked_renewal {
        return Err(refused(
            Rejection::NotCurrent,
            format!(
                "serial {serial} was renewed as {renewal}, which is revoked ({reason}); ask \
                 the CA's operator"
            ),
        ));
    }
    let csr = match checked_csr(&request.csr, name) {
        Ok(csr) => csr,
        Err(Refused(Rejection::BadCsr, detail)) if detail.contains("CN is") => {
            return Err(refused(Rejection::NameMismatch, detail));
        }
        Err(refusal) => return Err(refusal),
    };
    // A renewal brings a new key: the old one may be the very key a
    // revocation for key compromise is about, and a certificate renewed
    // onto it would carry the compromise on.
    if csr
        .public_key_der()
        .ok()
        .is_some_and(|new| current.public_key_der().ok() == Some(new))
    {
        return Err(refused(
            Rejection::BadCsr,
            "the CSR's key is the current certificate's: a renewal brings a new key",
        ));
    }
    let proof = base64::engine::general_purpose::STANDARD
        .decode(request.proof.as_bytes())
        .ok();
    let proven = proof.is_some_and(|p| {
        current
            .verify_signature_by_key(csr.der(), &p)
            .unwrap_or(false)
    });
    if !proven {
        return Err(refused(
            Rejection::BadProof,
            "the proof is not the current key's signature over the CSR",
        ));
    }
    Ok(Renewal {
        old: serial,
        csr,
        role: record.role.unwrap_or(Role::Device),
    })
}

/// The CSR, verified, its CN `name`, asking for no role and no CA powers.
pub fn checked_csr(pem: &str, name: &str) -> Checked<Csr> {
    let csr = Csr::from_pem(pem).map_err(|e| refused(Rejection::BadCsr, e.to_string()))?;
    let cn = csr.common_name();
    if cn.as_deref() != Some(name) {
        return Err(refused(
            Rejection::BadCsr,
            format!(
                "the CSR's CN is {}, not the name {}",
                cn.as_deref().map_or("missing".into(), echo),
                echo(name)
            ),
        ));
    }
    if let Some(powers) = csr.requested_ca_powers() {
        return Err(refused(
            Rejection::BadCsr,
            format!("the CSR asks for CA powers ({powers})"),
        ));
    }
    if csr.requested_sans().iter().any(claims_role) {
        return Err(refused(
            Rejection::BadCsr,
            "the CSR asks for a role; only the CA grants one",
        ));
    }
    Ok(csr)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;
    use std::sync::LazyLock;
    use std::time::Duration;

    use mqtt_tls::lifecycle::RequestId;
    use pki_core::{
        CertificateAuthority, CsrParams, IssueParams, KeyPair, KeyType, Profile, Subject,
        SubjectAltName, Timestamp, Validity,
    };

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn now() -> SystemTime {
        SystemTime::now()
    }

    fn id(s: &str) -> RequestId {
        serde_json::from_value(serde_json::json!(s)).unwrap()
    }

    /// A CSR for `cn` with `key`, asking for `sans`.
    fn csr(cn: &str, key: &KeyPair, sans: Vec<SubjectAltName>) -> Csr {
        let mut params = CsrParams::new(Subject::new(cn).unwrap());
        params.sans = sans;
        Csr::new(&params, key).unwrap()
    }

    fn policy(names: &[&str], pattern: Option<&str>, quota: Option<u64>, days: i64) -> ClaimPolicy {
        let until = if days >= 0 {
            now() + DAY * u32::try_from(days).unwrap()
        } else {
            now() - DAY * u32::try_from(-days).unwrap()
        };
        ClaimPolicy {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            pattern: pattern.map(str::to_owned),
            quota,
            until: Timestamp(until),
        }
    }

    fn facts(policy: Option<ClaimPolicy>) -> EnrollFacts {
        EnrollFacts {
            policy,
            claim_current: true,
            enrolled: 0,
            name_used: false,
        }
    }

    fn enroll_request(name: &str, csr_pem: String) -> EnrollRequest {
        EnrollRequest {
            request_id: id("r-1"),
            name: name.into(),
            csr: csr_pem,
        }
    }

    static KEY: LazyLock<KeyPair> = LazyLock::new(|| KeyPair::generate(KeyType::P256).unwrap());

    #[test]
    fn enrollment_table() {
        let good = |n: &str| csr(n, &KEY, vec![]).to_pem();
        let role_san = SubjectAltName::Uri("urn:mqtt-mtls:role:service".into());
        type Case = (&'static str, EnrollFacts, EnrollRequest, Option<Rejection>);
        let listed = policy(&["gw-1", "gw-2"], Some("sensor-*"), Some(2), 30);
        let cases: Vec<Case> = vec![
            (
                "not a claim",
                facts(None),
                enroll_request("gw-1", good("gw-1")),
                Some(Rejection::NotAClaim),
            ),
            (
                "a listed name",
                facts(Some(listed.clone())),
                enroll_request("gw-1", good("gw-1")),
                None,
            ),
            (
                "a name matching the pattern",
                facts(Some(listed.clone())),
                enroll_request("sensor-77", good("sensor-77")),
                None,
            ),
            (
                "a name neither listed nor matching",
                facts(Some(listed.clone())),
                enroll_request("gw-3", good("gw-3")),
                Some(Rejection::NameNotAllowed),
            ),
            (
                "the pattern matches whole names only",
                facts(Some(listed.clone())),
                enroll_request("xsensor-1", good("xsensor-1")),
                Some(Rejection::NameNotAllowed),
            ),
            (
                "a name the name rule refuses, though the pattern matches",
                facts(Some(listed.clone())),
                enroll_request("sensor-1/cmd", good("sensor-1")),
                Some(Rejection::NameNotAllowed),
            ),
            (
                "a wildcard name",
                facts(Some(listed.clone())),
                enroll_request("sensor-#", good("sensor-1")),
                Some(Rejection::NameNotAllowed),
            ),
            (
                "the claim's policy ended",
                facts(Some(policy(&["gw-1"], None, None, -1))),
                enroll_request("gw-1", good("gw-1")),
                Some(Rejection::ClaimExpired),
            ),
            (
                "the claim's certificate revoked or expired",
                EnrollFacts {
                    claim_current: false,
                    ..facts(Some(listed.clone()))
                },
                enroll_request("gw-1", good("gw-1")),
                Some(Rejection::ClaimExpired),
            ),
            (
                "the quota used up",
                EnrollFacts {
                    enrolled: 2,
                    ..facts(Some(listed.clone()))
                },
                enroll_request("gw-1", good("gw-1")),
                Some(Rejection::QuotaExhausted),
            ),
            (
                "one left of the quota",
                EnrollFacts {
                    enrolled: 1,
                    ..facts(Some(listed.clone()))
                },
                enroll_request("gw-2", good("gw-2")),
                None,
            ),
            (
                "no quota",
                EnrollFacts {
                    enrolled: 10_000,
                    ..facts(Some(policy(&["gw-1"], None, None, 30)))
                },
                enroll_request("gw-1", good("gw-1")),
                None,
            ),
            (
                "a name used before (revoked, expired or another role's)",
                EnrollFacts {
                    name_used: true,
                    ..facts(Some(listed.clone()))
                },
                enroll_request("gw-1", good("gw-1")),
                Some(Rejection::AlreadyEnrolled),
            ),
            (
                "a CSR for another name",
                facts(Some(listed.clone())),
                enroll_request("gw-1", good("gw-2")),
                Some(Rejection::BadCsr),
            ),
            (
                "a CSR asking for a role",
                facts(Some(listed.clone())),
                enroll_request("gw-1", csr("gw-1", &KEY, vec![role_san]).to_pem()),
                Some(Rejection::BadCsr),
            ),
            (
                "not a CSR",
                facts(Some(listed.clone())),
                enroll_request("gw-1", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n".into()),
                Some(Rejection::BadCsr),
            ),
        ];
        let n = cases.len();
        for (what, facts, request, expected) in cases {
            let got = enroll(&facts, "factory", &request, now());
            match (expected, &got) {
                (None, Ok(csr)) => assert_eq!(csr.common_name().as_deref(), Some(&*request.name)),
                (Some(reason), Err(Refused(r, _))) => assert_eq!(*r, reason, "{what}: {got:?}"),
                _ => panic!("{what}: expected {expected:?}, got {got:?}"),
            }
        }
        assert!(n >= 16);
    }

    /// A CA, a device's certificate and key, and its record.
    struct Device {
        cert: Certificate,
        key: KeyPair,
        record: Record,
    }

    static CA: LazyLock<CertificateAuthority> = LazyLock::new(|| {
        CertificateAuthority::new_root(
            &Subject::new("Decide CA").unwrap(),
            KeyPair::generate(KeyType::P256).unwrap(),
            Validity::days_from_now(30).unwrap(),
        )
        .unwrap()
    });

    fn device(name: &str, role: Option<Role>) -> Device {
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let mut params = IssueParams::new(Profile::Client, Validity::days_from_now(10).unwrap());
        if let Some(role) = role {
            params.sans.push(role.san().unwrap());
        }
        let cert = CA
            .sign(&csr(name, &key, vec![]), &params)
            .unwrap()
            .certificate;
        let mut record = Record::new(&cert, Profile::Client, Path::new("mqtt:test"));
        record.role = role;
        Device { cert, key, record }
    }

    fn renew_request(d: &Device, csr: &Csr, proof_key: &KeyPair) -> RenewRequest {
        let proof = proof_key.sign(csr.der()).unwrap();
        RenewRequest {
            request_id: id("n-1"),
            serial: d.cert.serial().to_string(),
            certificate: d.cert.to_pem(),
            csr: csr.to_pem(),
            proof: base64::engine::general_purpose::STANDARD.encode(proof.as_bytes()),
        }
    }

    #[test]
    fn renewal_table() {
        let dev = device("dev-1", Some(Role::Device));
        let svc = device("svc-1", Some(Role::Service));
        let old = device("old-1", None);
        let other = device("dev-2", Some(Role::Device));
        let new_key = KeyPair::generate(KeyType::P256).unwrap();
        let known = |d: &Device| RenewFacts {
            record: Some(d.record.clone()),
            revoked_renewal: None,
        };
        let good = |d: &Device| {
            let name = d.record.common_name.clone();
            renew_request(d, &csr(&name, &new_key, vec![]), &d.key)
        };
        let revoked = |d: &Device, reason| {
            let mut f = known(d);
            if let Some(r) = f.record.as_mut() {
                r.status = Status::Revoked {
                    at: Timestamp(now()),
                    reason,
                };
            }
            f
        };
        type Case = (
            &'static str,
            RenewFacts,
            &'static str,
            RenewRequest,
            Result<Role, Rejection>,
        );
        let mut cases: Vec<Case> = vec![
            (
                "a device renews",
                known(&dev),
                "dev-1",
                good(&dev),
                Ok(Role::Device),
            ),
            (
                "a service keeps its role",
                known(&svc),
                "svc-1",
                good(&svc),
                Ok(Role::Service),
            ),
            (
                "a certificate from before roles renews as a device",
                known(&old),
                "old-1",
                good(&old),
                Ok(Role::Device),
            ),
            (
                "not a certificate this CA recorded",
                RenewFacts::default(),
                "dev-1",
                good(&dev),
                Err(Rejection::UnknownCertificate),
            ),
            (
                "a record of another certificate under the serial",
                known(&other),
                "dev-1",
                good(&dev),
                Err(Rejection::UnknownCertificate),
            ),
            (
                "another device's certificate",
                known(&dev),
                "dev-2",
                good(&dev),
                Err(Rejection::NameMismatch),
            ),
            (
                "revoked for key compromise",
                revoked(&dev, RevocationReason::KeyCompromise),
                "dev-1",
                good(&dev),
                Err(Rejection::NotCurrent),
            ),
            (
                "superseded by an earlier renewal",
                revoked(&dev, RevocationReason::Superseded),
                "dev-1",
                good(&dev),
                Err(Rejection::NotCurrent),
            ),
            (
                "its renewal revoked by the operator",
                RenewFacts {
                    revoked_renewal: Some((other.cert.serial(), RevocationReason::Unspecified)),
                    ..known(&dev)
                },
                "dev-1",
                good(&dev),
                Err(Rejection::NotCurrent),
            ),
            (
                "its renewal revoked for key compromise",
                RenewFacts {
                    revoked_renewal: Some((other.cert.serial(), RevocationReason::KeyCompromise)),
                    ..known(&dev)
                },
                "dev-1",
                good(&dev),
                Err(Rejection::NotCurrent),
            ),
            (
                "a proof by another key",
                known(&dev),
                "dev-1",
                renew_request(&dev, &csr("dev-1", &new_key, vec![]), &new_key),
                Err(Rejection::BadProof),
            ),
            (
                "a CSR for another name",
                known(&dev),
                "dev-1",
                renew_request(&dev, &csr("dev-2", &new_key, vec![]), &dev.key),
                Err(Rejection::NameMismatch),
            ),
            (
                "a CSR asking for a role",
                known(&dev),
                "dev-1",
                renew_request(
                    &dev,
                    &csr("dev-1", &new_key, vec![Role::Service.san().unwrap()]),
                    &dev.key,
                ),
                Err(Rejection::BadCsr),
            ),
        ];
        // Expired: the record says so.
        let mut expired = known(&dev);
        if let Some(r) = expired.record.as_mut() {
            r.not_after = Timestamp(now() - DAY);
        }
        cases.push((
            "expired",
            expired,
            "dev-1",
            good(&dev),
            Err(Rejection::NotCurrent),
        ));
        // A request whose serial is not its certificate's.
        let mut wrong_serial = good(&dev);
        wrong_serial.serial = other.cert.serial().to_string();
        cases.push((
            "a serial not the certificate's",
            known(&dev),
            "dev-1",
            wrong_serial,
            Err(Rejection::BadRequest),
        ));
        let mut no_cert = good(&dev);
        no_cert.certificate = "not a certificate".into();
        cases.push((
            "no certificate",
            known(&dev),
            "dev-1",
            no_cert,
            Err(Rejection::BadRequest),
        ));
        let mut bad_proof = good(&dev);
        bad_proof.proof = "%%% not base64".into();
        cases.push((
            "a proof that is not base64",
            known(&dev),
            "dev-1",
            bad_proof,
            Err(Rejection::BadProof),
        ));
        cases.push((
            "the same key again",
            known(&dev),
            "dev-1",
            renew_request(&dev, &csr("dev-1", &dev.key, vec![]), &dev.key),
            Err(Rejection::BadCsr),
        ));
        let mut bad_csr = good(&dev);
        bad_csr.csr = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n".into();
        cases.push((
            "not a CSR",
            known(&dev),
            "dev-1",
            bad_csr,
            Err(Rejection::BadCsr),
        ));
        let n = cases.len();
        for (what, facts, name, request, expected) in cases {
            let got = renew(&facts, name, &request, now());
            match (&expected, &got) {
                (Ok(role), Ok(r)) => {
                    assert_eq!(r.role, *role, "{what}");
                    assert_eq!(r.old, facts.record.as_ref().unwrap().serial, "{what}");
                }
                (Err(reason), Err(Refused(r, _))) => assert_eq!(r, reason, "{what}: {got:?}"),
                _ => panic!("{what}: expected {expected:?}, got {got:?}"),
            }
        }
        assert!(n >= 18);
    }

    #[test]
    fn echoed_input_is_bounded_and_escaped() {
        let long = "x".repeat(200);
        assert_eq!(echo(&long).chars().filter(|c| *c == 'x').count(), ECHO);
        assert!(echo(&long).ends_with('…'));
        assert_eq!(echo("a\nb"), "\"a\\nb\"");
    }
}
