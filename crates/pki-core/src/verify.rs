//! Checking an end-entity certificate against trusted CAs, with a typed
//! reason when it fails.
//!
//! Besides signatures, issuer names and validity windows, [`verify`]
//! refuses (fail closed) what an RFC 5280 profile for device fleets must not
//! accept: a CA certificate as the end entity, zero or negative serials,
//! weak keys anywhere on the path, critical or missing key identifiers, an
//! empty or critical extended key usage, a malformed authority information
//! access, a CA whose basicConstraints are not critical, a root with an
//! extended key usage or inconsistent key identifiers, names outside a CA's
//! name constraints, and CRLs without a (non-critical) CRL number or from an
//! issuer whose key usage lacks cRLSign.

use std::net::IpAddr;
use std::time::SystemTime;

use der::oid::ObjectIdentifier;
use der::oid::db::rfc5280::{
    ANY_EXTENDED_KEY_USAGE, ID_CE_AUTHORITY_KEY_IDENTIFIER, ID_CE_BASIC_CONSTRAINTS,
    ID_CE_EXT_KEY_USAGE, ID_CE_KEY_USAGE, ID_CE_NAME_CONSTRAINTS, ID_CE_SUBJECT_ALT_NAME,
    ID_CE_SUBJECT_KEY_IDENTIFIER, ID_KP_CLIENT_AUTH, ID_KP_SERVER_AUTH,
    ID_PE_AUTHORITY_INFO_ACCESS,
};
use der::referenced::OwnedToRef;
use der::{Decode, oid::AssociatedOid};
use spki::AlgorithmIdentifierRef;
use x509_cert::ext::pkix::constraints::name::NameConstraints;
use x509_cert::ext::pkix::{
    AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage,
    SubjectAltName as X509San, SubjectKeyIdentifier,
};

use crate::algorithm::{KeyAlgorithm, verify_signature};
use crate::cert::Certificate;
use crate::crl::Crl;
use crate::error::{Error, InvalidReason, Result};
use crate::name_constraints::{self, Violation};
use crate::profile::Profile;
use crate::san::{DnsName, SubjectAltName};

/// What [`verify`] checks besides signature and issuer.
#[derive(Debug, Clone)]
pub struct VerifyOptions<'a> {
    /// The time to check validity windows at.
    pub at: SystemTime,
    /// Check the extended key usage for this profile: its purpose must be
    /// named (`anyExtendedKeyUsage` does not count), and the key usage, if
    /// present, must allow digitalSignature.
    pub profile: Option<Profile>,
    /// The host the certificate must be valid for: a DNS name or an IP
    /// address, matched against the SANs only (RFC 6125; never the CN).
    ///
    /// A DNS name matches ASCII case-insensitively, after it is checked to
    /// be a host name; an internationalised name must be given as A-labels
    /// (`xn--...`): a non-ASCII name is refused. An IPv4 address must be
    /// given as a dotted quad: a spelling with leading zeros, hex or fewer
    /// than four parts (`010.0.0.1`, `0x7f.1`) is refused as ambiguous, not
    /// matched. An IPv6 address matches as a parsed address, in any valid
    /// spelling; an IPv4-mapped IPv6 address does not match an IPv4 SAN.
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
    /// Untrusted certificates that may be steps on the way to a trusted
    /// anchor (the intermediates that came with the certificate), but are
    /// never anchors themselves, whatever `partial_chain` says (OpenSSL's
    /// `-untrusted`). The path is searched with backtracking over
    /// candidates with the same subject, without loops, at most eight CAs
    /// deep.
    pub intermediates: &'a [Certificate],
    /// The certificate checked is itself a CA certificate (an intermediate
    /// checked against its issuer): it must then be a CA, with critical
    /// basicConstraints. Off by default: a CA certificate (basicConstraints
    /// `cA: TRUE`, or keyCertSign in its key usage) fails with
    /// [`InvalidReason::IsCa`].
    pub expect_ca: bool,
}

impl VerifyOptions<'_> {
    /// Check an end-entity certificate at the current time, with no
    /// profile, name, CRL or intermediates.
    pub fn now() -> Self {
        Self {
            at: SystemTime::now(),
            profile: None,
            name: None,
            crl: None,
            partial_chain: false,
            intermediates: &[],
            expect_ca: false,
        }
    }
}

