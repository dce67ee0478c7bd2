//! Cross-checks against independent implementations that need no outside
//! tools: rustls-webpki (the verifier rustls uses), rcgen and x509-parser.
//! OpenSSL and pkilint run in the `verify-tests` package.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use pki_core::{
    Certificate, CertificateAuthority, Crl, CrlParams, Csr, CsrParams, Error, InvalidReason,
    IssueParams, KeyPair, KeyType, Profile, RevocationReason, RevokedEntry, Subject,
    SubjectAltName, Validity, VerifyOptions, verify,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{EndEntityCert, KeyUsage, RevocationOptionsBuilder, anchor_from_trusted_cert};

fn root(key_type: KeyType) -> CertificateAuthority {
    let subject = Subject::new("Interop Root")
        .unwrap()
        .country("US")
        .unwrap()
        .organization("MyOrg")
        .unwrap();
    CertificateAuthority::new_root(
        &subject,
        KeyPair::generate(key_type).unwrap(),
        Validity::days_from_now(3650).unwrap(),
    )
    .unwrap()
}

fn issue(ca: &CertificateAuthority, key_type: KeyType, profile: Profile) -> Certificate {
    let key = KeyPair::generate(key_type).unwrap();
    let mut params = CsrParams::new(Subject::new(format!("dev-{key_type}")).unwrap());
    if profile == Profile::Server {
        params.sans = vec![
            SubjectAltName::Dns("broker.example.com".parse().unwrap()),
            SubjectAltName::Ip("127.0.0.1".parse().unwrap()),
        ];
    }
    let csr = Csr::from_pem(&Csr::new(&params, &key).unwrap().to_pem()).unwrap();
    ca.sign(
        &csr,
        &IssueParams {
            csr_names: pki_core::CsrNames::ALL,
            ..IssueParams::new(profile, Validity::days_from_now(30).unwrap())
        },
    )
    .unwrap()
    .certificate
}

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap(),
    )
}

fn webpki_verify(
    ca: &Certificate,
    leaf: &Certificate,
    usage: KeyUsage,
    crls: &[&webpki::CertRevocationList<'_>],
) -> Result<(), webpki::Error> {
    let ca_der = CertificateDer::from(ca.der());
    let anchor = anchor_from_trusted_cert(&ca_der)?;
    let leaf_der = CertificateDer::from(leaf.der());
    let ee = EndEntityCert::try_from(&leaf_der)?;
    let revocation = if crls.is_empty() {
        None
    } else {
        Some(RevocationOptionsBuilder::new(crls).unwrap().build())
    };
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        now(),
        usage,
        revocation,
        None,
    )
    .map(|_| ())
}

/// Every key type for the CA and every key type for the leaf, both profiles:
/// webpki accepts each with the right usage and refuses the wrong one.
#[test]
fn webpki_accepts_every_key_type_and_profile() {
    for ca_type in KeyType::ALL {
        // RSA-4096 and 3072 key generation is slow: one RSA CA covers RSA signing.
        if matches!(ca_type, KeyType::Rsa3072 | KeyType::Rsa4096) {
            continue;
        }
        let ca = root(ca_type);
        for leaf_type in KeyType::ALL {
            let client = issue(&ca, leaf_type, Profile::Client);
            webpki_verify(ca.certificate(), &client, KeyUsage::client_auth(), &[])
                .unwrap_or_else(|e| panic!("client {leaf_type} under {ca_type}: {e:?}"));
            assert!(
                webpki_verify(ca.certificate(), &client, KeyUsage::server_auth(), &[]).is_err(),
                "a client certificate must not pass as a server"
            );

            let server = issue(&ca, leaf_type, Profile::Server);
            webpki_verify(ca.certificate(), &server, KeyUsage::server_auth(), &[])
                .unwrap_or_else(|e| panic!("server {leaf_type} under {ca_type}: {e:?}"));
            assert!(
                webpki_verify(ca.certificate(), &server, KeyUsage::client_auth(), &[]).is_err()
            );
            let leaf_der = CertificateDer::from(server.der());
            let ee = EndEntityCert::try_from(&leaf_der).unwrap();
            for ok in ["broker.example.com", "127.0.0.1"] {
                ee.verify_is_valid_for_subject_name(&ServerName::try_from(ok).unwrap())
                    .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
            }
            assert!(
                ee.verify_is_valid_for_subject_name(
                    &ServerName::try_from("other.example.com").unwrap()
                )
                .is_err()
            );

            // Our own verifier agrees.
            let trusted = [ca.certificate().clone()];
            let opts = |profile, name: Option<&str>| VerifyOptions {
                profile: Some(profile),
                name: name.map(str::to_owned),
                ..VerifyOptions::now()
            };
            verify(&client, &trusted, &opts(Profile::Client, None)).unwrap();
            verify(
                &server,
                &trusted,
                &opts(Profile::Server, Some("broker.example.com")),
            )
            .unwrap();
            assert!(verify(&client, &trusted, &opts(Profile::Server, None)).is_err());
        }
    }
}

