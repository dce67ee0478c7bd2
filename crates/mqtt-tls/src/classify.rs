//! Turns rumqttc's connection errors into errors a person can act on.

use rumqttc_mtls::ConnectionError;
use rustls::{AlertDescription, CertificateError};

use crate::error::Error;

/// Classifies `err` from a connection to `host:port`.
pub(crate) fn classify(err: &ConnectionError, host: &str, port: u16) -> Error {
    if let Some(tls) = find_in_chain::<rustls::Error>(err) {
        return classify_tls(tls, host, port);
    }
    if find_in_chain::<std::io::Error>(err)
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    {
        return Error::ConnectionRefused {
            host: host.to_owned(),
            port,
        };
    }
    match err {
        ConnectionError::ConnectionRefused(code) => Error::BrokerRefused {
            reason: format!("{code:?}"),
        },
        other => Error::Connection {
            host: host.to_owned(),
            port,
            reason: other.to_string(),
        },
    }
}

/// The first `T` in the error's source chain, looking inside `io::Error`s
/// too: rumqttc nests the rustls error at different depths (with TLS 1.3
/// the broker's verdict on our certificate arrives after the handshake, as
/// a read error inside `MqttState`).
fn find_in_chain<T: std::error::Error + 'static>(err: &ConnectionError) -> Option<&T> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(found) = io.get_ref().and_then(|inner| inner.downcast_ref::<T>())
        {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// A name as a person writes it: rustls passes webpki's debug forms on,
/// e.g. `DnsName("localhost")` or `IpAddress(127.0.0.1)`.
fn plain_name(presented: &str) -> String {
    match (presented.find('('), presented.rfind(')')) {
        (Some(open), Some(close)) if open < close => {
            presented[open + 1..close].trim_matches('"').to_owned()
        }
        _ => presented.to_owned(),
    }
}

fn classify_tls(err: &rustls::Error, host: &str, port: u16) -> Error {
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::NotValidForName => Error::ServerNameMismatch {
                host: host.to_owned(),
                names: Vec::new(),
            },
            CertificateError::NotValidForNameContext { presented, .. } => {
                Error::ServerNameMismatch {
                    host: host.to_owned(),
                    names: presented.iter().map(|n| plain_name(n)).collect(),
                }
            }
            CertificateError::UnknownIssuer => Error::ServerCertificate {
                reason: "it is not issued by the CA in our bundle (unknown issuer)".into(),
            },
            CertificateError::BadSignature => Error::ServerCertificate {
                reason: "its signature does not verify with our CA's key (a different CA with the same name?)".into(),
            },
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                Error::ServerCertificate {
                    reason: format!("it has expired ({cert:?})"),
                }
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Error::ServerCertificate {
                    reason: format!("it is not valid yet ({cert:?})"),
                }
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                Error::ServerCertificate {
                    reason: "it is not a server certificate (its extended key usage lacks serverAuth)"
                        .into(),
                }
            }
            CertificateError::Revoked => Error::ServerCertificate {
                reason: "it is revoked".into(),
            },
            other => Error::ServerCertificate {
                reason: format!("{other:?}"),
            },
        },
        rustls::Error::AlertReceived(alert) => {
            let hint = match alert {
                AlertDescription::UnknownCA => {
                    "the broker does not trust the CA that issued our certificate (wrong CA, or a CA with the same name but another key)"
                }
                AlertDescription::CertificateExpired => {
                    "our certificate has expired or is not yet valid in the broker's view"
                }
                AlertDescription::CertificateRevoked => "our certificate is on the broker's CRL",
                AlertDescription::UnsupportedCertificate => {
                    "our certificate may not be used for client authentication (a server certificate?)"
                }
                AlertDescription::BadCertificate | AlertDescription::CertificateUnknown => {
                    "the broker could not accept our certificate"
                }
                AlertDescription::CertificateRequired => "the broker requires a client certificate",
                AlertDescription::HandshakeFailure => {
                    "no common TLS parameters, or the broker requires a certificate we did not send"
                }
                AlertDescription::ProtocolVersion => {
                    "the broker does not accept the TLS versions we offer"
                }
                _ => "the broker ended the TLS handshake",
            };
            Error::ClientCertificateRejected {
                alert: format!("{alert:?}"),
                hint,
            }
        }
        other => Error::Tls {
            host: host.to_owned(),
            port,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn presented_names_read_as_names() {
        assert_eq!(super::plain_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(super::plain_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(super::plain_name("plain"), "plain");
    }
}
