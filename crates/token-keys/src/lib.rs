//! Keys in a PKCS#11 token (an HSM, a smart card, a TPM through
//! tpm2-pkcs11, SoftHSM2), named by an RFC 7512 `pkcs11:` URI: the CA's
//! keys (`provision init-ca --key-uri`), a device's or a service's
//! (`provision csr --key-uri`), and the key an mTLS connection signs its
//! handshake with (`mqtt-tls`, a `pkcs11:` `key_path`).
//!
//! A key made here ([`generate`]) is sensitive, never extractable and able
//! to sign only. Where a key file would hold a key, it holds the URI
//! without any PIN ([`TokenKeySpec::record`]), so every command that signs
//! finds the token through it. The token signs; pki-core turns its answers
//! into X.509's encoding and checks each one against the public key
//! ([`pki_core::ExternalKey`]).
//!
//! The module (the token's PKCS#11 library) comes from `module-path=` in
//! the URI or `$PKCS11_MODULE`; the PIN from `pin-source=` (a file), the
//! environment variable named by `--pin-env` (recorded with the URI), or
//! `pin-value=` (it works, with a warning: a command line shows in `ps`).
//! No message, log or error shows a PIN; it is wiped after the login.
//! Each process loads a module once and logs in to a token once: every key
//! on it, and every thread and connection that signs with one, shares the
//! token's session pool. A token that goes away (removed, its module
//! reset) fails each signature with a classified error until it is back;
//! the next signature after that logs in again and finds the key anew.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeType, KeyType as TokenKeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use pki_core::{ExternalKey, KeyPair, KeyType, PublicKeyParts, ToSign};
use zeroize::Zeroizing;

/// What went wrong with a key in a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key in a PKCS#11 token could not be made, found or used: a bad
    /// URI, no such token or key, a wrong PIN, a removed token.
    #[error("{uri}: {reason}")]
    Token {
        /// The key's `pkcs11:` URI, without its PIN (unsafe values shown
        /// as `…` when the URI did not parse).
        uri: String,
        /// What went wrong.
        reason: String,
    },
}

/// This crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The environment variable naming the PKCS#11 module when the URI has no
/// `module-path=`.
pub const MODULE_ENV: &str = "PKCS11_MODULE";

/// What a key file holds instead of a key when the key is in a token: the
/// URI on its first line, then optionally `pin-env=NAME`, then `made-here`
/// for a key [`generate`] made (only such a key is ever deleted by a
/// renewal that replaced it).
const PIN_ENV_LINE: &str = "pin-env=";
const MADE_HERE_LINE: &str = "made-here";

/// An RFC 7512 `pkcs11:` URI naming a key in a token.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyUri {
    token: Option<String>,
    serial: Option<String>,
    manufacturer: Option<String>,
    model: Option<String>,
    slot_id: Option<u64>,
    object: Option<String>,
    id: Option<Vec<u8>>,
    module_path: Option<PathBuf>,
    pin_source: Option<String>,
    pin_value: Option<Zeroizing<String>>,
}

impl fmt::Debug for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyUri({self})")
    }
}

/// The URI as it may be shown: every attribute but `pin-value`.
impl fmt::Display for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let enc =
            |v: &[u8]| -> String { percent_encoding::percent_encode(v, URI_VALUE).to_string() };
        let mut path = Vec::new();
        let mut push = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                path.push(format!("{name}={v}"));
            }
        };
        push("token", self.token.as_deref().map(|v| enc(v.as_bytes())));
        push("serial", self.serial.as_deref().map(|v| enc(v.as_bytes())));
        push(
            "manufacturer",
            self.manufacturer.as_deref().map(|v| enc(v.as_bytes())),
        );
        push("model", self.model.as_deref().map(|v| enc(v.as_bytes())));
        push("slot-id", self.slot_id.map(|v| v.to_string()));
        push("object", self.object.as_deref().map(|v| enc(v.as_bytes())));
        push(
            "id",
            self.id
                .as_deref()
                .map(|v| v.iter().map(|b| format!("%{b:02X}")).collect()),
        );
        write!(f, "pkcs11:{}", path.join(";"))?;
        let mut query = Vec::new();
        if let Some(p) = &self.module_path {
            query.push(format!(
                "module-path={}",
                enc(p.as_os_str().as_encoded_bytes())
            ));
        }
        if let Some(p) = &self.pin_source {
            query.push(format!("pin-source={}", enc(p.as_bytes())));
        }
        if !query.is_empty() {
            write!(f, "?{}", query.join("&"))?;
        }
        Ok(())
    }
}

/// What is left as it is in a value shown: RFC 7512's `pk11-pchar` minus
/// what would be read back differently.
const URI_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/')
    .remove(b':');

impl KeyUri {
    /// The key's label (`object=`), if the URI gives one.
    pub fn object(&self) -> Option<&str> {
        self.object.as_deref()
    }

    /// The key's id (`id=`), if the URI gives one.
    pub fn id(&self) -> Option<&[u8]> {
        self.id.as_deref()
    }
}

impl std::str::FromStr for KeyUri {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text, None)
    }
}

impl KeyUri {
    /// Parses a URI for a key to be made: without `object=` or `id=`, the
    /// key is labelled `label` (a device's key takes the device's name).
    pub fn for_new_key(text: &str, label: &str) -> Result<Self> {
        Self::parse(text, Some(label))
    }

