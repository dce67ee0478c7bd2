//! Checking an end-entity certificate against a CA, with a typed reason
//! when it fails.

use std::net::IpAddr;
use std::time::SystemTime;

use der::oid::ObjectIdentifier;
use der::oid::db::rfc5280::{
    ID_CE_AUTHORITY_KEY_IDENTIFIER, ID_CE_BASIC_CONSTRAINTS, ID_CE_EXT_KEY_USAGE, ID_CE_KEY_USAGE,
    ID_CE_SUBJECT_ALT_NAME, ID_CE_SUBJECT_KEY_IDENTIFIER,
};
use der::referenced::OwnedToRef;
use spki::AlgorithmIdentifierRef;

use crate::algorithm::verify_signature;
use crate::cert::Certificate;
use crate::crl::Crl;
use crate::error::{Error, InvalidReason, Result};
use crate::profile::Profile;
use crate::san::SubjectAltName;

/// What [`verify`] checks besides signature and issuer.
#[derive(Debug, Clone)]
pub struct VerifyOptions<'a> {
    /// The time to check validity windows at.
    pub at: SystemTime,
    /// Check the extended key usage (and that the certificate is not a CA).
    pub profile: Option<Profile>,
    /// The host the certificate must be valid for: a DNS name or an IP
    /// address, matched against the SANs only (RFC 6125; never the CN).
    pub name: Option<String>,
    /// A CRL from the same CA; a listed serial fails with
    /// [`InvalidReason::Revoked`].
    pub crl: Option<&'a Crl>,
    /// Take every certificate in the trusted set as an anchor, an
    /// intermediate CA included (OpenSSL's `partial_chain`, and what rustls
    /// does with the certificates it is given). Off by default: only a
    /// self-signed root is an anchor, and an intermediate needs its root in
    /// the set. For a CA the caller holds itself (its own CA folder).
    pub partial_chain: bool,
}

impl VerifyOptions<'_> {
    /// Check at the current time, with no profile, name or CRL.
    pub fn now() -> Self {
        Self {
            at: SystemTime::now(),
            profile: None,
            name: None,
            crl: None,
            partial_chain: false,
        }
    }
}

/// Extensions this verifier processes; any other critical one fails (RFC 5280
/// section 4.2).
const UNDERSTOOD: [ObjectIdentifier; 6] = [
    ID_CE_BASIC_CONSTRAINTS,
    ID_CE_KEY_USAGE,
    ID_CE_EXT_KEY_USAGE,
    ID_CE_SUBJECT_ALT_NAME,
    ID_CE_SUBJECT_KEY_IDENTIFIER,
    ID_CE_AUTHORITY_KEY_IDENTIFIER,
];

