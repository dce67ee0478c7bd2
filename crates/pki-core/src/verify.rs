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
        if let Some(ku) = leaf.key_usage()? {
            if !ku.digital_signature() {
                return Err(invalid(InvalidReason::MissingKeyUsage {
                    needed: "digitalSignature",
                }));
            }
        }
    }

    if let Some(name) = &options.name {
        let sans = leaf.subject_alt_names()?;
        let matched = match name.parse::<IpAddr>() {
            Ok(ip) => sans.iter().any(|s| *s == SubjectAltName::Ip(ip)),
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