    fn parse(text: &str, default_object: Option<&str>) -> Result<Self> {
        let bad = |reason: String| Error::Token {
            uri: shown(text),
            reason,
        };
        let rest = text
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("pkcs11:"))
            .map(|_| &text[7..])
            .ok_or_else(|| bad("not a pkcs11: URI (RFC 7512)".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut uri = KeyUri {
            token: None,
            serial: None,
            manufacturer: None,
            model: None,
            slot_id: None,
            object: None,
            id: None,
            module_path: None,
            pin_source: None,
            pin_value: None,
        };
        let decode = |name: &str, value: &str| -> Result<Vec<u8>> {
            Ok(percent_encoding::percent_decode_str(value).collect::<Vec<u8>>()).and_then(|v| {
                if value.contains('%')
                    && value.split('%').skip(1).any(|h| {
                        !h.as_bytes()
                            .get(..2)
                            .is_some_and(|b| b.iter().all(u8::is_ascii_hexdigit))
                    })
                {
                    Err(bad(format!("{name}: a % not followed by two hex digits")))
                } else {
                    Ok(v)
                }
            })
        };
        let text_of = |name: &str, value: &str| -> Result<String> {
            String::from_utf8(decode(name, value)?)
                .map_err(|_| bad(format!("{name}: not UTF-8 once decoded")))
        };
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad("an attribute is not NAME=VALUE".into()))?;
            let slot = match name {
                "token" => &mut uri.token,
                "serial" => &mut uri.serial,
                "manufacturer" => &mut uri.manufacturer,
                "model" => &mut uri.model,
                "object" => &mut uri.object,
                "slot-id" => {
                    let id = text_of(name, value)?
                        .parse()
                        .map_err(|_| bad(format!("slot-id={value}: not a number")))?;
                    if uri.slot_id.replace(id).is_some() {
                        return Err(bad("slot-id given twice".into()));
                    }
                    continue;
                }
                "id" => {
                    if uri.id.replace(decode(name, value)?).is_some() {
                        return Err(bad("id given twice".into()));
                    }
                    continue;
                }
                "type" => {
                    let kind = text_of(name, value)?;
                    if kind != "private" {
                        return Err(bad(format!(
                            "type={kind}: a CA key is a private key (type=private)"
                        )));
                    }
                    continue;
                }
                other => {
                    return Err(bad(format!(
                        "unknown attribute {other:?} (known: token, serial, manufacturer, \
                         model, slot-id, object, id, type; ?module-path, pin-source, \
                         pin-value)"
                    )));
                }
            };
            if slot.replace(text_of(name, value)?).is_some() {
                return Err(bad(format!("{name} given twice")));
            }
        }
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad("a query attribute is not NAME=VALUE".into()))?;
            if value.contains([';', '?']) {
                return Err(bad(format!(
                    "{name}: a ';' or '?' in a query value (query attributes are joined by '&')"
                )));
            }
            let twice = || bad(format!("{name} given twice"));
            match name {
                "module-path" => {
                    if uri.module_path.is_some() {
                        return Err(twice());
                    }
                    uri.module_path = Some(PathBuf::from(text_of(name, value)?));
                }
                "pin-source" => {
                    if uri.pin_source.replace(text_of(name, value)?).is_some() {
                        return Err(twice());
                    }
                }
                "pin-value" => {
                    let pin = Zeroizing::new(text_of(name, value)?);
                    if uri.pin_value.replace(pin).is_some() {
                        return Err(twice());
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown query attribute {other:?} (known: module-path, pin-source, \
                         pin-value)"
                    )));
                }
            }
        }
        if uri.pin_value.is_some() && uri.pin_source.is_some() {
            return Err(bad(
                "pin-source and pin-value both given (RFC 7512 allows one)".into(),
            ));
        }
        if uri.object.is_none() && uri.id.is_none() {
            uri.object = default_object.map(str::to_owned);
        }
        if uri.object.is_none() && uri.id.is_none() {
            return Err(bad(
                "it names no key: give object= (its label) or id=".into()
            ));
        }
        if uri.token.is_none() && uri.serial.is_none() && uri.slot_id.is_none() {
            return Err(bad(
                "it names no token: give token= (its label), serial= or slot-id=".into(),
            ));
        }
        Ok(uri)
    }
}

/// A URI that did not parse, as it may appear in a message: only the
/// values of attributes known to hold no secret are kept; every other
/// value (a `pin-value` in any spelling or place, a malformed attribute,
/// anything unknown) is shown as `…`.
/// `text`, a `pkcs11:` URI that may not parse, as it may be shown: known
/// attributes kept, any PIN and anything unknown replaced by `…`.
pub fn redact(text: &str) -> String {
    shown(text)
}

fn shown(text: &str) -> String {
    const SAFE: [&str; 11] = [
        "token",
        "serial",
        "manufacturer",
        "model",
        "slot-id",
        "object",
        "id",
        "type",
        "module-path",
        "module-name",
        "pin-source",
    ];
    let mut out = String::from("pkcs11:");
    let rest = text.get(7..).unwrap_or("");
    for (i, attr) in rest.split(['?', ';', '&']).enumerate() {
        if i > 0 {
            out.push(';');
        }
        match attr.split_once('=') {
            Some((name, value)) if SAFE.contains(&name) && !value.contains("pin") => {
                out.push_str(name);
                out.push('=');
                out.push_str(value);
            }
            Some((name, _)) if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
                out.push_str(name);
                out.push_str("=…");
            }
            _ => out.push('…'),
        }
    }
    out
}

/// A key in a token, and how to log in to it.
#[derive(Debug, Clone)]
pub struct TokenKeySpec {
    /// Where the key is.
    pub uri: KeyUri,
    /// The environment variable holding the PIN (not the PIN).
    pub pin_env: Option<String>,
    /// Whether [`generate`] made the key (a key brought from elsewhere, a
    /// factory's say, is never deleted when a renewal replaces it).
    made_here: bool,
}

impl TokenKeySpec {
    /// The key at `uri`, its PIN in the variable `pin_env` (when the URI
    /// does not say where the PIN is).
    pub fn new(uri: KeyUri, pin_env: Option<String>) -> Self {
        Self {
            uri,
            pin_env,
            made_here: false,
        }
    }

    /// Whether [`generate`] made this key (as its record says).
    pub fn made_here(&self) -> bool {
        self.made_here
    }

    /// What a key file holds for this key: the URI (no PIN), the PIN's
    /// variable, and whether the key was made here.
    pub fn record(&self) -> String {
        let mut record = format!("{}\n", self.uri);
        if let Some(var) = &self.pin_env {
            record.push_str(&format!("{PIN_ENV_LINE}{var}\n"));
        }
        if self.made_here {
            record.push_str(MADE_HERE_LINE);
            record.push('\n');
        }
        record
    }

