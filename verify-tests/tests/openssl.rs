//! OpenSSL, the other implementation every broker and script uses, agrees
//! with us: it verifies what we issue, reads the keys we write, and we read
//! the keys and CSRs it makes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, SystemTime};

use peers::{issue, openssl, output, root, run_ok, write};
use pki_core::{
    CertificateAuthority, CrlParams, Csr, Error, IssueParams, KeyAlgorithm, KeyPair, KeyType,
    Profile, RevocationReason, RevokedEntry, SubjectAltName, Validity,
};

fn openssl_cmd() -> Command {
    Command::new(openssl())
}

/// `openssl verify -purpose sslclient|sslserver` accepts every key type in
/// the right profile and refuses the wrong one.
#[test]
fn openssl_verifies_every_key_type_and_profile() {
    let dir = tempfile::tempdir().unwrap();
    for ca_type in [
        KeyType::P256,
        KeyType::P384,
        KeyType::Ed25519,
        KeyType::Rsa2048,
    ] {
        let ca = root(ca_type);
        let ca_path = write(dir.path(), "ca.pem", &ca.certificate().to_pem());
        for leaf_type in KeyType::ALL {
            for (profile, purpose, wrong) in [
                (Profile::Client, "sslclient", "sslserver"),
                (Profile::Server, "sslserver", "sslclient"),
            ] {
                let (_, cert) = issue(&ca, leaf_type, profile);
                let path = write(dir.path(), "leaf.pem", &cert.to_pem());
                let text = run_ok(
                    openssl_cmd()
                        .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
                        .arg(&ca_path)
                        .arg(&path),
                );
                assert!(
                    text.contains(": OK"),
                    "{ca_type}/{leaf_type}/{profile}: {text}"
                );
                let out = output(
                    openssl_cmd()
                        .args(["verify", "-purpose", wrong, "-CAfile"])
                        .arg(&ca_path)
                        .arg(&path),
                );
                assert!(!out.status.success(), "{profile} cert passed as {wrong}");
                if profile == Profile::Server {
                    run_ok(
                        openssl_cmd()
                            .args([
                                "verify",
                                "-verify_hostname",
                                "broker.example.com",
                                "-CAfile",
                            ])
                            .arg(&ca_path)
                            .arg(&path),
                    );
                    run_ok(
                        openssl_cmd()
                            .args(["verify", "-verify_ip", "127.0.0.1", "-CAfile"])
                            .arg(&ca_path)
                            .arg(&path),
                    );
                    let out = output(
                        openssl_cmd()
                            .args(["verify", "-verify_hostname", "other.example.com", "-CAfile"])
                            .arg(&ca_path)
                            .arg(&path),
                    );
                    assert!(!out.status.success());
                }
            }
        }
    }
}

/// OpenSSL prints what we meant: critical CA constraints, usages, SANs.
#[test]
fn openssl_reads_the_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let ca = root(KeyType::P256);
    let ca_text = run_ok(
        openssl_cmd()
            .args(["x509", "-noout", "-text", "-in"])
            .arg(write(dir.path(), "ca.pem", &ca.certificate().to_pem())),
    );
    assert!(
        ca_text.contains("X509v3 Basic Constraints: critical\n                CA:TRUE"),
        "{ca_text}"
    );
    assert!(
        ca_text.contains("X509v3 Key Usage: critical\n                Certificate Sign, CRL Sign")
    );
    assert!(ca_text.contains("X509v3 Subject Key Identifier"));

    let (_, server) = issue(&ca, KeyType::Rsa2048, Profile::Server);
    let text = run_ok(
        openssl_cmd()
            .args(["x509", "-noout", "-text", "-in"])
            .arg(write(dir.path(), "server.pem", &server.to_pem())),
    );
    assert!(text.contains("CA:FALSE"));
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );
    assert!(text.contains("TLS Web Server Authentication"));
    assert!(text.contains("DNS:broker.example.com, IP Address:127.0.0.1"));
    assert!(
        text.contains("Signature Algorithm: ecdsa-with-SHA256"),
        "{text}"
    );
    // The fingerprint we print is OpenSSL's.
    let fp = run_ok(
        openssl_cmd()
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(dir.path().join("server.pem")),
    );
    assert!(fp.contains(&server.sha256_fingerprint()), "{fp}");
    let serial = run_ok(
        openssl_cmd()
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(dir.path().join("server.pem")),
    );
    assert_eq!(serial.trim(), format!("serial={}", server.serial()));
}

