//! A small, strict certificate authority for mutual-TLS device fleets.
//!
//! `pki-core` makes private keys, a self-signed root CA, CSRs, client and
//! server certificates and CRLs, built with RustCrypto's `x509-cert` builder
//! and signed with `aws-lc-rs`. It is pure: bytes and types in, bytes and
//! types out; it reads no files and opens no sockets.
//!
//! The certificates pass OpenSSL, rustls-webpki and an RFC 5280 linter:
//! random 20-octet serials, explicit validity (a leaf never outlives its
//! issuer), SHA-256 or better, and every extension decided by a
//! [`Profile`], never copied from a CSR.
//!
//! # The original design's flow
//!
//! Root CA, then a client key and CSR, then the CA signs the CSR (the Python
//! `RootCertificateGenerator`, `ClientCertificateGenerator` and
//! `CertificateAuthority.sign_csr`):
//!
//! ```
//! use pki_core::*;
//!
//! // 1. A self-signed root CA ("root_cert/root_ca_cert.pem", "root_cert/root_ca.key").
//! let root_subject = Subject::new("MyRootCA")?.country("US")?.organization("MyOrg")?;
//! let ca = CertificateAuthority::new_root(
//!     &root_subject,
//!     KeyPair::generate(KeyType::P256)?,
//!     Validity::days_from_now(3650)?,
//! )?;
//! let root_ca_cert_pem = ca.certificate().to_pem();
//! let root_ca_key_pem = ca.key().to_pkcs8_pem()?;
//!
//! // 2. On the device: a key ("client1.key") and a CSR ("client1_csr.pem").
//! let client_key = KeyPair::generate(KeyType::P256)?;
//! let subject = Subject::new("Client1")?.country("US")?.organization("MyOrg")?;
//! let csr_pem = Csr::new(&CsrParams::new(subject), &client_key)?.to_pem();
//!
//! // 3. The CA, loaded back from its files, checks the CSR and signs it ("client1_cert.pem").
//! let ca = CertificateAuthority::from_pem(&root_ca_cert_pem, &root_ca_key_pem, None)?;
//! let csr = Csr::from_pem(&csr_pem)?; // verifies the CSR's signature
//! let issued = ca.sign(&csr, &IssueParams::new(Profile::Client, Validity::days_from_now(365)?))?;
//! let client_cert = issued.certificate;
//!
//! assert_eq!(client_cert.common_name().as_deref(), Some("Client1"));
//! assert_eq!(client_cert.extended_key_usage_names()?, ["clientAuth"]);
//! verify(&client_cert, &[ca.certificate().clone()], &VerifyOptions {
//!     profile: Some(Profile::Client),
//!     ..VerifyOptions::now()
//! })?;
//! # Ok::<(), pki_core::Error>(())
//! ```
//!
//! # Crate map
//!
//! - [`KeyPair`], [`KeyType`], [`KeyAlgorithm`]: keys in PKCS#8 (optionally
//!   encrypted), PKCS#1 and SEC1 PEM.
//! - [`Subject`], [`SubjectAltName`], [`DnsName`], [`Validity`], [`Serial`]:
//!   the parts of a certificate, validated when built.
//! - [`Csr`]: build and verify PKCS#10 requests.
//! - [`CertificateAuthority`] with [`IssueParams`] and [`Profile`]: issuing.
//! - [`Certificate`]: reading certificates back.
//! - [`verify()`]: a leaf against a CA, with an [`InvalidReason`].
//! - [`Crl`]: revocation lists.

#![forbid(unsafe_code)]

mod algorithm;
mod ca;
mod cert;
mod crl;
mod csr;
mod error;
mod external;
mod key;
mod name_constraints;
mod pem_util;
mod profile;
mod san;
mod serial;
mod subject;
mod validity;
mod verify;

pub use algorithm::{KeyAlgorithm, MIN_RSA_BITS};
pub use ca::{CertificateAuthority, CsrNames, IssueParams, Issued, RefusedSan, identity_san};
pub use cert::{Certificate, TlsUsages};
pub use crl::{Crl, CrlParams, RevocationReason, RevokedEntry};
pub use csr::{Csr, CsrParams};
pub use error::{Error, InvalidReason, Result};
pub use external::{ExternalKey, PublicKeyParts, ToSign, ecdsa_raw_to_der, random_bytes, spki_der};
pub use key::{KeyPair, KeyType, MAX_PBKDF2_ITERATIONS, PBKDF2_ITERATIONS, PublicKey, Signature};
pub use profile::Profile;
pub use san::{DnsName, SubjectAltName};
pub use serial::{MAX_SERIAL_OCTETS, Serial};
pub use subject::Subject;
pub use validity::{CLOCK_SKEW_ALLOWANCE, Timestamp, Validity};
pub use verify::{VerifyOptions, verify, verify_path};

/// The SHA-256 fingerprint of any DER, as `AB:CD:...` (OpenSSL's form).
pub fn sha256_fingerprint(der: &[u8]) -> String {
    cert::fingerprint(der)
}
