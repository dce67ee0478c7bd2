//! Brokers: `provision broker-config` writes a Mosquitto configuration for
//! mutual TLS with the plugin that enforces each identity's rules
//! ([`write()`]); [`apply`] takes every committed change of the CA (a
//! revocation, a new role, a new CRL) to each broker folder, whose plugin
//! does the rest.

mod apply;
mod config;
mod rules;
mod systemd;

pub use apply::{Applied, Refreshed, apply};
pub use config::{
    BrokerConfig, BrokerFiles, DEFAULT_MAX_PACKET_SIZE, Enforcement, MAX_PACKET_SIZE_RANGE,
    default_plugin, write,
};
pub use rules::loads_plugin;
pub use systemd::write_systemd_units;
