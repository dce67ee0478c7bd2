//! What `pki_core::verify` must refuse (issue #27, item 6), one test per
//! case, with certificates made by pki-core and altered by DER surgery (the
//! signed part re-encoded and signed again with the issuer's key), or made
//! by rcgen. Name constraints and path building are cross-checked with
//! rustls-webpki.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use der::asn1::{Any, BitString, ObjectIdentifier, OctetString, Uint};
use der::{Decode, Encode, Sequence, Tagged};
use pki_core::{
    Certificate, CertificateAuthority, Crl, CrlParams, Csr, CsrParams, Error, InvalidReason,
    IssueParams, KeyPair, KeyType, Profile, RevokedEntry, Subject, SubjectAltName, Validity,
    VerifyOptions, verify,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_cert::ext::Extension;

const DAY: Duration = Duration::from_secs(86_400);

// ---------------------------------------------------------------- helpers

fn root(cn: &str) -> CertificateAuthority {
    CertificateAuthority::new_root(
        &Subject::new(cn).unwrap(),
        KeyPair::generate(KeyType::P256).unwrap(),
        Validity::days_from_now(100).unwrap(),
    )
    .unwrap()
}

fn intermediate(parent: &CertificateAuthority, cn: &str, days: u32) -> CertificateAuthority {
    let key = KeyPair::generate(KeyType::P256).unwrap();
    intermediate_with_key(parent, cn, key, Validity::days_from_now(days).unwrap())
}

fn intermediate_with_key(
    parent: &CertificateAuthority,
    cn: &str,
    key: KeyPair,
    validity: Validity,
) -> CertificateAuthority {
    let csr = Csr::new(&CsrParams::new(Subject::new(cn).unwrap()), &key).unwrap();
    let cert = parent
        .sign_intermediate(&csr, validity, 0)
        .unwrap()
        .certificate;
    CertificateAuthority::from_parts(cert, key).unwrap()
}

fn server(ca: &CertificateAuthority, sans: Vec<SubjectAltName>) -> Certificate {
    let key = KeyPair::generate(KeyType::P256).unwrap();
    let mut params = CsrParams::new(Subject::new("broker").unwrap());
    params.sans = sans;
    let csr = Csr::new(&params, &key).unwrap();
    let mut issue = IssueParams::new(Profile::Server, Validity::days_from_now(10).unwrap());
    issue.csr_names = pki_core::CsrNames::ALL;
    ca.sign(&csr, &issue).unwrap().certificate
}

fn dns(name: &str) -> SubjectAltName {
    SubjectAltName::Dns(name.parse().unwrap())
}

fn ip(addr: &str) -> SubjectAltName {
    SubjectAltName::Ip(addr.parse().unwrap())
}

fn reason(result: pki_core::Result<()>) -> InvalidReason {
    match result {
        Err(Error::Invalid { reason, .. }) => reason,
        other => panic!("expected an invalid certificate, got {other:?}"),
    }
}

fn rejected(result: pki_core::Result<()>) -> String {
    match reason(result) {
        InvalidReason::IssuerRejected { reason, .. } => reason,
        other => panic!("expected the issuer to be rejected, got {other:?}"),
    }
}

fn bad_extension(result: pki_core::Result<()>) -> (&'static str, String) {
    match reason(result) {
        InvalidReason::BadExtension { extension, reason } => (extension, reason),
        other => panic!("expected a bad extension, got {other:?}"),
    }
}

#[derive(Sequence)]
struct RawCertificate {
    tbs: Any,
    algorithm: Any,
    signature: BitString,
}

/// `cert` with its signed part's elements (version, serial, signature
/// algorithm, issuer, validity, subject, key, extensions) edited, signed
/// again with `signer`.
fn resign(cert: &Certificate, signer: &KeyPair, edit: impl FnOnce(&mut Vec<Any>)) -> Certificate {
    let tbs = cert.as_x509().tbs_certificate().to_der().unwrap();
    let mut elements = Vec::<Any>::from_der(&tbs).unwrap();
    edit(&mut elements);
    let tbs = Any::from_der(&elements.to_der().unwrap()).unwrap();
    let signature = signer.sign(&tbs.to_der().unwrap()).unwrap();
    let raw = RawCertificate {
        algorithm: elements[2].clone(),
        tbs,
        signature: BitString::from_bytes(signature.as_bytes()).unwrap(),
    };
    Certificate::from_der(raw.to_der().unwrap()).unwrap()
}

/// `cert` with its extensions edited, signed again with `signer`.
fn edit_extensions(
    cert: &Certificate,
    signer: &KeyPair,
    edit: impl FnOnce(&mut Vec<Extension>),
) -> Certificate {
    resign(cert, signer, |elements| {
        let wrapper = elements.last_mut().unwrap();
        let tag = wrapper.tag();
        let mut exts = Vec::<Extension>::from_der(wrapper.value()).unwrap();
        edit(&mut exts);
        *wrapper = Any::new(tag, exts.to_der().unwrap()).unwrap();
    })
}

fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(s)
}

const AKI: &str = "2.5.29.35";
const SKI: &str = "2.5.29.14";
const BC: &str = "2.5.29.19";
const KU: &str = "2.5.29.15";
const EKU: &str = "2.5.29.37";
const SAN: &str = "2.5.29.17";
const AIA: &str = "1.3.6.1.5.5.7.1.1";

fn find<'e>(exts: &'e mut [Extension], id: &str) -> &'e mut Extension {
    exts.iter_mut().find(|e| e.extn_id == oid(id)).unwrap()
}

fn extension(id: &str, critical: bool, value: Vec<u8>) -> Extension {
    Extension {
        extn_id: oid(id),
        critical,
        extn_value: OctetString::new(value).unwrap(),
    }
}

