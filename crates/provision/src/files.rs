//! Safe file handling: validated names, atomic writes, private keys 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Checks a certificate or device name used to build file names: 1 to 64
/// characters of letters, digits, `.`, `_` and `-`, not starting with `.`
/// (so no path separators, no `..`, no hidden files).
pub fn check_name(name: &str) -> Result<()> {
    let bad = |reason| Error::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 64 {
        return Err(bad("it must be 1 to 64 characters long"));
    }
    if name.starts_with('.') {
        return Err(bad("it must not start with a dot"));
    }
    if name == "root_ca" {
        return Err(bad(
            "it is the CA's own file name (root_ca.key, root_ca_cert.pem)",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad(
            "only letters, digits, '.', '_' and '-' are allowed (no path separators)",
        ));
    }
    Ok(())
}

/// A certificate or device name, checked once by [`check_name`]: the file
/// stem of `NAME.key`, `NAME_csr.pem` and `NAME_cert.pem`, and the default
/// common name (the MQTT username). Parsed from the command line and from a
/// manifest (where a bad one is an error naming its line).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// Checks `name` (see [`check_name`]).
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        check_name(&name)?;
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<Path> for Name {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Name {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<String> for Name {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> Self {
        name.0
    }
}

pub use safe_files::Access;

/// When a write must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Flushed (fsync) before the rename: the default.
    Now,
    /// Written in place ([`NewFiles`]: no temp file, no fsync) and left to a
    /// later [`flush_all`]: for bulk issuance, where a crash can leave empty
    /// or partial files, which the fleet's validation of existing
    /// identities finds and re-issues.
    Deferred,
    /// [`Durability::Deferred`] for files that do not exist yet (created
    /// exclusively: the open itself is the check), [`Durability::Now`] when
    /// one does (each file replaced atomically, never truncated): what a
    /// fleet run wants, without looking at each file first.
    DeferredIfNew,
}

/// Flushes every file system's cached writes (`sync(2)`).
pub fn flush_all() {
    rustix::fs::sync();
}

/// Writes `contents` to `path` atomically: a temp file in the same folder,
/// flushed to disk, then renamed into place, and the folder flushed. Without
/// `force` an existing file is an error and is left untouched; with it, the
/// name is replaced, never written through (a link there is replaced, its
/// target untouched).
pub fn write_atomic(path: &Path, contents: &[u8], access: Access, force: bool) -> Result<()> {
    write_atomic_owned(path, contents, access, force, None)
}

/// [`write_atomic`] (public, replacing), unless the file holds `text`
/// already: a reader polling it (the broker plugin) sees no change.
pub fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    write_atomic(path, text.as_bytes(), Access::Public, true)
}

/// [`write_atomic`], the file given to user `owner` (by its open handle,
/// before it gets its name: a link swapped in meanwhile changes nothing):
/// [`safe_files::write_atomic`], the folder made first.
pub fn write_atomic_owned(
    path: &Path,
    contents: &[u8],
    access: Access,
    force: bool,
    owner: Option<u32>,
) -> Result<()> {
    create_dir(parent(path))?;
    let options = safe_files::WriteOptions {
        access,
        replace: force,
        owner,
    };
    safe_files::write_atomic(path, contents, options).map_err(|e| match e {
        safe_files::WriteError::Linked { path } => Error::UnsafeOutput {
            path,
            reason: "it is a symbolic link or has other hard links; remove it first".into(),
        },
        safe_files::WriteError::Exists { path } => Error::Exists { path },
        safe_files::WriteError::Io {
            action,
            path,
            source,
        } => Error::Io {
            action,
            path,
            source,
        },
        other => Error::Io {
            action: "writing",
            path: path.to_owned(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

/// Files created together for bulk issuance, all or none: each is made
/// with its final mode from the first byte (0600 for secrets), and until
/// [`NewFiles::write`] succeeds, dropping the set removes every file it
/// made. One `open` a file, no lookups before it: the existence check is
/// the exclusive create itself.
#[derive(Debug)]
pub struct NewFiles {
    files: Vec<(PathBuf, std::fs::File)>,
    kept: bool,
}

impl NewFiles {
    /// Creates `paths` (and their folder when missing). Without `force`
    /// an existing file is [`Error::Exists`] and none of `paths` is left
    /// behind; with it, existing files are truncated and given their mode.
    pub fn create(paths: &[(&Path, Access)], force: bool) -> Result<Self> {
        let mut set = Self {
            files: Vec::with_capacity(paths.len()),
            kept: false,
        };
        for &(path, access) in paths {
            let file = match create_in_place(path, access, force) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    create_dir(parent(path))?;
                    create_in_place(path, access, force)
                }
                other => other,
            };
            let file = file.map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::Exists {
                        path: path.to_owned(),
                    }
                } else if source.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                    Error::UnsafeOutput {
                        path: path.to_owned(),
                        reason: "it is a symbolic link; writing through it would change \
                                 its target (remove it first)"
                            .into(),
                    }
                } else if source.kind() == std::io::ErrorKind::Other
                    && source.to_string().ends_with(REFUSED)
                {
                    Error::UnsafeOutput {
                        path: path.to_owned(),
                        reason: source.to_string(),
                    }
                } else {
                    Error::Io {
                        action: "creating",
                        path: path.to_owned(),
                        source,
                    }
                }
            })?;
            set.files.push((path.to_owned(), file));
        }
        Ok(set)
    }

    /// Writes `contents[i]` into the `i`-th file and keeps the set. Left to
    /// [`flush_all`] to reach the disk.
    pub fn write(mut self, contents: &[&[u8]]) -> Result<()> {
        for ((path, file), bytes) in self.files.iter_mut().zip(contents) {
            file.write_all(bytes).map_err(|source| Error::Io {
                action: "writing",
                path: path.clone(),
                source,
            })?;
        }
        self.kept = true;
        Ok(())
    }
}

