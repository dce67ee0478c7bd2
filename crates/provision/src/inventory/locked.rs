//! [`LockedCa`]: the CA under its lock, one transaction, committed or
//! rolled back as a whole.

use std::path::{Path, PathBuf};

use pki_core::{Certificate, CertificateAuthority, Crl};

use super::Inventory;
use super::committed::Committed;
use super::db::{PG_CA_LOCK, Raw};
use super::record::{Filter, Record};
use crate::ca_folder::{CaDir, CaLock};
use crate::error::{Error, Result};
use crate::files::{Access, write_atomic};
use crate::layout;

/// The SHA-256 of the certificate in `path`.
pub(super) fn fingerprint_of(path: &Path) -> Result<String> {
    let cert =
        Certificate::from_pem(&crate::files::read_text(path)?).map_err(|source| Error::Pki {
            path: path.to_owned(),
            source,
        })?;
    Ok(cert.sha256_fingerprint())
}

/// The CA under its lock: the folder's lock and the database's write lock,
/// one transaction. The only way to change the inventory; dropped without
/// [`LockedCa::commit`], it changes nothing.
pub struct LockedCa<'a> {
    pub(super) inventory: &'a Inventory,
    pub(super) tx: Option<db_link::Tx>,
    /// Held until the end (dropped after `tx`, see `Drop`); `None` when
    /// the caller holds it.
    pub(super) _file_lock: Option<CaLock>,
    pub(super) ca: Option<&'a CertificateAuthority>,
    pub(super) next_seq: i64,
    /// Done only once the transaction committed: a CRL or a rename that
    /// must not get ahead of the database.
    pub(super) after_commit: Vec<AfterCommit>,
    /// What this transaction changed, returned by [`LockedCa::commit`].
    pub(super) changes: Committed,
}

/// A file change that waits for the commit.
pub(super) enum AfterCommit {
    Write(PathBuf, String),
    Rename(PathBuf, PathBuf),
}

impl std::fmt::Debug for LockedCa<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedCa")
            .field("inventory", &self.inventory.location)
            .finish_non_exhaustive()
    }
}

impl Drop for LockedCa<'_> {
    /// Rolls back what was not committed (on the runtime, where sqlx
    /// returns the connection to the pool), then releases the locks.
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            // On an async task (a misuse `open` refuses) the connection goes
            // back on that runtime instead; block_on would panic.
            if tokio::runtime::Handle::try_current().is_ok() {
                return;
            }
            let rolled_back = self
                .inventory
                .rt
                .block_on(async { db_link::either!(tx, Tx(t) => t.rollback().await) });
            if let Err(e) = rolled_back {
                tracing::warn!("inventory {}: rolling back: {e}", self.inventory.location);
            }
        }
    }
}

impl Inventory {
    /// The transaction, under `file_lock` (`None`: the caller holds it):
    /// checks (and on first use
    /// claims) the owner, remembers a PostgreSQL inventory's location in
    /// the folder, and imports an `inventory.jsonl` (the folder's CRL is
    /// brought up to the database's latest by [`crate::broker::apply`]).
    pub(super) fn begin<'a>(
        &'a self,
        file_lock: Option<CaLock>,
        ca: Option<&'a CertificateAuthority>,
    ) -> Result<LockedCa<'a>> {
        let fingerprint = self.folder_fingerprint()?;
        // The CA that signs (the intermediate when there is one) must still
        // be the folder's.
        if let Some(ca) = ca
            && ca.certificate().sha256_fingerprint()
                != fingerprint_of(&self.ca_dir.signer_cert_path())?
        {
            return Err(Error::Inventory {
                location: self.location.clone(),
                reason: format!(
                    "the CA certificate in {} changed while this command waited for the \
                     lock (replaced with init-ca --force, or an intermediate added with \
                     init-ca --intermediate?): nothing was done with the old CA",
                    self.ca_dir.dir().display()
                ),
            });
        }
        self.transactions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tx = self
            .rt
            .block_on(async {
                match &self.db {
                    // IMMEDIATE: the write lock now, not at the first write
                    // (a reader turned writer could fail with "busy").
                    db_link::Pool::Sqlite(pool) => pool
                        .begin_with("BEGIN IMMEDIATE")
                        .await
                        .map(db_link::Tx::Sqlite),
                    db_link::Pool::Postgres(pool) => {
                        let mut tx = pool.begin().await?;
                        // A host cut off inside its transaction must not
                        // hold the others for ever; a fleet of a million
                        // holds it for minutes.
                        for setting in [
                            "SET LOCAL lock_timeout = '120s'",
                            "SET LOCAL idle_in_transaction_session_timeout = '3600s'",
                        ] {
                            sqlx::query(setting).execute(&mut *tx).await?;
                        }
                        sqlx::query("SELECT pg_advisory_xact_lock($1)")
                            .bind(PG_CA_LOCK)
                            .execute(&mut *tx)
                            .await?;
                        Ok(db_link::Tx::Postgres(tx))
                    }
                }
            })
            .map_err(self.err("locking"))?;
        let mut locked = LockedCa {
            inventory: self,
            tx: Some(tx),
            _file_lock: file_lock,
            ca,
            next_seq: 0,
            after_commit: Vec::new(),
            changes: Committed::default(),
        };
        locked.next_seq = locked.max_seq()? + 1;
        match locked.state("ca_sha256")? {
            Some(owner) if owner == fingerprint => {}
            Some(owner) => return Err(self.not_ours(&owner, &fingerprint)),
            None => locked.claim(&fingerprint)?,
        }
        let marker = self.ca_dir.dir().join(layout::INVENTORY_URL);
        if self.ca_dir.inventory_url().is_some() && !marker.exists() {
            // Remembered, so that a command run without the URL is refused
            // instead of starting a second, empty inventory in the folder.
            write_atomic(
                &marker,
                format!("{}\n", self.location).as_bytes(),
                Access::Public,
                true,
            )?;
        }
        if self.ca_dir.dir().join(layout::INVENTORY_JSONL).exists() {
            locked.import_jsonl()?;
        }
        Ok(locked)
    }
}

