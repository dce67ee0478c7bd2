//! `provision inspect` and `provision verify`, and the walk of a
//! certificate's chain (leaf, intermediates from its file, a CA of the CA
//! file) they and `broker-config` share.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
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
        /// The certificates after it in the file, in order: the chain a
        /// TLS peer is sent (an issued certificate's intermediate).
        chain: Vec<ChainEntry>,
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

/// A certificate of a chain, as `inspect` and `verify` show it.
#[derive(Debug, Clone, Serialize)]
pub struct ChainEntry {
    /// Subject, RFC 4514.
    pub subject: String,
    /// Issuer, RFC 4514.
    pub issuer: String,
    /// `notAfter`.
    pub not_after: String,
    /// SHA-256 fingerprint of the DER.
    pub sha256: String,
}

impl ChainEntry {
    /// The entry for `cert`.
    pub fn of(cert: &Certificate) -> Self {
        Self {
            subject: cert.subject(),
            issuer: cert.issuer(),
            not_after: t(cert.not_after()),
            sha256: cert.sha256_fingerprint(),
        }
    }
}

impl std::fmt::Display for ChainEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (issued by {}, until {})",
            self.subject, self.issuer, self.not_after
        )
    }
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
            let mut all = Certificate::all_from_pem(&text).map_err(pki)?;
            let cert = all.remove(0);
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
                chain: all.iter().map(ChainEntry::of).collect(),
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
                chain,
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
                for entry in chain {
                    let _ = write!(out, "\n  chain:        {entry}");
                }
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
    /// The CA folder whose current CRL is checked when `crl` is `None` and
    /// that CA issued the certificate or is its anchor (`None`: no
    /// revocation check, `--no-crl`).
    pub ca_dir: Option<&'a crate::ca_folder::CaDir>,
}

/// What [`verify`] found: the certificate valid, and the path to its
/// trust anchor.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// One line: the file, OK, subject, issuer, end.
    pub summary: String,
    /// The certificate, then each CA above it, the last one from the CA
    /// file.
    pub chain: Vec<ChainEntry>,
    /// The CRL revocation was checked against, if any.
    pub crl: Option<PathBuf>,
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)?;
        for (i, entry) in self.chain.iter().enumerate().skip(1) {
            let role = if i + 1 == self.chain.len() {
                "CA file"
            } else {
                "intermediate"
            };
            write!(f, "\n  {role}: {entry}")?;
        }
        match &self.crl {
            Some(crl) => write!(f, "\n  not revoked: checked against {}", crl.display()),
            None => write!(
                f,
                "\n  revocation not checked (no CRL of its CA: give --crl FILE or --ca-dir DIR)"
            ),
        }
    }
}

/// Verifies a certificate through the certificates after it in its file
/// (an intermediate) to a CA of the CA file; `Ok` with the chain when
/// valid.
pub fn verify(request: &VerifyRequest<'_>) -> Result<Verification> {
    let pki = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Pki { path, source }
    };
    let mut chain =
        Certificate::all_from_pem(&read_text(request.cert)?).map_err(pki(request.cert))?;
    let cert = chain.remove(0);
    let cas = Certificate::all_from_pem(&read_text(request.ca)?).map_err(pki(request.ca))?;
    // The CRL given, else the CA folder's when its CA issued the
    // certificate or is the anchor: revocation is checked by default.
    let crl_path = match (request.crl, request.ca_dir) {
        (Some(path), _) => Some(path.to_owned()),
        (None, Some(ca_dir)) if ca_dir_concerns(ca_dir, &cert, &cas) => {
            Some(ca_dir.crl_path()).filter(|p| p.exists())
        }
        _ => None,
    };
    let crl = match &crl_path {
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
        intermediates: &[],
        expect_ca: false,
    };
    let path = verify_chain(&cert, &chain, &cas, &options).map_err(|source| {
        match (&crl_path, request.crl) {
            // The CA folder's CRL, taken by default: say how to skip it
            // when it is what failed.
            (Some(crl), None) if crl_failed(&source) => Error::Revocation {
                path: request.cert.to_owned(),
                reason: if source.to_string().contains("not issued by") {
                    format!(
                        "the CA folder's CRL {} is not its issuer's (it was issued before the \
                         folder's intermediate, or by another CA): give its issuer's CRL with \
                         --crl FILE, or pass --no-crl to skip the revocation check",
                        crl.display()
                    )
                } else {
                    format!(
                        "{source} (revocation checked against {}: pass --no-crl to skip it, or \
                         --crl FILE for another)",
                        crl.display()
                    )
                },
            },
            _ => Error::Pki {
                path: request.cert.to_owned(),
                source,
            },
        }
    })?;
    Ok(Verification {
        crl: crl_path,
        summary: format!(
            "{}: OK ({}, issued by {}, valid until {})",
            request.cert.display(),
            cert.subject(),
            cert.issuer(),
            t(cert.not_after())
        ),
        chain: std::iter::once(&cert)
            .chain(&path)
            .map(ChainEntry::of)
            .collect(),
    })
}

