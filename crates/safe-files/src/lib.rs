//! Credentials and the files around them, with one policy for every
//! crate: files are read with a size cap (an endless file such as
//! `/dev/zero` is refused without reading it all); a passphrase comes from
//! a named environment variable that must be set and not empty; and a file
//! is written atomically ([`write_atomic`]: a temporary file with its final
//! mode and owner from the first byte, flushed, renamed into place, the
//! folder flushed), never through a planted link. `mqtt-tls` (a device's
//! key and certificate), `provision` (the CA's files, every identity) and
//! `mqtt-ingest` use these.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// The largest file read: far above any certificate chain, key, CSR, a
/// large fleet's CRL or manifest; far below what would hurt.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads at most [`MAX_FILE_BYTES`] of `path`; a larger file is an error
/// of kind [`std::io::ErrorKind::FileTooLarge`] saying so. The caller names
/// the file in its own error.
pub fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    // Sized once from the file's length (a key's bytes are not left behind
    // in buffers freed while growing); a file that grows meanwhile, or
    // reports no length (a pipe), is still capped by `take`.
    let expected = file.metadata().map_or(0, |m| m.len()).min(MAX_FILE_BYTES) + 1;
    let mut bytes = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "larger than {} MiB, more than any certificate, key, CSR, CRL or manifest",
                MAX_FILE_BYTES >> 20
            ),
        ));
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_capped_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_capped(path)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// Why a passphrase could not be taken from the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PassphraseError {
    /// The variable is not set.
    #[error("the passphrase variable {0} is not set")]
    NotSet(String),
    /// The variable is set but empty: never a passphrase, usually a
    /// mistake in a service file.
    #[error("the passphrase variable {0} is empty")]
    Empty(String),
}

/// The passphrase in the environment variable `var`: its bytes (not
/// necessarily UTF-8), zeroed on drop. Unset and empty are both refused,
/// the same for the CLI, a fleet manifest, a bundle file and a renewal.
pub fn passphrase_from_env(var: &str) -> Result<Zeroizing<Vec<u8>>, PassphraseError> {
    use std::os::unix::ffi::OsStringExt;
    match std::env::var_os(var) {
        None => Err(PassphraseError::NotSet(var.to_owned())),
        Some(v) if v.is_empty() => Err(PassphraseError::Empty(var.to_owned())),
        Some(v) => Ok(Zeroizing::new(v.into_vec())),
    }
}

/// Who may read a file [`write_atomic`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// 0600: private keys.
    Secret,
    /// 0644: certificates, CSRs, CRLs, configuration.
    Public,
}

/// How [`write_atomic`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Who may read it.
    pub access: Access,
    /// Replace an existing file (its name: a link there is replaced, its
    /// target untouched); without, an existing file is
    /// [`WriteError::Exists`] and is left as it was.
    pub replace: bool,
    /// Give the file to this user (by its open handle, before it has its
    /// name).
    pub owner: Option<u32>,
}

/// Why [`write_atomic`] wrote nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A symbolic link, or a file with other hard links, where the file
    /// goes: planted, and refused.
    #[error("{path}: it is a symbolic link or has other hard links; remove it first")]
    Linked {
        /// The file.
        path: PathBuf,
    },
    /// The file exists and was not to be replaced.
    #[error("{path} exists (pass --force to replace it)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file system refused.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// folder (created 0600, so a key is never readable by others, not even
/// for a moment; 0644 set on the open file for [`Access::Public`]), its
/// owner set on the open file, flushed, renamed into place, and the folder
/// flushed. A symbolic link or a file with other hard links at `path` is
/// refused: a link where we write was planted.
pub fn write_atomic(path: &Path, contents: &[u8], options: WriteOptions) -> Result<(), WriteError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && (meta.file_type().is_symlink() || (meta.is_file() && meta.nlink() > 1))
    {
        return Err(WriteError::Linked {
            path: path.to_owned(),
        });
    }
    let io = |source| WriteError::Io {
        action: "writing",
        path: path.to_owned(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(contents).map_err(io)?;
    // Mode and owner on the open file, not by name: a name can be swapped
    // for a link to something else between two calls.
    if options.access == Access::Public {
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    if let Some(uid) = options.owner {
        std::os::unix::fs::fchown(tmp.as_file(), Some(uid), None).map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    if options.replace {
        tmp.persist(path).map_err(|e| io(e.error))?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                WriteError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io(e.error)
            }
        })?;
    }
    // The rename is durable once the folder is.
    sync_dir(dir).map_err(|source| WriteError::Io {
        action: "flushing",
        path: dir.to_owned(),
        source,
    })
}

/// Flushes a folder, so that a rename or a new file in it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_cap_is_refused_without_reading_it_all() {
        let err = read_capped(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(err.to_string().contains("16 MiB"), "{err}");
    }

    fn secret(replace: bool) -> WriteOptions {
        WriteOptions {
            access: Access::Secret,
            replace,
            owner: None,
        }
    }

    #[test]
    fn writes_are_atomic_private_and_never_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("dev.key");
        write_atomic(&key, b"one", secret(false)).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            write_atomic(&key, b"two", secret(false)),
            Err(WriteError::Exists { .. })
        ));
        assert_eq!(std::fs::read(&key).unwrap(), b"one");
        write_atomic(&key, b"two", secret(true)).unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"two");
        // A planted link is refused, its target untouched.
        let target = dir.path().join("ca.key");
        std::fs::write(&target, b"the CA").unwrap();
        let planted = dir.path().join("planted.key");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(matches!(
            write_atomic(&planted, b"x", secret(true)),
            Err(WriteError::Linked { .. })
        ));
        let hard = dir.path().join("hard.key");
        std::fs::hard_link(&target, &hard).unwrap();
        assert!(matches!(
            write_atomic(&hard, b"x", secret(true)),
            Err(WriteError::Linked { .. })
        ));
        assert_eq!(std::fs::read(&target).unwrap(), b"the CA");
    }

    #[test]
    fn unset_and_empty_passphrases_are_refused() {
        assert_eq!(
            passphrase_from_env("MQTT_TLS_TEST_SURELY_UNSET").unwrap_err(),
            PassphraseError::NotSet("MQTT_TLS_TEST_SURELY_UNSET".into())
        );
        // PATH is set and not empty in any test environment.
        assert!(!passphrase_from_env("PATH").unwrap().is_empty());
    }
}