#[test]
fn webpki_honours_our_crl() {
    let ca = root(KeyType::P256);
    let revoked = issue(&ca, KeyType::P256, Profile::Client);
    let kept = issue(&ca, KeyType::P256, Profile::Client);
    let now = SystemTime::now();
    let crl = ca
        .crl(
            &[RevokedEntry {
                serial: revoked.serial(),
                revoked_at: now,
                reason: RevocationReason::KeyCompromise,
            }],
            &CrlParams {
                number: 1,
                this_update: now,
                next_update: now + Duration::from_secs(7 * 86400),
            },
        )
        .unwrap();
    let crl = Crl::from_pem(&crl.to_pem()).unwrap();
    assert_eq!(crl.number(), Some(1));
    assert_eq!(crl.entries()[0].reason, RevocationReason::KeyCompromise);
    assert!(crl.verify_issued_by(ca.certificate()).unwrap());

    let parsed = webpki::OwnedCertRevocationList::from_der(crl.der()).unwrap();
    let list = webpki::CertRevocationList::from(parsed);
    let err = webpki_verify(
        ca.certificate(),
        &revoked,
        KeyUsage::client_auth(),
        &[&list],
    )
    .unwrap_err();
    assert!(matches!(err, webpki::Error::CertRevoked), "{err:?}");
    webpki_verify(ca.certificate(), &kept, KeyUsage::client_auth(), &[&list]).unwrap();

    let trusted = [ca.certificate().clone()];
    let opts = VerifyOptions {
        crl: Some(&crl),
        ..VerifyOptions::now()
    };
    let err = verify(&revoked, &trusted, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Invalid {
                reason: InvalidReason::Revoked { .. },
                ..
            }
        ),
        "{err}"
    );
    verify(&kept, &trusted, &opts).unwrap();

    // A CRL from another CA is refused, not silently trusted.
    let other = root(KeyType::P256);
    let foreign = other
        .crl(
            &[],
            &CrlParams {
                number: 1,
                this_update: now,
                next_update: now + Duration::from_secs(86400),
            },
        )
        .unwrap();
    assert!(!foreign.verify_issued_by(ca.certificate()).unwrap());
}

