//! Enrollment: a device with a shared claim certificate asks for its own
//! identity ([`enroll`]); the key and the request are kept until the answer
//! is in, so a device that gave up or crashed asks the very same again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pki_core::{Csr, CsrParams, KeyPair, KeyType, Subject};
use zeroize::Zeroizing;

use crate::bundle::{ClientCert, TlsIdentity};
use crate::client::MqttClient;
use crate::error::{Error, Rejection, Result};
use crate::lifecycle::files::{sync_dir, write_file};
use crate::lifecycle::issued::{accept, check_issued, check_issued_for_token};
use crate::lifecycle::protocol::{EnrollRequest, RequestId, topics};
use crate::options::ConnectOptions;
use crate::qos::QoS;
use crate::token::{NewTokenKey, blocking};

/// What [`enroll`] needs.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// The enrollment broker (its `client_id` is replaced by a random
    /// `enroll-…` one: many devices share the claim).
    pub options: ConnectOptions,
    /// The device name to enroll.
    pub name: String,
    /// The new key's type.
    pub key_type: KeyType,
    /// Where to write `NAME.key` (0600) and `NAME_cert.pem`.
    pub out: PathBuf,
    /// The CA file the new identity will trust (the claim's).
    pub ca_cert_path: PathBuf,
    /// How long to wait for the answer, sending the request again every
    /// `resend` meanwhile (same id: one certificate).
    pub timeout: Duration,
    /// See `timeout`.
    pub resend: Duration,
    /// Replace existing files.
    pub force: bool,
    /// Make the key inside this PKCS#11 token (sensitive, never
    /// extractable; labelled as the URI says): `NAME.key` then records the
    /// key's URI, not a key.
    pub token: Option<token_keys::TokenKeySpec>,
}

impl Enrollment {
    /// Enrolls `name` through the broker in `options`, files in `out`,
    /// trusting `ca_cert_path`: a P-256 key, 30 s to get an answer.
    pub fn new(
        options: ConnectOptions,
        name: impl Into<String>,
        out: impl Into<PathBuf>,
        ca_cert_path: impl Into<PathBuf>,
    ) -> Self {
        Self {
            options,
            name: name.into(),
            key_type: KeyType::P256,
            out: out.into(),
            ca_cert_path: ca_cert_path.into(),
            timeout: Duration::from_secs(30),
            resend: Duration::from_secs(5),
            force: false,
            token: None,
        }
    }
}