    /// Reads a key file's record; `None` when the file holds a key (PEM),
    /// not a URI. `pin_env` given on the command line wins over the
    /// recorded one.
    pub fn from_record(text: &str, pin_env: Option<&str>) -> Option<Result<Self>> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next()?;
        if !first.get(..7)?.eq_ignore_ascii_case("pkcs11:") {
            return None;
        }
        let rest: Vec<&str> = lines.collect();
        let recorded = rest
            .iter()
            .find_map(|l| l.strip_prefix(PIN_ENV_LINE))
            .map(str::to_owned);
        let made_here = rest.contains(&MADE_HERE_LINE);
        Some(first.parse().map(|uri| Self {
            uri,
            pin_env: pin_env.map(str::to_owned).or(recorded),
            made_here,
        }))
    }

    /// The same token, label and PIN with a new random id: where a
    /// replacement key goes ([`generate`]), beside the key this names.
    pub fn with_fresh_id(&self) -> Result<Self> {
        let mut id = vec![0u8; 16];
        pki_core::random_bytes(&mut id).map_err(|e| self.err(e.to_string()))?;
        let mut fresh = self.clone();
        fresh.uri.id = Some(id);
        Ok(fresh)
    }

    /// Whether `other` names the same key: the same id, on a token named
    /// alike (label, serial or slot, where both say), whatever the module
    /// path or the PIN's source. Two URIs without an id are the same key
    /// when their labels are.
    pub fn same_key(&self, other: &Self) -> bool {
        let (a, b) = (&self.uri, &other.uri);
        let agree = |x: &Option<String>, y: &Option<String>| x.is_none() || y.is_none() || x == y;
        let same_name = match (&a.id, &b.id) {
            (Some(x), Some(y)) => x == y,
            (None, None) => a.object == b.object,
            _ => false,
        };
        same_name
            && agree(&a.token, &b.token)
            && agree(&a.serial, &b.serial)
            && (a.slot_id.is_none() || b.slot_id.is_none() || a.slot_id == b.slot_id)
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Token {
            uri: self.uri.to_string(),
            reason: reason.into(),
        }
    }

    /// The PIN: `pin-value=` (with a warning), `pin-source=`, or the
    /// environment variable.
    fn pin(&self) -> Result<Zeroizing<String>> {
        if let Some(pin) = &self.uri.pin_value {
            tracing::warn!(
                "{}: the PIN is in the URI (pin-value=), which shows in `ps` and shell \
                 history; prefer pin-source=FILE or --pin-env VAR",
                self.uri
            );
            return Ok(pin.clone());
        }
        if let Some(source) = &self.uri.pin_source {
            let path = source.strip_prefix("file:").unwrap_or(source);
            let text =
                Zeroizing::new(safe_files::read_capped_text(Path::new(path)).map_err(|e| {
                    self.err(format!("reading the PIN from pin-source={source}: {e}"))
                })?);
            return Ok(Zeroizing::new(
                text.trim_end_matches(['\r', '\n']).to_owned(),
            ));
        }
        if let Some(var) = &self.pin_env {
            return match std::env::var(var) {
                Ok(pin) if !pin.is_empty() => Ok(Zeroizing::new(pin)),
                _ => Err(self.err(format!("the PIN's variable ${var} is not set"))),
            };
        }
        Err(self.err(
            "the token needs a PIN: pass --pin-env VAR with the PIN in $VAR, or pin-source=FILE \
             in the URI",
        ))
    }

    fn module_path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.uri.module_path {
            return Ok(p.clone());
        }
        match std::env::var_os(MODULE_ENV) {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(self.err(format!(
                "which PKCS#11 module? Give module-path= in the URI or set ${MODULE_ENV} \
                 (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)"
            ))),
        }
    }
}

/// A module this process loaded: initialised once, reset only when a token
/// it lost must be found again ([`reset_module`]).
struct Module {
    path: PathBuf,
    pkcs11: Pkcs11,
    /// Every call into the module holds it for reading; a reset holds it
    /// for writing, so that nothing runs inside the module while it is
    /// finalised.
    gate: std::sync::RwLock<()>,
    /// How many times the module was reset: a session from before a reset
    /// is never closed or used (its handle may be another session's now).
    generation: std::sync::atomic::AtomicU64,
    /// When it was last reset.
    last_reset: Mutex<Option<std::time::Instant>>,
    /// A salted SHA-256 of the PIN each slot was logged in with, until the
    /// module is reset (a login lasts that long): a later login that finds
    /// the token logged in already must know the same PIN.
    pins: Mutex<HashMap<u64, (Vec<u8>, String)>>,
}

impl Module {
    /// Holds the module for a call into it.
    fn enter(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// Every module this process loaded, by path: a module is initialised once
/// per process.
fn module(path: &Path) -> std::result::Result<Arc<Module>, String> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| "a thread failed while loading a module".to_owned())?;
    if let Some(m) = modules.get(path) {
        return Ok(m.clone());
    }
    let pkcs11 =
        Pkcs11::new(path).map_err(|e| format!("loading the module {}: {e}", path.display()))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(format!("initialising the module {}: {e}", path.display())),
    }
    let module = Arc::new(Module {
        path: path.to_owned(),
        pkcs11,
        gate: std::sync::RwLock::new(()),
        generation: 0.into(),
        last_reset: Mutex::new(None),
        pins: Mutex::new(HashMap::new()),
    });
    modules.insert(path.to_owned(), module.clone());
    Ok(module)
}

/// A logged-in token: its module, slot and a pool of sessions.
struct Token {
    module: Arc<Module>,
    slot: Slot,
    /// The session logged in, never handed out: a login holds for every
    /// session of the process on the token while one stays open, so a
    /// session closed after an error never logs the others out.
    login: Mutex<Option<Session>>,
    /// The module's generation when the token was logged in to: every
    /// session of this token is from it.
    generation: u64,
    /// Idle sessions for the work.
    sessions: Mutex<Vec<Session>>,
    /// Set when the token failed as a removed token does: the next user
    /// logs in again ([`Token::shared`]).
    lost: AtomicBool,
}

/// A salted SHA-256 of `pin` (hex).
fn pin_digest(salt: &[u8], pin: &str) -> String {
    let mut input = Zeroizing::new(salt.to_vec());
    input.extend_from_slice(pin.as_bytes());
    pki_core::sha256_fingerprint(&input)
}

/// Every token this process is logged in to, by module and slot: one login
/// and one session pool per token, shared by every key on it and every
/// connection that signs with one.
type Tokens = Mutex<HashMap<(PathBuf, u64), Weak<Token>>>;

fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(Default::default)
}

