//! Certificates issued, found, revoked and superseded.

use std::time::SystemTime;

use pki_core::{Csr, IssueParams, RevocationReason, Serial, Timestamp};

use super::db::{COLUMNS, INSERT_CHUNK, Raw, to_secs};
use super::locked::LockedCa;
use super::record::{Record, Status};
use crate::error::Result;
use crate::roles::Role;

impl LockedCa<'_> {
    /// Whether any certificate was ever recorded with this common name.
    pub fn name_used(&mut self, common_name: &str) -> Result<bool> {
        let n: i64 = self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query_scalar(
                "SELECT COUNT(*) FROM certificates WHERE common_name = $1",
            )
            .bind(common_name)
            .fetch_one(&mut **c)
            .await)
        })?;
        Ok(n > 0)
    }

    /// The record with this serial.
    pub fn find(&mut self, serial: &Serial) -> Result<Option<Record>> {
        let sql = format!("SELECT {COLUMNS} FROM certificates WHERE serial = $1");
        let raw = self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(serial.to_string())
                .fetch_optional(&mut **c)
                .await)
        })?;
        raw.map(|r| r.record(&self.inventory.location)).transpose()
    }

    /// The valid (not revoked) certificates with this common name, in
    /// issue order (the last is the newest).
    pub fn valid_for(&mut self, common_name: &str) -> Result<Vec<Record>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM certificates
             WHERE common_name = $1 AND revoked_at IS NULL ORDER BY seq"
        );
        let rows = self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(common_name)
                .fetch_all(&mut **c)
                .await)
        })?;
        rows.into_iter()
            .map(|r| r.record(&self.inventory.location))
            .collect()
    }

    /// Signs `csr` with a serial the inventory has never seen (a repeat,
    /// astronomically unlikely, is drawn again).
    pub fn sign(&mut self, csr: &Csr, params: &IssueParams) -> Result<pki_core::Issued> {
        loop {
            let issued = self.ca()?.sign(csr, params)?;
            if self.find(&issued.certificate.serial())?.is_none() {
                return Ok(issued);
            }
        }
    }

    /// Records issued certificates. A serial already recorded is an error
    /// (the database's key), never a second record.
    pub fn record(&mut self, records: &[Record]) -> Result<()> {
        for chunk in records.chunks(INSERT_CHUNK) {
            let first_seq = self.next_seq;
            self.run("recording in", async |tx| {
                db_link::either!(tx, Tx(c) => {
                    let mut insert = sqlx::QueryBuilder::new(format!(
                        "INSERT INTO certificates (seq, {COLUMNS}) "
                    ));
                    insert.push_values(chunk.iter().zip(first_seq..), |mut row, (r, seq)| {
                        let (revoked_at, reason) = match r.status {
                            Status::Valid => (None, None),
                            Status::Revoked { at, reason } => {
                                (Some(to_secs(at)), Some(reason.to_string()))
                            }
                        };
                        row.push_bind(seq)
                            .push_bind(r.serial.to_string())
                            .push_bind(r.common_name.clone())
                            .push_bind(r.subject.clone())
                            .push_bind(r.profile.as_str())
                            .push_bind(to_secs(r.not_before))
                            .push_bind(to_secs(r.not_after))
                            .push_bind(r.sha256.clone())
                            .push_bind(r.cert_path.to_string_lossy().into_owned())
                            .push_bind(revoked_at)
                            .push_bind(reason)
                            .push_bind(r.role.map(|role| role.as_str()));
                    });
                    insert.build().execute(&mut **c).await.map(|_| ())
                })
            })?;
            self.next_seq += i64::try_from(chunk.len()).unwrap_or(i64::MAX);
        }
        self.changes.recorded += records.len() as u64;
        self.changes.roles.extend(records.iter().filter_map(|r| {
            r.role
                .filter(|role| *role != Role::Device)
                .map(|role| (r.common_name.clone(), role))
        }));
        Ok(())
    }

    /// Revokes the certificate with this serial now; its record, or `None`
    /// when the inventory does not have it. A revoked one keeps its first
    /// revocation, but for a certificate revoked as superseded (a renewal's
    /// predecessor) revoked again for another reason: it keeps its date
    /// and takes the new reason (a key found compromised after its device
    /// renewed).
    pub fn revoke(&mut self, serial: &Serial, reason: RevocationReason) -> Result<Option<Record>> {
        self.revoke_at(serial, Timestamp(SystemTime::now()), reason)?;
        self.find(serial)
    }

    /// [`LockedCa::revoke`]; whether the row changed.
    pub(super) fn revoke_at(
        &mut self,
        serial: &Serial,
        at: Timestamp,
        reason: RevocationReason,
    ) -> Result<bool> {
        let now = to_secs(at);
        let superseded = RevocationReason::Superseded.to_string();
        self.run("revoking in", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query(
                "UPDATE certificates
                 SET revoked_at = COALESCE(revoked_at, $1), revocation_reason = $2
                 WHERE serial = $3
                 AND (revoked_at IS NULL OR (revocation_reason = $4 AND $2 <> $4))",
            )
            .bind(now)
            .bind(reason.to_string())
            .bind(serial.to_string())
            .bind(superseded.as_str())
            .execute(&mut **c)
            .await
            .map(|r| r.rows_affected() > 0))
        })
        .inspect(|changed| {
            if *changed {
                self.changes.revoked.push((serial.clone(), reason));
            }
        })
    }

    /// Gives `reason` to every unexpired certificate of `common_name` that
    /// was revoked as superseded (a renewal's predecessors), but `except`:
    /// a device whose connection is still on an older certificate loses it
    /// too, since the brokers' plugins keep superseded connections. Their
    /// serials.
    pub fn withdraw_superseded(
        &mut self,
        common_name: &str,
        reason: RevocationReason,
        except: Option<&Serial>,
    ) -> Result<Vec<Serial>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM certificates
             WHERE common_name = $1 AND revocation_reason = $2 AND not_after > $3 ORDER BY seq"
        );
        let now = to_secs(Timestamp(SystemTime::now()));
        let superseded = RevocationReason::Superseded.to_string();
        let rows = self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(common_name)
                .bind(superseded.as_str())
                .bind(now)
                .fetch_all(&mut **c)
                .await)
        })?;
        let serials: Vec<Serial> = rows
            .into_iter()
            .map(|r| r.record(&self.inventory.location).map(|r| r.serial))
            .filter(|s| !matches!((s, except), (Ok(s), Some(e)) if s == e))
            .collect::<Result<_>>()?;
        let now = Timestamp(SystemTime::now());
        for serial in &serials {
            // A superseded row takes the new reason and keeps its date.
            self.revoke_at(serial, now, reason)?;
        }
        Ok(serials)
    }

    /// Revokes as superseded every other valid certificate with `new`'s
    /// common name (the MQTT username has one valid certificate), or as
    /// privilege-withdrawn when its role differs from `new`'s; their
    /// serials.
    pub fn supersede_others(&mut self, new: &Record) -> Result<Vec<Serial>> {
        let older = self.valid_for(&new.common_name)?;
        let role = |r: &Record| r.role.unwrap_or(crate::roles::Role::Device);
        let mut superseded = Vec::new();
        let mut role_changed = false;
        for r in older.into_iter().filter(|r| r.serial != new.serial) {
            role_changed |= role(&r) != role(new);
            // Another role: the old certificate's rights are withdrawn, so
            // that the brokers take its live connection off (a superseded
            // one keeps it until the device moves to its new certificate).
            let reason = if role(&r) == role(new) {
                RevocationReason::Superseded
            } else {
                RevocationReason::PrivilegeWithdrawn
            };
            self.revoke(&r.serial, reason)?;
            superseded.push(r.serial);
        }
        // The role changed: connections still on an earlier renewal's
        // certificate lose the old role's rights too.
        if role_changed {
            self.withdraw_superseded(&new.common_name, RevocationReason::PrivilegeWithdrawn, None)?;
        }
        Ok(superseded)
    }
}
