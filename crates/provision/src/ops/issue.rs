//! Issuing an identity: its key, CSR and certificate, and making a CSR.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pki_core::{
    Certificate, Csr, CsrParams, DnsName, IssueParams, KeyPair, KeyType, Profile, Serial, Subject,
    SubjectAltName, Validity,
};

use crate::ca_folder::refuse_ca_folder;
use crate::error::{Error, Result};
use crate::files::{Access, Durability, Name, NewFiles, check_name, refuse_existing, write_atomic};
use crate::inventory::{LockedCa, Record};
pub use crate::layout::IdentityPaths;
use crate::roles::Role;

/// Optional subject attributes given on the command line or in a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectOptions {
    /// The common name; defaults to the certificate's name.
    pub common_name: Option<String>,
    /// The organization.
    pub organization: Option<String>,
    /// The two-letter country.
    pub country: Option<String>,
}

impl SubjectOptions {
    /// The subject, with `default_cn` when no common name was given.
    pub fn subject(&self, default_cn: &str) -> Result<Subject> {
        let mut s = Subject::new(self.common_name.as_deref().unwrap_or(default_cn))?;
        if let Some(o) = &self.organization {
            s = s.organization(o.as_str())?;
        }
        if let Some(c) = &self.country {
            s = s.country(c)?;
        }
        Ok(s)
    }

    /// The subject of an identity named `name` with `profile`: a client's
    /// common name given here (`--cn`, a manifest's `common_name`) must
    /// pass the same name rule as `name` ([`check_name`]): it is the MQTT
    /// username, `{name}` in the broker's rules, so a `/`, a space or a
    /// wildcard would move the identity into another's topics. (A
    /// server's CN is no username.)
    pub fn identity_subject(&self, name: &str, profile: Profile) -> Result<Subject> {
        if profile == Profile::Client
            && let Some(cn) = &self.common_name
        {
            check_name(cn)?;
        }
        self.subject(name)
    }
}

/// The text of an issued certificate's file: the certificate, then its
/// issuer's when that is an intermediate (not self-signed), so that a TLS
/// peer gets the chain to the root from the file alone. The root stays
/// out: it is the trust anchor, the peer's CA file.
pub fn cert_file_pem(cert: &Certificate, issuer: &Certificate) -> String {
    let mut pem = cert.to_pem();
    if !issuer.is_self_issued() {
        pem.push_str(&issuer.to_pem());
    }
    pem
}

/// One identity to issue: the original design's
/// `generate_signed_certificate(subject, ca, key_name, cert_name)`.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The key and CSR to make (name, subject, key type, SANs, folder).
    pub identity: CsrRequest,
    /// Client or server.
    pub profile: Profile,
    /// Validity in days (capped at the CA's own expiry).
    pub days: u32,
    /// A client's role, carried in its certificate (ignored for a server).
    pub role: Role,
}

/// What [`issue`] made.
#[derive(Debug, Clone)]
pub struct IssuedIdentity {
    /// Where the files are.
    pub paths: IdentityPaths,
    /// The certificate.
    pub certificate: Certificate,
    /// The inventory record.
    pub record: Record,
    /// The requested end, when it was cut to the CA's expiry.
    pub capped_not_after: Option<SystemTime>,
    /// Serials of earlier certificates for the same CN, now revoked as
    /// superseded (a CN, the MQTT username, has one valid certificate).
    pub superseded: Vec<Serial>,
}

/// Revokes as superseded every other valid certificate with `new`'s CN,
/// and rewrites the CRL when there were any; their serials.
pub(super) fn supersede_others(locked: &mut LockedCa<'_>, new: &Record) -> Result<Vec<Serial>> {
    let superseded = locked.supersede_others(new)?;
    if !superseded.is_empty() {
        let crl = locked.ca_dir().crl_path();
        locked.write_crl(&crl, SUPERSEDED_CRL_DAYS)?;
    }
    Ok(superseded)
}