/// Extensions this verifier processes; any other critical one fails (RFC 5280
/// section 4.2).
const UNDERSTOOD: [ObjectIdentifier; 7] = [
    ID_CE_BASIC_CONSTRAINTS,
    ID_CE_KEY_USAGE,
    ID_CE_EXT_KEY_USAGE,
    ID_CE_SUBJECT_ALT_NAME,
    ID_CE_SUBJECT_KEY_IDENTIFIER,
    ID_CE_AUTHORITY_KEY_IDENTIFIER,
    ID_CE_NAME_CONSTRAINTS,
];

/// The longest chain of CAs above a leaf that is followed.
const MAX_CHAIN: usize = 8;

/// Where issuers are looked for.
struct Pool<'c> {
    trusted: &'c [Certificate],
    intermediates: &'c [Certificate],
    at: SystemTime,
    partial_chain: bool,
}

impl<'c> Pool<'c> {
    /// The certificates named as `child`'s issuer, trusted ones first,
    /// leaving out those already on `path`.
    fn named_issuers(&self, child: &Certificate, path: &[&Certificate]) -> Vec<&'c Certificate> {
        let issuer = child.as_x509().tbs_certificate().issuer();
        self.trusted
            .iter()
            .chain(self.intermediates)
            .filter(|c| c.as_x509().tbs_certificate().subject() == issuer)
            .filter(|c| !path.iter().any(|p| p.der() == c.der()))
            .collect()
    }

    fn is_trusted(&self, cert: &Certificate) -> bool {
        self.trusted.iter().any(|t| t.der() == cert.der())
    }

    /// Whether the path may end at `ca`: a trusted certificate that is
    /// self-signed, or any trusted one under `partial_chain`.
    fn is_anchor(&self, ca: &Certificate) -> bool {
        self.is_trusted(ca) && (self.partial_chain || self_signed(ca))
    }
}

/// Verifies that `leaf` was issued, directly or through
/// `options.intermediates`, by one of `trusted` and is valid under
/// `options`.
///
/// On failure the error is [`Error::Invalid`] with the typed
/// [`InvalidReason`], [`Error::NotACa`] when the issuer named by the leaf
/// cannot issue, or [`Error::Malformed`] (`what: "CRL"`) when the CRL
/// cannot be relied on.
pub fn verify(
    leaf: &Certificate,
    trusted: &[Certificate],
    options: &VerifyOptions<'_>,
) -> Result<()> {
    verify_path(leaf, trusted, options).map(drop)
}