/// Verifies that `leaf` was issued by one of `trusted` and is valid under
/// `options`.
///
/// On failure the error is [`Error::Invalid`] with the typed
/// [`InvalidReason`], or [`Error::NotACa`] when the issuer named by the
/// leaf cannot issue.
pub fn verify(
    leaf: &Certificate,
    trusted: &[Certificate],
    options: &VerifyOptions<'_>,
) -> Result<()> {
    let invalid = |reason| Error::Invalid {
        subject: leaf.subject(),
        reason,
    };
    let tbs = leaf.as_x509().tbs_certificate();
    let candidates: Vec<&Certificate> = trusted
        .iter()
        .filter(|ca| ca.as_x509().tbs_certificate().subject() == tbs.issuer())
        .collect();
    if candidates.is_empty() {
        return Err(invalid(InvalidReason::IssuerMismatch {
            issuer: leaf.issuer(),
            ca_subject: trusted
                .iter()
                .map(Certificate::subject)
                .collect::<Vec<_>>()
                .join(" | "),
        }));
    }

    if leaf.as_x509().signature_algorithm() != tbs.signature() {
        return Err(invalid(InvalidReason::SignatureAlgorithmMismatch));
    }
    let signed = leaf.tbs_bytes()?;
    let alg = AlgorithmIdentifierRef::from(leaf.as_x509().signature_algorithm());
    let signature = leaf
        .as_x509()
        .signature()
        .as_bytes()
        .ok_or_else(|| Error::malformed("certificate", "signature has unused bits"))?;
    let mut issuer = None;
    let mut unsupported = None;
    for ca in candidates {
        let spki = ca
            .as_x509()
            .tbs_certificate()
            .subject_public_key_info()
            .owned_to_ref();
        match verify_signature(&spki, &alg, signed, signature) {
            Ok(true) => {
                issuer = Some(ca);
                break;
            }
            Ok(false) => {}
            Err(e) => unsupported = Some(e),
        }
    }
    let Some(ca) = issuer else {
        return Err(match unsupported {
            Some(Error::UnsupportedAlgorithm { algorithm, .. }) => {
                invalid(InvalidReason::UnsupportedSignature { algorithm })
            }
            _ => invalid(InvalidReason::BadSignature),
        });
    };

    // A decode error here is a broken CA certificate, not "not a CA".
    if ca.ca_constraint()?.is_none() {
        return Err(Error::NotACa {
            subject: ca.subject(),
            reason: "its BasicConstraints do not say cA: TRUE",
        });
    }
    if let Err(reason) = can_issue(ca) {
        return Err(invalid(InvalidReason::IssuerRejected {
            issuer: ca.subject(),
            reason,
        }));
    }
    if !options.partial_chain
        && let Err(reason) = anchored(ca, trusted, options.at)
    {
        return Err(invalid(InvalidReason::IssuerRejected {
            issuer: ca.subject(),
            reason,
        }));
    }
    let ca_validity = ca.validity();
    if !ca_validity.contains(options.at) {
        return Err(invalid(InvalidReason::IssuerNotValid {
            not_before: ca_validity.not_before(),
            not_after: ca_validity.not_after(),
        }));
    }
    let validity = leaf.validity();
    if options.at < validity.not_before() {
        return Err(invalid(InvalidReason::NotYetValid {
            not_before: validity.not_before(),
            now: options.at,
        }));
    }
    if options.at > validity.not_after() {
        return Err(invalid(InvalidReason::Expired {
            not_after: validity.not_after(),
            now: options.at,
        }));
    }
    for ext in tbs.extensions().into_iter().flatten() {
        if ext.critical && !UNDERSTOOD.contains(&ext.extn_id) {
            return Err(invalid(InvalidReason::UnknownCriticalExtension {
                oid: ext.extn_id.to_string(),
            }));
        }
    }

    if let Some(profile) = options.profile {
        if leaf.is_ca() {
            return Err(invalid(InvalidReason::IsCa));
        }
        let usages = leaf.tls_usages()?;
        let allowed = match profile {
            Profile::Client => usages.client_auth,
            Profile::Server => usages.server_auth,
        };
        if !allowed {
            return Err(invalid(InvalidReason::MissingExtendedKeyUsage {
                needed: profile.eku_name(),
            }));
        }
        if let Some(ku) = leaf.key_usage()?
            && !ku.digital_signature()
        {
            return Err(invalid(InvalidReason::MissingKeyUsage {
                needed: "digitalSignature",
            }));
        }
    }

    if let Some(name) = &options.name {
        let sans = leaf.subject_alt_names()?;
        let matched = match name.parse::<IpAddr>() {
            Ok(ip) => sans.contains(&SubjectAltName::Ip(ip)),
            Err(_) => sans.iter().any(|s| match s {
                SubjectAltName::Dns(d) => d.matches(name),
                _ => false,
            }),
        };
        if !matched {
            return Err(invalid(InvalidReason::NameMismatch {
                expected: name.clone(),
                present: sans
                    .iter()
                    .filter(|s| !matches!(s, SubjectAltName::Uri(_)))
                    .map(ToString::to_string)
                    .collect(),
            }));
        }
    }

    if let Some(crl) = options.crl {
        if !crl.verify_issued_by(ca)? {
            return Err(Error::Malformed {
                what: "CRL",
                reason: format!("it was not issued by the CA {}", ca.subject()),
            });
        }
        // A CRL out of its window, or with a critical extension we cannot
        // read, says nothing reliable about revocation: fail closed.
        let stale = |reason: String| Error::Malformed {
            what: "CRL",
            reason,
        };
        if crl.this_update() > options.at + crate::CLOCK_SKEW_ALLOWANCE {
            return Err(stale("its this update lies in the future".into()));
        }
        if let Some(next) = crl.next_update()
            && next < options.at
        {
            return Err(stale(format!(
                "it is out of date: its next update was due at {}; write a new CRL",
                crate::Timestamp(next)
            )));
        }
        if let Some(oid) = crl.unknown_critical_extension() {
            return Err(stale(format!(
                "it carries a critical extension this verifier does not understand ({oid})"
            )));
        }
        let serial = leaf.serial();
        if crl.is_revoked(&serial) {
            return Err(invalid(InvalidReason::Revoked {
                serial: serial.to_string(),
            }));
        }
    }
    Ok(())
}

