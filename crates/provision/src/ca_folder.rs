//! The CA directory: its certificate and key (the original design's
//! `root_cert/root_ca_cert.pem` and `root_cert/root_ca.key`), an optional
//! intermediate CA that signs in the root's place (`init-ca
//! --intermediate`, the root key then offline), a lock, the inventory of
//! everything issued, and the CRL.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pki_core::{Certificate, CertificateAuthority, KeyPair, Timestamp};

use crate::error::{Error, Result};
use crate::files::read_text;
use crate::layout::{
    ARCHIVE, CA_CERT, CA_FILES, CA_KEY, CRL, INTERMEDIATE_CERT, INTERMEDIATE_FILES,
    INTERMEDIATE_KEY, LOCK,
};

/// The paths of a CA directory.
#[derive(Debug, Clone)]
pub struct CaDir {
    dir: PathBuf,
    inventory_url: Option<String>,
    db_transport: db_link::Transport,
}

/// Refuses `out` as a folder for an identity's files when it is the CA
/// folder `ca` (however spelled: through links, `..`, `./`) or any folder
/// holding a CA's certificate or key: a device named `root_ca` there would
/// overwrite the CA's own files.
pub fn refuse_ca_folder(out: &Path, ca: Option<&CaDir>) -> Result<()> {
    let resolved = crate::files::resolve(out);
    let is_ca = ca.is_some_and(|ca| crate::files::resolve(ca.dir()) == resolved)
        || [CA_CERT, CA_KEY, INTERMEDIATE_CERT, INTERMEDIATE_KEY]
            .iter()
            .any(|name| resolved.join(name).exists());
    if is_ca {
        return Err(Error::UnsafeOutput {
            path: out.to_owned(),
            reason: "it is the CA folder: identities go elsewhere (the CA's own files \
                     live there)"
                .into(),
        });
    }
    Ok(())
}