/// [`verify`], returning the path it verified: the CAs above `leaf`, its
/// issuer first and the trust anchor last.
pub fn verify_path(
    leaf: &Certificate,
    trusted: &[Certificate],
    options: &VerifyOptions<'_>,
) -> Result<Vec<Certificate>> {
    let invalid = |reason| Error::Invalid {
        subject: leaf.subject(),
        reason,
    };
    let pool = Pool {
        trusted,
        intermediates: options.intermediates,
        at: options.at,
        partial_chain: options.partial_chain,
    };
    let path = path_to_anchor(leaf, &pool)?;
    let ca = path.first().copied().ok_or_else(|| {
        Error::malformed("certificate path", "no issuer was found (internal error)")
    })?;

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
    for ext in leaf
        .as_x509()
        .tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
    {
        if ext.critical && !UNDERSTOOD.contains(&ext.extn_id) {
            return Err(invalid(InvalidReason::UnknownCriticalExtension {
                oid: ext.extn_id.to_string(),
            }));
        }
    }
    common_checks(leaf).map_err(invalid)?;
    if options.expect_ca {
        if !leaf.is_ca() {
            return Err(Error::NotACa {
                subject: leaf.subject(),
                reason: "its BasicConstraints do not say cA: TRUE",
            });
        }
        basic_constraints_critical(leaf).map_err(|reason| {
            invalid(InvalidReason::BadExtension {
                extension: "basic constraints",
                reason,
            })
        })?;
    } else if claims_ca(leaf) {
        return Err(invalid(InvalidReason::IsCa));
    }
    check_name_constraints(leaf, &path).map_err(invalid)?;

    if let Some(profile) = options.profile {
        let needed = profile.eku_name();
        // anyExtendedKeyUsage does not stand for the profile's purpose: it
        // must be named (beside it, as OpenSSL and webpki take it).
        let purpose = match profile {
            Profile::Client => ID_KP_CLIENT_AUTH,
            Profile::Server => ID_KP_SERVER_AUTH,
        };
        if leaf
            .extended_key_usage()?
            .is_some_and(|oids| oids.contains(&ANY_EXTENDED_KEY_USAGE) && !oids.contains(&purpose))
        {
            return Err(invalid(InvalidReason::AnyExtendedKeyUsage { needed }));
        }
        let usages = leaf.tls_usages()?;
        let allowed = match profile {
            Profile::Client => usages.client_auth,
            Profile::Server => usages.server_auth,
        };
        if !allowed {
            return Err(invalid(InvalidReason::MissingExtendedKeyUsage { needed }));
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
        check_name(name, &leaf.subject_alt_names()?).map_err(invalid)?;
    }

    if let Some(crl) = options.crl {
        check_crl(crl, ca, options.at)?;
        let serial = leaf.serial();
        if crl.is_revoked(&serial) {
            return Err(invalid(InvalidReason::Revoked {
                serial: serial.to_string(),
            }));
        }
    }
    Ok(path.into_iter().cloned().collect())
}

/// Finds the CAs above `leaf`, its issuer first and an anchor last, trying
/// every candidate with the right name in turn. The reason reported is that
/// of the most promising candidate: one whose signature verified and whose
/// key identifier matched, else the first other one.
fn path_to_anchor<'c>(leaf: &Certificate, pool: &Pool<'c>) -> Result<Vec<&'c Certificate>> {
    let invalid = |reason| Error::Invalid {
        subject: leaf.subject(),
        reason,
    };
    // The leaf itself may be its own issuer (a self-signed CA checked
    // against itself), so nothing is left out here.
    let named = pool.named_issuers(leaf, &[]);
    if named.is_empty() {
        return Err(invalid(InvalidReason::IssuerMismatch {
            issuer: leaf.issuer(),
            ca_subject: pool
                .trusted
                .iter()
                .map(Certificate::subject)
                .collect::<Vec<_>>()
                .join(" | "),
        }));
    }
    if leaf.as_x509().signature_algorithm() != leaf.as_x509().tbs_certificate().signature() {
        return Err(invalid(InvalidReason::SignatureAlgorithmMismatch));
    }
    let signed = leaf.tbs_bytes()?;
    let alg = AlgorithmIdentifierRef::from(leaf.as_x509().signature_algorithm());
    let signature = leaf
        .as_x509()
        .signature()
        .as_bytes()
        .ok_or_else(|| Error::malformed("certificate", "signature has unused bits"))?;

    // (rank, error): a higher rank came further.
    let mut best: Option<(u8, Error)> = None;
    let mut keep = |rank: u8, error: Error| {
        if best.as_ref().is_none_or(|(r, _)| rank > *r) {
            best = Some((rank, error));
        }
    };
    for ca in named {
        let spki = ca
            .as_x509()
            .tbs_certificate()
            .subject_public_key_info()
            .owned_to_ref();
        let verified = verify_signature(&spki, &alg, signed, signature);
        // A candidate whose key identifier the leaf does not name is not
        // its issuer; said so when its key verifies the signature all the
        // same (else the signature is what is wrong).
        if !key_ids_agree(leaf, ca) {
            let reason = if matches!(verified, Ok(true)) {
                InvalidReason::AuthorityKeyIdMismatch {
                    issuer: leaf.issuer(),
                }
            } else {
                InvalidReason::BadSignature
            };
            keep(1, invalid(reason));
            continue;
        }
        match verified {
            Ok(true) => {}
            Ok(false) => {
                keep(1, invalid(InvalidReason::BadSignature));
                continue;
            }
            Err(Error::UnsupportedAlgorithm { algorithm, .. }) => {
                keep(
                    1,
                    invalid(InvalidReason::UnsupportedSignature { algorithm }),
                );
                continue;
            }
            Err(_) => {
                keep(1, invalid(InvalidReason::BadSignature));
                continue;
            }
        }
        let rejected = |reason| {
            invalid(InvalidReason::IssuerRejected {
                issuer: ca.subject(),
                reason,
            })
        };
        // A decode error here is a broken CA certificate, not "not a CA".
        match ca.ca_constraint() {
            Ok(Some(_)) => {}
            Ok(None) => {
                keep(
                    2,
                    Error::NotACa {
                        subject: ca.subject(),
                        reason: "its BasicConstraints do not say cA: TRUE",
                    },
                );
                continue;
            }
            Err(e) => {
                keep(2, e);
                continue;
            }
        }
        if let Err(reason) = can_issue(ca).and_then(|()| ca_checks(ca)) {
            keep(2, rejected(reason));
            continue;
        }
        let ca_validity = ca.validity();
        if !ca_validity.contains(pool.at) {
            keep(
                2,
                invalid(InvalidReason::IssuerNotValid {
                    not_before: ca_validity.not_before(),
                    not_after: ca_validity.not_after(),
                }),
            );
            continue;
        }
        let mut path = vec![ca];
        let anchored = if pool.is_anchor(ca) {
            root_checks(ca)
        } else if self_signed(ca) {
            Err("it is a self-signed CA that is not among the trusted certificates".into())
        } else {
            ascend(ca, &mut path, pool)
        };
        match anchored {
            Ok(()) => return Ok(path),
            Err(reason) => keep(2, rejected(reason)),
        }
    }
    Err(best.map_or_else(|| invalid(InvalidReason::BadSignature), |(_, e)| e))
}