/// Days until the nextUpdate of a CRL written because a certificate was
/// superseded.
pub(super) const SUPERSEDED_CRL_DAYS: u32 = 30;

/// Issues an identity and records it (the caller commits `locked`).
pub fn issue(locked: &mut LockedCa<'_>, request: &IssueRequest) -> Result<IssuedIdentity> {
    refuse_ca_folder(&request.identity.out, Some(locked.ca_dir()))?;
    let issuer = locked.ca_certificate()?.clone();
    let mut issued = issue_files(
        |csr, params| locked.sign(csr, params),
        &issuer,
        request,
        Durability::Now,
    )?;
    locked.record(std::slice::from_ref(&issued.record))?;
    issued.superseded = supersede_others(locked, &issued.record)?;
    Ok(issued)
}

/// The folder a file goes into (`.` for a bare name).
pub(super) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes key, CSR and certificate and writes them, without touching the
/// inventory: the building block for single and bulk issuance. Nothing is
/// written if any file exists and `force` is off, or if signing fails.
///
/// `sign` signs the CSR: [`LockedCa::sign`], which draws a serial the
/// inventory has never seen, or the CA itself in bulk (where the
/// inventory's key refuses a repeat when the batch is recorded). `issuer`
/// is the signing CA's certificate: the certificate file carries it after
/// the new certificate when it is an intermediate ([`cert_file_pem`]).
pub fn issue_files(
    sign: impl FnOnce(&Csr, &IssueParams) -> Result<pki_core::Issued>,
    issuer: &Certificate,
    request: &IssueRequest,
    durability: Durability,
) -> Result<IssuedIdentity> {
    let id = &request.identity;
    let paths = IdentityPaths::new(&id.out, &id.name);
    // Deferred: the three files are made first, all or none, and removed
    // again if anything below fails. Now: checked first, written atomically.
    let new = [
        (paths.key.as_path(), Access::Secret),
        (paths.csr.as_path(), Access::Public),
        (paths.cert.as_path(), Access::Public),
    ];
    let files = match durability {
        Durability::Deferred => Some(NewFiles::create(&new, id.force)?),
        Durability::DeferredIfNew => match NewFiles::create(&new, false) {
            Ok(files) => Some(files),
            // One exists (none of the three was left behind): replaced
            // atomically, if `force` allows.
            Err(Error::Exists { .. }) => {
                refuse_existing(&[&paths.key, &paths.csr, &paths.cert], id.force)?;
                None
            }
            Err(e) => return Err(e),
        },
        Durability::Now => {
            refuse_existing(&[&paths.key, &paths.csr, &paths.cert], id.force)?;
            None
        }
    };
    let (key, csr) = key_and_csr(id, request.profile)?;
    let mut issue = IssueParams::new(request.profile, Validity::days_from_now(request.days)?);
    if request.profile == Profile::Client {
        issue.sans.push(request.role.san()?);
    }
    // The CSR is ours, made from the names the operator gave (a wildcard
    // there is the operator's choice): its names are granted.
    issue.allow_wildcards = true;
    issue.csr_names = pki_core::CsrNames::ALL;
    let issued = sign(&csr, &issue)?;

    let key_pem = key.to_pkcs8_pem()?;
    let csr_pem = csr.to_pem();
    let cert_pem = cert_file_pem(&issued.certificate, issuer);
    match files {
        Some(files) => {
            files.write(&[key_pem.as_bytes(), csr_pem.as_bytes(), cert_pem.as_bytes()])?
        }
        None => {
            write_atomic(&paths.key, key_pem.as_bytes(), Access::Secret, id.force)?;
            write_atomic(&paths.csr, csr_pem.as_bytes(), Access::Public, id.force)?;
            write_atomic(&paths.cert, cert_pem.as_bytes(), Access::Public, id.force)?;
        }
    }
    Ok(IssuedIdentity {
        record: Record::new(&issued.certificate, request.profile, &paths.cert),
        certificate: issued.certificate,
        capped_not_after: issued.capped_not_after,
        paths,
        superseded: Vec::new(),
    })
}

