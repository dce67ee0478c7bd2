//! The original Python design's three steps, in Rust: a root CA, a client
//! key and CSR, and the CA signing the CSR.
//!
//! ```text
//! cargo run -p pki-core --example original_flow            # print a summary
//! cargo run -p pki-core --example original_flow -- out/    # also write the files
//! ```
//!
//! With a folder, it writes the original layout below it:
//! `root_cert/root_ca_cert.pem`, `root_cert/root_ca.key`,
//! `backend_certs/client1.key`, `client1_csr.pem`, `client1_cert.pem`.
//! (The `provision` CLI does this properly: 0600 keys, no overwrites.)

use std::path::Path;

use pki_core::{
    CertificateAuthority, Csr, CsrParams, IssueParams, KeyPair, KeyType, Profile, Subject,
    Validity, VerifyOptions, verify,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Root certificate (RootCertificateGenerator.generate_certificate).
    let root_subject = Subject::new("MyRootCA")?
        .country("US")?
        .organization("MyOrg")?;
    let ca = CertificateAuthority::new_root(
        &root_subject,
        KeyPair::generate(KeyType::P256)?,
        Validity::days_from_now(3650)?,
    )?;

    // 2. Client key and CSR (ClientCertificateGenerator.create_csr).
    let client_key = KeyPair::generate(KeyType::P256)?;
    let subject = Subject::new("Client1")?
        .country("US")?
        .organization("MyOrg")?;
    let csr = Csr::new(&CsrParams::new(subject), &client_key)?;

    // 3. The CA signs it (CertificateAuthority.sign_csr).
    let issued = ca.sign(
        &csr,
        &IssueParams::new(Profile::Client, Validity::days_from_now(365)?),
    )?;
    let cert = &issued.certificate;
    verify(
        cert,
        std::slice::from_ref(ca.certificate()),
        &VerifyOptions {
            profile: Some(Profile::Client),
            ..VerifyOptions::now()
        },
    )?;

    println!("root CA:     {}", ca.certificate().subject());
    println!("client cert: {} (serial {})", cert.subject(), cert.serial());
    println!("  SANs:      {:?}", cert.subject_alt_names()?);
    println!("  usage:     {:?}", cert.extended_key_usage_names()?);
    println!("  SHA-256:   {}", cert.sha256_fingerprint());

    if let Some(dir) = std::env::args_os().nth(1) {
        let dir = Path::new(&dir);
        std::fs::create_dir_all(dir.join("root_cert"))?;
        std::fs::create_dir_all(dir.join("backend_certs"))?;
        std::fs::write(
            dir.join("root_cert/root_ca_cert.pem"),
            ca.certificate().to_pem(),
        )?;
        std::fs::write(
            dir.join("root_cert/root_ca.key"),
            ca.key().to_pkcs8_pem()?.as_bytes(),
        )?;
        std::fs::write(
            dir.join("backend_certs/client1.key"),
            client_key.to_pkcs8_pem()?.as_bytes(),
        )?;
        std::fs::write(dir.join("backend_certs/client1_csr.pem"), csr.to_pem())?;
        std::fs::write(dir.join("backend_certs/client1_cert.pem"), cert.to_pem())?;
        println!("wrote the files below {}", dir.display());
    }
    Ok(())
}