fn trusted(ca: &CertificateAuthority) -> Vec<Certificate> {
    vec![ca.certificate().clone()]
}

fn webpki_now() -> UnixTime {
    UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap(),
    )
}

/// rustls-webpki's verdict on `leaf` through `intermediates` to `anchor`
/// for server use, and for `name` if given.
fn webpki_accepts(
    anchor: &Certificate,
    intermediates: &[Certificate],
    leaf: &Certificate,
    name: Option<&str>,
) -> bool {
    let anchor_der = CertificateDer::from(anchor.der());
    let anchors = [webpki::anchor_from_trusted_cert(&anchor_der).unwrap()];
    let inter: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.der()))
        .collect();
    let leaf_der = CertificateDer::from(leaf.der());
    let Ok(ee) = webpki::EndEntityCert::try_from(&leaf_der) else {
        return false;
    };
    let path = ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &inter,
        webpki_now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    );
    path.is_ok()
        && name.is_none_or(|n| {
            ee.verify_is_valid_for_subject_name(&ServerName::try_from(n).unwrap())
                .is_ok()
        })
}

// ------------------------------------------- a CA is not an end entity

#[test]
fn a_ca_certificate_is_refused_as_end_entity_without_a_profile() {
    let ours = root("Leaf-CA Root");
    assert_eq!(
        reason(verify(
            ours.certificate(),
            &trusted(&ours),
            &VerifyOptions::now()
        )),
        InvalidReason::IsCa
    );
    let sub = intermediate(&ours, "Leaf-CA Intermediate", 50);
    assert_eq!(
        reason(verify(
            sub.certificate(),
            &trusted(&ours),
            &VerifyOptions::now()
        )),
        InvalidReason::IsCa
    );
    // Unless the caller says it checks a CA certificate.
    let as_ca = VerifyOptions {
        expect_ca: true,
        ..VerifyOptions::now()
    };
    verify(sub.certificate(), &trusted(&ours), &as_ca).unwrap();

    // keyCertSign alone (no cA flag) makes a CA too (RFC 5280 4.2.1.3).
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    let signing = edit_extensions(&leaf, ours.key(), |exts| {
        // KeyUsage BIT STRING: digitalSignature | keyCertSign.
        find(exts, KU).extn_value = OctetString::new(vec![0x03, 0x02, 0x02, 0x84]).unwrap();
    });
    assert_eq!(
        reason(verify(&signing, &trusted(&ours), &VerifyOptions::now())),
        InvalidReason::IsCa
    );
    // A key usage that cannot be read says nothing: counted as a claim.
    let unreadable = edit_extensions(&leaf, ours.key(), |exts| {
        find(exts, KU).extn_value = OctetString::new(vec![0x04, 0x01, 0x00]).unwrap();
    });
    assert!(verify(&unreadable, &trusted(&ours), &VerifyOptions::now()).is_err());
}

// ------------------------------------------------------------ host names

#[test]
fn a_name_only_the_cn_carries_does_not_match() {
    let ours = root("Cn Root");
    let key = KeyPair::generate(KeyType::P256).unwrap();
    let csr = Csr::new(
        &CsrParams::new(Subject::new("broker.example.com").unwrap()),
        &key,
    )
    .unwrap();
    // A client certificate: the CN becomes a DNS SAN; take the SANs out.
    let mut issue = IssueParams::new(Profile::Client, Validity::days_from_now(10).unwrap());
    issue.csr_names = pki_core::CsrNames::ALL;
    let cert = ours.sign(&csr, &issue).unwrap().certificate;
    let cn_only = edit_extensions(&cert, ours.key(), |exts| {
        exts.retain(|e| e.extn_id != oid(SAN));
    });
    assert_eq!(cn_only.common_name().as_deref(), Some("broker.example.com"));
    let named = VerifyOptions {
        name: Some("broker.example.com".into()),
        ..VerifyOptions::now()
    };
    assert!(matches!(
        reason(verify(&cn_only, &trusted(&ours), &named)),
        InvalidReason::NameMismatch { .. }
    ));
}

fn named(name: &str) -> VerifyOptions<'static> {
    VerifyOptions {
        name: Some(name.into()),
        ..VerifyOptions::now()
    }
}

fn uncheckable(result: pki_core::Result<()>) -> &'static str {
    match reason(result) {
        InvalidReason::UncheckableName { reason, .. } => reason,
        other => panic!("expected an uncheckable name, got {other:?}"),
    }
}

/// rcgen leaf with DNS SANs pki-core would never grant (numeric labels).
fn rcgen_leaf_with_dns(names: &[&str]) -> (Certificate, Certificate) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Rcgen Root");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(ca_cert.der(), &ca_key).unwrap();
    let mut leaf =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    leaf.use_authority_key_identifier_extension = true;
    let leaf = leaf
        .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
        .unwrap();
    (
        Certificate::from_der(ca_cert.der().to_vec()).unwrap(),
        Certificate::from_der(leaf.der().to_vec()).unwrap(),
    )
}

