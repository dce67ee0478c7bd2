//! The client bundle: certificate (chain), key and CA, checked before any
//! network traffic and turned into a TLS configuration (rustls).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use pki_core::{Certificate, KeyPair, Profile, VerifyOptions};
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};
use crate::options::TlsVersions;

/// Where a client's certificate, key and CA live: the original design's
/// `ClientCert(cert_path, key_path, ca_cert_path)`.
///
/// Deserializes from a `[tls]` table:
///
/// ```toml
/// [tls]
/// cert_path = "backend_certs/client1_cert.pem"
/// key_path = "backend_certs/client1.key"
/// ca_cert_path = "root_cert/root_ca_cert.pem"
/// # passphrase_env = "CLIENT_KEY_PASSPHRASE"   # for an encrypted key
/// ```
///
/// The key may live in a PKCS#11 token (an HSM, a TPM through
/// tpm2-pkcs11, SoftHSM2): `key_path` is then its RFC 7512 URI, or a key
/// file holding that URI (what `provision csr --key-uri` writes), and
/// `pin_env` names the variable holding the token's PIN. The handshake
/// signs in the token; the key never enters the process.
///
/// ```toml
/// [tls]
/// cert_path = "backend_certs/sensor-1_cert.pem"
/// key_path = "pkcs11:token=devices;object=sensor-1?module-path=/usr/lib/softhsm/libsofthsm2.so"
/// ca_cert_path = "root_cert/root_ca_cert.pem"
/// pin_env = "DEVICE_PIN"
/// ```
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCert {
    /// The client certificate, optionally followed by intermediates.
    pub cert_path: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1 PEM; PKCS#8 may be
    /// encrypted), or a key in a PKCS#11 token: its `pkcs11:` URI, or a
    /// file holding the URI.
    pub key_path: PathBuf,
    /// The CA certificate(s) that issued the broker's and our certificate.
    pub ca_cert_path: PathBuf,
    /// The environment variable holding the key's passphrase, if encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_env: Option<String>,
    /// The environment variable holding the PIN of the token the key is
    /// in (over a `pin-env=` recorded in the key file; a URI's
    /// `pin-source=` wins over both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_env: Option<String>,
}

/// Shows `key_path` without a PIN a `pkcs11:` URI may carry.
impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &crate::token::shown_path(&self.key_path))
            .field("ca_cert_path", &self.ca_cert_path)
            .field("passphrase_env", &self.passphrase_env)
            .field("pin_env", &self.pin_env)
            .finish()
    }
}

impl ClientCert {
    /// A bundle from three paths.
    pub fn new(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
        ca_cert_path: impl Into<PathBuf>,
    ) -> Self {
        Self {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            ca_cert_path: ca_cert_path.into(),
            passphrase_env: None,
            pin_env: None,
        }
    }

    /// The bundle with its relative paths taken relative to `base` (the
    /// folder of the configuration file that named them).
    pub fn relative_to(mut self, base: &Path) -> Self {
        for p in [
            &mut self.cert_path,
            &mut self.key_path,
            &mut self.ca_cert_path,
        ] {
            if p.is_relative() && !crate::token::is_uri(p) {
                *p = base.join(&*p);
            }
        }
        self
    }

    /// Reads and checks the three files (see [`TlsIdentity::from_pem`]);
    /// a key in a token is opened (logged in) and checked against the
    /// certificate the same way.
    pub fn load(&self) -> Result<TlsIdentity> {
        let key_file = if crate::token::is_uri(&self.key_path) {
            None
        } else {
            Some(read(&self.key_path)?)
        };
        if let Some(key) =
            crate::token::open(&self.key_path, key_file.as_deref(), self.pin_env.as_deref())
        {
            let cert = read(&self.cert_path)?;
            let ca = read(&self.ca_cert_path)?;
            return TlsIdentity::with_token_key(
                (&cert, &self.cert_path),
                (Arc::new(key?), &self.key_path),
                (&ca, &self.ca_cert_path),
                SystemTime::now(),
            );
        }
        let passphrase = self.passphrase()?;
        TlsIdentity::from_pem_files(
            &self.cert_path,
            &self.key_path,
            &self.ca_cert_path,
            passphrase.as_ref().map(|p| p.as_slice()),
        )
    }

