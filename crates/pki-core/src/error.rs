//! The one error type of this crate.

use std::fmt;
use std::time::SystemTime;

use crate::validity::Timestamp;

/// Everything that can go wrong in `pki-core`.
///
/// Messages are lower-case, carry the offending value, and never the secret
/// material. The crate does no I/O, so callers add the file path as context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The common name of a [`Subject`](crate::Subject) was empty.
    #[error("subject: the common name must not be empty")]
    EmptyCommonName,

    /// A subject attribute exceeds its RFC 5280 upper bound (Appendix A.1).
    #[error(
        "subject: {attribute} {value:?} is {len} characters long; RFC 5280 allows at most {max}"
    )]
    SubjectAttributeTooLong {
        /// The attribute, e.g. `commonName`.
        attribute: &'static str,
        /// The offending value.
        value: String,
        /// Its length in characters.
        len: usize,
        /// The upper bound.
        max: usize,
    },

    /// A subject attribute is empty or holds characters its type forbids.
    #[error("subject: invalid {attribute} {value:?}: {reason}")]
    InvalidSubjectAttribute {
        /// The attribute, e.g. `countryName`.
        attribute: &'static str,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A DNS name is not a valid host name.
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidDnsName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A URI subject alternative name is not acceptable.
    #[error("invalid URI {uri:?}: {reason}")]
    InvalidUri {
        /// The offending URI.
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The input is not PEM, or is truncated.
    #[error("malformed PEM: {reason}")]
    Pem {
        /// What the PEM parser reported.
        reason: String,
    },

    /// The PEM input holds no block of the expected kind.
    #[error("no {expected} found in PEM input (found: {found})")]
    MissingPemBlock {
        /// What was looked for, e.g. `CERTIFICATE`.
        expected: &'static str,
        /// The labels that were present, or `nothing`.
        found: String,
    },

    /// DER that does not decode as what it claims to be.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded, e.g. `certificate`.
        what: &'static str,
        /// What the DER decoder reported.
        reason: String,
    },

    /// A private key that cannot be used.
    #[error("invalid private key: {reason}")]
    InvalidKey {
        /// What is wrong with it.
        reason: String,
    },

    /// A private key that is encrypted was given where a passphrase is needed.
    #[error("the private key is encrypted: a passphrase is required")]
    KeyEncrypted,

    /// The passphrase did not decrypt the key (or the encrypted key is corrupt).
    #[error("cannot decrypt the private key: wrong passphrase or corrupt data")]
    WrongPassphrase,

    /// A key or signature algorithm this crate does not accept.
    #[error("unsupported {what}: {algorithm}")]
    UnsupportedAlgorithm {
        /// `key algorithm` or `signature algorithm`.
        what: &'static str,
        /// The algorithm, as an OID or a name.
        algorithm: String,
    },

    /// A key that is too weak to be certified.
    #[error("key too weak: {algorithm} (at least RSA-2048, P-256 or Ed25519 is required)")]
    WeakKey {
        /// The key that was offered, e.g. `RSA-1024`.
        algorithm: String,
    },

    /// A CSR's signature does not verify over its contents (tampered or corrupt).
    #[error("the CSR's signature does not verify: it was altered or not made with its key")]
    CsrSignatureInvalid,

    /// A private key does not belong to the certificate it was paired with.
    #[error("the private key does not match the certificate (subject {subject})")]
    KeyMismatch {
        /// The certificate's subject.
        subject: String,
    },

    /// A certificate used as an issuer is not a CA certificate.
    #[error("certificate {subject} is not a CA: {reason}")]
    NotACa {
        /// The certificate's subject.
        subject: String,
        /// Why it cannot issue.
        reason: &'static str,
    },

    /// A validity window that ends before it starts, or cannot be encoded.
    #[error("invalid validity: {reason}")]
    InvalidValidity {
        /// What is wrong.
        reason: String,
    },

    /// The requested certificate breaks the profile's rules.
    #[error("the {profile} profile does not allow this: {reason}")]
    ProfileViolation {
        /// The profile, e.g. `server`.
        profile: &'static str,
        /// What was refused.
        reason: String,
    },

    /// The certificate does not pass verification.
    #[error("certificate {subject} is not valid: {reason}")]
    Invalid {
        /// The subject of the certificate that was checked.
        subject: String,
        /// The typed reason.
        reason: InvalidReason,
    },

    /// A key held outside this process (a PKCS#11 token) could not sign,
    /// or was asked for what it never gives (its secret).
    #[error("the key at {key}: {reason}")]
    ExternalKey {
        /// Where the key lives (a `pkcs11:` URI without its PIN).
        key: String,
        /// Why.
        reason: String,
    },

    /// The cryptographic library refused an operation.
    #[error("cryptographic operation failed: {operation}")]
    Crypto {
        /// What was being done.
        operation: &'static str,
    },
}

