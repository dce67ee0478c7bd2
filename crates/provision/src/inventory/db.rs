//! The two databases behind one query text: pools, transactions, the
//! schema, rows as stored, and their errors.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use pki_core::{Profile, Serial, Timestamp};

use super::record::{Record, Status};
use crate::error::{Error, Result};
use crate::roles::Role;

pub(super) const SCHEMA: [&str; 10] = [
    "CREATE TABLE IF NOT EXISTS certificates (
        seq BIGINT NOT NULL UNIQUE,
        serial TEXT PRIMARY KEY,
        common_name TEXT NOT NULL,
        subject TEXT NOT NULL,
        profile TEXT NOT NULL,
        not_before BIGINT NOT NULL,
        not_after BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        cert_path TEXT NOT NULL,
        revoked_at BIGINT,
        revocation_reason TEXT,
        role TEXT,
        CHECK ((revoked_at IS NULL) = (revocation_reason IS NULL))
    )",
    "CREATE INDEX IF NOT EXISTS certificates_by_cn ON certificates (common_name)",
    "CREATE TABLE IF NOT EXISTS ca_state (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS certificates_by_role ON certificates (role)
        WHERE role IS NOT NULL AND role <> 'device'",
    // `provision serve`: each request's answer, given again to a copy of
    // the request; a renewal's old certificate until it is revoked.
    "CREATE TABLE IF NOT EXISTS lifecycle_requests (
        requester TEXT NOT NULL,
        request_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        request_sha256 TEXT NOT NULL,
        answer TEXT NOT NULL,
        rejected INTEGER NOT NULL,
        old_serial TEXT,
        new_serial TEXT,
        at BIGINT NOT NULL,
        settled INTEGER NOT NULL,
        PRIMARY KEY (requester, request_id)
    )",
    "CREATE INDEX IF NOT EXISTS lifecycle_unsettled ON lifecycle_requests (at)
        WHERE settled = 0",
    "CREATE INDEX IF NOT EXISTS lifecycle_refusals ON lifecycle_requests (at)
        WHERE rejected = 1",
    // The renewals of a certificate, followed when it is revoked.
    "CREATE INDEX IF NOT EXISTS lifecycle_renewals ON lifecycle_requests (old_serial)
        WHERE old_serial IS NOT NULL",
    // Last, as [`NEWEST_SCHEMA_OBJECT`]. What a CRL lists, answered from the index alone (no look into the
    // table for each of thousands of revocations); it replaces the index
    // on `revoked_at` alone of earlier versions.
    "DROP INDEX IF EXISTS certificates_revoked",
    "CREATE INDEX IF NOT EXISTS certificates_revoked_crl
        ON certificates (revoked_at, not_after, serial, revocation_reason)
        WHERE revoked_at IS NOT NULL",
];

/// The object the last statement of [`SCHEMA`] makes: when it exists, the
/// schema is current and opening changes nothing. Name the newest object
/// here whenever [`SCHEMA`] grows.
pub(super) const NEWEST_SCHEMA_OBJECT: &str = "certificates_revoked_crl";

pub(super) const COLUMNS: &str = "serial, common_name, subject, profile, not_before, not_after, sha256, \
                       cert_path, revoked_at, revocation_reason, role";

/// The PostgreSQL advisory lock a [`LockedCa`] holds ("mqttCAin" in ASCII).
pub(super) const PG_CA_LOCK: i64 = 0x6d71_7474_4341_696e;

/// Rows inserted per statement when recording many (11 parameters each,
/// far below either database's limit).
pub(super) const INSERT_CHUNK: usize = 500;

/// A row as stored: plain columns, checked into a [`Record`] by
/// [`Raw::record`].
pub(super) struct Raw {
    pub(super) serial: String,
    pub(super) common_name: String,
    pub(super) subject: String,
    pub(super) profile: String,
    pub(super) not_before: i64,
    pub(super) not_after: i64,
    sha256: String,
    pub(super) cert_path: String,
    pub(super) revoked_at: Option<i64>,
    pub(super) revocation_reason: Option<String>,
    pub(super) role: Option<String>,
}

impl<'r, R> sqlx::FromRow<'r, R> for Raw
where
    R: sqlx::Row,
    &'r str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> std::result::Result<Self, sqlx::Error> {
        Ok(Self {
            serial: row.try_get("serial")?,
            common_name: row.try_get("common_name")?,
            subject: row.try_get("subject")?,
            profile: row.try_get("profile")?,
            not_before: row.try_get("not_before")?,
            not_after: row.try_get("not_after")?,
            sha256: row.try_get("sha256")?,
            cert_path: row.try_get("cert_path")?,
            revoked_at: row.try_get("revoked_at")?,
            revocation_reason: row.try_get("revocation_reason")?,
            role: row.try_get("role")?,
        })
    }
}

pub(super) fn to_secs(t: Timestamp) -> i64 {
    match t.0.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

pub(super) fn from_secs(s: i64) -> Timestamp {
    let d = Duration::from_secs(s.unsigned_abs());
    Timestamp(if s >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    })
}

impl Raw {
    /// The typed record; a row that does not parse is an error naming the
    /// serial and the column, never a guess.
    pub(super) fn record(self, location: &str) -> Result<Record> {
        let corrupt = |what: String| Error::Inventory {
            location: location.to_string(),
            reason: format!("the row for serial {:?} is corrupt: {what}", self.serial),
        };
        let serial = self
            .serial
            .parse::<Serial>()
            .map_err(|e| corrupt(format!("serial: {e}")))?;
        let profile = self
            .profile
            .parse::<Profile>()
            .map_err(|e| corrupt(format!("profile: {e}")))?;
        let status = match (self.revoked_at, &self.revocation_reason) {
            (None, None) => Status::Valid,
            (Some(at), Some(reason)) => Status::Revoked {
                at: from_secs(at),
                reason: reason
                    .parse()
                    .map_err(|e| corrupt(format!("revocation reason {reason:?}: {e}")))?,
            },
            _ => return Err(corrupt("a revocation without its time or reason".into())),
        };
        let role = self
            .role
            .as_deref()
            .map(str::parse::<Role>)
            .transpose()
            .map_err(|e| corrupt(format!("role: {e}")))?;
        Ok(Record {
            role,
            serial,
            common_name: self.common_name,
            subject: self.subject,
            profile,
            not_before: from_secs(self.not_before),
            not_after: from_secs(self.not_after),
            sha256: self.sha256,
            cert_path: PathBuf::from(self.cert_path),
            status,
        })
    }
}

pub(super) static NON_DEVICE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM certificates
         WHERE role IS NOT NULL AND role <> 'device' AND revoked_at IS NULL ORDER BY seq"
    )
});

pub(super) fn non_device(rows: Vec<Raw>, location: &str) -> Result<Vec<(String, Role)>> {
    let mut out: Vec<(String, Role)> = Vec::new();
    for raw in rows {
        let r = raw.record(location)?;
        if let Some(role) = r.role
            && !out.iter().any(|(n, _)| *n == r.common_name)
        {
            out.push((r.common_name, role));
        }
    }
    Ok(out)
}

pub(super) fn db_error(location: &str, action: &'static str, e: sqlx::Error) -> Error {
    Error::Database {
        location: location.to_owned(),
        action,
        reason: e.to_string(),
    }
}
