//! CRLs: every revocation not yet expired, numbered by the database.

use std::path::Path;
use std::time::{Duration, SystemTime};

use pki_core::{Crl, CrlParams, RevokedEntry, Timestamp};

use super::db::{from_secs, to_secs};
use super::locked::{AfterCommit, LockedCa};
use crate::error::{Error, Result};

impl LockedCa<'_> {
    /// Every revocation of a certificate not yet expired, for a CRL (an
    /// expired certificate may leave the CRL: RFC 5280 section 3.3).
    pub fn revoked(&mut self) -> Result<Vec<RevokedEntry>> {
        // Only what a CRL entry holds, from `certificates_revoked_crl`.
        let now = to_secs(Timestamp(SystemTime::now()));
        let rows: Vec<(String, i64, String)> = self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query_as(
                "SELECT serial, revoked_at, revocation_reason FROM certificates \
                 WHERE revoked_at IS NOT NULL AND not_after > $1",
            )
            .bind(now)
            .fetch_all(&mut **c)
            .await)
        })?;
        let location = &self.inventory.location;
        rows.into_iter()
            .map(|(serial, at, reason)| {
                let bad = |what: &str, e: &dyn std::fmt::Display| Error::Inventory {
                    location: location.clone(),
                    reason: format!("the revocation of {serial:?}: {what}: {e}"),
                };
                Ok(RevokedEntry {
                    serial: serial.parse().map_err(|e| bad("its serial", &e))?,
                    revoked_at: from_secs(at).0,
                    reason: reason.parse().map_err(|e| bad("its reason", &e))?,
                })
            })
            .collect()
    }

    /// The next CRL number: one more than the larger of the stored counter
    /// and the number of the CRL in the CA folder (a database restored from
    /// an old backup must not make the next CRL older than the broker's).
    pub fn next_crl_number(&mut self) -> Result<u64> {
        let stored = match self.state("crl_number")? {
            Some(n) => n.parse::<u64>().map_err(|e| Error::Inventory {
                location: self.inventory.location.clone(),
                reason: format!("the stored CRL number {n:?}: {e}"),
            })?,
            None => 0,
        };
        let crl_path = self.inventory.ca_dir.crl_path();
        let on_disk = match std::fs::read_to_string(&crl_path) {
            Ok(text) => Crl::from_pem(&text)
                .map_err(|source| Error::Pki {
                    path: crl_path.clone(),
                    source,
                })?
                .number()
                .unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(Error::Io {
                    action: "reading",
                    path: crl_path,
                    source,
                });
            }
        };
        let next = stored
            .max(on_disk)
            .checked_add(1)
            .ok_or_else(|| Error::Inventory {
                location: self.inventory.location.clone(),
                reason: "the CRL number cannot grow any further".into(),
            })?;
        self.set_state("crl_number", &next.to_string())?;
        Ok(next)
    }

    /// Signs a CRL of every revocation, valid for `days`, to be written to
    /// `out` once the transaction commits (a CRL never lists what the
    /// inventory rolled back). The CA folder's CRL is also kept in the
    /// database, so that every host sharing it gets the latest.
    pub fn write_crl(&mut self, out: &Path, days: u32) -> Result<Crl> {
        self.write_crl_for(out, Duration::from_secs(u64::from(days.max(1)) * 86_400))
    }

    /// [`LockedCa::write_crl`] with a lifetime of any length (seconds up):
    /// nextUpdate is `lifetime` from now; thisUpdate is backdated by
    /// [`pki_core::CLOCK_SKEW_ALLOWANCE`], as certificates are, so that a
    /// broker whose clock is a little behind does not take it for a CRL
    /// from the future (and refuse every client).
    pub fn write_crl_for(&mut self, out: &Path, lifetime: Duration) -> Result<Crl> {
        let entries = self.revoked()?;
        let number = self.next_crl_number()?;
        let now = SystemTime::now();
        // Strictly later than the last CRL's: a broker that keeps every CRL
        // it loaded (Mosquitto 2.0 adds them on each reload) takes the one
        // with the latest thisUpdate, at one-second resolution.
        let last = self
            .state("crl_this_update")?
            .and_then(|s| s.parse::<i64>().ok())
            .map(|s| from_secs(s).0 + Duration::from_secs(1));
        let this_update = last
            .map_or(now - pki_core::CLOCK_SKEW_ALLOWANCE, |last| {
                last.max(now - pki_core::CLOCK_SKEW_ALLOWANCE)
            })
            .min(now);
        self.set_state(
            "crl_this_update",
            &to_secs(Timestamp(this_update)).to_string(),
        )?;
        let crl = self.ca()?.crl(
            &entries,
            &CrlParams {
                number,
                this_update,
                next_update: now + lifetime.max(Duration::from_secs(1)),
            },
        )?;
        let pem = crl.to_pem();
        if crate::files::resolve(out) == crate::files::resolve(&self.inventory.ca_dir.crl_path()) {
            self.set_state("crl_pem", &pem)?;
            self.changes.crl = Some(crl.clone());
        }
        self.after_commit
            .push(AfterCommit::Write(out.to_owned(), pem));
        Ok(crl)
    }
}
