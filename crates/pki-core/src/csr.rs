//! Certificate signing requests (PKCS#10, RFC 2986).

use std::fmt;

use der::oid::AssociatedOid;
use der::oid::db::rfc5912::ID_EXTENSION_REQ;
use der::referenced::OwnedToRef;
use der::{Decode, Encode};
use spki::AlgorithmIdentifierRef;
use x509_cert::builder::Builder;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, SubjectAltName as X509San};
use x509_cert::name::Name;
use x509_cert::request::{CertReq, ExtensionReq, RequestBuilder};

use crate::algorithm::{KeyAlgorithm, verify_signature};
use crate::cert::first_inner_tlv;
use crate::error::{Error, Result};
use crate::key::KeyPair;
use crate::pem_util;
use crate::san::SubjectAltName;
use crate::subject::{Subject, common_name_of};

/// What a device asks to be certified as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrParams {
    /// The subject (its common name is the device identity).
    pub subject: Subject,
    /// Requested subject alternative names; the CA decides which it grants.
    pub sans: Vec<SubjectAltName>,
}

impl CsrParams {
    /// A request for `subject` without alternative names.
    pub fn new(subject: Subject) -> Self {
        Self {
            subject,
            sans: Vec::new(),
        }
    }
}

/// A certificate signing request whose signature has been verified.
///
/// There is no way to hold an unverified CSR: [`Csr::from_der`] and
/// [`Csr::from_pem`] check the signature over the exact bytes received, and
/// refuse weak or unsupported keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Csr {
    der: Vec<u8>,
    req: CertReq,
    key_algorithm: KeyAlgorithm,
    sans: Vec<SubjectAltName>,
    ca_powers: Option<String>,
}

impl fmt::Debug for Csr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Csr")
            .field("subject", &self.subject())
            .field("key", &self.key_algorithm)
            .finish_non_exhaustive()
    }
}

impl Csr {
    /// Builds and signs a request with `key`.
    pub fn new(params: &CsrParams, key: &KeyPair) -> Result<Self> {
        let mut builder = RequestBuilder::new(params.subject.to_name()?)
            .map_err(|e| Error::malformed("CSR", e))?;
        if !params.sans.is_empty() {
            let names = params
                .sans
                .iter()
                .map(SubjectAltName::to_general_name)
                .collect::<Result<Vec<_>>>()?;
            builder
                .add_extension(&X509San(names))
                .map_err(|e| Error::malformed("CSR extension", e))?;
        }
        let req = builder
            .build::<_, crate::key::Signature>(key)
            .map_err(|e| Error::malformed("CSR", e))?;
        let der = req.to_der().map_err(|e| Error::malformed("CSR", e))?;
        Ok(Self {
            der,
            req,
            key_algorithm: key.algorithm(),
            sans: params.sans.clone(),
            ca_powers: None,
        })
    }

    /// Parses DER and verifies the request's signature.
    pub fn from_der(der: impl Into<Vec<u8>>) -> Result<Self> {
        let der = der.into();
        let req = CertReq::from_der(&der).map_err(|e| Error::malformed("CSR", e))?;
        let spki = req.info.public_key.owned_to_ref();
        let key_algorithm = KeyAlgorithm::from_spki(&spki)?;
        let tbs = first_inner_tlv(&der).map_err(|e| Error::malformed("CSR", e))?;
        let alg = AlgorithmIdentifierRef::from(&req.algorithm);
        let signature = req
            .signature
            .as_bytes()
            .ok_or_else(|| Error::malformed("CSR", "signature has unused bits"))?;
        if !verify_signature(&spki, &alg, tbs, signature)? {
            return Err(Error::CsrSignatureInvalid);
        }
        let Requested { sans, ca_powers } = requested(&req)?;
        Ok(Self {
            der,
            req,
            key_algorithm,
            sans,
            ca_powers,
        })
    }

    /// Parses the first `CERTIFICATE REQUEST` block (or the legacy `NEW
    /// CERTIFICATE REQUEST`) and verifies it.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let block = pem_util::find_block(
            pem,
            &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"],
            "CERTIFICATE REQUEST",
        )?;
        Self::from_der(block.contents)
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM (`-----BEGIN CERTIFICATE REQUEST-----`).
    pub fn to_pem(&self) -> String {
        pem_util::encode("CERTIFICATE REQUEST", &self.der)
    }

    /// The requested subject in RFC 4514 form.
    pub fn subject(&self) -> String {
        self.req.info.subject.to_string()
    }

    /// The requested subject's common name, if any.
    pub fn common_name(&self) -> Option<String> {
        common_name_of(&self.req.info.subject)
    }

    pub(crate) fn subject_name(&self) -> &Name {
        &self.req.info.subject
    }

    /// The requested subject alternative names (DNS, IP, URI; other kinds
    /// are ignored).
    pub fn requested_sans(&self) -> &[SubjectAltName] {
        &self.sans
    }

    /// What the request asks for that only a CA certificate has:
    /// `basicConstraints` with `cA` set, or the key usages `keyCertSign` or
    /// `cRLSign`; `None` when it asks for neither. The CA never copies
    /// extensions from a request, and refuses such a request for a leaf.
    pub fn requested_ca_powers(&self) -> Option<&str> {
        self.ca_powers.as_deref()
    }

    /// The algorithm of the key to be certified.
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }

    /// The public key to be certified, as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Result<Vec<u8>> {
        self.req
            .info
            .public_key
            .to_der()
            .map_err(|e| Error::malformed("CSR public key", e))
    }

    pub(crate) fn public_key(&self) -> &spki::SubjectPublicKeyInfoOwned {
        &self.req.info.public_key
    }
}

/// What a request's extension request asks for.
struct Requested {
    sans: Vec<SubjectAltName>,
    ca_powers: Option<String>,
}

fn requested(req: &CertReq) -> Result<Requested> {
    let mut sans = Vec::new();
    let mut powers = Vec::new();
    for attr in req.info.attributes.iter() {
        if attr.oid != ID_EXTENSION_REQ {
            continue;
        }
        for value in attr.values.iter() {
            let ext_req: ExtensionReq = value
                .decode_as()
                .map_err(|e| Error::malformed("CSR extension request", e))?;
            for ext in ext_req.0.iter() {
                let bytes = ext.extn_value.as_bytes();
                if ext.extn_id == X509San::OID {
                    let san = X509San::from_der(bytes)
                        .map_err(|e| Error::malformed("CSR subject alternative name", e))?;
                    sans.extend(san.0.iter().filter_map(SubjectAltName::from_general_name));
                } else if ext.extn_id == BasicConstraints::OID {
                    let bc = BasicConstraints::from_der(bytes)
                        .map_err(|e| Error::malformed("CSR basic constraints", e))?;
                    if bc.ca {
                        powers.push("basicConstraints CA:true");
                    }
                } else if ext.extn_id == KeyUsage::OID {
                    let usage = KeyUsage::from_der(bytes)
                        .map_err(|e| Error::malformed("CSR key usage", e))?;
                    if usage.key_cert_sign() {
                        powers.push("key usage keyCertSign");
                    }
                    if usage.crl_sign() {
                        powers.push("key usage cRLSign");
                    }
                }
            }
        }
    }
    Ok(Requested {
        sans,
        ca_powers: (!powers.is_empty()).then(|| powers.join(" and ")),
    })
}