/// Resets `module` (`C_Finalize`, then `C_Initialize`): what a module that
/// lost a token may need before it sees the token again (SoftHSM2 does).
/// Every login through it ends, and is made again by its next user; no
/// call runs inside the module meanwhile. At most once in [`RESET_EVERY`],
/// so that many connections failing together reset it once.
fn reset_module(module: &Module) -> std::result::Result<(), String> {
    {
        let mut last = module
            .last_reset
            .lock()
            .map_err(|_| "a thread failed while resetting a module".to_owned())?;
        if last.is_some_and(|t| t.elapsed() < RESET_EVERY) {
            return Ok(());
        }
        *last = Some(std::time::Instant::now());
    }
    // Every session of the module closes before it goes, while the handles
    // are still theirs.
    let held: Vec<Arc<Token>> = tokens()
        .lock()
        .map(|tokens| {
            tokens
                .iter()
                .filter(|((path, _), _)| *path == module.path)
                .filter_map(|(_, token)| token.upgrade())
                .collect()
        })
        .unwrap_or_default();
    for token in &held {
        token.lose();
        let login = token.login.lock().ok().and_then(|mut l| l.take());
        if let Some(session) = login {
            token.close(session);
        }
    }
    drop(held);
    let _alone = module
        .gate
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    module.generation.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut pins) = module.pins.lock() {
        pins.clear();
    }
    let _ = module.pkcs11.clone().finalize();
    match module
        .pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
    {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
            tracing::info!(
                "reset the PKCS#11 module {} to find a lost token again",
                module.path.display()
            );
            Ok(())
        }
        Err(e) => Err(format!(
            "initialising the module {} again: {e}",
            module.path.display()
        )),
    }
}

/// What [`classify`] and [`locate`] say of a token or key the module does
/// not see: the failures a module reset may cure.
const ABSENT: [&str; 5] = [
    "no such token",
    "no such key",
    "is not there",
    "the session is gone",
    "the token failed",
];

/// How often a module may be reset ([`reset_module`]).
const RESET_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl Token {
    /// The token `spec` names, logged in: the one this process already
    /// holds unless it was lost, or a new login.
    fn shared(spec: &TokenKeySpec) -> Result<Arc<Self>> {
        let path = spec.module_path()?;
        let module = module(&path).map_err(|e| spec.err(e))?;
        let slot = Self::find(spec, &module)?;
        let key = (path, slot.id());
        let tokens = tokens();
        let held = tokens
            .lock()
            .map_err(|_| spec.err("a thread failed while logging in"))?
            .get(&key)
            .and_then(Weak::upgrade)
            .filter(|t| !t.lost.load(Ordering::Relaxed) && !t.stale());
        if let Some(token) = held {
            // The login is the process's, not this key's: its PIN must be
            // the one this key names too.
            let pin = spec.pin()?;
            Self::check_pin(spec, &module, slot, &pin)?;
            return Ok(token);
        }
        let token = Arc::new(Self::open(spec, module, slot)?);
        if let Ok(mut tokens) = tokens.lock() {
            tokens.retain(|_, t| t.strong_count() > 0);
            tokens.insert(key, Arc::downgrade(&token));
        }
        Ok(token)
    }

    /// Refuses `pin` unless it is the PIN `slot` was logged in with (when
    /// this process logged in to it).
    fn check_pin(spec: &TokenKeySpec, module: &Module, slot: Slot, pin: &str) -> Result<()> {
        let pins = module
            .pins
            .lock()
            .map_err(|_| spec.err("a thread failed while logging in"))?;
        match pins.get(&slot.id()) {
            Some((salt, digest)) if pin_digest(salt, pin) != *digest => Err(spec.err(
                "logging in: wrong PIN (not the PIN this process logged in to the token with)",
            )),
            _ => Ok(()),
        }
    }

    /// The slot of the one token `spec` names.
    fn find(spec: &TokenKeySpec, module: &Module) -> Result<Slot> {
        let _in = module.enter();
        let pkcs11 = &module.pkcs11;
        let slots = pkcs11
            .get_slots_with_token()
            .map_err(|e| spec.err(classify("listing the slots", &e)))?;
        let mut found = None;
        for slot in slots {
            // A slot whose token cannot say its name is not the one named.
            let Ok(info) = pkcs11.get_token_info(slot) else {
                continue;
            };
            let uri = &spec.uri;
            let matches = uri
                .token
                .as_deref()
                .is_none_or(|t| info.label().trim_end() == t)
                && uri
                    .serial
                    .as_deref()
                    .is_none_or(|s| info.serial_number().trim_end() == s)
                && uri
                    .manufacturer
                    .as_deref()
                    .is_none_or(|m| info.manufacturer_id().trim_end() == m)
                && uri
                    .model
                    .as_deref()
                    .is_none_or(|m| info.model().trim_end() == m)
                && uri.slot_id.is_none_or(|id| slot.id() == id);
            if matches {
                if found.is_some() {
                    return Err(spec.err("more than one token matches: name it by serial="));
                }
                found = Some(slot);
            }
        }
        found.ok_or_else(|| spec.err("no such token (is it plugged in and initialised?)"))
    }

    /// Logs in to the token in `slot`.
    fn open(spec: &TokenKeySpec, module: Arc<Module>, slot: Slot) -> Result<Self> {
        let pin = spec.pin()?;
        let _in = module.enter();
        let generation = module.generation();
        let session = module
            .pkcs11
            .open_rw_session(slot)
            .map_err(|e| spec.err(classify("opening a session", &e)))?;
        // Allocated at its exact size, and wiped when dropped.
        let auth = AuthPin::new(Box::from(pin.as_str()));
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) => {
                let mut salt = vec![0u8; 16];
                pki_core::random_bytes(&mut salt).map_err(|e| spec.err(e.to_string()))?;
                let digest = pin_digest(&salt, &pin);
                if let Ok(mut pins) = module.pins.lock() {
                    pins.insert(slot.id(), (salt, digest));
                }
            }
            // Logged in already (by another key of this process): the PIN
            // must be the one it logged in with.
            Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                Self::check_pin(spec, &module, slot, &pin)?;
            }
            Err(e) => return Err(spec.err(classify("logging in", &e))),
        }
        drop(pin);
        drop(_in);
        Ok(Self {
            module,
            slot,
            login: Mutex::new(Some(session)),
            generation,
            sessions: Mutex::new(Vec::new()),
            lost: AtomicBool::new(false),
        })
    }

    /// Runs `f` on an idle session (a new one when all are busy), which
    /// goes back to the pool unless the token failed under it. The module
    /// is held meanwhile (no reset in between).
    fn with_session<T>(
        &self,
        action: &str,
        f: impl FnOnce(&Session) -> cryptoki::error::Result<T>,
    ) -> std::result::Result<T, String> {
        let _in = self.module.enter();
        if self.stale() {
            self.lose_held();
            return Err(format!(
                "{action}: the session is gone (the module was reset)"
            ));
        }
        let idle = self.sessions.lock().ok().and_then(|mut s| s.pop());
        let session = match idle {
            Some(s) => s,
            None => match self.module.pkcs11.open_rw_session(self.slot) {
                Ok(s) => s,
                Err(e) => {
                    if is_lost(&e) {
                        self.lose_held();
                    }
                    return Err(classify("opening a session", &e));
                }
            },
        };
        let result = f(&session);
        // A session the token lost is dropped, with every idle one: the
        // token is logged in to again by its next user. Any other goes
        // back.
        match &result {
            Err(e) if is_lost(e) => {
                drop(session);
                self.lose_held();
            }
            _ => {
                if let Ok(mut sessions) = self.sessions.lock() {
                    sessions.push(session);
                }
            }
        }
        result.map_err(|e| classify(action, &e))
    }

    /// Marks the token lost (removed, its module reset) and drops its idle
    /// sessions.
    fn lose(&self) {
        let _in = self.module.enter();
        self.lose_held();
    }

    /// [`Token::lose`], the module already held by the caller (a read lock
    /// is never taken twice: a waiting reset would deadlock it).
    fn lose_held(&self) {
        self.lost.store(true, Ordering::Relaxed);
        let idle: Vec<Session> = self
            .sessions
            .lock()
            .map(|mut s| s.drain(..).collect())
            .unwrap_or_default();
        for session in idle {
            self.close_held(session);
        }
    }

    /// Whether the module was reset since this token was logged in to.
    fn stale(&self) -> bool {
        self.module.generation() != self.generation
    }

    /// Closes `session`, unless the module was reset since it was opened:
    /// then its handle is left alone (it may be another session's now).
    fn close(&self, session: Session) {
        let _in = self.module.enter();
        self.close_held(session);
    }

    /// [`Token::close`], the module already held by the caller.
    fn close_held(&self, session: Session) {
        if self.stale() {
            std::mem::forget(session);
        } else {
            drop(session);
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let login = self.login.get_mut().ok().and_then(Option::take);
        let idle: Vec<Session> = self
            .sessions
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for session in login.into_iter().chain(idle) {
            self.close(session);
        }
    }
}

