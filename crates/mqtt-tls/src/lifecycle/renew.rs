//! Renewal of a live identity ([`Renewer`]): a new key, the request with
//! the current key's proof, the answer checked, the new files staged as
//! `.new` beside the old, the client switched to them on the same session,
//! the old files replaced ([`settle`]), the service told.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use pki_core::{Certificate, Csr, CsrParams, KeyAlgorithm, KeyPair, KeyType, Subject};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::bundle::{ClientCert, TlsIdentity};
use crate::client::MqttClient;
use crate::error::{Error, Result};
use crate::lifecycle::files::{rename, sync_dir, write_file};
use crate::lifecycle::issued::{accept, check_issued, check_issued_for_token};
use crate::lifecycle::protocol::{RenewDone, RenewRequest, RequestId, topics};
use crate::lock::lock;
use crate::options::Backoff;
use crate::qos::QoS;
use crate::token::{NewTokenKey, blocking};

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
/// Returns whether there was one. Call before loading the files. Refused
/// while another process renews these files (`NAME.key.renewing.lock`).
///
/// With the key in a PKCS#11 token (the key file records its URI), the
/// replaced key's record is kept in `NAME.key.old`: the key stays in the
/// token (a client that could not reconnect with the new identity goes
/// back to it) until a renewal sees the broker take a newer key
/// ([`Renewer::renew_now`]).
pub fn settle(files: &ClientCert) -> Result<bool> {
    // A key named by its URI has no files to settle (and is never renewed).
    if crate::token::is_uri(&files.key_path) {
        return Ok(false);
    }
    // A renewal in another process (the one a rolling restart replaces)
    // is waited for, a while.
    let _lock = blocking(|| RenewalLock::take(files, SETTLE_WAIT))?;
    settle_locked(files)
}

/// How long [`settle`] waits for a renewal another process is making.
const SETTLE_WAIT: Duration = Duration::from_secs(60);

fn settle_locked(files: &ClientCert) -> Result<bool> {
    let (cert_new, key_new) = staged(files);
    if !key_new.exists() {
        // A lone `.new` certificate is from before its key was written.
        if cert_new.exists() {
            let _ = std::fs::remove_file(&cert_new);
        }
        return Ok(false);
    }
    // The token key the files name now is noted (never overwriting an
    // earlier note) before the new record takes its place.
    if let Some(current) = token_spec(files, &files.key_path)?
        && let Some(new) = token_spec(files, &key_new)?
        && !current.same_key(&new)
    {
        let old = suffixed(&files.key_path, ".old");
        let mut noted = crate::bundle::read(&old).unwrap_or_default();
        noted.extend_from_slice(&crate::bundle::read(&files.key_path)?);
        write_file(&old, &noted, true)?;
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

/// One renewal of a set of files at a time, across processes.
struct RenewalLock {
    _held: std::fs::File,
}

impl RenewalLock {
    /// The lock, waiting up to `wait` while another process holds it.
    fn take(files: &ClientCert, wait: Duration) -> Result<Self> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Self::try_take(files) {
                Err(Error::Lifecycle { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                taken => return taken,
            }
        }
    }

    fn try_take(files: &ClientCert) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = suffixed(&files.key_path, ".renewing.lock");
        // Only the owner's, as the key beside it; a lock needs no write.
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .or_else(|_| std::fs::File::open(&path))
            .map_err(|source| Error::WriteFile {
                path: path.clone(),
                source,
            })?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => Error::lifecycle(format!(
                "{} is being renewed by another process ({} is locked); try again when it \
                 is done",
                files.key_path.display(),
                path.display()
            )),
            std::fs::TryLockError::Error(source) => Error::WriteFile {
                path: path.clone(),
                source,
            },
        })?;
        Ok(Self { _held: file })
    }
}

/// `path` with `suffix` added to its name.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The token key recorded in the key file `path`, if it records one
/// (`None` for a PEM key or a missing file).
fn token_spec(files: &ClientCert, path: &Path) -> Result<Option<token_keys::TokenKeySpec>> {
    let Ok(text) = crate::bundle::read(path) else {
        return Ok(None);
    };
    crate::token::spec(path, Some(&text), files.pin_env.as_deref()).transpose()
}

