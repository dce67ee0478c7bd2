//! Public-key and signature algorithms: what we accept, and signature checks
//! through aws-lc-rs.

use std::fmt;

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use der::asn1::{ObjectIdentifier, UintRef};
use der::oid::db::{rfc5912, rfc8410};
use der::{Decode, Sequence};
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};

use crate::error::{Error, Result};

/// The algorithm and size of a public key this crate accepts.
///
/// Anything else (RSA below 2048 bits, other curves, DSA) is refused with
/// [`Error::WeakKey`] or [`Error::UnsupportedAlgorithm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 (secp256r1).
    EcdsaP256,
    /// ECDSA on NIST P-384 (secp384r1).
    EcdsaP384,
    /// Ed25519 (RFC 8410).
    Ed25519,
    /// RSA with a modulus of this many bits (2048 to 8192).
    Rsa {
        /// The modulus size in bits.
        bits: usize,
    },
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Rsa { bits } => write!(f, "RSA-{bits}"),
        }
    }
}

/// The smallest RSA modulus we certify or trust (NIST SP 800-131A).
pub const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

#[derive(Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    #[allow(dead_code)]
    public_exponent: UintRef<'a>,
}

impl KeyAlgorithm {
    /// Classifies a SubjectPublicKeyInfo, refusing weak and unknown keys.
    pub fn from_spki(spki: &SubjectPublicKeyInfoRef<'_>) -> Result<Self> {
        let oid = spki.algorithm.oid;
        if oid == rfc5912::ID_EC_PUBLIC_KEY {
            let curve: ObjectIdentifier = spki
                .algorithm
                .parameters
                .as_ref()
                .ok_or_else(|| Error::malformed("EC public key", "missing curve parameters"))?
                .decode_as()
                .map_err(|e| Error::malformed("EC public key curve", e))?;
            return match curve {
                rfc5912::SECP_256_R_1 => Ok(Self::EcdsaP256),
                rfc5912::SECP_384_R_1 => Ok(Self::EcdsaP384),
                other => Err(Error::UnsupportedAlgorithm {
                    what: "elliptic curve",
                    algorithm: curve_name(other),
                }),
            };
        }
        if oid == rfc8410::ID_ED_25519 {
            return Ok(Self::Ed25519);
        }
        if oid == rfc5912::RSA_ENCRYPTION {
            let key = RsaPublicKey::from_der(spki.subject_public_key.raw_bytes())
                .map_err(|e| Error::malformed("RSA public key", e))?;
            let bits = uint_bits(key.modulus.as_bytes());
            if bits < MIN_RSA_BITS {
                return Err(Error::WeakKey {
                    algorithm: format!("RSA-{bits}"),
                });
            }
            if bits > MAX_RSA_BITS {
                return Err(Error::UnsupportedAlgorithm {
                    what: "key size",
                    algorithm: format!("RSA-{bits} (at most {MAX_RSA_BITS} bits)"),
                });
            }
            return Ok(Self::Rsa { bits });
        }
        Err(Error::UnsupportedAlgorithm {
            what: "key algorithm",
            algorithm: oid_name(oid),
        })
    }

    /// Whether an RSA key: those get keyEncipherment in leaf certificates.
    pub fn is_rsa(&self) -> bool {
        matches!(self, Self::Rsa { .. })
    }
}