/// Whether `e` says the token, or the session on it, is gone.
fn is_lost(e: &cryptoki::error::Error) -> bool {
    matches!(
        e,
        cryptoki::error::Error::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::SlotIdInvalid
                | RvError::CryptokiNotInitialized
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::DeviceError,
            _
        )
    )
}

/// A PKCS#11 error as the operator needs it: what failed, and the likely
/// cause (never a PIN: none is ever formatted).
fn classify(action: &str, e: &cryptoki::error::Error) -> String {
    let why = match e {
        cryptoki::error::Error::Pkcs11(rv, _) => match rv {
            RvError::PinIncorrect => "wrong PIN".into(),
            RvError::PinLocked => "the PIN is locked (too many wrong tries)".into(),
            RvError::PinExpired => "the PIN has expired".into(),
            RvError::TokenNotPresent | RvError::DeviceRemoved => {
                "the token is not there (removed?)".into()
            }
            RvError::SessionHandleInvalid | RvError::SessionClosed => {
                "the session is gone (token removed or module reset)".into()
            }
            RvError::DeviceError | RvError::DeviceMemory => "the token failed".into(),
            RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid => {
                "the key is not there (the token removed, or the key deleted)".into()
            }
            RvError::UserNotLoggedIn => "not logged in".into(),
            RvError::KeyFunctionNotPermitted => "the key may not sign (CKA_SIGN false)".into(),
            RvError::MechanismInvalid => "the token does not offer this mechanism".into(),
            other => format!("{other}"),
        },
        other => other.to_string(),
    };
    format!("{action}: {why}")
}

/// A private key's handle and its public key's, each when found.
type Pair = (Option<ObjectHandle>, Option<ObjectHandle>);

/// A key found in a token: its handle, type and public key (DER).
type Located = (ObjectHandle, TokenKeyType, Vec<u8>);

/// The handles of the key named by `uri` in an open session: the private
/// key, and the public key with the private key's id (never the public
/// half of another key by the same label). Two private keys matching the
/// URI are refused: the URI must name one key.
fn find_pair(
    session: &Session,
    uri: &KeyUri,
) -> cryptoki::error::Result<std::result::Result<Pair, String>> {
    let named = |class: ObjectClass, id: Option<&Vec<u8>>| {
        let mut template = vec![Attribute::Class(class)];
        if let Some(label) = &uri.object {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = id.or(uri.id.as_ref()) {
            template.push(Attribute::Id(id.clone()));
        }
        template
    };
    let private = session.find_objects(&named(ObjectClass::PRIVATE_KEY, None))?;
    if private.len() > 1 {
        return Ok(Err(format!(
            "{} private keys match this URI: name one with id=",
            private.len()
        )));
    }
    let Some(&key) = private.first() else {
        // No private key: a public key alone by this name still counts as
        // the name being taken.
        let public = session.find_objects(&named(ObjectClass::PUBLIC_KEY, None))?;
        return Ok(Ok((None, public.first().copied())));
    };
    let id = session
        .get_attributes(key, &[AttributeType::Id])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Id(id) => Some(id),
            _ => None,
        });
    let public = match id {
        Some(id) => session
            .find_objects(&named(ObjectClass::PUBLIC_KEY, Some(&id)))?
            .first()
            .copied(),
        None => None,
    };
    Ok(Ok((Some(key), public)))
}

/// The DER of a curve's OID, as `CKA_EC_PARAMS` holds it.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_PARAMS: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// A key in a token, signing through its token's pool
/// ([`pki_core::ExternalKey`]).
struct TokenKey {
    spec: TokenKeySpec,
    shown: String,
    key_type: TokenKeyType,
    spki: Vec<u8>,
    /// The token logged in and the key's handle there; found again after
    /// the token was lost.
    live: Mutex<(Arc<Token>, ObjectHandle)>,
    /// Set when logging in again was refused for the PIN: never tried
    /// again by this process (a token locks its PIN after a few wrong
    /// tries).
    pin_refused: AtomicBool,
}

