//! `provision serve`'s requests: each answer, kept for a copy of the
//! request, and a renewal's old and new certificate.

use std::time::SystemTime;

use pki_core::{Serial, Timestamp};

use super::db::{from_secs, to_secs};
use super::locked::LockedCa;
use crate::error::{Error, Result};

/// A `lifecycle_requests` row: kind, request fingerprint, answer, old and
/// new serial, time, settled.
pub(super) type RequestRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

/// A renewal whose old certificate is not revoked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsettled {
    /// Who asked (the device's name).
    pub requester: String,
    /// The request.
    pub request_id: String,
    /// The certificate renewed.
    pub old: Serial,
    /// The certificate issued.
    pub new: Serial,
    /// When the grace period started.
    pub at: Timestamp,
}

/// A request `provision serve` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    /// `enroll` or `renew`.
    pub kind: String,
    /// The request's fingerprint: a copy has the same.
    pub request_sha256: String,
    /// The answer (JSON), given again to every copy of the request.
    pub answer: String,
    /// A renewal's old certificate.
    pub old_serial: Option<Serial>,
    /// The certificate issued.
    pub new_serial: Option<Serial>,
    /// When it was answered (a renewal's grace period starts here).
    pub at: Timestamp,
    /// A renewal whose old certificate was revoked (or never will be).
    pub settled: bool,
}

