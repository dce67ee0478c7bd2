//! The one way to this project's databases: SQLite or PostgreSQL behind
//! one query text ([`Pool`], [`Tx`] and the [`either!`] macro), and a
//! PostgreSQL link that is TLS, checked against the operator's CA only.
//!
//! # PostgreSQL and TLS
//!
//! [`postgres_options`] reads a libpq-style URL (`sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey`; sqlx also reads the `PG*` environment variables)
//! and refuses a link an on-path attacker could read or change:
//!
//! - to any host but loopback or a Unix socket, only `sslmode=verify-full`
//!   (the server's certificate chains to `sslrootcert` and names the host)
//!   is taken; `disable`, `allow`, `prefer` (the default: plaintext when
//!   the server offers no TLS), `require` (TLS, but any certificate) and
//!   `verify-ca` (any certificate of that CA, a broker's included) are
//!   refused unless the caller allows it ([`Transport::AllowInsecure`],
//!   `--insecure-db`);
//! - `verify-full` and `verify-ca` need `sslrootcert=FILE`: only FILE's
//!   CAs are trusted. The build carries no bundled root store (the
//!   workspace patches `webpki-roots`, which sqlx's rustls backend would
//!   add beside FILE, to an empty set), so a public CA's certificate for
//!   the database's name is refused too;
//! - `sslcert=FILE&sslkey=FILE` authenticates the client with a
//!   certificate (PostgreSQL's `cert` method): a CA host's identity issued
//!   by our CA (`provision issue client NAME --role service`, NAME the
//!   database user) needs no database password. The key must be an
//!   unencrypted PKCS#8 PEM file, readable by its owner only (as libpq).
//!
//! TLS is rustls on the aws-lc-rs provider, the workspace's one crypto
//! library.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgSslMode};
use sqlx::sqlite::SqlitePool;

