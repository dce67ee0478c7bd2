//! Private keys: generation, PEM in and out, and signing through aws-lc-rs.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use der::asn1::{BitString, ObjectIdentifier};
use der::oid::db::{rfc5912, rfc8410};
use der::{Any, Decode};
use spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey,
    SignatureBitStringEncoding,
};
use zeroize::Zeroizing;

use crate::algorithm::{KeyAlgorithm, parse_spki};
use crate::error::{Error, Result};
use crate::external::ExternalKey;
use crate::pem_util::{self, PemBlock};

/// The kinds of key this crate generates. `P256` is the default: small,
/// fast, and accepted by every MQTT broker's TLS stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyType {
    /// ECDSA on NIST P-256, signing with SHA-256.
    #[default]
    P256,
    /// ECDSA on NIST P-384, signing with SHA-384.
    P384,
    /// Ed25519 (RFC 8410).
    Ed25519,
    /// RSA with a 2048-bit modulus, signing with PKCS#1 v1.5 and SHA-256.
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    Rsa4096,
}

impl KeyType {
    /// Every key type, in the order of the CLI's help.
    pub const ALL: [KeyType; 6] = [
        KeyType::P256,
        KeyType::P384,
        KeyType::Ed25519,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    /// The short name used on command lines and in manifests, e.g. `p256`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::P256 => "p256",
            Self::P384 => "p384",
            Self::Ed25519 => "ed25519",
            Self::Rsa2048 => "rsa2048",
            Self::Rsa3072 => "rsa3072",
            Self::Rsa4096 => "rsa4096",
        }
    }

    /// The algorithm a key of this type has.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            Self::P256 => KeyAlgorithm::EcdsaP256,
            Self::P384 => KeyAlgorithm::EcdsaP384,
            Self::Ed25519 => KeyAlgorithm::Ed25519,
            Self::Rsa2048 => KeyAlgorithm::Rsa { bits: 2048 },
            Self::Rsa3072 => KeyAlgorithm::Rsa { bits: 3072 },
            Self::Rsa4096 => KeyAlgorithm::Rsa { bits: 4096 },
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.to_ascii_lowercase().replace(['-', '_'], "");
        KeyType::ALL
            .into_iter()
            .find(|k| k.as_str() == wanted)
            .ok_or_else(|| Error::UnsupportedAlgorithm {
                what: "key type",
                algorithm: format!(
                    "{s:?} (expected one of: {})",
                    KeyType::ALL.map(|k| k.as_str()).join(", ")
                ),
            })
    }
}

enum Inner {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
    /// Held outside this process (a token): signs, never exported.
    External(Box<dyn ExternalKey>),
}

