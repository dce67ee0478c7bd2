//! The certificate authority: a CA certificate with its key, which checks
//! requests and signs certificates and CRLs.

use std::time::SystemTime;

use der::Decode;
use der::asn1::BitString;
use spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::Version;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::ToExtension;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlNumber};
use x509_cert::name::Name;

use crate::cert::Certificate;
use crate::crl::{Crl, CrlParams, RevokedEntry};
use crate::csr::Csr;
use crate::error::{Error, Result};
use crate::key::{KeyPair, Signature};
use crate::profile::{IntermediateCa, Leaf, Profile, RootCa, key_identifier};
use crate::san::SubjectAltName;
use crate::serial::Serial;
use crate::subject::Subject;
use crate::validity::{Timestamp, Validity, to_time};

/// How to issue one end-entity certificate from a [`Csr`].
///
/// Which kinds of the names a CSR asks for the CA may grant (each still
/// within the profile). None by default: a CSR is the requester's word,
/// and the names in a certificate are the CA's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CsrNames {
    /// `dNSName`s.
    pub dns: bool,
    /// `iPAddress`es.
    pub ip: bool,
    /// `uniformResourceIdentifier`s.
    pub uri: bool,
}

impl CsrNames {
    /// No name a CSR asks for.
    pub const NONE: Self = Self {
        dns: false,
        ip: false,
        uri: false,
    };
    /// Every kind the profile allows.
    pub const ALL: Self = Self {
        dns: true,
        ip: true,
        uri: true,
    };

    /// Whether `san`'s kind may be taken from a CSR.
    pub fn allows(&self, san: &SubjectAltName) -> bool {
        match san {
            SubjectAltName::Dns(_) => self.dns,
            SubjectAltName::Ip(_) => self.ip,
            SubjectAltName::Uri(_) => self.uri,
        }
    }
}

/// The CA copies the CSR's subject and public key, nothing else: every
/// extension comes from the [`Profile`]. Requested SANs are granted only for
/// the kinds [`IssueParams::csr_names`] names (none by default) and the
/// profile allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueParams {
    /// Client or server.
    pub profile: Profile,
    /// The validity; capped at the CA's own `notAfter`.
    pub validity: Validity,
    /// Names the CA operator adds, whatever the CSR asked for.
    pub sans: Vec<SubjectAltName>,
    /// The kinds of the CSR's requested SANs to grant, where the profile
    /// allows them (wildcards only with `allow_wildcards`; malformed URIs
    /// never). [`CsrNames::NONE`] by default.
    pub csr_names: CsrNames,
    /// Allow wildcard DNS names (`*.example.com`), from the CSR or `sans`.
    pub allow_wildcards: bool,
    /// Certify this subject instead of the CSR's.
    pub subject: Option<Subject>,
}

impl IssueParams {
    /// Parameters for `profile` and `validity`; no name the CSR asks for
    /// is granted ([`IssueParams::csr_names`] opts in).
    pub fn new(profile: Profile, validity: Validity) -> Self {
        Self {
            profile,
            validity,
            sans: Vec::new(),
            csr_names: CsrNames::NONE,
            allow_wildcards: false,
            subject: None,
        }
    }
}

/// A certificate the CA just issued, and what it changed from the request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Issued {
    /// The certificate.
    pub certificate: Certificate,
    /// `Some(requested)` when the requested `notAfter` was later than the
    /// CA's own and was cut to it.
    pub capped_not_after: Option<SystemTime>,
    /// Requested SANs left out, each with why.
    pub refused_sans: Vec<RefusedSan>,
}

/// A SAN a CSR asked for that the CA left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedSan {
    /// The name (its `Display` escapes control characters).
    pub san: SubjectAltName,
    /// Why it was left out.
    pub reason: &'static str,
}

