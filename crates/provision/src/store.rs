//! The CA directory: its certificate and key (the original design's
//! `root_cert/root_ca_cert.pem` and `root_cert/root_ca.key`), a lock, the
//! inventory of everything issued, and the CRL.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pki_core::{Certificate, CertificateAuthority, KeyPair, Timestamp};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::{Access, read_text, write_atomic};

/// The CA certificate's file name.
pub const CA_CERT: &str = "root_ca_cert.pem";
/// The CA key's file name.
pub const CA_KEY: &str = "root_ca.key";
/// The inventory's file name: one JSON record per line.
pub const INVENTORY: &str = "inventory.jsonl";
/// The CRL's file name.
pub const CRL: &str = "crl.pem";
const CRL_NUMBER: &str = "crl_number";
const LOCK: &str = ".lock";

/// The paths of a CA directory.
#[derive(Debug, Clone)]
pub struct CaDir {
    dir: PathBuf,
}

/// Refuses `out` as a folder for an identity's files when it is the CA
/// folder `ca` (however spelled: through links, `..`, `./`) or any folder
/// holding a CA's certificate or key: a device named `root_ca` there would
/// overwrite the CA's own files.
pub fn refuse_ca_folder(out: &Path, ca: Option<&CaDir>) -> Result<()> {
    let resolved = crate::files::resolve(out);
    let is_ca = ca.is_some_and(|ca| crate::files::resolve(ca.dir()) == resolved)
        || resolved.join(CA_CERT).exists()
        || resolved.join(CA_KEY).exists();
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
        Self { dir: dir.into() }
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

    /// `inventory.jsonl`.
    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join(INVENTORY)
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

    /// Loads the CA; `passphrase` for an encrypted key.
    pub fn load(&self, passphrase: Option<&[u8]>) -> Result<CertificateAuthority> {
        let cert_path = self.cert_path();
        let key_path = self.key_path();
        if !cert_path.exists() {
            return Err(Error::NoCa {
                dir: self.dir.clone(),
            });
        }
        let cert = Certificate::from_pem(&read_text(&cert_path)?).map_err(|source| Error::Pki {
            path: cert_path.clone(),
            source,
        })?;
        let key_pem = zeroize::Zeroizing::new(read_text(&key_path)?);
        let key = match passphrase {
            Some(p) => KeyPair::from_pem_with_passphrase(&key_pem, p),
            None => KeyPair::from_pem(&key_pem),
        }
        .map_err(|source| match source {
            pki_core::Error::KeyEncrypted => Error::Passphrase {
                path: key_path.clone(),
                reason:
                    "the CA key is encrypted: pass --passphrase-env VAR with the passphrase in $VAR \
                     (or run the command at a terminal to be asked)"
                        .into(),
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

    /// Every record of the inventory, in issue order (empty when none).
    ///
    /// Records are whole lines: a last line without its newline was torn by
    /// a crash during an append and is left out (the identities it named
    /// are still on disk, and the next fleet run records them again).
    pub fn inventory(&self) -> Result<Vec<Record>> {
        let path = self.inventory_path();
        // Our own file, a few hundred bytes a record: not capped like
        // input files (a million devices make about 300 MB).
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    action: "reading",
                    path,
                    source,
                });
            }
        };
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let mut records = Vec::new();
        for (i, line) in whole.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record = serde_json::from_str(line).map_err(|e| Error::Inventory {
                path: path.clone(),
                line: i + 1,
                reason: e.to_string(),
            })?;
            records.push(record);
        }
        Ok(records)
    }

    /// Appends records (call with the lock held).
    pub fn append(&self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let path = self.inventory_path();
        let io = |source| Error::Io {
            action: "writing",
            path: path.clone(),
            source,
        };
        let mut text = String::new();
        for r in records {
            text.push_str(&serde_json::to_string(r).map_err(|e| io(std::io::Error::other(e)))?);
            text.push('\n');
        }
        let mut file = File::options()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        drop_torn_tail(&mut file).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Replaces the whole inventory atomically (call with the lock held).
    pub fn rewrite(&self, records: &[Record]) -> Result<()> {
        let mut text = String::new();
        for r in records {
            text.push_str(&serde_json::to_string(r).map_err(|e| Error::Io {
                action: "writing",
                path: self.inventory_path(),
                source: std::io::Error::other(e),
            })?);
            text.push('\n');
        }
        write_atomic(
            &self.inventory_path(),
            text.as_bytes(),
            Access::Public,
            true,
        )
    }

    /// The serials issued so far.
    pub fn serials(&self) -> Result<HashSet<String>> {
        Ok(self.inventory()?.into_iter().map(|r| r.serial).collect())
    }

    /// Moves the CA's files (key, certificate, inventory, CRL, CRL number)
    /// into a new `archive/<time>/` folder (0700); `None` when there is no
    /// CA here. Call with the lock held.
    pub fn archive(&self) -> Result<Option<PathBuf>> {
        use std::os::unix::fs::DirBuilderExt;
        if !self.cert_path().exists() && !self.key_path().exists() {
            return Ok(None);
        }
        let stamp = Timestamp(SystemTime::now())
            .to_string()
            .replace([':', '-'], "");
        let parent = self.dir.join("archive");
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
        for name in [CA_KEY, CA_CERT, INVENTORY, CRL, CRL_NUMBER] {
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
            std::fs::File::open(folder)
                .and_then(|f| f.sync_all())
                .map_err(|source| Error::Io {
                    action: "flushing",
                    path: folder.clone(),
                    source,
                })?;
        }
        Ok(Some(archive))
    }

    /// The next CRL number, stored so it only ever grows (call with the
    /// lock held): one more than the larger of the stored counter and the
    /// number of the CRL on disk (a counter restored from an old backup
    /// must not make the next CRL older than the broker's).
    pub fn next_crl_number(&self) -> Result<u64> {
        let path = self.dir.join(CRL_NUMBER);
        let current = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| Error::Inventory {
                path: path.clone(),
                line: 1,
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(Error::Io {
                    action: "reading",
                    path,
                    source,
                });
            }
        };
        let on_disk = match std::fs::read_to_string(self.crl_path()) {
            Ok(text) => pki_core::Crl::from_pem(&text)
                .map_err(|source| Error::Pki {
                    path: self.crl_path(),
                    source,
                })?
                .number()
                .unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(Error::Io {
                    action: "reading",
                    path: self.crl_path(),
                    source,
                });
            }
        };
        let next = current
            .max(on_disk)
            .checked_add(1)
            .ok_or_else(|| Error::Inventory {
                path: path.clone(),
                line: 1,
                reason: "the CRL number cannot grow any further".into(),
            })?;
        write_atomic(&path, format!("{next}\n").as_bytes(), Access::Public, true)?;
        Ok(next)
    }
}