/// Enrolls a device: connects with the `claim` identity, sends a new key's
/// CSR for `request.name`, and writes the certificate the CA service
/// answers with (checked: issued by the CA file, for this name, for this
/// key) as `OUT/NAME.key` (0600) and `OUT/NAME_cert.pem`. Returns the new
/// identity's files. A refusal is [`Error::Rejected`] with its reason;
/// nothing is written then.
pub async fn enroll(claim: &TlsIdentity, request: &Enrollment) -> Result<ClientCert> {
    let claim_name = claim
        .certificate()
        .common_name()
        .ok_or_else(|| Error::lifecycle("the claim certificate has no CN (its MQTT username)"))?;
    // The name becomes file names in `out`: one plain component, never a
    // path or a hidden file.
    if request.name.is_empty()
        || request.name.starts_with('.')
        || request.name.contains(['/', '\\', '\0'])
    {
        return Err(Error::lifecycle(format!(
            "{:?} cannot be a device name: it becomes file names in {} (nothing was sent)",
            request.name,
            request.out.display()
        )));
    }
    let key_path = request.out.join(format!("{}.key", request.name));
    let cert_path = request.out.join(format!("{}_cert.pem", request.name));
    // The key and the request (its id, its CSR) are kept, the key 0600,
    // until the answer is in: a device that gave up waiting, or crashed,
    // sends the very same request again and gets the same certificate.
    let pending_key = request.out.join(format!("{}.key.enrolling", request.name));
    let pending_id = request.out.join(format!("{}.enrolling.json", request.name));
    // One enrollment of a name at a time in this folder.
    std::fs::create_dir_all(&request.out).map_err(|source| Error::WriteFile {
        path: request.out.clone(),
        source,
    })?;
    let lock_path = request.out.join(format!("{}.enrolling.lock", request.name));
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| Error::WriteFile {
            path: lock_path.clone(),
            source,
        })?;
    lock.try_lock().map_err(|_| {
        Error::lifecycle(format!(
            "{} is being enrolled by another process ({} is locked)",
            request.name,
            lock_path.display()
        ))
    })?;
    let resumed = pending_key.exists() && pending_id.exists();
    if !request.force && !resumed {
        for p in [&key_path, &cert_path] {
            if p.exists() {
                return Err(Error::WouldReplace { path: p.clone() });
            }
        }
    }
    let ca_pem = crate::bundle::read(&request.ca_cert_path)?;
    let read = |p: &Path| {
        crate::secrets::read_capped_text(p).map_err(|source| Error::ReadFile {
            path: p.to_owned(),
            source,
        })
    };
    // A key made in a token is recorded (its URI) where a key would be
    // written.
    let mut made = None;
    let (key, request_id, body) = if resumed {
        let text = Zeroizing::new(read(&pending_key)?);
        let key = match crate::token::spec(&pending_key, Some(text.as_bytes()), None) {
            Some(spec) => {
                let spec = spec?;
                let key = blocking(|| token_keys::open(&spec))
                    .map_err(|e| crate::token::in_token(&pending_key, e))?;
                made = Some(spec);
                key
            }
            None => KeyPair::from_pem(&text)
                .map_err(|e| Error::lifecycle_pki(&pending_key.display().to_string(), e))?,
        };
        let body = read(&pending_id)?;
        let sent: EnrollRequest = serde_json::from_str(&body)
            .map_err(|e| Error::lifecycle(format!("{}: {e}", pending_id.display())))?;
        let same_key = Csr::from_pem(&sent.csr)
            .ok()
            .and_then(|c| c.public_key_der().ok())
            .is_some_and(|spki| key.matches_public_key(&spki));
        if sent.name != request.name || !same_key {
            return Err(Error::lifecycle(format!(
                "{} and {} do not belong together (another name, or another key): remove \
                 both to start afresh",
                pending_id.display(),
                pending_key.display()
            )));
        }
        (key, sent.request_id, body.into_bytes())
    } else {
        let key = match &request.token {
            Some(spec) => {
                let (key, exact) = blocking(|| token_keys::generate(spec, request.key_type))
                    .map_err(|e| crate::token::in_token(&pending_key, e))?;
                made = Some(exact);
                key
            }
            None => KeyPair::generate(request.key_type)
                .map_err(|e| Error::lifecycle_pki("making a key", e))?,
        };
        // Until the request is kept, a key made in a token goes on failure.
        let mut unrecorded = NewTokenKey(made.clone());
        let subject =
            Subject::new(&request.name).map_err(|e| Error::lifecycle_pki("the device name", e))?;
        let csr = Csr::new(&CsrParams::new(subject), &key)
            .map_err(|e| Error::lifecycle_pki("making the CSR", e))?;
        let id = RequestId::random();
        let body = serde_json::to_vec(&EnrollRequest {
            request_id: id.clone(),
            name: request.name.clone(),
            csr: csr.to_pem(),
        })
        .map_err(|e| Error::lifecycle(format!("encoding the request: {e}")))?;
        std::fs::create_dir_all(&request.out).map_err(|source| Error::WriteFile {
            path: request.out.clone(),
            source,
        })?;
        let pem = match &made {
            Some(spec) => Zeroizing::new(spec.record()),
            None => key
                .to_pkcs8_pem()
                .map_err(|e| Error::lifecycle_pki("encoding the key", e))?,
        };
        if let Err(e) = write_file(&pending_key, pem.as_bytes(), true) {
            let _ = std::fs::remove_file(&pending_key);
            if pending_key.exists() {
                unrecorded.keep();
            }
            return Err(e);
        }
        // NAME.key.enrolling names the key now: it stays with the file.
        unrecorded.keep();
        write_file(&pending_id, &body, true)?;
        (key, id, body)
    };

    let mut options = request.options.clone();
    options.client_id = format!("enroll-{request_id}");
    options.clean_session = true;
    let answer = ask(
        &options,
        claim,
        &topics::enroll_response(&claim_name, request_id.as_str()),
        &topics::enroll_request(&claim_name),
        body,
        request.timeout,
        request.resend,
    )
    .await?;
    let (serial, chain) = match accept(answer, &request_id) {
        Ok(issued) => issued,
        Err(e) => {
            // Refused for good (the policy, the name, the CSR): the next
            // attempt starts afresh. Anything else keeps the request.
            if matches!(&e, Error::Rejected { reason, .. } if *reason != Rejection::BadRequest) {
                let _ = std::fs::remove_file(&pending_key);
                let _ = std::fs::remove_file(&pending_id);
                // The key goes once no file names it.
                if !pending_key.exists() {
                    drop(NewTokenKey(made));
                }
            }
            return Err(e);
        }
    };
    let key_pem = match made {
        Some(spec) => {
            check_issued_for_token(&chain, key, &key_path, &ca_pem, &request.name)?;
            Zeroizing::new(spec.record())
        }
        None => {
            let pem = key
                .to_pkcs8_pem()
                .map_err(|e| Error::lifecycle_pki("encoding the key", e))?;
            check_issued(&chain, pem.as_bytes(), &ca_pem, None, &request.name)?;
            pem
        }
    };
    // The certificate, then the key it was checked against (from memory),
    // then the kept request goes: a crash in between leaves the request,
    // and the next attempt finishes.
    write_file(&cert_path, chain.as_bytes(), request.force || resumed)?;
    write_file(&key_path, key_pem.as_bytes(), request.force || resumed)?;
    let _ = std::fs::remove_file(&pending_key);
    let _ = std::fs::remove_file(&pending_id);
    let _ = std::fs::remove_file(&lock_path);
    if let Some(dir) = key_path.parent() {
        sync_dir(dir);
    }
    tracing::info!("enrolled {} (serial {serial})", request.name);
    Ok(ClientCert::new(
        cert_path,
        key_path,
        request.ca_cert_path.clone(),
    ))
}

