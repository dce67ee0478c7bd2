//! Certificate revocation lists (RFC 5280 section 5).

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use der::referenced::OwnedToRef;
use der::{Decode, Encode};
use spki::AlgorithmIdentifierRef;
use x509_cert::crl::{CertificateList, RevokedCert};
use x509_cert::ext::ToExtension;
use x509_cert::ext::pkix::{CrlNumber, CrlReason};
use x509_cert::name::Name;

use crate::algorithm::verify_signature;
use crate::cert::{Certificate, first_inner_tlv};
use crate::error::{Error, Result};
use crate::pem_util;
use crate::serial::Serial;
use crate::validity::to_time;

/// Why a certificate was revoked (RFC 5280 section 5.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevocationReason {
    /// No reason given (the reasonCode extension is then left out, as the
    /// RFC recommends).
    Unspecified,
    /// The certified key was compromised.
    KeyCompromise,
    /// The issuing CA's key was compromised.
    CaCompromise,
    /// The subject's name or affiliation changed.
    AffiliationChanged,
    /// A new certificate replaces this one.
    Superseded,
    /// The device or service was retired.
    CessationOfOperation,
    /// The privileges it granted were withdrawn.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    const ALL: [(Self, &'static str, CrlReason); 7] = [
        (Self::Unspecified, "unspecified", CrlReason::Unspecified),
        (
            Self::KeyCompromise,
            "key-compromise",
            CrlReason::KeyCompromise,
        ),
        (Self::CaCompromise, "ca-compromise", CrlReason::CaCompromise),
        (
            Self::AffiliationChanged,
            "affiliation-changed",
            CrlReason::AffiliationChanged,
        ),
        (Self::Superseded, "superseded", CrlReason::Superseded),
        (
            Self::CessationOfOperation,
            "cessation-of-operation",
            CrlReason::CessationOfOperation,
        ),
        (
            Self::PrivilegeWithdrawn,
            "privilege-withdrawn",
            CrlReason::PrivilegeWithdrawn,
        ),
    ];

    /// The kebab-case name, e.g. `key-compromise`.
    pub fn as_str(&self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(r, _, _)| r == self)
            .map_or("unspecified", |(_, name, _)| name)
    }

    fn to_x509(self) -> CrlReason {
        Self::ALL
            .iter()
            .find(|(r, _, _)| *r == self)
            .map_or(CrlReason::Unspecified, |(_, _, x)| *x)
    }

    fn from_x509(reason: CrlReason) -> Self {
        Self::ALL
            .iter()
            .find(|(_, _, x)| *x == reason)
            .map_or(Self::Unspecified, |(r, _, _)| *r)
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.to_ascii_lowercase().replace('_', "-");
        Self::ALL
            .iter()
            .find(|(_, name, _)| *name == wanted || name.replace('-', "") == wanted)
            .map(|(r, _, _)| *r)
            .ok_or_else(|| {
                Error::malformed(
                    "revocation reason",
                    format!(
                        "{s:?} (expected one of: {})",
                        Self::ALL.map(|(_, n, _)| n).join(", ")
                    ),
                )
            })
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Its serial number.
    pub serial: Serial,
    /// When it was revoked.
    pub revoked_at: SystemTime,
    /// Why.
    pub reason: RevocationReason,
}

impl RevokedEntry {
    pub(crate) fn to_x509(&self, issuer: &Name) -> Result<RevokedCert> {
        let extensions = if self.reason == RevocationReason::Unspecified {
            None
        } else {
            let ext = self
                .reason
                .to_x509()
                .to_extension(issuer, &[])
                .map_err(|e| Error::malformed("CRL entry", e))?;
            Some(vec![ext])
        };
        Ok(RevokedCert {
            serial_number: self.serial.to_x509()?,
            revocation_date: to_time(self.revoked_at)?,
            crl_entry_extensions: extensions,
        })
    }
}

/// When a CRL was made, when the next one is due, and its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlParams {
    /// The CRL number: must increase with every CRL the CA issues (5.2.3).
    pub number: u64,
    /// `thisUpdate`.
    pub this_update: SystemTime,
    /// `nextUpdate`: relying parties treat the CRL as stale after it.
    pub next_update: SystemTime,
}

/// A signed certificate revocation list.
#[derive(Clone, PartialEq, Eq)]
pub struct Crl {
    der: Vec<u8>,
    list: CertificateList,
}

impl fmt::Debug for Crl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crl")
            .field("issuer", &self.issuer())
            .field("entries", &self.entries().len())
            .finish_non_exhaustive()
    }
}

impl Crl {
    pub(crate) fn from_list(list: CertificateList) -> Result<Self> {
        let der = list.to_der().map_err(|e| Error::malformed("CRL", e))?;
        Ok(Self { der, list })
    }