/// OpenSSL reads every key we write, and the public half is the one in the
/// certificate; encrypted keys open with the passphrase and only with it.
#[test]
fn openssl_reads_our_keys() {
    let dir = tempfile::tempdir().unwrap();
    for key_type in KeyType::ALL {
        let key = KeyPair::generate(key_type).unwrap();
        let path = write(dir.path(), "key.pem", &key.to_pkcs8_pem().unwrap());
        let pubkey = run_ok(
            openssl_cmd()
                .args(["pkey", "-pubout", "-outform", "DER", "-in"])
                .arg(&path)
                .arg("-out")
                .arg(dir.path().join("pub.der")),
        );
        assert!(pubkey.is_empty(), "{pubkey}");
        assert_eq!(
            std::fs::read(dir.path().join("pub.der")).unwrap(),
            key.public_key_der()
        );

        let enc = write(
            dir.path(),
            "enc.pem",
            &key.to_encrypted_pkcs8_pem(b"s3cret pass").unwrap(),
        );
        run_ok(
            openssl_cmd()
                .args(["pkey", "-noout", "-passin", "pass:s3cret pass", "-in"])
                .arg(&enc),
        );
        let out = output(
            openssl_cmd()
                .args(["pkey", "-noout", "-passin", "pass:wrong", "-in"])
                .arg(&enc),
        );
        assert!(!out.status.success());
    }
}

/// Keys made by OpenSSL in each format it writes load here.
#[test]
fn we_read_openssl_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], KeyAlgorithm); 6] = [
        (
            "pkcs8-p256",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
            KeyAlgorithm::EcdsaP256,
        ),
        (
            "pkcs8-p384",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
            ],
            KeyAlgorithm::EcdsaP384,
        ),
        (
            "pkcs8-ed25519",
            &["genpkey", "-algorithm", "ed25519"],
            KeyAlgorithm::Ed25519,
        ),
        (
            "pkcs8-rsa",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            KeyAlgorithm::Rsa { bits: 2048 },
        ),
        (
            "pkcs1-rsa",
            &["genrsa", "-traditional", "-out", "{out}", "2048"],
            KeyAlgorithm::Rsa { bits: 2048 },
        ),
        // `ecparam -genkey` writes an EC PARAMETERS block before the SEC1 key.
        (
            "sec1-p384",
            &["ecparam", "-genkey", "-name", "secp384r1"],
            KeyAlgorithm::EcdsaP384,
        ),
    ];
    for (name, args, expected) in cases {
        let path = dir.path().join(format!("{name}.pem"));
        let mut cmd = openssl_cmd();
        for arg in args {
            if *arg == "{out}" {
                cmd.arg(&path);
            } else {
                cmd.arg(arg);
            }
        }
        if !args.contains(&"{out}") {
            cmd.arg("-out").arg(&path);
        }
        run_ok(&mut cmd);
        let pem = std::fs::read_to_string(&path).unwrap();
        let key = KeyPair::from_pem(&pem).unwrap_or_else(|e| panic!("{name}: {e}\n{pem}"));
        assert_eq!(key.algorithm(), expected, "{name}");
        let expected_pub = dir.path().join(format!("{name}.pub.der"));
        run_ok(
            openssl_cmd()
                .args(["pkey", "-pubout", "-outform", "DER", "-in"])
                .arg(&path)
                .arg("-out")
                .arg(&expected_pub),
        );
        assert!(
            key.matches_public_key(&std::fs::read(&expected_pub).unwrap()),
            "{name}"
        );
    }

    // An OpenSSL-encrypted PKCS#8 key (PBES2, PBKDF2, AES-256-CBC).
    let plain = dir.path().join("pkcs8-p256.pem");
    let enc = dir.path().join("enc.pem");
    run_ok(
        openssl_cmd()
            .args([
                "pkcs8",
                "-topk8",
                "-v2",
                "aes-256-cbc",
                "-passout",
                "pass:hunter2",
                "-in",
            ])
            .arg(&plain)
            .arg("-out")
            .arg(&enc),
    );
    let pem = std::fs::read_to_string(&enc).unwrap();
    assert!(matches!(KeyPair::from_pem(&pem), Err(Error::KeyEncrypted)));
    assert!(matches!(
        KeyPair::from_pem_with_passphrase(&pem, b"nope"),
        Err(Error::WrongPassphrase)
    ));
    KeyPair::from_pem_with_passphrase(&pem, b"hunter2").unwrap();

    // Legacy OpenSSL encryption gets a message that says how to convert it.
    let legacy = dir.path().join("legacy.pem");
    run_ok(
        openssl_cmd()
            .args(["ec", "-aes256", "-passout", "pass:x", "-in"])
            .arg(dir.path().join("sec1-p384.pem"))
            .arg("-out")
            .arg(&legacy),
    );
    let err = KeyPair::from_pem(&std::fs::read_to_string(&legacy).unwrap()).unwrap_err();
    assert!(err.to_string().contains("openssl pkcs8 -topk8"), "{err}");
}