/// Extends `path` (ending at `child`, a CA already accepted) up to an
/// anchor, backtracking over the candidates for each step.
fn ascend<'c>(
    child: &'c Certificate,
    path: &mut Vec<&'c Certificate>,
    pool: &Pool<'c>,
) -> std::result::Result<(), String> {
    if path.len() >= MAX_CHAIN {
        return Err(format!("no root within {MAX_CHAIN} CA certificates"));
    }
    let named = pool.named_issuers(child, path);
    if named.is_empty() {
        return Err(format!(
            "it is an intermediate CA and its issuer {} is not among the trusted \
             certificates; add the root CA to the CA file",
            child.issuer()
        ));
    }
    let mut first: Option<String> = None;
    for parent in named {
        let failed = (|| {
            if !key_ids_agree(child, parent) {
                return Err(format!(
                    "the authority key identifier of {} does not match {}",
                    child.subject(),
                    parent.subject()
                ));
            }
            if !signed_by(child, parent) {
                return Err(format!(
                    "{} is not signed by the key of {}",
                    child.subject(),
                    parent.subject()
                ));
            }
            if !parent.is_ca() {
                return Err(format!("its issuer {} is not a CA", parent.subject()));
            }
            can_issue(parent)
                .and_then(|()| ca_checks(parent))
                .map_err(|r| format!("its issuer {}: {r}", parent.subject()))?;
            // Path length (RFC 5280 section 6.1.4 (l), (m)): the CAs below
            // that are not self-issued.
            let below = path.iter().filter(|c| !c.is_self_issued()).count();
            if let Ok(Some(Some(max))) = parent.ca_constraint()
                && below > usize::from(max)
            {
                return Err(format!(
                    "its issuer {} allows {max} CA certificates below it, the path has {below}",
                    parent.subject()
                ));
            }
            if !parent.validity().contains(pool.at) {
                return Err(format!("its issuer {} is not valid now", parent.subject()));
            }
            path.push(parent);
            let result = if pool.is_anchor(parent) {
                root_checks(parent).map_err(|r| format!("its issuer {}: {r}", parent.subject()))
            } else if self_signed(parent) {
                Err(format!(
                    "its issuer {} is a self-signed CA that is not among the trusted certificates",
                    parent.subject()
                ))
            } else {
                ascend(parent, path, pool)
            };
            if result.is_err() {
                path.pop();
            }
            result
        })();
        match failed {
            Ok(()) => return Ok(()),
            Err(reason) => {
                first.get_or_insert(reason);
            }
        }
    }
    Err(first.unwrap_or_else(|| "no issuer found".into()))
}

/// Whether `child`'s authority key identifier, if any, names `issuer`'s
/// subject key identifier, if any (RFC 5280 section 4.2.1.1).
fn key_ids_agree(child: &Certificate, issuer: &Certificate) -> bool {
    match (child.authority_key_id(), issuer.subject_key_id()) {
        (Ok(Some(aki)), Ok(Some(ski))) => aki == ski,
        _ => true,
    }
}

