//! Keys held outside this process: a PKCS#11 token, an HSM, a TPM. Such a
//! key never leaves its holder; pki-core asks it to sign what a certificate,
//! CSR or CRL needs ([`ToSign`]), turns the answer into the encoding X.509
//! expects (ECDSA's raw `r‖s` into DER), and checks every signature against
//! the key's public half before using it, so a holder that signs with
//! another key, or returns garbage, is caught here and not by a relying
//! party. What talks to the holder (cryptoki, a session pool, a PIN) lives
//! with the caller: this crate does no I/O.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use der::Encode;
use der::asn1::UintRef;

use crate::algorithm::{KeyAlgorithm, parse_spki};
use crate::error::{Error, Result};
use crate::key::KeyType;

/// What a key outside this process is asked to sign, by its algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ToSign<'a> {
    /// ECDSA over a digest already taken (SHA-256 for P-256, SHA-384 for
    /// P-384: PKCS#11's `CKM_ECDSA`). The answer is `r‖s`, each as long as
    /// the curve's order (32 or 48 bytes), as PKCS#11 returns it.
    EcdsaDigest(&'a [u8]),
    /// RSA PKCS#1 v1.5 over the DER `DigestInfo` of the message's SHA-256
    /// (PKCS#11's `CKM_RSA_PKCS` pads it). The answer is the signature, as
    /// long as the modulus.
    RsaPkcs1DigestInfo(&'a [u8]),
    /// RSA-PSS over a SHA-256 digest already taken, MGF1 with SHA-256 and a
    /// 32-byte salt (PKCS#11's `CKM_RSA_PKCS_PSS`): what TLS 1.3's
    /// `rsa_pss_rsae_sha256` needs ([`KeyPair::sign_rsa_pss_sha256`]). The
    /// answer is the signature, as long as the modulus.
    ///
    /// [`KeyPair::sign_rsa_pss_sha256`]: crate::KeyPair::sign_rsa_pss_sha256
    RsaPssSha256Digest(&'a [u8]),
    /// Ed25519 over the message itself (`CKM_EDDSA`). The answer is the
    /// 64-byte signature.
    Ed25519Message(&'a [u8]),
}

/// A private key held outside this process, able to sign.
///
/// Implementations never hold the key's secret; [`KeyPair::external`]
/// wraps one into a [`KeyPair`] that signs certificates, CSRs and CRLs
/// like any other.
///
/// [`KeyPair`]: crate::KeyPair
/// [`KeyPair::external`]: crate::KeyPair::external
pub trait ExternalKey: Send + Sync {
    /// Where the key lives, for messages: never a secret (a `pkcs11:` URI
    /// without its PIN).
    fn describe(&self) -> String;

    /// The key's public half, DER SubjectPublicKeyInfo.
    fn public_key_der(&self) -> Vec<u8>;

    /// Signs `what`; the error says why the holder refused, without a
    /// secret.
    fn sign(&self, what: ToSign<'_>) -> std::result::Result<Vec<u8>, String>;
}

impl fmt::Debug for dyn ExternalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalKey")
            .field("at", &self.describe())
            .finish()
    }
}

/// The DER `DigestInfo` prefix of SHA-256 (RFC 8017 section 9.2, note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// Signs `message` with `key`, whose algorithm is `algorithm` and public
/// half `spki`: the request the holder understands, its answer in X.509's
/// encoding, checked against `spki`.
pub(crate) fn sign(
    key: &dyn ExternalKey,
    algorithm: KeyAlgorithm,
    spki: &[u8],
    message: &[u8],
) -> Result<Vec<u8>> {
    let refused = |reason: String| refusal(key, reason);
    let (signature, check): (Vec<u8>, &'static dyn VerificationAlgorithm) = match algorithm {
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
            let (hash, half, check): (_, usize, &'static dyn VerificationAlgorithm) =
                if algorithm == KeyAlgorithm::EcdsaP256 {
                    (&digest::SHA256, 32, &sig::ECDSA_P256_SHA256_ASN1)
                } else {
                    (&digest::SHA384, 48, &sig::ECDSA_P384_SHA384_ASN1)
                };
            let digest = digest::digest(hash, message);
            let raw = key
                .sign(ToSign::EcdsaDigest(digest.as_ref()))
                .map_err(refused)?;
            (ecdsa_raw_to_der(&raw, half).map_err(refused)?, check)
        }
        KeyAlgorithm::Rsa { .. } => {
            let digest = digest::digest(&digest::SHA256, message);
            let mut info = SHA256_DIGEST_INFO.to_vec();
            info.extend_from_slice(digest.as_ref());
            let signature = key
                .sign(ToSign::RsaPkcs1DigestInfo(&info))
                .map_err(refused)?;
            (signature, &sig::RSA_PKCS1_2048_8192_SHA256)
        }
        KeyAlgorithm::Ed25519 => (
            key.sign(ToSign::Ed25519Message(message)).map_err(refused)?,
            &sig::ED25519,
        ),
    };
    checked(key, check, spki, message, signature)
}

/// Signs `message` with the RSA key `key` (public half `spki`) as
/// RSA-PSS with SHA-256, checked against `spki`.
pub(crate) fn sign_rsa_pss_sha256(
    key: &dyn ExternalKey,
    spki: &[u8],
    message: &[u8],
) -> Result<Vec<u8>> {
    let digest = digest::digest(&digest::SHA256, message);
    let signature = key
        .sign(ToSign::RsaPssSha256Digest(digest.as_ref()))
        .map_err(|reason| refusal(key, reason))?;
    checked(
        key,
        &sig::RSA_PSS_2048_8192_SHA256,
        spki,
        message,
        signature,
    )
}

/// `key` refused, or answered wrongly, for `reason`.
fn refusal(key: &dyn ExternalKey, reason: String) -> Error {
    Error::ExternalKey {
        key: key.describe(),
        reason,
    }
}

/// `signature`, once it verifies with `check` over `message` under the
/// public key `spki`: a holder that signed with another key, or returned
/// garbage, is refused here and not by a relying party.
fn checked(
    key: &dyn ExternalKey,
    check: &'static dyn VerificationAlgorithm,
    spki: &[u8],
    message: &[u8],
    signature: Vec<u8>,
) -> Result<Vec<u8>> {
    let public = parse_spki(spki)?;
    UnparsedPublicKey::new(check, public.subject_public_key.raw_bytes())
        .verify(message, &signature)
        .map_err(|_| {
            refusal(
                key,
                "its signature does not verify with its public key (another key answered, or \
                 the token returned garbage)"
                    .into(),
            )
        })?;
    Ok(signature)
}

/// A public key as a token gives it, to be put into a SubjectPublicKeyInfo
/// ([`spki_der`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublicKeyParts<'a> {
    /// An EC point (uncompressed, `04‖x‖y`) on P-256 or P-384.
    Ec {
        /// The curve: [`KeyType::P256`] or [`KeyType::P384`].
        key_type: KeyType,
        /// The point.
        point: &'a [u8],
    },
    /// An RSA modulus and public exponent, big-endian.
    Rsa {
        /// The modulus.
        modulus: &'a [u8],
        /// The public exponent.
        exponent: &'a [u8],
    },
    /// A 32-byte Ed25519 public key.
    Ed25519(&'a [u8]),
}

/// The DER SubjectPublicKeyInfo of `parts`, checked as any key this crate
/// signs with (curve, RSA of at least 2,048 bits).
pub fn spki_der(parts: PublicKeyParts<'_>) -> Result<Vec<u8>> {
    use der::asn1::{Any, BitString, ObjectIdentifier};
    use der::oid::db::{rfc5912, rfc8410};
    use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
    let bad = |e: der::Error| Error::malformed("public key from a token", e);
    let (algorithm, key) = match parts {
        PublicKeyParts::Ec { key_type, point } => {
            let curve: ObjectIdentifier = match key_type {
                KeyType::P256 => rfc5912::SECP_256_R_1,
                KeyType::P384 => rfc5912::SECP_384_R_1,
                other => {
                    return Err(Error::UnsupportedAlgorithm {
                        what: "elliptic curve",
                        algorithm: other.as_str().to_owned(),
                    });
                }
            };
            (
                AlgorithmIdentifierOwned {
                    oid: rfc5912::ID_EC_PUBLIC_KEY,
                    parameters: Some(Any::from(&curve)),
                },
                point.to_vec(),
            )
        }
        PublicKeyParts::Rsa { modulus, exponent } => {
            #[derive(der::Sequence)]
            struct RsaPublicKey<'a> {
                modulus: UintRef<'a>,
                public_exponent: UintRef<'a>,
            }
            let key = RsaPublicKey {
                modulus: UintRef::new(modulus).map_err(bad)?,
                public_exponent: UintRef::new(exponent).map_err(bad)?,
            }
            .to_der()
            .map_err(bad)?;
            (
                AlgorithmIdentifierOwned {
                    oid: rfc5912::RSA_ENCRYPTION,
                    parameters: Some(Any::null()),
                },
                key,
            )
        }
        PublicKeyParts::Ed25519(key) => (
            AlgorithmIdentifierOwned {
                oid: rfc8410::ID_ED_25519,
                parameters: None,
            },
            key.to_vec(),
        ),
    };
    let der = SubjectPublicKeyInfoOwned {
        algorithm,
        subject_public_key: BitString::from_bytes(&key).map_err(bad)?,
    }
    .to_der()
    .map_err(bad)?;
    // Classified as our own keys are: a short RSA key or an off-curve
    // length is refused here.
    KeyAlgorithm::from_spki(&parse_spki(&der)?)?;
    Ok(der)
}

/// Fills `out` from the generator every key and serial comes from (for an
/// id a token gives a new key, say).
pub fn random_bytes(out: &mut [u8]) -> Result<()> {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    SystemRandom::new().fill(out).map_err(|_| Error::Crypto {
        operation: "random generation",
    })
}

/// `r‖s` (each `half` bytes, as PKCS#11 returns ECDSA signatures) as DER
/// `Ecdsa-Sig-Value` (RFC 3279), as X.509 carries them.
pub fn ecdsa_raw_to_der(raw: &[u8], half: usize) -> std::result::Result<Vec<u8>, String> {
    #[derive(der::Sequence)]
    struct EcdsaSigValue<'a> {
        r: UintRef<'a>,
        s: UintRef<'a>,
    }
    if raw.len() != 2 * half {
        return Err(format!(
            "an ECDSA signature of {} bytes, not the {} of r and s",
            raw.len(),
            2 * half
        ));
    }
    let (r, s) = raw.split_at(half);
    let value = EcdsaSigValue {
        r: UintRef::new(r).map_err(|e| e.to_string())?,
        s: UintRef::new(s).map_err(|e| e.to_string())?,
    };
    value.to_der().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertificateAuthority, Csr, CsrParams, KeyPair, Subject, Validity};
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, RsaKeyPair};

    /// A token in memory: answers as PKCS#11 does (raw r‖s; PKCS#1 v1.5
    /// over the DigestInfo given), counting its signatures.
    struct FakeToken {
        key: FakeKey,
        /// Sign with this one instead (a token answering with another key).
        impostor: Option<EcdsaKeyPair>,
        signed: std::sync::atomic::AtomicUsize,
    }

    enum FakeKey {
        Ec(EcdsaKeyPair),
        Rsa(RsaKeyPair),
    }

    impl FakeToken {
        fn ec() -> Self {
            Self {
                key: FakeKey::Ec(
                    EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
                ),
                impostor: None,
                signed: 0.into(),
            }
        }
    }

    impl ExternalKey for std::sync::Arc<FakeToken> {
        fn describe(&self) -> String {
            "pkcs11:token=fake;object=ca".into()
        }

        fn public_key_der(&self) -> Vec<u8> {
            match &self.key {
                FakeKey::Ec(k) => spki_der(PublicKeyParts::Ec {
                    key_type: KeyType::P256,
                    point: k.public_key().as_ref(),
                })
                .unwrap(),
                FakeKey::Rsa(k) => {
                    use aws_lc_rs::encoding::AsDer;
                    k.public_key().as_der().unwrap().as_ref().to_vec()
                }
            }
        }

        fn sign(&self, what: ToSign<'_>) -> std::result::Result<Vec<u8>, String> {
            self.signed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match (&self.key, what) {
                (FakeKey::Ec(k), ToSign::EcdsaDigest(d)) => {
                    let k = self.impostor.as_ref().unwrap_or(k);
                    let d = digest::Digest::import_less_safe(d, &digest::SHA256)
                        .map_err(|_| "bad digest".to_owned())?;
                    Ok(k.sign_digest(&d).map_err(|_| "refused")?.as_ref().to_vec())
                }
                (FakeKey::Rsa(k), ToSign::RsaPkcs1DigestInfo(info)) => {
                    let d = info
                        .strip_prefix(&SHA256_DIGEST_INFO[..])
                        .ok_or("not a SHA-256 DigestInfo")?;
                    let d = digest::Digest::import_less_safe(d, &digest::SHA256)
                        .map_err(|_| "bad digest".to_owned())?;
                    let mut out = vec![0; k.public_modulus_len()];
                    k.sign_digest(&sig::RSA_PKCS1_SHA256, &d, &mut out)
                        .map_err(|_| "refused")?;
                    Ok(out)
                }
                (FakeKey::Rsa(k), ToSign::RsaPssSha256Digest(d)) => {
                    let d = digest::Digest::import_less_safe(d, &digest::SHA256)
                        .map_err(|_| "bad digest".to_owned())?;
                    let mut out = vec![0; k.public_modulus_len()];
                    k.sign_digest(&sig::RSA_PSS_SHA256, &d, &mut out)
                        .map_err(|_| "refused")?;
                    Ok(out)
                }
                _ => Err("a request for another algorithm".into()),
            }
        }
    }

    #[test]
    fn a_token_key_signs_a_root_a_csr_and_a_crl_that_verify() {
        let token = std::sync::Arc::new(FakeToken::ec());
        let key = KeyPair::external(Box::new(token.clone())).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP256);
        assert_eq!(
            key.external_location().as_deref(),
            Some("pkcs11:token=fake;object=ca")
        );
        // Never exported.
        let err = key.to_pkcs8_pem().unwrap_err().to_string();
        assert!(err.contains("never leaves its token"), "{err}");
        let ca = CertificateAuthority::new_root(
            &Subject::new("Token Root").unwrap(),
            key,
            Validity::days_from_now(30).unwrap(),
        )
        .unwrap();
        // A CSR from a key in memory, signed by the token's key; the chain
        // and the CRL verify against the root.
        let leaf_key = KeyPair::generate(KeyType::P256).unwrap();
        let csr = Csr::new(&CsrParams::new(Subject::new("dev-1").unwrap()), &leaf_key).unwrap();
        let issued = ca
            .sign(
                &Csr::from_der(csr.der().to_vec()).unwrap(),
                &crate::IssueParams::new(
                    crate::Profile::Client,
                    Validity::days_from_now(5).unwrap(),
                ),
            )
            .unwrap();
        crate::verify(
            &issued.certificate,
            &[ca.certificate().clone()],
            &crate::VerifyOptions::now(),
        )
        .unwrap();
        let now = std::time::SystemTime::now();
        let crl = ca
            .crl(
                &[],
                &crate::CrlParams {
                    number: 1,
                    this_update: now,
                    next_update: now + std::time::Duration::from_secs(86_400),
                },
            )
            .unwrap();
        assert!(crl.verify_issued_by(ca.certificate()).unwrap());
        assert!(token.signed.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    }

    #[test]
    fn an_rsa_token_key_signs_pkcs1_over_the_digest_info() {
        let token = std::sync::Arc::new(FakeToken {
            key: FakeKey::Rsa(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap()),
            impostor: None,
            signed: 0.into(),
        });
        let key = KeyPair::external(Box::new(token)).unwrap();
        let ca = CertificateAuthority::new_root(
            &Subject::new("RSA Token Root").unwrap(),
            key,
            Validity::days_from_now(30).unwrap(),
        )
        .unwrap();
        assert!(ca.certificate().is_self_issued());
        let tbs = b"to be signed";
        let signature = ca.key().sign(tbs).unwrap();
        assert!(
            ca.certificate()
                .verify_signature_by_key(tbs, signature.as_bytes())
                .unwrap()
        );
    }

    #[test]
    fn an_rsa_token_key_signs_pss_for_tls_1_3_and_an_ec_key_refuses_it() {
        let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public = rsa.public_key().as_ref().to_vec();
        let key = KeyPair::external(Box::new(std::sync::Arc::new(FakeToken {
            key: FakeKey::Rsa(rsa),
            impostor: None,
            signed: 0.into(),
        })))
        .unwrap();
        let signature = key.sign_rsa_pss_sha256(b"handshake").unwrap();
        UnparsedPublicKey::new(&sig::RSA_PSS_2048_8192_SHA256, &public)
            .verify(b"handshake", &signature)
            .unwrap();
        // A PKCS#1 v1.5 signature is not what was asked for.
        assert!(
            UnparsedPublicKey::new(&sig::RSA_PKCS1_2048_8192_SHA256, &public)
                .verify(b"handshake", &signature)
                .is_err()
        );
        let ec = KeyPair::external(Box::new(std::sync::Arc::new(FakeToken::ec()))).unwrap();
        assert!(ec.sign_rsa_pss_sha256(b"handshake").is_err());
        let in_memory = KeyPair::generate(crate::KeyType::Rsa2048).unwrap();
        let signature = in_memory.sign_rsa_pss_sha256(b"handshake").unwrap();
        let spki = crate::algorithm::parse_spki(in_memory.public_key_der()).unwrap();
        UnparsedPublicKey::new(
            &sig::RSA_PSS_2048_8192_SHA256,
            spki.subject_public_key.raw_bytes(),
        )
        .verify(b"handshake", &signature)
        .unwrap();
    }

    #[test]
    fn a_token_answering_with_another_key_is_refused() {
        let mut token = FakeToken::ec();
        token.impostor =
            Some(EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap());
        let key = KeyPair::external(Box::new(std::sync::Arc::new(token))).unwrap();
        let err = key.sign(b"tbs").unwrap_err().to_string();
        assert!(
            err.contains("pkcs11:token=fake;object=ca") && err.contains("does not verify"),
            "{err}"
        );
        let _ = SystemRandom::new();
    }

    #[test]
    fn a_short_rsa_key_from_a_token_is_refused() {
        let err = spki_der(PublicKeyParts::Rsa {
            modulus: &[0xc5; 128],
            exponent: &[1, 0, 1],
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("1024"), "{err}");
    }

    #[test]
    fn raw_ecdsa_becomes_der_integers_without_sign_trouble() {
        // r with its top bit set takes a leading zero; s with leading
        // zeros loses them.
        let mut raw = vec![0x80; 32];
        raw.extend([0u8; 31]);
        raw.push(0x05);
        let der = ecdsa_raw_to_der(&raw, 32).unwrap();
        let mut want = vec![0x30, 0x26, 0x02, 0x21, 0x00];
        want.extend([0x80; 32]);
        want.extend([0x02, 0x01, 0x05]);
        assert_eq!(der, want);
        let err = ecdsa_raw_to_der(&raw[..63], 32).unwrap_err();
        assert!(err.contains("63 bytes"), "{err}");
    }
}