impl LockedCa<'_> {
    /// The answer already given to `requester`'s request `request_id`.
    pub fn answer(&mut self, requester: &str, request_id: &str) -> Result<Option<StoredRequest>> {
        let row: Option<RequestRow> = self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query_as(
                "SELECT kind, request_sha256, answer, old_serial, new_serial, at, settled
                 FROM lifecycle_requests WHERE requester = $1 AND request_id = $2",
            )
            .bind(requester)
            .bind(request_id)
            .fetch_optional(&mut **c)
            .await)
        })?;
        let location = self.inventory.location.clone();
        row.map(|(kind, request_sha256, answer, old, new, at, settled)| {
            let serial = |s: Option<String>| {
                s.map(|s| s.parse::<Serial>())
                    .transpose()
                    .map_err(|e| Error::Inventory {
                        location: location.clone(),
                        reason: format!("request {request_id:?} of {requester:?}: serial: {e}"),
                    })
            };
            Ok(StoredRequest {
                kind,
                request_sha256,
                answer,
                old_serial: serial(old)?,
                new_serial: serial(new)?,
                at: from_secs(at),
                settled: settled != 0,
            })
        })
        .transpose()
    }

    /// Stores the answer to `requester`'s request `request_id` (`request`
    /// its fingerprint, `rejected` whether a refusal) with the certificate
    /// it issued (`new`); a renewal (with the `old` serial) stays unsettled
    /// until [`LockedCa::settle`], its grace period counted from `at`.
    #[allow(clippy::too_many_arguments)]
    pub fn store_answer(
        &mut self,
        requester: &str,
        request_id: &str,
        kind: &str,
        request: &str,
        answer: &str,
        rejected: bool,
        serials: (Option<&Serial>, Option<&Serial>),
        at: SystemTime,
    ) -> Result<()> {
        let at = to_secs(Timestamp(at));
        let (old, new) = (
            serials.0.map(|s| s.to_string()),
            serials.1.map(|s| s.to_string()),
        );
        let settled = i64::from(old.is_none());
        self.run("writing", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query(
                "INSERT INTO lifecycle_requests
                 (requester, request_id, kind, request_sha256, answer, rejected, old_serial,
                  new_serial, at, settled)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(requester)
            .bind(request_id)
            .bind(kind)
            .bind(request)
            .bind(answer)
            .bind(i64::from(rejected))
            .bind(old.clone())
            .bind(new.clone())
            .bind(at)
            .bind(settled)
            .execute(&mut **c)
            .await
            .map(|_| ()))
        })
    }

    /// Forgets refusals stored before `before` (a copy of such an old
    /// request is judged again); how many.
    pub fn forget_refusals(&mut self, before: SystemTime) -> Result<u64> {
        let before = to_secs(Timestamp(before));
        self.run("writing", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query(
                "DELETE FROM lifecycle_requests WHERE rejected = 1 AND at < $1",
            )
            .bind(before)
            .execute(&mut **c)
            .await
            .map(|r| r.rows_affected()))
        })
    }

    /// How many enrollments claim `claim` was granted.
    pub fn enrolled_by(&mut self, claim: &str) -> Result<u64> {
        let n: i64 = self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query_scalar(
                "SELECT COUNT(*) FROM lifecycle_requests
                 WHERE requester = $1 AND kind = 'enroll' AND new_serial IS NOT NULL",
            )
            .bind(claim)
            .fetch_one(&mut **c)
            .await)
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Unsettled renewals, oldest first, those answered before `before`
    /// only when given.
    pub fn unsettled(&mut self, before: Option<SystemTime>) -> Result<Vec<Unsettled>> {
        let before = before.map_or(i64::MAX, |t| to_secs(Timestamp(t)));
        let rows: Vec<(String, String, String, String, i64)> = self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query_as(
                    "SELECT requester, request_id, old_serial, new_serial, at
                     FROM lifecycle_requests
                     WHERE settled = 0 AND at < $1 AND old_serial IS NOT NULL
                     AND new_serial IS NOT NULL ORDER BY at",
                )
                .bind(before)
                .fetch_all(&mut **c)
                .await)
        })?;
        let location = self.inventory.location.clone();
        rows.into_iter()
            .map(|(requester, request_id, old, new, at)| {
                let parse = |s: &str| {
                    s.parse::<Serial>().map_err(|e| Error::Inventory {
                        location: location.clone(),
                        reason: format!("request {request_id:?} of {requester:?}: serial: {e}"),
                    })
                };
                Ok(Unsettled {
                    old: parse(&old)?,
                    new: parse(&new)?,
                    at: from_secs(at),
                    requester,
                    request_id,
                })
            })
            .collect()
    }

    /// Marks `requester`'s renewal `request_id` settled (its old
    /// certificate revoked, or the new one given up).
    pub fn settle(&mut self, requester: &str, request_id: &str) -> Result<()> {
        self.run("writing", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query(
                "UPDATE lifecycle_requests SET settled = 1 WHERE requester = $1 AND request_id = $2",
            )
            .bind(requester)
            .bind(request_id)
            .execute(&mut **c)
            .await
            .map(|_| ()))
        })
    }

    /// The certificates `provision serve` issued renewing `serial` (with
    /// its key's proof), oldest first.
    pub fn renewals_of(&mut self, serial: &Serial) -> Result<Vec<Serial>> {
        let rows: Vec<String> = self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query_scalar(
                "SELECT new_serial FROM lifecycle_requests
                 WHERE kind = 'renew' AND old_serial = $1 AND new_serial IS NOT NULL
                 ORDER BY at",
            )
            .bind(serial.to_string())
            .fetch_all(&mut **c)
            .await)
        })?;
        rows.iter()
            .map(|s| {
                s.parse::<Serial>().map_err(|e| Error::Inventory {
                    location: self.inventory.location.clone(),
                    reason: format!("a renewal of {serial}: serial {s:?}: {e}"),
                })
            })
            .collect()
    }

    /// Every certificate renewed from `serial`, transitively (renewals of
    /// renewals), in the order found.
    pub fn descendants(&mut self, serial: &Serial) -> Result<Vec<Serial>> {
        let mut found: Vec<Serial> = Vec::new();
        let mut queue = vec![serial.clone()];
        while let Some(next) = queue.pop() {
            for child in self.renewals_of(&next)? {
                if &child != serial && !found.contains(&child) {
                    found.push(child.clone());
                    queue.push(child);
                }
            }
        }
        Ok(found)
    }

    /// Settles every pending renewal of or to `serial` (revoked for a
    /// reason that ends it): the end of its grace period then revokes
    /// nothing (a device whose new certificate was revoked keeps its old
    /// one).
    pub fn settle_renewals_involving(&mut self, serial: &Serial) -> Result<()> {
        self.run("writing", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query(
                "UPDATE lifecycle_requests SET settled = 1
                 WHERE settled = 0 AND (old_serial = $1 OR new_serial = $1)",
            )
            .bind(serial.to_string())
            .execute(&mut **c)
            .await
            .map(|_| ()))
        })
    }
}
