//! Certificate policy: which extensions each kind of certificate carries.
//!
//! Every extension a certificate gets is added here, in one place, so none
//! is duplicated and none is copied from a CSR. Modelled on `x509-cert`'s
//! `builder/profile/devid.rs`; section numbers are RFC 5280's.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;
use der::asn1::OctetString;
use der::oid::db::rfc5280::{ID_KP_CLIENT_AUTH, ID_KP_SERVER_AUTH};
use spki::SubjectPublicKeyInfoRef;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName as X509San, SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;

use crate::error::{Error, Result};
use crate::san::SubjectAltName;

/// The kinds of end-entity certificate a CA issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Profile {
    /// A TLS client (an MQTT device or backend): EKU `clientAuth`.
    Client,
    /// A TLS server (an MQTT broker): EKU `serverAuth`, and at least one DNS
    /// or IP subject alternative name.
    Server,
}

impl Profile {
    /// `client` or `server`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }

    /// The TLS usage this profile grants, by its RFC 5280 name.
    pub fn eku_name(&self) -> &'static str {
        match self {
            Self::Client => "clientAuth",
            Self::Server => "serverAuth",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "client" => Ok(Self::Client),
            "server" => Ok(Self::Server),
            _ => Err(Error::ProfileViolation {
                profile: "unknown",
                reason: format!("{s:?} is not a profile (expected client or server)"),
            }),
        }
    }
}

/// The subject key identifier: the leftmost 160 bits of the SHA-256 hash of
/// the subjectPublicKey bits (RFC 7093 section 2, method 1).
pub(crate) fn key_identifier(spki: &SubjectPublicKeyInfoRef<'_>) -> Vec<u8> {
    let hash = digest::digest(&digest::SHA256, spki.subject_public_key.raw_bytes());
    hash.as_ref()[..20].to_vec()
}

fn ski_extension(
    spki: &SubjectPublicKeyInfoRef<'_>,
    tbs: &TbsCertificate,
    exts: &[Extension],
) -> x509_cert::builder::Result<Extension> {
    let ski = SubjectKeyIdentifier(OctetString::new(key_identifier(spki))?);
    Ok(ski.to_extension(tbs.subject(), exts)?)
}

fn aki_extension(
    issuer_key_id: &[u8],
    tbs: &TbsCertificate,
    exts: &[Extension],
) -> x509_cert::builder::Result<Extension> {
    // The issuer certificate's own SKI, not a hash we compute: chains then
    // match whatever made the issuer (section 4.2.1.1).
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(issuer_key_id)?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    Ok(aki.to_extension(tbs.subject(), exts)?)
}

/// A self-signed root CA (sections 4.2.1.2, 4.2.1.3, 4.2.1.9).
pub(crate) struct RootCa {
    pub(crate) subject: Name,
}

impl BuilderProfile for RootCa {
    fn get_issuer(&self, subject: &Name) -> Name {
        subject.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut exts = Vec::with_capacity(4);
        exts.push(
            BasicConstraints {
                ca: true,
                path_len_constraint: None,
            }
            .to_extension(tbs.subject(), &exts)?,
        );
        exts.push(ca_key_usage().to_extension(tbs.subject(), &exts)?);
        let ski = key_identifier(&spk);
        exts.push(ski_extension(&spk, tbs, &exts)?);
        // Self-signed: the AKI MAY be omitted (4.2.1.1); we keep it, equal to
        // the SKI, as OpenSSL does, so chain builders match by key id.
        exts.push(aki_extension(&ski, tbs, &exts)?);
        Ok(exts)
    }
}

fn ca_key_usage() -> KeyUsage {
    KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)
}

/// An intermediate CA signed by another CA, with a path length constraint.
pub(crate) struct IntermediateCa {
    pub(crate) issuer: Name,
    pub(crate) issuer_key_id: Vec<u8>,
    pub(crate) subject: Name,
    pub(crate) path_len: u8,
}

impl BuilderProfile for IntermediateCa {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    // Pushed one by one: each extension is built knowing those before it.
    #[allow(clippy::vec_init_then_push)]
    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut exts = Vec::with_capacity(4);
        exts.push(
            BasicConstraints {
                ca: true,
                path_len_constraint: Some(self.path_len),
            }
            .to_extension(tbs.subject(), &exts)?,
        );
        exts.push(ca_key_usage().to_extension(tbs.subject(), &exts)?);
        exts.push(ski_extension(&spk, tbs, &exts)?);
        exts.push(aki_extension(&self.issuer_key_id, tbs, &exts)?);
        Ok(exts)
    }
}

/// An end-entity certificate of the given [`Profile`].
pub(crate) struct Leaf {
    pub(crate) profile: Profile,
    pub(crate) issuer: Name,
    pub(crate) issuer_key_id: Vec<u8>,
    pub(crate) subject: Name,
    pub(crate) sans: Vec<SubjectAltName>,
    /// RSA keys also get keyEncipherment (TLS 1.2 RSA key exchange).
    pub(crate) rsa: bool,
}

impl BuilderProfile for Leaf {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut exts = Vec::with_capacity(6);
        exts.push(
            BasicConstraints {
                ca: false,
                path_len_constraint: None,
            }
            .to_extension(tbs.subject(), &exts)?,
        );
        let usage = if self.rsa {
            KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment
        } else {
            KeyUsages::DigitalSignature.into()
        };
        exts.push(KeyUsage(usage).to_extension(tbs.subject(), &exts)?);
        let eku = match self.profile {
            Profile::Client => ID_KP_CLIENT_AUTH,
            Profile::Server => ID_KP_SERVER_AUTH,
        };
        exts.push(ExtendedKeyUsage(vec![eku]).to_extension(tbs.subject(), &exts)?);
        exts.push(ski_extension(&spk, tbs, &exts)?);
        exts.push(aki_extension(&self.issuer_key_id, tbs, &exts)?);
        if !self.sans.is_empty() {
            let names = self
                .sans
                .iter()
                .map(SubjectAltName::to_general_name)
                .collect::<Result<Vec<_>>>()
                .map_err(|_| der::Error::from(der::ErrorKind::Failed))?;
            exts.push(X509San(names).to_extension(tbs.subject(), &exts)?);
        }
        Ok(exts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_round_trip() {
        for p in [Profile::Client, Profile::Server] {
            assert_eq!(p.as_str().parse::<Profile>().unwrap(), p);
        }
        assert!("ca".parse::<Profile>().is_err());
    }
}