impl<'a> LockedCa<'a> {
    pub(super) fn run<T>(
        &mut self,
        action: &'static str,
        f: impl AsyncFnOnce(&mut db_link::Tx) -> std::result::Result<T, sqlx::Error>,
    ) -> Result<T> {
        let inventory = self.inventory;
        let Some(tx) = self.tx.as_mut() else {
            return Err(Error::Inventory {
                location: inventory.location.clone(),
                reason: "the transaction is already over".into(),
            });
        };
        inventory.rt.block_on(f(tx)).map_err(inventory.err(action))
    }

    /// The CA folder.
    pub fn ca_dir(&self) -> &CaDir {
        &self.inventory.ca_dir
    }

    /// Where the inventory is.
    pub fn location(&self) -> &str {
        &self.inventory.location
    }

    /// From now on signs with `ca`: the intermediate `init-ca
    /// --intermediate` just wrote into the folder.
    pub(crate) fn sign_with(&mut self, ca: &'a CertificateAuthority) {
        self.ca = Some(ca);
    }

    /// The certificate of the CA that signs (the intermediate when the
    /// folder has one).
    pub fn ca_certificate(&self) -> Result<&Certificate> {
        Ok(self.ca()?.certificate())
    }

    /// [`Inventory::visit`], inside this transaction (seeing its changes).
    pub fn visit(
        &mut self,
        filter: &Filter,
        mut f: impl FnMut(Record) -> Result<()>,
    ) -> Result<()> {
        use futures_util::TryStreamExt;
        let location = self.inventory.location.clone();
        let mut failed = None;
        self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => {
                let mut query = filter.query();
                let mut rows = query.build_query_as::<Raw>().fetch(&mut **c);
                while let Some(raw) = rows.try_next().await? {
                    if let Err(e) = raw.record(&location).and_then(&mut f) {
                        failed = Some(e);
                        break;
                    }
                }
                Ok(())
            })
        })?;
        failed.map_or(Ok(()), Err)
    }

    pub(super) fn ca(&self) -> Result<&CertificateAuthority> {
        self.ca.ok_or_else(|| Error::Inventory {
            location: self.inventory.location.clone(),
            reason: "this change needs the CA".into(),
        })
    }

    pub(super) fn max_seq(&mut self) -> Result<i64> {
        let max: Option<i64> = self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query_scalar("SELECT MAX(seq) FROM certificates")
                .fetch_one(&mut **c)
                .await)
        })?;
        Ok(max.unwrap_or(0))
    }

    /// Makes every change of this transaction durable, writes the files
    /// that waited for it, then releases the locks; what changed, for
    /// [`crate::broker::apply`] to take to the brokers.
    pub fn commit(mut self) -> Result<Committed> {
        self.finish()?;
        Ok(std::mem::take(&mut self.changes))
    }

    pub(super) fn finish(&mut self) -> Result<()> {
        let inventory = self.inventory;
        if let Some(tx) = self.tx.take() {
            inventory
                .rt
                .block_on(async { db_link::either!(tx, Tx(t) => t.commit().await) })
                .map_err(inventory.err("committing to"))?;
        }
        for change in std::mem::take(&mut self.after_commit) {
            match change {
                AfterCommit::Write(path, text) => {
                    write_atomic(&path, text.as_bytes(), Access::Public, true)?
                }
                AfterCommit::Rename(from, to) => {
                    std::fs::rename(&from, &to).map_err(|source| Error::Io {
                        action: "renaming",
                        path: from,
                        source,
                    })?
                }
            }
        }
        Ok(())
    }

    /// Claims an unclaimed inventory for the CA in the folder. An empty
    /// inventory beside a CRL that lists revocations is the wrong one (a
    /// mistyped URL, a lost database): refused, or the next CRL would
    /// un-revoke them.
    pub(super) fn claim(&mut self, fingerprint: &str) -> Result<()> {
        let rows: i64 = self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query_scalar("SELECT COUNT(*) FROM certificates")
                .fetch_one(&mut **c)
                .await)
        })?;
        let legacy = self
            .inventory
            .ca_dir
            .dir()
            .join(layout::INVENTORY_JSONL)
            .exists();
        if rows == 0 && !legacy {
            let revoked = std::fs::read_to_string(self.inventory.ca_dir.crl_path())
                .ok()
                .and_then(|text| Crl::from_pem(&text).ok())
                .map_or(0, |crl| crl.entries().len());
            if revoked > 0 {
                return Err(Error::Inventory {
                    location: self.inventory.location.clone(),
                    reason: format!(
                        "it is empty, but {} lists {revoked} revocation(s): is this the CA's \
                         inventory? (Nothing was done; a CRL from it would un-revoke them.)",
                        self.inventory.ca_dir.crl_path().display()
                    ),
                });
            }
        }
        self.set_state("ca_sha256", fingerprint)
    }
}
