//! A device's lifecycle over MQTT, the device side: enrollment with a
//! shared claim certificate ([`enroll`]) and renewal of a live identity
//! ([`Renewer`]), on the `pki/v1` protocol that `provision serve` answers
//! (`docs/lifecycle.md`). The private key never leaves the device: it
//! sends a CSR and gets a certificate back.
//!
//! The wire types ([`EnrollRequest`], [`RenewRequest`], [`RenewDone`],
//! [`Answer`]) and the topics ([`topics`]) are shared with the service.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use pki_core::{Certificate, Csr, CsrParams, KeyAlgorithm, KeyPair, KeyType, Subject};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::bundle::{ClientCert, TlsIdentity};
use crate::client::MqttClient;
use crate::error::{Error, Result};
use crate::options::{Backoff, ConnectOptions};
use crate::qos::QoS;

/// The protocol's version, the first two levels of every topic.
pub const VERSION: &str = "pki/v1";

/// The topics of the protocol. `{claim}` and `{name}` are the MQTT
/// username (the certificate's CN) of the requester, which the broker's
/// ACL holds it to.
pub mod topics {
    /// What the CA service subscribes to for enrollments.
    pub const ENROLL_REQUESTS: &str = "pki/v1/enroll/+/req";
    /// What the CA service subscribes to for renewals.
    pub const RENEW_REQUESTS: &str = "pki/v1/renew/+/req";
    /// What the CA service subscribes to for confirmations.
    pub const RENEW_DONE: &str = "pki/v1/renew/+/done";

    /// Where a device holding the claim `claim` asks to enroll.
    pub fn enroll_request(claim: &str) -> String {
        format!("pki/v1/enroll/{claim}/req")
    }
    /// Where the answer to enrollment request `request_id` comes.
    pub fn enroll_response(claim: &str, request_id: &str) -> String {
        format!("pki/v1/enroll/{claim}/res/{request_id}")
    }
    /// Where device `name` asks to renew.
    pub fn renew_request(name: &str) -> String {
        format!("pki/v1/renew/{name}/req")
    }
    /// Where the answer to renewal request `request_id` comes.
    pub fn renew_response(name: &str, request_id: &str) -> String {
        format!("pki/v1/renew/{name}/res/{request_id}")
    }
    /// Every answer for device `name`.
    pub fn renew_responses(name: &str) -> String {
        format!("pki/v1/renew/{name}/res/+")
    }
    /// Where device `name` says it is connected with its new certificate.
    pub fn renew_done(name: &str) -> String {
        format!("pki/v1/renew/{name}/done")
    }

    /// The requester (`{claim}` or `{name}`) and the kind (`enroll`,
    /// `renew`) and last level (`req`, `done`) of a request topic.
    pub fn parse(topic: &str) -> Option<(&str, &str, &str)> {
        let rest = topic.strip_prefix("pki/v1/")?;
        let mut levels = rest.split('/');
        let (kind, who, what) = (levels.next()?, levels.next()?, levels.next()?);
        (levels.next().is_none() && !who.is_empty()).then_some((kind, who, what))
    }
}

/// A request's id: 1 to 64 of `A-Z a-z 0-9 _ -` (it is a topic level).
/// The same id gets the same answer, however often it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    /// A fresh random id (128 bits from the system's secure generator,
    /// hex): nobody can guess another device's id and answer for it first.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        if provider.secure_random.fill(&mut bytes).is_err() {
            // Never seen; the id is still unique in practice.
            bytes = fastrand::u128(..).to_be_bytes();
        }
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s))
        } else {
            Err("a request_id is 1 to 64 of A-Z a-z 0-9 _ -".into())
        }
    }
}