impl TokenKey {
    /// The token and the key's handle: the ones held, or, when the token
    /// was lost, a new login and the key found again (it must be the same
    /// key).
    fn live(&self) -> std::result::Result<(Arc<Token>, ObjectHandle), String> {
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !live.0.lost.load(Ordering::Relaxed) && !live.0.stale() {
            return Ok(live.clone());
        }
        if self.pin_refused.load(Ordering::Relaxed) {
            return Err(
                "the token refused the PIN when logging in again; not tried again (restart with \
                 the right PIN)"
                    .into(),
            );
        }
        let reason = |e: Error| match e {
            Error::Token { reason, .. } => reason,
        };
        let refused_pin = |reason: &str| reason.contains("PIN");
        let found = || -> Result<(Arc<Token>, Located)> {
            let token = Token::shared(&self.spec)?;
            let key = locate(&self.spec, &token)?;
            Ok((token, key))
        };
        // A module may not see a token again until it is reset.
        let (token, (key, key_type, spki)) = match found() {
            Ok(found) => found,
            Err(first) => {
                let first = reason(first);
                if refused_pin(&first) {
                    self.pin_refused.store(true, Ordering::Relaxed);
                    return Err(first);
                }
                // Only a token the module does not see (again) is worth a
                // reset, which ends every login through the module.
                if !ABSENT.iter().any(|absent| first.contains(absent)) {
                    return Err(first);
                }
                let path = self.spec.module_path().map_err(reason)?;
                reset_module(&*module(&path)?)?;
                match found() {
                    Ok(found) => found,
                    Err(again) => {
                        let again = reason(again);
                        if refused_pin(&again) {
                            self.pin_refused.store(true, Ordering::Relaxed);
                            return Err(again);
                        }
                        return Err(first);
                    }
                }
            }
        };
        if key_type != self.key_type || spki != self.spki {
            return Err("the token now holds another key under this URI".into());
        }
        tracing::info!("{}: the token is back; logged in again", self.shown);
        *live = (token, key);
        Ok(live.clone())
    }
}

impl ExternalKey for TokenKey {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn public_key_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    fn sign(&self, what: ToSign<'_>) -> std::result::Result<Vec<u8>, String> {
        let pss;
        let (mechanism, data) = match what {
            ToSign::EcdsaDigest(d) if self.key_type == TokenKeyType::EC => (Mechanism::Ecdsa, d),
            ToSign::RsaPkcs1DigestInfo(d) if self.key_type == TokenKeyType::RSA => {
                (Mechanism::RsaPkcs, d)
            }
            ToSign::RsaPssSha256Digest(d) if self.key_type == TokenKeyType::RSA => {
                pss = PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 32.into(),
                };
                (Mechanism::RsaPkcsPss(pss), d)
            }
            ToSign::Ed25519Message(m) if self.key_type == TokenKeyType::EC_EDWARDS => (
                Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                m,
            ),
            _ => return Err("a signature this key's type does not make".into()),
        };
        let (token, key) = self.live()?;
        token.with_session("signing", |s| s.sign(&mechanism, key, data))
    }
}

/// The public key of `public` as DER SubjectPublicKeyInfo, and its type.
fn public_key(
    session: &Session,
    public: ObjectHandle,
) -> std::result::Result<(TokenKeyType, Vec<u8>), String> {
    let attrs = session
        .get_attributes(
            public,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::EcPoint,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )
        .map_err(|e| classify("reading the public key", &e))?;
    let (mut kind, mut params, mut point, mut modulus, mut exponent) =
        (None, None, None, None, None);
    for a in attrs {
        match a {
            Attribute::KeyType(k) => kind = Some(k),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            Attribute::Modulus(m) => modulus = Some(m),
            Attribute::PublicExponent(e) => exponent = Some(e),
            _ => {}
        }
    }
    let kind = kind.ok_or("the public key has no CKA_KEY_TYPE")?;
    let spki = if kind == TokenKeyType::RSA {
        let (Some(modulus), Some(exponent)) = (modulus, exponent) else {
            return Err("the RSA public key has no modulus or exponent".into());
        };
        pki_core::spki_der(PublicKeyParts::Rsa {
            modulus: &modulus,
            exponent: &exponent,
        })
    } else if kind == TokenKeyType::EC || kind == TokenKeyType::EC_EDWARDS {
        let (Some(params), Some(point)) = (params, point) else {
            return Err("the EC public key has no curve or point".into());
        };
        let point = unwrap_octet_string(&point);
        match params.as_slice() {
            p if p == P256_PARAMS => pki_core::spki_der(PublicKeyParts::Ec {
                key_type: KeyType::P256,
                point,
            }),
            p if p == P384_PARAMS => pki_core::spki_der(PublicKeyParts::Ec {
                key_type: KeyType::P384,
                point,
            }),
            p if p == ED25519_PARAMS || p.ends_with(b"edwards25519") => {
                pki_core::spki_der(PublicKeyParts::Ed25519(point))
            }
            _ => return Err("a curve other than P-256, P-384 and Ed25519".into()),
        }
    } else {
        return Err(format!(
            "a {kind} key: only EC, RSA and Ed25519 keys sign here"
        ));
    };
    spki.map(|der| (kind, der)).map_err(|e| e.to_string())
}

/// `CKA_EC_POINT` is a DER OCTET STRING holding the point; some modules
/// give the bare point.
fn unwrap_octet_string(value: &[u8]) -> &[u8] {
    // A bare point has one of these lengths (P-256, P-384, Ed25519).
    if [65, 97, 32].contains(&value.len()) && (value.len() == 32 || value[0] == 0x04) {
        return value;
    }
    match value {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => rest,
        [0x04, 0x81, len, rest @ ..] if usize::from(*len) == rest.len() => rest,
        _ => value,
    }
}

/// The key `spec` names, logged in, as a [`KeyPair`] that signs in the
/// token. Errors name the URI (never its PIN) and what went wrong: no such
/// token, a wrong PIN, no such key, a key this crate does not sign with.
pub fn open(spec: &TokenKeySpec) -> Result<KeyPair> {
    let token = Token::shared(spec)?;
    let (key, key_type, spki) = locate(spec, &token)?;
    wrap(spec, token, key, key_type, spki)
}

/// The key `spec` names in `token`: its handle, type and public key.
fn locate(spec: &TokenKeySpec, token: &Token) -> Result<Located> {
    let found = token
        .with_session("finding the key", |s| find_pair(s, &spec.uri))
        .map_err(|e| spec.err(e))?
        .map_err(|e| spec.err(e))?;
    let found = found.0.zip(found.1);
    let Some((key, public)) = found else {
        return Err(spec.err(
            "no such key in the token (a private key and its public key with this label or id)",
        ));
    };
    let (key_type, spki) = token
        .with_session("reading the public key", |s| Ok(public_key(s, public)))
        .map_err(|e| spec.err(e))?
        .map_err(|e| spec.err(e))?;
    Ok((key, key_type, spki))
}