/// A CA certificate together with its private key.
///
/// `Send + Sync`: one CA can sign from many threads at once.
///
/// ```
/// use pki_core::*;
///
/// let ca = CertificateAuthority::new_root(
///     &Subject::new("MyRootCA")?.country("US")?.organization("MyOrg")?,
///     KeyPair::generate(KeyType::P256)?,
///     Validity::days_from_now(3650)?,
/// )?;
/// assert!(ca.certificate().is_ca());
/// # Ok::<(), pki_core::Error>(())
/// ```
#[derive(Debug)]
pub struct CertificateAuthority {
    cert: Certificate,
    key: KeyPair,
    key_id: Vec<u8>,
    /// `None`: no path length constraint.
    path_len: Option<u8>,
}

impl CertificateAuthority {
    /// Creates a self-signed root CA for `subject`.
    pub fn new_root(subject: &Subject, key: KeyPair, validity: Validity) -> Result<Self> {
        let spki = spki_of(key.public_key_der())?;
        let builder = CertificateBuilder::new(
            RootCa {
                subject: subject.to_name()?,
            },
            Serial::random()?.to_x509()?,
            validity.to_x509()?,
            spki,
        )
        .map_err(|e| Error::malformed("root certificate", e))?;
        let cert = builder
            .build::<_, Signature>(&key)
            .map_err(|e| Error::malformed("root certificate", e))?;
        Self::from_parts(Certificate::from_parsed(cert)?, key)
    }

    /// Pairs a CA certificate with its key, checking that the certificate
    /// may issue (BasicConstraints `cA`, KeyUsage `keyCertSign`) and that the
    /// key is the certificate's.
    pub fn from_parts(cert: Certificate, key: KeyPair) -> Result<Self> {
        let subject = cert.subject();
        let Some(path_len) = cert.ca_constraint()? else {
            return Err(Error::NotACa {
                subject,
                reason: "its BasicConstraints do not say cA: TRUE",
            });
        };
        if let Some(ku) = cert.key_usage()?
            && !ku.key_cert_sign()
        {
            return Err(Error::NotACa {
                subject,
                reason: "its KeyUsage lacks keyCertSign",
            });
        }
        if !key.matches_public_key(&cert.public_key_der()?) {
            return Err(Error::KeyMismatch { subject });
        }
        let key_id = match cert.subject_key_id()? {
            Some(id) => id,
            None => key_identifier(&spki_ref(key.public_key_der())?),
        };
        Ok(Self {
            cert,
            key,
            key_id,
            path_len,
        })
    }

