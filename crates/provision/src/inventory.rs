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

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pki_core::{
    Certificate, CertificateAuthority, Crl, CrlParams, Csr, IssueParams, Profile, RevocationReason,
    RevokedEntry, Serial, Timestamp,
};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::error::{Error, Result};
use crate::files::{Access, write_atomic};
use crate::layout;
use crate::roles::{AclPolicy, Role};
use crate::store::{CaDir, CaLock};

/// Runs `$body` with `$c` bound to the pool or transaction of either
/// database: one query text serves both (`$1`-style parameters, which
/// SQLite reads too).
macro_rules! either {
    ($on:expr, Db($c:ident) => $body:expr) => {
        match $on {
            Db::Sqlite($c) => $body,
            Db::Postgres($c) => $body,
        }
    };
    ($on:expr, Tx($c:ident) => $body:expr) => {
        match $on {
            Tx::Sqlite($c) => $body,
            Tx::Postgres($c) => $body,
        }
    };
}

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
mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    pub(super) fn serialize<T: Display, S: serde::Serializer>(
        value: &T,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: serde::Deserializer<'de>,
    {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which records [`Inventory::visit`] yields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only certificates with this common name.
    pub common_name: Option<String>,
    /// Only certificates not revoked.
    pub valid_only: bool,
}

impl Filter {
    fn sql(&self) -> String {
        let mut sql = format!("SELECT {COLUMNS} FROM certificates WHERE 1 = 1");
        if self.common_name.is_some() {
            sql.push_str(" AND common_name = $1");
        }
        if self.valid_only {
            sql.push_str(" AND revoked_at IS NULL");
        }
        sql.push_str(" ORDER BY seq");
        sql
    }
}

const SCHEMA: [&str; 9] = [
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
    "CREATE INDEX IF NOT EXISTS certificates_revoked ON certificates (revoked_at)
        WHERE revoked_at IS NOT NULL",
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
];

const COLUMNS: &str = "serial, common_name, subject, profile, not_before, not_after, sha256, \
                       cert_path, revoked_at, revocation_reason, role";

/// The PostgreSQL advisory lock a [`LockedCa`] holds ("mqttCAin" in ASCII).
const PG_CA_LOCK: i64 = 0x6d71_7474_4341_696e;

/// Rows inserted per statement when recording many (11 parameters each,
/// far below either database's limit).
const INSERT_CHUNK: usize = 500;

/// A `lifecycle_requests` row: kind, request fingerprint, answer, old and
/// new serial, time, settled.
type RequestRow = (
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

/// What a claim certificate may enroll (`provision issue claim`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimPolicy {
    /// Names it may enroll (from manufacturing, say).
    #[serde(default)]
    pub names: Vec<String>,
    /// Or names matching this pattern: `*` stands for any run of
    /// characters (`sensor-*`).
    #[serde(default)]
    pub pattern: Option<String>,
    /// How many devices it may enroll in all.
    #[serde(default)]
    pub quota: Option<u64>,
    /// Until when (the claim certificate's end, or earlier).
    #[serde(with = "text")]
    pub until: Timestamp,
}

impl ClaimPolicy {
    /// Whether `name` is allowed.
    pub fn allows(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
            || self.pattern.as_deref().is_some_and(|p| glob(p, name))
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The inventory of one CA. Cheap to keep open; a long-running process
/// (a CA service) holds one and takes a [`LockedCa`] per change, safely
/// alongside CLI invocations.
pub struct Inventory {
    // Dropped before the runtime it needs (see `Drop`).
    db: Db,
    rt: tokio::runtime::Runtime,
    /// Where it is, for messages (a PostgreSQL password left out).
    location: String,
    ca_dir: CaDir,
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
                .block_on(async { either!(&self.db, Db(pool) => pool.close().await) });
        }
    }
}

enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// A row as stored: plain columns, checked into a [`Record`] by
/// [`Raw::record`].
struct Raw {
    serial: String,
    common_name: String,
    subject: String,
    profile: String,
    not_before: i64,
    not_after: i64,
    sha256: String,
    cert_path: String,
    revoked_at: Option<i64>,
    revocation_reason: Option<String>,
    role: Option<String>,
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

fn to_secs(t: Timestamp) -> i64 {
    match t.0.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn from_secs(s: i64) -> Timestamp {
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
    fn record(self, location: &str) -> Result<Record> {
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

/// The location without a password ([`mqtt_tls::secrets::redact_url`]).
fn redact(url: &str) -> String {
    mqtt_tls::secrets::redact_url(url)
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
            inventory.begin(Some(ca_dir.lock()?), None)?.commit()?;
        }
        Ok(inventory)
    }

    /// Whether the PostgreSQL inventory at `url` answers (a connection and
    /// a query), before a command writes anything that would depend on it
    /// (`init-ca --inventory URL`).
    pub fn probe(url: &str) -> Result<()> {
        let location = redact(url);
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
        rt.block_on(async {
            use sqlx::Connection;
            // One attempt (a pool would retry a refused connection until
            // its timeout), bounded all the same.
            let attempt = async {
                let mut conn = sqlx::postgres::PgConnection::connect(url).await?;
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
                let location = redact(url);
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
                let pool = rt
                    .block_on(
                        PgPoolOptions::new()
                            .max_connections(2)
                            .acquire_timeout(Duration::from_secs(10))
                            .connect(url),
                    )
                    .map_err(|e| db_error(&location, "connecting to", e))?;
                (Db::Postgres(pool), location)
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
                (Db::Sqlite(pool), location)
            }
        };
        let inventory = Self {
            rt,
            db,
            location,
            ca_dir: ca_dir.clone(),
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
                either!(&self.db, Db(pool) => sqlx::query_scalar(
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
                either!(&self.db, Db(pool) => sqlx::query_scalar(
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
                either!(&self.db, Db(pool) => sqlx::query_scalar(
                    "SELECT value FROM ca_state WHERE name = $1",
                )
                .bind(name)
                .fetch_optional(pool)
                .await)
            })
            .map_err(self.err("reading"))
    }

    /// The topic rules of each role: the last fleet manifest's `[acl]`, or
    /// the defaults.
    pub fn acl_policy(&self) -> Result<AclPolicy> {
        parse_policy(self.state("acl_policy")?, &self.location)
    }

    /// The `mosquitto.conf` of every broker folder `broker-config` wrote
    /// for this CA.
    pub fn broker_configs(&self) -> Result<Vec<PathBuf>> {
        parse_paths(self.state("broker_configs")?, &self.location)
    }

    /// The valid identities whose role is not `device` (services and
    /// readers: few, indexed), with their roles.
    pub fn non_device_identities(&self) -> Result<Vec<(String, Role)>> {
        let rows = self
            .rt
            .block_on(async {
                either!(&self.db, Db(pool) => sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(
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

    fn migrate(&self) -> Result<()> {
        self.rt.block_on(async {
            for statement in SCHEMA {
                either!(&self.db, Db(pool) => sqlx::query(statement).execute(pool).await.map(|_| ()))
                    .map_err(self.err("creating the tables of"))?;
            }
            Ok(())
        })
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

    /// The transaction, under `file_lock` (`None`: the caller holds it):
    /// checks (and on first use
    /// claims) the owner, remembers a PostgreSQL inventory's location in
    /// the folder, imports an `inventory.jsonl`, and brings the folder's
    /// CRL up to the database's latest.
    fn begin<'a>(
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
        let tx = self
            .rt
            .block_on(async {
                match &self.db {
                    // IMMEDIATE: the write lock now, not at the first write
                    // (a reader turned writer could fail with "busy").
                    Db::Sqlite(pool) => pool.begin_with("BEGIN IMMEDIATE").await.map(Tx::Sqlite),
                    Db::Postgres(pool) => {
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
                        Ok(Tx::Postgres(tx))
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
        locked.refresh_folder_crl()?;
        Ok(locked)
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
            either!(tx, Tx(c) => {
                sqlx::query("DELETE FROM certificates").execute(&mut **c).await?;
                sqlx::query("DELETE FROM lifecycle_requests").execute(&mut **c).await?;
                sqlx::query("DELETE FROM ca_state").execute(&mut **c).await.map(|_| ())
            })
        })?;
        locked.commit()
    }

    /// Calls `f` with each record that passes `filter`, in issue order,
    /// streaming (a million records are never all in memory).
    pub fn visit(&self, filter: &Filter, mut f: impl FnMut(Record) -> Result<()>) -> Result<()> {
        use futures_util::TryStreamExt;
        let sql = filter.sql();
        self.rt.block_on(async {
            either!(&self.db, Db(pool) => {
                let mut query = sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(sql.as_str()));
                if let Some(cn) = &filter.common_name {
                    query = query.bind(cn);
                }
                let mut rows = query.fetch(pool);
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
                either!(&self.db, Db(pool) => sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(serial.to_string())
                    .fetch_optional(pool)
                    .await)
            })
            .map_err(self.err("reading"))?;
        raw.map(|r| r.record(&self.location)).transpose()
    }
}

static NON_DEVICE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM certificates
         WHERE role IS NOT NULL AND role <> 'device' AND revoked_at IS NULL ORDER BY seq"
    )
});

fn non_device(rows: Vec<Raw>, location: &str) -> Result<Vec<(String, Role)>> {
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

fn parse_policy(stored: Option<String>, location: &str) -> Result<AclPolicy> {
    match stored {
        None => Ok(AclPolicy::default()),
        Some(json) => serde_json::from_str(&json).map_err(|e| Error::Inventory {
            location: location.to_owned(),
            reason: format!("the stored topic rules: {e}"),
        }),
    }
}

fn parse_paths(stored: Option<String>, location: &str) -> Result<Vec<PathBuf>> {
    match stored {
        None => Ok(Vec::new()),
        Some(json) => serde_json::from_str(&json).map_err(|e| Error::Inventory {
            location: location.to_owned(),
            reason: format!("the stored broker folders: {e}"),
        }),
    }
}

/// The records of an `inventory.jsonl`.
fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Record>> {
    /// The earlier format: no common name column, statuses as text.
    #[derive(Deserialize)]
    struct Old {
        serial: String,
        subject: String,
        profile: String,
        not_before: String,
        not_after: String,
        sha256: String,
        cert_path: PathBuf,
        status: OldStatus,
        /// In `list --json` exports (and archives) since roles.
        #[serde(default)]
        role: Option<Role>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case", tag = "state")]
    enum OldStatus {
        Valid,
        Revoked { at: String, reason: String },
    }
    let lines: Vec<&str> = text.lines().collect();
    let torn_possible = !text.is_empty() && !text.ends_with('\n');
    let mut records = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| Error::Inventory {
            location: path.display().to_string(),
            reason: format!("line {}: {reason}", i + 1),
        };
        let old: Old = match serde_json::from_str(line) {
            Ok(old) => old,
            Err(e) if torn_possible && i + 1 == lines.len() => {
                tracing::warn!(
                    "{}: line {}: left out, torn by a crash during an append ({e})",
                    path.display(),
                    i + 1
                );
                continue;
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        let time = |s: &str| {
            s.parse::<Timestamp>()
                .map_err(|e| bad(format!("time {s:?}: {e}")))
        };
        records.push(Record {
            serial: old
                .serial
                .parse()
                .map_err(|e| bad(format!("serial {:?}: {e}", old.serial)))?,
            common_name: common_name_of(&old.subject)
                .ok_or_else(|| bad(format!("subject {:?} has no CN", old.subject)))?,
            profile: old
                .profile
                .parse()
                .map_err(|e| bad(format!("profile {:?}: {e}", old.profile)))?,
            not_before: time(&old.not_before)?,
            not_after: time(&old.not_after)?,
            sha256: old.sha256,
            cert_path: old.cert_path,
            status: match old.status {
                OldStatus::Valid => Status::Valid,
                OldStatus::Revoked { at, reason } => Status::Revoked {
                    at: time(&at)?,
                    reason: reason
                        .parse()
                        .map_err(|e| bad(format!("revocation reason {reason:?}: {e}")))?,
                },
            },
            subject: old.subject,
            role: old.role,
        });
    }
    Ok(records)
}

/// The CN of an RFC 4514 subject (`CN=a\,b,O=x` → `a,b`).
fn common_name_of(subject: &str) -> Option<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = subject.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ',' | '+' => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    parts.push(current);
    let value = parts
        .iter()
        .find_map(|p| p.trim().strip_prefix("CN=").map(str::to_owned))?;
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// The SHA-256 of the certificate in `path`.
fn fingerprint_of(path: &Path) -> Result<String> {
    let cert =
        Certificate::from_pem(&crate::files::read_text(path)?).map_err(|source| Error::Pki {
            path: path.to_owned(),
            source,
        })?;
    Ok(cert.sha256_fingerprint())
}

fn db_error(location: &str, action: &'static str, e: sqlx::Error) -> Error {
    Error::Database {
        location: location.to_owned(),
        action,
        reason: e.to_string(),
    }
}

/// The CA under its lock: the folder's lock and the database's write lock,
/// one transaction. The only way to change the inventory; dropped without
/// [`LockedCa::commit`], it changes nothing.
pub struct LockedCa<'a> {
    inventory: &'a Inventory,
    tx: Option<Tx>,
    /// Held until the end (dropped after `tx`, see `Drop`); `None` when
    /// the caller holds it.
    _file_lock: Option<CaLock>,
    ca: Option<&'a CertificateAuthority>,
    next_seq: i64,
    /// Done only once the transaction committed: a CRL or a rename that
    /// must not get ahead of the database.
    after_commit: Vec<AfterCommit>,
}

/// A file change that waits for the commit.
enum AfterCommit {
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
                .block_on(async { either!(tx, Tx(t) => t.rollback().await) });
            if let Err(e) = rolled_back {
                tracing::warn!("inventory {}: rolling back: {e}", self.inventory.location);
            }
        }
    }
}

impl<'a> LockedCa<'a> {
    fn run<T>(
        &mut self,
        action: &'static str,
        f: impl AsyncFnOnce(&mut Tx) -> std::result::Result<T, sqlx::Error>,
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

    /// [`Inventory::non_device_identities`], inside this transaction.
    pub fn non_device_identities(&mut self) -> Result<Vec<(String, Role)>> {
        let rows = self.run("reading", async |tx| {
            either!(tx, Tx(c) => sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(
                NON_DEVICE_SQL.as_str()
            ))
            .fetch_all(&mut **c)
            .await)
        })?;
        non_device(rows, &self.inventory.location)
    }

    /// [`Inventory::acl_policy`], inside this transaction.
    pub fn acl_policy(&mut self) -> Result<AclPolicy> {
        let stored = self.state("acl_policy")?;
        parse_policy(stored, &self.inventory.location)
    }

    /// Remembers a broker folder's `mosquitto.conf` (for
    /// [`crate::broker::refresh`]).
    pub fn add_broker_dir(&mut self, config: &Path) -> Result<()> {
        let stored = self.state("broker_configs")?;
        let mut configs = parse_paths(stored, &self.inventory.location)?;
        let config = crate::files::resolve(config);
        if !configs.contains(&config) {
            configs.push(config);
        }
        let json = serde_json::to_string(&configs).map_err(|e| Error::Inventory {
            location: self.inventory.location.clone(),
            reason: e.to_string(),
        })?;
        self.set_state("broker_configs", &json)
    }

    /// Stores the topic rules of each role (a fleet manifest's `[acl]`).
    pub fn set_acl_policy(&mut self, policy: &AclPolicy) -> Result<()> {
        let json = serde_json::to_string(policy).map_err(|e| Error::Inventory {
            location: self.inventory.location.clone(),
            reason: e.to_string(),
        })?;
        self.set_state("acl_policy", &json)
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
        let sql = filter.sql();
        let location = self.inventory.location.clone();
        let mut failed = None;
        self.run("reading", async |tx| {
            either!(tx, Tx(c) => {
                let mut query = sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(sql.as_str()));
                if let Some(cn) = &filter.common_name {
                    query = query.bind(cn);
                }
                let mut rows = query.fetch(&mut **c);
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

    fn ca(&self) -> Result<&CertificateAuthority> {
        self.ca.ok_or_else(|| Error::Inventory {
            location: self.inventory.location.clone(),
            reason: "this change needs the CA".into(),
        })
    }

    fn max_seq(&mut self) -> Result<i64> {
        let max: Option<i64> = self.run("reading", async |tx| {
            either!(tx, Tx(c) => sqlx::query_scalar("SELECT MAX(seq) FROM certificates")
                .fetch_one(&mut **c)
                .await)
        })?;
        Ok(max.unwrap_or(0))
    }

    /// The policy of claim `name` (`provision issue claim`).
    pub fn claim_policy(&mut self, name: &str) -> Result<Option<ClaimPolicy>> {
        let location = self.inventory.location.clone();
        self.state(&format!("claim:{name}"))?
            .map(|json| {
                serde_json::from_str(&json).map_err(|e| Error::Inventory {
                    location,
                    reason: format!("the policy of claim {name:?} is corrupt: {e}"),
                })
            })
            .transpose()
    }

    /// Stores the policy of claim `name`.
    pub fn set_claim_policy(&mut self, name: &str, policy: &ClaimPolicy) -> Result<()> {
        let json = serde_json::to_string(policy).map_err(|e| Error::Inventory {
            location: self.inventory.location.clone(),
            reason: e.to_string(),
        })?;
        self.set_state(&format!("claim:{name}"), &json)
    }

    /// The answer already given to `requester`'s request `request_id`.
    pub fn answer(&mut self, requester: &str, request_id: &str) -> Result<Option<StoredRequest>> {
        let row: Option<RequestRow> = self.run("reading", async |tx| {
            either!(tx, Tx(c) => sqlx::query_as(
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
            either!(tx, Tx(c) => sqlx::query(
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
            either!(tx, Tx(c) => sqlx::query(
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
            either!(tx, Tx(c) => sqlx::query_scalar(
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
            either!(tx, Tx(c) => sqlx::query_as(
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
            either!(tx, Tx(c) => sqlx::query(
                "UPDATE lifecycle_requests SET settled = 1 WHERE requester = $1 AND request_id = $2",
            )
            .bind(requester)
            .bind(request_id)
            .execute(&mut **c)
            .await
            .map(|_| ()))
        })
    }

    /// Whether any certificate was ever recorded with this common name.
    pub fn name_used(&mut self, common_name: &str) -> Result<bool> {
        let n: i64 = self.run("reading", async |tx| {
            either!(tx, Tx(c) => sqlx::query_scalar(
                "SELECT COUNT(*) FROM certificates WHERE common_name = $1",
            )
            .bind(common_name)
            .fetch_one(&mut **c)
            .await)
        })?;
        Ok(n > 0)
    }

    fn state(&mut self, name: &str) -> Result<Option<String>> {
        self.run("reading", async |tx| {
            either!(tx, Tx(c) => sqlx::query_scalar("SELECT value FROM ca_state WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut **c)
                .await)
        })
    }

    fn set_state(&mut self, name: &str, value: &str) -> Result<()> {
        self.run("writing", async |tx| {
            either!(tx, Tx(c) => sqlx::query(
                "INSERT INTO ca_state (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(name)
            .bind(value)
            .execute(&mut **c)
            .await
            .map(|_| ()))
        })
    }

    /// The record with this serial.
    pub fn find(&mut self, serial: &Serial) -> Result<Option<Record>> {
        let sql = format!("SELECT {COLUMNS} FROM certificates WHERE serial = $1");
        let raw = self.run("reading", async |tx| {
            either!(tx, Tx(c) => sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(sql.as_str()))
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
            either!(tx, Tx(c) => sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(sql.as_str()))
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
                either!(tx, Tx(c) => {
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
    fn revoke_at(
        &mut self,
        serial: &Serial,
        at: Timestamp,
        reason: RevocationReason,
    ) -> Result<bool> {
        let now = to_secs(at);
        let superseded = RevocationReason::Superseded.to_string();
        self.run("revoking in", async |tx| {
            either!(tx, Tx(c) => sqlx::query(
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
    }

    /// The certificates `provision serve` issued renewing `serial` (with
    /// its key's proof), oldest first.
    pub fn renewals_of(&mut self, serial: &Serial) -> Result<Vec<Serial>> {
        let rows: Vec<String> = self.run("reading", async |tx| {
            either!(tx, Tx(c) => sqlx::query_scalar(
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
            either!(tx, Tx(c) => sqlx::query(
                "UPDATE lifecycle_requests SET settled = 1
                 WHERE settled = 0 AND (old_serial = $1 OR new_serial = $1)",
            )
            .bind(serial.to_string())
            .execute(&mut **c)
            .await
            .map(|_| ()))
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
            either!(tx, Tx(c) => sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(sql.as_str()))
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
        for serial in &serials {
            self.run("revoking in", async |tx| {
                either!(tx, Tx(c) => sqlx::query(
                    "UPDATE certificates SET revocation_reason = $1
                     WHERE serial = $2 AND revocation_reason = $3",
                )
                .bind(reason.to_string())
                .bind(serial.to_string())
                .bind(superseded.as_str())
                .execute(&mut **c)
                .await
                .map(|_| ()))
            })?;
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

    /// Every revocation of a certificate not yet expired, for a CRL (an
    /// expired certificate may leave the CRL: RFC 5280 section 3.3).
    pub fn revoked(&mut self) -> Result<Vec<RevokedEntry>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM certificates WHERE revoked_at IS NOT NULL AND not_after > $1"
        );
        let now = to_secs(Timestamp(SystemTime::now()));
        let rows = self.run("reading", async |tx| {
            either!(tx, Tx(c) => sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(now)
                .fetch_all(&mut **c)
                .await)
        })?;
        let mut entries = Vec::with_capacity(rows.len());
        for raw in rows {
            let record = raw.record(&self.inventory.location)?;
            if let Status::Revoked { at, reason } = record.status {
                entries.push(RevokedEntry {
                    serial: record.serial,
                    revoked_at: at.0,
                    reason,
                });
            }
        }
        Ok(entries)
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
        }
        self.after_commit
            .push(AfterCommit::Write(out.to_owned(), pem));
        Ok(crl)
    }

    /// Makes every change of this transaction durable, writes the files
    /// that waited for it, then releases the locks.
    pub fn commit(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        let inventory = self.inventory;
        if let Some(tx) = self.tx.take() {
            inventory
                .rt
                .block_on(async { either!(tx, Tx(t) => t.commit().await) })
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
    fn claim(&mut self, fingerprint: &str) -> Result<()> {
        let rows: i64 = self.run("reading", async |tx| {
            either!(tx, Tx(c) => sqlx::query_scalar("SELECT COUNT(*) FROM certificates")
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

    /// Brings the folder's `crl.pem` up to the database's latest CRL (a
    /// revocation made on another host sharing the inventory).
    fn refresh_folder_crl(&mut self) -> Result<()> {
        let Some(latest) = self.state("crl_pem")? else {
            return Ok(());
        };
        let number = |text: &str| Crl::from_pem(text).ok().and_then(|c| c.number());
        let path = self.inventory.ca_dir.crl_path();
        let local = std::fs::read_to_string(&path).ok().and_then(|t| number(&t));
        if number(&latest) > local {
            write_atomic(&path, latest.as_bytes(), Access::Public, true)?;
        }
        Ok(())
    }

    /// Imports `inventory.jsonl` (the inventory of earlier versions) into
    /// this transaction; renamed `inventory.jsonl.imported` once it
    /// commits (a crash before that imports it again: records already there
    /// are kept, a revocation only the file has is applied). The CRL number
    /// continues from the larger of the file's and the database's.
    fn import_jsonl(&mut self) -> Result<()> {
        let path = self.inventory.ca_dir.dir().join(layout::INVENTORY_JSONL);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            action: "reading",
            path: path.clone(),
            source,
        })?;
        let records = parse_jsonl(&path, &text)?;
        let counter = self.inventory.ca_dir.dir().join(layout::CRL_NUMBER);
        if let Ok(n) = std::fs::read_to_string(&counter) {
            let n: u64 = n.trim().parse().map_err(|e| Error::Inventory {
                location: counter.display().to_string(),
                reason: format!("not a CRL number: {e}"),
            })?;
            let stored = self
                .state("crl_number")?
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            self.set_state("crl_number", &n.max(stored).to_string())?;
        }
        let mut new = Vec::new();
        for record in records {
            match self.find(&record.serial)? {
                None => new.push(record),
                Some(existing) => {
                    if let (Status::Valid, Status::Revoked { at, reason }) =
                        (existing.status, record.status)
                    {
                        self.revoke_at(&record.serial, at, reason)?;
                    }
                }
            }
        }
        tracing::info!(
            "importing {} record(s) from {} into {}",
            new.len(),
            path.display(),
            self.inventory.location
        );
        self.record(&new)?;
        self.after_commit.push(AfterCommit::Rename(
            path.clone(),
            path.with_extension("jsonl.imported"),
        ));
        Ok(())
    }
}

impl FromStr for Filter {
    type Err = std::convert::Infallible;

    /// A filter on one common name.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Self {
            common_name: Some(s.to_owned()),
            valid_only: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_patterns_match_whole_names() {
        for (pattern, name, ok) in [
            ("sensor-*", "sensor-1", true),
            ("sensor-*", "sensor-", true),
            ("sensor-*", "xsensor-1", false),
            ("*-eu", "gw-eu", true),
            ("*-eu", "gw-eu-2", false),
            ("a*b*c", "a-b-c", true),
            ("a*b*c", "acb", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob(pattern, name), ok, "{pattern} ~ {name}");
        }
        let policy = ClaimPolicy {
            names: vec!["gw-1".into()],
            pattern: Some("sensor-*".into()),
            quota: None,
            until: Timestamp(SystemTime::now()),
        };
        assert!(policy.allows("gw-1") && policy.allows("sensor-9"));
        assert!(!policy.allows("gw-2"));
    }

    #[test]
    fn common_names_come_out_of_escaped_subjects() {
        assert_eq!(common_name_of("CN=dev1,O=Org").as_deref(), Some("dev1"));
        assert_eq!(common_name_of("O=x,CN=a\\,b").as_deref(), Some("a,b"));
        assert_eq!(common_name_of("O=x"), None);
    }

    #[test]
    fn passwords_never_reach_messages() {
        for (url, shown) in [
            ("postgres://me:secret@db/x", "postgres://me:***@db/x"),
            ("postgres://me:p@ss@db/x", "postgres://me:***@db/x"),
            (
                "postgres://me@db/x?password=secret&sslmode=require",
                "postgres://me@db/x",
            ),
            ("postgres://db/x", "postgres://db/x"),
        ] {
            assert_eq!(redact(url), shown);
            assert!(!redact(url).contains("secret") && !redact(url).contains("ss@"));
        }
    }

    fn line(serial: &str) -> String {
        format!(
            "{{\"serial\":\"{serial}\",\"subject\":\"CN=x\",\"profile\":\"client\",\
             \"not_before\":\"2026-01-01T00:00:00Z\",\"not_after\":\"2027-01-01T00:00:00Z\",\
             \"sha256\":\"00\",\"cert_path\":\"backend_certs/x_cert.pem\",\
             \"status\":{{\"state\":\"valid\"}}}}"
        )
    }

    #[test]
    fn a_whole_last_line_without_newline_is_imported_and_a_torn_one_left_out() {
        let path = Path::new("inventory.jsonl");
        let whole = format!("{}\n{}", line("01"), line("02"));
        let serials = |text: &str| -> Vec<String> {
            parse_jsonl(path, text)
                .unwrap()
                .into_iter()
                .map(|r| r.serial.to_string())
                .collect()
        };
        assert_eq!(serials(&whole), ["01", "02"]);
        let l3 = line("03");
        let torn = format!("{}\n{}\n{}", line("01"), line("02"), &l3[..l3.len() / 2]);
        assert_eq!(serials(&torn), ["01", "02"]);
        // A bad line in the middle is an error naming it.
        let bad = format!("{}\nnot json\n{}\n", line("01"), line("02"));
        let e = parse_jsonl(path, &bad).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