/// Whether `ca` may sign certificates: key usage keyCertSign when it has a
/// key usage, and no critical extension this verifier does not understand.
fn can_issue(ca: &Certificate) -> std::result::Result<(), String> {
    match ca.key_usage() {
        Ok(Some(ku)) if !ku.key_cert_sign() => {
            return Err("its key usage lacks keyCertSign".into());
        }
        Ok(_) => {}
        Err(e) => return Err(format!("its key usage cannot be read: {e}")),
    }
    for ext in ca
        .as_x509()
        .tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
    {
        if ext.critical && !UNDERSTOOD.contains(&ext.extn_id) {
            return Err(format!(
                "it carries a critical extension this verifier does not understand ({})",
                ext.extn_id
            ));
        }
    }
    if ca.as_x509().signature_algorithm() != ca.as_x509().tbs_certificate().signature() {
        return Err("its outer signature algorithm differs from the one it signed".into());
    }
    Ok(())
}

/// Whether `cert` verifies with its own key and names itself as issuer.
fn self_signed(cert: &Certificate) -> bool {
    signed_by(cert, cert)
}

/// Whether `issuer`'s key verifies `cert`'s signature and names match.
fn signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    let tbs = cert.as_x509().tbs_certificate();
    if issuer.as_x509().tbs_certificate().subject() != tbs.issuer() {
        return false;
    }
    let (Ok(signed), Some(signature)) = (cert.tbs_bytes(), cert.as_x509().signature().as_bytes())
    else {
        return false;
    };
    let spki = issuer
        .as_x509()
        .tbs_certificate()
        .subject_public_key_info()
        .owned_to_ref();
    let alg = AlgorithmIdentifierRef::from(cert.as_x509().signature_algorithm());
    matches!(verify_signature(&spki, &alg, signed, signature), Ok(true))
}

/// The longest chain of CAs above a leaf that is followed.
const MAX_CHAIN: usize = 8;