impl Drop for NewFiles {
    fn drop(&mut self) {
        if !self.kept {
            for (path, _) in &self.files {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// How [`create_in_place`]'s refusals end (so they become
/// [`Error::UnsafeOutput`]).
const REFUSED: &str = "remove it first";

/// Creates (or, with `force`, truncates) `path` with its final mode. Never
/// through a link: a symbolic link there fails the open (`O_NOFOLLOW`), and
/// a file with other names (a hard link, perhaps to the CA key) or that is
/// not a plain file is refused before anything is truncated.
fn create_in_place(path: &Path, access: Access, force: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mode = match access {
        Access::Secret => 0o600,
        Access::Public => 0o644,
    };
    let mut options = std::fs::File::options();
    options
        .write(true)
        .mode(mode)
        // NONBLOCK: a FIFO planted there fails the open instead of
        // blocking it for ever (no effect on a plain file).
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32);
    if force {
        options.create(true);
    } else {
        options.create_new(true);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if force {
        // Someone else's file would stay theirs (they could read the key
        // written into it later).
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(std::io::Error::other(format!(
                "it belongs to another user (uid {}); {REFUSED}",
                meta.uid()
            )));
        }
        if !meta.is_file() || meta.nlink() > 1 {
            return Err(std::io::Error::other(format!(
                "it has other hard links or is not a plain file, and truncating it would \
                 change them too; {REFUSED}"
            )));
        }
        file.set_len(0)?;
    }
    // The exact mode, on the open file: an existing file keeps its old mode
    // when truncated, and a new one got the umask's cut (umask 077 made a
    // certificate 0600, unreadable by the broker) or a default ACL's. A
    // public file's is set only when it differs (a change of mode is an
    // inode update in the journal, 4,000 of them in a 2,000-device fleet);
    // a key's always, since on some file systems (NFSv4 ACLs) an inherited
    // entry can give others access beside a mode of 0600, and setting the
    // mode masks it.
    if access == Access::Secret || meta.mode() & 0o7777 != mode {
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    }
    Ok(file)
}

/// Fails with [`Error::Exists`] for the first of `paths` that exists,
/// unless `force`: checked before anything is written.
pub fn refuse_existing(paths: &[&Path], force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(Error::Exists {
            path: p.to_path_buf(),
        }),
        None => Ok(()),
    }
}

/// The largest file any command reads (`safe_files`' one cap).
pub const MAX_INPUT_BYTES: u64 = safe_files::MAX_FILE_BYTES;

/// Reads a file as UTF-8 text, naming it on failure; a file larger than
/// [`MAX_INPUT_BYTES`] (or an endless one, like `/dev/zero`) is refused
/// without reading it all.
pub fn read_text(path: &Path) -> Result<String> {
    safe_files::read_capped_text(path).map_err(|source| Error::Io {
        action: "reading",
        path: path.to_owned(),
        source,
    })
}

/// Creates a folder and its parents.
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        action: "creating",
        path: dir.to_owned(),
        source,
    })
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `path` as the file system will take it: absolute, with the links and
/// `..` of its existing part resolved (the rest taken as written, `..`
/// dropping a level). Two spellings of one folder resolve alike.
pub fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    for existing in absolute.ancestors() {
        let Ok(mut resolved) = existing.canonicalize() else {
            continue;
        };
        let rest = absolute.strip_prefix(existing).unwrap_or(Path::new(""));
        for part in rest.components() {
            match part {
                std::path::Component::ParentDir => {
                    resolved.pop();
                }
                std::path::Component::Normal(name) => resolved.push(name),
                _ => {}
            }
        }
        return resolved;
    }
    absolute
}

