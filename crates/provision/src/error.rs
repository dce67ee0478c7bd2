//! The one error type of the provisioning library.

use std::path::PathBuf;

/// What can go wrong; every message says what, which file, and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// `reading`, `writing`, ...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The CA service (`provision serve`) failed.
    #[error("{reason}")]
    Lifecycle {
        /// What failed.
        reason: String,
    },

    /// A file that would be replaced.
    #[error("{path} already exists: pass --force to replace it")]
    Exists {
        /// The file.
        path: PathBuf,
    },

    /// An output that must not be written: a link (written through, it
    /// would change its target, say the CA key), or a place reserved for the
    /// CA's own files.
    #[error("refusing to write {path}: {reason}")]
    UnsafeOutput {
        /// The output.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A name that cannot be a file name.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },

    /// A PKI failure on a file.
    #[error("{path}: {source}")]
    Pki {
        /// The file involved.
        path: PathBuf,
        /// The PKI error.
        #[source]
        source: pki_core::Error,
    },

    /// A PKI failure not tied to a file (bad subject, bad SAN, ...).
    #[error(transparent)]
    Invalid(#[from] pki_core::Error),

    /// The CA directory has no CA.
    #[error(
        "no CA in {dir} (looked for {dir}/root_ca_cert.pem, from {cwd}): give the CA folder \
         with --ca-dir DIR, or make a new CA there with `provision init-ca --ca-dir {dir}`",
        dir = dir.display(),
        cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string())
    )]
    NoCa {
        /// The directory.
        dir: PathBuf,
    },

    /// The root CA's key is needed (to sign an intermediate) and is not in
    /// the CA folder: moved offline once the intermediate signs.
    #[error(
        "{path} is not there: the root key is needed once, to sign the intermediate; bring \
         it back from offline storage for this command (nothing was written)"
    )]
    RootKeyAbsent {
        /// Where the root key belongs.
        path: PathBuf,
    },

    /// A key in a PKCS#11 token could not be made, found or used: a bad
    /// URI, no such token or key, a wrong PIN, a removed token.
    #[error("{uri}: {reason}")]
    Token {
        /// The key's `pkcs11:` URI, without its PIN.
        uri: String,
        /// What went wrong.
        reason: String,
    },

    /// The CA key is encrypted and no passphrase was given, or its variable
    /// is unset.
    #[error("{path}: {reason}")]
    Passphrase {
        /// The key file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },

    /// A malformed fleet manifest.
    #[error("{path}: {reason}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The inventory holds what it must not (a corrupt row or line,
    /// another CA's records), or is elsewhere than the command looked.
    #[error("inventory {location}: {reason}")]
    Inventory {
        /// The database file or URL (without a password), or the file.
        location: String,
        /// What is wrong.
        reason: String,
    },

    /// The inventory's database failed.
    #[error("inventory {location}: {action}: {reason}")]
    Database {
        /// The database file or URL (without a password).
        location: String,
        /// What was being done.
        action: &'static str,
        /// The database's error.
        reason: String,
    },

    /// No issued certificate has this serial or file.
    #[error("{what} is not in the inventory {location}")]
    NotInInventory {
        /// The serial or file.
        what: String,
        /// The inventory.
        location: String,
    },

    /// Revocation could not be checked: the CRL is out of date or not the
    /// issuer's.
    #[error("{path}: {reason}")]
    Revocation {
        /// The certificate being checked.
        path: PathBuf,
        /// What is wrong with the CRL, and the way out.
        reason: String,
    },

    /// The broker plugin, or its rules, cannot be used.
    #[error("{path}: {reason}")]
    Plugin {
        /// The plugin or rules file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },

    /// An MQTT or client-bundle failure.
    #[error(transparent)]
    Mqtt(#[from] mqtt_tls::Error),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<token_keys::Error> for Error {
    fn from(e: token_keys::Error) -> Self {
        match e {
            token_keys::Error::Token { uri, reason } => Error::Token { uri, reason },
            // The crate's enum is non-exhaustive: a future kind keeps its
            // message.
            other => Error::Token {
                uri: String::new(),
                reason: other.to_string(),
            },
        }
    }
}
