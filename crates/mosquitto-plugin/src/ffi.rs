//! The FFI between Mosquitto 2.0.11's plugin interface (version 5:
//! `mosquitto_plugin.h`, `mosquitto_broker.h` from `mosquitto-dev`) and
//! `mosquitto_auth::plugin`. The only `unsafe` code in the workspace.
//!
//! Layouts and codes are 2.0.11's (checked against its headers and
//! source; see `shared/notes/mosquitto-plugin-2.0.11.md`). The broker calls
//! every callback on its one main thread; the state still sits behind a
//! mutex so that nothing here relies on that. Each entry point runs inside
//! `catch_unwind`: a panic becomes a refusal (or an error at start), never
//! an unwind into C, which would abort the broker.

#![allow(unreachable_pub)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};
use std::time::Instant;

use mosquitto_auth::plugin::{Access, Broker, ClientKey, Level, Options, Plugin};

const MOSQ_ERR_SUCCESS: c_int = 0;
const MOSQ_ERR_ACL_DENIED: c_int = 12;
const MOSQ_ERR_UNKNOWN: c_int = 13;
const MOSQ_ERR_PLUGIN_DEFER: c_int = 17;

const MOSQ_EVT_RELOAD: c_int = 1;
const MOSQ_EVT_ACL_CHECK: c_int = 2;
const MOSQ_EVT_TICK: c_int = 9;
const MOSQ_EVT_DISCONNECT: c_int = 10;

const MOSQ_LOG_INFO: c_int = 0x01;
const MOSQ_LOG_NOTICE: c_int = 0x02;
const MOSQ_LOG_WARNING: c_int = 0x04;
const MOSQ_LOG_ERR: c_int = 0x08;
const MOSQ_LOG_DEBUG: c_int = 0x10;

/// `struct mosquitto_opt`: one `plugin_opt_KEY VALUE` line.
#[repr(C)]
pub struct MosquittoOpt {
    key: *mut c_char,
    value: *mut c_char,
}

