//! The TLS handshake signed by a key in a PKCS#11 token: a rustls
//! [`SigningKey`] over a pki-core [`KeyPair`] that signs in the token
//! (token-keys), so the private key never enters this process.
//!
//! Every connection of a [`crate::TlsIdentity`] shares the one key and so
//! the token's one login and session pool; each handshake asks the token
//! for one signature (the CertificateVerify message). ECDSA (P-256,
//! P-384), Ed25519 and RSA sign; an RSA key signs RSA-PSS where it is
//! offered (TLS 1.3 allows nothing else) and PKCS#1 v1.5 otherwise (TLS 1.2
//! peers that offer no PSS).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use pki_core::{KeyAlgorithm, KeyPair};
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, Signer, SigningKey};

use crate::error::{Error, Result};

/// Whether `key_path` names a key in a token rather than a file: an RFC
/// 7512 `pkcs11:` URI.
pub(crate) fn is_uri(key_path: &Path) -> bool {
    key_path
        .to_str()
        .and_then(|s| s.get(..7))
        .is_some_and(|s| s.eq_ignore_ascii_case("pkcs11:"))
}

/// The token key named by `key_path` (a `pkcs11:` URI), or by the record
/// in the key file at `key_path` (a URI line, then `pin-env=NAME`), with
/// `pin_env` naming the PIN's variable over a recorded one. `None` when the
/// path is a file holding a key, not a record.
pub(crate) fn open(
    key_path: &Path,
    key_file: Option<&[u8]>,
    pin_env: Option<&str>,
) -> Option<Result<KeyPair>> {
    Some(
        spec(key_path, key_file, pin_env)?
            .and_then(|spec| token_keys::open(&spec).map_err(|e| in_token(key_path, e))),
    )
}

/// Where the token key named by `key_path` (or recorded in `key_file`)
/// is; see [`open`].
pub(crate) fn spec(
    key_path: &Path,
    key_file: Option<&[u8]>,
    pin_env: Option<&str>,
) -> Option<Result<token_keys::TokenKeySpec>> {
    let spec = if is_uri(key_path) {
        let text = key_path.to_str().unwrap_or_default();
        token_keys::TokenKeySpec::from_record(text, pin_env)
    } else {
        let text = std::str::from_utf8(key_file?).ok()?;
        token_keys::TokenKeySpec::from_record(text, pin_env)
    }?;
    Some(spec.map_err(|e| in_token(key_path, e)))
}

/// A token's error as the key file's.
pub(crate) fn in_token(key_path: &Path, e: token_keys::Error) -> Error {
    Error::BadKey {
        path: shown_path(key_path),
        reason: format!("the key in a PKCS#11 token: {e}"),
    }
}

/// `key_path` as messages may show it: a `pkcs11:` URI without its PIN
/// (`pin-value=`) or anything else not known to be safe.
pub(crate) fn shown_path(key_path: &Path) -> std::path::PathBuf {
    if is_uri(key_path) {
        let text = key_path.to_string_lossy();
        match text.parse::<token_keys::KeyUri>() {
            Ok(uri) => uri.to_string().into(),
            Err(_) => token_keys::redact(&text).into(),
        }
    } else {
        key_path.to_owned()
    }
}

/// Runs `f`, a call into a token (a signature, a new key: milliseconds on
/// SoftHSM2, up to seconds for an RSA key in a TPM), off the async
/// workers' other tasks: on a multi-threaded runtime the worker hands them
/// on meanwhile.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let multi_threaded = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_threaded {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// A key just made in a token (for an enrollment or a renewal): deleted
/// again when dropped, unless a file records it by then
/// ([`NewTokenKey::keep`]).
pub(crate) struct NewTokenKey(pub(crate) Option<token_keys::TokenKeySpec>);

impl NewTokenKey {
    /// A file names the key now: it stays.
    pub(crate) fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for NewTokenKey {
    fn drop(&mut self) {
        if let Some(spec) = self.0.take()
            && let Err(e) = blocking(|| token_keys::destroy(&spec))
        {
            tracing::warn!("the unused new key stays in its token: {e}");
        }
    }
}

/// A key in a token as rustls signs with it.
pub(crate) struct TokenSigningKey {
    key: Arc<KeyPair>,
}

impl TokenSigningKey {
    pub(crate) fn new(key: Arc<KeyPair>) -> Self {
        Self { key }
    }

    /// The key.
    pub(crate) fn key(&self) -> &KeyPair {
        &self.key
    }

    /// The schemes this key signs, best first.
    fn schemes(&self) -> &'static [SignatureScheme] {
        match self.key.algorithm() {
            KeyAlgorithm::EcdsaP256 => &[SignatureScheme::ECDSA_NISTP256_SHA256],
            KeyAlgorithm::EcdsaP384 => &[SignatureScheme::ECDSA_NISTP384_SHA384],
            KeyAlgorithm::Ed25519 => &[SignatureScheme::ED25519],
            KeyAlgorithm::Rsa { .. } => &[
                SignatureScheme::RSA_PSS_SHA256,
                SignatureScheme::RSA_PKCS1_SHA256,
            ],
            // An algorithm pki-core adds later signs nothing here until
            // its scheme is named.
            _ => &[],
        }
    }
}