#[test]
fn ipv4_addresses_in_ambiguous_spellings_are_refused() {
    // DNS SANs spelled like addresses: a resolver reads 010.0.0.1 as
    // 8.0.0.1 and 0x7f.1 as 127.0.0.1.
    let (ca, leaf) = rcgen_leaf_with_dns(&["010.0.0.1", "0x7f.1", "127.1"]);
    let anchors = [ca];
    for name in ["010.0.0.1", "0x7f.1", "127.1"] {
        let why = uncheckable(verify(&leaf, &anchors, &named(name)));
        assert!(why.contains("IPv4"), "{name}: {why}");
    }

    let ours = root("Ip Root");
    let cert = server(&ours, vec![ip("10.0.0.1"), ip("::1")]);
    let anchors = trusted(&ours);
    verify(&cert, &anchors, &named("10.0.0.1")).unwrap();
    uncheckable(verify(&cert, &anchors, &named("010.0.0.1")));
    // IPv6: one spelling, RFC 5952's; an uncompressed or padded one is
    // refused as ambiguous (as IPv4's leading zeros are); an IPv4-mapped
    // address is not the IPv4 address.
    verify(&cert, &anchors, &named("::1")).unwrap();
    uncheckable(verify(&cert, &anchors, &named("0:0:0:0:0:0:0:1")));
    uncheckable(verify(&cert, &anchors, &named("0000::0001")));
    assert!(matches!(
        reason(verify(&cert, &anchors, &named("::ffff:10.0.0.1"))),
        InvalidReason::NameMismatch { .. }
    ));
    assert!(matches!(
        reason(verify(&cert, &anchors, &named("fe80::1%eth0"))),
        InvalidReason::UncheckableName { .. }
    ));
}

#[test]
fn dns_names_compare_ascii_case_insensitively_and_as_a_labels_only() {
    let ours = root("Dns Root");
    let cert = server(
        &ours,
        vec![dns("broker.example.com"), dns("xn--bcher-kva.example")],
    );
    let anchors = trusted(&ours);
    verify(&cert, &anchors, &named("BROKER.Example.COM")).unwrap();
    verify(&cert, &anchors, &named("broker.example.com.")).unwrap();
    verify(&cert, &anchors, &named("XN--BCHER-KVA.example")).unwrap();
    // The U-label of the same name, and a Kelvin sign (U+212A, which
    // Unicode lower-cases to k): refused as non-ASCII, never folded.
    let why = uncheckable(verify(&cert, &anchors, &named("bücher.example")));
    assert!(why.contains("A-label"), "{why}");
    uncheckable(verify(&cert, &anchors, &named("bro\u{212A}er.example.com")));
    // Not a host name at all, or a wildcard as the reference.
    uncheckable(verify(&cert, &anchors, &named("broker_1.example.com")));
    uncheckable(verify(&cert, &anchors, &named("*.example.com")));
}

// ------------------------------------------------------ extended key usage

#[test]
fn an_empty_extended_key_usage_is_refused() {
    let ours = root("Eku Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    let empty = edit_extensions(&leaf, ours.key(), |exts| {
        find(exts, EKU).extn_value = OctetString::new(vec![0x30, 0x00]).unwrap();
    });
    let (ext, why) = bad_extension(verify(&empty, &trusted(&ours), &VerifyOptions::now()));
    assert_eq!(ext, "extended key usage");
    assert!(why.contains("empty"), "{why}");
}