/// A private key with its public half, able to sign certificates, CSRs and
/// CRLs (it implements the `x509-cert` builder's `Signer` traits).
///
/// Secret bytes handed out ([`KeyPair::to_pkcs8_pem`]) are zeroized on drop;
/// `Debug` never prints them.
pub struct KeyPair {
    inner: Inner,
    algorithm: KeyAlgorithm,
    /// DER SubjectPublicKeyInfo, cached: every certificate and CSR needs it.
    spki: Vec<u8>,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The iteration count for PBKDF2-HMAC-SHA256 when encrypting a key (the
/// OWASP 2023 recommendation).
pub const PBKDF2_ITERATIONS: u32 = 600_000;

impl KeyPair {
    /// Generates a fresh key.
    pub fn generate(key_type: KeyType) -> Result<Self> {
        let crypto = |_| Error::Crypto {
            operation: "key generation",
        };
        let inner = match key_type {
            KeyType::P256 => Inner::Ecdsa(
                EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_ASN1_SIGNING).map_err(crypto)?,
            ),
            KeyType::P384 => Inner::Ecdsa(
                EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_ASN1_SIGNING).map_err(crypto)?,
            ),
            KeyType::Ed25519 => Inner::Ed25519(Ed25519KeyPair::generate().map_err(crypto)?),
            KeyType::Rsa2048 => Inner::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).map_err(crypto)?),
            KeyType::Rsa3072 => Inner::Rsa(RsaKeyPair::generate(KeySize::Rsa3072).map_err(crypto)?),
            KeyType::Rsa4096 => Inner::Rsa(RsaKeyPair::generate(KeySize::Rsa4096).map_err(crypto)?),
        };
        Self::from_inner(inner)
    }

    /// A key held outside this process (a PKCS#11 token): it signs what
    /// this key signs, each signature checked against its public half; it
    /// cannot be exported ([`KeyPair::to_pkcs8_der`] refuses). Refused when
    /// its public key is one this crate does not sign with.
    pub fn external(key: Box<dyn ExternalKey>) -> Result<Self> {
        Self::from_inner(Inner::External(key))
    }

    /// Where the key lives when it is held outside this process
    /// ([`ExternalKey::describe`]); `None` for a key in memory.
    pub fn external_location(&self) -> Option<String> {
        match &self.inner {
            Inner::External(k) => Some(k.describe()),
            _ => None,
        }
    }

    fn from_inner(inner: Inner) -> Result<Self> {
        let spki = match &inner {
            Inner::Ecdsa(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Inner::Ed25519(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Inner::Rsa(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Inner::External(k) => Ok(k.public_key_der()),
        }
        .map_err(|_| Error::Crypto {
            operation: "public key encoding",
        })?;
        // Classifying our own key also refuses weak keys read from files.
        let algorithm = KeyAlgorithm::from_spki(&parse_spki(&spki)?)?;
        Ok(Self {
            inner,
            algorithm,
            spki,
        })
    }

    /// Reads an unencrypted private key from PEM: PKCS#8 (`PRIVATE KEY`),
    /// PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`). Other blocks,
    /// such as `openssl ecparam`'s `EC PARAMETERS`, are skipped.
    pub fn from_pem(pem: &str) -> Result<Self> {
        Self::read_pem(pem, None)
    }

    /// Reads a private key that may be encrypted (`ENCRYPTED PRIVATE KEY`,
    /// PKCS#8 PBES2); unencrypted keys are read as by [`KeyPair::from_pem`].
    pub fn from_pem_with_passphrase(pem: &str, passphrase: &[u8]) -> Result<Self> {
        Self::read_pem(pem, Some(passphrase))
    }

    fn read_pem(pem: &str, passphrase: Option<&[u8]>) -> Result<Self> {
        const LABELS: [&str; 4] = [
            "PRIVATE KEY",
            "RSA PRIVATE KEY",
            "EC PRIVATE KEY",
            "ENCRYPTED PRIVATE KEY",
        ];
        let block = pem_util::find_block(pem, &LABELS, "private key")?;
        if block.legacy_encrypted {
            return Err(Error::InvalidKey {
                reason: "legacy OpenSSL encryption (Proc-Type header) is not supported; \
                         convert it with `openssl pkcs8 -topk8 -v2 aes-256-cbc`"
                    .into(),
            });
        }
        let PemBlock {
            label, contents, ..
        } = block;
        let contents = Zeroizing::new(contents);
        match label.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8_der(&contents),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&contents)
                .map_err(|e| invalid_key("PKCS#1 RSA key", e))
                .and_then(|k| Self::from_inner(Inner::Rsa(k))),
            "EC PRIVATE KEY" => Self::from_sec1_der(&contents),
            _ => {
                let Some(passphrase) = passphrase else {
                    return Err(Error::KeyEncrypted);
                };
                let encrypted = pkcs8::EncryptedPrivateKeyInfoRef::try_from(contents.as_slice())
                    .map_err(|e| Error::malformed("encrypted private key", e))?;
                check_kdf_cost(&encrypted.encryption_algorithm)?;
                let plain = encrypted
                    .decrypt(passphrase)
                    .map_err(|_| Error::WrongPassphrase)?;
                Self::from_pkcs8_der(plain.as_bytes())
            }
        }
    }

    /// Reads a DER PKCS#8 `PrivateKeyInfo` (v1 or v2).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        // Pick the aws-lc-rs type from the algorithm OID first: feeding a
        // P-384 key to the P-256 parser fails with a useless message.
        let info = pkcs8::PrivateKeyInfoRef::from_der(der)
            .map_err(|e| Error::malformed("PKCS#8 key", e))?;
        let oid = info.algorithm.oid;
        let inner = if oid == rfc5912::ID_EC_PUBLIC_KEY {
            let curve: ObjectIdentifier = info
                .algorithm
                .parameters
                .as_ref()
                .ok_or_else(|| Error::malformed("EC private key", "missing curve parameters"))?
                .decode_as()
                .map_err(|e| Error::malformed("EC private key curve", e))?;
            let alg = match curve {
                rfc5912::SECP_256_R_1 => &sig::ECDSA_P256_SHA256_ASN1_SIGNING,
                rfc5912::SECP_384_R_1 => &sig::ECDSA_P384_SHA384_ASN1_SIGNING,
                other => {
                    return Err(Error::UnsupportedAlgorithm {
                        what: "elliptic curve",
                        algorithm: other.to_string(),
                    });
                }
            };
            Inner::Ecdsa(EcdsaKeyPair::from_pkcs8(alg, der).map_err(|e| invalid_key("EC key", e))?)
        } else if oid == rfc8410::ID_ED_25519 {
            Inner::Ed25519(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| invalid_key("Ed25519 key", e))?,
            )
        } else if oid == rfc5912::RSA_ENCRYPTION {
            Inner::Rsa(RsaKeyPair::from_pkcs8(der).map_err(|e| invalid_key("RSA key", e))?)
        } else {
            return Err(Error::UnsupportedAlgorithm {
                what: "key algorithm",
                algorithm: crate::algorithm::oid_name(oid),
            });
        };
        Self::from_inner(inner)
    }

    fn from_sec1_der(der: &[u8]) -> Result<Self> {
        let mut last = None;
        for alg in [
            &sig::ECDSA_P256_SHA256_ASN1_SIGNING,
            &sig::ECDSA_P384_SHA384_ASN1_SIGNING,
        ] {
            match EcdsaKeyPair::from_private_key_der(alg, der) {
                Ok(k) => return Self::from_inner(Inner::Ecdsa(k)),
                Err(e) => last = Some(e),
            }
        }
        Err(invalid_key(
            "SEC1 EC key (only P-256 and P-384 are supported)",
            last.map_or_else(|| "unknown".into(), |e| e.to_string()),
        ))
    }

    /// The key's algorithm and size.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    /// Whether this key's public half is the one in `spki_der`.
    pub fn matches_public_key(&self, spki_der: &[u8]) -> bool {
        match (parse_spki(&self.spki), parse_spki(spki_der)) {
            (Ok(ours), Ok(theirs)) => {
                ours.algorithm.oid == theirs.algorithm.oid
                    && ours.subject_public_key == theirs.subject_public_key
            }
            _ => false,
        }
    }

    /// The key as DER PKCS#8 v1 (for Ed25519 without the public key: OpenSSL
    /// 3.0 and Mosquitto refuse v2).
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        let der = match &self.inner {
            Inner::Ecdsa(k) => k.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
            Inner::Ed25519(k) => k.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
            Inner::Rsa(k) => AsDer::<Pkcs8V1Der<'_>>::as_der(k).map(|d| d.as_ref().to_vec()),
            Inner::External(k) => {
                return Err(Error::ExternalKey {
                    key: k.describe(),
                    reason: "the key never leaves its token: it cannot be written out".into(),
                });
            }
        }
        .map_err(|_| Error::Crypto {
            operation: "private key export",
        })?;
        Ok(Zeroizing::new(der))
    }

    /// The key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as OpenSSL 3
    /// writes it.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>> {
        let der = self.to_pkcs8_der()?;
        Ok(Zeroizing::new(pem_util::encode("PRIVATE KEY", &der)))
    }

    /// The key encrypted with `passphrase` as PKCS#8 PBES2 PEM
    /// (`ENCRYPTED PRIVATE KEY`): PBKDF2-HMAC-SHA256 with
    /// [`PBKDF2_ITERATIONS`] rounds and a random salt, AES-256-CBC. OpenSSL
    /// reads it with `openssl pkey -passin`.
    pub fn to_encrypted_pkcs8_pem(&self, passphrase: &[u8]) -> Result<String> {
        if passphrase.is_empty() {
            return Err(Error::InvalidKey {
                reason: "refusing to encrypt with an empty passphrase".into(),
            });
        }
        let der = self.to_pkcs8_der()?;
        let info = pkcs8::PrivateKeyInfoRef::from_der(&der)
            .map_err(|e| Error::malformed("PKCS#8 key", e))?;
        let mut salt = [0u8; 16];
        let mut iv = [0u8; 16];
        let rng = SystemRandom::new();
        rng.fill(&mut salt)
            .and_then(|()| rng.fill(&mut iv))
            .map_err(|_| Error::Crypto {
                operation: "random salt",
            })?;
        let params = pkcs8::pkcs5::pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(
            PBKDF2_ITERATIONS,
            &salt,
            iv,
        )
        .map_err(|_| Error::Crypto {
            operation: "PBES2 parameters",
        })?;
        let encrypted =
            info.encrypt_with_params(params, passphrase)
                .map_err(|_| Error::Crypto {
                    operation: "private key encryption",
                })?;
        Ok(pem_util::encode(
            "ENCRYPTED PRIVATE KEY",
            encrypted.as_bytes(),
        ))
    }

    /// Signs `message` with this key's signature algorithm.
    pub fn sign(&self, message: &[u8]) -> Result<Signature> {
        let failed = |_| Error::Crypto {
            operation: "signing",
        };
        let bytes = match &self.inner {
            Inner::Ecdsa(k) => k
                .sign(&SystemRandom::new(), message)
                .map_err(failed)?
                .as_ref()
                .to_vec(),
            // `Ed25519KeyPair::sign` panics on failure; `try_sign` does not.
            Inner::Ed25519(k) => k.try_sign(message).map_err(failed)?.as_ref().to_vec(),
            Inner::External(k) => {
                crate::external::sign(k.as_ref(), self.algorithm, &self.spki, message)?
            }
            Inner::Rsa(k) => {
                let mut out = vec![0; k.public_modulus_len()];
                k.sign(
                    &sig::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut out,
                )
                .map_err(failed)?;
                out
            }
        };
        Ok(Signature(bytes))
    }

    /// Signs `message` with RSA-PSS, SHA-256, MGF1-SHA-256 and a 32-byte
    /// salt (TLS 1.3's `rsa_pss_rsae_sha256`, which a TLS 1.3 client
    /// certificate with an RSA key must use). Refused for a key that is not
    /// RSA.
    pub fn sign_rsa_pss_sha256(&self, message: &[u8]) -> Result<Vec<u8>> {
        let failed = |_| Error::Crypto {
            operation: "RSA-PSS signing",
        };
        match &self.inner {
            Inner::Rsa(k) => {
                let mut out = vec![0; k.public_modulus_len()];
                k.sign(
                    &sig::RSA_PSS_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut out,
                )
                .map_err(failed)?;
                Ok(out)
            }
            Inner::External(k) if matches!(self.algorithm, KeyAlgorithm::Rsa { .. }) => {
                crate::external::sign_rsa_pss_sha256(k.as_ref(), &self.spki, message)
            }
            _ => Err(Error::Crypto {
                operation: "RSA-PSS signing with a key that is not RSA",
            }),
        }
    }

    /// The signature AlgorithmIdentifier this key produces.
    pub fn signature_algorithm(&self) -> AlgorithmIdentifierOwned {
        signature_algorithm_of(self.algorithm)
    }
}

