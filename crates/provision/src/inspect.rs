//! `provision inspect` and `provision verify`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use pki_core::{
    Certificate, Crl, Csr, KeyPair, Profile, Timestamp, VerifyOptions, sha256_fingerprint,
};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::files::read_text;

/// What a PEM file holds, for people (`Display`) and programs (JSON).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Inspection {
    /// A certificate (the first of the file).
    Certificate {
        /// Subject, RFC 4514.
        subject: String,
        /// Issuer, RFC 4514.
        issuer: String,
        /// Serial, hex.
        serial: String,
        /// `notBefore`.
        not_before: String,
        /// `notAfter`.
        not_after: String,
        /// Whether it is valid now (dates only).
        current: bool,
        /// Key algorithm.
        key: String,
        /// Whether it is a CA certificate.
        ca: bool,
        /// Subject alternative names.
        sans: Vec<String>,
        /// Key usage.
        key_usage: Vec<String>,
        /// Extended key usage.
        extended_key_usage: Vec<String>,
        /// SHA-256 fingerprint of the DER.
        sha256: String,
    },
    /// A certificate signing request (its signature verified).
    Csr {
        /// Requested subject.
        subject: String,
        /// Key algorithm.
        key: String,
        /// Requested SANs.
        sans: Vec<String>,
        /// SHA-256 of the DER.
        sha256: String,
    },
    /// A private key (nothing secret is shown).
    PrivateKey {
        /// Key algorithm.
        key: String,
        /// SHA-256 of its public key (SubjectPublicKeyInfo DER).
        public_key_sha256: String,
    },
    /// An encrypted private key.
    EncryptedPrivateKey,
    /// A CRL.
    Crl {
        /// Issuer.
        issuer: String,
        /// CRL number.
        number: Option<u64>,
        /// `thisUpdate`.
        this_update: String,
        /// `nextUpdate`.
        next_update: Option<String>,
        /// Revoked serials with reasons.
        revoked: Vec<String>,
    },
}

fn t(s: SystemTime) -> String {
    Timestamp(s).to_string()
}

