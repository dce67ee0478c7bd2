//! The one error type of this crate.

use std::path::PathBuf;

/// What went wrong reading the plugin's configuration or files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A line of a rules file is not a rule.
    #[error("{path}:{line}: {reason}")]
    Rules {
        /// The rules file (`<text>` when parsed from memory).
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// One rule, given alone, is not valid.
    #[error("{rule:?}: {reason}")]
    Rule {
        /// The rule as given.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CRL file holds no CRL, or one that does not parse.
    #[error("{path}: {reason}")]
    Crl {
        /// The CRL file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A plugin option is missing or not understood.
    #[error("plugin option {option}: {reason}")]
    Option {
        /// The option (`plugin_opt_NAME`).
        option: String,
        /// What is wrong.
        reason: String,
    },
}

/// This crate's `Result`.
pub type Result<T> = std::result::Result<T, Error>;