impl From<RequestId> for String {
    fn from(id: RequestId) -> Self {
        id.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Enrollment: published on [`topics::enroll_request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The request's id; the answer comes on [`topics::enroll_response`].
    pub request_id: RequestId,
    /// The device name to enroll (the new certificate's CN).
    pub name: String,
    /// The CSR (PEM), its subject's CN the name.
    pub csr: String,
}

/// Renewal: published on [`topics::renew_request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The request's id; the answer comes on [`topics::renew_response`].
    pub request_id: RequestId,
    /// The serial (hex) of the current certificate.
    pub serial: String,
    /// The current certificate (PEM), whose key made `proof`.
    pub certificate: String,
    /// The CSR (PEM) for the new key, its CN the device name.
    pub csr: String,
    /// The current key's signature over the CSR's DER, base64.
    pub proof: String,
}

/// Published on [`topics::renew_done`] once connected with the new
/// certificate: the service then revokes the old one (superseded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewDone {
    /// The renewal request's id.
    pub request_id: RequestId,
    /// The new certificate's serial (hex).
    pub serial: String,
}

/// The service's answer to a request, the same for every copy of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Answer {
    /// A certificate was issued.
    Issued {
        /// The request's id.
        request_id: RequestId,
        /// The new certificate's serial (hex).
        serial: String,
        /// The new certificate, then any intermediate CA (PEM).
        certificate: String,
    },
    /// The request was refused.
    Rejected {
        /// The request's id (empty when the request could not be read).
        request_id: String,
        /// Why, for programs.
        reason: Rejection,
        /// Why, for people.
        detail: String,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rejection {
    /// The request is not valid JSON of the right shape.
    BadRequest,
    /// The requester is not a claim this CA issued (enrollment).
    NotAClaim,
    /// The claim's policy has ended.
    ClaimExpired,
    /// The claim's policy does not allow this name.
    NameNotAllowed,
    /// The name already has a valid certificate.
    AlreadyEnrolled,
    /// The claim enrolled as many devices as it may.
    QuotaExhausted,
    /// The CSR does not verify, or its subject or key is not acceptable.
    BadCsr,
    /// The current certificate is not one this CA issued.
    UnknownCertificate,
    /// The current certificate is revoked, expired or superseded.
    NotCurrent,
    /// The names do not agree (topic, certificate, CSR).
    NameMismatch,
    /// The proof is not the current key's signature over the CSR.
    BadProof,
}

impl Rejection {
    /// Its name on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::NotAClaim => "not_a_claim",
            Self::ClaimExpired => "claim_expired",
            Self::NameNotAllowed => "name_not_allowed",
            Self::AlreadyEnrolled => "already_enrolled",
            Self::QuotaExhausted => "quota_exhausted",
            Self::BadCsr => "bad_csr",
            Self::UnknownCertificate => "unknown_certificate",
            Self::NotCurrent => "not_current",
            Self::NameMismatch => "name_mismatch",
            Self::BadProof => "bad_proof",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
        }
    }
}

fn lifecycle(reason: impl Into<String>) -> Error {
    Error::Lifecycle {
        reason: reason.into(),
    }
}

