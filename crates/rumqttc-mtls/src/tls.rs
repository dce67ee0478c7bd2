//! TLS with rustls (the only backend kept in this fork).
use tokio_rustls::TlsConnector as RustlsConnector;
use tokio_rustls::rustls::{
    self,
    pki_types::{InvalidDnsNameError, ServerName},
};

use crate::TlsConfiguration;
use crate::framed::AsyncReadWrite;

use std::io;

/// A TLS connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O related error, including the handshake's: tokio-rustls reports
    /// a rustls error (a rejected certificate, an alert) inside it.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// The broker address is not a valid DNS name or IP address.
    #[error("DNS name: {0}")]
    DNSName(#[from] InvalidDnsNameError),
    /// Error from rustls.
    #[error("TLS error: {0}")]
    TLS(#[from] rustls::Error),
}

pub async fn tls_connect(
    addr: &str,
    tls_config: &TlsConfiguration,
    tcp: Box<dyn AsyncReadWrite>,
) -> Result<Box<dyn AsyncReadWrite>, Error> {
    let TlsConfiguration::Rustls(config) = tls_config;
    let connector = RustlsConnector::from(config.clone());
    let domain = ServerName::try_from(addr)?.to_owned();
    Ok(Box::new(connector.connect(domain, tcp).await?))
}
