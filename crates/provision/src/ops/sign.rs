//! Signing a CSR made elsewhere, under the CA's rules for names.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use pki_core::{Certificate, Csr, DnsName, IssueParams, Profile, Serial, SubjectAltName, Validity};

use crate::ca_folder::refuse_ca_folder;
use crate::error::{Error, Result};
use crate::files::{Access, check_name, read_text, refuse_existing, write_atomic};
use crate::inventory::{LockedCa, Record};
use crate::roles::{Role, claims_role};

use super::issue::{cert_file_pem, parent_of, sans, supersede_others};

/// What to sign: `provision sign`.
#[derive(Debug, Clone)]
pub struct SignRequest {
    /// The CSR file (exactly one PEM CSR).
    pub csr: PathBuf,
    /// Client or server.
    pub profile: Profile,
    /// Validity in days (capped at the CA's own expiry).
    pub days: u32,
    /// Where the certificate goes.
    pub out: PathBuf,
    /// Replace an existing certificate file.
    pub force: bool,
    /// DNS names the operator grants.
    pub dns: Vec<DnsName>,
    /// IP addresses the operator grants.
    pub ip: Vec<IpAddr>,
    /// Also grant the names the CSR asks for (of the kinds the profile
    /// allows; wildcards only with `allow_wildcards`).
    pub accept_csr_names: bool,
    /// Allow wildcard DNS names.
    pub allow_wildcards: bool,
    /// A client's role, carried in its certificate (ignored for a server;
    /// a CSR cannot choose it).
    pub role: Role,
}

/// What [`sign_csr`] made.
#[derive(Debug, Clone)]
pub struct SignedCsr {
    /// The certificate.
    pub certificate: Certificate,
    /// The requested end, when it was cut to the CA's expiry.
    pub capped_not_after: Option<SystemTime>,
    /// The names in the certificate.
    pub granted: Vec<SubjectAltName>,
    /// The names the CSR asked for that were left out, and why.
    pub refused: Vec<pki_core::RefusedSan>,
    /// Serials of earlier certificates for the same CN, now revoked as
    /// superseded.
    pub superseded: Vec<Serial>,
}

/// Signs a CSR (the original `CertificateAuthority.sign_csr`): verifies its
/// signature, grants the names the operator gives (and, on request, the
/// CSR's), applies the profile, writes `out` and records it (the caller
/// commits `locked`).
pub fn sign_csr(locked: &mut LockedCa<'_>, request: &SignRequest) -> Result<SignedCsr> {
    let csr_path = &request.csr;
    let text = read_text(csr_path)?;
    // None is the parser's to report (it names what it found instead).
    let blocks = text.matches("-----BEGIN ").count();
    if blocks > 1 {
        return Err(Error::Pki {
            path: csr_path.clone(),
            source: pki_core::Error::Pem {
                reason: format!(
                    "a CSR file must hold exactly one PEM block; this one holds {blocks}"
                ),
            },
        });
    }
    let csr = Csr::from_pem(&text).map_err(|source| Error::Pki {
        path: csr_path.clone(),
        source,
    })?;
    // A client's CN is its MQTT username and the `{name}` of its topic
    // rules: the same names `issue` allows (no `/`, `+`, `#`, spaces).
    // (A CN over 64 characters is the subject check's to refuse, with RFC
    // 5280's bound.)
    if request.profile == Profile::Client
        && let Some(cn) = csr.common_name()
        && cn.chars().count() <= 64
        && let Err(Error::InvalidName { reason, .. }) = check_name(&cn)
    {
        // A hostile CN is not echoed whole.
        let shown: String = cn.chars().take(64).collect();
        let cut = if shown.len() < cn.len() { "…" } else { "" };
        return Err(Error::Pki {
            path: csr_path.clone(),
            source: pki_core::Error::ProfileViolation {
                profile: "client",
                reason: format!(
                    "its CN {:?}{cut} is the MQTT username, and {reason}",
                    shown.escape_debug().to_string()
                ),
            },
        });
    }
    // The role is the CA's to grant: a CSR asking for one is refused.
    if let Some(claimed) = csr.requested_sans().iter().find(|s| claims_role(s)) {
        return Err(Error::Pki {
            path: csr_path.clone(),
            source: pki_core::Error::ProfileViolation {
                profile: request.profile.as_str(),
                reason: format!(
                    "the CSR asks for the role {claimed}; a role is granted with --role, never \
                     taken from a CSR"
                ),
            },
        });
    }
    let mut params = IssueParams::new(request.profile, Validity::days_from_now(request.days)?);
    params.sans = sans(&request.dns, &request.ip);
    if request.profile == Profile::Client {
        params.sans.push(request.role.san()?);
    }
    params.csr_names = if request.accept_csr_names {
        pki_core::CsrNames::ALL
    } else {
        pki_core::CsrNames::NONE
    };
    params.allow_wildcards = request.allow_wildcards;
    if request.profile == Profile::Server && params.sans.is_empty() && !request.accept_csr_names {
        let asked: Vec<String> = csr.requested_sans().iter().map(|s| s.to_string()).collect();
        return Err(Error::Pki {
            path: csr_path.clone(),
            source: pki_core::Error::ProfileViolation {
                profile: "server",
                reason: format!(
                    "which names may this broker certificate carry? Give them with --dns/--ip, \
                     or pass --accept-csr-names to grant the CSR's ({})",
                    if asked.is_empty() {
                        "it asks for none".to_owned()
                    } else {
                        format!("it asks for {}", asked.join(", "))
                    }
                ),
            },
        });
    }
    refuse_ca_folder(parent_of(&request.out), Some(locked.ca_dir()))?;
    refuse_existing(&[&request.out], request.force)?;
    let issued = locked.sign(&csr, &params).map_err(|e| match e {
        Error::Invalid(source) => Error::Pki {
            path: csr_path.clone(),
            source,
        },
        other => other,
    })?;
    let cert_pem = cert_file_pem(&issued.certificate, locked.ca_certificate()?);
    write_atomic(
        &request.out,
        cert_pem.as_bytes(),
        Access::Public,
        request.force,
    )?;
    let record = Record::new(&issued.certificate, request.profile, &request.out);
    locked.record(std::slice::from_ref(&record))?;
    let superseded = supersede_others(locked, &record)?;
    let granted = issued.certificate.subject_alt_names().unwrap_or_default();
    Ok(SignedCsr {
        certificate: issued.certificate,
        capped_not_after: issued.capped_not_after,
        granted,
        refused: issued.refused_sans,
        superseded,
    })
}