#[test]
fn a_critical_extended_key_usage_is_refused() {
    let ours = root("Eku Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    let critical = edit_extensions(&leaf, ours.key(), |exts| find(exts, EKU).critical = true);
    let (ext, why) = bad_extension(verify(&critical, &trusted(&ours), &VerifyOptions::now()));
    assert_eq!(ext, "extended key usage");
    assert!(why.contains("critical"), "{why}");
}

#[test]
fn any_extended_key_usage_does_not_stand_for_the_profile_s() {
    let ours = root("Eku Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    // SEQUENCE { anyExtendedKeyUsage (2.5.29.37.0) }
    let any = edit_extensions(&leaf, ours.key(), |exts| {
        find(exts, EKU).extn_value =
            OctetString::new(vec![0x30, 0x06, 0x06, 0x04, 0x55, 0x1d, 0x25, 0x00]).unwrap();
    });
    let as_server = VerifyOptions {
        profile: Some(Profile::Server),
        ..VerifyOptions::now()
    };
    assert_eq!(
        reason(verify(&any, &trusted(&ours), &as_server)),
        InvalidReason::AnyExtendedKeyUsage {
            needed: "serverAuth"
        }
    );
    // Beside serverAuth named, as OpenSSL and webpki take it.
    // SEQUENCE { serverAuth, anyExtendedKeyUsage }
    let both = edit_extensions(&leaf, ours.key(), |exts| {
        find(exts, EKU).extn_value = OctetString::new(vec![
            0x30, 0x10, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01, 0x06, 0x04,
            0x55, 0x1d, 0x25, 0x00,
        ])
        .unwrap();
    });
    verify(&both, &trusted(&ours), &as_server).unwrap();
}

#[test]
fn a_root_with_an_extended_key_usage_is_refused() {
    let ours = root("Eku Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    // SEQUENCE { serverAuth }
    let with_eku = edit_extensions(ours.certificate(), ours.key(), |exts| {
        exts.push(extension(
            EKU,
            false,
            vec![
                0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01,
            ],
        ));
    });
    let why = rejected(verify(&leaf, &[with_eku], &VerifyOptions::now()));
    assert!(why.contains("extended key usage"), "{why}");
}

// ----------------------------------------------------------------- serials

fn with_serial(cert: &Certificate, signer: &KeyPair, content: &[u8]) -> Option<Certificate> {
    let tbs = cert.as_x509().tbs_certificate().to_der().unwrap();
    let mut elements = Vec::<Any>::from_der(&tbs).unwrap();
    elements[1] = Any::new(der::Tag::Integer, content.to_vec()).unwrap();
    let tbs = elements.to_der().unwrap();
    let signature = signer.sign(&tbs).unwrap();
    let raw = RawCertificate {
        algorithm: elements[2].clone(),
        tbs: Any::from_der(&tbs).unwrap(),
        signature: BitString::from_bytes(signature.as_bytes()).unwrap(),
    };
    Certificate::from_der(raw.to_der().unwrap()).ok()
}

#[test]
fn zero_and_negative_serials_are_refused() {
    let ours = root("Serial Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    let zero = with_serial(&leaf, ours.key(), &[0x00]).expect("x509-cert reads serial 0");
    assert!(matches!(
        reason(verify(&zero, &trusted(&ours), &VerifyOptions::now())),
        InvalidReason::NotPositiveSerial { .. }
    ));
    // A negative serial (x509-cert reads it; verify refuses it).
    let negative = with_serial(&leaf, ours.key(), &[0xff, 0x01]).expect("x509-cert reads it");
    assert!(matches!(
        reason(verify(&negative, &trusted(&ours), &VerifyOptions::now())),
        InvalidReason::NotPositiveSerial { .. }
    ));
}

// --------------------------------------------------------- key identifiers

#[test]
fn critical_key_identifiers_are_refused() {
    let ours = root("Kid Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    for id in [AKI, SKI] {
        let critical = edit_extensions(&leaf, ours.key(), |exts| find(exts, id).critical = true);
        let (_, why) = bad_extension(verify(&critical, &trusted(&ours), &VerifyOptions::now()));
        assert!(why.contains("critical"), "{id}: {why}");
    }
    // In the root too.
    let root_ski = edit_extensions(ours.certificate(), ours.key(), |exts| {
        find(exts, SKI).critical = true;
    });
    let why = rejected(verify(&leaf, &[root_ski], &VerifyOptions::now()));
    assert!(why.contains("critical"), "{why}");
}

#[test]
fn a_leaf_without_authority_key_identifier_is_refused() {
    let ours = root("Kid Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    let no_aki = edit_extensions(&leaf, ours.key(), |exts| {
        exts.retain(|e| e.extn_id != oid(AKI));
    });
    let (ext, why) = bad_extension(verify(&no_aki, &trusted(&ours), &VerifyOptions::now()));
    assert_eq!(ext, "authority key identifier");
    assert!(why.contains("missing"), "{why}");
}

#[test]
fn a_root_without_subject_key_identifier_is_refused() {
    let ours = root("Kid Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    let no_ski = edit_extensions(ours.certificate(), ours.key(), |exts| {
        exts.retain(|e| e.extn_id != oid(SKI));
    });
    let why = rejected(verify(&leaf, &[no_ski], &VerifyOptions::now()));
    assert!(why.contains("subject key identifier"), "{why}");
}

#[test]
fn a_root_authority_key_identifier_with_issuer_and_serial_is_refused() {
    let ours = root("Kid Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    let ski = ours.certificate().subject_key_id().unwrap().unwrap();
    let issuer_der = ours
        .certificate()
        .as_x509()
        .tbs_certificate()
        .issuer()
        .to_der()
        .unwrap();
    let aki = x509_cert::ext::pkix::AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(ski).unwrap()),
        authority_cert_issuer: Some(vec![
            x509_cert::ext::pkix::name::GeneralName::DirectoryName(
                x509_cert::name::Name::from_der(&issuer_der).unwrap(),
            ),
        ]),
        authority_cert_serial_number: Some(
            x509_cert::serial_number::SerialNumber::new(&[0x01]).unwrap(),
        ),
    };
    let with_fields = edit_extensions(ours.certificate(), ours.key(), |exts| {
        find(exts, AKI).extn_value = OctetString::new(aki.to_der().unwrap()).unwrap();
    });
    let why = rejected(verify(&leaf, &[with_fields], &VerifyOptions::now()));
    assert!(why.contains("issuer name or serial"), "{why}");
}

#[test]
fn a_root_authority_key_identifier_differing_from_its_ski_is_refused() {
    let ours = root("Kid Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    // AKI: SEQUENCE { [0] 20 octets } with another key id.
    let mut other = vec![0x30, 0x16, 0x80, 0x14];
    other.extend([0xab; 20]);
    let mismatched = edit_extensions(ours.certificate(), ours.key(), |exts| {
        find(exts, AKI).extn_value = OctetString::new(other).unwrap();
    });
    let why = rejected(verify(&leaf, &[mismatched], &VerifyOptions::now()));
    assert!(why.contains("differs"), "{why}");
}

#[test]
fn an_authority_key_identifier_naming_another_key_is_not_the_issuer() {
    let ours = root("Kid Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    let mut other = vec![0x30, 0x16, 0x80, 0x14];
    other.extend([0xcd; 20]);
    // Signed by the right key, but it says another key signed it.
    let wrong_aki = edit_extensions(&leaf, ours.key(), |exts| {
        find(exts, AKI).extn_value = OctetString::new(other).unwrap();
    });
    assert!(matches!(
        reason(verify(&wrong_aki, &trusted(&ours), &VerifyOptions::now())),
        InvalidReason::AuthorityKeyIdMismatch { .. }
    ));
}

// ----------------------------------------------------- basic constraints

#[test]
fn a_root_whose_basic_constraints_are_not_critical_is_refused() {
    let ours = root("Bc Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    let lax_root = edit_extensions(ours.certificate(), ours.key(), |exts| {
        find(exts, BC).critical = false;
    });
    let why = rejected(verify(&leaf, &[lax_root], &VerifyOptions::now()));
    assert!(why.contains("basicConstraints"), "{why}");

    // An intermediate as well.
    let sub = intermediate(&ours, "Bc Intermediate", 50);
    let lax_sub = edit_extensions(sub.certificate(), ours.key(), |exts| {
        find(exts, BC).critical = false;
    });
    let sub_leaf = server(&sub, vec![dns("broker.example.com")]);
    let options = VerifyOptions {
        intermediates: std::slice::from_ref(&lax_sub),
        ..VerifyOptions::now()
    };
    // An intermediate's are taken, as OpenSSL and webpki take them.
    verify(&sub_leaf, &trusted(&ours), &options).unwrap();
}

// ---------------------------------------------------------------- weak keys

fn spki(algorithm: &str, parameters: Option<Any>, key: &[u8]) -> Any {
    let spki = spki::SubjectPublicKeyInfoOwned {
        algorithm: spki::AlgorithmIdentifierOwned {
            oid: oid(algorithm),
            parameters,
        },
        subject_public_key: BitString::from_bytes(key).unwrap(),
    };
    Any::from_der(&spki.to_der().unwrap()).unwrap()
}

#[derive(Sequence)]
struct RsaPublicKey {
    modulus: Uint,
    exponent: Uint,
}

fn rsa_spki(modulus: &[u8]) -> Any {
    let key = RsaPublicKey {
        modulus: Uint::new(modulus).unwrap(),
        exponent: Uint::new(&[0x01, 0x00, 0x01]).unwrap(),
    };
    spki(
        "1.2.840.113549.1.1.1",
        Some(Any::null()),
        &key.to_der().unwrap(),
    )
}

#[test]
fn weak_keys_are_refused_in_the_leaf() {
    let ours = root("Key Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    let rsa_1024 = rsa_spki(&[0xc5; 128]);
    // 2049 bits: 0x01 then 256 octets.
    let mut odd = vec![0x01];
    odd.extend([0xc5; 256]);
    let rsa_2049 = rsa_spki(&odd);
    let mut point = vec![0x04];
    point.extend([0x11; 48]);
    let p192 = spki(
        "1.2.840.10045.2.1",
        Some(Any::from_der(&oid("1.2.840.10045.3.1.1").to_der().unwrap()).unwrap()),
        &point,
    );
    let dsa = spki("1.2.840.10040.4.1", None, &[0x02, 0x01, 0x05]);
    for (what, key) in [
        ("RSA-1024", rsa_1024),
        ("RSA-2049", rsa_2049),
        ("P-192", p192),
        ("DSA", dsa),
    ] {
        let weak = resign(&leaf, ours.key(), |elements| {
            elements[6] = key;
            // The SKI no longer fits the key; take it out.
            let wrapper = elements.last_mut().unwrap();
            let tag = wrapper.tag();
            let mut exts = Vec::<Extension>::from_der(wrapper.value()).unwrap();
            exts.retain(|e| e.extn_id != oid(SKI));
            *wrapper = Any::new(tag, exts.to_der().unwrap()).unwrap();
        });
        assert!(
            matches!(
                reason(verify(&weak, &trusted(&ours), &VerifyOptions::now())),
                InvalidReason::UnacceptableKey { .. }
            ),
            "{what} accepted"
        );
    }
}

// ---------------------------------------------------------------- AIA

#[test]
fn a_malformed_authority_information_access_is_refused() {
    let ours = root("Aia Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    // SEQUENCE { INTEGER 0 }: no AccessDescription.
    let broken = edit_extensions(&leaf, ours.key(), |exts| {
        exts.push(extension(AIA, false, vec![0x30, 0x03, 0x02, 0x01, 0x00]));
    });
    let (ext, _) = bad_extension(verify(&broken, &trusted(&ours), &VerifyOptions::now()));
    assert_eq!(ext, "authority information access");
}

// ---------------------------------------------------------------- CRLs

#[derive(Sequence)]
struct RawCrl {
    tbs: Any,
    algorithm: Any,
    signature: BitString,
}

/// A current CRL of `ca`, its extensions edited, signed again.
fn crl_with(ca: &CertificateAuthority, edit: impl FnOnce(&mut Vec<Extension>)) -> Crl {
    let now = SystemTime::now();
    let crl = ca
        .crl(
            &[] as &[RevokedEntry],
            &CrlParams {
                number: 7,
                this_update: now - DAY,
                next_update: now + DAY,
            },
        )
        .unwrap();
    let raw = RawCrl::from_der(crl.der()).unwrap();
    let mut elements = Vec::<Any>::from_der(&raw.tbs.to_der().unwrap()).unwrap();
    let wrapper = elements.last_mut().unwrap();
    let tag = wrapper.tag();
    let mut exts = Vec::<Extension>::from_der(wrapper.value()).unwrap();
    edit(&mut exts);
    *wrapper = Any::new(tag, exts.to_der().unwrap()).unwrap();
    let tbs = elements.to_der().unwrap();
    let signature = ca.key().sign(&tbs).unwrap();
    let raw = RawCrl {
        tbs: Any::from_der(&tbs).unwrap(),
        algorithm: raw.algorithm,
        signature: BitString::from_bytes(signature.as_bytes()).unwrap(),
    };
    Crl::from_der(raw.to_der().unwrap()).unwrap()
}

fn crl_refusal(result: pki_core::Result<()>) -> String {
    match result {
        Err(Error::Malformed {
            what: "CRL",
            reason,
        }) => reason,
        other => panic!("expected the CRL to be refused, got {other:?}"),
    }
}

const CRL_NUMBER: &str = "2.5.29.20";

#[test]
fn a_crl_without_crl_number_is_refused() {
    let ours = root("Crl Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    let good = crl_with(&ours, |_| {});
    let options = |crl| VerifyOptions {
        crl: Some(crl),
        ..VerifyOptions::now()
    };
    verify(&leaf, &trusted(&ours), &options(&good)).unwrap();
    let numberless = crl_with(&ours, |exts| exts.retain(|e| e.extn_id != oid(CRL_NUMBER)));
    let why = crl_refusal(verify(&leaf, &trusted(&ours), &options(&numberless)));
    assert!(why.contains("CRL number"), "{why}");
}

#[test]
fn a_crl_with_a_critical_crl_number_is_refused() {
    let ours = root("Crl Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    let critical = crl_with(&ours, |exts| find(exts, CRL_NUMBER).critical = true);
    let options = VerifyOptions {
        crl: Some(&critical),
        ..VerifyOptions::now()
    };
    let why = crl_refusal(verify(&leaf, &trusted(&ours), &options));
    assert!(why.contains("critical"), "{why}");
}

#[test]
fn a_crl_from_an_issuer_without_crl_sign_is_refused() {
    let ours = root("Crl Root");
    let leaf = server(&ours, vec![dns("broker.example.com")]);
    let crl = crl_with(&ours, |_| {});
    // The same root, its key usage keyCertSign only.
    let no_crl_sign = edit_extensions(ours.certificate(), ours.key(), |exts| {
        find(exts, KU).extn_value = OctetString::new(vec![0x03, 0x02, 0x02, 0x04]).unwrap();
    });
    let options = VerifyOptions {
        crl: Some(&crl),
        ..VerifyOptions::now()
    };
    verify(
        &leaf,
        std::slice::from_ref(&no_crl_sign),
        &VerifyOptions::now(),
    )
    .unwrap();
    let why = crl_refusal(verify(&leaf, &[no_crl_sign], &options));
    assert!(why.contains("cRLSign"), "{why}");
}

// ------------------------------------------------------- name constraints

struct RcgenChain {
    root: Certificate,
    intermediate: Certificate,
    leaf: Certificate,
}

/// rcgen root → intermediate with `constraints` → server leaf with `sans`
/// and subject O=`org`, CN=broker.
fn constrained_chain(
    constraints: rcgen::NameConstraints,
    sans: Vec<rcgen::SanType>,
    org: &str,
) -> RcgenChain {
    constrained_chain_with(|p| p.name_constraints = Some(constraints), sans, org)
}

fn constrained_chain_with(
    constrain: impl FnOnce(&mut rcgen::CertificateParams),
    sans: Vec<rcgen::SanType>,
    org: &str,
) -> RcgenChain {
    let ca = |cn: &str| {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Org");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        p.use_authority_key_identifier_extension = true;
        p
    };
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root_params = ca("Nc Root");
    root_params.use_authority_key_identifier_extension = false;
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::from_ca_cert_der(root.der(), &root_key).unwrap();
    let inter_key = rcgen::KeyPair::generate().unwrap();
    let mut inter_params = ca("Nc Intermediate");
    constrain(&mut inter_params);
    let inter = inter_params.signed_by(&inter_key, &root_issuer).unwrap();
    let inter_issuer = rcgen::Issuer::from_ca_cert_der(inter.der(), &inter_key).unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    // rcgen's default name holds a CN first; start empty so that the
    // subject is O=org, then CN (in DER order).
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name
        .push(rcgen::DnType::OrganizationName, org);
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "broker");
    leaf.subject_alt_names = sans;
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    leaf.use_authority_key_identifier_extension = true;
    let leaf = leaf
        .signed_by(&rcgen::KeyPair::generate().unwrap(), &inter_issuer)
        .unwrap();
    RcgenChain {
        root: Certificate::from_der(root.der().to_vec()).unwrap(),
        intermediate: Certificate::from_der(inter.der().to_vec()).unwrap(),
        leaf: Certificate::from_der(leaf.der().to_vec()).unwrap(),
    }
}

impl RcgenChain {
    fn verify(&self) -> pki_core::Result<()> {
        let options = VerifyOptions {
            profile: Some(Profile::Server),
            intermediates: std::slice::from_ref(&self.intermediate),
            ..VerifyOptions::now()
        };
        verify(&self.leaf, std::slice::from_ref(&self.root), &options)
    }

    fn webpki(&self) -> bool {
        webpki_accepts(
            &self.root,
            std::slice::from_ref(&self.intermediate),
            &self.leaf,
            None,
        )
    }
}

fn san_dns(name: &str) -> rcgen::SanType {
    rcgen::SanType::DnsName(name.try_into().unwrap())
}

fn violation(result: pki_core::Result<()>) -> (String, bool) {
    match reason(result) {
        InvalidReason::NameConstraintViolation { name, excluded, .. } => (name, excluded),
        other => panic!("expected a name constraint violation, got {other:?}"),
    }
}

#[test]
fn dns_name_constraints_permit_and_exclude_as_webpki_does() {
    let constraints = || rcgen::NameConstraints {
        permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName("example.com".into())],
        excluded_subtrees: vec![rcgen::GeneralSubtree::DnsName("evil.example.com".into())],
    };
    let ok = constrained_chain(
        constraints(),
        vec![
            san_dns("broker.example.com"),
            san_dns("*.fleet.example.com"),
        ],
        "Org",
    );
    ok.verify().unwrap();
    assert!(ok.webpki());

    let excluded = constrained_chain(constraints(), vec![san_dns("evil.example.com")], "Org");
    assert!(!excluded.webpki());
    let (name, is_excluded) = violation(excluded.verify());
    assert_eq!((name.as_str(), is_excluded), ("DNS:evil.example.com", true));
    let err = excluded.verify().unwrap_err().to_string();
    assert!(
        err.contains("name constraints exclude DNS:evil.example.com"),
        "{err}"
    );

    let outside = constrained_chain(constraints(), vec![san_dns("broker.example.org")], "Org");
    assert!(!outside.webpki());
    assert_eq!(
        violation(outside.verify()),
        ("DNS:broker.example.org".into(), false)
    );

    // A wildcard reaching into an excluded subtree.
    let wild = constrained_chain(constraints(), vec![san_dns("*.example.com")], "Org");
    assert!(!wild.webpki());
    assert!(violation(wild.verify()).1);
}

#[test]
fn ip_name_constraints_permit_and_exclude_as_webpki_does() {
    let constraints = || rcgen::NameConstraints {
        permitted_subtrees: vec![rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V4(
            [10, 0, 0, 0],
            [255, 0, 0, 0],
        ))],
        excluded_subtrees: vec![rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V4(
            [10, 9, 0, 0],
            [255, 255, 0, 0],
        ))],
    };
    let ip = |a: &str| rcgen::SanType::IpAddress(a.parse::<IpAddr>().unwrap());
    let ok = constrained_chain(constraints(), vec![ip("10.1.2.3")], "Org");
    ok.verify().unwrap();
    assert!(ok.webpki());
    let excluded = constrained_chain(constraints(), vec![ip("10.9.0.1")], "Org");
    assert!(!excluded.webpki());
    assert_eq!(violation(excluded.verify()), ("IP:10.9.0.1".into(), true));
    let outside = constrained_chain(constraints(), vec![ip("192.168.0.1")], "Org");
    assert!(!outside.webpki());
    assert_eq!(
        violation(outside.verify()),
        ("IP:192.168.0.1".into(), false)
    );
    // An IPv4-mapped IPv6 address is checked as the IPv4 address.
    let mapped = constrained_chain(constraints(), vec![ip("::ffff:10.9.0.1")], "Org");
    assert!(violation(mapped.verify()).1);
}

#[test]
fn email_and_directory_name_constraints_apply_to_sans_and_subject() {
    let email = |e: &str| rcgen::SanType::Rfc822Name(e.try_into().unwrap());
    let mail = || rcgen::NameConstraints {
        permitted_subtrees: vec![rcgen::GeneralSubtree::Rfc822Name("example.com".into())],
        excluded_subtrees: vec![],
    };
    constrained_chain(
        mail(),
        vec![san_dns("a.example"), email("ops@example.com")],
        "Org",
    )
    .verify()
    .unwrap();
    assert_eq!(
        violation(constrained_chain(mail(), vec![email("ops@example.org")], "Org").verify()),
        ("email:ops@example.org".into(), false)
    );

    let mut permitted = rcgen::DistinguishedName::new();
    permitted.push(rcgen::DnType::OrganizationName, "Org");
    let dir = || rcgen::NameConstraints {
        permitted_subtrees: vec![rcgen::GeneralSubtree::DirectoryName(permitted.clone())],
        excluded_subtrees: vec![],
    };
    let inside = constrained_chain(dir(), vec![san_dns("broker.example.com")], "Org");
    // No webpki cross-check here: webpki refuses every directoryName
    // constraint (rustls/webpki#19), which RFC 5280 allows.
    inside.verify().unwrap();
    let other = constrained_chain(dir(), vec![san_dns("broker.example.com")], "Other Org");
    let (name, excluded) = violation(other.verify());
    assert!(name.starts_with("DirName:"), "{name}");
    assert!(!excluded);
}

#[test]
fn unsupported_name_constraint_forms_fail_closed() {
    use x509_cert::ext::pkix::constraints::name::{GeneralSubtree, NameConstraints};
    use x509_cert::ext::pkix::name::GeneralName;
    let uri = NameConstraints {
        permitted_subtrees: Some(vec![GeneralSubtree {
            base: GeneralName::UniformResourceIdentifier(
                der::asn1::Ia5String::new("example.com").unwrap(),
            ),
            minimum: 0,
            maximum: None,
        }]),
        excluded_subtrees: None,
    };
    let value = uri.to_der().unwrap();
    let chain = constrained_chain_with(
        move |p| {
            let mut ext = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 30], value);
            ext.set_criticality(true);
            p.custom_extensions.push(ext);
        },
        vec![san_dns("broker.example.com")],
        "Org",
    );
    match reason(chain.verify()) {
        InvalidReason::UnsupportedNameConstraints { reason, .. } => {
            assert!(reason.contains("URI"), "{reason}");
        }
        other => panic!("expected unsupported constraints, got {other:?}"),
    }
}

