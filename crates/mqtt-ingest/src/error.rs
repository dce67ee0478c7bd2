//! The one error type of the ingest library.

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database cannot be opened.
    #[error("database {url}: {reason}")]
    Database {
        /// The URL, password removed.
        url: String,
        /// What sqlx said.
        reason: String,
    },
    /// A query or transaction failed.
    #[error("database: {reason}")]
    Store {
        /// What sqlx said.
        reason: String,
    },
    /// The database refused a row for good: retrying it cannot succeed
    /// (PostgreSQL's SQLSTATE classes 22 data exception, 23 integrity
    /// constraint, 54 program limit, such as a topic too long for the
    /// index; SQLite's constraint, too-big and mismatch errors).
    #[error("the database refused a row: {reason}")]
    Refused {
        /// What the database said.
        reason: String,
    },
    /// Bad configuration.
    #[error("configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The HTTPS listener's files.
    #[error("HTTPS: {path}: {reason}")]
    Https {
        /// The file at fault.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// MQTT or the client bundle.
    #[error(transparent)]
    Mqtt(#[from] mqtt_tls::Error),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