/// CSRs made by `openssl req` verify and sign; weak, tampered and
/// unsupported ones are refused.
#[test]
fn openssl_csrs() {
    let dir = tempfile::tempdir().unwrap();
    let ca = root(KeyType::P256);
    let key = dir.path().join("dev.key");
    run_ok(
        openssl_cmd()
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&key),
    );
    let csr_path = dir.path().join("dev.csr");
    run_ok(
        openssl_cmd()
            .args(["req", "-new", "-key"])
            .arg(&key)
            .args([
                "-subj",
                "/C=US/O=MyOrg/CN=broker",
                "-addext",
                "subjectAltName=DNS:mqtt.example.com,IP:10.1.2.3,email:x@example.com",
                "-out",
            ])
            .arg(&csr_path),
    );
    let csr = Csr::from_pem(&std::fs::read_to_string(&csr_path).unwrap()).unwrap();
    assert_eq!(csr.subject(), "CN=broker,O=MyOrg,C=US");
    assert_eq!(
        csr.requested_sans(),
        [
            SubjectAltName::Dns("mqtt.example.com".parse().unwrap()),
            SubjectAltName::Ip("10.1.2.3".parse().unwrap())
        ]
    );
    let cert = ca
        .sign(
            &csr,
            // The CSR's names, granted: what this test checks OpenSSL reads.
            &IssueParams {
                csr_names: pki_core::CsrNames::ALL,
                ..IssueParams::new(Profile::Server, Validity::days_from_now(30).unwrap())
            },
        )
        .unwrap()
        .certificate;
    let ca_path = write(dir.path(), "ca.pem", &ca.certificate().to_pem());
    let cert_path = write(dir.path(), "cert.pem", &cert.to_pem());
    run_ok(
        openssl_cmd()
            .args([
                "verify",
                "-purpose",
                "sslserver",
                "-verify_hostname",
                "mqtt.example.com",
                "-CAfile",
            ])
            .arg(&ca_path)
            .arg(&cert_path),
    );
    // The key OpenSSL made matches the certificate we issued for it.
    let key_pub = run_ok(openssl_cmd().args(["pkey", "-pubout", "-in"]).arg(&key));
    let cert_pub = run_ok(
        openssl_cmd()
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(&cert_path),
    );
    assert_eq!(key_pub, cert_pub);

    // RSA-1024 is too weak to certify.
    let weak = dir.path().join("weak.csr");
    run_ok(
        openssl_cmd()
            .args(["req", "-new", "-newkey", "rsa:1024", "-nodes", "-keyout"])
            .arg(dir.path().join("weak.key"))
            .args(["-subj", "/CN=weak", "-out"])
            .arg(&weak),
    );
    let err = Csr::from_pem(&std::fs::read_to_string(&weak).unwrap()).unwrap_err();
    assert!(
        matches!(err, Error::WeakKey { ref algorithm } if algorithm == "RSA-1024"),
        "{err}"
    );

    // A secp256k1 key is not one we accept.
    let k1 = dir.path().join("k1.csr");
    run_ok(
        openssl_cmd()
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:secp256k1",
                "-nodes",
                "-keyout",
            ])
            .arg(dir.path().join("k1.key"))
            .args(["-subj", "/CN=k1", "-out"])
            .arg(&k1),
    );
    let err = Csr::from_pem(&std::fs::read_to_string(&k1).unwrap()).unwrap_err();
    assert!(err.to_string().contains("secp256k1"), "{err}");

    // A SHA-1 signed request is refused.
    let sha1 = dir.path().join("sha1.csr");
    run_ok(
        openssl_cmd()
            .args(["req", "-new", "-sha1", "-key"])
            .arg(&key)
            .args(["-subj", "/CN=old", "-out"])
            .arg(&sha1),
    );
    let err = Csr::from_pem(&std::fs::read_to_string(&sha1).unwrap()).unwrap_err();
    assert!(err.to_string().contains("ecdsa-with-SHA1"), "{err}");

    // Tampered: the CN changed after signing.
    let der_path = dir.path().join("dev.der");
    run_ok(
        openssl_cmd()
            .args(["req", "-outform", "DER", "-in"])
            .arg(&csr_path)
            .arg("-out")
            .arg(&der_path),
    );
    let mut der = std::fs::read(&der_path).unwrap();
    let at = der.windows(6).position(|w| w == b"broker").unwrap();
    der[at] = b'B';
    assert!(matches!(
        Csr::from_der(der),
        Err(Error::CsrSignatureInvalid)
    ));
}