    /// The key's passphrase from `passphrase_env`, when it names a variable
    /// ([`crate::secrets::passphrase_from_env`]: unset or empty refused).
    pub(crate) fn passphrase(&self) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        self.passphrase_env
            .as_deref()
            .map(crate::secrets::passphrase_from_env)
            .transpose()
            .map_err(|e| Error::BadKey {
                path: self.key_path.clone(),
                reason: e.to_string(),
            })
    }
}

/// Reads a bundle file ([`crate::secrets::read_capped`]), naming it on
/// failure.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    crate::secrets::read_capped(path).map_err(|source| Error::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// A checked client identity: certificate chain, key and trusted CAs.
///
/// Building one proves, before any network traffic, that the key is the
/// certificate's, that the certificate is valid now, is a client
/// certificate, and was issued by the CA.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: IdentityKey,
    cas: Vec<CertificateDer<'static>>,
    leaf: Certificate,
}

/// Where an identity's key is.
#[derive(Debug, Clone)]
enum IdentityKey {
    /// In this process (read from a file).
    Pem(Arc<PrivateKeyDer<'static>>),
    /// In a PKCS#11 token: every handshake signs there.
    Token(Arc<crate::token::TokenSigningKey>),
}

impl TlsIdentity {
    /// Reads the three PEM files; see [`TlsIdentity::from_pem`].
    pub fn from_pem_files(
        cert_path: &Path,
        key_path: &Path,
        ca_path: &Path,
        passphrase: Option<&[u8]>,
    ) -> Result<Self> {
        let cert = read(cert_path)?;
        let key = read(key_path)?;
        let ca = read(ca_path)?;
        Self::check(
            Sources {
                cert: (&cert, cert_path),
                key: (&key, key_path),
                ca: (&ca, ca_path),
            },
            passphrase,
            SystemTime::now(),
        )
    }

