//! The HTTP side over mutual TLS: a server certificate from our PKI
//! (`provision issue server`), client certificates required and checked
//! against our CA (and its CRL, read again whenever the file changes), and
//! each request tagged with the client's identity ([`Peer`]) so that
//! [`crate::app`] can authorize it by role. rustls with the aws-lc-rs
//! provider, as on the MQTT side.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use pki_core::{Certificate, SubjectAltName};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The prefix of the role URI SAN `provision` puts in client certificates.
pub const ROLE_URI_PREFIX: &str = "urn:mqtt-mtls:role:";

/// `[http]` in the configuration, or the `--http-*` flags.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpsOptions {
    /// The server certificate (PEM, then any intermediate).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA clients' certificates must chain to (our root).
    pub client_ca: PathBuf,
    /// The CA's CRL (e.g. `root_cert/crl.pem`): a revoked client is
    /// refused at the handshake. Read again when the file changes.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

/// Who is asking: from the client certificate of the TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The certificate's CN.
    pub common_name: Option<String>,
    /// Its role (`reader`, `device`, ...), from the URI SAN
    /// `urn:mqtt-mtls:role:ROLE`.
    pub role: Option<String>,
}

impl Peer {
    /// The identity in a client certificate (DER).
    pub fn of(der: &[u8]) -> Self {
        let cert = Certificate::from_der(der.to_vec()).ok();
        let role = cert.as_ref().and_then(|c| {
            c.subject_alt_names()
                .ok()?
                .into_iter()
                .find_map(|san| match san {
                    SubjectAltName::Uri(u) => {
                        u.as_str().strip_prefix(ROLE_URI_PREFIX).map(str::to_owned)
                    }
                    _ => None,
                })
        });
        Self {
            common_name: cert.and_then(|c| c.common_name()),
            role,
        }
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Https {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The TLS server: its configuration, rebuilt when the CRL file's
/// contents change; each rebuild is a new generation, and connections made
/// under an older one are closed (a client revoked meanwhile does not keep
/// reading on a connection it already had).
pub struct Https {
    options: HttpsOptions,
    current: Mutex<Current>,
    generation: tokio::sync::watch::Sender<u64>,
}

struct Current {
    /// The CRL file's contents the configuration was built from, or last
    /// failed to build from (a broken file is not parsed again and again).
    crl: Option<Vec<u8>>,
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Https")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn contents(path: Option<&PathBuf>) -> Option<Vec<u8>> {
    safe_files::read_capped(path?).ok()
}

/// A file's bytes, size-capped ([`safe_files::read_capped`]); the
/// error names the file.
fn read(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    safe_files::read_capped(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| bad(path, e.to_string()))
}

impl Https {
    /// Reads and checks the files: a clear error names the file at fault.
    pub fn new(options: HttpsOptions) -> Result<Self> {
        if options.crl.is_none() {
            tracing::warn!(
                "HTTPS without --http-crl: a revoked reader keeps reading until its \
                 certificate expires"
            );
        }
        let crl = contents(options.crl.as_ref());
        let config = build(&options)?;
        Ok(Self {
            options,
            current: Mutex::new(Current { crl, config }),
            generation: tokio::sync::watch::channel(0).0,
        })
    }

    /// The configuration for the next connection and its generation:
    /// rebuilt when the CRL's contents changed (a failed rebuild keeps the
    /// last good one, and says so once).
    fn config(&self) -> (Arc<ServerConfig>, u64) {
        let crl = contents(self.options.crl.as_ref());
        let mut current = match self.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if crl != current.crl {
            current.crl = crl;
            match build(&self.options) {
                Ok(config) => {
                    tracing::info!("HTTPS: the CRL changed; connections made before are closed");
                    current.config = config;
                    self.generation.send_modify(|g| *g += 1);
                }
                Err(e) => tracing::warn!("HTTPS: keeping the last CRL: {e}"),
            }
        }
        (current.config.clone(), *self.generation.borrow())
    }
}

fn build(options: &HttpsOptions) -> Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&options.cert)?)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(&options.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(&options.cert, "no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&options.key)?)
        .map_err(|e| bad(&options.key, format!("no usable private key: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(&options.client_ca)?)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad(&options.client_ca, e.to_string()))?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| bad(&options.client_ca, format!("not a CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad(&options.client_ca, "no CA certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl) = &options.crl {
        let crls: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_slice_iter(&read(crl)?)
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(crl, e.to_string()))?;
        if crls.is_empty() {
            return Err(bad(crl, "no CRL in it"));
        }
        // Only the leaf's issuer's CRL is needed (an intermediate's
        // clients are checked against the intermediate's CRL). A CRL past
        // its nextUpdate fails every client: a CRL no longer refreshed says
        // nothing about revocations since (`provision crl --if-due` keeps
        // it current).
        verifier = verifier
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .enforce_revocation_expiration();
    }
    let verifier = verifier
        .build()
        .map_err(|e| bad(&options.client_ca, format!("client verification: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&options.cert, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            bad(
                &options.key,
                format!("does not match {}: {e}", options.cert.display()),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a connection lives (then the client connects again).
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// Connections open at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 512;

/// Clients refused at the TLS handshake, logged at WARN at most once a
/// minute per address, with a count of those not logged since.
#[derive(Debug, Default)]
struct Refusals {
    /// When each address was last logged, and refusals since.
    seen: std::collections::HashMap<std::net::IpAddr, (std::time::Instant, u64)>,
}

impl Refusals {
    const EVERY: Duration = Duration::from_secs(60);
    /// Addresses remembered at most.
    const MAX_ADDRESSES: usize = 10_000;

    /// A refusal from `addr` at `now`: `Some(suppressed since the last
    /// line)` when it is to be logged.
    fn refused(&mut self, addr: std::net::IpAddr, now: std::time::Instant) -> Option<u64> {
        if self.seen.len() >= Self::MAX_ADDRESSES {
            self.seen
                .retain(|_, (at, _)| now.duration_since(*at) < Self::EVERY);
            // Still full (a spray from many addresses): forget them all
            // rather than grow.
            if self.seen.len() >= Self::MAX_ADDRESSES {
                self.seen.clear();
            }
        }
        match self.seen.get_mut(&addr) {
            Some((at, suppressed)) if now.duration_since(*at) < Self::EVERY => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let since = std::mem::take(suppressed);
                *at = now;
                Some(since)
            }
            None => {
                self.seen.insert(addr, (now, 0));
                Some(0)
            }
        }
    }
}

/// Serves `router` over mutual TLS on `listener` until `shutdown`: every
/// request carries the client's [`Peer`] as an extension.
pub async fn serve(
    listener: tokio::net::TcpListener,
    https: Arc<Https>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let refusals = Arc::new(std::sync::Mutex::new(Refusals::default()));
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("HTTPS: accepting: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (config, generation) = https.config();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let mut newer = https.generation.subscribe();
        let router = router.clone();
        let refusals = refusals.clone();
        connections.spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let logged = refusals
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .refused(remote.ip(), std::time::Instant::now());
                    match logged {
                        Some(0) => tracing::warn!("HTTPS: refused {remote} at the handshake: {e}"),
                        Some(n) => tracing::warn!(
                            "HTTPS: refused {remote} at the handshake: {e} ({n} more refusals \
                             from {} in the last minute not logged)",
                            remote.ip()
                        ),
                        None => tracing::debug!("HTTPS: handshake with {remote} failed: {e}"),
                    }
                    return;
                }
                Err(_) => return,
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Peer::of(c.as_ref()));
            let Some(peer) = peer else {
                return;
            };
            let service = TowerToHyperService::new(router.layer(axum::Extension(peer)));
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(10));
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            // Ends at its age limit, or when the CRL changed since it was
            // made (its client may be revoked now).
            let replaced = newer.wait_for(|g| *g != generation);
            tokio::select! {
                served = connection => {
                    if let Err(e) = served {
                        tracing::debug!("HTTPS: connection from {remote}: {e}");
                    }
                }
                _ = replaced => {}
                () = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
            }
        });
        // Finished connections are reaped as we go.
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod refusal_tests {
    #[test]
    fn refusals_are_logged_once_a_minute_per_address_with_a_count() {
        use std::time::{Duration, Instant};
        let mut r = super::Refusals::default();
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        assert_eq!(r.refused(a, t), Some(0));
        assert_eq!(r.refused(a, t + Duration::from_secs(1)), None);
        assert_eq!(r.refused(a, t + Duration::from_secs(2)), None);
        assert_eq!(r.refused(b, t + Duration::from_secs(2)), Some(0));
        assert_eq!(r.refused(a, t + Duration::from_secs(61)), Some(2));
        assert_eq!(r.refused(a, t + Duration::from_secs(62)), None);
    }
}