pub(super) fn sans(dns: &[DnsName], ip: &[IpAddr]) -> Vec<SubjectAltName> {
    dns.iter()
        .cloned()
        .map(SubjectAltName::Dns)
        .chain(ip.iter().copied().map(SubjectAltName::Ip))
        .collect()
}

/// A key and CSR to make: on the device side (`provision csr`), or as the
/// first half of issuing.
#[derive(Debug, Clone)]
pub struct CsrRequest {
    /// File-name stem: `NAME.key` and `NAME_csr.pem`.
    pub name: Name,
    /// Subject attributes.
    pub subject: SubjectOptions,
    /// The key type.
    pub key_type: KeyType,
    /// Requested DNS names.
    pub dns: Vec<DnsName>,
    /// Requested IP addresses.
    pub ip: Vec<IpAddr>,
    /// The output folder.
    pub out: PathBuf,
    /// Replace existing files.
    pub force: bool,
    /// Make the key inside this PKCS#11 token (`provision csr --key-uri`,
    /// the URI parsed with [`crate::pkcs11::KeyUri::for_new_key`] to label
    /// the key `NAME`): `NAME.key` then records the key's URI, not a key.
    pub token: Option<crate::pkcs11::TokenKeySpec>,
}

/// A fresh key and the CSR for it.
pub(super) fn key_and_csr(request: &CsrRequest, profile: Profile) -> Result<(KeyPair, Csr)> {
    let key = KeyPair::generate(request.key_type)?;
    let mut params = CsrParams::new(request.subject.identity_subject(&request.name, profile)?);
    params.sans = sans(&request.dns, &request.ip);
    let csr = Csr::new(&params, &key)?;
    Ok((key, csr))
}

/// Writes `NAME.key` (0600) and `NAME_csr.pem`; no CA involved. With a
/// token, the key is made inside it and `NAME.key` records its URI (the
/// key made is removed again when a file cannot be written).
pub fn make_csr(request: &CsrRequest) -> Result<IdentityPaths> {
    refuse_ca_folder(&request.out, None)?;
    let paths = IdentityPaths::new(&request.out, &request.name);
    refuse_existing(&[&paths.key, &paths.csr], request.force)?;
    // A device's CSR (`provision csr`): a client. NAME.key holds the key,
    // or the record of the key made in a token.
    let (key, made) = match &request.token {
        Some(token) => {
            let (key, made) = crate::pkcs11::generate(token, request.key_type)?;
            (key, Some(made))
        }
        None => (KeyPair::generate(request.key_type)?, None),
    };
    let written = (|| {
        let mut params = CsrParams::new(
            request
                .subject
                .identity_subject(&request.name, Profile::Client)?,
        );
        params.sans = sans(&request.dns, &request.ip);
        let csr = Csr::new(&params, &key)?;
        let key_file = match &made {
            Some(made) => zeroize::Zeroizing::new(made.record()),
            None => key.to_pkcs8_pem()?,
        };
        write_atomic(
            &paths.key,
            key_file.as_bytes(),
            Access::Secret,
            request.force,
        )?;
        write_atomic(
            &paths.csr,
            csr.to_pem().as_bytes(),
            Access::Public,
            request.force,
        )
    })();
    if let (Err(_), Some(made)) = (&written, &made) {
        // Nothing names the new key unless NAME.key was written: then the
        // record stays, and the key with it.
        let recorded = crate::files::read_text(&paths.key)
            .is_ok_and(|text| text.lines().next() == made.record().lines().next());
        if !recorded && let Err(undo) = crate::pkcs11::destroy(made) {
            tracing::warn!(
                "{}: the key made could not be removed again: {undo}",
                made.uri
            );
        }
    }
    written.map(|()| paths)
}