// ---------------------------------------------------------- path building

#[test]
fn paths_are_built_through_untrusted_intermediates() {
    let ours = root("Path Root");
    let sub = intermediate(&ours, "Path Intermediate", 50);
    let leaf = server(&sub, vec![dns("broker.example.com")]);
    let anchors = trusted(&ours);
    let through = VerifyOptions {
        intermediates: std::slice::from_ref(sub.certificate()),
        ..VerifyOptions::now()
    };
    verify(&leaf, &anchors, &through).unwrap();
    assert!(webpki_accepts(
        ours.certificate(),
        std::slice::from_ref(sub.certificate()),
        &leaf,
        Some("broker.example.com")
    ));
    // Without it there is no issuer.
    assert!(matches!(
        reason(verify(&leaf, &anchors, &VerifyOptions::now())),
        InvalidReason::IssuerMismatch { .. }
    ));
    // An intermediate is never an anchor, even with partial_chain.
    let partial = VerifyOptions {
        partial_chain: true,
        ..through.clone()
    };
    assert!(verify(&leaf, &[], &partial).is_err());
    let unrelated = root("Other Root");
    assert!(verify(&leaf, &trusted(&unrelated), &partial).is_err());
}

#[test]
fn path_building_backtracks_over_candidates_with_the_same_name() {
    let now = SystemTime::now();
    let ours = CertificateAuthority::new_root(
        &Subject::new("Backtrack Root").unwrap(),
        KeyPair::generate(KeyType::P256).unwrap(),
        Validity::new(now - DAY * 10, now + DAY * 100).unwrap(),
    )
    .unwrap();
    let key = KeyPair::generate(KeyType::P256).unwrap();
    let der = key.to_pkcs8_der().unwrap();
    // The same intermediate key certified twice: once for a window that is
    // already over, once for now.
    let expired = intermediate_with_key(
        &ours,
        "Backtrack Intermediate",
        KeyPair::from_pkcs8_der(&der).unwrap(),
        Validity::new(now - DAY * 3, now - DAY).unwrap(),
    );
    let current = intermediate_with_key(
        &ours,
        "Backtrack Intermediate",
        KeyPair::from_pkcs8_der(&der).unwrap(),
        Validity::days_from_now(50).unwrap(),
    );
    let leaf = server(&current, vec![dns("broker.example.com")]);
    for order in [
        [expired.certificate().clone(), current.certificate().clone()],
        [current.certificate().clone(), expired.certificate().clone()],
    ] {
        let options = VerifyOptions {
            intermediates: &order,
            ..VerifyOptions::now()
        };
        verify(&leaf, &trusted(&ours), &options).unwrap();
    }
    // The expired one alone: its reason is reported.
    let alone = VerifyOptions {
        intermediates: std::slice::from_ref(expired.certificate()),
        ..VerifyOptions::now()
    };
    assert!(matches!(
        reason(verify(&leaf, &trusted(&ours), &alone)),
        InvalidReason::IssuerNotValid { .. }
    ));
}