/// OpenSSL verifies our CRL's signature and rejects the revoked certificate
/// with it.
#[test]
fn openssl_honours_our_crl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = root(KeyType::P256);
    let (_, revoked) = issue(&ca, KeyType::P256, Profile::Client);
    let (_, kept) = issue(&ca, KeyType::P256, Profile::Client);
    let now = SystemTime::now();
    let crl = ca
        .crl(
            &[RevokedEntry {
                serial: revoked.serial(),
                revoked_at: now,
                reason: RevocationReason::Superseded,
            }],
            &CrlParams {
                number: 3,
                this_update: now,
                next_update: now + Duration::from_secs(86_400),
            },
        )
        .unwrap();
    let ca_path = write(dir.path(), "ca.pem", &ca.certificate().to_pem());
    let crl_path = write(dir.path(), "crl.pem", &crl.to_pem());
    let text = run_ok(
        openssl_cmd()
            .args(["crl", "-noout", "-text", "-CAfile"])
            .arg(&ca_path)
            .arg("-in")
            .arg(&crl_path),
    );
    assert!(text.contains("verify OK"), "{text}");
    assert!(
        text.contains("X509v3 CRL Number: \n                3"),
        "{text}"
    );
    assert!(text.contains("Superseded"), "{text}");

    let out = output(
        openssl_cmd()
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(&ca_path)
            .arg("-CRLfile")
            .arg(&crl_path)
            .arg(write(dir.path(), "revoked.pem", &revoked.to_pem())),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("certificate revoked")
            || String::from_utf8_lossy(&out.stderr).contains("certificate revoked")
    );
    run_ok(
        openssl_cmd()
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(&ca_path)
            .arg("-CRLfile")
            .arg(&crl_path)
            .arg(write(dir.path(), "kept.pem", &kept.to_pem())),
    );
}

/// A CA made by OpenSSL loads as a CertificateAuthority and signs; a key
/// that is not the certificate's is refused.
#[test]
fn openssl_made_ca_signs() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ca.key");
    let cert = dir.path().join("ca.pem");
    run_ok(
        openssl_cmd()
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=OpenSSL Root",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    let cert_pem = std::fs::read_to_string(&cert).unwrap();
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let ca = CertificateAuthority::from_pem(&cert_pem, &key_pem, None).unwrap();
    let (_, leaf) = issue(&ca, KeyType::P256, Profile::Client);
    run_ok(
        openssl_cmd()
            .args(["verify", "-purpose", "sslclient", "-CAfile"])
            .arg(&cert)
            .arg(write(dir.path(), "leaf.pem", &leaf.to_pem())),
    );
    let other = KeyPair::generate(KeyType::P256)
        .unwrap()
        .to_pkcs8_pem()
        .unwrap();
    let err = CertificateAuthority::from_pem(&cert_pem, &other, None).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");
}