    /// Builds an identity from PEM bytes (the paths in errors are then
    /// `<cert>`, `<key>` and `<ca>`).
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8], passphrase: Option<&[u8]>) -> Result<Self> {
        Self::check(
            Sources {
                cert: (cert, Path::new("<cert>")),
                key: (key, Path::new("<key>")),
                ca: (ca, Path::new("<ca>")),
            },
            passphrase,
            SystemTime::now(),
        )
    }

    fn check(src: Sources<'_>, passphrase: Option<&[u8]>, now: SystemTime) -> Result<Self> {
        let (key_pem, key_path) = src.key;
        let key = private_key(key_pem, key_path, passphrase)?;
        let key_pair = match &key {
            PrivateKeyDer::Pkcs8(k) => KeyPair::from_pkcs8_der(k.secret_pkcs8_der()),
            _ => KeyPair::from_pem(&String::from_utf8_lossy(key_pem)),
        }
        .map_err(|e| Error::BadKey {
            path: key_path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::checked(
            src.cert,
            (&key_pair, key_path),
            src.ca,
            IdentityKey::Pem(Arc::new(key)),
            now,
        )
    }

    /// An identity from a PEM certificate chain and CA and a key in a
    /// token, checked as [`TlsIdentity::from_pem`] checks one (the paths in
    /// errors are `<cert>`, `key_path` and `<ca>`).
    pub(crate) fn from_pem_and_token_key(
        cert: &[u8],
        key: Arc<KeyPair>,
        key_path: &Path,
        ca: &[u8],
    ) -> Result<Self> {
        Self::with_token_key(
            (cert, Path::new("<cert>")),
            (key, key_path),
            (ca, Path::new("<ca>")),
            SystemTime::now(),
        )
    }

    /// An identity whose key (`key`, found at the URI or key file `path`)
    /// is in a PKCS#11 token, checked as [`TlsIdentity::from_pem`] checks
    /// one from files.
    fn with_token_key(
        cert: (&[u8], &Path),
        (key, key_path): (Arc<KeyPair>, &Path),
        ca: (&[u8], &Path),
        now: SystemTime,
    ) -> Result<Self> {
        let signing = Arc::new(crate::token::TokenSigningKey::new(key));
        let shown = crate::token::shown_path(key_path);
        Self::checked(
            cert,
            (signing.key(), &shown),
            ca,
            IdentityKey::Token(signing.clone()),
            now,
        )
    }

    fn checked(
        (cert_pem, cert_path): (&[u8], &Path),
        (key_pair, key_path): (&KeyPair, &Path),
        (ca_pem, ca_path): (&[u8], &Path),
        key: IdentityKey,
        now: SystemTime,
    ) -> Result<Self> {
        let chain = certs(cert_pem, cert_path)?;
        let cas = certs(ca_pem, ca_path)?;
        let parse = |der: &CertificateDer<'_>, path: &Path| {
            Certificate::from_der(der.to_vec()).map_err(|e| Error::BadCertificate {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        };
        let leaf = parse(&chain[0], cert_path)?;
        let intermediates = chain[1..]
            .iter()
            .map(|c| parse(c, cert_path))
            .collect::<Result<Vec<_>>>()?;
        let trusted = cas
            .iter()
            .map(|c| parse(c, ca_path))
            .collect::<Result<Vec<_>>>()?;

        let spki = leaf.public_key_der().map_err(|e| Error::BadCertificate {
            path: cert_path.to_owned(),
            reason: e.to_string(),
        })?;
        if !key_pair.matches_public_key(&spki) {
            return Err(Error::KeyMismatch {
                key_path: key_path.to_owned(),
                cert_path: cert_path.to_owned(),
            });
        }

        let validity = leaf.validity();
        if now < validity.not_before() {
            return Err(Error::NotYetValid {
                path: cert_path.to_owned(),
                not_before: validity.not_before(),
                now,
            });
        }
        if now > validity.not_after() {
            return Err(Error::Expired {
                path: cert_path.to_owned(),
                not_after: validity.not_after(),
                now,
            });
        }
        let usages = leaf.tls_usages().map_err(|e| Error::BadCertificate {
            path: cert_path.to_owned(),
            reason: e.to_string(),
        })?;
        if !usages.client_auth || leaf.is_ca() {
            let names = leaf.extended_key_usage_names().unwrap_or_default();
            return Err(Error::NotClientCertificate {
                path: cert_path.to_owned(),
                reason: if leaf.is_ca() {
                    "it is a CA certificate".to_owned()
                } else {
                    format!("its extended key usage is {}", names.join(", "))
                },
            });
        }
        verify_chain(&leaf, &intermediates, &trusted, now).map_err(|reason| {
            Error::NotIssuedByCa {
                cert_path: cert_path.to_owned(),
                ca_path: ca_path.to_owned(),
                reason,
            }
        })?;

        Ok(Self {
            chain,
            key,
            cas,
            leaf,
        })
    }

    /// The client certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.leaf
    }

    /// The TLS configuration of a connection with this identity: our CAs
    /// as the only roots, client authentication with the full chain, the
    /// aws-lc-rs provider, the TLS versions of `versions`. Server-name
    /// checking stays on.
    pub(crate) fn tls_config(&self, versions: TlsVersions) -> Result<Arc<ClientConfig>> {
        let versions: &[&'static rustls::SupportedProtocolVersion] = match versions {
            TlsVersions::Default => rustls::DEFAULT_VERSIONS,
            TlsVersions::Tls12Only => &[&rustls::version::TLS12],
            TlsVersions::Tls13Only => &[&rustls::version::TLS13],
        };
        let tls = |e: rustls::Error| Error::TlsConfig {
            reason: e.to_string(),
        };
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.cas {
            roots.add(ca.clone()).map_err(tls)?;
        }
        // Always an explicit provider: the process-wide default panics when
        // two providers are compiled into one binary.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(tls)?
            .with_root_certificates(roots);
        let mut config = match &self.key {
            IdentityKey::Pem(key) => builder
                .with_client_auth_cert(self.chain.clone(), key.clone_key())
                .map_err(tls)?,
            IdentityKey::Token(key) => builder.with_client_cert_resolver(Arc::new(
                crate::token::OneIdentity::new(self.chain.clone(), key.clone()),
            )),
        };
        // A client talks to one broker: rustls' default session cache is
        // sized for 256 server names (about 14 KB a config, allocated up
        // front) and keeps up to 8 TLS 1.3 tickets a name (OpenSSL sends
        // 2 after each handshake, each with a copy of the broker's chain),
        // which a fleet of clients in one process pays per client. The
        // cache stays per identity: sharing one would let a client resume a
        // session another identity authenticated.
        config.resumption =
            rustls::client::Resumption::store(Arc::new(OneBrokerSessions::default()));
        Ok(Arc::new(config))
    }
}

/// A TLS session store for a client that talks to one broker: the latest
/// session for the latest server name, nothing more.
#[derive(Debug, Default)]
struct OneBrokerSessions {
    slot: std::sync::Mutex<Option<SessionSlot>>,
}

#[derive(Debug)]
struct SessionSlot {
    name: rustls::pki_types::ServerName<'static>,
    kx_hint: Option<rustls::NamedGroup>,
    tls12: Option<rustls::client::Tls12ClientSessionValue>,
    tls13: Option<rustls::client::Tls13ClientSessionValue>,
}

impl OneBrokerSessions {
    /// Runs `f` on the slot for `name`, made (and any other name's
    /// dropped) when `create`.
    fn with<T>(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
        create: bool,
        f: impl FnOnce(&mut SessionSlot) -> Option<T>,
    ) -> Option<T> {
        // A panic elsewhere while holding this lock leaves a cache behind:
        // at worst a session that is not resumed.
        let mut slot = self
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if create && slot.as_ref().is_none_or(|s| s.name != *name) {
            *slot = Some(SessionSlot {
                name: name.to_owned(),
                kx_hint: None,
                tls12: None,
                tls13: None,
            });
        }
        slot.as_mut().filter(|s| s.name == *name).and_then(f)
    }
}

impl rustls::client::ClientSessionStore for OneBrokerSessions {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.with(&name, true, |s| s.kx_hint.replace(group));
    }

    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.with(name, false, |s| s.kx_hint)
    }

    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.with(&name, true, |s| s.tls12.replace(value));
    }

    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.with(name, false, |s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.with(name, false, |s| s.tls12.take());
    }

    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        // The newest ticket replaces the one before: tickets are single
        // use, and the broker sends fresh ones after every handshake.
        self.with(&name, true, |s| s.tls13.replace(value));
    }

    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.with(name, false, |s| s.tls13.take())
    }
}

