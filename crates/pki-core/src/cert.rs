//! Parsed certificates, as issued or as read back.

use std::fmt;
use std::time::SystemTime;

use aws_lc_rs::digest;
use der::asn1::ObjectIdentifier;
use der::oid::db::rfc5280::{ANY_EXTENDED_KEY_USAGE, ID_KP_CLIENT_AUTH, ID_KP_SERVER_AUTH};
use der::referenced::OwnedToRef;
use der::{Decode, Encode, Reader, SliceReader};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage,
    SubjectAltName as X509San, SubjectKeyIdentifier,
};

use crate::algorithm::KeyAlgorithm;
use crate::error::{Error, Result};
use crate::pem_util;
use crate::san::SubjectAltName;
use crate::serial::Serial;
use crate::subject::common_name_of;
use crate::validity::Validity;

/// An X.509 certificate: its DER bytes and the parsed structure.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
    parsed: x509_cert::Certificate,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject())
            .field("serial", &self.serial().to_string())
            .finish_non_exhaustive()
    }
}

/// What a certificate's extended key usage allows, as far as TLS is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlsUsages {
    /// `id-kp-clientAuth` (or `anyExtendedKeyUsage`) is present.
    pub client_auth: bool,
    /// `id-kp-serverAuth` (or `anyExtendedKeyUsage`) is present.
    pub server_auth: bool,
    /// The certificate has no EKU extension at all (any purpose, RFC 5280
    /// section 4.2.1.12).
    pub unrestricted: bool,
}

impl Certificate {
    /// Parses DER. Trailing bytes are an error.
    pub fn from_der(der: impl Into<Vec<u8>>) -> Result<Self> {
        let der = der.into();
        let parsed = x509_cert::Certificate::from_der(&der)
            .map_err(|e| Error::malformed("certificate", e))?;
        Ok(Self { der, parsed })
    }