/// Why a certificate failed [`verify`](crate::verify).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidReason {
    /// Its issuer name is not the CA's subject.
    IssuerMismatch {
        /// The certificate's issuer.
        issuer: String,
        /// The CA's subject.
        ca_subject: String,
    },
    /// Its signature does not verify with the CA's key.
    BadSignature,
    /// Its signature algorithm is not acceptable.
    UnsupportedSignature {
        /// The algorithm OID.
        algorithm: String,
    },
    /// The check time is before `notBefore`.
    NotYetValid {
        /// Its `notBefore`.
        not_before: SystemTime,
        /// The time it was checked at.
        now: SystemTime,
    },
    /// The check time is after `notAfter`.
    Expired {
        /// Its `notAfter`.
        not_after: SystemTime,
        /// The time it was checked at.
        now: SystemTime,
    },
    /// The CA certificate itself is outside its validity window.
    IssuerNotValid {
        /// The CA's `notBefore`.
        not_before: SystemTime,
        /// The CA's `notAfter`.
        not_after: SystemTime,
    },
    /// It is a CA certificate where an end-entity certificate was expected.
    IsCa,
    /// It lacks the extended key usage the profile needs.
    MissingExtendedKeyUsage {
        /// The usage needed, e.g. `clientAuth`.
        needed: &'static str,
    },
    /// Its key usage does not allow digital signatures.
    MissingKeyUsage {
        /// The usage needed.
        needed: &'static str,
    },
    /// It does not name the host that was dialled.
    NameMismatch {
        /// The name that was expected.
        expected: String,
        /// The names it carries.
        present: Vec<String>,
    },
    /// It carries a critical extension this verifier does not understand.
    UnknownCriticalExtension {
        /// The extension OID.
        oid: String,
    },
    /// Its serial is on the CA's revocation list.
    Revoked {
        /// The serial in hex.
        serial: String,
    },
    /// The signature algorithm outside the signed part differs from the
    /// one inside it (RFC 5280 section 4.1.1.2).
    SignatureAlgorithmMismatch,
    /// The certificate that signed it cannot be trusted to issue: no key
    /// usage keyCertSign, a critical extension this verifier does not
    /// understand, or no path to a self-signed root among the trusted
    /// certificates.
    IssuerRejected {
        /// The issuing certificate's subject.
        issuer: String,
        /// Why.
        reason: String,
    },
    /// Its serial number is zero or negative (RFC 5280 section 4.1.2.2
    /// requires a positive integer).
    NotPositiveSerial {
        /// The serial as encoded, in hex.
        serial: String,
    },
    /// Its key is too weak or of a kind this verifier does not accept
    /// (RSA under 2048 bits or not a whole number of octets, P-192, DSA).
    UnacceptableKey {
        /// What is wrong with the key.
        reason: String,
    },
    /// One of its extensions is missing where required, marked critical
    /// where it must not be, empty, or does not decode.
    BadExtension {
        /// The extension, e.g. `extended key usage`.
        extension: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Its extended key usage holds `anyExtendedKeyUsage`, where the
    /// profile needs its own purpose named.
    AnyExtendedKeyUsage {
        /// The usage the profile needs, e.g. `clientAuth`.
        needed: &'static str,
    },
    /// The name it was to be checked for cannot be matched safely: not
    /// ASCII, an IPv4 address in an ambiguous spelling, a wildcard, or no
    /// host name at all.
    UncheckableName {
        /// The name as given.
        name: String,
        /// Why it cannot be matched.
        reason: &'static str,
    },
    /// Its authority key identifier names none of the CAs with its issuer's
    /// name: none of them is its issuer.
    AuthorityKeyIdMismatch {
        /// The issuer name it carries.
        issuer: String,
    },
    /// A name it (or a CA below the constraining CA) carries breaks a CA's
    /// name constraints (RFC 5280 section 4.2.1.10).
    NameConstraintViolation {
        /// The subject of the CA whose constraints are broken.
        constrained_by: String,
        /// The offending name, e.g. `DNS:evil.example`.
        name: String,
        /// The name lies in an excluded subtree (else: outside every
        /// permitted subtree of its form).
        excluded: bool,
    },
    /// A CA on the path has name constraints this verifier cannot apply
    /// (another form of name, minimum or maximum): the path fails closed.
    UnsupportedNameConstraints {
        /// The subject of the CA with the constraints.
        constrained_by: String,
        /// What cannot be applied.
        reason: String,
    },
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IssuerMismatch { issuer, ca_subject } => write!(
                f,
                "issued by {issuer}, not by the CA {ca_subject} (wrong CA?)"
            ),
            Self::BadSignature => f.write_str(
                "its signature does not verify with the CA's key (wrong CA, or a CA with the same name)",
            ),
            Self::UnsupportedSignature { algorithm } => {
                write!(f, "unsupported signature algorithm {algorithm}")
            }
            Self::NotYetValid { not_before, now } => write!(
                f,
                "not valid before {} (checked at {})",
                Timestamp(*not_before),
                Timestamp(*now)
            ),
            Self::Expired { not_after, now } => write!(
                f,
                "expired at {} (checked at {})",
                Timestamp(*not_after),
                Timestamp(*now)
            ),
            Self::IssuerNotValid {
                not_before,
                not_after,
            } => write!(
                f,
                "the CA certificate is only valid from {} to {}",
                Timestamp(*not_before),
                Timestamp(*not_after)
            ),
            Self::IsCa => f.write_str("it is a CA certificate, not an end-entity certificate"),
            Self::MissingExtendedKeyUsage { needed } => {
                write!(f, "its extended key usage does not include {needed}")
            }
            Self::MissingKeyUsage { needed } => {
                write!(f, "its key usage does not include {needed}")
            }
            Self::NameMismatch { expected, present } => write!(
                f,
                "it is not valid for {expected} (it names: {})",
                if present.is_empty() {
                    "nothing".to_owned()
                } else {
                    present.join(", ")
                }
            ),
            Self::UnknownCriticalExtension { oid } => {
                write!(f, "unknown critical extension {oid}")
            }
            Self::Revoked { serial } => write!(f, "serial {serial} is revoked"),
            Self::SignatureAlgorithmMismatch => f.write_str(
                "its outer signature algorithm differs from the one it signed (tampered?)",
            ),
            Self::IssuerRejected { issuer, reason } => {
                write!(f, "its issuer {issuer} cannot be trusted to issue: {reason}")
            }
            Self::NotPositiveSerial { serial } => write!(
                f,
                "its serial number {serial} is not a positive integer (RFC 5280 section 4.1.2.2)"
            ),
            Self::UnacceptableKey { reason } => write!(f, "its key is not acceptable: {reason}"),
            Self::BadExtension { extension, reason } => {
                write!(f, "its {extension} extension is not acceptable: {reason}")
            }
            Self::AnyExtendedKeyUsage { needed } => write!(
                f,
                "its extended key usage holds anyExtendedKeyUsage; {needed} must be named itself"
            ),
            Self::UncheckableName { name, reason } => {
                write!(f, "the name {name:?} cannot be checked: {reason}")
            }
            Self::AuthorityKeyIdMismatch { issuer } => write!(
                f,
                "its authority key identifier matches no CA named {issuer} (wrong CA, or a CA \
                 with the same name and another key)"
            ),
            Self::NameConstraintViolation {
                constrained_by,
                name,
                excluded,
            } => {
                if *excluded {
                    write!(f, "its issuer {constrained_by}'s name constraints exclude {name}")
                } else {
                    write!(
                        f,
                        "its issuer {constrained_by}'s name constraints do not permit {name}"
                    )
                }
            }
            Self::UnsupportedNameConstraints {
                constrained_by,
                reason,
            } => write!(
                f,
                "its issuer {constrained_by} has name constraints this verifier cannot apply: {reason}"
            ),
        }
    }
}

impl Error {
    pub(crate) fn malformed(what: &'static str, err: impl fmt::Display) -> Self {
        Self::Malformed {
            what,
            reason: err.to_string(),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