    /// Reads a CA from PEM: the certificate and its (possibly encrypted) key.
    pub fn from_pem(cert_pem: &str, key_pem: &str, passphrase: Option<&[u8]>) -> Result<Self> {
        let cert = Certificate::from_pem(cert_pem)?;
        let key = match passphrase {
            Some(p) => KeyPair::from_pem_with_passphrase(key_pem, p)?,
            None => KeyPair::from_pem(key_pem)?,
        };
        Self::from_parts(cert, key)
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// The CA's private key.
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    fn subject_name(&self) -> &Name {
        self.cert.as_x509().tbs_certificate().subject()
    }

    /// Issues an end-entity certificate for a verified CSR.
    pub fn sign(&self, csr: &Csr, params: &IssueParams) -> Result<Issued> {
        let profile_name = params.profile.as_str();
        if let Some(asked) = csr.requested_ca_powers() {
            return Err(Error::ProfileViolation {
                profile: profile_name,
                reason: format!(
                    "the CSR asks for {asked}; an end-entity certificate never gets it"
                ),
            });
        }
        // The requested subject is read into a `Subject`, so what lands in
        // the certificate meets the same rules as a subject built here.
        let subject = match &params.subject {
            Some(s) => s.clone(),
            None => Subject::from_name(csr.subject_name())?,
        };
        let common_name = subject.common_name().to_owned();
        let subject = subject.to_name()?;
        let (sans, refused_sans) = self.granted_sans(csr, params, &common_name)?;
        let (validity, capped_not_after) = self.fit_validity(params.validity)?;
        let leaf = Leaf {
            profile: params.profile,
            issuer: self.subject_name().clone(),
            issuer_key_id: self.key_id.clone(),
            subject,
            sans,
            rsa: csr.key_algorithm().is_rsa(),
        };
        let certificate = self.build(leaf, validity, csr.public_key().clone())?;
        Ok(Issued {
            certificate,
            capped_not_after,
            refused_sans,
        })
    }

    /// Issues an intermediate CA certificate for a verified CSR, with the
    /// given path length constraint (0: it may only issue end entities).
    pub fn sign_intermediate(&self, csr: &Csr, validity: Validity, path_len: u8) -> Result<Issued> {
        if let Some(own) = self.path_len
            && path_len >= own
        {
            return Err(Error::ProfileViolation {
                profile: "intermediate CA",
                reason: format!(
                    "this CA's path length constraint is {own}, so a CA below it may have at most {}",
                    own.checked_sub(1)
                        .map_or_else(|| "none".to_owned(), |n| n.to_string())
                ),
            });
        }
        let (validity, capped_not_after) = self.fit_validity(validity)?;
        let profile = IntermediateCa {
            issuer: self.subject_name().clone(),
            issuer_key_id: self.key_id.clone(),
            subject: csr.subject_name().clone(),
            path_len,
        };
        let certificate = self.build(profile, validity, csr.public_key().clone())?;
        Ok(Issued {
            certificate,
            capped_not_after,
            refused_sans: Vec::new(),
        })
    }

    fn build(
        &self,
        profile: impl BuilderProfile,
        validity: Validity,
        spki: SubjectPublicKeyInfoOwned,
    ) -> Result<Certificate> {
        let builder = CertificateBuilder::new(
            profile,
            Serial::random()?.to_x509()?,
            validity.to_x509()?,
            spki,
        )
        .map_err(|e| Error::malformed("certificate", e))?;
        let cert = builder
            .build::<_, Signature>(&self.key)
            .map_err(|e| Error::malformed("certificate", e))?;
        Certificate::from_parsed(cert)
    }

    /// Nests the window inside the CA's own: a certificate valid beyond its
    /// issuer fails path validation then anyway.
    fn fit_validity(&self, requested: Validity) -> Result<(Validity, Option<SystemTime>)> {
        let ca = self.cert.validity();
        let not_before = requested.not_before().max(ca.not_before());
        let start = Validity::new(not_before, requested.not_after()).map_err(|_| {
            Error::InvalidValidity {
                reason: format!(
                    "the requested validity ends at {}, before the CA certificate starts at {}",
                    Timestamp(requested.not_after()),
                    Timestamp(ca.not_before())
                ),
            }
        })?;
        start.capped_at(ca.not_after())
    }

    fn granted_sans(
        &self,
        csr: &Csr,
        params: &IssueParams,
        common_name: &str,
    ) -> Result<(Vec<SubjectAltName>, Vec<RefusedSan>)> {
        let allowed = |san: &SubjectAltName| match params.profile {
            Profile::Client => true,
            Profile::Server => matches!(san, SubjectAltName::Dns(_) | SubjectAltName::Ip(_)),
        };
        let wildcard = |san: &SubjectAltName| matches!(san, SubjectAltName::Dns(d) if d.as_str().starts_with("*."));
        // Why a CSR's SAN is left out, if it is.
        let refusal = |san: &SubjectAltName| -> Option<&'static str> {
            if !allowed(san) {
                return Some("not allowed in this profile");
            }
            if wildcard(san) && !params.allow_wildcards {
                return Some("a wildcard; allow wildcards to grant it");
            }
            if let SubjectAltName::Uri(u) = san
                && SubjectAltName::uri(u.as_str()).is_err()
            {
                return Some("not a well-formed URI (control characters, spaces or no scheme)");
            }
            None
        };
        let mut granted: Vec<SubjectAltName> = Vec::new();
        let mut refused = Vec::new();
        let push = |san: SubjectAltName, granted: &mut Vec<SubjectAltName>| {
            if !granted.contains(&san) {
                granted.push(san);
            }
        };
        // Client certificates carry the identity as a SAN too: some strict
        // validators require one on every leaf.
        if params.profile == Profile::Client {
            push(identity_san(common_name)?, &mut granted);
        }
        for san in &params.sans {
            if !allowed(san) {
                return Err(Error::ProfileViolation {
                    profile: params.profile.as_str(),
                    reason: format!("{san} is not allowed in a {} certificate", params.profile),
                });
            }
            if wildcard(san) && !params.allow_wildcards {
                return Err(Error::ProfileViolation {
                    profile: params.profile.as_str(),
                    reason: format!("{san} is a wildcard; allow wildcards to grant it"),
                });
            }
            push(san.clone(), &mut granted);
        }
        for san in csr.requested_sans() {
            if granted.contains(san) {
                continue;
            }
            match refusal(san) {
                None if params.csr_names.allows(san) => push(san.clone(), &mut granted),
                None => refused.push(RefusedSan {
                    san: san.clone(),
                    reason: "not among the names granted",
                }),
                Some(reason) => refused.push(RefusedSan {
                    san: san.clone(),
                    reason,
                }),
            }
        }
        if params.profile == Profile::Server
            && !granted
                .iter()
                .any(|s| matches!(s, SubjectAltName::Dns(_) | SubjectAltName::Ip(_)))
        {
            return Err(Error::ProfileViolation {
                profile: "server",
                reason:
                    "a server certificate needs at least one DNS or IP subject alternative name \
                         (clients check the name they dial against it)"
                        .into(),
            });
        }
        Ok((granted, refused))
    }