/// Connects, subscribes to `response`, publishes `body` on `request`
/// (again every `resend`), and returns the first answer, disconnecting.
async fn ask(
    options: &ConnectOptions,
    identity: &TlsIdentity,
    response: &str,
    request: &str,
    body: Vec<u8>,
    timeout: Duration,
    resend: Duration,
) -> Result<Vec<u8>> {
    let (client, mut connection) = MqttClient::new(options, identity)?;
    connection.connect().await?;
    let runner = tokio::spawn(connection.run());
    let result = async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        client
            .subscribe(response, QoS::AtLeastOnce, move |m| {
                let _ = tx.send(m.payload);
                async { Ok::<(), std::io::Error>(()) }
            })?
            .granted()
            .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            client
                .publish(request, body.clone(), QoS::AtLeastOnce, false)
                .await?;
            let wait = (tokio::time::Instant::now() + resend).min(deadline);
            match tokio::time::timeout_at(wait, rx.recv()).await {
                Ok(Some(answer)) => return Ok(answer.to_vec()),
                Ok(None) => return Err(Error::Closed),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::NoAnswer {
                        topic: response.to_owned(),
                        waited: timeout,
                    });
                }
                Err(_) => {}
            }
        }
    }
    .await;
    let _ = client.disconnect().await;
    let _ = runner.await;
    result
}