/// Whether the CA folder's CA issued `cert` (its root or intermediate) or
/// is one of the anchors.
fn ca_dir_concerns(
    ca_dir: &crate::ca_folder::CaDir,
    cert: &Certificate,
    anchors: &[Certificate],
) -> bool {
    let read = |path: PathBuf| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| Certificate::from_pem(&t).ok())
    };
    [ca_dir.cert_path(), ca_dir.intermediate_cert_path()]
        .into_iter()
        .filter_map(read)
        .any(|ca| ca.subject() == cert.issuer() || anchors.iter().any(|a| a.der() == ca.der()))
}

/// Whether a verification failed because of its CRL (stale, from another
/// issuer, not understood), not because the certificate is revoked.
fn crl_failed(e: &pki_core::Error) -> bool {
    matches!(e, pki_core::Error::Malformed { what: "CRL", .. })
}

/// Verifies `leaf` under `options` (its profile, name, and the CRL of its
/// issuer) through `untrusted` (the certificates that came with it: its
/// file's intermediates) to one of `anchors` (the CA file); each CA on the
/// way must be valid and able to issue. Returns the CAs above the leaf,
/// the last one from `anchors`. An intermediate is only a step, never an
/// anchor: the walk ends at a certificate of `anchors`, as OpenSSL's
/// `verify -CAfile ROOT -untrusted INTERMEDIATE` does.
pub fn verify_chain(
    leaf: &Certificate,
    untrusted: &[Certificate],
    anchors: &[Certificate],
    options: &VerifyOptions<'_>,
) -> pki_core::Result<Vec<Certificate>> {
    // One path, verified whole: the constraints of every CA on it (name
    // constraints, path lengths) apply to the leaf.
    pki_core::verify_path(
        leaf,
        anchors,
        &VerifyOptions {
            intermediates: untrusted,
            ..options.clone()
        },
    )
}

#[cfg(test)]
mod tests {
    use pki_core::{CertificateAuthority, Csr, CsrParams, IssueParams, KeyType, Subject, Validity};

    use super::*;

    fn root(cn: &str) -> CertificateAuthority {
        CertificateAuthority::new_root(
            &Subject::new(cn).unwrap(),
            KeyPair::generate(KeyType::P256).unwrap(),
            Validity::days_from_now(30).unwrap(),
        )
        .unwrap()
    }

    fn intermediate(root: &CertificateAuthority, cn: &str) -> CertificateAuthority {
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let csr = Csr::new(&CsrParams::new(Subject::new(cn).unwrap()), &key).unwrap();
        let cert = root
            .sign_intermediate(&csr, Validity::days_from_now(20).unwrap(), 0)
            .unwrap()
            .certificate;
        CertificateAuthority::from_parts(cert, key).unwrap()
    }

    fn leaf(ca: &CertificateAuthority) -> Certificate {
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let csr = Csr::new(&CsrParams::new(Subject::new("dev").unwrap()), &key).unwrap();
        let params = IssueParams::new(Profile::Client, Validity::days_from_now(10).unwrap());
        ca.sign(&csr, &params).unwrap().certificate
    }