/// Whether a certificate claims CA powers: basicConstraints `cA: TRUE` or
/// keyCertSign in its key usage (RFC 5280 section 4.2.1.3).
/// Markers that cannot be read (a duplicated or malformed extension)
/// count as a claim: fail closed.
fn claims_ca(cert: &Certificate) -> bool {
    !matches!(cert.ca_constraint(), Ok(None))
        || !matches!(cert.key_usage(), Ok(None) | Ok(Some(_)))
        || matches!(cert.key_usage(), Ok(Some(ku)) if ku.key_cert_sign())
}

/// Checks every certificate on the path gets: serial, key, and the
/// extensions whose form RFC 5280 (or the CA/Browser Forum baseline
/// requirements) fixes.
fn common_checks(cert: &Certificate) -> std::result::Result<(), InvalidReason> {
    let serial = cert.as_x509().tbs_certificate().serial_number().as_bytes();
    if serial.first().is_none_or(|b| b & 0x80 != 0) || serial.iter().all(|b| *b == 0) {
        return Err(InvalidReason::NotPositiveSerial {
            serial: serial.iter().map(|b| format!("{b:02X}")).collect(),
        });
    }
    match cert.key_algorithm() {
        Ok(KeyAlgorithm::Rsa { bits }) if bits % 8 != 0 => {
            return Err(InvalidReason::UnacceptableKey {
                reason: format!("an RSA modulus of {bits} bits is not a whole number of octets"),
            });
        }
        Ok(_) => {}
        Err(e) => {
            return Err(InvalidReason::UnacceptableKey {
                reason: e.to_string(),
            });
        }
    }
    let bad = |extension, reason: &str| InvalidReason::BadExtension {
        extension,
        reason: reason.to_owned(),
    };
    let mut aki = None;
    for ext in cert
        .as_x509()
        .tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
    {
        let value = ext.extn_value.as_bytes();
        match ext.extn_id {
            ID_CE_AUTHORITY_KEY_IDENTIFIER => {
                if ext.critical {
                    return Err(bad(
                        "authority key identifier",
                        "it is marked critical; RFC 5280 section 4.2.1.1 says it must not be",
                    ));
                }
                aki = Some(AuthorityKeyIdentifier::from_der(value).map_err(|e| {
                    bad(
                        "authority key identifier",
                        &format!("it does not decode: {e}"),
                    )
                })?);
            }
            ID_CE_SUBJECT_KEY_IDENTIFIER => {
                if ext.critical {
                    return Err(bad(
                        "subject key identifier",
                        "it is marked critical; RFC 5280 section 4.2.1.2 says it must not be",
                    ));
                }
                SubjectKeyIdentifier::from_der(value).map_err(|e| {
                    bad(
                        "subject key identifier",
                        &format!("it does not decode: {e}"),
                    )
                })?;
            }
            ID_CE_EXT_KEY_USAGE => {
                // RFC 5280 allows a critical EKU; the CA/Browser Forum
                // baseline requirements (7.1.2.7.10) do not, and a critical
                // EKU in a device certificate is a sign of a foreign
                // profile: refused.
                if ext.critical {
                    return Err(bad(
                        "extended key usage",
                        "it is marked critical; the CA/Browser Forum baseline requirements say \
                         it must not be",
                    ));
                }
                let eku = ExtendedKeyUsage::from_der(value)
                    .map_err(|e| bad("extended key usage", &format!("it does not decode: {e}")))?;
                if eku.0.is_empty() {
                    return Err(bad(
                        "extended key usage",
                        "it is empty; RFC 5280 section 4.2.1.12 requires at least one purpose",
                    ));
                }
            }
            ID_PE_AUTHORITY_INFO_ACCESS => {
                AuthorityInfoAccessSyntax::from_der(value).map_err(|e| {
                    bad(
                        "authority information access",
                        &format!("it does not decode: {e}"),
                    )
                })?;
            }
            _ => {}
        }
    }
    let has_key_id = aki.is_some_and(|a| a.key_identifier.is_some());
    if !has_key_id && !self_signed(cert) {
        return Err(bad(
            "authority key identifier",
            "it is missing or has no key identifier; RFC 5280 section 4.2.1.1 requires one in \
             every certificate that is not self-signed",
        ));
    }
    Ok(())
}