fn pki(what: &str, e: pki_core::Error) -> Error {
    lifecycle(format!("{what}: {e}"))
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
        .ok_or_else(|| lifecycle("the claim certificate has no CN (its MQTT username)"))?;
    // The name becomes file names in `out`: one plain component, never a
    // path or a hidden file.
    if request.name.is_empty()
        || request.name.starts_with('.')
        || request.name.contains(['/', '\\', '\0'])
    {
        return Err(lifecycle(format!(
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
        lifecycle(format!(
            "{} is being enrolled by another process ({} is locked)",
            request.name,
            lock_path.display()
        ))
    })?;
    let resumed = pending_key.exists() && pending_id.exists();
    if !request.force && !resumed {
        for p in [&key_path, &cert_path] {
            if p.exists() {
                return Err(lifecycle(format!(
                    "{} exists; pass force to replace it (nothing was sent)",
                    p.display()
                )));
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
    let (key, request_id, body) = if resumed {
        let key = KeyPair::from_pem(&Zeroizing::new(read(&pending_key)?))
            .map_err(|e| pki(&pending_key.display().to_string(), e))?;
        let body = read(&pending_id)?;
        let sent: EnrollRequest = serde_json::from_str(&body)
            .map_err(|e| lifecycle(format!("{}: {e}", pending_id.display())))?;
        let same_key = Csr::from_pem(&sent.csr)
            .ok()
            .and_then(|c| c.public_key_der().ok())
            .is_some_and(|spki| key.matches_public_key(&spki));
        if sent.name != request.name || !same_key {
            return Err(lifecycle(format!(
                "{} and {} do not belong together (another name, or another key): remove \
                 both to start afresh",
                pending_id.display(),
                pending_key.display()
            )));
        }
        (key, sent.request_id, body.into_bytes())
    } else {
        let key = KeyPair::generate(request.key_type).map_err(|e| pki("making a key", e))?;
        let subject = Subject::new(&request.name).map_err(|e| pki("the device name", e))?;
        let csr = Csr::new(&CsrParams::new(subject), &key).map_err(|e| pki("making the CSR", e))?;
        let id = RequestId::random();
        let body = serde_json::to_vec(&EnrollRequest {
            request_id: id.clone(),
            name: request.name.clone(),
            csr: csr.to_pem(),
        })
        .map_err(|e| lifecycle(format!("encoding the request: {e}")))?;
        std::fs::create_dir_all(&request.out).map_err(|source| Error::WriteFile {
            path: request.out.clone(),
            source,
        })?;
        let pem = key.to_pkcs8_pem().map_err(|e| pki("encoding the key", e))?;
        write_file(&pending_key, pem.as_bytes(), true)?;
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
            }
            return Err(e);
        }
    };
    let key_pem = key.to_pkcs8_pem().map_err(|e| pki("encoding the key", e))?;
    check_issued(&chain, key_pem.as_bytes(), &ca_pem, None, &request.name)?;
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

/// The serial and chain of an `Issued` answer to `request_id`, or the
/// refusal as an error.
fn accept(answer: Vec<u8>, request_id: &RequestId) -> Result<(String, String)> {
    let answer: Answer = serde_json::from_slice(&answer)
        .map_err(|e| lifecycle(format!("the CA service's answer does not parse: {e}")))?;
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
        _ => Err(lifecycle("the CA service answered another request")),
    }
}

/// Checks an issued chain: from the CA in `ca_pem`, a client certificate
/// for `key_pem`, its CN `name`.
fn check_issued(
    chain: &str,
    key_pem: &[u8],
    ca_pem: &[u8],
    passphrase: Option<&[u8]>,
    name: &str,
) -> Result<TlsIdentity> {
    let identity = TlsIdentity::from_pem(chain.as_bytes(), key_pem, ca_pem, passphrase)
        .map_err(|e| lifecycle(format!("the issued certificate does not check out: {e}")))?;
    let cn = identity.certificate().common_name();
    if cn.as_deref() != Some(name) {
        return Err(lifecycle(format!(
            "the issued certificate is for {cn:?}, not {name:?}"
        )));
    }
    Ok(identity)
}

/// Writes `bytes` to `path` through a temporary file in the same folder
/// (created 0600), synced, then renamed into place; with `replace` false
/// an existing file is kept and this fails.
fn write_file(path: &Path, bytes: &[u8], replace: bool) -> Result<()> {
    let err = |source: std::io::Error| Error::WriteFile {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    if replace {
        tmp.persist(path).map_err(|e| err(e.error))?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| err(e.error))?;
    }
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| Error::WriteFile {
        path: to.to_owned(),
        source,
    })
}

/// When to renew and how to retry.
#[derive(Debug, Clone)]
pub struct RenewOptions {
    /// The fraction of the lifetime after which to renew (default 2/3).
    pub at: f64,
    /// Spread of the renewal time, as a fraction of the lifetime either
    /// side (default 0.05), so that a fleet issued together does not renew
    /// at the same instant.
    pub jitter: f64,
    /// How long to wait for the answer (and for the reconnection with the
    /// new identity). Default 30 s.
    pub timeout: Duration,
    /// Delays between failed attempts (default 5 s growing to 10 min).
    pub retry: Backoff,
}

impl Default for RenewOptions {
    fn default() -> Self {
        Self {
            at: 2.0 / 3.0,
            jitter: 0.05,
            timeout: Duration::from_secs(30),
            retry: Backoff {
                initial: Duration::from_secs(5),
                max: Duration::from_secs(600),
            },
        }
    }
}

/// A finished renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The previous certificate's serial (hex).
    pub previous: String,
    /// The new certificate's serial (hex).
    pub serial: String,
    /// When the new certificate expires.
    pub not_after: SystemTime,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// Renews a live client's identity before it expires: a new key and CSR,
/// the request (with a proof made by the current key), the answer checked,
/// the new files written beside the old (`.new`, key 0600), the client
/// switched to the new identity on the same session, the old files
/// replaced, and the service told (`done`), which then revokes the old
/// certificate. On any failure the old identity keeps working.
#[derive(Clone)]
pub struct Renewer {
    client: MqttClient,
    files: ClientCert,
    options: RenewOptions,
    name: String,
    pending: Pending,
}

impl fmt::Debug for Renewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renewer")
            .field("name", &self.name)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The files of a replacement in progress: `NAME_cert.pem.new`,
/// `NAME.key.new`.
fn staged(files: &ClientCert) -> (PathBuf, PathBuf) {
    let add = |p: &Path| {
        let mut s = p.as_os_str().to_owned();
        s.push(".new");
        PathBuf::from(s)
    };
    (add(&files.cert_path), add(&files.key_path))
}

/// Finishes a replacement of `files` that a crash interrupted: the new
/// certificate and key were checked and written as `.new` before the old
/// ones were replaced, so a `.new` key means the replacement goes on (the
/// service revokes the old certificate after a grace period in any case).
/// Returns whether there was one. Call before loading the files.
pub fn settle(files: &ClientCert) -> Result<bool> {
    let (cert_new, key_new) = staged(files);
    if !key_new.exists() {
        // A lone `.new` certificate is from before its key was written.
        if cert_new.exists() {
            let _ = std::fs::remove_file(&cert_new);
        }
        return Ok(false);
    }
    if cert_new.exists() {
        rename(&cert_new, &files.cert_path)?;
    }
    rename(&key_new, &files.key_path)?;
    if let Some(dir) = files.key_path.parent() {
        sync_dir(dir);
    }
    Ok(true)
}

fn key_type_of(algorithm: KeyAlgorithm) -> KeyType {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => KeyType::P256,
        KeyAlgorithm::EcdsaP384 => KeyType::P384,
        KeyAlgorithm::Ed25519 => KeyType::Ed25519,
        KeyAlgorithm::Rsa { bits } if bits >= 4096 => KeyType::Rsa4096,
        KeyAlgorithm::Rsa { bits } if bits >= 3072 => KeyType::Rsa3072,
        _ => KeyType::Rsa2048,
    }
}

impl Renewer {
    /// A renewer for `client`, whose identity is in `files`; subscribes
    /// `client` to its answers (`pki/v1/renew/NAME/res/+`). Finishes an
    /// interrupted replacement first ([`settle`]).
    pub fn new(client: MqttClient, files: ClientCert, options: RenewOptions) -> Result<Self> {
        let settled = settle(&files)?;
        let current = files.load()?;
        if settled {
            // The client was made from the files before they were settled:
            // it takes the identity now in them from its next connection.
            client.set_identity(&current)?;
        }
        let name = current
            .certificate()
            .common_name()
            .ok_or_else(|| lifecycle("the certificate has no CN (its MQTT username)"))?;
        let pending: Pending = Arc::default();
        let routes = pending.clone();
        let prefix = format!("pki/v1/renew/{name}/res/");
        // Subscribed for the client's life (renewed after a reconnect
        // without a session); an answer nobody waits for is dropped.
        client.subscribe(topics::renew_responses(&name), QoS::AtLeastOnce, move |m| {
            if let Some(id) = m.topic.strip_prefix(&prefix)
                && let Some(tx) = crate::client::lock(&routes).remove(id)
            {
                let _ = tx.send(m.payload.to_vec());
            }
            async { Ok::<(), std::io::Error>(()) }
        })?;
        Ok(Self {
            client,
            files,
            options,
            name,
            pending,
        })
    }

    /// When the certificate in the files is due for renewal: `at` of its
    /// lifetime, spread by `jitter`.
    pub fn due(&self) -> Result<SystemTime> {
        let cert = self.files.load()?.certificate().clone();
        Ok(due(&cert, &self.options))
    }

    /// Renews now (see the type's description).
    pub async fn renew_now(&self) -> Result<Renewed> {
        settle(&self.files)?;
        let passphrase = self.files.passphrase()?;
        let pass = passphrase.as_ref().map(|p| p.as_slice());
        let read = crate::bundle::read;
        let cert_pem = read(&self.files.cert_path)?;
        let key_pem = Zeroizing::new(read(&self.files.key_path)?);
        let ca_pem = read(&self.files.ca_cert_path)?;
        // Loaded through the identity's checks: this pair is what we use.
        let current = TlsIdentity::from_pem(&cert_pem, &key_pem[..], &ca_pem, pass)?;
        let key_text = String::from_utf8_lossy(&key_pem[..]).into_owned();
        let old_key = match pass {
            Some(p) => KeyPair::from_pem_with_passphrase(&key_text, p),
            None => KeyPair::from_pem(&key_text),
        }
        .map_err(|e| pki("the current key", e))?;
        let old: &Certificate = current.certificate();
        let key_type = key_type_of(old.key_algorithm().map_err(|e| pki("the certificate", e))?);
        let key = KeyPair::generate(key_type).map_err(|e| pki("making a key", e))?;
        let subject = Subject::new(&self.name).map_err(|e| pki("the name", e))?;
        let csr = Csr::new(&CsrParams::new(subject), &key).map_err(|e| pki("making the CSR", e))?;
        let proof = old_key
            .sign(csr.der())
            .map_err(|e| pki("signing the proof", e))?;
        let request_id = RequestId::random();
        let body = serde_json::to_vec(&RenewRequest {
            request_id: request_id.clone(),
            serial: old.serial().to_string(),
            certificate: old.to_pem(),
            csr: csr.to_pem(),
            proof: base64::engine::general_purpose::STANDARD.encode(proof.as_bytes()),
        })
        .map_err(|e| lifecycle(format!("encoding the request: {e}")))?;

        let (tx, rx) = oneshot::channel();
        crate::client::lock(&self.pending).insert(request_id.to_string(), tx);
        let answer = async {
            self.client
                .publish(
                    &topics::renew_request(&self.name),
                    body,
                    QoS::AtLeastOnce,
                    false,
                )
                .await?;
            match tokio::time::timeout(self.options.timeout, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(_)) => Err(Error::Closed),
                Err(_) => Err(Error::NoAnswer {
                    topic: topics::renew_response(&self.name, request_id.as_str()),
                    waited: self.options.timeout,
                }),
            }
        }
        .await;
        crate::client::lock(&self.pending).remove(request_id.as_str());
        let (serial, chain) = accept(answer?, &request_id)?;
        let new_key_pem = match pass {
            Some(p) => Zeroizing::new(
                key.to_encrypted_pkcs8_pem(p)
                    .map_err(|e| pki("encrypting the key", e))?
                    .into_bytes(),
            ),
            None => Zeroizing::new(
                key.to_pkcs8_pem()
                    .map_err(|e| pki("encoding the key", e))?
                    .as_bytes()
                    .to_vec(),
            ),
        };
        let identity = check_issued(&chain, &new_key_pem[..], &ca_pem, pass, &self.name)?;

        // Beside the old files, then the switch, then the replacement.
        let (cert_new, key_new) = staged(&self.files);
        write_file(&cert_new, chain.as_bytes(), true)?;
        write_file(&key_new, &new_key_pem[..], true)?;
        match tokio::time::timeout(
            self.options.timeout,
            self.client.reconnect_with_identity(&identity),
        )
        .await
        {
            Ok(Ok(())) => {}
            // Refused: the client is back on the old identity, whose files
            // are still in place.
            Ok(Err(e)) => {
                let _ = std::fs::remove_file(&key_new);
                let _ = std::fs::remove_file(&cert_new);
                return Err(e);
            }
            // Still trying (the broker not there): the switch may yet
            // happen, so the new files stay; the next attempt (or start)
            // settles them and renews from them (the service renews the
            // newest certificate too).
            Err(_) => {
                return Err(lifecycle(format!(
                    "the broker did not take the new certificate within {:?}; it is kept \
                     (as {}) for the next attempt",
                    self.options.timeout,
                    cert_new.display()
                )));
            }
        }
        settle(&self.files)?;
        let done = serde_json::to_vec(&RenewDone {
            request_id,
            serial: serial.clone(),
        })
        .map_err(|e| lifecycle(format!("encoding done: {e}")))?;
        // Without it the service revokes the old certificate after its
        // grace period anyway.
        if let Err(e) = self
            .client
            .publish(
                &topics::renew_done(&self.name),
                done,
                QoS::AtLeastOnce,
                false,
            )
            .await
        {
            tracing::warn!("renewed, but telling the CA service failed: {e}");
        }
        tracing::info!(
            "renewed {}: serial {} replaces {}",
            self.name,
            serial,
            old.serial()
        );
        Ok(Renewed {
            previous: old.serial().to_string(),
            serial,
            not_after: identity.certificate().not_after(),
        })
    }

    /// Renews whenever due, for ever: sleeps until [`Renewer::due`], then
    /// renews, retrying with backoff on failure (the current identity
    /// keeps working meanwhile). Returns only when the client is closed.
    pub async fn run(self) -> Result<()> {
        let mut attempt = 0;
        loop {
            // A file that cannot be read now (being replaced by hand, say)
            // is retried like a failed renewal.
            let due = match settle(&self.files).and_then(|_| self.due()) {
                Ok(due) => due,
                Err(e) => {
                    let delay = self.options.retry.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!("renewing {}: {e}; retrying in {delay:?}", self.name);
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            if let Ok(wait) = due.duration_since(SystemTime::now()) {
                tokio::time::sleep(wait).await;
            }
            match self.renew_now().await {
                Ok(_) => attempt = 0,
                Err(Error::Closed) => return Ok(()),
                Err(e) => {
                    let delay = self.options.retry.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!("renewing {}: {e}; retrying in {delay:?}", self.name);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// `at` of `cert`'s lifetime after its start, spread by `jitter` either
/// side.
fn due(cert: &Certificate, options: &RenewOptions) -> SystemTime {
    let validity = cert.validity();
    let (start, end) = (validity.not_before(), validity.not_after());
    let lifetime = end.duration_since(start).unwrap_or_default();
    let spread = (fastrand::f64() * 2.0 - 1.0) * options.jitter.clamp(0.0, 0.5);
    let at = (options.at + spread).clamp(0.0, 1.0);
    start + lifetime.mul_f64(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_topic_levels() {
        assert!(RequestId::try_from("abc-DEF_09".to_owned()).is_ok());
        for bad in ["", "a/b", "a+b", "#", &"x".repeat(65)] {
            assert!(RequestId::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
        assert_eq!(RequestId::random().as_str().len(), 32);
    }

    #[test]
    fn answers_round_trip_with_a_status_tag() {
        let a = Answer::Rejected {
            request_id: "r1".into(),
            reason: Rejection::QuotaExhausted,
            detail: "3 of 3".into(),
        };
        let text = serde_json::to_string(&a).unwrap();
        assert!(text.contains(r#""status":"rejected""#), "{text}");
        assert!(text.contains(r#""reason":"quota_exhausted""#), "{text}");
        assert_eq!(serde_json::from_str::<Answer>(&text).unwrap(), a);
    }

    #[test]
    fn topics_parse_back() {
        assert_eq!(
            topics::parse(&topics::renew_request("s-1")),
            Some(("renew", "s-1", "req"))
        );
        assert_eq!(topics::parse("pki/v1/renew/s-1/res/x"), None);
    }
}