/// `dir/name` with a suffix, e.g. `backend_certs/client1_cert.pem`.
pub fn named(dir: &Path, name: &str, suffix: &str) -> PathBuf {
    dir.join(format!("{name}{suffix}"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_keep_modes_and_refuse_overwrite_leaving_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sub/k.key");
        let cert = dir.path().join("sub/c.pem");
        NewFiles::create(&[(&key, Access::Secret), (&cert, Access::Public)], false)
            .unwrap()
            .write(&[b"secret", b"cert"])
            .unwrap();
        assert_eq!((mode(&key), mode(&cert)), (0o600, 0o644));

        // The second path exists: the first, made a moment before, is removed.
        let other = dir.path().join("sub/other.key");
        let err = NewFiles::create(&[(&other, Access::Secret), (&cert, Access::Public)], false)
            .unwrap_err();
        assert!(
            matches!(&err, Error::Exists { path } if path == &cert),
            "{err}"
        );
        assert!(!other.exists());
        assert_eq!(std::fs::read(&cert).unwrap(), b"cert");

        // Dropped before writing (the signature failed, say): nothing left.
        drop(NewFiles::create(&[(&other, Access::Secret)], false).unwrap());
        assert!(!other.exists());

        // Replacing a public file with a secret one tightens its mode.
        NewFiles::create(&[(&cert, Access::Secret)], true)
            .unwrap()
            .write(&[b"k"])
            .unwrap();
        assert_eq!(mode(&cert), 0o600);
        assert_eq!(std::fs::read(&cert).unwrap(), b"k");
        flush_all();
    }

    #[test]
    fn names_cannot_escape_the_folder() {
        for ok in ["client1", "sensor-0001", "a.b_c"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "..",
            ".hidden",
            "sp ace",
            "é",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writes_atomically_with_modes_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sub/k.key");
        write_atomic(&key, b"secret", Access::Secret, false).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let cert = dir.path().join("c.pem");
        write_atomic(&cert, b"cert", Access::Public, false).unwrap();
        assert_eq!(
            std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
            0o644
        );

        let err = write_atomic(&key, b"other", Access::Secret, false).unwrap_err();
        assert!(matches!(err, Error::Exists { .. }), "{err}");
        assert_eq!(std::fs::read(&key).unwrap(), b"secret");
        write_atomic(&key, b"other", Access::Secret, true).unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"other");
        // No temp files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
