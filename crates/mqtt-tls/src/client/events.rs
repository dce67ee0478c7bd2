//! The connection's events: [`ConnectionEvent`], read through
//! [`ConnectionEvents`] from [`MqttClient::connection_events`].
//!
//! [`MqttClient::connection_events`]: crate::MqttClient::connection_events

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::error::Error;
use crate::lock::lock;

/// How many connection events a slow receiver may fall behind.
const EVENTS_BACKLOG: usize = 64;

/// A change of the connection, from
/// [`MqttClient::connection_events`](crate::MqttClient::connection_events).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The broker accepted the connection (CONNACK).
    Connected {
        /// Whether it resumed the persistent session (`false`: a new one;
        /// subscriptions are sent again, unacknowledged publishes failed
        /// with [`Error::SessionLost`] or [`Error::DeliveryUnknown`]).
        session_present: bool,
    },
    /// An established connection was lost; reconnecting follows.
    Disconnected {
        /// Why, classified as
        /// [`Connection::connect`](crate::Connection::connect) classifies
        /// it.
        error: Arc<Error>,
    },
    /// A connection attempt failed; another follows after the backoff.
    ConnectFailed {
        /// Attempts failed in a row so far.
        attempt: u32,
        /// Why.
        error: Arc<Error>,
    },
    /// The connection stopped for good
    /// ([`MqttClient::disconnect`](crate::MqttClient::disconnect), or the
    /// [`Connection`](crate::Connection) dropped).
    Stopped,
    /// This receiver fell behind and this many events were dropped for it.
    Missed(u64),
}

/// The receiving end of
/// [`MqttClient::connection_events`](crate::MqttClient::connection_events).
#[derive(Debug)]
pub struct ConnectionEvents {
    rx: broadcast::Receiver<ConnectionEvent>,
}

impl ConnectionEvents {
    /// The next event; `None` once the client and its connection are gone.
    pub async fn next(&mut self) -> Option<ConnectionEvent> {
        match self.rx.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Some(ConnectionEvent::Missed(missed))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// The sending side, made when first asked for: the channel allocates its
/// whole backlog up front, a few KB on every idle connection of a fleet
/// otherwise.
#[derive(Default)]
pub(crate) struct Events(Mutex<Option<broadcast::Sender<ConnectionEvent>>>);

impl Events {
    /// Tells `event` to every receiver, if there is any.
    pub(crate) fn send(&self, event: ConnectionEvent) {
        if let Some(events) = lock(&self.0).as_ref() {
            let _ = events.send(event);
        }
    }

    /// A receiver of the events from now on.
    pub(crate) fn subscribe(&self) -> ConnectionEvents {
        ConnectionEvents {
            rx: lock(&self.0)
                .get_or_insert_with(|| broadcast::channel(EVENTS_BACKLOG).0)
                .subscribe(),
        }
    }
}