fn wrap(
    spec: &TokenKeySpec,
    token: Arc<Token>,
    key: ObjectHandle,
    key_type: TokenKeyType,
    spki: Vec<u8>,
) -> Result<KeyPair> {
    let exact = spec.clone();
    KeyPair::external(Box::new(TokenKey {
        shown: spec.uri.to_string(),
        spec: exact,
        live: Mutex::new((token, key)),
        pin_refused: AtomicBool::new(false),
        key_type,
        spki,
    }))
    .map_err(|e| spec.err(e.to_string()))
}

/// Makes a new key of `key_type` in the token `spec` names, with its label
/// and id (a random one when the URI gives none): private, sensitive,
/// never extractable, able to sign only; its public half beside it.
/// Returns the key and the URI that names exactly it (the id included), to
/// be recorded. Refused when the token already holds a key by that name
/// (nothing is changed).
pub fn generate(spec: &TokenKeySpec, key_type: KeyType) -> Result<(KeyPair, TokenKeySpec)> {
    let token = Token::shared(spec)?;
    let label = spec.uri.object.clone();
    // A random id ties the two halves together.
    let id = match &spec.uri.id {
        Some(id) => id.clone(),
        None => {
            let mut id = vec![0u8; 16];
            pki_core::random_bytes(&mut id).map_err(|e| spec.err(e.to_string()))?;
            id
        }
    };
    let existing = token
        .with_session("looking for a key by this name", |s| {
            find_pair(s, &spec.uri)
        })
        .map_err(|e| spec.err(e))?;
    if existing.is_err()
        || existing.is_ok_and(|(private, public)| private.is_some() || public.is_some())
    {
        return Err(spec.err(
            "the token already holds a key by this name: give another object= (nothing was changed)",
        ));
    }
    let (mechanism, public_extra): (Mechanism, Vec<Attribute>) = match key_type {
        KeyType::P256 => (
            Mechanism::EccKeyPairGen,
            vec![Attribute::EcParams(P256_PARAMS.to_vec())],
        ),
        KeyType::P384 => (
            Mechanism::EccKeyPairGen,
            vec![Attribute::EcParams(P384_PARAMS.to_vec())],
        ),
        KeyType::Ed25519 => (
            Mechanism::EccEdwardsKeyPairGen,
            vec![Attribute::EcParams(ED25519_PARAMS.to_vec())],
        ),
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let bits: u64 = match key_type {
                KeyType::Rsa2048 => 2048,
                KeyType::Rsa3072 => 3072,
                _ => 4096,
            };
            (
                Mechanism::RsaPkcsKeyPairGen,
                vec![
                    Attribute::ModulusBits(bits.into()),
                    Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                ],
            )
        }
        other => {
            return Err(spec.err(format!(
                "a {} key cannot be made in a token here",
                other.as_str()
            )));
        }
    };
    let mut named = vec![Attribute::Id(id.clone())];
    if let Some(label) = &label {
        named.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    // Able to sign only. The usages it must not have (decryption,
    // unwrapping, derivation; SoftHSM2 allows them unless told) are taken
    // away after it is made: tpm2-pkcs11 refuses a template that names them
    // false (its TPM object decides them) but lets them be set.
    let mut public_template = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
    ];
    public_template.extend(public_extra);
    public_template.extend(named.iter().cloned());
    let mut private_template = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ];
    private_template.extend(named);
    let (public, private) = token
        .with_session("making the key", |s| {
            s.generate_key_pair(&mechanism, &public_template, &private_template)
        })
        .map_err(|e| spec.err(e))?;
    let mut exact = spec.clone();
    exact.uri.id = Some(id);
    exact.made_here = true;
    // Nothing half made stays behind: the two handles just made go when
    // anything after fails.
    let undo = |e: Error| {
        let _ = token.with_session("removing the half-made key", |s| {
            s.destroy_object(private)?;
            s.destroy_object(public)
        });
        e
    };
    let restricted = token.with_session("taking the key's other usages away", |s| {
        restrict(s, private)
    });
    match restricted {
        Ok(Ok(())) => {}
        Ok(Err(e)) | Err(e) => return Err(undo(spec.err(e))),
    }
    let (kind, spki) =
        match token.with_session("reading the new public key", |s| Ok(public_key(s, public))) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) | Err(e) => return Err(undo(spec.err(e))),
        };
    match wrap(&exact, token, private, kind, spki) {
        Ok(key) => Ok((key, exact)),
        Err(e) => {
            // The token is gone with the failed key: open it again to undo.
            let _ = destroy(&exact);
            Err(e)
        }
    }
}

/// Sets the usages a signing key must not have to false, each on its own
/// (some tokens take some of them at creation only), and checks what the
/// token then says: a key that can still decrypt, unwrap or derive is
/// refused.
fn restrict(
    session: &Session,
    private: ObjectHandle,
) -> cryptoki::error::Result<std::result::Result<(), String>> {
    let usages = [
        (Attribute::Decrypt(false), AttributeType::Decrypt),
        (Attribute::Unwrap(false), AttributeType::Unwrap),
        (Attribute::Derive(false), AttributeType::Derive),
    ];
    for (attribute, kind) in &usages {
        let now = session.get_attributes(private, &[*kind])?;
        let allowed = now.iter().any(|a| {
            matches!(
                a,
                Attribute::Decrypt(true) | Attribute::Unwrap(true) | Attribute::Derive(true)
            )
        });
        if allowed {
            session.update_attributes(private, std::slice::from_ref(attribute))?;
        }
    }
    let after = session.get_attributes(private, &usages.map(|(_, kind)| kind))?;
    if after.iter().any(|a| {
        matches!(
            a,
            Attribute::Decrypt(true) | Attribute::Unwrap(true) | Attribute::Derive(true)
        )
    }) {
        return Ok(Err(
            "the token keeps the new key able to decrypt, unwrap or derive".to_owned(),
        ));
    }
    Ok(Ok(()))
}