/// `struct mosquitto_evt_acl_check` (88 bytes on x86_64).
#[repr(C)]
#[allow(dead_code)]
struct EvtAclCheck {
    future: *mut c_void,
    client: *mut c_void,
    topic: *const c_char,
    payload: *const c_void,
    properties: *mut c_void,
    access: c_int,
    payloadlen: u32,
    qos: u8,
    retain: bool,
    future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_disconnect`.
#[repr(C)]
#[allow(dead_code)]
struct EvtDisconnect {
    future: *mut c_void,
    client: *mut c_void,
    reason: c_int,
    future2: [*mut c_void; 4],
}

/// `MOSQ_FUNC_generic_callback`.
type Callback = extern "C" fn(c_int, *mut c_void, *mut c_void) -> c_int;

unsafe extern "C" {
    fn mosquitto_callback_register(
        identifier: *mut c_void,
        event: c_int,
        cb_func: Callback,
        event_data: *const c_void,
        userdata: *mut c_void,
    ) -> c_int;
    fn mosquitto_callback_unregister(
        identifier: *mut c_void,
        event: c_int,
        cb_func: Callback,
        event_data: *const c_void,
    ) -> c_int;
    fn mosquitto_log_printf(level: c_int, fmt: *const c_char, ...);
    fn mosquitto_client_certificate(client: *const c_void) -> *mut c_void;
    fn mosquitto_client_id(client: *const c_void) -> *const c_char;
    fn mosquitto_client_username(client: *const c_void) -> *const c_char;
    fn mosquitto_client_protocol_version(client: *const c_void) -> c_int;
    fn mosquitto_client_clean_session(client: *const c_void) -> bool;
    fn mosquitto_kick_client_by_clientid(clientid: *const c_char, with_will: bool) -> c_int;
    // OpenSSL's libcrypto, loaded by the broker.
    fn i2d_X509(x: *mut c_void, out: *mut *mut u8) -> c_int;
    fn X509_free(x: *mut c_void);
}

/// What `mosquitto_plugin_init` leaves in `userdata`.
struct State {
    identifier: *mut c_void,
    plugin: Mutex<Plugin>,
    /// Callbacks refused because the plugin was locked (a callback inside
    /// a callback), logged at the next tick: logging then could call back.
    reentrant: AtomicU64,
}

/// The events this plugin handles.
const EVENTS: [(c_int, Callback); 4] = [
    (MOSQ_EVT_ACL_CHECK, on_acl_check),
    (MOSQ_EVT_TICK, on_tick),
    (MOSQ_EVT_DISCONNECT, on_disconnect),
    (MOSQ_EVT_RELOAD, on_reload),
];

/// Runs `f`, turning a panic into `fallback`.
fn guarded(fallback: c_int, f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log(
            MOSQ_LOG_ERR,
            "mqtt-mtls auth: internal error (a panic, caught); refusing this request",
        );
        fallback
    })
}

fn log(level: c_int, message: &str) {
    let Ok(message) = CString::new(message.replace('\0', "\\0")) else {
        return;
    };
    // SAFETY: a format with one `%s` and one NUL-terminated string for it.
    unsafe { mosquitto_log_printf(level, c"%s".as_ptr(), message.as_ptr()) };
}

/// A C string from the broker, or `None` for NULL.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that lives while it is used.
unsafe fn text(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller's promise.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// The broker, as `mosquitto_auth` sees it, for one callback. A
/// [`ClientKey`] is only ever made in this module, from the `client` of the
/// event being handled, and the plugin asks about a client only while
/// handling that client's event. Log lines wait in `logs` until the plugin
/// is unlocked ([`Mosquitto::flush`]): Mosquitto may turn a log line into a
/// `$SYS/broker/log` message at once, whose deliveries call the plugin
/// again.
#[derive(Default)]
struct Mosquitto {
    logs: RefCell<Vec<(c_int, String)>>,
}

impl Mosquitto {
    fn client(key: ClientKey) -> *const c_void {
        key.0 as *const c_void
    }

    /// Writes the log lines the plugin left.
    fn flush(&self) {
        for (level, message) in self.logs.take() {
            log(level, &message);
        }
    }
}

impl Broker for Mosquitto {
    fn certificate(&self, client: ClientKey) -> Option<Vec<u8>> {
        // SAFETY: a live `struct mosquitto *` (see the type's comment);
        // the function returns NULL or a new reference to the peer's X509.
        let x509 = unsafe { mosquitto_client_certificate(Self::client(client)) };
        if x509.is_null() {
            return None;
        }
        // SAFETY: `x509` is a valid X509; with a NULL output `i2d_X509`
        // only returns the length.
        let len = unsafe { i2d_X509(x509, ptr::null_mut()) };
        let der = usize::try_from(len).ok().filter(|n| *n > 0).and_then(|n| {
            let mut buf = vec![0u8; n];
            let mut out = buf.as_mut_ptr();
            // SAFETY: `buf` holds exactly `len` bytes, what i2d_X509
            // said it writes; it advances `out` past them.
            let written = unsafe { i2d_X509(x509, &mut out) };
            (written == len).then_some(buf)
        });
        // SAFETY: the reference `mosquitto_client_certificate` gave us.
        unsafe { X509_free(x509) };
        // A certificate that cannot be encoded is a malformed one: it gets
        // nothing (an empty DER does not parse).
        Some(der.unwrap_or_default())
    }

    fn client_id(&self, client: ClientKey) -> Option<String> {
        // SAFETY: a live client; the id lives as long as it.
        unsafe { text(mosquitto_client_id(Self::client(client))) }
    }

    fn username(&self, client: ClientKey) -> Option<String> {
        // SAFETY: as above.
        unsafe { text(mosquitto_client_username(Self::client(client))) }
    }

    fn ends_with_connection(&self, client: ClientKey) -> bool {
        let client = Self::client(client);
        // SAFETY: a live client.
        let (version, clean) = unsafe {
            (
                mosquitto_client_protocol_version(client),
                mosquitto_client_clean_session(client),
            )
        };
        // MQTT 5 keeps a session by its expiry interval, which 2.0.11 does
        // not show plugins: kept.
        version < 5 && clean
    }

    fn reload(&self) {
        // The broker is this process: a SIGHUP makes its main loop reload
        // the configuration and its listeners' CRL.
        if let Err(e) =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP)
        {
            self.logs.borrow_mut().push((
                MOSQ_LOG_ERR,
                format!("mqtt-mtls auth: cannot reload the broker (SIGHUP): {e}"),
            ));
        }
    }

    fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Info => MOSQ_LOG_INFO,
            Level::Notice => MOSQ_LOG_NOTICE,
            Level::Warning => MOSQ_LOG_WARNING,
            Level::Error => MOSQ_LOG_ERR,
            Level::Debug => MOSQ_LOG_DEBUG,
        };
        self.logs.borrow_mut().push((level, message.to_owned()));
    }
}

/// Disconnects the client with this id, without its Last Will. Called
/// with the plugin unlocked: the broker calls back (`MOSQ_EVT_DISCONNECT`).
fn kick(client_id: &str) {
    // Never NULL: with NULL the broker disconnects every client.
    let Ok(id) = CString::new(client_id) else {
        return;
    };
    // SAFETY: a NUL-terminated id; `false`: no Last Will.
    unsafe { mosquitto_kick_client_by_clientid(id.as_ptr(), false) };
}

/// The state behind `userdata`, locked; `None` when it is locked already
/// (a callback inside a callback: refused, never a deadlock).
///
/// # Safety
/// `userdata` is NULL or the `State` `mosquitto_plugin_init` leaked, not
/// yet freed by `mosquitto_plugin_cleanup`.
unsafe fn with_plugin<T>(userdata: *mut c_void, f: impl FnOnce(&mut Plugin) -> T) -> Option<T> {
    // SAFETY: the caller's promise.
    let state = unsafe { userdata.cast::<State>().as_ref() }?;
    let mut plugin = match state.plugin.try_lock() {
        Ok(plugin) => plugin,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => {
            state.reentrant.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    Some(f(&mut plugin))
}

/// Runs `f` on the plugin (`None`: it was busy), then writes the log lines
/// it left, the plugin unlocked.
///
/// # Safety
/// As [`with_plugin`].
unsafe fn call<T>(
    userdata: *mut c_void,
    f: impl FnOnce(&mut Plugin, &Mosquitto) -> T,
) -> Option<T> {
    let broker = Mosquitto::default();
    // SAFETY: the caller's promise.
    let result = unsafe { with_plugin(userdata, |p| f(p, &broker)) };
    broker.flush();
    result
}

/// Which plugin interface we speak: 5 (Mosquitto 2.0).
#[unsafe(no_mangle)]
pub extern "C" fn mosquitto_plugin_version(count: c_int, versions: *const c_int) -> c_int {
    guarded(-1, || {
        let count = usize::try_from(count).unwrap_or(0);
        if versions.is_null() || count == 0 {
            return -1;
        }
        // SAFETY: the broker passes `count` supported versions.
        let versions = unsafe { std::slice::from_raw_parts(versions, count) };
        if versions.contains(&5) { 5 } else { -1 }
    })
}

/// Reads the options and both files, registers the callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn mosquitto_plugin_init(
    identifier: *mut c_void,
    userdata: *mut *mut c_void,
    options: *mut MosquittoOpt,
    count: c_int,
) -> c_int {
    guarded(MOSQ_ERR_UNKNOWN, || {
        if userdata.is_null() {
            return MOSQ_ERR_UNKNOWN;
        }
        let count = usize::try_from(count).unwrap_or(0);
        let raw: &[MosquittoOpt] = if options.is_null() || count == 0 {
            &[]
        } else {
            // SAFETY: the broker passes `count` options.
            unsafe { std::slice::from_raw_parts(options, count) }
        };
        let pairs: Vec<(String, String)> = raw
            .iter()
            // SAFETY: NUL-terminated strings owned by the broker's config.
            .map(|o| unsafe { (text(o.key), text(o.value)) })
            .map(|(k, v)| (k.unwrap_or_default(), v.unwrap_or_default()))
            .collect();
        let options = match Options::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        {
            Ok(options) => options,
            Err(e) => {
                log(MOSQ_LOG_ERR, &format!("mqtt-mtls auth: {e}"));
                return MOSQ_ERR_UNKNOWN;
            }
        };
        let broker = Mosquitto::default();
        let plugin = Plugin::new(options, &broker);
        broker.flush();
        let state = Box::into_raw(Box::new(State {
            identifier,
            plugin: Mutex::new(plugin),
            reentrant: AtomicU64::new(0),
        }));
        for (i, (event, callback)) in EVENTS.iter().enumerate() {
            // SAFETY: the identifier the broker gave us, a callback of the
            // generic type, and our state as its userdata.
            let rc = unsafe {
                mosquitto_callback_register(
                    identifier,
                    *event,
                    *callback,
                    ptr::null(),
                    state.cast(),
                )
            };
            if rc != MOSQ_ERR_SUCCESS {
                log(
                    MOSQ_LOG_ERR,
                    &format!("mqtt-mtls auth: cannot register for event {event} (error {rc})"),
                );
                for (event, callback) in &EVENTS[..i] {
                    // SAFETY: registered just above.
                    unsafe {
                        mosquitto_callback_unregister(identifier, *event, *callback, ptr::null())
                    };
                }
                // SAFETY: made by Box::into_raw above, no callback holds it.
                drop(unsafe { Box::from_raw(state) });
                return rc;
            }
        }
        // SAFETY: checked not NULL above.
        unsafe { *userdata = state.cast() };
        MOSQ_ERR_SUCCESS
    })
}

/// Unregisters the callbacks and frees the state.
#[unsafe(no_mangle)]
pub extern "C" fn mosquitto_plugin_cleanup(
    userdata: *mut c_void,
    _options: *mut MosquittoOpt,
    _count: c_int,
) -> c_int {
    guarded(MOSQ_ERR_SUCCESS, || {
        if userdata.is_null() {
            return MOSQ_ERR_SUCCESS;
        }
        // SAFETY: the state `mosquitto_plugin_init` leaked; the broker
        // calls cleanup once, after the last callback.
        let state = unsafe { Box::from_raw(userdata.cast::<State>()) };
        for (event, callback) in EVENTS {
            // SAFETY: registered by init with this identifier.
            unsafe {
                mosquitto_callback_unregister(state.identifier, event, callback, ptr::null())
            };
        }
        MOSQ_ERR_SUCCESS
    })
}

extern "C" fn on_acl_check(_event: c_int, data: *mut c_void, userdata: *mut c_void) -> c_int {
    guarded(MOSQ_ERR_ACL_DENIED, || {
        // SAFETY: for MOSQ_EVT_ACL_CHECK the broker passes its event
        // struct, valid for this call.
        let Some(event) = (unsafe { data.cast::<EvtAclCheck>().as_ref() }) else {
            return MOSQ_ERR_ACL_DENIED;
        };
        let Some(access) = Access::from_mosquitto(event.access) else {
            return MOSQ_ERR_ACL_DENIED;
        };
        if event.client.is_null() || event.topic.is_null() {
            return MOSQ_ERR_ACL_DENIED;
        }
        // SAFETY: the topic is a NUL-terminated string valid for this call.
        let Ok(topic) = unsafe { CStr::from_ptr(event.topic) }.to_str() else {
            return MOSQ_ERR_ACL_DENIED;
        };
        let client = ClientKey(event.client as usize);
        // SAFETY: our state, registered as this callback's userdata.
        let allowed = unsafe { call(userdata, |p, b| p.acl_check(b, client, access, topic)) };
        if allowed == Some(true) {
            MOSQ_ERR_SUCCESS
        } else {
            MOSQ_ERR_ACL_DENIED
        }
    })
}

extern "C" fn on_disconnect(_event: c_int, data: *mut c_void, userdata: *mut c_void) -> c_int {
    guarded(MOSQ_ERR_SUCCESS, || {
        // SAFETY: the broker's event struct, valid for this call.
        if let Some(event) = unsafe { data.cast::<EvtDisconnect>().as_ref() }
            && !event.client.is_null()
        {
            let client = ClientKey(event.client as usize);
            // SAFETY: our state.
            unsafe { call(userdata, |p, b| p.disconnect(b, client)) };
        }
        MOSQ_ERR_SUCCESS
    })
}

extern "C" fn on_tick(_event: c_int, _data: *mut c_void, userdata: *mut c_void) -> c_int {
    guarded(MOSQ_ERR_SUCCESS, || {
        // 2.0.11 leaves the tick's time fields zeroed: our own clock.
        // SAFETY: our state.
        let kicks = unsafe { call(userdata, |p, b| p.tick(b, Instant::now())) };
        // SAFETY: our state.
        if let Some(state) = unsafe { userdata.cast::<State>().as_ref() } {
            let refused = state.reentrant.swap(0, Ordering::Relaxed);
            if refused > 0 {
                log(
                    MOSQ_LOG_ERR,
                    &format!(
                        "mqtt-mtls auth: {refused} callbacks came while the plugin was busy \
                         (a callback inside a callback) and were refused"
                    ),
                );
            }
        }
        for id in kicks.into_iter().flatten() {
            kick(&id);
        }
        MOSQ_ERR_SUCCESS
    })
}

extern "C" fn on_reload(_event: c_int, _data: *mut c_void, userdata: *mut c_void) -> c_int {
    guarded(MOSQ_ERR_PLUGIN_DEFER, || {
        // SAFETY: our state.
        unsafe { call(userdata, |p, b| p.reloaded(b)) };
        // Deferred, so that the broker goes on reloading the rest of its
        // security settings.
        MOSQ_ERR_PLUGIN_DEFER
    })
}

// The layouts 2.0.11's headers give on x86_64, as measured: checked when
// this crate compiles.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<EvtAclCheck>() == 88);
    assert!(std::mem::offset_of!(EvtAclCheck, access) == 40);
    assert!(std::mem::offset_of!(EvtAclCheck, payloadlen) == 44);
    assert!(std::mem::offset_of!(EvtAclCheck, qos) == 48);
    assert!(std::mem::offset_of!(EvtAclCheck, retain) == 49);
    assert!(std::mem::offset_of!(EvtDisconnect, reason) == 16);
    assert!(std::mem::size_of::<MosquittoOpt>() == 16);
};
