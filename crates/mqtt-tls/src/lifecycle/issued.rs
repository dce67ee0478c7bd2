//! The CA service's answer taken: an issued certificate is accepted only
//! for this request, and only when it checks out (from the CA, for this
//! key, for this name); a refusal becomes [`Error::Rejected`].

use crate::bundle::TlsIdentity;
use crate::error::{Error, Result};
use crate::lifecycle::protocol::{Answer, RequestId};

/// The serial and chain of an `Issued` answer to `request_id`, or the
/// refusal as an error.
pub(super) fn accept(answer: Vec<u8>, request_id: &RequestId) -> Result<(String, String)> {
    let answer: Answer = serde_json::from_slice(&answer)
        .map_err(|e| Error::lifecycle(format!("the CA service's answer does not parse: {e}")))?;
    match answer {
        Answer::Issued {
            request_id: id,
            serial,
            certificate,
        } if &id == request_id => Ok((serial, certificate)),
        Answer::Rejected {
            request_id: id,
            reason,
            detail,
        } if id == request_id.as_str() => Err(Error::Rejected { reason, detail }),
        _ => Err(Error::lifecycle("the CA service answered another request")),
    }
}

/// Checks an issued chain: from the CA in `ca_pem`, a client certificate
/// for `key_pem`, its CN `name`.
pub(super) fn check_issued(
    chain: &str,
    key_pem: &[u8],
    ca_pem: &[u8],
    passphrase: Option<&[u8]>,
    name: &str,
) -> Result<TlsIdentity> {
    checked_name(
        TlsIdentity::from_pem(chain.as_bytes(), key_pem, ca_pem, passphrase),
        name,
    )
}

/// As [`check_issued`], for a key in a token (`key`, recorded at
/// `key_path`).
pub(super) fn check_issued_for_token(
    chain: &str,
    key: pki_core::KeyPair,
    key_path: &std::path::Path,
    ca_pem: &[u8],
    name: &str,
) -> Result<TlsIdentity> {
    checked_name(
        TlsIdentity::from_pem_and_token_key(
            chain.as_bytes(),
            std::sync::Arc::new(key),
            key_path,
            ca_pem,
        ),
        name,
    )
}

fn checked_name(identity: Result<TlsIdentity>, name: &str) -> Result<TlsIdentity> {
    let identity = identity
        .map_err(|e| Error::lifecycle(format!("the issued certificate does not check out: {e}")))?;
    let cn = identity.certificate().common_name();
    if cn.as_deref() != Some(name) {
        return Err(Error::lifecycle(format!(
            "the issued certificate is for {cn:?}, not {name:?}"
        )));
    }
    Ok(identity)
}