/// Deletes from their token the replaced keys noted in `NAME.key.old`,
/// once the broker took the key the files name now (`current`, the
/// identity just connected with): never that key, never a key whose
/// public half is the current certificate's, never a key this crate did
/// not make (left in the token, with a warning). A token that is not there
/// keeps its note for the next renewal.
fn retire(files: &ClientCert, current: &TlsIdentity) -> Result<()> {
    let old = suffixed(&files.key_path, ".old");
    let Ok(noted) = crate::bundle::read(&old) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&noted).into_owned();
    let named_now = token_spec(files, &files.key_path)?;
    let spki = current
        .certificate()
        .public_key_der()
        .map_err(|e| Error::lifecycle_pki("the certificate", e))?;
    let mut kept = String::new();
    for record in records(&text) {
        let Some(Ok(replaced)) =
            token_keys::TokenKeySpec::from_record(&record, files.pin_env.as_deref())
        else {
            continue;
        };
        if named_now.as_ref().is_some_and(|n| n.same_key(&replaced)) {
            continue;
        }
        if !replaced.made_here() {
            tracing::warn!(
                "{}: the replaced key was not made by this tool; it stays in its token",
                replaced.uri
            );
            continue;
        }
        let answered = token_keys::open(&replaced);
        if let Ok(key) = &answered
            && key.matches_public_key(&spki)
        {
            continue;
        }
        let gone = match answered {
            Ok(_) => token_keys::destroy(&replaced).map(|()| true),
            Err(e) if e.to_string().contains("no such key") => Ok(false),
            Err(e) => Err(e),
        };
        match gone {
            Ok(true) => tracing::info!("deleted the replaced key {} from its token", replaced.uri),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!("the replaced key stays in its token for now: {e}");
                kept.push_str(&record);
            }
        }
    }
    if kept.is_empty() {
        let _ = std::fs::remove_file(&old);
    } else {
        write_file(&old, kept.as_bytes(), true)?;
    }
    Ok(())
}