fn uint_bits(bytes: &[u8]) -> usize {
    match bytes.first() {
        Some(first) => bytes.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

fn curve_name(oid: ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.3.132.0.35" => "P-521 (secp521r1)".into(),
        "1.3.132.0.10" => "secp256k1".into(),
        _ => oid.to_string(),
    }
}

const ECDSA_WITH_SHA_1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");

/// A readable name for the OIDs people meet in practice, else the dotted form.
pub(crate) fn oid_name(oid: ObjectIdentifier) -> String {
    let name = match oid {
        rfc5912::SHA_1_WITH_RSA_ENCRYPTION => "sha1WithRSAEncryption",
        rfc5912::ID_DSA => "DSA",
        rfc5912::MD_5_WITH_RSA_ENCRYPTION => "md5WithRSAEncryption",
        rfc5912::ID_RSASSA_PSS => "RSASSA-PSS",
        rfc8410::ID_ED_448 => "Ed448",
        rfc8410::ID_X_25519 => "X25519",
        _ if oid == ECDSA_WITH_SHA_1 => "ecdsa-with-SHA1",
        _ => return oid.to_string(),
    };
    format!("{name} ({oid})")
}

/// Verifies `signature` over `message` with the key in `spki`, choosing the
/// aws-lc-rs algorithm from the signature OID together with the key's
/// algorithm and curve. SHA-1 and MD5 signatures are refused as unsupported;
/// `Ok(false)` means the signature does not verify.
pub(crate) fn verify_signature(
    spki: &SubjectPublicKeyInfoRef<'_>,
    signature_algorithm: &AlgorithmIdentifierRef<'_>,
    message: &[u8],
    signature: &[u8],
) -> Result<bool> {
    let key = KeyAlgorithm::from_spki(spki)?;
    let alg = verification_algorithm(key, signature_algorithm.oid)?;
    Ok(
        UnparsedPublicKey::new(alg, spki.subject_public_key.raw_bytes())
            .verify(message, signature)
            .is_ok(),
    )
}

fn verification_algorithm(
    key: KeyAlgorithm,
    sig_oid: ObjectIdentifier,
) -> Result<&'static dyn VerificationAlgorithm> {
    use KeyAlgorithm as K;
    let alg: &'static dyn VerificationAlgorithm = match (key, sig_oid) {
        (K::EcdsaP256, rfc5912::ECDSA_WITH_SHA_256) => &sig::ECDSA_P256_SHA256_ASN1,
        (K::EcdsaP256, rfc5912::ECDSA_WITH_SHA_384) => &sig::ECDSA_P256_SHA384_ASN1,
        (K::EcdsaP384, rfc5912::ECDSA_WITH_SHA_256) => &sig::ECDSA_P384_SHA256_ASN1,
        (K::EcdsaP384, rfc5912::ECDSA_WITH_SHA_384) => &sig::ECDSA_P384_SHA384_ASN1,
        (K::Ed25519, rfc8410::ID_ED_25519) => &sig::ED25519,
        (K::Rsa { .. }, rfc5912::SHA_256_WITH_RSA_ENCRYPTION) => &sig::RSA_PKCS1_2048_8192_SHA256,
        (K::Rsa { .. }, rfc5912::SHA_384_WITH_RSA_ENCRYPTION) => &sig::RSA_PKCS1_2048_8192_SHA384,
        (K::Rsa { .. }, rfc5912::SHA_512_WITH_RSA_ENCRYPTION) => &sig::RSA_PKCS1_2048_8192_SHA512,
        (_, oid) => {
            return Err(Error::UnsupportedAlgorithm {
                what: "signature algorithm",
                algorithm: format!("{} with a {key} key", oid_name(oid)),
            });
        }
    };
    Ok(alg)
}

/// Parses DER SubjectPublicKeyInfo.
pub(crate) fn parse_spki(der: &[u8]) -> Result<SubjectPublicKeyInfoRef<'_>> {
    SubjectPublicKeyInfoRef::from_der(der).map_err(|e| Error::malformed("public key", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_modulus_bits() {
        assert_eq!(uint_bits(&[0x80, 0]), 16);
        assert_eq!(uint_bits(&[0x01, 0]), 9);
        assert_eq!(uint_bits(&[]), 0);
    }

    #[test]
    fn refuses_sha1_signatures() {
        let err = verification_algorithm(
            KeyAlgorithm::Rsa { bits: 2048 },
            rfc5912::SHA_1_WITH_RSA_ENCRYPTION,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("sha1WithRSAEncryption"), "{err}");
    }

    #[test]
    fn refuses_mismatched_key_and_signature() {
        assert!(
            verification_algorithm(KeyAlgorithm::Ed25519, rfc5912::ECDSA_WITH_SHA_256).is_err()
        );
    }
}
