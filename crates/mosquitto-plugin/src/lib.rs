//! `libmqtt_mtls_auth.so`: a Mosquitto 2.0 plugin (plugin API version 5)
//! that enforces this project's identities inside the broker. Every
//! decision is `mosquitto_auth::plugin`'s; this crate is only the FFI
//! between it and the broker, in one private module (`src/ffi.rs`): the
//! one place in the workspace where `unsafe` is allowed, and every entry
//! point catches panics (one unwinding into C would abort the broker).
//!
//! In `mosquitto.conf` (`provision broker-config` writes these lines):
//!
//! ```text
//! per_listener_settings false
//! plugin /etc/mosquitto/mqtt-mtls/libmqtt_mtls_auth.so
//! plugin_opt_rules /etc/mosquitto/mqtt-mtls/rules
//! plugin_opt_crl /etc/mosquitto/mqtt-mtls/crl.pem
//! ```

// A test binary would need the broker's symbols: the decisions are
// tested in mosquitto-auth, this module against a real Mosquitto
// (provision's suites), and the struct layouts at compile time.
#[cfg(not(test))]
#[allow(unsafe_code)]
mod ffi;