/// That basicConstraints are there, and marked critical in a root, as
/// RFC 5280 section 4.2.1.9 requires. An intermediate's non-critical
/// basicConstraints are taken, as OpenSSL and webpki take them (OpenSSL
/// `extfile` setups make them).
fn basic_constraints_critical(ca: &Certificate) -> std::result::Result<(), String> {
    match ca.extension::<BasicConstraints>() {
        Ok(Some((true, _))) => Ok(()),
        Ok(Some((false, _))) if !self_signed(ca) => Ok(()),
        Ok(Some((false, _))) => Err(
            "it is a root whose basicConstraints are not marked critical (RFC 5280 section \
             4.2.1.9)"
                .into(),
        ),
        Ok(None) => Err("it has no basicConstraints".into()),
        Err(e) => Err(format!("its basicConstraints cannot be read: {e}")),
    }
}

/// What every CA on the path must also meet, besides [`can_issue`].
fn ca_checks(ca: &Certificate) -> std::result::Result<(), String> {
    common_checks(ca).map_err(|r| r.to_string())?;
    basic_constraints_critical(ca)
}

/// What a self-signed anchor must also meet: a subject key identifier, an
/// authority key identifier (if any) that is just that key identifier, and
/// no extended key usage (RFC 5280 sections 4.2.1.1 and 4.2.1.2; an EKU on
/// a root restricts nothing a verifier agrees on).
fn root_checks(root: &Certificate) -> std::result::Result<(), String> {
    if !self_signed(root) {
        return Ok(());
    }
    let ski = match root.extension::<SubjectKeyIdentifier>() {
        Ok(Some((_, ski))) => ski.0.as_bytes().to_vec(),
        Ok(None) => {
            return Err(
                "the root has no subject key identifier (RFC 5280 section 4.2.1.2 requires one \
                 in a CA certificate)"
                    .into(),
            );
        }
        Err(e) => return Err(format!("its subject key identifier cannot be read: {e}")),
    };
    match root.extension::<AuthorityKeyIdentifier>() {
        Ok(Some((_, aki))) => {
            if aki.authority_cert_issuer.is_some() || aki.authority_cert_serial_number.is_some() {
                return Err(
                    "the root's authority key identifier carries an issuer name or \
                            serial number; a self-signed certificate may only repeat its key \
                            identifier"
                        .into(),
                );
            }
            if aki
                .key_identifier
                .is_some_and(|k| k.as_bytes() != ski.as_slice())
            {
                return Err(
                    "the root's authority key identifier differs from its subject key \
                            identifier"
                        .into(),
                );
            }
        }
        Ok(None) => {}
        Err(e) => return Err(format!("its authority key identifier cannot be read: {e}")),
    }
    if root
        .as_x509()
        .tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .any(|e| e.extn_id == ExtendedKeyUsage::OID)
    {
        return Err("the root carries an extended key usage; a trust anchor must not".into());
    }
    Ok(())
}

