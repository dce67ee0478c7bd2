//! The inventory: every certificate the CA issued, in a database.
//!
//! SQLite in the CA folder (`inventory.db`, WAL) by default; PostgreSQL
//! when the operator gives a URL (`--inventory postgres://...`), so that CA
//! services on several hosts can share one CA. Reading needs no lock
//! ([`Inventory::visit`], [`Inventory::by_serial`]); every change goes
//! through a [`LockedCa`], the one type that can record an issuance, draw a
//! serial, revoke, supersede and number a CRL. It holds the CA folder's
//! lock and the database's write lock for as long as it lives, and its
//! changes land together at [`LockedCa::commit`] (or not at all).
//!
//! Every query is indexed (serial, common name, revoked), so the cost of
//! one operation does not grow with the number of identities.

mod certificates;
mod committed;
mod crl;
mod db;
mod import;
mod locked;
mod record;
mod requests;
mod settings;

pub use committed::Committed;
pub use locked::LockedCa;
pub use record::{Filter, Record, Status};
pub use requests::{StoredRequest, Unsettled};
pub use settings::ClaimPolicy;

use std::path::{Path, PathBuf};
use std::time::Duration;

use pki_core::{CertificateAuthority, Serial};

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::ca_folder::{CaDir, CaLock};
use crate::error::{Error, Result};
use crate::files::{Access, write_atomic};
use crate::layout;
use crate::roles::{AclPolicy, Role};
use db::{COLUMNS, NEWEST_SCHEMA_OBJECT, NON_DEVICE_SQL, Raw, SCHEMA, db_error, non_device};
use locked::fingerprint_of;
use settings::{parse_paths, parse_policy};

/// The inventory of one CA. Cheap to keep open; a long-running process
/// (a CA service) holds one and takes a [`LockedCa`] per change, safely
/// alongside CLI invocations.
pub struct Inventory {
    // Dropped before the runtime it needs (see `Drop`).
    db: db_link::Pool,
    rt: tokio::runtime::Runtime,
    /// Where it is, for messages (a PostgreSQL password left out).
    location: String,
    ca_dir: CaDir,
    /// Write transactions begun ([`Inventory::transactions`]).
    transactions: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Drop for Inventory {
    /// Closes the connections on the runtime (sqlx returns connections to
    /// the pool on a task, which needs one).
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            self.rt
                .block_on(async { db_link::either!(&self.db, Pool(pool) => pool.close().await) });
        }
    }
}

impl Inventory {
    /// Opens the CA's inventory: the PostgreSQL database at the CA
    /// folder's URL when it has one, else `inventory.db` in the folder
    /// (created when missing). The folder must hold a CA certificate, and
    /// an inventory already claimed by another CA is refused. An
    /// `inventory.jsonl` left by an earlier version is imported once (and
    /// renamed `inventory.jsonl.imported`).
    ///
    /// The inventory runs its own small runtime: use it from synchronous
    /// code or a blocking thread (`tokio::task::spawn_blocking`), never
    /// directly on an async task.
    pub fn open(ca_dir: &CaDir) -> Result<Self> {
        let inventory = Self::connect(ca_dir)?;
        inventory.check_owner()?;
        // Claim (with the URL remembered) or import under the lock.
        let marker_missing =
            ca_dir.inventory_url().is_some() && !ca_dir.dir().join(layout::INVENTORY_URL).exists();
        if marker_missing || ca_dir.dir().join(layout::INVENTORY_JSONL).exists() {
            // Every command that changes anything takes the brokers in step
            // after its own commit, imported records included.
            let _imported = inventory.begin(Some(ca_dir.lock()?), None)?.commit()?;
        }
        Ok(inventory)
    }