/// CSRs made by rcgen, an independent implementation, verify and sign.
#[test]
fn rcgen_csrs_verify_and_sign() {
    let ca = root(KeyType::P256);
    let algs: [&'static rcgen::SignatureAlgorithm; 3] = [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ];
    for alg in algs {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["rcgen.example.com".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rcgen-device");
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();

        let csr = Csr::from_pem(&pem).unwrap();
        assert_eq!(csr.common_name().as_deref(), Some("rcgen-device"));
        assert_eq!(
            csr.requested_sans(),
            [SubjectAltName::Dns("rcgen.example.com".parse().unwrap())]
        );
        let cert = ca
            .sign(
                &csr,
                &IssueParams {
                    csr_names: pki_core::CsrNames::ALL,
                    ..IssueParams::new(Profile::Server, Validity::days_from_now(10).unwrap())
                },
            )
            .unwrap()
            .certificate;
        webpki_verify(ca.certificate(), &cert, KeyUsage::server_auth(), &[]).unwrap();
    }
}

/// A tampered CSR (one byte of the subject changed) is refused.
#[test]
fn tampered_csrs_are_refused() {
    let key = KeyPair::generate(KeyType::P256).unwrap();
    let csr = Csr::new(
        &CsrParams::new(Subject::new("honest-device").unwrap()),
        &key,
    )
    .unwrap();
    let mut der = csr.der().to_vec();
    let at = der
        .windows(6)
        .position(|w| w == b"honest")
        .expect("the CN is in the DER");
    der[at] = b'H';
    assert!(matches!(
        Csr::from_der(der),
        Err(Error::CsrSignatureInvalid)
    ));

    // Truncation and garbage: errors, never panics.
    let der = csr.der();
    for cut in [0, 1, 10, der.len() / 2, der.len() - 1] {
        assert!(Csr::from_der(der[..cut].to_vec()).is_err());
    }
}

/// Certificates we issue load in rcgen (through x509-parser) as a CA, and a
/// certificate rcgen signs with our CA's key verifies under our verifier.
#[test]
fn rcgen_loads_our_ca_and_x509_parser_reads_our_certs() {
    let ca = root(KeyType::P256);
    let ca_key = rcgen::KeyPair::from_pem(&ca.key().to_pkcs8_pem().unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.certificate().to_pem(), ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["peer.example.com".into()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let as_client = VerifyOptions {
        profile: Some(Profile::Client),
        ..VerifyOptions::now()
    };
    // rcgen leaves the authority key identifier out unless asked; RFC 5280
    // section 4.2.1.1 requires it, and so does our verifier.
    let without_aki = params.signed_by(&leaf_key, &issuer).unwrap();
    let without_aki = Certificate::from_der(without_aki.der().to_vec()).unwrap();
    assert!(matches!(
        verify(&without_aki, &[ca.certificate().clone()], &as_client),
        Err(Error::Invalid {
            reason: InvalidReason::BadExtension {
                extension: "authority key identifier",
                ..
            },
            ..
        })
    ));
    params.use_authority_key_identifier_extension = true;
    let theirs = params.signed_by(&leaf_key, &issuer).unwrap();
    let theirs = Certificate::from_der(theirs.der().to_vec()).unwrap();
    verify(&theirs, &[ca.certificate().clone()], &as_client).unwrap();

    for profile in [Profile::Client, Profile::Server] {
        let ours = issue(&ca, KeyType::P256, profile);
        let (rest, parsed) = x509_parser::parse_x509_certificate(ours.der()).unwrap();
        assert!(rest.is_empty());
        assert_eq!(parsed.version(), x509_parser::x509::X509Version::V3);
        let bc = parsed.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca && bc.critical);
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert_eq!(eku.client_auth, profile == Profile::Client);
        assert_eq!(eku.server_auth, profile == Profile::Server);
        assert!(parsed.subject_alternative_name().unwrap().is_some());
        // No extension appears twice (RFC 5280 section 4.2).
        let mut oids: Vec<_> = parsed
            .extensions()
            .iter()
            .map(|e| e.oid.to_id_string())
            .collect();
        let n = oids.len();
        oids.sort();
        oids.dedup();
        assert_eq!(oids.len(), n, "duplicate extensions");
        let aki = parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            });
        assert_eq!(aki, ca.certificate().subject_key_id().unwrap());
    }
    let (_, root_parsed) = x509_parser::parse_x509_certificate(ca.certificate().der()).unwrap();
    let ku = root_parsed.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
}

/// A chain root → intermediate (pathLen 0) → leaf verifies in webpki; the
/// intermediate cannot create another CA.
#[test]
fn intermediate_ca_chain() {
    let root = root(KeyType::P384);
    let inter_key = KeyPair::generate(KeyType::P256).unwrap();
    let csr = Csr::new(
        &CsrParams::new(Subject::new("Interop Intermediate").unwrap()),
        &inter_key,
    )
    .unwrap();
    let inter_cert = root
        .sign_intermediate(&csr, Validity::days_from_now(365).unwrap(), 0)
        .unwrap()
        .certificate;
    assert_eq!(inter_cert.ca_constraint().unwrap(), Some(Some(0)));
    let inter = CertificateAuthority::from_parts(inter_cert.clone(), inter_key).unwrap();
    let leaf = issue(&inter, KeyType::P256, Profile::Client);

    let root_der = CertificateDer::from(root.certificate().der());
    let anchor = anchor_from_trusted_cert(&root_der).unwrap();
    let leaf_der = CertificateDer::from(leaf.der());
    let inter_der = CertificateDer::from(inter_cert.der());
    EndEntityCert::try_from(&leaf_der)
        .unwrap()
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[inter_der],
            now(),
            KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap();

    let sub_csr = Csr::new(
        &CsrParams::new(Subject::new("Too Deep").unwrap()),
        &KeyPair::generate(KeyType::P256).unwrap(),
    )
    .unwrap();
    let err = inter
        .sign_intermediate(&sub_csr, Validity::days_from_now(30).unwrap(), 0)
        .unwrap_err();
    assert!(matches!(err, Error::ProfileViolation { .. }), "{err}");
}