/// Applies the name constraints of every CA on `path` to the certificates
/// below it: the leaf and the CAs that are not self-issued (RFC 5280
/// section 6.1.3 (b)).
fn check_name_constraints(
    leaf: &Certificate,
    path: &[&Certificate],
) -> std::result::Result<(), InvalidReason> {
    for (i, ca) in path.iter().enumerate() {
        let Some((_, constraints)) = ca.extension::<NameConstraints>().map_err(|e| {
            InvalidReason::UnsupportedNameConstraints {
                constrained_by: ca.subject(),
                reason: format!("they do not decode: {e}"),
            }
        })?
        else {
            continue;
        };
        let below =
            std::iter::once(leaf).chain(path[..i].iter().copied().filter(|c| !c.is_self_issued()));
        for cert in below {
            let sans = cert
                .extension::<X509San>()
                .map_err(|e| InvalidReason::BadExtension {
                    extension: "subject alternative name",
                    reason: format!("it does not decode: {e}"),
                })?
                .map(|(_, san)| san.0)
                .unwrap_or_default();
            let subject = cert.as_x509().tbs_certificate().subject();
            match name_constraints::check(&constraints, subject, &sans) {
                Ok(()) => {}
                Err(Violation::Name { name, excluded }) => {
                    let name = if std::ptr::eq(cert, leaf) {
                        name
                    } else {
                        format!("{name} (of {})", cert.subject())
                    };
                    return Err(InvalidReason::NameConstraintViolation {
                        constrained_by: ca.subject(),
                        name,
                        excluded,
                    });
                }
                Err(Violation::Unsupported(reason)) => {
                    return Err(InvalidReason::UnsupportedNameConstraints {
                        constrained_by: ca.subject(),
                        reason,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Matches `name` (a reference identifier) against the SANs, by the rules
/// documented on [`VerifyOptions::name`].
fn check_name(name: &str, sans: &[SubjectAltName]) -> std::result::Result<(), InvalidReason> {
    let uncheckable = |reason| InvalidReason::UncheckableName {
        name: name.to_owned(),
        reason,
    };
    let matched = if let Ok(ip) = name.parse::<IpAddr>() {
        // One spelling per address: an IPv6 address as RFC 5952 writes it
        // (compressed, lower case), as the certificate's SAN shows it.
        if ip.is_ipv6() && ip.to_string() != name {
            return Err(uncheckable(
                "it is an IPv6 address not in its canonical spelling (RFC 5952: zeros \
                 compressed, lower case), as in ::1 or 2001:db8::1",
            ));
        }
        sans.contains(&SubjectAltName::Ip(ip))
    } else {
        if !name.is_ascii() {
            return Err(uncheckable(
                "it is not ASCII; give an internationalised name as A-labels (xn--...)",
            ));
        }
        if looks_like_ipv4(name) {
            return Err(uncheckable(
                "it looks like an IPv4 address in an ambiguous spelling (leading zeros, hex or \
                 fewer than four parts); give it as a dotted quad such as 10.0.0.1",
            ));
        }
        let host: DnsName = name
            .parse()
            .map_err(|_| uncheckable("it is neither an IP address nor a valid DNS name"))?;
        if host.as_str().starts_with("*.") {
            return Err(uncheckable("a wildcard is not a host name"));
        }
        sans.iter().any(|s| match s {
            SubjectAltName::Dns(d) => d.matches(host.as_str()),
            _ => false,
        })
    };
    if matched {
        return Ok(());
    }
    Err(InvalidReason::NameMismatch {
        expected: name.to_owned(),
        present: sans
            .iter()
            .filter(|s| !matches!(s, SubjectAltName::Uri(_)))
            .map(ToString::to_string)
            .collect(),
    })
}

/// Whether a name that is no dotted quad would still be read as an IPv4
/// address by some resolver (inet_aton, the WHATWG URL standard): its last
/// label is a decimal or `0x` hex number.
fn looks_like_ipv4(name: &str) -> bool {
    let last = name.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit())) || hex
}

/// Whether the CRL can be relied on for `ca`'s certificates at `at`.
fn check_crl(crl: &Crl, ca: &Certificate, at: SystemTime) -> Result<()> {
    let refused = |reason: String| Error::Malformed {
        what: "CRL",
        reason,
    };
    if !crl.verify_issued_by(ca)? {
        return Err(refused(format!(
            "it was not issued by the CA {}",
            ca.subject()
        )));
    }
    // RFC 5280 section 6.3.3 (f): the issuer's key usage, if any, must
    // allow CRL signing.
    if let Some(ku) = ca.key_usage()?
        && !ku.crl_sign()
    {
        return Err(refused(format!(
            "its issuer {} lacks cRLSign in its key usage",
            ca.subject()
        )));
    }
    // Section 5.2.3: conforming CRLs carry a non-critical CRL number.
    match crl.number_criticality() {
        None => {
            return Err(refused(
                "it has no CRL number (RFC 5280 section 5.2.3 requires one)".into(),
            ));
        }
        Some(true) => {
            return Err(refused(
                "its CRL number is marked critical (RFC 5280 section 5.2.3 says it must not be)"
                    .into(),
            ));
        }
        Some(false) => {}
    }
    // A CRL out of its window, or with a critical extension we cannot
    // read, says nothing reliable about revocation: fail closed.
    if crl.this_update() > at + crate::CLOCK_SKEW_ALLOWANCE {
        return Err(refused("its this update lies in the future".into()));
    }
    if let Some(next) = crl.next_update()
        && next < at
    {
        return Err(refused(format!(
            "it is out of date: its next update was due at {}; write a new CRL",
            crate::Timestamp(next)
        )));
    }
    if let Some(oid) = crl.unknown_critical_extension() {
        return Err(refused(format!(
            "it carries a critical extension this verifier does not understand ({oid})"
        )));
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
        // RFC 5280 section 4.2.1.1: every certificate that is not
        // self-signed names its issuer's key.
        leaf.use_authority_key_identifier_extension = true;
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
