//! MQTT over mutual TLS, the original design's step 3 in Rust.
//!
//! A [`ClientCert`] bundle (certificate, key, CA) is checked before any
//! network traffic ([`TlsIdentity`]), becomes a `rustls::ClientConfig`
//! (aws-lc-rs provider, our CA as the only root, server names checked), and
//! drives a `rumqttc` client that:
//!
//! - routes messages to per-filter handlers (`+`, `#`, `$`-topics and
//!   `$share/<group>/` handled as MQTT says),
//! - acknowledges QoS 1/2 messages only after their handlers succeeded,
//!   retrying failing handlers with backoff,
//! - resolves [`MqttClient::publish`] when the broker acknowledged it,
//! - reconnects with exponential backoff and jitter, and resubscribes to
//!   everything on every CONNACK (a broker restored from an older save says
//!   it kept a session it partly lost),
//! - holds received messages within a byte bound
//!   ([`ConnectOptions::max_queued_bytes`]),
//! - reports TLS failures as errors a person can act on ([`Error`]).
//!
//! This crate is the only one in the workspace that knows rustls and rumqttc
//! (our fork, `rumqttc-mtls`), and its public API names neither: it has its
//! own [`QoS`], [`TopicFilter`] (a shared subscription made by
//! [`TopicFilter::shared`]), [`Credentials`] and [`Error`]. Filters are
//! taken as a [`TopicFilter`] or as a string validated on the spot.
//!
//! ```no_run
//! use mqtt_tls::{ClientCert, ConnectOptions, MqttClient, QoS};
//!
//! # async fn demo() -> Result<(), mqtt_tls::Error> {
//! let identity = ClientCert::new(
//!     "backend_certs/client1_cert.pem",
//!     "backend_certs/client1.key",
//!     "root_cert/root_ca_cert.pem",
//! )
//! .load()?; // checks key, dates, usage and CA before connecting
//!
//! let (client, mut connection) =
//!     MqttClient::new(&ConnectOptions::new("localhost", 8883, "Client1"), &identity)?;
//! connection.connect().await?;
//! // A device's own topics: the rules `provision broker-config` writes give
//! // it `devices/NAME/...` and the broadcast, nothing else.
//! client.subscribe("devices/client1/#", QoS::AtLeastOnce, |message| async move {
//!     println!("{}: {:?}", message.topic, message.payload);
//!     Ok::<(), std::io::Error>(())
//! })?;
//! tokio::spawn(connection.run());
//! client.publish("devices/client1/data", "hello", QoS::AtLeastOnce, false).await?; // PUBACK received
//! client.disconnect().await?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod budget;
mod bundle;
mod classify;
mod client;
mod error;
mod handler;
pub mod lifecycle;
mod link;
mod lock;
mod options;
mod qos;
/// Credentials and the files around them: `safe-files`, the workspace's
/// one policy (kept here under its old name).
pub use safe_files as secrets;
mod subscriptions;
mod token;
mod topic;
mod tracker;

pub use bundle::{ClientCert, TlsIdentity};
pub use client::{Connection, ConnectionEvent, ConnectionEvents, MqttClient, Stats, Subscribed};
pub use error::{Error, Result};
pub use handler::{DeadLetter, Delivery, HandlerError, Message};
pub use options::{
    Backoff, ConnectOptions, Credentials, DEFAULT_MAX_QUEUED_BYTES, LastWill, TlsVersions,
};
pub use qos::QoS;
pub use topic::TopicFilter;