    #[test]
    fn a_chain_ends_at_an_anchor_never_at_a_certificate_of_the_file() {
        let ours = root("Root");
        let int = intermediate(&ours, "Intermediate");
        let dev = leaf(&int);
        let anchors = [ours.certificate().clone()];
        let options = VerifyOptions {
            profile: Some(Profile::Client),
            ..VerifyOptions::now()
        };
        let path = verify_chain(&dev, &[int.certificate().clone()], &anchors, &options).unwrap();
        let subjects: Vec<String> = path.iter().map(Certificate::subject).collect();
        assert_eq!(subjects, ["CN=Intermediate", "CN=Root"]);
        // Without the intermediate, the root alone does not vouch for it.
        assert!(verify_chain(&dev, &[], &anchors, &options).is_err());
        // An intermediate of the same name under another root (or a
        // self-made one) is a step the root did not sign.
        let other = intermediate(&root("Root"), "Intermediate");
        let forged = leaf(&other);
        assert!(verify_chain(&forged, &[other.certificate().clone()], &anchors, &options).is_err());
        // A leaf directly under the root needs no chain.
        let path = verify_chain(&leaf(&ours), &[], &anchors, &options).unwrap();
        assert_eq!(path.len(), 1);
        assert_eq!(path[0].der(), ours.certificate().der());
    }

    /// An rcgen CA: a root when `issuer` is `None`.
    fn rcgen_ca(
        cn: &str,
        constraint: rcgen::BasicConstraints,
        permitted: Option<&str>,
        issuer: Option<&rcgen::Issuer<'_, &rcgen::KeyPair>>,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(constraint);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.name_constraints = permitted.map(|dns| rcgen::NameConstraints {
            permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName(dns.into())],
            excluded_subtrees: vec![],
        });
        params.use_authority_key_identifier_extension = issuer.is_some();
        let cert = match issuer {
            Some(issuer) => params.signed_by(&key, issuer).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        (cert, key)
    }

    /// The constraints of every CA on the path apply to the leaf, whatever
    /// CA they sit in (a check one link at a time applied the root's name
    /// constraints to the intermediate's names only).
    #[test]
    fn a_roots_constraints_reach_the_leaf_through_an_intermediate() {
        let (root_cert, root_key) = rcgen_ca(
            "Constrained Root",
            rcgen::BasicConstraints::Unconstrained,
            Some("example.com"),
            None,
        );
        let root_issuer = rcgen::Issuer::from_ca_cert_der(root_cert.der(), &root_key).unwrap();
        let (int_cert, int_key) = rcgen_ca(
            "Open Intermediate",
            rcgen::BasicConstraints::Unconstrained,
            None,
            Some(&root_issuer),
        );
        let int_issuer = rcgen::Issuer::from_ca_cert_der(int_cert.der(), &int_key).unwrap();
        let server = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
            params.use_authority_key_identifier_extension = true;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "server");
            let cert = params.signed_by(&key, &int_issuer).unwrap();
            Certificate::from_der(cert.der().to_vec()).unwrap()
        };
        let ours = |c: &rcgen::Certificate| Certificate::from_der(c.der().to_vec()).unwrap();
        let anchors = [ours(&root_cert)];
        let chain = [ours(&int_cert)];
        let options = VerifyOptions::now();
        verify_chain(&server("broker.example.com"), &chain, &anchors, &options).unwrap();
        let e = verify_chain(&server("broker.evil.test"), &chain, &anchors, &options)
            .unwrap_err()
            .to_string();
        assert!(e.contains("name constraints"), "{e}");

        // A root allowing no intermediate (path length 0) above one.
        let (root_cert, root_key) = rcgen_ca(
            "Short Root",
            rcgen::BasicConstraints::Constrained(0),
            None,
            None,
        );
        let root_issuer = rcgen::Issuer::from_ca_cert_der(root_cert.der(), &root_key).unwrap();
        let (int_cert, int_key) = rcgen_ca(
            "Too Deep",
            rcgen::BasicConstraints::Unconstrained,
            None,
            Some(&root_issuer),
        );
        let int_issuer = rcgen::Issuer::from_ca_cert_der(int_cert.der(), &int_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["broker.example.com".into()]).unwrap();
        params.use_authority_key_identifier_extension = true;
        let deep = params.signed_by(&key, &int_issuer).unwrap();
        assert!(
            verify_chain(
                &ours(&deep),
                &[ours(&int_cert)],
                &[ours(&root_cert)],
                &options
            )
            .is_err()
        );
    }
}