    /// Whether the PostgreSQL inventory at `url` answers (a connection and
    /// a query), before a command writes anything that would depend on it
    /// (`init-ca --inventory URL`).
    pub fn probe(url: &str, transport: db_link::Transport) -> Result<()> {
        let location = db_link::redact_url(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::Inventory {
                location,
                reason: "an inventory URL must be postgres://... (the default, SQLite in the \
                         CA folder, needs none)"
                    .into(),
            });
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                action: "starting the database runtime for",
                path: location.clone().into(),
                source,
            })?;
        let options = db_link::postgres_options(url, transport).map_err(|e| Error::Inventory {
            location: location.clone(),
            reason: e.to_string(),
        })?;
        rt.block_on(async {
            use sqlx::{ConnectOptions, Connection};
            // One attempt (a pool would retry a refused connection until
            // its timeout), bounded all the same.
            let attempt = async {
                let mut conn = options.connect().await?;
                sqlx::query("SELECT 1").execute(&mut conn).await?;
                conn.close().await
            };
            tokio::time::timeout(Duration::from_secs(10), attempt)
                .await
                .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        })
        .map_err(|e| db_error(&location, "connecting to", e))
    }

    /// Opens the database without the owner check or the import.
    fn connect(ca_dir: &CaDir) -> Result<Self> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::Inventory {
                location: ca_dir.dir().display().to_string(),
                reason: "opened on an async task: use the inventory from a blocking thread \
                         (tokio::task::spawn_blocking)"
                    .into(),
            });
        }
        // A mistyped --ca-dir makes nothing.
        if !ca_dir.cert_path().exists() {
            return Err(Error::NoCa {
                dir: ca_dir.dir().to_owned(),
            });
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                action: "starting the database runtime for",
                path: ca_dir.dir().to_owned(),
                source,
            })?;
        let marker = ca_dir.dir().join(layout::INVENTORY_URL);
        let recorded = std::fs::read_to_string(&marker)
            .ok()
            .map(|r| r.trim().to_owned());
        let sqlite_path = ca_dir.dir().join(layout::INVENTORY_DB);
        let (db, location) = match ca_dir.inventory_url() {
            Some(url) => {
                let location = db_link::redact_url(url);
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(Error::Inventory {
                        location: location.clone(),
                        reason: "an inventory URL must be postgres://... (the default, SQLite \
                                 in the CA folder, needs none)"
                            .into(),
                    });
                }
                match &recorded {
                    Some(recorded) if *recorded != location => {
                        return Err(Error::Inventory {
                            location: location.clone(),
                            reason: format!(
                                "this CA's inventory is at {recorded} ({}), not here",
                                marker.display()
                            ),
                        });
                    }
                    None if sqlite_path.exists() => {
                        return Err(Error::Inventory {
                            location: location.clone(),
                            reason: format!(
                                "this CA's inventory is {} in its folder; giving a URL does not \
                                 move it (run without --inventory)",
                                sqlite_path.display()
                            ),
                        });
                    }
                    _ => {}
                }
                let options =
                    db_link::postgres_options(url, ca_dir.db_transport()).map_err(|e| {
                        Error::Inventory {
                            location: location.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                let pool = rt
                    .block_on(
                        PgPoolOptions::new()
                            .max_connections(2)
                            .acquire_timeout(Duration::from_secs(10))
                            .connect_with(options),
                    )
                    .map_err(|e| db_error(&location, "connecting to", e))?;
                (db_link::Pool::Postgres(pool), location)
            }
            None => {
                if let Some(recorded) = recorded {
                    return Err(Error::Inventory {
                        location: marker.display().to_string(),
                        reason: format!(
                            "this CA's inventory is in PostgreSQL at {recorded}: pass \
                             --inventory URL (or set PROVISION_INVENTORY)"
                        ),
                    });
                }
                let location = sqlite_path.display().to_string();
                let options = SqliteConnectOptions::new()
                    .filename(&sqlite_path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                    // Writers are ordered by the CA folder's lock first;
                    // this only covers a checkpoint in progress.
                    .busy_timeout(Duration::from_secs(30));
                let pool = rt
                    .block_on(
                        SqlitePoolOptions::new()
                            .max_connections(2)
                            .connect_with(options),
                    )
                    .map_err(|e| db_error(&location, "opening", e))?;
                (db_link::Pool::Sqlite(pool), location)
            }
        };
        let inventory = Self {
            rt,
            db,
            location,
            ca_dir: ca_dir.clone(),
            transactions: std::sync::atomic::AtomicU64::new(0),
        };
        inventory.migrate()?;
        Ok(inventory)
    }

    /// Refuses an inventory claimed by another CA than the one in the
    /// folder (read only: nothing is claimed here).
    fn check_owner(&self) -> Result<()> {
        let fingerprint = self.folder_fingerprint()?;
        let owner: Option<String> = self
            .rt
            .block_on(async {
                db_link::either!(&self.db, Pool(pool) => sqlx::query_scalar(
                    "SELECT value FROM ca_state WHERE name = 'ca_sha256'",
                )
                .fetch_optional(pool)
                .await)
            })
            .map_err(self.err("reading"))?;
        match owner {
            Some(owner) if owner != fingerprint => Err(self.not_ours(&owner, &fingerprint)),
            _ => Ok(()),
        }
    }

    /// The SHA-256 of the root CA certificate in the folder now: the
    /// inventory's owner. An intermediate added later (`init-ca
    /// --intermediate`) signs under the same owner: serials are unique per
    /// CA folder, and the inventory made under the root alone goes on.
    fn folder_fingerprint(&self) -> Result<String> {
        fingerprint_of(&self.ca_dir.cert_path())
    }

    fn not_ours(&self, owner: &str, fingerprint: &str) -> Error {
        Error::Inventory {
            location: self.location.clone(),
            reason: format!(
                "it belongs to another CA (certificate SHA-256 {owner}), not to {} \
                 (SHA-256 {fingerprint}): give each CA its own inventory",
                self.ca_dir.cert_path().display()
            ),
        }
    }

    /// Where the inventory is (a file, or a PostgreSQL URL without its
    /// password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The CA folder.
    pub fn ca_dir(&self) -> &CaDir {
        &self.ca_dir
    }

    /// How many valid certificates carry this common name.
    pub fn valid_count(&self, common_name: &str) -> Result<usize> {
        let n: i64 = self
            .rt
            .block_on(async {
                db_link::either!(&self.db, Pool(pool) => sqlx::query_scalar(
                    "SELECT COUNT(*) FROM certificates WHERE common_name = $1 AND revoked_at IS NULL",
                )
                .bind(common_name)
                .fetch_one(pool)
                .await)
            })
            .map_err(self.err("reading"))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn state(&self, name: &str) -> Result<Option<String>> {
        self.rt
            .block_on(async {
                db_link::either!(&self.db, Pool(pool) => sqlx::query_scalar(
                    "SELECT value FROM ca_state WHERE name = $1",
                )
                .bind(name)
                .fetch_optional(pool)
                .await)
            })
            .map_err(self.err("reading"))
    }

    /// The CA services' secret ([`LockedCa::service_secret`]), when one was
    /// made: read without the lock.
    pub fn service_secret(&self) -> Result<Option<String>> {
        self.state("service_secret")
    }

    /// The topic rules of each role: the last fleet manifest's `[acl]`, or
    /// the defaults.
    pub fn acl_policy(&self) -> Result<AclPolicy> {
        parse_policy(self.state("acl_policy")?, &self.location)
    }

    /// The `mosquitto.conf` of every broker folder `broker-config` wrote
    /// for this CA, on any host sharing the inventory: each host brings
    /// those it has ([`crate::broker::apply`]).
    pub fn broker_configs(&self) -> Result<Vec<PathBuf>> {
        parse_paths(self.state("broker_configs")?, &self.location)
    }

    /// The valid identities whose role is not `device` (services and
    /// readers: few, indexed), with their roles.
    pub fn non_device_identities(&self) -> Result<Vec<(String, Role)>> {
        let rows = self
            .rt
            .block_on(async {
                db_link::either!(&self.db, Pool(pool) => sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(
                    NON_DEVICE_SQL.as_str()
                ))
                .fetch_all(pool)
                .await)
            })
            .map_err(self.err("reading"))?;
        non_device(rows, &self.location)
    }

    fn err(&self, action: &'static str) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |e| db_error(&self.location, action, e)
    }

    /// Brings the schema up to date, doing nothing (no lock, no write)
    /// when it is: the newest object of [`SCHEMA`] exists. An inventory
    /// behind it is migrated, on SQLite in one `BEGIN IMMEDIATE`
    /// transaction (one sync; the write lock waited for like any writer's,
    /// not an upgrade that fails at once when another process writes), on
    /// PostgreSQL one statement at a time (no two table locks held at once
    /// beside `provision serve`'s transactions).
    fn migrate(&self) -> Result<()> {
        self.rt
            .block_on(async {
                match &self.db {
                    db_link::Pool::Sqlite(pool) => {
                        let current: Option<i64> = sqlx::query_scalar(
                            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = $1",
                        )
                        .bind(NEWEST_SCHEMA_OBJECT)
                        .fetch_optional(pool)
                        .await?;
                        if current.is_some() {
                            return Ok(());
                        }
                        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                        for statement in SCHEMA {
                            sqlx::query(statement).execute(&mut *tx).await?;
                        }
                        tx.commit().await
                    }
                    db_link::Pool::Postgres(pool) => {
                        let current: Option<String> =
                            sqlx::query_scalar("SELECT to_regclass($1)::text")
                                .bind(NEWEST_SCHEMA_OBJECT)
                                .fetch_one(pool)
                                .await?;
                        if current.is_some() {
                            return Ok(());
                        }
                        for statement in SCHEMA {
                            sqlx::query(statement).execute(pool).await?;
                        }
                        Ok(())
                    }
                }
            })
            .map_err(self.err("creating the tables of"))
    }

    /// Takes the CA folder's lock and the database's write lock, for
    /// changes on behalf of `ca`. Blocks while another process holds them.
    /// Refused when the inventory is another CA's, or when the CA in the
    /// folder is no longer `ca` (replaced by `init-ca --force` while this
    /// process waited): nothing is then issued with a retired key.
    pub fn lock<'a>(&'a self, ca: &'a CertificateAuthority) -> Result<LockedCa<'a>> {
        self.begin(Some(self.ca_dir.lock()?), Some(ca))
    }

    /// The transaction under the CA folder's lock, already taken (and now
    /// held until the transaction ends), with no CA yet (see
    /// [`LockedCa::sign_with`]): for `init-ca --intermediate`, which checks
    /// the owner before it writes the intermediate, then signs the
    /// intermediate's first CRL under the same lock.
    pub(crate) fn lock_held(&self, lock: CaLock) -> Result<LockedCa<'_>> {
        self.begin(Some(lock), None)
    }

    /// Exports the whole inventory to `archive/inventory.jsonl` (the
    /// `list --json` records, one per line: importable) and empties it, in
    /// place: connections other processes hold stay valid, and the next
    /// CA claims it afresh. For `init-ca --force`, which holds the CA
    /// folder's lock.
    pub(crate) fn archive_into(&self, archive: &Path) -> Result<()> {
        let mut locked = self.begin(None, None)?;
        let path = archive.join(layout::INVENTORY_JSONL);
        let mut text = String::new();
        locked.visit(&Filter::default(), |r| {
            let line = serde_json::to_string(&r).map_err(|e| Error::Inventory {
                location: path.display().to_string(),
                reason: e.to_string(),
            })?;
            text.push_str(&line);
            text.push('\n');
            Ok(())
        })?;
        write_atomic(&path, text.as_bytes(), Access::Public, false)?;
        locked.run("archiving", async |tx| {
            db_link::either!(tx, Tx(c) => {
                sqlx::query("DELETE FROM certificates").execute(&mut **c).await?;
                sqlx::query("DELETE FROM lifecycle_requests").execute(&mut **c).await?;
                sqlx::query("DELETE FROM ca_state").execute(&mut **c).await.map(|_| ())
            })
        })?;
        locked.commit().map(|_| ())
    }

    /// How many write transactions (each a [`LockedCa`]) this handle
    /// began: a revocation is one.
    pub fn transactions(&self) -> u64 {
        self.transactions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The number the latest CRL signed into this inventory took (any
    /// host's): a cheap stamp to compare before reading the CRL itself.
    pub fn latest_crl_number(&self) -> Result<Option<u64>> {
        Ok(self.state("crl_number")?.and_then(|n| n.parse().ok()))
    }

    /// The latest CRL any host signed into this inventory (PEM), if any:
    /// [`crate::broker::apply`] brings a CA folder on another host up to it.
    pub fn latest_crl(&self) -> Result<Option<String>> {
        self.state("crl_pem")
    }

    /// Calls `f` with each record that passes `filter`, in issue order,
    /// streaming (a million records are never all in memory).
    pub fn visit(&self, filter: &Filter, mut f: impl FnMut(Record) -> Result<()>) -> Result<()> {
        use futures_util::TryStreamExt;
        self.rt.block_on(async {
            db_link::either!(&self.db, Pool(pool) => {
                let mut query = filter.query();
                let mut rows = query.build_query_as::<Raw>().fetch(pool);
                while let Some(raw) = rows.try_next().await.map_err(self.err("reading"))? {
                    f(raw.record(&self.location)?)?;
                }
                Ok(())
            })
        })
    }

    /// The record with this serial.
    pub fn by_serial(&self, serial: &Serial) -> Result<Option<Record>> {
        let sql = format!("SELECT {COLUMNS} FROM certificates WHERE serial = $1");
        let raw = self
            .rt
            .block_on(async {
                db_link::either!(&self.db, Pool(pool) => sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(serial.to_string())
                    .fetch_optional(pool)
                    .await)
            })
            .map_err(self.err("reading"))?;
        raw.map(|r| r.record(&self.location)).transpose()
    }
}