#[test]
fn path_building_stops_on_loops_and_depth() {
    // A and B certify each other; neither is trusted.
    let a = root("Loop A");
    let b = root("Loop B");
    let a_by_b = intermediate_with_key(
        &b,
        "Loop A",
        KeyPair::from_pkcs8_der(&a.key().to_pkcs8_der().unwrap()).unwrap(),
        Validity::days_from_now(50).unwrap(),
    );
    let b_by_a = intermediate_with_key(
        &a,
        "Loop B",
        KeyPair::from_pkcs8_der(&b.key().to_pkcs8_der().unwrap()).unwrap(),
        Validity::days_from_now(50).unwrap(),
    );
    let leaf = server(&a_by_b, vec![dns("broker.example.com")]);
    let pool = [a_by_b.certificate().clone(), b_by_a.certificate().clone()];
    let options = VerifyOptions {
        intermediates: &pool,
        ..VerifyOptions::now()
    };
    let unrelated = root("Loop Anchor");
    assert!(verify(&leaf, &trusted(&unrelated), &options).is_err());
}

#[test]
fn a_path_length_constraint_is_enforced() {
    // rcgen: root → CA with pathLen 0 → another CA → leaf.
    let ca = |cn: &str, constraint| {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(constraint);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        p.use_authority_key_identifier_extension = true;
        p
    };
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root_params = ca("Len Root", rcgen::BasicConstraints::Unconstrained);
    root_params.use_authority_key_identifier_extension = false;
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::from_ca_cert_der(root.der(), &root_key).unwrap();
    let k1 = rcgen::KeyPair::generate().unwrap();
    let one = ca("Len One", rcgen::BasicConstraints::Constrained(0))
        .signed_by(&k1, &root_issuer)
        .unwrap();
    let one_issuer = rcgen::Issuer::from_ca_cert_der(one.der(), &k1).unwrap();
    let k2 = rcgen::KeyPair::generate().unwrap();
    let two = ca("Len Two", rcgen::BasicConstraints::Unconstrained)
        .signed_by(&k2, &one_issuer)
        .unwrap();
    let two_issuer = rcgen::Issuer::from_ca_cert_der(two.der(), &k2).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["broker.example.com".into()]).unwrap();
    leaf.use_authority_key_identifier_extension = true;
    let leaf = leaf
        .signed_by(&rcgen::KeyPair::generate().unwrap(), &two_issuer)
        .unwrap();
    let cert = |d: &[u8]| Certificate::from_der(d.to_vec()).unwrap();
    let (root, one, two, leaf) = (
        cert(root.der()),
        cert(one.der()),
        cert(two.der()),
        cert(leaf.der()),
    );
    let pool = [one.clone(), two.clone()];
    let options = VerifyOptions {
        intermediates: &pool,
        ..VerifyOptions::now()
    };
    let why = rejected(verify(&leaf, std::slice::from_ref(&root), &options));
    assert!(why.contains("allows 0"), "{why}");
    assert!(!webpki_accepts(&root, &pool, &leaf, None));
}

