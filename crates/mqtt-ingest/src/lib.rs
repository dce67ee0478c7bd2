//! The web-app integration of the original design, done so nothing is
//! lost: an axum service whose startup spawns the mqtt-tls client in the
//! background (Django's `AppConfig.ready`), stores each message through
//! sqlx (SQLite or PostgreSQL), and acknowledges it to the broker only
//! after its batch committed.
//!
//! Embedding the pieces in your own axum app:
//!
//! ```no_run
//! use std::sync::Arc;
//! use mqtt_ingest::{AppState, Batching, Metrics, Store, app, pipeline};
//! use mqtt_tls::{ClientCert, ConnectOptions, MqttClient, QoS, TopicFilter};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let store = Store::open("sqlite://ingest.db").await?;
//! let identity = ClientCert::new("backend_certs/backend_cert.pem", "backend_certs/backend.key",
//!     "root_cert/root_ca_cert.pem").load()?;
//! let mut options = ConnectOptions::new("localhost", 8883, "ingest-1");
//! options.clean_session = false; // a persistent session: nothing unacknowledged is lost
//! let (client, connection) = MqttClient::new(&options, &identity)?;
//! let metrics = Arc::new(Metrics::default());
//! let filters = [(TopicFilter::new("test/data")?, QoS::AtLeastOnce)];
//! let pipeline = pipeline::start(&client, &filters, store.clone(), metrics.clone(),
//!     Batching::default())?;
//! tokio::spawn(connection.run()); // the background task
//! let router = axum::Router::new() // your routes ...
//!     .merge(app(AppState { store, client: client.clone(), metrics }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, router).await?;
//! pipeline.drain().await; // on shutdown: commit and acknowledge what was taken
//! client.disconnect().await?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod app;
pub mod config;
mod error;
pub mod https;
mod metrics;
pub mod pipeline;
mod store;

pub use app::{ApiDoc, AppState, READER_ROLE, app, probes};
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use pipeline::Batching;
pub use store::{NewMessage, Store, StoredMessage, redact};