impl CaDir {
    /// The CA directory `dir` (default `root_cert`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            inventory_url: None,
            db_transport: db_link::Transport::VerifiedTls,
        }
    }

    /// The same folder, its inventory in the PostgreSQL database at `url`
    /// instead of SQLite in the folder (`None`: the folder's).
    pub fn with_inventory_url(mut self, url: Option<String>) -> Self {
        self.inventory_url = url.filter(|u| !u.is_empty());
        self
    }

    /// The same folder, its PostgreSQL inventory reached over a link that
    /// need not be verified TLS (`--insecure-db`; see [`db_link`]).
    pub fn with_insecure_db(mut self, insecure: bool) -> Self {
        self.db_transport = if insecure {
            db_link::Transport::AllowInsecure
        } else {
            db_link::Transport::VerifiedTls
        };
        self
    }

    /// What the link to a PostgreSQL inventory may be.
    pub fn db_transport(&self) -> db_link::Transport {
        self.db_transport
    }

    /// The PostgreSQL URL of the inventory, when it is not in the folder.
    pub fn inventory_url(&self) -> Option<&str> {
        self.inventory_url.as_deref()
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `root_ca_cert.pem`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// `root_ca.key`.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(CA_KEY)
    }

    /// `intermediate_ca_cert.pem`.
    pub fn intermediate_cert_path(&self) -> PathBuf {
        self.dir.join(INTERMEDIATE_CERT)
    }

    /// `intermediate_ca.key`.
    pub fn intermediate_key_path(&self) -> PathBuf {
        self.dir.join(INTERMEDIATE_KEY)
    }

    /// Whether the folder has an intermediate CA (which then signs).
    pub fn has_intermediate(&self) -> bool {
        self.intermediate_cert_path().exists()
    }

    /// The certificate of the CA that signs: the intermediate's when there
    /// is one, else the root's. (The root's, [`CaDir::cert_path`], is the
    /// trust anchor either way.)
    pub fn signer_cert_path(&self) -> PathBuf {
        if self.has_intermediate() {
            self.intermediate_cert_path()
        } else {
            self.cert_path()
        }
    }

    /// `crl.pem`.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join(CRL)
    }

    /// Takes the CA's lock (blocking until other `provision` processes
    /// release it); held until the guard is dropped.
    pub fn lock(&self) -> Result<CaLock> {
        crate::files::create_dir(&self.dir)?;
        let path = self.dir.join(LOCK);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                action: "opening the lock",
                path: path.clone(),
                source,
            })?;
        file.lock().map_err(|source| Error::Io {
            action: "locking",
            path,
            source,
        })?;
        Ok(CaLock { _file: file })
    }

    /// Loads the CA that signs, `passphrase` for its encrypted key: the
    /// intermediate when the folder has one (the root key is then not
    /// needed, and may be offline), else the root.
    pub fn load(&self, passphrase: Option<&[u8]>) -> Result<CertificateAuthority> {
        if !self.cert_path().exists() {
            return Err(Error::NoCa {
                dir: self.dir.clone(),
            });
        }
        if self.has_intermediate() {
            let ca = load_pair(
                self.intermediate_cert_path(),
                self.intermediate_key_path(),
                passphrase,
                "--passphrase-env VAR",
            )?;
            // It must be the root's: what it signs is checked against the
            // root.
            let root_path = self.cert_path();
            let root =
                Certificate::from_pem(&read_text(&root_path)?).map_err(|source| Error::Pki {
                    path: root_path,
                    source,
                })?;
            let options = pki_core::VerifyOptions {
                at: ca.certificate().validity().not_before(),
                partial_chain: true,
                // The intermediate CA itself is checked against the root.
                expect_ca: true,
                ..pki_core::VerifyOptions::now()
            };
            pki_core::verify(ca.certificate(), std::slice::from_ref(&root), &options).map_err(
                |source| Error::Pki {
                    path: self.intermediate_cert_path(),
                    source,
                },
            )?;
            return Ok(ca);
        }
        load_pair(
            self.cert_path(),
            self.key_path(),
            passphrase,
            "--passphrase-env VAR",
        )
    }

    /// Loads the root CA itself, `passphrase` for its encrypted key: for
    /// `init-ca --intermediate`, the one command that needs the root key.
    pub fn load_root(&self, passphrase: Option<&[u8]>) -> Result<CertificateAuthority> {
        if !self.cert_path().exists() {
            return Err(Error::NoCa {
                dir: self.dir.clone(),
            });
        }
        load_pair(
            self.cert_path(),
            self.key_path(),
            passphrase,
            "--root-passphrase-env VAR",
        )
    }

    /// Loads the root CA with its key from the token `spec` names (for
    /// `init-ca --intermediate --root-key-uri`: the root key file that
    /// records it may be offline). Refused when that key is not the root
    /// certificate's.
    pub fn load_root_from(
        &self,
        spec: &crate::pkcs11::TokenKeySpec,
    ) -> Result<CertificateAuthority> {
        let cert_path = self.cert_path();
        if !cert_path.exists() {
            return Err(Error::NoCa {
                dir: self.dir.clone(),
            });
        }
        let cert = Certificate::from_pem(&read_text(&cert_path)?).map_err(|source| Error::Pki {
            path: cert_path.clone(),
            source,
        })?;
        let key = crate::pkcs11::open(spec)?;
        CertificateAuthority::from_parts(cert, key).map_err(|e| Error::Token {
            uri: spec.uri.to_string(),
            reason: format!("not the key of {}: {e}", cert_path.display()),
        })
    }

    /// Moves the CA's files (keys, certificates, inventory, CRL, CRL number:
    /// [`CA_FILES`])
    /// into a new `archive/<time>/` folder (0700); `None` when there is no
    /// CA here. Call with the lock held.
    pub fn archive(&self) -> Result<Option<PathBuf>> {
        self.archive_with(|_| Ok(()))
    }

    /// [`CaDir::archive`], calling `export` with the new archive folder
    /// before anything moves (the inventory's export).
    pub fn archive_with(
        &self,
        export: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Option<PathBuf>> {
        if !self.cert_path().exists() && !self.key_path().exists() {
            return Ok(None);
        }
        self.archive_files(&CA_FILES, export).map(Some)
    }

    /// Moves the intermediate CA's certificate and key
    /// ([`INTERMEDIATE_FILES`]) into a new `archive/<time>/` folder, for
    /// `init-ca --intermediate --force`; `None` when there is none. Call
    /// with the lock held.
    pub fn archive_intermediate(&self) -> Result<Option<PathBuf>> {
        if !self.intermediate_cert_path().exists() && !self.intermediate_key_path().exists() {
            return Ok(None);
        }
        self.archive_files(&INTERMEDIATE_FILES, |_| Ok(()))
            .map(Some)
    }

    /// Moves `names` (those present) into a new `archive/<time>/` folder
    /// (0700), after `export` wrote into it.
    fn archive_files(
        &self,
        names: &[&str],
        export: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let stamp = Timestamp(SystemTime::now())
            .to_string()
            .replace([':', '-'], "");
        let parent = self.dir.join(ARCHIVE);
        crate::files::create_dir(&parent)?;
        let mut archive = parent.join(&stamp);
        let mut n = 1;
        while archive.exists() {
            n += 1;
            archive = parent.join(format!("{stamp}-{n}"));
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&archive)
            .map_err(|source| Error::Io {
                action: "creating",
                path: archive.clone(),
                source,
            })?;
        export(&archive)?;
        for name in names {
            let from = self.dir.join(name);
            match std::fs::rename(&from, archive.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        action: "archiving",
                        path: from,
                        source,
                    });
                }
            }
        }
        for folder in [&archive, &self.dir] {
            safe_files::sync_dir(folder).map_err(|source| Error::Io {
                action: "flushing",
                path: folder.clone(),
                source,
            })?;
        }
        Ok(archive)
    }
}