/// Held while the CA is in use; dropping it releases the lock.
#[derive(Debug)]
pub struct CaLock {
    _file: File,
}

/// The status of an issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Status {
    /// Issued and not revoked.
    Valid,
    /// Revoked.
    Revoked {
        /// When, RFC 3339.
        at: String,
        /// Why (`key-compromise`, ...).
        reason: String,
    },
}

/// One issued certificate, as the inventory records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The serial, upper-case hex.
    pub serial: String,
    /// The subject, RFC 4514.
    pub subject: String,
    /// `client`, `server` or `intermediate`.
    pub profile: String,
    /// `notBefore`, RFC 3339.
    pub not_before: String,
    /// `notAfter`, RFC 3339.
    pub not_after: String,
    /// SHA-256 fingerprint.
    pub sha256: String,
    /// Where the certificate was written.
    pub cert_path: PathBuf,
    /// Valid or revoked.
    pub status: Status,
}

impl Record {
    /// The record for a certificate just written to `path`.
    pub fn new(cert: &Certificate, profile: &str, path: &Path) -> Self {
        let v = cert.validity();
        Self {
            serial: cert.serial().to_string(),
            subject: cert.subject(),
            profile: profile.to_owned(),
            not_before: Timestamp(v.not_before()).to_string(),
            not_after: Timestamp(v.not_after()).to_string(),
            sha256: cert.sha256_fingerprint(),
            cert_path: path.to_owned(),
            status: Status::Valid,
        }
    }

    /// Marks it revoked now.
    pub fn revoke(&mut self, reason: pki_core::RevocationReason) {
        self.status = Status::Revoked {
            at: Timestamp(SystemTime::now()).to_string(),
            reason: reason.to_string(),
        };
    }
}
/// Cuts a last line that lacks its newline (an append torn by a crash), so
/// that the next record starts on a line of its own.
fn drop_torn_tail(file: &mut File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Records are a few hundred bytes; look back far enough for one.
    let window = len.min(64 * 1024);
    let mut tail = vec![0; window as usize];
    file.seek(SeekFrom::Start(len - window))?;
    file.read_exact(&mut tail)?;
    if tail.last() == Some(&b'\n') {
        return Ok(());
    }
    let keep = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => len - window + i as u64 + 1,
        None if window == len => 0,
        None => return Ok(()),
    };
    file.set_len(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(serial: &str) -> Record {
        Record {
            serial: serial.into(),
            subject: "CN=x".into(),
            profile: "client".into(),
            not_before: "2026-01-01 00:00:00 UTC".into(),
            not_after: "2027-01-01 00:00:00 UTC".into(),
            sha256: "00".into(),
            cert_path: "backend_certs/x_cert.pem".into(),
            status: Status::Valid,
        }
    }

    #[test]
    fn a_torn_last_line_is_left_out_and_cut_before_the_next_append() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::new(tmp.path());
        dir.append(&[record("01"), record("02")]).unwrap();
        // A crash in the middle of appending the third record.
        let line = serde_json::to_string(&record("03")).unwrap();
        let mut file = File::options()
            .append(true)
            .open(dir.inventory_path())
            .unwrap();
        file.write_all(&line.as_bytes()[..line.len() / 2]).unwrap();
        drop(file);

        let serials = |d: &CaDir| -> Vec<String> {
            d.inventory()
                .unwrap()
                .into_iter()
                .map(|r| r.serial)
                .collect()
        };
        assert_eq!(serials(&dir), ["01", "02"]);
        dir.append(&[record("04")]).unwrap();
        assert_eq!(serials(&dir), ["01", "02", "04"]);
        let text = std::fs::read_to_string(dir.inventory_path()).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