impl fmt::Debug for TokenSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigningKey")
            .field("at", &self.key.external_location())
            .finish()
    }
}

impl SigningKey for TokenSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = self
            .schemes()
            .iter()
            .find(|s| offered.contains(s))
            .copied()?;
        Some(Box::new(TokenSigner {
            key: self.key.clone(),
            scheme,
        }))
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        match self.key.algorithm() {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => rustls::SignatureAlgorithm::ECDSA,
            KeyAlgorithm::Ed25519 => rustls::SignatureAlgorithm::ED25519,
            KeyAlgorithm::Rsa { .. } => rustls::SignatureAlgorithm::RSA,
            _ => rustls::SignatureAlgorithm::Anonymous,
        }
    }
}

/// One handshake's signature, by the scheme chosen for it.
struct TokenSigner {
    key: Arc<KeyPair>,
    scheme: SignatureScheme,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("scheme", &self.scheme)
            .finish()
    }
}

impl Signer for TokenSigner {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
        // ECDSA: the DER signature TLS expects (the token's r‖s converted),
        // checked against the public key, as every token signature is.
        let sign = || {
            if self.scheme == SignatureScheme::RSA_PSS_SHA256 {
                self.key.sign_rsa_pss_sha256(message)
            } else {
                self.key.sign(message).map(|s| s.as_bytes().to_vec())
            }
        };
        // A token answers in a millisecond (SoftHSM2) or tens of them (a
        // TPM): on a multi-threaded runtime the worker hands its other
        // tasks on meanwhile.
        let signed = blocking(sign);
        signed.map_err(|e| {
            tracing::warn!("the TLS handshake's signature failed: {e}");
            rustls::Error::General(format!("the client key could not sign: {e}"))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// The client certificate of every handshake: one chain and its token key.
#[derive(Debug)]
pub(crate) struct OneIdentity(pub(crate) Arc<CertifiedKey>);

impl OneIdentity {
    pub(crate) fn new(chain: Vec<CertificateDer<'static>>, key: Arc<TokenSigningKey>) -> Self {
        Self(Arc::new(CertifiedKey::new(chain, key)))
    }
}

impl ResolvesClientCert for OneIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // Without a scheme this key signs, rustls would send no
        // certificate and the broker would refuse the connection with a
        // less telling error: say why here.
        if self.0.key.choose_scheme(sigschemes).is_none() {
            tracing::warn!(
                "the broker accepts none of the signature schemes the token key signs \
                 (it offered {sigschemes:?})"
            );
            return None;
        }
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_key_path_is_shown_without_its_pin() {
        for text in [
            "pkcs11:token=dev;object=k?pin-value=2468",
            "pkcs11:token=dev;colour=red?pin-value=2468",
        ] {
            let shown = shown_path(Path::new(text));
            assert!(!shown.to_string_lossy().contains("2468"), "{shown:?}");
            assert!(shown.to_string_lossy().starts_with("pkcs11:token=dev"));
        }
        let err = in_token(
            Path::new("pkcs11:token=dev;object=k?pin-value=2468"),
            token_keys::Error::Token {
                uri: "x".into(),
                reason: "y".into(),
            },
        );
        assert!(!err.to_string().contains("2468"), "{err}");
        assert_eq!(
            shown_path(Path::new("backend_certs/dev.key")),
            Path::new("backend_certs/dev.key")
        );
    }

    #[test]
    fn a_pkcs11_uri_is_told_from_a_path() {
        assert!(is_uri(Path::new("pkcs11:token=dev;object=k")));
        assert!(is_uri(Path::new("PKCS11:token=dev")));
        assert!(!is_uri(Path::new("backend_certs/dev.key")));
        assert!(!is_uri(Path::new("./pkcs11:odd-file-name")));
    }

    #[test]
    fn an_rsa_key_signs_pss_when_offered_and_pkcs1_otherwise() {
        let key = TokenSigningKey::new(Arc::new(
            KeyPair::generate(pki_core::KeyType::Rsa2048).unwrap(),
        ));
        let both = [
            SignatureScheme::RSA_PKCS1_SHA256,
            SignatureScheme::RSA_PSS_SHA256,
        ];
        assert_eq!(
            key.choose_scheme(&both).unwrap().scheme(),
            SignatureScheme::RSA_PSS_SHA256
        );
        assert_eq!(
            key.choose_scheme(&both[..1]).unwrap().scheme(),
            SignatureScheme::RSA_PKCS1_SHA256
        );
        assert!(
            key.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
                .is_none()
        );
        let ec = TokenSigningKey::new(Arc::new(
            KeyPair::generate(pki_core::KeyType::P384).unwrap(),
        ));
        assert_eq!(
            ec.choose_scheme(&[
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignatureScheme::ECDSA_NISTP384_SHA384
            ])
            .unwrap()
            .scheme(),
            SignatureScheme::ECDSA_NISTP384_SHA384
        );
    }
}