/// A CA certificate and its key, each error naming the file at fault;
/// `flag` is the option that gives the key's passphrase.
fn load_pair(
    cert_path: PathBuf,
    key_path: PathBuf,
    passphrase: Option<&[u8]>,
    flag: &str,
) -> Result<CertificateAuthority> {
    let cert = Certificate::from_pem(&read_text(&cert_path)?).map_err(|source| Error::Pki {
        path: cert_path.clone(),
        source,
    })?;
    let key_pem = zeroize::Zeroizing::new(read_text(&key_path)?);
    // A key in a PKCS#11 token: the file records where it is.
    if let Some(spec) = crate::pkcs11::TokenKeySpec::from_record(&key_pem, None) {
        let key = crate::pkcs11::open(&spec?)?;
        return CertificateAuthority::from_parts(cert, key).map_err(|source| Error::Pki {
            path: match source {
                pki_core::Error::NotACa { .. } => cert_path,
                _ => key_path,
            },
            source,
        });
    }
    let key = match passphrase {
        Some(p) => KeyPair::from_pem_with_passphrase(&key_pem, p),
        None => KeyPair::from_pem(&key_pem),
    }
    .map_err(|source| match source {
        pki_core::Error::KeyEncrypted => Error::Passphrase {
            path: key_path.clone(),
            reason: format!(
                "the CA key is encrypted: pass {flag} with the passphrase in $VAR \
                     (or run the command at a terminal to be asked)"
            ),
        },
        source => Error::Pki {
            path: key_path.clone(),
            source,
        },
    })?;
    // Name the file at fault: a certificate that is no CA is the
    // certificate's problem; a key that does not match it, the key's.
    CertificateAuthority::from_parts(cert, key).map_err(|source| Error::Pki {
        path: match source {
            pki_core::Error::NotACa { .. } => cert_path,
            _ => key_path,
        },
        source,
    })
}

/// Held while the CA is in use; dropping it releases the lock.
#[derive(Debug)]
pub struct CaLock {
    _file: File,
}