    /// Signs a CRL (version 2) listing `revoked`.
    pub fn crl(&self, revoked: &[RevokedEntry], params: &CrlParams) -> Result<Crl> {
        let issuer = self.subject_name().clone();
        let mut extensions = Vec::with_capacity(2);
        // Section 5.2.1: conforming CRL issuers MUST include the AKI, and
        // (5.2.3) the CRL number.
        let aki = AuthorityKeyIdentifier {
            key_identifier: Some(
                der::asn1::OctetString::new(self.key_id.as_slice())
                    .map_err(|e| Error::malformed("CRL", e))?,
            ),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        };
        extensions.push(
            aki.to_extension(&issuer, &extensions)
                .map_err(|e| Error::malformed("CRL", e))?,
        );
        let number = CrlNumber(
            der::asn1::Uint::new(&params.number.to_be_bytes())
                .map_err(|e| Error::malformed("CRL number", e))?,
        );
        extensions.push(
            number
                .to_extension(&issuer, &extensions)
                .map_err(|e| Error::malformed("CRL", e))?,
        );
        let entries = revoked
            .iter()
            .map(|entry| entry.to_x509(&issuer))
            .collect::<Result<Vec<RevokedCert>>>()?;
        if params.next_update <= params.this_update {
            return Err(Error::InvalidValidity {
                reason: "the CRL's nextUpdate must be after its thisUpdate".into(),
            });
        }
        let tbs = TbsCertList {
            version: Version::V2,
            signature: self.key.signature_algorithm(),
            issuer,
            this_update: to_time(params.this_update)?,
            next_update: Some(to_time(params.next_update)?),
            // Section 5.1.2.6: absent, not empty, when nothing is revoked.
            revoked_certificates: (!entries.is_empty()).then_some(entries),
            crl_extensions: Some(extensions),
        };
        let tbs_der = der::Encode::to_der(&tbs).map_err(|e| Error::malformed("CRL", e))?;
        let signature = self.key.sign(&tbs_der)?;
        let list = CertificateList {
            tbs_cert_list: tbs,
            signature_algorithm: self.key.signature_algorithm(),
            signature: BitString::from_bytes(signature.as_bytes())
                .map_err(|e| Error::malformed("CRL", e))?,
        };
        Crl::from_list(list)
    }
}

/// The SAN a client certificate carries for its common name: a DNS name
/// when the name is a fully qualified one (`sensor-1.fleet.example.com`),
/// else a URN (`urn:mqtt-client:sensor-1`, `urn:mqtt-client:My%20Device`).
/// Single-label DNS names are not used: RFC 5280 linters reject them.
pub fn identity_san(common_name: &str) -> Result<SubjectAltName> {
    if common_name.contains('.')
        && let Ok(dns) = common_name.parse::<crate::DnsName>()
        && !dns.as_str().starts_with("*.")
    {
        return Ok(SubjectAltName::Dns(dns));
    }
    let mut urn = String::from("urn:mqtt-client:");
    for b in common_name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            urn.push(char::from(b));
        } else {
            urn.push_str(&format!("%{b:02X}"));
        }
    }
    SubjectAltName::uri(urn)
}

