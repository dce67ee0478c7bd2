//! Subject alternative names (RFC 5280 section 4.2.1.6).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use der::asn1::{Ia5String, OctetString};
use x509_cert::ext::pkix::name::GeneralName;

use crate::error::{Error, Result};

/// A host name as it may appear in a `dNSName` SAN: letters, digits and
/// hyphens in dot-separated labels (RFC 1123), optionally with a leading
/// `*.` wildcard label. Stored lower-case.
///
/// ```
/// use pki_core::DnsName;
/// assert_eq!("Broker.Example.COM".parse::<DnsName>()?.as_str(), "broker.example.com");
/// assert!("bad_name.example".parse::<DnsName>().is_err());
/// assert!("127.0.0.1".parse::<DnsName>().is_err()); // use an IP SAN
/// # Ok::<(), pki_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName(String);

impl DnsName {
    /// The name, lower-case.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this name (possibly a wildcard) covers `host`, per RFC 6125
    /// section 6.4.3: a wildcard matches exactly one left-most label.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match self.0.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => host == self.0,
        }
    }
}

impl FromStr for DnsName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidDnsName {
            name: name.to_owned(),
            reason,
        };
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        if lower.is_empty() {
            return Err(bad("empty"));
        }
        if lower.len() > 253 {
            return Err(bad("longer than 253 characters"));
        }
        if lower.parse::<IpAddr>().is_ok() {
            return Err(bad("this is an IP address: use an IP SAN instead"));
        }
        let (labels, wildcard) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (lower.as_str(), false),
        };
        if wildcard && !labels.contains('.') {
            return Err(bad(
                "a wildcard must cover at least two labels, e.g. *.example.com",
            ));
        }
        for label in labels.split('.') {
            if label.is_empty() {
                return Err(bad("empty label"));
            }
            if label.len() > 63 {
                return Err(bad("a label is longer than 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(bad(
                    "only letters, digits, hyphens and a leading `*.` are allowed",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a label must not start or end with a hyphen"));
            }
        }
        Ok(Self(lower))
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SubjectAltName {
    /// A host name (`dNSName`).
    Dns(DnsName),
    /// An IPv4 or IPv6 address (`iPAddress`).
    Ip(IpAddr),
    /// A URI (`uniformResourceIdentifier`), e.g. a device URN or SPIFFE ID.
    Uri(String),
}

impl SubjectAltName {
    /// A URI SAN; it must be ASCII, without spaces, and have a scheme.
    pub fn uri(uri: impl Into<String>) -> Result<Self> {
        let uri = uri.into();
        let bad = |reason| Error::InvalidUri {
            uri: uri.clone(),
            reason,
        };
        let Some((scheme, rest)) = uri.split_once(':') else {
            return Err(bad("it has no scheme, e.g. urn: or spiffe://"));
        };
        if scheme.is_empty()
            || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(bad("invalid scheme"));
        }
        if rest.is_empty() {
            return Err(bad("nothing after the scheme"));
        }
        if !uri.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("only printable ASCII without spaces is allowed"));
        }
        Ok(Self::Uri(uri))
    }

    pub(crate) fn to_general_name(&self) -> Result<GeneralName> {
        Ok(match self {
            Self::Dns(d) => GeneralName::DnsName(
                Ia5String::new(d.as_str()).map_err(|e| Error::malformed("DNS name", e))?,
            ),
            Self::Ip(IpAddr::V4(a)) => GeneralName::IpAddress(
                OctetString::new(a.octets()).map_err(|e| Error::malformed("IP address", e))?,
            ),
            Self::Ip(IpAddr::V6(a)) => GeneralName::IpAddress(
                OctetString::new(a.octets()).map_err(|e| Error::malformed("IP address", e))?,
            ),
            Self::Uri(u) => GeneralName::UniformResourceIdentifier(
                Ia5String::new(u).map_err(|e| Error::malformed("URI", e))?,
            ),
        })
    }

    /// Reads a SAN from a certificate or CSR. Kinds this crate does not issue
    /// (e-mail, directory names, other names) give `None`.
    pub(crate) fn from_general_name(name: &GeneralName) -> Option<Self> {
        match name {
            GeneralName::DnsName(d) => d.as_str().parse().ok().map(Self::Dns),
            GeneralName::IpAddress(o) => match o.as_bytes().len() {
                4 => <[u8; 4]>::try_from(o.as_bytes())
                    .ok()
                    .map(|b| Self::Ip(IpAddr::from(b))),
                16 => <[u8; 16]>::try_from(o.as_bytes())
                    .ok()
                    .map(|b| Self::Ip(IpAddr::from(b))),
                _ => None,
            },
            GeneralName::UniformResourceIdentifier(u) => Some(Self::Uri(u.to_string())),
            _ => None,
        }
    }
}

/// `DNS:host`, `IP:addr`, `URI:uri`, as OpenSSL prints them.
impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(d) => write!(f, "DNS:{d}"),
            Self::Ip(a) => write!(f, "IP:{a}"),
            // A URI read from a CSR may hold anything IA5 allows:
            // control characters are shown escaped, never sent raw to a
            // terminal.
            Self::Uri(u) => {
                f.write_str("URI:")?;
                for c in u.chars() {
                    if c.is_control() {
                        write!(f, "{}", c.escape_unicode())?;
                    } else {
                        write!(f, "{c}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl From<DnsName> for SubjectAltName {
    fn from(d: DnsName) -> Self {
        Self::Dns(d)
    }
}

impl From<IpAddr> for SubjectAltName {
    fn from(a: IpAddr) -> Self {
        Self::Ip(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_host_names() {
        for ok in ["localhost", "a.b-c.example", "*.mqtt.example.com", "x1."] {
            assert!(ok.parse::<DnsName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a.example",
            "a-.example",
            "a..b",
            "*.com",
            "a.*.b",
            "sp ace",
            "ü.example",
            "10.0.0.1",
            "::1",
        ] {
            assert!(bad.parse::<DnsName>().is_err(), "{bad}");
        }
        assert!(
            format!("{}.com", "a".repeat(64))
                .parse::<DnsName>()
                .is_err()
        );
    }

    #[test]
    fn wildcard_matches_one_label() {
        let w: DnsName = "*.example.com".parse().unwrap();
        assert!(w.matches("a.example.com"));
        assert!(w.matches("A.Example.com."));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("a.b.example.com"));
        let plain: DnsName = "broker.example.com".parse().unwrap();
        assert!(plain.matches("BROKER.example.com"));
        assert!(!plain.matches("other.example.com"));
    }

    #[test]
    fn round_trips_general_names() {
        let sans = [
            SubjectAltName::Dns("host.example".parse().unwrap()),
            SubjectAltName::Ip("127.0.0.1".parse().unwrap()),
            SubjectAltName::Ip("::1".parse().unwrap()),
            SubjectAltName::uri("urn:dev:sensor-1").unwrap(),
        ];
        for san in sans {
            let gn = san.to_general_name().unwrap();
            assert_eq!(SubjectAltName::from_general_name(&gn), Some(san));
        }
    }

    #[test]
    fn validates_uris() {
        assert!(SubjectAltName::uri("spiffe://fleet/sensor-1").is_ok());
        assert!(SubjectAltName::uri("no-scheme").is_err());
        assert!(SubjectAltName::uri("urn:").is_err());
        assert!(SubjectAltName::uri("urn:with space").is_err());
    }
}
