//! The device's own files, written atomically: a temporary file in the
//! same folder (0600), synced, renamed into place, the folder synced.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder
/// (created 0600), synced, then renamed into place; with `replace` false
/// an existing file is kept and this fails.
pub(super) fn write_file(path: &Path, bytes: &[u8], replace: bool) -> Result<()> {
    let err = |source: std::io::Error| Error::WriteFile {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    if replace {
        tmp.persist(path).map_err(|e| err(e.error))?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| err(e.error))?;
    }
    sync_dir(dir);
    Ok(())
}

pub(super) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

pub(super) fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| Error::WriteFile {
        path: to.to_owned(),
        source,
    })
}
