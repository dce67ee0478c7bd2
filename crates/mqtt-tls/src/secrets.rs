//! Reading credentials from the outside world, with one policy for every
//! crate: files are read with a size cap (an endless file such as
//! `/dev/zero` is refused without reading it all), and a passphrase comes
//! from a named environment variable that must be set and not empty (a
//! database URL's password: `db_link::redact_url`).
//! `provision` (the CA key, manifests, CSRs) and `mqtt-ingest` use these
//! too.

use std::io::Read;
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_cap_is_refused_without_reading_it_all() {
        let err = read_capped(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(err.to_string().contains("16 MiB"), "{err}");
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
