//! The CA operations behind the commands: create the CA (a root, and an
//! intermediate under it), issue, make and sign CSRs, revoke, and write
//! CRLs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pki_core::{
    Certificate, CertificateAuthority, Csr, CsrParams, DnsName, IssueParams, KeyPair, KeyType,
    Profile, RevocationReason, Serial, Subject, SubjectAltName, Timestamp, Validity,
};

use crate::error::{Error, Result};
use crate::files::{
    Access, Durability, Name, NewFiles, check_name, read_text, refuse_existing, write_atomic,
};
use crate::inventory::{Inventory, LockedCa, Record};
pub use crate::layout::IdentityPaths;
use crate::roles::{Role, claims_role};
use crate::store::{CaDir, refuse_ca_folder};

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

/// How to create a CA.
#[derive(Debug, Clone)]
pub struct InitCa {
    /// Subject attributes; the common name defaults to `MQTT Root CA`.
    pub subject: SubjectOptions,
    /// The CA's key type.
    pub key_type: KeyType,
    /// Validity in days.
    pub days: u32,
    /// Encrypt the CA key with this passphrase (wiped when dropped).
    pub passphrase: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// Replace an existing CA.
    pub force: bool,
}

/// The shortest passphrase a new CA key is encrypted with: shorter ones
/// fall to a guessing attack on a stolen key file in moments.
pub const MIN_PASSPHRASE: usize = 8;

/// Creates a self-signed root CA in `dir`: `root_ca_cert.pem` and
/// `root_ca.key` (0600, encrypted when a passphrase is given). With
/// `force`, an existing CA is archived whole first (see
/// [`init_ca_archiving`]).
pub fn init_ca(dir: &CaDir, request: &InitCa) -> Result<CertificateAuthority> {
    init_ca_archiving(dir, request).map(|(ca, _)| ca)
}

/// [`init_ca`], also returning where a replaced CA went: its key,
/// certificate, inventory, CRL and CRL number move together into
/// `archive/<time>/` in the CA folder (0700), so that nothing of the old
/// CA (a CRL signed by a key no longer there, its inventory) is left beside
/// the new one.
pub fn init_ca_archiving(
    dir: &CaDir,
    request: &InitCa,
) -> Result<(CertificateAuthority, Option<PathBuf>)> {
    let cert_path = dir.cert_path();
    let key_path = dir.key_path();
    if let Some(p) = &request.passphrase
        && p.len() < MIN_PASSPHRASE
    {
        return Err(Error::Passphrase {
            path: key_path,
            reason: format!(
                "the passphrase for a new CA key must be at least {MIN_PASSPHRASE} characters \
                 (a short one is guessed quickly from a stolen key file); nothing was written"
            ),
        });
    }
    // The old CA's inventory, opened before the lock (opening may take it
    // briefly), is exported into the archive and emptied in place.
    let inventory = if request.force && cert_path.exists() && inventory_exists(dir) {
        Some(Inventory::open(dir)?)
    } else {
        None
    };
    let _lock = dir.lock()?;
    refuse_existing(&[&cert_path, &key_path], request.force)?;
    // Everything that can fail before the old CA moves away.
    let subject = request.subject.subject("MQTT Root CA")?;
    let ca = CertificateAuthority::new_root(
        &subject,
        KeyPair::generate(request.key_type)?,
        Validity::days_from_now(request.days)?,
    )?;
    // The unencrypted PEM is wiped when dropped; no plain copy is made.
    let key_pem: zeroize::Zeroizing<String> = match &request.passphrase {
        Some(p) => ca.key().to_encrypted_pkcs8_pem(p)?.into(),
        None => ca.key().to_pkcs8_pem()?,
    };
    let archived = if request.force {
        dir.archive_with(|archive| match &inventory {
            Some(inventory) => inventory.archive_into(archive),
            None => Ok(()),
        })?
    } else {
        None
    };
    write_atomic(&key_path, key_pem.as_bytes(), Access::Secret, request.force)?;
    write_atomic(
        &cert_path,
        ca.certificate().to_pem().as_bytes(),
        Access::Public,
        request.force,
    )?;
    Ok((ca, archived))
}

/// How to create an intermediate CA under the folder's root.
#[derive(Debug, Clone)]
pub struct InitIntermediate {
    /// Subject attributes; the common name defaults to `MQTT Intermediate
    /// CA`. It must differ from the root's subject.
    pub subject: SubjectOptions,
    /// The intermediate's key type.
    pub key_type: KeyType,
    /// Validity in days (cut to the root's end).
    pub days: u32,
    /// The root key's passphrase, when it is encrypted (wiped when dropped).
    pub root_passphrase: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// Encrypt the new intermediate key with this passphrase.
    pub passphrase: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// Replace an existing intermediate (archived first).
    pub force: bool,
}