/// A pool of either database.
#[derive(Debug, Clone)]
pub enum Pool {
    /// SQLite.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// A transaction of either database.
#[derive(Debug)]
pub enum Tx {
    /// SQLite.
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    /// PostgreSQL.
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// Runs `$body` with `$c` bound to the pool or transaction of either
/// database: one query text serves both (`$1`-style parameters, which
/// SQLite reads too).
///
/// ```
/// # async fn f(pool: &db_link::Pool) -> Result<(), sqlx::Error> {
/// db_link::either!(pool, Pool(p) => sqlx::query("SELECT 1").execute(p).await.map(drop))?;
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! either {
    ($on:expr, Pool($c:ident) => $body:expr) => {
        match $on {
            $crate::Pool::Sqlite($c) => $body,
            $crate::Pool::Postgres($c) => $body,
        }
    };
    ($on:expr, Tx($c:ident) => $body:expr) => {
        match $on {
            $crate::Tx::Sqlite($c) => $body,
            $crate::Tx::Postgres($c) => $body,
        }
    };
}

/// What a link to a remote PostgreSQL may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// TLS with the server's certificate checked (`verify-full` or
    /// `verify-ca` with `sslrootcert`) for any host but loopback and Unix
    /// sockets.
    #[default]
    VerifiedTls,
    /// Whatever the URL says (`--insecure-db`): for a network the operator
    /// trusts.
    AllowInsecure,
}

/// Why a database link was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL does not parse, or names an option sqlx refuses.
    #[error("database {url}: {reason}")]
    Url {
        /// The URL, its password left out.
        url: String,
        /// Why.
        reason: String,
    },
    /// The link would not be verified TLS.
    #[error(
        "database {url}: {reason}; use sslmode=verify-full&sslrootcert=FILE (FILE: the CA that \
         issued the server's certificate), or --insecure-db for a network you trust"
    )]
    Insecure {
        /// The URL, its password left out.
        url: String,
        /// Why.
        reason: String,
    },
    /// A file the URL names cannot be used.
    #[error("database {url}: {what} {path}: {reason}")]
    File {
        /// The URL, its password left out.
        url: String,
        /// Which file (`sslrootcert`, `sslcert`, `sslkey`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The connection options of the PostgreSQL database at `url`, refused
/// when the link would not be verified TLS to a remote host (unless
/// `transport` allows it), or when a file it names is missing.
pub fn postgres_options(url: &str, transport: Transport) -> Result<PgConnectOptions, Error> {
    let shown = redact_url(url);
    let options = PgConnectOptions::from_str(url).map_err(|e| Error::Url {
        url: shown.clone(),
        reason: e.to_string(),
    })?;
    let query = |key: &[&str]| -> Option<String> {
        url.split_once('?').and_then(|(_, q)| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                key.contains(&k).then(|| v.to_owned())
            })
        })
    };
    let root = query(&["sslrootcert", "ssl-root-cert", "ssl-ca"])
        .or_else(|| std::env::var("PGSSLROOTCERT").ok());
    for (what, path) in [
        ("sslrootcert", root.clone()),
        (
            "sslcert",
            query(&["sslcert", "ssl-cert"]).or_else(|| std::env::var("PGSSLCERT").ok()),
        ),
        (
            "sslkey",
            query(&["sslkey", "ssl-key"]).or_else(|| std::env::var("PGSSLKEY").ok()),
        ),
    ] {
        if let Some(path) = path {
            let path = PathBuf::from(path);
            let meta = std::fs::metadata(&path).map_err(|e| Error::File {
                url: shown.clone(),
                what,
                path: path.clone(),
                reason: e.to_string(),
            })?;
            // As libpq: a client key others can read is refused.
            use std::os::unix::fs::PermissionsExt;
            if what == "sslkey" && meta.permissions().mode() & 0o077 != 0 {
                return Err(Error::File {
                    url: shown,
                    what,
                    path,
                    reason: "it is readable by others; chmod 600 it".into(),
                });
            }
        }
    }
    let mode = options.get_ssl_mode();
    let verified = matches!(mode, PgSslMode::VerifyFull | PgSslMode::VerifyCa);
    if verified && root.is_none() {
        return Err(Error::Insecure {
            url: shown,
            reason: format!(
                "sslmode={} needs sslrootcert=FILE: no bundled root store is trusted",
                mode_name(mode)
            ),
        });
    }
    // verify-ca checks the chain, not the name: any server certificate of
    // the same CA (a broker's) would pass for the database.
    let verified_remote = matches!(mode, PgSslMode::VerifyFull);
    if transport == Transport::VerifiedTls && !verified_remote && !is_local(&options) {
        return Err(Error::Insecure {
            url: shown,
            reason: format!(
                "sslmode={} to {} is {}",
                mode_name(mode),
                options.get_host(),
                match mode {
                    PgSslMode::Require => "TLS without checking the server's certificate",
                    PgSslMode::VerifyCa => {
                        "TLS without checking the server's name (any server certificate of \
                         that CA would do)"
                    }
                    _ => "plaintext whenever the server (or someone on the path) offers no TLS",
                }
            ),
        });
    }
    Ok(options)
}

fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer (the default)",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// Whether the link stays on this machine: a Unix socket, or a loopback
/// address or `localhost`.
fn is_local(options: &PgConnectOptions) -> bool {
    if options.get_socket().is_some() {
        return true;
    }
    let host = options
        .get_host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host.starts_with('/')
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A database URL fit for messages and logs: the password after the user
/// (the user cut at the first `:`, `@`, `/`, `?` or `#`, so a password
/// holding any of them never shows), and the query and fragment (which may
/// hold `password=`) are dropped whole.
pub fn redact_url(url: &str) -> String {
    let cut = |s: &str| s.split(['?', '#']).next().unwrap_or_default().to_owned();
    let Some((scheme, rest)) = url.split_once("://").or_else(|| url.split_once(':')) else {
        return cut(url);
    };
    let sep = if url.contains("://") { "://" } else { ":" };
    match rest.rfind('@') {
        Some(at) => {
            let user = rest[..at]
                .split([':', '@', '/', '?', '#'])
                .next()
                .unwrap_or_default();
            let hidden = if user == &rest[..at] { "" } else { ":***" };
            format!("{scheme}{sep}{user}{hidden}@{}", cut(&rest[at + 1..]))
        }
        None => format!("{scheme}{sep}{}", cut(rest)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn refused(url: &str) -> String {
        match postgres_options(url, Transport::VerifiedTls) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{url} was taken"),
        }
    }

    #[test]
    fn a_remote_link_must_be_verified_tls() {
        for url in [
            "postgres://ca@db.example.com/ca",
            "postgres://ca@db.example.com/ca?sslmode=disable",
            "postgres://ca@db.example.com/ca?sslmode=prefer",
            "postgres://ca@db.example.com/ca?sslmode=require",
            "postgres://ca@10.1.2.3/ca?sslmode=allow",
            "postgres://ca@db.example.com/ca?sslmode=verify-ca&sslrootcert=/",
        ] {
            let e = refused(url);
            assert!(
                e.contains("--insecure-db") && e.contains("verify-full"),
                "{url}: {e}"
            );
            assert!(
                postgres_options(url, Transport::AllowInsecure).is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn local_links_may_be_plain() {
        for url in [
            "postgres://ca@localhost/ca",
            "postgres://ca@127.0.0.1:5433/ca?sslmode=disable",
            "postgres://ca@[::1]/ca",
            "postgres://ca@localhost/ca?host=/var/run/postgresql",
        ] {
            assert!(
                postgres_options(url, Transport::VerifiedTls).is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn verification_needs_the_operators_ca_file() {
        let e = refused("postgres://ca@db.example.com/ca?sslmode=verify-full");
        assert!(e.contains("needs sslrootcert"), "{e}");
        let e = refused(
            "postgres://ca@db.example.com/ca?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        );
        assert!(e.contains("sslrootcert /nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("db-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not checked here").unwrap();
        let url = format!(
            "postgres://ca@db.example.com/ca?sslmode=verify-full&sslrootcert={}",
            ca.display()
        );
        assert!(postgres_options(&url, Transport::VerifiedTls).is_ok());
        // A client key others can read is refused, as libpq refuses it.
        let key = dir.join("client.key");
        std::fs::write(&key, "k").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let with_key = format!("{url}&sslcert={}&sslkey={}", ca.display(), key.display());
        let e = refused(&with_key);
        assert!(e.contains("readable by others"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(postgres_options(&with_key, Transport::VerifiedTls).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// sqlx's rustls backend adds these beside `sslrootcert`: the
    /// workspace's patch leaves none, so a public CA's certificate for the
    /// database's name is not trusted.
    #[test]
    fn no_bundled_root_is_trusted() {
        assert!(webpki_roots::TLS_SERVER_ROOTS.is_empty());
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
            assert_eq!(redact_url(url), shown);
        }
        assert_eq!(redact_url("sqlite://ingest.db"), "sqlite://ingest.db");
        assert_eq!(redact_url("postgres:me:pw@h/db"), "postgres:me:***@h/db");
        for url in [
            "postgres://me:s@cr@t@db/x",
            "postgresql://me@db:6543/x?password=secret&sslmode=require",
            "postgres://u:ab?secret@h/db",
            "postgres://u:ab#secret@h/db",
            "postgres://me@db/x?password=secret&x=a@b",
        ] {
            assert!(!redact_url(url).contains("secret"), "{}", redact_url(url));
            assert!(!redact_url(url).contains("s@cr"), "{}", redact_url(url));
        }
        let e = refused("postgres://me:secret@db.example.com/x?sslmode=require");
        assert!(!e.contains("secret"), "{e}");
    }
}