    /// Parses the first `CERTIFICATE` block of a PEM input.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let mut all = Self::all_from_pem(pem)?;
        Ok(all.swap_remove(0))
    }

    /// Parses every `CERTIFICATE` block of a PEM input (a chain or bundle);
    /// at least one must be present.
    pub fn all_from_pem(pem: &str) -> Result<Vec<Self>> {
        pem_util::all_with_label(pem, "CERTIFICATE", "CERTIFICATE")?
            .into_iter()
            .map(Self::from_der)
            .collect()
    }

    pub(crate) fn from_parsed(parsed: x509_cert::Certificate) -> Result<Self> {
        let der = parsed
            .to_der()
            .map_err(|e| Error::malformed("certificate", e))?;
        Ok(Self { der, parsed })
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM with LF line endings.
    pub fn to_pem(&self) -> String {
        pem_util::encode("CERTIFICATE", &self.der)
    }

    /// The `x509-cert` structure, for anything this type does not expose.
    pub fn as_x509(&self) -> &x509_cert::Certificate {
        &self.parsed
    }

    /// The subject in RFC 4514 form, e.g. `CN=client1,O=MyOrg,C=US`.
    pub fn subject(&self) -> String {
        self.parsed.tbs_certificate().subject().to_string()
    }

    /// The subject's common name, if any.
    pub fn common_name(&self) -> Option<String> {
        common_name_of(self.parsed.tbs_certificate().subject())
    }

    /// The issuer in RFC 4514 form.
    pub fn issuer(&self) -> String {
        self.parsed.tbs_certificate().issuer().to_string()
    }

    /// Whether subject and issuer are the same name (a root, typically).
    pub fn is_self_issued(&self) -> bool {
        let tbs = self.parsed.tbs_certificate();
        tbs.subject() == tbs.issuer()
    }

    /// The serial number.
    pub fn serial(&self) -> Serial {
        Serial::from_x509(self.parsed.tbs_certificate().serial_number())
    }

    /// The validity window.
    pub fn validity(&self) -> Validity {
        Validity::from_x509(self.parsed.tbs_certificate().validity())
    }

    /// `notAfter`.
    pub fn not_after(&self) -> SystemTime {
        self.validity().not_after()
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Result<Vec<u8>> {
        self.parsed
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| Error::malformed("certificate public key", e))
    }

    /// The algorithm and size of the certified key.
    pub fn key_algorithm(&self) -> Result<KeyAlgorithm> {
        let spki = self.parsed.tbs_certificate().subject_public_key_info();
        KeyAlgorithm::from_spki(&spki.owned_to_ref())
    }

    /// Whether `signature` over `message` was made by the key this
    /// certificate certifies, signed as [`KeyPair::sign`](crate::KeyPair::sign)
    /// signs (ECDSA P-256 with SHA-256, P-384 with SHA-384, Ed25519, RSA
    /// PKCS#1 v1.5 with SHA-256): a proof that the sender holds that key.
    /// `Ok(false)`: it does not verify.
    pub fn verify_signature_by_key(&self, message: &[u8], signature: &[u8]) -> Result<bool> {
        let spki = self.parsed.tbs_certificate().subject_public_key_info();
        let spki = spki.owned_to_ref();
        let algorithm = crate::key::signature_algorithm_of(KeyAlgorithm::from_spki(&spki)?);
        crate::algorithm::verify_signature(&spki, &(&algorithm).into(), message, signature)
    }

    /// `Some(path_len)` if this is a CA certificate (BasicConstraints
    /// `cA: TRUE`); `path_len` is the path length constraint, if any.
    pub fn ca_constraint(&self) -> Result<Option<Option<u8>>> {
        Ok(self
            .extension::<BasicConstraints>()?
            .filter(|(_, bc)| bc.ca)
            .map(|(_, bc)| bc.path_len_constraint))
    }

    /// Whether this is a CA certificate.
    pub fn is_ca(&self) -> bool {
        matches!(self.ca_constraint(), Ok(Some(_)))
    }

    /// The key usage extension, if present.
    pub fn key_usage(&self) -> Result<Option<KeyUsage>> {
        Ok(self.extension::<KeyUsage>()?.map(|(_, ku)| ku))
    }

    /// The key usage bits by their RFC 5280 names, e.g. `digitalSignature`.
    pub fn key_usage_names(&self) -> Result<Vec<&'static str>> {
        let Some(ku) = self.key_usage()? else {
            return Ok(Vec::new());
        };
        let all = [
            (ku.digital_signature(), "digitalSignature"),
            (ku.non_repudiation(), "contentCommitment"),
            (ku.key_encipherment(), "keyEncipherment"),
            (ku.data_encipherment(), "dataEncipherment"),
            (ku.key_agreement(), "keyAgreement"),
            (ku.key_cert_sign(), "keyCertSign"),
            (ku.crl_sign(), "cRLSign"),
            (ku.encipher_only(), "encipherOnly"),
            (ku.decipher_only(), "decipherOnly"),
        ];
        Ok(all
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| n)
            .collect())
    }

    /// The extended key usage OIDs, if the extension is present.
    pub fn extended_key_usage(&self) -> Result<Option<Vec<ObjectIdentifier>>> {
        Ok(self.extension::<ExtendedKeyUsage>()?.map(|(_, eku)| eku.0))
    }

    /// The extended key usage by name (`clientAuth`, `serverAuth`, or the OID).
    pub fn extended_key_usage_names(&self) -> Result<Vec<String>> {
        Ok(self
            .extended_key_usage()?
            .unwrap_or_default()
            .into_iter()
            .map(|oid| match oid {
                ID_KP_CLIENT_AUTH => "clientAuth".to_owned(),
                ID_KP_SERVER_AUTH => "serverAuth".to_owned(),
                ANY_EXTENDED_KEY_USAGE => "anyExtendedKeyUsage".to_owned(),
                other => other.to_string(),
            })
            .collect())
    }

    /// What the certificate may do in TLS according to its EKU.
    pub fn tls_usages(&self) -> Result<TlsUsages> {
        Ok(match self.extended_key_usage()? {
            None => TlsUsages {
                client_auth: true,
                server_auth: true,
                unrestricted: true,
            },
            Some(oids) => {
                let any = oids.contains(&ANY_EXTENDED_KEY_USAGE);
                TlsUsages {
                    client_auth: any || oids.contains(&ID_KP_CLIENT_AUTH),
                    server_auth: any || oids.contains(&ID_KP_SERVER_AUTH),
                    unrestricted: false,
                }
            }
        })
    }

    /// The subject alternative names this crate understands (DNS, IP, URI).
    pub fn subject_alt_names(&self) -> Result<Vec<SubjectAltName>> {
        Ok(self
            .extension::<X509San>()?
            .map(|(_, san)| {
                san.0
                    .iter()
                    .filter_map(SubjectAltName::from_general_name)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The subject key identifier, if present.
    pub fn subject_key_id(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .extension::<SubjectKeyIdentifier>()?
            .map(|(_, ski)| ski.0.as_bytes().to_vec()))
    }

    /// The key identifier of the authority key identifier, if present.
    pub fn authority_key_id(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .extension::<AuthorityKeyIdentifier>()?
            .and_then(|(_, aki)| aki.key_identifier.map(|k| k.as_bytes().to_vec())))
    }

    /// The SHA-256 fingerprint of the DER, as `AB:CD:...` (OpenSSL's form).
    pub fn sha256_fingerprint(&self) -> String {
        fingerprint(&self.der)
    }

    pub(crate) fn extension<'a, T>(&'a self) -> Result<Option<(bool, T)>>
    where
        T: Decode<'a> + der::oid::AssociatedOid,
    {
        self.parsed
            .tbs_certificate()
            .get_extension::<T>()
            .map_err(|e| Error::malformed("certificate extension", e))
    }

    /// The exact to-be-signed bytes as received, for signature checks.
    pub(crate) fn tbs_bytes(&self) -> Result<&[u8]> {
        first_inner_tlv(&self.der).map_err(|e| Error::malformed("certificate", e))
    }
}

/// The first element inside an outer `SEQUENCE`: the to-be-signed part of a
/// certificate, CSR or CRL, exactly as encoded (never re-encoded).
pub(crate) fn first_inner_tlv(der: &[u8]) -> der::Result<&[u8]> {
    let mut reader = SliceReader::new(der)?;
    reader.sequence(|r| {
        let tbs = r.tlv_bytes()?;
        // Skip the rest of the sequence so that `sequence` sees it consumed.
        let rest = r.remaining_len();
        r.read_slice(rest)?;
        Ok(tbs)
    })
}

pub(crate) fn fingerprint(der: &[u8]) -> String {
    digest::digest(&digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