/// Reads and describes a certificate, CSR, key or CRL file.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let text = read_text(path)?;
    let pki = |source| Error::Pki {
        path: path.to_owned(),
        source,
    };
    // `openssl ecparam -genkey` puts an EC PARAMETERS block first.
    let first_label = text
        .lines()
        .filter_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .find(|label| *label != "EC PARAMETERS");
    match first_label {
        Some("CERTIFICATE") => {
            let cert = Certificate::from_pem(&text).map_err(pki)?;
            let v = cert.validity();
            Ok(Inspection::Certificate {
                subject: cert.subject(),
                issuer: cert.issuer(),
                serial: cert.serial().to_string(),
                not_before: t(v.not_before()),
                not_after: t(v.not_after()),
                current: v.contains(SystemTime::now()),
                key: cert.key_algorithm().map_err(pki)?.to_string(),
                ca: cert.is_ca(),
                sans: cert
                    .subject_alt_names()
                    .map_err(pki)?
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                key_usage: cert
                    .key_usage_names()
                    .map_err(pki)?
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                extended_key_usage: cert.extended_key_usage_names().map_err(pki)?,
                sha256: cert.sha256_fingerprint(),
            })
        }
        Some("CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST") => {
            let csr = Csr::from_pem(&text).map_err(pki)?;
            Ok(Inspection::Csr {
                subject: csr.subject(),
                key: csr.key_algorithm().to_string(),
                sans: csr
                    .requested_sans()
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                sha256: sha256_fingerprint(csr.der()),
            })
        }
        Some("ENCRYPTED PRIVATE KEY") => Ok(Inspection::EncryptedPrivateKey),
        Some("PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY") => {
            let key = KeyPair::from_pem(&text).map_err(pki)?;
            Ok(Inspection::PrivateKey {
                key: key.algorithm().to_string(),
                public_key_sha256: sha256_fingerprint(key.public_key_der()),
            })
        }
        Some("X509 CRL") => {
            let crl = Crl::from_pem(&text).map_err(pki)?;
            Ok(Inspection::Crl {
                issuer: crl.issuer(),
                number: crl.number(),
                this_update: t(crl.this_update()),
                next_update: crl.next_update().map(t),
                revoked: crl
                    .entries()
                    .iter()
                    .map(|e| format!("{} ({}, {})", e.serial, e.reason, t(e.revoked_at)))
                    .collect(),
            })
        }
        Some(other) => Err(Error::Pki {
            path: path.to_owned(),
            source: pki_core::Error::Pem {
                reason: format!("a {other:?} block is not something provision inspects"),
            },
        }),
        None => Err(Error::Pki {
            path: path.to_owned(),
            source: pki_core::Error::Pem {
                reason: "no PEM block found".into(),
            },
        }),
    }
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        match self {
            Self::Certificate {
                subject,
                issuer,
                serial,
                not_before,
                not_after,
                current,
                key,
                ca,
                sans,
                key_usage,
                extended_key_usage,
                sha256,
            } => {
                let _ = writeln!(out, "certificate{}", if *ca { " (CA)" } else { "" });
                let _ = writeln!(out, "  subject:      {subject}");
                let _ = writeln!(out, "  issuer:       {issuer}");
                let _ = writeln!(out, "  serial:       {serial}");
                let _ = writeln!(
                    out,
                    "  validity:     {not_before} to {not_after}{}",
                    if *current { "" } else { " (NOT valid now)" }
                );
                let _ = writeln!(out, "  key:          {key}");
                let _ = writeln!(out, "  SANs:         {}", list(sans));
                let _ = writeln!(out, "  key usage:    {}", list(key_usage));
                let _ = writeln!(out, "  ext. usage:   {}", list(extended_key_usage));
                let _ = write!(out, "  SHA-256:      {sha256}");
            }
            Self::Csr {
                subject,
                key,
                sans,
                sha256,
            } => {
                let _ = writeln!(out, "certificate signing request (signature verified)");
                let _ = writeln!(out, "  subject:      {subject}");
                let _ = writeln!(out, "  key:          {key}");
                let _ = writeln!(out, "  SANs:         {}", list(sans));
                let _ = write!(out, "  SHA-256:      {sha256}");
            }
            Self::PrivateKey {
                key,
                public_key_sha256,
            } => {
                let _ = writeln!(out, "private key");
                let _ = writeln!(out, "  key:          {key}");
                let _ = write!(out, "  public key SHA-256: {public_key_sha256}");
            }
            Self::EncryptedPrivateKey => {
                let _ = write!(out, "encrypted private key (PKCS#8)");
            }
            Self::Crl {
                issuer,
                number,
                this_update,
                next_update,
                revoked,
            } => {
                let _ = writeln!(out, "certificate revocation list");
                let _ = writeln!(out, "  issuer:       {issuer}");
                let _ = writeln!(
                    out,
                    "  number:       {}",
                    number.map_or_else(|| "-".to_owned(), |n| n.to_string())
                );
                let _ = writeln!(out, "  this update:  {this_update}");
                let _ = writeln!(
                    out,
                    "  next update:  {}",
                    next_update.clone().unwrap_or_else(|| "-".into())
                );
                let _ = write!(out, "  revoked:      {}", list(revoked));
            }
        }
        f.write_str(&out)
    }
}

/// What `provision verify` checks.
#[derive(Debug, Clone)]
pub struct VerifyRequest<'a> {
    /// The certificate.
    pub cert: &'a Path,
    /// The CA certificate(s).
    pub ca: &'a Path,
    /// Client or server usage.
    pub profile: Option<Profile>,
    /// The host (DNS name or IP) it must be valid for.
    pub name: Option<String>,
    /// A CRL to check revocation against.
    pub crl: Option<&'a Path>,
}

/// Verifies a certificate; `Ok` with a one-line summary when valid.
pub fn verify(request: &VerifyRequest<'_>) -> Result<String> {
    let pki = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Pki { path, source }
    };
    let cert = Certificate::from_pem(&read_text(request.cert)?).map_err(pki(request.cert))?;
    let cas = Certificate::all_from_pem(&read_text(request.ca)?).map_err(pki(request.ca))?;
    let crl = match request.crl {
        Some(path) => Some(Crl::from_pem(&read_text(path)?).map_err(pki(path))?),
        None => None,
    };
    let options = VerifyOptions {
        at: SystemTime::now(),
        profile: request.profile,
        name: request.name.clone(),
        crl: crl.as_ref(),
        // The CA folder's own certificate, root or intermediate.
        partial_chain: true,
    };
    pki_core::verify(&cert, &cas, &options).map_err(pki(request.cert))?;
    Ok(format!(
        "{}: OK ({}, issued by {}, valid until {})",
        request.cert.display(),
        cert.subject(),
        cert.issuer(),
        t(cert.not_after())
    ))
}
