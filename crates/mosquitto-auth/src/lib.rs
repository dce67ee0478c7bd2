//! The broker's side of this project's identities, as a safe core for the
//! Mosquitto plugin (`crates/mosquitto-plugin`, the `cdylib` that crosses
//! into C): what an identity may do is decided from its client
//! certificate (its CN and the role SAN the CA granted) and a small rules
//! file of role templates, for every PUBLISH, every delivery and every
//! SUBSCRIBE (shared subscriptions' groups included); a certificate the
//! CRL lists is refused and its connection taken off.
//!
//! ```
//! use mosquitto_auth::{Request, Rules};
//! use std::path::Path;
//!
//! let rules = Rules::parse(
//!     "[device]\nreadwrite devices/{name}/#\n\
//!      [service]\nread devices/#\nshare ingest devices/#\n",
//!     Path::new("rules"),
//! )?;
//! let device = rules.grant("device", "sensor-1");
//! assert!(device.allows(Request::Write("devices/sensor-1/temp")));
//! assert!(!device.allows(Request::Subscribe("devices/#")));
//! assert!(!device.allows(Request::Subscribe("$share/ingest/devices/#")));
//! let service = rules.grant("service", "ingest");
//! assert!(service.allows(Request::Subscribe("$share/ingest/devices/+/telemetry")));
//! # Ok::<(), mosquitto_auth::Error>(())
//! ```

mod error;
mod identity;
pub mod plugin;
mod revoked;
mod rules;
pub mod topic;

pub use error::{Error, Result};
pub use identity::{DEFAULT_ROLE, Identity, ROLE_URI_PREFIX};
pub use revoked::Revoked;
pub use rules::{Access, Grant, NAME, Request, Rule, Rules, is_safe_name};
