//! Creating the CA: a root, and an intermediate under it.

use std::path::PathBuf;
use std::time::SystemTime;

use pki_core::{
    Certificate, CertificateAuthority, Csr, CsrParams, KeyPair, KeyType, Profile, Validity,
};

use crate::ca_folder::CaDir;
use crate::error::{Error, Result};
use crate::files::{Access, read_text, refuse_existing, write_atomic};
use crate::inventory::Inventory;

use super::issue::SubjectOptions;

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
    /// Make the key in this PKCS#11 token instead of a file: the key file
    /// then records where it is ([`crate::pkcs11`]).
    pub token: Option<crate::pkcs11::TokenKeySpec>,
    /// Replace an existing CA.
    pub force: bool,
}

/// The shortest passphrase a new CA key is encrypted with: shorter ones
/// fall to a guessing attack on a stolen key file in moments.
pub const MIN_PASSPHRASE: usize = 8;

/// Refuses a passphrase for a new CA key shorter than [`MIN_PASSPHRASE`],
/// before anything is written.
fn check_new_passphrase(passphrase: Option<&[u8]>, key_path: &std::path::Path) -> Result<()> {
    match passphrase {
        Some(p) if p.len() < MIN_PASSPHRASE => Err(Error::Passphrase {
            path: key_path.to_owned(),
            reason: format!(
                "the passphrase for a new CA key must be at least {MIN_PASSPHRASE} characters \
                 (a short one is guessed quickly from a stolen key file); nothing was written"
            ),
        }),
        _ => Ok(()),
    }
}

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
    check_new_passphrase(
        request.passphrase.as_deref().map(|p| p.as_slice()),
        &key_path,
    )?;
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
    let validity = Validity::days_from_now(request.days)?;
    let (key, made) = new_key(
        request.key_type,
        request.token.as_ref(),
        request.passphrase.is_some(),
        &key_path,
    )?;
    undone_on_error(made.as_ref(), |touched| {
        let ca = CertificateAuthority::new_root(&subject, key, validity)?;
        let key_pem = key_file(&ca, made.as_ref(), request.passphrase.as_deref())?;
        touched.set(true);
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
    })
}

/// Runs what follows the making of a key in a token (`made`: its URI,
/// with the id it was made with). When that fails before `rest` marks the
/// folder touched (its first file moved or written), the new key is
/// destroyed again: nothing half made stays in the token. Once a file may
/// name it, the key is kept and the error says where it is (a key made in
/// memory just goes away).
fn undone_on_error<T>(
    made: Option<&crate::pkcs11::TokenKeySpec>,
    rest: impl FnOnce(&std::cell::Cell<bool>) -> Result<T>,
) -> Result<T> {
    let touched = std::cell::Cell::new(false);
    let result = rest(&touched);
    if let (Err(_), Some(spec)) = (&result, made) {
        if touched.get() {
            tracing::warn!(
                "the new CA key stays in its token ({}): files of the CA folder may name it",
                spec.uri
            );
        } else if let Err(e) = crate::pkcs11::destroy(spec) {
            tracing::warn!("removing the new key from its token again: {e}");
        }
    }
    result
}

/// A new CA key: in the token `token` names (with the URI that names it
/// exactly, its new id included), or in memory. A passphrase has no use
/// for a key in a token: both given is refused.
fn new_key(
    key_type: KeyType,
    token: Option<&crate::pkcs11::TokenKeySpec>,
    encrypted: bool,
    key_path: &std::path::Path,
) -> Result<(KeyPair, Option<crate::pkcs11::TokenKeySpec>)> {
    match token {
        Some(_) if encrypted => Err(Error::Passphrase {
            path: key_path.to_owned(),
            reason: "a key in a token is not encrypted with a passphrase (the token's PIN \
                     guards it): give --key-uri or a passphrase, not both; nothing was written"
                .into(),
        }),
        Some(spec) => Ok(crate::pkcs11::generate(spec, key_type).map(|(k, s)| (k, Some(s)))?),
        None => Ok((KeyPair::generate(key_type)?, None)),
    }
}

/// What the CA's key file holds: the key as PKCS#8 PEM (encrypted when a
/// passphrase is given; the plain PEM is wiped when dropped), or, for a
/// key in a token, where it is.
fn key_file(
    ca: &CertificateAuthority,
    token: Option<&crate::pkcs11::TokenKeySpec>,
    passphrase: Option<&Vec<u8>>,
) -> Result<zeroize::Zeroizing<String>> {
    Ok(match (token, passphrase) {
        (Some(spec), _) => spec.record().into(),
        (None, Some(p)) => ca.key().to_encrypted_pkcs8_pem(p)?.into(),
        (None, None) => ca.key().to_pkcs8_pem()?,
    })
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
    /// Make the intermediate's key in this PKCS#11 token instead of a file.
    pub token: Option<crate::pkcs11::TokenKeySpec>,
    /// The root key's token, instead of what the root key file records
    /// (that file may be offline).
    pub root_token: Option<crate::pkcs11::TokenKeySpec>,
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
    /// What its commit changed (the new CRL), for [`crate::broker::apply`].
    pub committed: crate::inventory::Committed,
}

/// Days of the first CRL an intermediate signs.
pub(super) const FIRST_INTERMEDIATE_CRL_DAYS: u32 = 30;

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
    check_new_passphrase(
        request.passphrase.as_deref().map(|p| p.as_slice()),
        &key_path,
    )?;
    if !dir.cert_path().exists() {
        return Err(Error::NoCa {
            dir: dir.dir().to_owned(),
        });
    }
    if request.root_token.is_none() && !dir.key_path().exists() {
        return Err(Error::RootKeyAbsent {
            path: dir.key_path(),
        });
    }
    // Everything that can fail before anything is written (the inventory
    // is opened, and maybe created, only then).
    refuse_existing(&[&cert_path, &key_path], request.force)?;
    let root = match &request.root_token {
        Some(spec) => dir.load_root_from(spec)?,
        None => dir.load_root(request.root_passphrase.as_ref().map(|p| p.as_slice()))?,
    };
    let subject = request.subject.subject("MQTT Intermediate CA")?;
    let (key, made) = new_key(
        request.key_type,
        request.token.as_ref(),
        request.passphrase.is_some(),
        &key_path,
    )?;
    undone_on_error(made.as_ref(), |touched| {
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
        let key_pem = key_file(&ca, made.as_ref(), request.passphrase.as_deref())?;

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
                common_names: Vec::new(),
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
        touched.set(true);
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
        let committed = locked.commit()?;
        Ok(IntermediateCreated {
            root: root.certificate().clone(),
            capped_not_after: issued.capped_not_after,
            archived,
            crl,
            earlier_clients,
            committed,
            ca,
        })
    })
}

/// Whether the CA folder has an inventory (SQLite, or a PostgreSQL one it
/// names).
pub(super) fn inventory_exists(dir: &CaDir) -> bool {
    dir.dir().join(crate::layout::INVENTORY_DB).exists()
        || dir.dir().join(crate::layout::INVENTORY_URL).exists()
}