/// Destroys the key `spec` names (both halves) in its token: a new key
/// whose CA could not be made is not left behind.
///
/// Only for a URI that names one key exactly (with the id
/// [`generate`] gave it): a URI without an id is refused, so that no other
/// key with the same label is ever removed.
pub fn destroy(spec: &TokenKeySpec) -> Result<()> {
    if spec.uri.id.is_none() {
        return Err(spec.err("not removing a key named without its id"));
    }
    let token = Token::shared(spec)?;
    token
        .with_session("removing the key", |s| {
            let Ok((private, public)) = find_pair(s, &spec.uri)? else {
                return Ok(Err("more than one key matches".to_owned()));
            };
            for object in private.into_iter().chain(public) {
                s.destroy_object(object)?;
            }
            Ok(Ok(()))
        })
        .map_err(|e| spec.err(e))?
        .map_err(|e| spec.err(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_parses_and_shows_without_its_pin() {
        let uri: KeyUri = "pkcs11:token=My%20CA;object=root;id=%01%02?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234"
            .parse()
            .unwrap();
        assert_eq!(uri.token.as_deref(), Some("My CA"));
        assert_eq!(uri.object.as_deref(), Some("root"));
        assert_eq!(uri.id.as_deref(), Some(&[1u8, 2][..]));
        assert_eq!(uri.pin_value.as_deref().map(String::as_str), Some("1234"));
        let shown = uri.to_string();
        assert_eq!(
            shown,
            "pkcs11:token=My%20CA;object=root;id=%01%02?module-path=/usr/lib/softhsm/libsofthsm2.so"
        );
        assert!(!format!("{uri:?}").contains("1234"));
        // What it shows reads back the same, but for the PIN.
        let again: KeyUri = shown.parse().unwrap();
        assert_eq!(again.to_string(), shown);
    }

    #[test]
    fn bad_uris_are_refused_for_what_they_are() {
        for (text, why) in [
            ("file:///root.key", "not a pkcs11: URI"),
            (
                "pkcs11:token=a;object=b;colour=red",
                "unknown attribute \"colour\"",
            ),
            (
                "pkcs11:token=a;object=b?pin-colour=1",
                "unknown query attribute",
            ),
            ("pkcs11:token=a", "names no key"),
            ("pkcs11:object=b", "names no token"),
            ("pkcs11:token=a;object=b;object=c", "object given twice"),
            ("pkcs11:token=a;object=b;type=cert", "type=private"),
            ("pkcs11:token=a;object=%zz", "two hex digits"),
        ] {
            let err = text.parse::<KeyUri>().unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
        // A refused URI's message never shows its PIN, however it is
        // spelled or placed, and no input makes the parser panic.
        for text in [
            "pkcs11:token=a?pin-value=secret-pin&colour=1",
            "pkcs11:token=a;object=b;pin-value=secret-pin",
            "pkcs11:token=a;object=b?PIN-VALUE=secret-pin",
            "pkcs11:token=a;object=b?pin%2Dvalue=secret-pin",
            "pkcs11:token=a;object=b?pin-valuesecret-pin",
            "pkcs11:token=a;object=b?module-path=/m.so;pin-value=secret-pin",
            "pkcs11:token=a;object=b?pin-value=secret-pin?x=1",
            "pkcs11:token=a;object=b?pin-value=secret-pin&pin-source=/f",
            "pkcs11:token=a;object=b?pin-value=secret-pin&pin-value=secret-pin",
            "pkcs11:token=a;object=b?pin-value=secret-pin%€",
            "pkcs11:token=a;object=%a€secret-pin",
        ] {
            let err = text.parse::<KeyUri>().unwrap_err().to_string();
            assert!(!err.contains("secret-pin"), "{text}: {err}");
        }
    }

    #[test]
    fn a_key_file_record_round_trips() {
        let spec = TokenKeySpec::new(
            "pkcs11:token=ca;object=root".parse().unwrap(),
            Some("CA_PIN".into()),
        );
        let record = spec.record();
        assert_eq!(record, "pkcs11:token=ca;object=root\npin-env=CA_PIN\n");
        let back = TokenKeySpec::from_record(&record, None).unwrap().unwrap();
        assert_eq!(back.uri, spec.uri);
        assert_eq!(back.pin_env.as_deref(), Some("CA_PIN"));
        let flag = TokenKeySpec::from_record(&record, Some("OTHER"))
            .unwrap()
            .unwrap();
        assert_eq!(flag.pin_env.as_deref(), Some("OTHER"));
        assert!(TokenKeySpec::from_record("-----BEGIN PRIVATE KEY-----\n", None).is_none());
    }

    #[test]
    fn the_same_key_is_told_by_its_id_and_token_not_its_module_or_pin() {
        let spec = |uri: &str| TokenKeySpec::new(uri.parse().unwrap(), None);
        let a = spec("pkcs11:token=dev;object=k;id=%01?module-path=/a.so");
        assert!(a.same_key(&spec(
            "pkcs11:token=dev;object=k;id=%01?module-path=/b.so&pin-source=/p"
        )));
        assert!(a.same_key(&spec("pkcs11:serial=42;object=k;id=%01")));
        assert!(!a.same_key(&spec("pkcs11:token=dev;object=k;id=%02")));
        assert!(!a.same_key(&spec("pkcs11:token=other;object=k;id=%01")));
        // Without an id on one side, never the same (a renewal's keys
        // share their label).
        assert!(!a.same_key(&spec("pkcs11:token=dev;object=k")));
        assert!(spec("pkcs11:token=dev;object=k").same_key(&spec("pkcs11:token=dev;object=k")));
    }

    #[test]
    fn only_a_record_of_a_key_made_here_says_so() {
        let mut made = TokenKeySpec::new("pkcs11:token=dev;object=k;id=%01".parse().unwrap(), None);
        assert!(!made.made_here());
        assert!(!made.record().contains("made-here"));
        made.made_here = true;
        let back = TokenKeySpec::from_record(&made.record(), None)
            .unwrap()
            .unwrap();
        assert!(back.made_here());
        // A hand-written record (a factory's key) is not.
        let theirs = TokenKeySpec::from_record("pkcs11:token=dev;object=factory;id=%07\n", None)
            .unwrap()
            .unwrap();
        assert!(!theirs.made_here());
    }

    #[test]
    fn ec_points_are_found_wrapped_or_bare() {
        let mut wrapped = vec![0x04, 65, 0x04];
        wrapped.extend([7u8; 64]);
        assert_eq!(unwrap_octet_string(&wrapped), &wrapped[2..]);
        assert_eq!(unwrap_octet_string(&wrapped[2..]), &wrapped[2..]);
        // A bare point whose x begins like a DER length is still bare.
        let mut bare = vec![0x04, 0x3f];
        bare.extend([9u8; 63]);
        assert_eq!(unwrap_octet_string(&bare), &bare[..]);
    }
}