/// What [`init_intermediate`] made.
#[derive(Debug)]
pub struct IntermediateCreated {
    /// The intermediate CA, which signs from now on.
    pub ca: CertificateAuthority,
    /// The root certificate that signed it (the trust anchor).
    pub root: Certificate,
    /// The requested end, when it was cut to the root's.
    pub capped_not_after: Option<SystemTime>,
    /// Where a replaced intermediate went.
    pub archived: Option<PathBuf>,
    /// The CRL signed by the intermediate, written to the CA folder's
    /// `crl.pem`.
    pub crl: pki_core::Crl,
    /// Valid client certificates in the inventory issued before this
    /// intermediate (by the root or a replaced intermediate): a broker
    /// checks a client against its issuer's CRL, and their issuer signs
    /// none any more, so they are to be reissued.
    pub earlier_clients: usize,
}

/// Days of the first CRL an intermediate signs.
const FIRST_INTERMEDIATE_CRL_DAYS: u32 = 30;

/// Creates an intermediate CA signed by the folder's root: a new key
/// (`intermediate_ca.key`, 0600, encrypted when a passphrase is given) and
/// its certificate (`intermediate_ca_cert.pem`: CA, path length 0, inside
/// the root's validity), written atomically under the CA's lock, and a CRL
/// signed by it. The root key is read once, here; from then on
/// [`CaDir::load`] signs with the intermediate and the root key can go
/// offline. Refused, with nothing written, when the root key is not in
/// the folder, or when an intermediate exists and `force` is off (with
/// `force` the old one is archived).
pub fn init_intermediate(dir: &CaDir, request: &InitIntermediate) -> Result<IntermediateCreated> {
    let cert_path = dir.intermediate_cert_path();
    let key_path = dir.intermediate_key_path();
    if let Some(p) = &request.passphrase
        && p.len() < MIN_PASSPHRASE
    {
        return Err(Error::Passphrase {
            path: key_path,
            reason: format!(
                "the passphrase for a new CA key must be at least {MIN_PASSPHRASE} characters \
                 (a short one is guessed quickly from a stolen key file); nothing was written"
            ),
        });
    }
    if !dir.cert_path().exists() {
        return Err(Error::NoCa {
            dir: dir.dir().to_owned(),
        });
    }
    if !dir.key_path().exists() {
        return Err(Error::RootKeyAbsent {
            path: dir.key_path(),
        });
    }
    // Everything that can fail before anything is written (the inventory
    // is opened, and maybe created, only then).
    refuse_existing(&[&cert_path, &key_path], request.force)?;
    let root = dir.load_root(request.root_passphrase.as_ref().map(|p| p.as_slice()))?;
    let subject = request.subject.subject("MQTT Intermediate CA")?;
    let key = KeyPair::generate(request.key_type)?;
    let csr = Csr::new(&CsrParams::new(subject), &key)?;
    if csr.subject() == root.certificate().subject() {
        return Err(Error::Invalid(pki_core::Error::ProfileViolation {
            profile: "intermediate CA",
            reason: format!(
                "its subject {} is the root's: give it a name of its own (--cn)",
                csr.subject()
            ),
        }));
    }
    // Path length 0: it issues end entities only.
    let issued = root.sign_intermediate(&csr, Validity::days_from_now(request.days)?, 0)?;
    let ca = CertificateAuthority::from_parts(issued.certificate, key)?;
    let key_pem: zeroize::Zeroizing<String> = match &request.passphrase {
        Some(p) => ca.key().to_encrypted_pkcs8_pem(p)?.into(),
        None => ca.key().to_pkcs8_pem()?,
    };

    // The inventory (opened before the lock: opening may take it briefly)
    // stays the root's: its owner is checked before anything is written.
    let inventory = Inventory::open(dir)?;
    let lock = dir.lock()?;
    refuse_existing(&[&cert_path, &key_path], request.force)?;
    let on_disk =
        Certificate::from_pem(&read_text(&dir.cert_path())?).map_err(|source| Error::Pki {
            path: dir.cert_path(),
            source,
        })?;
    if on_disk.der() != root.certificate().der() {
        return Err(Error::UnsafeOutput {
            path: cert_path,
            reason: format!(
                "the root certificate in {} changed while this command waited for the lock \
                 (replaced with init-ca --force?): nothing was written",
                dir.dir().display()
            ),
        });
    }
    let mut locked = inventory.lock_held(lock)?;
    let mut earlier_clients = 0;
    locked.visit(
        &crate::inventory::Filter {
            common_name: None,
            valid_only: true,
        },
        |r| {
            earlier_clients += usize::from(r.profile == Profile::Client);
            Ok(())
        },
    )?;
    // Brokers check a client against its issuer's CRL, and from now on only
    // the intermediate signs one: the root's clients would be refused once
    // the broker's root CRL is gone, and a revocation of one of them would
    // not reach it. Said before anything is written.
    if earlier_clients > 0 && !request.force {
        return Err(Error::UnsafeOutput {
            path: cert_path,
            reason: format!(
                "{earlier_clients} valid client certificate(s) were issued by the root: after \
                 the switch brokers refuse them (their issuer signs no CRL any more) and \
                 revoking one would not reach a broker. Pass --force to switch anyway and \
                 reissue them afterwards (`provision fleet` does on its next run); nothing \
                 was written"
            ),
        });
    }
    let archived = if request.force {
        dir.archive_intermediate()?
    } else {
        None
    };
    write_atomic(&key_path, key_pem.as_bytes(), Access::Secret, request.force)?;
    write_atomic(
        &cert_path,
        ca.certificate().to_pem().as_bytes(),
        Access::Public,
        request.force,
    )?;
    // From now on the intermediate signs the CRL too: a broker checks a
    // client against the CRL of the client certificate's issuer.
    locked.sign_with(&ca);
    let crl = locked.write_crl(&dir.crl_path(), FIRST_INTERMEDIATE_CRL_DAYS)?;
    locked.commit()?;
    Ok(IntermediateCreated {
        root: root.certificate().clone(),
        capped_not_after: issued.capped_not_after,
        archived,
        crl,
        earlier_clients,
        ca,
    })
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

/// Whether the CA folder has an inventory (SQLite, or a PostgreSQL one it
/// names).
fn inventory_exists(dir: &CaDir) -> bool {
    dir.dir().join(crate::layout::INVENTORY_DB).exists()
        || dir.dir().join(crate::layout::INVENTORY_URL).exists()
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
fn supersede_others(locked: &mut LockedCa<'_>, new: &Record) -> Result<Vec<Serial>> {
    let superseded = locked.supersede_others(new)?;
    if !superseded.is_empty() {
        let crl = locked.ca_dir().crl_path();
        locked.write_crl(&crl, SUPERSEDED_CRL_DAYS)?;
    }
    Ok(superseded)
}

/// Days until the nextUpdate of a CRL written because a certificate was
/// superseded.
const SUPERSEDED_CRL_DAYS: u32 = 30;

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
fn parent_of(path: &Path) -> &Path {
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
    let files = match durability {
        Durability::Deferred => Some(NewFiles::create(
            &[
                (&paths.key, Access::Secret),
                (&paths.csr, Access::Public),
                (&paths.cert, Access::Public),
            ],
            id.force,
        )?),
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

fn sans(dns: &[DnsName], ip: &[IpAddr]) -> Vec<SubjectAltName> {
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
}

/// A fresh key and the CSR for it.
fn key_and_csr(request: &CsrRequest, profile: Profile) -> Result<(KeyPair, Csr)> {
    let key = KeyPair::generate(request.key_type)?;
    let mut params = CsrParams::new(request.subject.identity_subject(&request.name, profile)?);
    params.sans = sans(&request.dns, &request.ip);
    let csr = Csr::new(&params, &key)?;
    Ok((key, csr))
}

/// Writes `NAME.key` (0600) and `NAME_csr.pem`; no CA involved.
pub fn make_csr(request: &CsrRequest) -> Result<IdentityPaths> {
    refuse_ca_folder(&request.out, None)?;
    let paths = IdentityPaths::new(&request.out, &request.name);
    refuse_existing(&[&paths.key, &paths.csr], request.force)?;
    // A device's CSR (`provision csr`): a client.
    let (key, csr) = key_and_csr(request, Profile::Client)?;
    write_atomic(
        &paths.key,
        key.to_pkcs8_pem()?.as_bytes(),
        Access::Secret,
        request.force,
    )?;
    write_atomic(
        &paths.csr,
        csr.to_pem().as_bytes(),
        Access::Public,
        request.force,
    )?;
    Ok(paths)
}

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

/// What to revoke.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    /// The certificate in this file.
    File(PathBuf),
    /// This serial.
    Serial(Serial),
}

/// What [`revoke`] did.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The certificate's record, revoked.
    pub record: Record,
    /// Whether this call revoked it (`false`: it already was, and keeps
    /// its first revocation).
    pub newly: bool,
    /// The name's superseded certificates (a renewal's predecessors) now
    /// revoked for this reason too, so that a connection still on one ends.
    pub withdrawn: Vec<Serial>,
}

/// Marks a certificate revoked in the inventory and rewrites the CRL in
/// the CA folder (the caller commits `locked`). Revoking a revoked
/// certificate keeps its first revocation and rewrites the CRL.
pub fn revoke(
    locked: &mut LockedCa<'_>,
    target: &RevokeTarget,
    reason: RevocationReason,
    crl_days: u32,
) -> Result<Revocation> {
    let (serial, what, file) = match target {
        RevokeTarget::Serial(s) => (s.clone(), format!("serial {s}"), None),
        RevokeTarget::File(path) => {
            let cert = Certificate::from_pem(&read_text(path)?).map_err(|source| Error::Pki {
                path: path.clone(),
                source,
            })?;
            let serial = cert.serial();
            let what = format!("{} (serial {serial})", path.display());
            (serial, what, Some((cert, path)))
        }
    };
    let already = locked.find(&serial)?.is_some_and(|r| r.is_revoked());
    let record = match locked.revoke(&serial, reason)? {
        Some(record) => record,
        // A certificate this CA signed that the inventory never recorded
        // (a crash between writing its files and the commit) can still be
        // revoked: it is recorded first.
        None => match file {
            Some((cert, path)) if signed_by(&cert, locked.ca_certificate()?) => {
                let usages = cert.tls_usages()?;
                let profile = if usages.server_auth && !usages.client_auth {
                    Profile::Server
                } else {
                    Profile::Client
                };
                locked.record(&[Record::new(&cert, profile, path)])?;
                locked
                    .revoke(&serial, reason)?
                    .ok_or_else(|| Error::NotInInventory {
                        what: what.clone(),
                        location: locked.location().to_owned(),
                    })?
            }
            _ => {
                return Err(Error::NotInInventory {
                    what,
                    location: locked.location().to_owned(),
                });
            }
        },
    };
    let withdrawn = if reason == RevocationReason::Superseded {
        Vec::new()
    } else {
        locked.withdraw_superseded(&record.common_name, reason, Some(&record.serial))?
    };
    let crl = locked.ca_dir().crl_path();
    locked.write_crl(&crl, crl_days)?;
    Ok(Revocation {
        record,
        newly: !already,
        withdrawn,
    })
}

/// Whether `ca` signed `cert` (its validity aside: an expired certificate
/// may be revoked too).
pub(crate) fn signed_by(cert: &Certificate, ca: &Certificate) -> bool {
    let options = pki_core::VerifyOptions {
        at: cert.validity().not_before(),
        partial_chain: true,
        // A CA certificate may be asked about too.
        expect_ca: cert.is_ca(),
        ..pki_core::VerifyOptions::now()
    };
    pki_core::verify(cert, std::slice::from_ref(ca), &options).is_ok()
}

/// Writes a CRL of every revoked certificate in the inventory to `out`
/// (the caller commits `locked`: the CRL number is the inventory's).
pub fn write_crl(
    locked: &mut LockedCa<'_>,
    out: &Path,
    lifetime: std::time::Duration,
) -> Result<pki_core::Crl> {
    let dir = locked.ca_dir();
    let target = crate::files::resolve(out);
    // Inside the CA folder only its own CRL: every other name there is the
    // CA's (key, certificate, inventory, lock, archive).
    if target.starts_with(crate::files::resolve(dir.dir()))
        && target != crate::files::resolve(&dir.crl_path())
    {
        return Err(Error::UnsafeOutput {
            path: out.to_owned(),
            reason: format!(
                "it is inside the CA folder {}, where only {} is a CRL",
                dir.dir().display(),
                crate::layout::CRL
            ),
        });
    }
    locked.write_crl_for(out, lifetime)
}

/// Whether the CRL at `path` is due to be signed again: missing,
/// unreadable, or past half its lifetime (from its signing, which is
/// thisUpdate plus [`pki_core::CLOCK_SKEW_ALLOWANCE`], to nextUpdate). For
/// `provision crl --if-due` from a timer, so that a CRL never lapses.
pub fn crl_due(path: &Path, now: SystemTime) -> bool {
    let Ok(crl) = read_text(path).and_then(|t| {
        pki_core::Crl::from_pem(&t).map_err(|source| Error::Pki {
            path: path.to_owned(),
            source,
        })
    }) else {
        return true;
    };
    let Some(next) = crl.next_update() else {
        return false;
    };
    let signed = crl.this_update() + pki_core::CLOCK_SKEW_ALLOWANCE;
    let half = next.duration_since(signed).unwrap_or_default() / 2;
    now >= next || now >= signed + half
}

/// Formats for the CLI.
pub fn when(t: SystemTime) -> String {
    Timestamp(t).to_string()
}