struct Sources<'a> {
    cert: (&'a [u8], &'a Path),
    key: (&'a [u8], &'a Path),
    ca: (&'a [u8], &'a Path),
}

fn certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::BadCertificate {
            path: path.to_owned(),
            reason: format!("malformed PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(
    pem: &[u8],
    path: &Path,
    passphrase: Option<&[u8]>,
) -> Result<PrivateKeyDer<'static>> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let Some(passphrase) = passphrase else {
            return Err(Error::BadKey {
                path: path.to_owned(),
                reason:
                    "the key is encrypted: name the environment variable holding its passphrase \
                         (passphrase_env in a bundle, --key-passphrase-env VAR with provision)"
                        .into(),
            });
        };
        let key =
            KeyPair::from_pem_with_passphrase(&text, passphrase).map_err(|e| Error::BadKey {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let der = key.to_pkcs8_der().map_err(|e| Error::BadKey {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        return Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec())));
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::BadKey {
        path: path.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key found (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY PEM)"
                    .into()
            }
            other => format!("malformed PEM: {other}"),
        },
    })
}

/// Verifies leaf → intermediates → a CA of the bundle with pki-core's
/// verifier, as one path: the constraints of every CA on it (name
/// constraints, path lengths) apply to the leaf.
fn verify_chain(
    leaf: &Certificate,
    intermediates: &[Certificate],
    cas: &[Certificate],
    now: SystemTime,
) -> std::result::Result<(), String> {
    let options = VerifyOptions {
        at: now,
        profile: Some(Profile::Client),
        name: None,
        crl: None,
        // As rustls takes the CA file: every certificate in it is an
        // anchor the operator chose.
        partial_chain: true,
        intermediates,
        expect_ca: false,
    };
    pki_core::verify(leaf, cas, &options).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pki_core::{CertificateAuthority, Csr, CsrParams, IssueParams, KeyType, Subject, Validity};

    use super::*;

    struct Parts {
        ca: CertificateAuthority,
        cert: String,
        key: KeyPair,
    }

    fn parts(profile: Profile) -> Parts {
        let ca = CertificateAuthority::new_root(
            &Subject::new("Bundle Root").unwrap(),
            KeyPair::generate(KeyType::P256).unwrap(),
            Validity::days_from_now(30).unwrap(),
        )
        .unwrap();
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let mut params = CsrParams::new(Subject::new("dev").unwrap());
        params.sans = vec![pki_core::SubjectAltName::Dns(
            "dev.example.com".parse().unwrap(),
        )];
        let csr = Csr::new(&params, &key).unwrap();
        let cert = ca
            .sign(
                &csr,
                &IssueParams {
                    csr_names: pki_core::CsrNames::ALL,
                    ..IssueParams::new(profile, Validity::days_from_now(10).unwrap())
                },
            )
            .unwrap()
            .certificate
            .to_pem();
        Parts { ca, cert, key }
    }

    #[test]
    fn deserializes_from_a_tls_table() {
        #[derive(serde::Deserialize)]
        struct Config {
            tls: ClientCert,
        }
        let config: Config = toml::from_str(
            r#"
            [tls]
            cert_path = "backend_certs/client1_cert.pem"
            key_path = "backend_certs/client1.key"
            ca_cert_path = "root_cert/root_ca_cert.pem"
            passphrase_env = "KEY_PASS"
            "#,
        )
        .unwrap();
        assert_eq!(config.tls.key_path, Path::new("backend_certs/client1.key"));
        assert_eq!(config.tls.passphrase_env.as_deref(), Some("KEY_PASS"));
        assert!(toml::from_str::<Config>("[tls]\ncert_path = \"a\"\n").is_err());
        let moved = config.tls.relative_to(Path::new("/etc/app"));
        assert_eq!(
            moved.cert_path,
            Path::new("/etc/app/backend_certs/client1_cert.pem")
        );
        let absolute = ClientCert::new("/a.pem", "/b.key", "/c.pem").relative_to(Path::new("/x"));
        assert_eq!(absolute.key_path, Path::new("/b.key"));
    }

    #[test]
    fn loads_from_pem_and_builds_a_tls_config() {
        let p = parts(Profile::Client);
        let ca = p.ca.certificate().to_pem();
        let key = p.key.to_pkcs8_pem().unwrap();
        let id =
            TlsIdentity::from_pem(p.cert.as_bytes(), key.as_bytes(), ca.as_bytes(), None).unwrap();
        assert_eq!(id.certificate().common_name().as_deref(), Some("dev"));
        let config = id.tls_config(TlsVersions::Default).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        for versions in [TlsVersions::Tls12Only, TlsVersions::Tls13Only] {
            id.tls_config(versions).unwrap();
        }
    }

    #[test]
    fn encrypted_keys_need_their_passphrase() {
        let p = parts(Profile::Client);
        let ca = p.ca.certificate().to_pem();
        let enc = p.key.to_encrypted_pkcs8_pem(b"pw").unwrap();
        let err = TlsIdentity::from_pem(p.cert.as_bytes(), enc.as_bytes(), ca.as_bytes(), None)
            .unwrap_err();
        assert!(err.to_string().contains("the key is encrypted"), "{err}");
        let err = TlsIdentity::from_pem(
            p.cert.as_bytes(),
            enc.as_bytes(),
            ca.as_bytes(),
            Some(b"no"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
        TlsIdentity::from_pem(
            p.cert.as_bytes(),
            enc.as_bytes(),
            ca.as_bytes(),
            Some(b"pw"),
        )
        .unwrap();
    }

    #[test]
    fn refuses_bad_bundles_with_the_file_named() {
        let p = parts(Profile::Client);
        let ca = p.ca.certificate().to_pem();
        let key = p.key.to_pkcs8_pem().unwrap();
        type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a str);
        let cases: [Case<'_>; 4] = [
            (
                b"",
                key.as_bytes(),
                ca.as_bytes(),
                "<cert>: no certificate found",
            ),
            (
                p.cert.as_bytes(),
                b"nothing",
                ca.as_bytes(),
                "<key>: no private key found",
            ),
            (
                p.cert.as_bytes(),
                key.as_bytes(),
                b"",
                "<ca>: no certificate found",
            ),
            (
                &p.cert.as_bytes()[..p.cert.len() - 40],
                key.as_bytes(),
                ca.as_bytes(),
                "<cert>: malformed PEM",
            ),
        ];
        for (cert, key, ca, expected) in cases {
            let err = TlsIdentity::from_pem(cert, key, ca, None)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(expected), "{err}");
        }
        let server = parts(Profile::Server);
        let server_ca = server.ca.certificate().to_pem();
        let server_key = server.key.to_pkcs8_pem().unwrap();
        let err = TlsIdentity::from_pem(
            server.cert.as_bytes(),
            server_key.as_bytes(),
            server_ca.as_bytes(),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, Error::NotClientCertificate { .. }), "{err}");
    }

    /// A certificate file holding the leaf and its intermediate, and the
    /// root alone as the CA file (`provision init-ca --intermediate`): the
    /// leaf is checked through the intermediate to the root, and the whole
    /// chain goes to rustls (a broker with the root as its CA file needs
    /// the intermediate from the client).
    #[test]
    fn a_chain_through_an_intermediate_is_checked_and_sent_whole() {
        let root = CertificateAuthority::new_root(
            &Subject::new("Chain Root").unwrap(),
            KeyPair::generate(KeyType::P256).unwrap(),
            Validity::days_from_now(30).unwrap(),
        )
        .unwrap();
        let int_key = KeyPair::generate(KeyType::P256).unwrap();
        let int_csr = Csr::new(
            &CsrParams::new(Subject::new("Chain Intermediate").unwrap()),
            &int_key,
        )
        .unwrap();
        let int_cert = root
            .sign_intermediate(&int_csr, Validity::days_from_now(20).unwrap(), 0)
            .unwrap()
            .certificate;
        let intermediate = CertificateAuthority::from_parts(int_cert.clone(), int_key).unwrap();
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let csr = Csr::new(&CsrParams::new(Subject::new("dev").unwrap()), &key).unwrap();
        let leaf = intermediate
            .sign(
                &csr,
                &IssueParams::new(Profile::Client, Validity::days_from_now(10).unwrap()),
            )
            .unwrap()
            .certificate;
        let key_pem = key.to_pkcs8_pem().unwrap();
        let root_pem = root.certificate().to_pem();
        let chain_pem = format!("{}{}", leaf.to_pem(), int_cert.to_pem());

        let id = TlsIdentity::from_pem(
            chain_pem.as_bytes(),
            key_pem.as_bytes(),
            root_pem.as_bytes(),
            None,
        )
        .unwrap();
        assert_eq!(id.certificate().der(), leaf.der());
        assert_eq!(id.chain.len(), 2);
        assert_eq!(id.chain[1].as_ref(), int_cert.der());
        assert!(
            id.tls_config(TlsVersions::Default)
                .unwrap()
                .client_auth_cert_resolver
                .has_certs()
        );

        // Without the intermediate the root alone cannot vouch for the leaf.
        let err = TlsIdentity::from_pem(
            leaf.to_pem().as_bytes(),
            key_pem.as_bytes(),
            root_pem.as_bytes(),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, Error::NotIssuedByCa { .. }), "{err}");
        // An intermediate from another root does not chain to this one.
        let other = CertificateAuthority::new_root(
            &Subject::new("Chain Root").unwrap(),
            KeyPair::generate(KeyType::P256).unwrap(),
            Validity::days_from_now(30).unwrap(),
        )
        .unwrap();
        let err = TlsIdentity::from_pem(
            chain_pem.as_bytes(),
            key_pem.as_bytes(),
            other.certificate().to_pem().as_bytes(),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, Error::NotIssuedByCa { .. }), "{err}");
    }

    #[test]
    fn not_yet_valid_is_reported_with_its_date() {
        let p = parts(Profile::Client);
        let ca = p.ca.certificate().to_pem();
        let key = p.key.to_pkcs8_pem().unwrap();
        let early = SystemTime::now() - Duration::from_secs(3600);
        let err = TlsIdentity::check(
            Sources {
                cert: (p.cert.as_bytes(), Path::new("c.pem")),
                key: (key.as_bytes(), Path::new("k.pem")),
                ca: (ca.as_bytes(), Path::new("ca.pem")),
            },
            None,
            early,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("c.pem: certificate is not valid before"),
            "{err}"
        );
    }
}
