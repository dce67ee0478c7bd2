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
}

impl VerifyOptions<'_> {
    /// Check at the current time, with no profile, name or CRL.
    pub fn now() -> Self {
        Self {
            at: SystemTime::now(),
            profile: None,
            name: None,
            crl: None,
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

    if !ca.is_ca() {
        return Err(Error::NotACa {
            subject: ca.subject(),
            reason: "its BasicConstraints do not say cA: TRUE",
        });
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
        let serial = leaf.serial();
        if crl.is_revoked(&serial) {
            return Err(invalid(InvalidReason::Revoked {
                serial: serial.to_string(),
            }));
        }
    }
    Ok(())
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
}
