//! What the inventory holds of one certificate, and how to ask for some.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use pki_core::{Certificate, Profile, RevocationReason, Serial, Timestamp};
use serde::{Deserialize, Serialize};

use super::db::COLUMNS;
use crate::roles::Role;

/// One issued certificate, as the inventory records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The serial.
    #[serde(with = "text")]
    pub serial: Serial,
    /// The subject's common name: the MQTT username, one valid certificate
    /// each (a superseded one during a renewal's grace period aside).
    pub common_name: String,
    /// The subject, RFC 4514.
    pub subject: String,
    /// Client or server.
    #[serde(with = "text")]
    pub profile: Profile,
    /// `notBefore`.
    #[serde(with = "text")]
    pub not_before: Timestamp,
    /// `notAfter`.
    #[serde(with = "text")]
    pub not_after: Timestamp,
    /// SHA-256 fingerprint of the DER.
    pub sha256: String,
    /// Where the certificate was written.
    pub cert_path: PathBuf,
    /// Valid or revoked.
    pub status: Status,
    /// The role its certificate carries (a client's; `None` for a broker
    /// and for certificates from before roles).
    #[serde(default)]
    pub role: Option<Role>,
}

/// The status of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Status {
    /// Issued and not revoked.
    Valid,
    /// Revoked.
    Revoked {
        /// When.
        #[serde(with = "text")]
        at: Timestamp,
        /// Why.
        #[serde(with = "text")]
        reason: RevocationReason,
    },
}

impl Record {
    /// The record for `cert`, just written to `path`.
    pub fn new(cert: &Certificate, profile: Profile, path: &Path) -> Self {
        let v = cert.validity();
        Self {
            serial: cert.serial(),
            common_name: cert.common_name().unwrap_or_default(),
            subject: cert.subject(),
            profile,
            not_before: Timestamp(v.not_before()),
            not_after: Timestamp(v.not_after()),
            sha256: cert.sha256_fingerprint(),
            cert_path: path.to_owned(),
            status: Status::Valid,
            role: Role::of(cert),
        }
    }

    /// Whether it is revoked.
    pub fn is_revoked(&self) -> bool {
        matches!(self.status, Status::Revoked { .. })
    }
}

/// Serde through `Display` and `FromStr`, for the typed fields.
pub(in crate::inventory) mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    pub(in crate::inventory) fn serialize<T: Display, S: serde::Serializer>(
        value: &T,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub(in crate::inventory) fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: serde::Deserializer<'de>,
    {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which records [`super::Inventory::visit`] yields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only certificates with one of these common names (every one when
    /// empty): one query for a chunk of a fleet's names, not one a name.
    pub common_names: Vec<String>,
    /// Only certificates not revoked.
    pub valid_only: bool,
}

impl Filter {
    /// The names a query binds at most: SQLite's limit on parameters is
    /// 32,766, PostgreSQL's 65,535.
    pub const MAX_NAMES: usize = 1_000;

    /// The query, its names bound in each database's own placeholders:
    /// SQLite's anonymous `?` (a numbered one is looked up by name at every
    /// bind, a scan of all of them: 1,000 names took 3 ms to bind) and
    /// PostgreSQL's `$n`.
    pub(super) fn query<DB>(&self) -> sqlx::QueryBuilder<DB>
    where
        DB: sqlx::Database,
        DB::Arguments: Default,
        for<'t> &'t str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    {
        let mut query =
            sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM certificates WHERE 1 = 1"));
        if !self.common_names.is_empty() {
            query.push(" AND common_name IN (");
            let mut names = query.separated(", ");
            for name in &self.common_names {
                names.push_bind(name.as_str());
            }
            query.push(")");
        }
        if self.valid_only {
            query.push(" AND revoked_at IS NULL");
        }
        query.push(" ORDER BY seq");
        query
    }
}

impl FromStr for Filter {
    type Err = std::convert::Infallible;

    /// A filter on one common name.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Self {
            common_names: vec![s.to_owned()],
            valid_only: false,
        })
    }
}