fn spki_of(der: &[u8]) -> Result<SubjectPublicKeyInfoOwned> {
    SubjectPublicKeyInfoOwned::from_der(der).map_err(|e| Error::malformed("public key", e))
}

fn spki_ref(der: &[u8]) -> Result<SubjectPublicKeyInfoRef<'_>> {
    SubjectPublicKeyInfoRef::from_der(der).map_err(|e| Error::malformed("public key", e))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::csr::CsrParams;

    const DAY: Duration = Duration::from_secs(86_400);

    fn corpus_csr(name: &str) -> Csr {
        let path = format!(
            "{}/../../verify-tests/hostile/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        Csr::from_pem(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn csrs_asking_for_ca_powers_or_bad_subjects_are_refused() {
        let ca = root_with(Validity::days_from_now(30).unwrap());
        let params = IssueParams::new(Profile::Client, Validity::days_from_now(5).unwrap());
        let refused = |name: &str| ca.sign(&corpus_csr(name), &params).unwrap_err().to_string();
        assert!(
            refused("csr-ca-true.pem").contains("asks for basicConstraints CA:true"),
            "{}",
            refused("csr-ca-true.pem")
        );
        let usage = refused("csr-key-usage.pem");
        assert!(
            usage.contains("key usage keyCertSign and key usage cRLSign"),
            "{usage}"
        );
        let long = refused("csr-long-cn.pem");
        assert!(long.contains("is 5000 characters long"), "{long}");
        assert!(long.len() < 300, "the value is shortened: {long}");
        assert!(refused("csr-non-utf8-cn.pem").contains("is not valid UTF-8"));
        // The same requests signed with a subject the CA sets are still
        // refused for the CA powers, but not for the subject.
        let with_subject = IssueParams {
            subject: Some(Subject::new("fixed").unwrap()),
            ..params.clone()
        };
        ca.sign(&corpus_csr("csr-long-cn.pem"), &with_subject)
            .unwrap();
        assert!(
            ca.sign(&corpus_csr("csr-ca-true.pem"), &with_subject)
                .is_err()
        );
    }

    #[test]
    fn the_requested_subject_is_normalised_through_subject() {
        let ca = root_with(Validity::days_from_now(30).unwrap());
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let subject = Subject::new("dev-1")
            .unwrap()
            .organization("Org")
            .unwrap()
            .country("us")
            .unwrap();
        let csr = Csr::new(&CsrParams::new(subject.clone()), &key).unwrap();
        assert_eq!(Subject::from_name(csr.subject_name()).unwrap(), subject);
        let params = IssueParams::new(Profile::Client, Validity::days_from_now(5).unwrap());
        let issued = ca.sign(&csr, &params).unwrap();
        assert_eq!(issued.certificate.subject(), "CN=dev-1,O=Org,C=US");
    }

    fn root_with(validity: Validity) -> CertificateAuthority {
        CertificateAuthority::new_root(
            &Subject::new("Test Root").unwrap(),
            KeyPair::generate(KeyType::P256).unwrap(),
            validity,
        )
        .unwrap()
    }

    fn csr(cn: &str, sans: Vec<SubjectAltName>) -> Csr {
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let mut params = CsrParams::new(Subject::new(cn).unwrap());
        params.sans = sans;
        Csr::new(&params, &key).unwrap()
    }

    use crate::key::KeyType;

    #[test]
    fn root_has_ca_extensions_and_is_self_signed() {
        let ca = root_with(Validity::days_from_now(10).unwrap());
        let cert = ca.certificate();
        assert!(cert.is_self_issued());
        assert_eq!(cert.ca_constraint().unwrap(), Some(None));
        assert_eq!(cert.key_usage_names().unwrap(), ["keyCertSign", "cRLSign"]);
        assert_eq!(
            cert.subject_key_id().unwrap(),
            cert.authority_key_id().unwrap()
        );
        assert_eq!(cert.serial().as_bytes().len(), 20);
    }

    #[test]
    fn leaf_never_outlives_its_issuer() {
        let ca = root_with(Validity::days_from_now(10).unwrap());
        let issued = ca
            .sign(
                &csr("dev", vec![]),
                &IssueParams::new(Profile::Client, Validity::days_from_now(365).unwrap()),
            )
            .unwrap();
        assert_eq!(issued.certificate.not_after(), ca.certificate().not_after());
        let requested = issued.capped_not_after.expect("capping is reported");
        assert!(requested > ca.certificate().not_after() + DAY * 300);
    }

    #[test]
    fn expired_ca_cannot_sign() {
        let now = SystemTime::now();
        let ca = root_with(Validity::new(now - DAY * 20, now - DAY * 10).unwrap());
        let err = ca
            .sign(
                &csr("dev", vec![]),
                &IssueParams::new(Profile::Client, Validity::days_from_now(30).unwrap()),
            )
            .unwrap_err();
        assert!(err.to_string().contains("the issuer expires at"), "{err}");
    }

    #[test]
    fn client_identity_is_also_a_san() {
        let ca = root_with(Validity::days_from_now(10).unwrap());
        let params = IssueParams::new(Profile::Client, Validity::days_from_now(5).unwrap());
        let cert = ca
            .sign(&csr("sensor-1", vec![]), &params)
            .unwrap()
            .certificate;
        assert_eq!(
            cert.subject_alt_names().unwrap(),
            [SubjectAltName::Uri("urn:mqtt-client:sensor-1".into())]
        );
        let cert = ca
            .sign(&csr("s1.fleet.example", vec![]), &params)
            .unwrap()
            .certificate;
        assert_eq!(
            cert.subject_alt_names().unwrap(),
            [SubjectAltName::Dns("s1.fleet.example".parse().unwrap())]
        );
        let cert = ca
            .sign(&csr("My Device #1", vec![]), &params)
            .unwrap()
            .certificate;
        assert_eq!(
            cert.subject_alt_names().unwrap(),
            [SubjectAltName::Uri(
                "urn:mqtt-client:My%20Device%20%231".into()
            )]
        );
    }

    #[test]
    fn server_needs_a_dns_or_ip_san_and_gets_no_uri() {
        let ca = root_with(Validity::days_from_now(10).unwrap());
        let params = IssueParams {
            csr_names: CsrNames::ALL,
            ..IssueParams::new(Profile::Server, Validity::days_from_now(5).unwrap())
        };
        let err = ca.sign(&csr("broker", vec![]), &params).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ProfileViolation {
                    profile: "server",
                    ..
                }
            ),
            "{err}"
        );

        let uri = SubjectAltName::uri("urn:x:y").unwrap();
        let dns = SubjectAltName::Dns("broker.example.com".parse().unwrap());
        let issued = ca
            .sign(
                &csr("broker", vec![uri.clone(), dns.clone(), dns.clone()]),
                &params,
            )
            .unwrap();
        assert_eq!(
            issued.certificate.subject_alt_names().unwrap(),
            std::slice::from_ref(&dns)
        );
        assert_eq!(
            issued.refused_sans,
            [RefusedSan {
                san: uri.clone(),
                reason: "not allowed in this profile"
            }]
        );

        // The operator may not add what the profile forbids either.
        let mut strict = params.clone();
        strict.sans = vec![uri];
        assert!(ca.sign(&csr("broker", vec![dns]), &strict).is_err());

        // Nor does the CA take the CSR's SANs when told not to.
        let mut own = params;
        own.csr_names = CsrNames::NONE;
        own.sans = vec![SubjectAltName::Ip("10.0.0.1".parse().unwrap())];
        let cert = ca
            .sign(
                &csr(
                    "broker",
                    vec![SubjectAltName::Dns("evil.example".parse().unwrap())],
                ),
                &own,
            )
            .unwrap()
            .certificate;
        assert_eq!(
            cert.subject_alt_names().unwrap(),
            [SubjectAltName::Ip("10.0.0.1".parse().unwrap())]
        );
    }

    /// A CSR's names are the requester's word: none is granted unless the
    /// caller opts in, kind by kind, and each refusal is reported.
    #[test]
    fn csr_names_are_granted_only_by_kind_when_asked() {
        let ca = root_with(Validity::days_from_now(10).unwrap());
        let dns = SubjectAltName::Dns("broker.example.com".parse().unwrap());
        let ip = SubjectAltName::Ip("10.0.0.1".parse().unwrap());
        let uri = SubjectAltName::uri("urn:mqtt-client:ca-1").unwrap();
        let asked = csr("node-9", vec![dns.clone(), ip.clone(), uri.clone()]);
        let params = IssueParams::new(Profile::Client, Validity::days_from_now(5).unwrap());
        let issued = ca.sign(&asked, &params).unwrap();
        let granted = issued.certificate.subject_alt_names().unwrap();
        assert_eq!(granted, [identity_san("node-9").unwrap()], "{granted:?}");
        assert_eq!(
            issued
                .refused_sans
                .iter()
                .map(|r| r.san.clone())
                .collect::<Vec<_>>(),
            [dns.clone(), ip.clone(), uri.clone()]
        );
        let only_ip = IssueParams {
            csr_names: CsrNames {
                ip: true,
                ..CsrNames::NONE
            },
            ..params
        };
        let granted = ca
            .sign(&asked, &only_ip)
            .unwrap()
            .certificate
            .subject_alt_names()
            .unwrap();
        assert!(granted.contains(&ip) && !granted.contains(&dns) && !granted.contains(&uri));
    }

    #[test]
    fn subject_override_replaces_the_csr_subject() {
        let ca = root_with(Validity::days_from_now(10).unwrap());
        let mut params = IssueParams::new(Profile::Client, Validity::days_from_now(5).unwrap());
        params.subject = Some(
            Subject::new("assigned")
                .unwrap()
                .organization("Fleet")
                .unwrap(),
        );
        let cert = ca
            .sign(&csr("claimed", vec![]), &params)
            .unwrap()
            .certificate;
        assert_eq!(cert.subject(), "CN=assigned,O=Fleet");
    }

    #[test]
    fn from_parts_checks_key_and_ca_flag() {
        let ca = root_with(Validity::days_from_now(10).unwrap());
        let other_key = KeyPair::generate(KeyType::P256).unwrap();
        let err =
            CertificateAuthority::from_parts(ca.certificate().clone(), other_key).unwrap_err();
        assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");

        let leaf_key = KeyPair::generate(KeyType::P256).unwrap();
        let leaf_csr = Csr::new(&CsrParams::new(Subject::new("leaf").unwrap()), &leaf_key).unwrap();
        let leaf = ca
            .sign(
                &leaf_csr,
                &IssueParams::new(Profile::Client, Validity::days_from_now(5).unwrap()),
            )
            .unwrap()
            .certificate;
        let err = CertificateAuthority::from_parts(leaf, leaf_key).unwrap_err();
        assert!(matches!(err, Error::NotACa { .. }), "{err}");
    }

    #[test]
    fn crl_without_entries_omits_the_list() {
        let ca = root_with(Validity::days_from_now(10).unwrap());
        let now = SystemTime::now();
        let crl = ca
            .crl(
                &[],
                &CrlParams {
                    number: 7,
                    this_update: now,
                    next_update: now + DAY,
                },
            )
            .unwrap();
        assert!(crl.entries().is_empty());
        assert_eq!(crl.number(), Some(7));
        assert!(crl.verify_issued_by(ca.certificate()).unwrap());
        let bad = ca.crl(
            &[],
            &CrlParams {
                number: 8,
                this_update: now,
                next_update: now,
            },
        );
        assert!(bad.is_err());
    }

    #[test]
    fn ca_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CertificateAuthority>();
    }
}