/// The records in a `NAME.key.old` note: each from its `pkcs11:` line.
fn records(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        if line
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("pkcs11:")
        {
            out.push(String::new());
        }
        if let Some(record) = out.last_mut() {
            record.push_str(line);
            record.push('\n');
        }
    }
    out
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
            .ok_or_else(|| Error::lifecycle("the certificate has no CN (its MQTT username)"))?;
        let pending: Pending = Arc::default();
        let routes = pending.clone();
        let prefix = format!("pki/v1/renew/{name}/res/");
        // Subscribed for the client's life (renewed after a reconnect
        // without a session); an answer nobody waits for is dropped.
        client.subscribe(topics::renew_responses(&name), QoS::AtLeastOnce, move |m| {
            if let Some(id) = m.topic.strip_prefix(&prefix)
                && let Some(tx) = lock(&routes).remove(id)
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

    /// Renews now (see the type's description). With the key in a PKCS#11
    /// token, the new key is made in the same token (labelled alike, a new
    /// id), the key file records it once the broker took the new
    /// certificate, and the old key is deleted from the token then.
    pub async fn renew_now(&self) -> Result<Renewed> {
        let key_path = &self.files.key_path;
        if crate::token::is_uri(key_path) {
            return Err(Error::lifecycle(
                "renewing a key named by its pkcs11: URI needs a key file recording the URI \
                 (provision csr --key-uri writes one), where the new key is recorded",
            ));
        }
        let _lock = RenewalLock::take(&self.files, Duration::ZERO)?;
        settle_locked(&self.files)?;
        let read = crate::bundle::read;
        let cert_pem = read(&self.files.cert_path)?;
        let key_pem = Zeroizing::new(read(key_path)?);
        let ca_pem = read(&self.files.ca_cert_path)?;
        let token = crate::token::spec(key_path, Some(&key_pem), self.files.pin_env.as_deref())
            .transpose()?;
        let passphrase = match token {
            Some(_) => None,
            None => self.files.passphrase()?,
        };
        let pass = passphrase.as_ref().map(|p| p.as_slice());
        let in_token = |e| crate::token::in_token(key_path, e);
        // Loaded through the identity's checks: this pair is what we use.
        let (current, old_key) = match &token {
            Some(spec) => {
                let key = Arc::new(blocking(|| token_keys::open(spec)).map_err(in_token)?);
                (
                    TlsIdentity::from_pem_and_token_key(&cert_pem, key.clone(), key_path, &ca_pem)?,
                    key,
                )
            }
            None => {
                let key_text = String::from_utf8_lossy(&key_pem[..]).into_owned();
                (
                    TlsIdentity::from_pem(&cert_pem, &key_pem[..], &ca_pem, pass)?,
                    Arc::new(
                        match pass {
                            Some(p) => KeyPair::from_pem_with_passphrase(&key_text, p),
                            None => KeyPair::from_pem(&key_text),
                        }
                        .map_err(|e| Error::lifecycle_pki("the current key", e))?,
                    ),
                )
            }
        };
        let old: &Certificate = current.certificate();
        let key_type = key_type_of(
            old.key_algorithm()
                .map_err(|e| Error::lifecycle_pki("the certificate", e))?,
        );
        let (key, mut made) = match &token {
            Some(spec) => {
                let fresh = spec.with_fresh_id().map_err(in_token)?;
                let (key, made) =
                    blocking(|| token_keys::generate(&fresh, key_type)).map_err(in_token)?;
                (key, NewTokenKey(Some(made)))
            }
            None => (
                KeyPair::generate(key_type).map_err(|e| Error::lifecycle_pki("making a key", e))?,
                NewTokenKey(None),
            ),
        };
        let subject = Subject::new(&self.name).map_err(|e| Error::lifecycle_pki("the name", e))?;
        let csr = Csr::new(&CsrParams::new(subject), &key)
            .map_err(|e| Error::lifecycle_pki("making the CSR", e))?;
        let proof = old_key
            .sign(csr.der())
            .map_err(|e| Error::lifecycle_pki("signing the proof", e))?;
        let request_id = RequestId::random();
        let body = serde_json::to_vec(&RenewRequest {
            request_id: request_id.clone(),
            serial: old.serial().to_string(),
            certificate: old.to_pem(),
            csr: csr.to_pem(),
            proof: base64::engine::general_purpose::STANDARD.encode(proof.as_bytes()),
        })
        .map_err(|e| Error::lifecycle(format!("encoding the request: {e}")))?;

        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(request_id.to_string(), tx);
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
        lock(&self.pending).remove(request_id.as_str());
        let (serial, chain) = accept(answer?, &request_id)?;
        let (cert_new, key_new) = staged(&self.files);
        let (new_key_file, identity) = match &made.0 {
            Some(spec) => (
                Zeroizing::new(spec.record().into_bytes()),
                check_issued_for_token(&chain, key, &key_new, &ca_pem, &self.name)?,
            ),
            None => {
                let pem = match pass {
                    Some(p) => Zeroizing::new(
                        key.to_encrypted_pkcs8_pem(p)
                            .map_err(|e| Error::lifecycle_pki("encrypting the key", e))?
                            .into_bytes(),
                    ),
                    None => Zeroizing::new(
                        key.to_pkcs8_pem()
                            .map_err(|e| Error::lifecycle_pki("encoding the key", e))?
                            .as_bytes()
                            .to_vec(),
                    ),
                };
                let identity = check_issued(&chain, &pem[..], &ca_pem, pass, &self.name)?;
                (pem, identity)
            }
        };

        // Beside the old files, then the switch, then the replacement.
        write_file(&cert_new, chain.as_bytes(), true)?;
        if let Err(e) = write_file(&key_new, &new_key_file[..], true) {
            let _ = std::fs::remove_file(&key_new);
            let _ = std::fs::remove_file(&cert_new);
            if key_new.exists() {
                // A file may still name the new key: it stays.
                made.keep();
            }
            return Err(e);
        }
        // Staged: from here a new key in a token is named by `.new`, and
        // goes only with it.
        let staged_token = made.0.clone();
        made.keep();
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
                // The new key in a token goes with its record (only once
                // no file names it).
                if !key_new.exists() {
                    drop(NewTokenKey(staged_token));
                }
                return Err(e);
            }
            // Still trying (the broker not there): the switch may yet
            // happen, so the new files stay; the next attempt (or start)
            // settles them and renews from them (the service renews the
            // newest certificate too).
            Err(_) => {
                return Err(Error::lifecycle(format!(
                    "the broker did not take the new certificate within {:?}; it is kept \
                     (as {}) for the next attempt",
                    self.options.timeout,
                    cert_new.display()
                )));
            }
        }
        settle_locked(&self.files)?;
        // The broker took the new key: the keys it replaced go from their
        // token.
        if let Err(e) = blocking(|| retire(&self.files, &identity)) {
            tracing::warn!("renewed, but the replaced key stays in its token: {e}");
        }
        let done = serde_json::to_vec(&RenewDone {
            request_id,
            serial: serial.clone(),
        })
        .map_err(|e| Error::lifecycle(format!("encoding done: {e}")))?;
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
            // Files settled here (a switch that timed out earlier) are the
            // identity the client takes from its next connection.
            let due = match settle(&self.files).and_then(|settled| {
                if settled {
                    self.client.set_identity(&self.files.load()?)?;
                }
                self.due()
            }) {
                Ok(due) => due,
                Err(e) => {
                    let delay = self.options.retry.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!("renewing {}: {e}; retrying in {delay:?}", self.name);
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            wait_until(due, SystemTime::now, RECHECK).await;
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

/// How often a wait for a renewal looks at the wall clock again.
const RECHECK: Duration = Duration::from_secs(60);

/// Waits until the wall clock (`now`) reaches `due`, looking again at
/// least every `recheck`: tokio's timers run on the monotonic clock, which
/// stops while a device is suspended, so one long sleep would wake late,
/// possibly after the certificate expired.
async fn wait_until(due: SystemTime, now: impl Fn() -> SystemTime, recheck: Duration) {
    while let Ok(left) = due.duration_since(now()) {
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(recheck)).await;
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
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn settle_waits_for_a_renewal_elsewhere_and_a_renewal_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let files = ClientCert::new(
            dir.path().join("dev_cert.pem"),
            dir.path().join("dev.key"),
            dir.path().join("ca.pem"),
        );
        let held = RenewalLock::take(&files, Duration::ZERO).unwrap();
        // A second renewal is refused at once, saying why.
        let refused = RenewalLock::take(&files, Duration::ZERO).err().unwrap();
        assert!(refused.to_string().contains("being renewed"), "{refused}");
        let started = std::time::Instant::now();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        // settle waits for it.
        assert!(!settle(&files).unwrap());
        assert!(started.elapsed() >= Duration::from_millis(300));
        release.join().unwrap();
        // A key named by its URI: nothing to settle, no lock file named
        // after it.
        let uri = ClientCert::new("c.pem", "pkcs11:token=t;object=k?pin-value=1", "ca.pem");
        assert!(!settle(&uri).unwrap());
        assert!(!Path::new("pkcs11:token=t;object=k?pin-value=1.renewing.lock").exists());
    }

    #[test]
    fn a_note_of_replaced_keys_reads_back_each_record() {
        let note = "pkcs11:token=d;object=k;id=%01\npin-env=PIN\nmade-here\n\
                    pkcs11:token=d;object=k;id=%02\nmade-here\n";
        let found = records(note);
        assert_eq!(found.len(), 2);
        assert!(found[0].starts_with("pkcs11:token=d;object=k;id=%01\npin-env=PIN"));
        assert_eq!(found[1], "pkcs11:token=d;object=k;id=%02\nmade-here\n");
        assert!(records("").is_empty());
    }

    /// A device suspended for two hours: the monotonic clock saw one
    /// minute, the wall clock is past the due time. The wait ends at the
    /// next look at the wall clock, not an hour later.
    #[tokio::test(start_paused = true)]
    async fn a_wait_for_renewal_follows_the_wall_clock_across_a_suspend() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let wall = Arc::new(Mutex::new(start));
        let clock = {
            let wall = Arc::clone(&wall);
            move || *wall.lock().unwrap()
        };
        let due = start + Duration::from_secs(3600);
        let waiting = tokio::spawn(wait_until(due, clock, Duration::from_secs(60)));
        tokio::task::yield_now().await;
        // The suspend: the wall clock jumps two hours.
        *wall.lock().unwrap() = start + Duration::from_secs(7200);
        tokio::time::advance(Duration::from_secs(61)).await;
        tokio::task::yield_now().await;
        assert!(
            waiting.is_finished(),
            "still waiting after the wall clock passed the due time"
        );
        // Without a suspend it waits the whole hour on the wall clock.
        *wall.lock().unwrap() = start;
        let waiting = {
            let wall = Arc::clone(&wall);
            tokio::spawn(wait_until(
                due,
                move || *wall.lock().unwrap(),
                Duration::from_secs(60),
            ))
        };
        tokio::time::advance(Duration::from_secs(120)).await;
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        waiting.abort();
    }
}
