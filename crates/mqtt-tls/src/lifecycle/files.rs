//! The device's own files, written atomically: a temporary file in the
//! same folder (0600), synced, renamed into place, the folder synced.

use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically and 0600 ([`safe_files::write_atomic`]:
/// never through a planted link); with `replace` false an existing file is
/// kept and this fails.
pub(super) fn write_file(path: &Path, bytes: &[u8], replace: bool) -> Result<()> {
    let options = safe_files::WriteOptions {
        access: safe_files::Access::Secret,
        replace,
        owner: None,
    };
    safe_files::write_atomic(path, bytes, options).map_err(|e| {
        let source = match e {
            safe_files::WriteError::Io { source, .. } => source,
            other @ safe_files::WriteError::Exists { .. } => {
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, other.to_string())
            }
            other => std::io::Error::other(other.to_string()),
        };
        Error::WriteFile {
            path: path.to_owned(),
            source,
        }
    })
}

/// [`safe_files::sync_dir`], best effort: a folder that cannot be flushed
/// leaves the rename as durable as the file system makes it.
pub(super) fn sync_dir(dir: &Path) {
    let _ = safe_files::sync_dir(dir);
}

pub(super) fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| Error::WriteFile {
        path: to.to_owned(),
        source,
    })
}
