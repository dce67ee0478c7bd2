//! Who a connection is: its client certificate's name, role and serial,
//! parsed once per connection.

use x509_cert::der::oid::db::rfc4519::CN;

/// The prefix of the URI SAN that carries an identity's role
/// (`urn:mqtt-mtls:role:device`), granted only by the CA.
pub const ROLE_URI_PREFIX: &str = "urn:mqtt-mtls:role:";

/// The role whose rules apply to a certificate without a role SAN (one
/// issued before roles existed).
pub const DEFAULT_ROLE: &str = "device";

/// What a client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A certificate the rules apply to.
    Known {
        /// Its only CN: the MQTT username, `{name}` in the rules.
        name: String,
        /// Its role: the role SAN's, [`DEFAULT_ROLE`] without one.
        role: String,
        /// Its serial number (minimal big-endian octets, as in the CRL).
        serial: Vec<u8>,
    },
    /// A certificate the rules cannot apply to (why): it gets nothing.
    Refused(String),
}

impl Identity {
    /// Reads a client certificate (DER). Never fails: a certificate that
    /// does not parse, has no CN or several, or several role SANs, is
    /// [`Identity::Refused`].
    pub fn from_der(der: &[u8]) -> Self {
        let cert = match pki_core::Certificate::from_der(der.to_vec()) {
            Ok(cert) => cert,
            Err(e) => return Self::Refused(format!("the certificate does not parse: {e}")),
        };
        let subject = cert.as_x509().tbs_certificate().subject();
        if subject.iter().filter(|atv| atv.oid == CN).count() != 1 {
            return Self::Refused(format!("{} does not have exactly one CN", cert.subject()));
        }
        let Some(name) = cert.common_name() else {
            return Self::Refused(format!("{}: the CN is not a string", cert.subject()));
        };
        let sans = match cert.subject_alt_names() {
            Ok(sans) => sans,
            Err(e) => return Self::Refused(format!("{name}: its SANs do not parse: {e}")),
        };
        let roles: Vec<&str> = sans
            .iter()
            .filter_map(|san| match san {
                pki_core::SubjectAltName::Uri(u) => u.strip_prefix(ROLE_URI_PREFIX),
                _ => None,
            })
            .collect();
        let role = match roles.as_slice() {
            [] => DEFAULT_ROLE.to_owned(),
            [one] => (*one).to_owned(),
            _ => return Self::Refused(format!("{name}: several role SANs")),
        };
        Self::Known {
            name,
            role,
            serial: cert.serial().as_bytes().to_vec(),
        }
    }

    /// Its name, when known.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Known { name, .. } => Some(name),
            Self::Refused(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn params(cns: &[&str], uris: &[&str]) -> rcgen::CertificateParams {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        // rcgen keeps one value per type: a second CN goes in under its
        // OID spelled out.
        for (i, cn) in cns.iter().enumerate() {
            let ty = if i == 0 {
                rcgen::DnType::CommonName
            } else {
                rcgen::DnType::CustomDnType(vec![2, 5, 4, 3])
            };
            p.distinguished_name.push(ty, (*cn).to_owned());
        }
        p.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
            .collect();
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0, 0x12, 0x34]));
        p
    }

    #[test]
    fn name_role_and_serial() {
        let id = Identity::from_der(&cert(params(
            &["sensor-1"],
            &["urn:mqtt-client:x", "urn:mqtt-mtls:role:service"],
        )));
        assert_eq!(
            id,
            Identity::Known {
                name: "sensor-1".into(),
                role: "service".into(),
                serial: vec![0x12, 0x34],
            }
        );
        let id = Identity::from_der(&cert(params(&["old"], &[])));
        assert!(matches!(id, Identity::Known { ref role, .. } if role == "device"));
    }

    #[test]
    fn what_gets_nothing() {
        let refused = |der: &[u8], needle: &str| match Identity::from_der(der) {
            Identity::Refused(why) => assert!(why.contains(needle), "{why}"),
            known => panic!("{known:?}"),
        };
        refused(b"garbage", "does not parse");
        refused(&cert(params(&[], &[])), "exactly one CN");
        refused(&cert(params(&["a", "b"], &[])), "exactly one CN");
        refused(
            &cert(params(
                &["a"],
                &["urn:mqtt-mtls:role:device", "urn:mqtt-mtls:role:service"],
            )),
            "several role SANs",
        );
    }
}