    /// Parses DER (the signature is checked by [`Crl::verify_issued_by`]).
    pub fn from_der(der: impl Into<Vec<u8>>) -> Result<Self> {
        let der = der.into();
        let list = CertificateList::from_der(&der).map_err(|e| Error::malformed("CRL", e))?;
        Ok(Self { der, list })
    }

    /// Parses the first `X509 CRL` PEM block.
    pub fn from_pem(pem: &str) -> Result<Self> {
        Self::from_der(pem_util::find_block(pem, &["X509 CRL"], "X509 CRL")?.contents)
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM (`-----BEGIN X509 CRL-----`).
    pub fn to_pem(&self) -> String {
        pem_util::encode("X509 CRL", &self.der)
    }

    /// The issuer in RFC 4514 form.
    pub fn issuer(&self) -> String {
        self.list.tbs_cert_list.issuer.to_string()
    }

    /// `thisUpdate`.
    pub fn this_update(&self) -> SystemTime {
        self.list.tbs_cert_list.this_update.to_system_time()
    }

    /// `nextUpdate`, if present.
    pub fn next_update(&self) -> Option<SystemTime> {
        self.list
            .tbs_cert_list
            .next_update
            .map(|t| t.to_system_time())
    }

    /// The CRL number, if present and small enough for a `u64`.
    pub fn number(&self) -> Option<u64> {
        let ext = self
            .list
            .tbs_cert_list
            .crl_extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id == <CrlNumber as der::oid::AssociatedOid>::OID)?;
        let number = CrlNumber::from_der(ext.extn_value.as_bytes()).ok()?;
        let bytes = number.0.as_bytes();
        if bytes.len() > 8 {
            return None;
        }
        Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// Whether the CRL number extension is present (`Some`) and marked
    /// critical (`Some(true)`).
    pub(crate) fn number_criticality(&self) -> Option<bool> {
        self.list
            .tbs_cert_list
            .crl_extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id == <CrlNumber as der::oid::AssociatedOid>::OID)
            .map(|e| e.critical)
    }

    /// The OID of the first critical extension of the CRL or of one of its
    /// entries that this crate does not understand (CRL number, authority
    /// key identifier, reason code), if any.
    pub fn unknown_critical_extension(&self) -> Option<String> {
        use der::oid::db::rfc5280::{
            ID_CE_AUTHORITY_KEY_IDENTIFIER, ID_CE_CRL_NUMBER, ID_CE_CRL_REASONS,
        };
        let understood = [
            ID_CE_CRL_NUMBER,
            ID_CE_AUTHORITY_KEY_IDENTIFIER,
            ID_CE_CRL_REASONS,
        ];
        let tbs = &self.list.tbs_cert_list;
        let list = tbs.crl_extensions.iter().flatten();
        let entries = tbs
            .revoked_certificates
            .iter()
            .flatten()
            .flat_map(|e| e.crl_entry_extensions.iter().flatten());
        list.chain(entries)
            .find(|e| e.critical && !understood.contains(&e.extn_id))
            .map(|e| e.extn_id.to_string())
    }

    /// The revoked certificates.
    pub fn entries(&self) -> Vec<RevokedEntry> {
        self.list
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .map(|rc| RevokedEntry {
                serial: Serial::from_x509(&rc.serial_number),
                revoked_at: rc.revocation_date.to_system_time(),
                reason: rc
                    .crl_entry_extensions
                    .iter()
                    .flatten()
                    .find(|e| e.extn_id == <CrlReason as der::oid::AssociatedOid>::OID)
                    .and_then(|e| CrlReason::from_der(e.extn_value.as_bytes()).ok())
                    .map_or(RevocationReason::Unspecified, RevocationReason::from_x509),
            })
            .collect()
    }

    /// Whether `serial` is listed.
    pub fn is_revoked(&self, serial: &Serial) -> bool {
        self.list
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .any(|rc| Serial::from_x509(&rc.serial_number) == *serial)
    }

    /// Whether `ca` issued this CRL: names match and the signature verifies
    /// with its key.
    pub fn verify_issued_by(&self, ca: &Certificate) -> Result<bool> {
        let ca_tbs = ca.as_x509().tbs_certificate();
        if ca_tbs.subject() != &self.list.tbs_cert_list.issuer {
            return Ok(false);
        }
        let tbs = first_inner_tlv(&self.der).map_err(|e| Error::malformed("CRL", e))?;
        let spki = ca_tbs.subject_public_key_info().owned_to_ref();
        let Some(signature) = self.list.signature.as_bytes() else {
            return Ok(false);
        };
        verify_signature(
            &spki,
            &AlgorithmIdentifierRef::from(&self.list.signature_algorithm),
            tbs,
            signature,
        )
    }
}