/// The signature AlgorithmIdentifier [`KeyPair::sign`] produces with a key
/// of this algorithm.
pub(crate) fn signature_algorithm_of(algorithm: KeyAlgorithm) -> AlgorithmIdentifierOwned {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => AlgorithmIdentifierOwned {
            oid: rfc5912::ECDSA_WITH_SHA_256,
            parameters: None,
        },
        KeyAlgorithm::EcdsaP384 => AlgorithmIdentifierOwned {
            oid: rfc5912::ECDSA_WITH_SHA_384,
            parameters: None,
        },
        KeyAlgorithm::Ed25519 => AlgorithmIdentifierOwned {
            oid: rfc8410::ID_ED_25519,
            parameters: None,
        },
        // RFC 4055 section 5: the parameters MUST be NULL for RSA PKCS#1 v1.5.
        KeyAlgorithm::Rsa { .. } => AlgorithmIdentifierOwned {
            oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
    }
}

/// The most PBKDF2 rounds an encrypted key may ask for (about 16 times
/// [`PBKDF2_ITERATIONS`]; OpenSSL writes 2,048 by default).
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// The most memory scrypt may ask for to decrypt a key, `128 * r * N`
/// bytes (OpenSSL's default for keys, N = 16384 and r = 8, is 16 MiB).
const MAX_SCRYPT_BYTES: u64 = 256 << 20;