// ------------------------------------------------- what pki-core issues

/// Every certificate pki-core issues passes the hardened checks: roots,
/// intermediates, client and server leaves, for every key type.
#[test]
fn everything_pki_core_issues_still_verifies() {
    for key_type in KeyType::ALL {
        // RSA-3072 and 4096 key generation is slow; RSA-2048 covers RSA.
        if matches!(key_type, KeyType::Rsa3072 | KeyType::Rsa4096) {
            continue;
        }
        let ours = CertificateAuthority::new_root(
            &Subject::new("Issued Root").unwrap(),
            KeyPair::generate(key_type).unwrap(),
            Validity::days_from_now(100).unwrap(),
        )
        .unwrap();
        let sub = intermediate_with_key(
            &ours,
            "Issued Intermediate",
            KeyPair::generate(key_type).unwrap(),
            Validity::days_from_now(50).unwrap(),
        );
        let as_ca = VerifyOptions {
            expect_ca: true,
            ..VerifyOptions::now()
        };
        verify(sub.certificate(), &trusted(&ours), &as_ca).unwrap();
        for profile in [Profile::Client, Profile::Server] {
            let key = KeyPair::generate(key_type).unwrap();
            let mut params = CsrParams::new(Subject::new("device-1").unwrap());
            params.sans = vec![dns("device-1.example.com")];
            let csr = Csr::new(&params, &key).unwrap();
            let mut issue = IssueParams::new(profile, Validity::days_from_now(10).unwrap());
            issue.csr_names = pki_core::CsrNames::ALL;
            for ca in [&ours, &sub] {
                let leaf = ca.sign(&csr, &issue).unwrap().certificate;
                let options = VerifyOptions {
                    profile: Some(profile),
                    name: Some("device-1.example.com".into()),
                    intermediates: std::slice::from_ref(sub.certificate()),
                    ..VerifyOptions::now()
                };
                verify(&leaf, &trusted(&ours), &options)
                    .unwrap_or_else(|e| panic!("{key_type} {profile}: {e}"));
            }
        }
    }
}
