//! The HTTP side over mutual TLS: a server certificate from our PKI
//! (`provision issue server`), client certificates required and checked
//! against our CA (and its CRL, read again whenever the file changes), and
//! each request tagged with the client's identity ([`Peer`]) so that
//! [`crate::app`] can authorize it by role. rustls with the aws-lc-rs
//! provider, as on the MQTT side.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

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

/// The TLS server: its configuration, rebuilt when the CRL file changes.
pub struct Https {
    options: HttpsOptions,
    current: Mutex<(Option<SystemTime>, Arc<ServerConfig>)>,
}

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Https")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn mtime(path: Option<&PathBuf>) -> Option<SystemTime> {
    std::fs::metadata(path?).and_then(|m| m.modified()).ok()
}

impl Https {
    /// Reads and checks the files: a clear error names the file at fault.
    pub fn new(options: HttpsOptions) -> Result<Self> {
        let stamp = mtime(options.crl.as_ref());
        let config = build(&options)?;
        Ok(Self {
            options,
            current: Mutex::new((stamp, config)),
        })
    }

    /// The configuration for the next connection: rebuilt when the CRL
    /// changed (a failed rebuild keeps the last good one, and says so).
    fn config(&self) -> Arc<ServerConfig> {
        let stamp = mtime(self.options.crl.as_ref());
        let mut current = match self.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if stamp != current.0 {
            match build(&self.options) {
                Ok(config) => {
                    tracing::info!("HTTPS: the CRL changed; new connections use it");
                    *current = (stamp, config);
                }
                Err(e) => tracing::warn!("HTTPS: keeping the last CRL: {e}"),
            }
        }
        current.1.clone()
    }
}

fn build(options: &HttpsOptions) -> Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&options.cert)
        .map_err(|e| bad(&options.cert, e.to_string()))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(&options.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(&options.cert, "no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&options.key)
        .map_err(|e| bad(&options.key, format!("no usable private key: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&options.client_ca)
        .map_err(|e| bad(&options.client_ca, e.to_string()))?
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
            CertificateRevocationListDer::pem_file_iter(crl)
                .map_err(|e| bad(crl, e.to_string()))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(crl, e.to_string()))?;
        if crls.is_empty() {
            return Err(bad(crl, "no CRL in it"));
        }
        // Only the leaf's issuer's CRL is needed (an intermediate's
        // clients are checked against the intermediate's CRL).
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
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
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` over mutual TLS on `listener` until `shutdown`: every
/// request carries the client's [`Peer`] as an extension.
pub async fn serve(
    listener: tokio::net::TcpListener,
    https: Arc<Https>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
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
        let acceptor = tokio_rustls::TlsAcceptor::from(https.config());
        let router = router.clone();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!("HTTPS: handshake with {remote} failed: {e}");
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
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!("HTTPS: connection from {remote}: {e}");
            }
        });
        // Finished connections are reaped as we go.
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
    Ok(())
}
