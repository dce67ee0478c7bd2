//! The state the client's handle ([`MqttClient`]), its [`Connection`] and
//! the dispatcher share: what the connection needs from the options, the
//! identity to switch to, the subscription table, the publish tracker, the
//! [`Link`] to the broker, the signals between them and the counters.
//!
//! [`MqttClient`]: crate::MqttClient
//! [`Connection`]: crate::Connection

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};

use crate::budget::Budget;
use crate::client::events::{ConnectionEvent, Events};
use crate::client::stats::Counters;
use crate::error::Result;
use crate::handler::DeadLetterHandler;
use crate::link::Link;
use crate::options::{Backoff, ConnectOptions, TlsVersions};
use crate::subscriptions::Subscriptions;
use crate::tracker::Tracker;

pub(crate) struct Shared {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls_versions: TlsVersions,
    /// An identity for the next connection ([`MqttClient::set_identity`]).
    ///
    /// [`MqttClient::set_identity`]: crate::MqttClient::set_identity
    pub(crate) next_identity: Mutex<Option<Arc<rustls::ClientConfig>>>,
    /// An identity to reconnect with now, and who waits for the outcome
    /// ([`MqttClient::reconnect_with_identity`]); `swap_notify` wakes the
    /// connection for it.
    ///
    /// [`MqttClient::reconnect_with_identity`]: crate::MqttClient::reconnect_with_identity
    pub(crate) forced_identity: Mutex<Option<IdentitySwap>>,
    pub(crate) swap_notify: Notify,
    pub(crate) handler_retry: Backoff,
    pub(crate) subscriptions: Mutex<Subscriptions>,
    /// Some subscription could not be sent (the request channel was full):
    /// the connection tries again when it takes requests.
    pub(crate) subscriptions_unsent: AtomicBool,
    /// Wakes the dispatcher when a handler is added (for waiting messages).
    pub(crate) subscription_added: Notify,
    /// Gets the messages no subscription matched, and those whose handler
    /// gave up.
    pub(crate) dead_letter_handler: Mutex<Option<DeadLetterHandler>>,
    pub(crate) handler_attempts: Option<u32>,
    /// [`ConnectOptions::max_offline_queue`].
    pub(crate) max_offline_queue: Option<usize>,
    /// [`ConnectOptions::max_outgoing_packet_size`]: SUBSCRIBEs are split
    /// to fit it.
    pub(crate) max_outgoing_packet_size: usize,
    pub(crate) unmatched_grace: Duration,
    /// The broker session, whether it is connected, whether the
    /// `Connection` is gone: what a [`Delivery`](crate::Delivery) needs,
    /// shared with each.
    pub(crate) link: Arc<Link>,
    pub(crate) tracker: Mutex<Tracker>,
    pub(crate) shutdown: AtomicBool,
    pub(crate) shutdown_notify: Notify,
    /// Woken whenever the connection takes requests from its channel (and
    /// when it stops): a publisher that found the channel full waits here.
    pub(crate) room: Notify,
    pub(crate) stopped: watch::Sender<bool>,
    pub(crate) last_error: Mutex<Option<String>>,
    /// [`ConnectionEvent`]s for [`MqttClient::connection_events`].
    ///
    /// [`MqttClient::connection_events`]: crate::MqttClient::connection_events
    pub(crate) events: Events,
    pub(crate) counters: Counters,
    /// Bytes of received messages held now
    /// ([`ConnectOptions::max_queued_bytes`]).
    pub(crate) budget: Arc<Budget>,
}

impl Shared {
    /// Tells `event` to whoever listens to [`MqttClient::connection_events`].
    ///
    /// [`MqttClient::connection_events`]: crate::MqttClient::connection_events
    pub(crate) fn event(&self, event: ConnectionEvent) {
        self.events.send(event);
    }

    /// The state of a client made with `options`, before any connection.
    pub(crate) fn new(options: &ConnectOptions) -> Self {
        let (stopped, _) = watch::channel(false);
        Self {
            host: options.host.clone(),
            port: options.port,
            tls_versions: options.tls_versions,
            next_identity: Mutex::new(None),
            forced_identity: Mutex::new(None),
            swap_notify: Notify::new(),
            handler_retry: options.handler_retry,
            subscriptions: Mutex::new(Subscriptions::default()),
            subscriptions_unsent: AtomicBool::new(false),
            subscription_added: Notify::new(),
            dead_letter_handler: Mutex::new(None),
            handler_attempts: options.handler_attempts,
            max_offline_queue: options.max_offline_queue,
            max_outgoing_packet_size: options.max_outgoing_packet_size,
            unmatched_grace: options.unmatched_grace,
            link: Arc::new(Link::default()),
            tracker: Mutex::new(Tracker::default()),
            shutdown: AtomicBool::new(false),
            shutdown_notify: Notify::new(),
            room: Notify::new(),
            stopped,
            last_error: Mutex::new(None),
            events: Events::default(),
            counters: Counters::default(),
            budget: Budget::new(options.max_queued_bytes),
        }
    }
}

/// A new identity to reconnect with now.
pub(crate) struct IdentitySwap {
    pub(crate) tls: Arc<rustls::ClientConfig>,
    /// Told how the first connection with it went.
    pub(crate) reply: oneshot::Sender<Result<()>>,
}