/// Refuses key-derivation parameters that would make reading a key take
/// hours or gigabytes: the cost is chosen by whoever wrote the file.
fn check_kdf_cost(scheme: &pkcs8::pkcs5::EncryptionScheme) -> Result<()> {
    use pkcs8::pkcs5::pbes2::Kdf;
    let too_costly = |reason: String| Error::InvalidKey { reason };
    match scheme.pbes2().map(|p| &p.kdf) {
        Some(Kdf::Pbkdf2(params)) if params.iteration_count > MAX_PBKDF2_ITERATIONS => {
            Err(too_costly(format!(
                "the key asks for {} PBKDF2 iterations, more than the {MAX_PBKDF2_ITERATIONS} \
                 this reads",
                params.iteration_count
            )))
        }
        Some(Kdf::Scrypt(params)) => {
            let bytes = 128u64
                .saturating_mul(u64::from(params.block_size))
                .saturating_mul(params.cost_parameter)
                .saturating_mul(u64::from(params.parallelization).max(1));
            if bytes > MAX_SCRYPT_BYTES {
                return Err(too_costly(format!(
                    "the key's scrypt parameters (N={}, r={}, p={}) need more than {} MiB",
                    params.cost_parameter,
                    params.block_size,
                    params.parallelization,
                    MAX_SCRYPT_BYTES >> 20
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn invalid_key(what: &str, err: impl fmt::Display) -> Error {
    Error::InvalidKey {
        reason: format!("{what}: {err}"),
    }
}

/// A signature made by a [`KeyPair`], in the encoding X.509 expects (DER
/// `Ecdsa-Sig-Value` for ECDSA, raw for Ed25519 and RSA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature(Vec<u8>);

impl Signature {
    /// The signature bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl SignatureBitStringEncoding for Signature {
    fn to_bitstring(&self) -> der::Result<BitString> {
        BitString::from_bytes(&self.0)
    }
}

/// The public half of a [`KeyPair`], as the `x509-cert` builder needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(Vec<u8>);

impl EncodePublicKey for PublicKey {
    fn to_public_key_der(&self) -> spki::Result<der::Document> {
        der::Document::try_from(self.0.as_slice()).map_err(spki::Error::from)
    }
}

impl signature::Keypair for KeyPair {
    type VerifyingKey = PublicKey;

    fn verifying_key(&self) -> PublicKey {
        PublicKey(self.spki.clone())
    }
}

impl signature::Signer<Signature> for KeyPair {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Signature, signature::Error> {
        self.sign(msg).map_err(|_| signature::Error::new())
    }
}

impl DynSignatureAlgorithmIdentifier for KeyPair {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(self.signature_algorithm())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_names_round_trip() {
        for k in KeyType::ALL {
            assert_eq!(k.as_str().parse::<KeyType>().unwrap(), k);
        }
        assert_eq!("RSA-2048".parse::<KeyType>().unwrap(), KeyType::Rsa2048);
        let err = "dsa".parse::<KeyType>().unwrap_err().to_string();
        assert!(err.contains("p256, p384"), "{err}");
    }

    #[test]
    fn every_key_type_round_trips_through_pkcs8_pem() {
        for k in KeyType::ALL {
            let key = KeyPair::generate(k).unwrap();
            assert_eq!(key.algorithm(), k.algorithm());
            let pem = key.to_pkcs8_pem().unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let back = KeyPair::from_pem(&pem).unwrap();
            assert_eq!(back.public_key_der(), key.public_key_der(), "{k}");
        }
    }

    #[test]
    fn ed25519_is_written_as_pkcs8_v1() {
        let key = KeyPair::generate(KeyType::Ed25519).unwrap();
        let der = key.to_pkcs8_der().unwrap();
        let info = pkcs8::PrivateKeyInfoRef::from_der(&der).unwrap();
        assert_eq!(info.version(), pkcs8::Version::V1);
        assert!(info.public_key.is_none());
    }

    #[test]
    fn an_absurd_kdf_cost_is_refused_before_deriving() {
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let pem = key.to_encrypted_pkcs8_pem(b"pw").unwrap();
        let der = ::pem::parse(&pem).unwrap().into_contents();
        let mut info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der.as_slice()).unwrap();
        let pkcs8::pkcs5::EncryptionScheme::Pbes2(params) = &mut info.encryption_algorithm else {
            panic!("PBES2 expected");
        };
        let pkcs8::pkcs5::pbes2::Kdf::Pbkdf2(kdf) = &mut params.kdf else {
            panic!("PBKDF2 expected");
        };
        kdf.iteration_count = 4_000_000_000;
        let hostile = pem_util::encode(
            "ENCRYPTED PRIVATE KEY",
            &der::Encode::to_der(&info).unwrap(),
        );
        // Refused by the check, not attempted (4e9 rounds take an hour, and
        // would end in a wrong-passphrase error, not this one).
        let err = KeyPair::from_pem_with_passphrase(&hostile, b"pw").unwrap_err();
        assert!(
            err.to_string()
                .contains("asks for 4000000000 PBKDF2 iterations"),
            "{err}"
        );
    }

    #[test]
    fn encrypted_key_needs_the_right_passphrase() {
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let pem = key.to_encrypted_pkcs8_pem(b"correct horse").unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        assert!(matches!(KeyPair::from_pem(&pem), Err(Error::KeyEncrypted)));
        assert!(matches!(
            KeyPair::from_pem_with_passphrase(&pem, b"wrong"),
            Err(Error::WrongPassphrase)
        ));
        let back = KeyPair::from_pem_with_passphrase(&pem, b"correct horse").unwrap();
        assert_eq!(back.public_key_der(), key.public_key_der());
        assert!(key.to_encrypted_pkcs8_pem(b"").is_err());
    }

    #[test]
    fn refuses_garbage_and_truncation_without_panicking() {
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let pem = key.to_pkcs8_pem().unwrap();
        for cut in [0, 10, 40, pem.len() / 2, pem.len() - 30] {
            assert!(KeyPair::from_pem(&pem[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            KeyPair::from_pem("hello"),
            Err(Error::MissingPemBlock { .. })
        ));
        let junk = pem_util::encode("PRIVATE KEY", b"\x30\x03\x02\x01\x00");
        assert!(KeyPair::from_pem(&junk).is_err());
    }

    #[test]
    fn signs_with_the_matching_algorithm() {
        for k in KeyType::ALL {
            let key = KeyPair::generate(k).unwrap();
            let msg = b"to be signed";
            let sig = key.sign(msg).unwrap();
            let spki = parse_spki(key.public_key_der()).unwrap();
            let alg = key.signature_algorithm();
            let alg_ref = spki::AlgorithmIdentifierRef {
                oid: alg.oid,
                parameters: alg.parameters.as_ref().map(Into::into),
            };
            assert!(
                crate::algorithm::verify_signature(&spki, &alg_ref, msg, sig.as_bytes()).unwrap()
            );
            assert!(
                !crate::algorithm::verify_signature(&spki, &alg_ref, b"other", sig.as_bytes())
                    .unwrap()
            );
        }
    }
}