/// Follows `ca` up through `trusted` to a self-signed root: each step a CA
/// that may issue and is valid at `at`. Only a root is a trust anchor; an
/// intermediate in the trusted set without its root is not (as OpenSSL
/// without `partial_chain`).
fn anchored(
    ca: &Certificate,
    trusted: &[Certificate],
    at: SystemTime,
) -> std::result::Result<(), String> {
    let mut current = ca;
    for _ in 0..MAX_CHAIN {
        if self_signed(current) {
            return Ok(());
        }
        let Some(parent) = trusted
            .iter()
            .find(|p| !std::ptr::eq(*p, current) && signed_by(current, p))
        else {
            return Err(format!(
                "it is an intermediate CA and its issuer {} is not among the trusted \
                 certificates; add the root CA to the CA file",
                current.issuer()
            ));
        };
        if !parent.is_ca() {
            return Err(format!("its issuer {} is not a CA", parent.subject()));
        }
        can_issue(parent).map_err(|r| format!("its issuer {}: {r}", parent.subject()))?;
        if !parent.validity().contains(at) {
            return Err(format!("its issuer {} is not valid now", parent.subject()));
        }
        current = parent;
    }
    Err(format!("no root within {MAX_CHAIN} CA certificates"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        CertificateAuthority, Csr, CsrParams, IssueParams, KeyPair, KeyType, Subject, Validity,
    };

    const DAY: Duration = Duration::from_secs(86_400);

    fn ca(cn: &str) -> CertificateAuthority {
        CertificateAuthority::new_root(
            &Subject::new(cn).unwrap(),
            KeyPair::generate(KeyType::P256).unwrap(),
            Validity::days_from_now(100).unwrap(),
        )
        .unwrap()
    }

    fn leaf(ca: &CertificateAuthority, profile: Profile, validity: Validity) -> Certificate {
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let mut params = CsrParams::new(Subject::new("leaf").unwrap());
        params.sans = vec![SubjectAltName::Dns("*.example.com".parse().unwrap())];
        let csr = Csr::new(&params, &key).unwrap();
        let mut issue = IssueParams::new(profile, validity);
        issue.allow_wildcards = true;
        issue.csr_names = crate::CsrNames::ALL;
        ca.sign(&csr, &issue).unwrap().certificate
    }

    fn reason(result: Result<()>) -> InvalidReason {
        match result {
            Err(Error::Invalid { reason, .. }) => reason,
            other => panic!("expected an invalid certificate, got {other:?}"),
        }
    }

    #[test]
    fn reports_each_failure_with_its_reason() {
        let ours = ca("Our Root");
        let cert = leaf(&ours, Profile::Server, Validity::days_from_now(10).unwrap());
        let trusted = [ours.certificate().clone()];

        let wrong_ca = ca("Other Root");
        assert!(matches!(
            reason(verify(
                &cert,
                &[wrong_ca.certificate().clone()],
                &VerifyOptions::now()
            )),
            InvalidReason::IssuerMismatch { .. }
        ));
        // A "fake" CA with the same name but another key.
        let fake = ca("Our Root");
        assert_eq!(
            reason(verify(
                &cert,
                &[fake.certificate().clone()],
                &VerifyOptions::now()
            )),
            InvalidReason::BadSignature
        );

        let later = VerifyOptions {
            at: SystemTime::now() + DAY * 20,
            ..VerifyOptions::now()
        };
        assert!(matches!(
            reason(verify(&cert, &trusted, &later)),
            InvalidReason::Expired { .. }
        ));
        let earlier = VerifyOptions {
            at: SystemTime::now() - DAY,
            ..VerifyOptions::now()
        };
        assert!(matches!(
            reason(verify(&cert, &trusted, &earlier)),
            InvalidReason::IssuerNotValid { .. } | InvalidReason::NotYetValid { .. }
        ));

        let as_client = VerifyOptions {
            profile: Some(Profile::Client),
            ..VerifyOptions::now()
        };
        assert_eq!(
            reason(verify(&cert, &trusted, &as_client)),
            InvalidReason::MissingExtendedKeyUsage {
                needed: "clientAuth"
            }
        );

        let named = |name: &str| VerifyOptions {
            profile: Some(Profile::Server),
            name: Some(name.into()),
            ..VerifyOptions::now()
        };
        verify(&cert, &trusted, &named("broker.example.com")).unwrap();
        let InvalidReason::NameMismatch { present, .. } =
            reason(verify(&cert, &trusted, &named("example.org")))
        else {
            panic!("expected a name mismatch")
        };
        assert_eq!(present, ["DNS:*.example.com"]);
        assert!(matches!(
            reason(verify(&cert, &trusted, &named("127.0.0.1"))),
            InvalidReason::NameMismatch { .. }
        ));

        // The CA certificate itself is not an end-entity certificate.
        let ca_as_leaf = VerifyOptions {
            profile: Some(Profile::Client),
            ..VerifyOptions::now()
        };
        assert_eq!(
            reason(verify(ours.certificate(), &trusted, &ca_as_leaf)),
            InvalidReason::IsCa
        );
    }

    #[test]
    fn not_yet_valid_names_the_dates() {
        let ours = ca("Root");
        let now = SystemTime::now();
        let cert = leaf(
            &ours,
            Profile::Client,
            Validity::new(now + DAY, now + DAY * 5).unwrap(),
        );
        let err = verify(&cert, &[ours.certificate().clone()], &VerifyOptions::now()).unwrap_err();
        assert!(err.to_string().contains("not valid before"), "{err}");
    }

    /// A leaf made and signed by rcgen under an rcgen CA built from
    /// `ca_params` (an independent implementation, for CAs this crate would
    /// never make).
    fn rcgen_chain(ca_params: rcgen::CertificateParams) -> (Certificate, Certificate) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(ca_cert.der(), &ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["broker.local".into()]).unwrap();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "broker");
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
        (
            Certificate::from_der(ca_cert.der().to_vec()).unwrap(),
            Certificate::from_der(leaf.der().to_vec()).unwrap(),
        )
    }

    fn rcgen_ca(cn: &str) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params
    }

    #[test]
    fn a_well_formed_rcgen_ca_is_accepted() {
        let (ca, leaf) = rcgen_chain(rcgen_ca("Good Root"));
        verify(&leaf, &[ca], &VerifyOptions::now()).unwrap();
    }

    #[test]
    fn a_ca_whose_key_usage_lacks_key_cert_sign_issues_nothing() {
        let mut params = rcgen_ca("Signing-only Root");
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let (ca, leaf) = rcgen_chain(params);
        let InvalidReason::IssuerRejected { reason, .. } =
            reason(verify(&leaf, &[ca], &VerifyOptions::now()))
        else {
            panic!("accepted a CA without keyCertSign")
        };
        assert!(reason.contains("keyCertSign"), "{reason}");
    }

    #[test]
    fn a_ca_with_an_unknown_critical_extension_issues_nothing() {
        let mut params = rcgen_ca("Constrained Root");
        let mut ext =
            rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![5, 0]);
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
        let (ca, leaf) = rcgen_chain(params);
        let InvalidReason::IssuerRejected { reason, .. } =
            reason(verify(&leaf, &[ca], &VerifyOptions::now()))
        else {
            panic!("accepted a CA with an unknown critical extension")
        };
        assert!(reason.contains("1.3.6.1.4.1.99999.1"), "{reason}");
    }

    #[test]
    fn an_intermediate_alone_is_not_a_trust_anchor() {
        let root = ca("Chain Root");
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let csr = Csr::new(
            &CsrParams::new(Subject::new("Chain Intermediate").unwrap()),
            &key,
        )
        .unwrap();
        let intermediate = root
            .sign_intermediate(&csr, Validity::days_from_now(50).unwrap(), 0)
            .unwrap()
            .certificate;
        let sub = CertificateAuthority::from_parts(intermediate.clone(), key).unwrap();
        let cert = leaf(&sub, Profile::Client, Validity::days_from_now(10).unwrap());
        let InvalidReason::IssuerRejected { reason, .. } = reason(verify(
            &cert,
            std::slice::from_ref(&intermediate),
            &VerifyOptions::now(),
        )) else {
            panic!("an intermediate without its root was taken as a trust anchor")
        };
        assert!(
            reason.contains("Chain Root"),
            "names the missing root: {reason}"
        );
        // Unless the caller says the set is its own trust store.
        let partial = VerifyOptions {
            partial_chain: true,
            ..VerifyOptions::now()
        };
        verify(&cert, std::slice::from_ref(&intermediate), &partial).unwrap();
        verify(
            &cert,
            &[intermediate, root.certificate().clone()],
            &VerifyOptions::now(),
        )
        .unwrap();
    }

    #[test]
    fn outer_and_inner_signature_algorithms_must_agree() {
        let ours = ca("Alg Root");
        let cert = leaf(&ours, Profile::Client, Validity::days_from_now(10).unwrap());
        // ecdsa-with-SHA256 appears twice: inside the signed part and after
        // it. The outer one becomes ecdsa-with-SHA384 (same length).
        let sha256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let mut der = cert.der().to_vec();
        let outer = der
            .windows(sha256.len())
            .rposition(|w| w == sha256)
            .unwrap();
        der[outer + sha256.len() - 1] = 0x03;
        let altered = Certificate::from_der(der).unwrap();
        assert_eq!(
            reason(verify(
                &altered,
                &[ours.certificate().clone()],
                &VerifyOptions::now()
            )),
            InvalidReason::SignatureAlgorithmMismatch
        );
    }

    #[test]
    fn an_out_of_date_crl_is_not_trusted() {
        use crate::{CrlParams, RevokedEntry};
        let ours = ca("Crl Root");
        let cert = leaf(&ours, Profile::Client, Validity::days_from_now(10).unwrap());
        let now = SystemTime::now();
        let stale = ours
            .crl(
                &[] as &[RevokedEntry],
                &CrlParams {
                    number: 1,
                    this_update: now - DAY * 10,
                    next_update: now - DAY,
                },
            )
            .unwrap();
        let options = VerifyOptions {
            crl: Some(&stale),
            ..VerifyOptions::now()
        };
        let err = verify(&cert, &[ours.certificate().clone()], &options).unwrap_err();
        assert!(err.to_string().contains("next update"), "{err}");
    }
}
