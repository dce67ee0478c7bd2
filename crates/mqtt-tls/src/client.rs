//! The MQTT client: connect, subscribe with handlers, publish with
//! acknowledgement, and a connection that keeps going.

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rumqttc_mtls::{
    AsyncClient, ClientError, Event, EventLoop, Incoming, MqttOptions, Outgoing, TlsConfiguration,
    Transport,
};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};

use crate::bundle::TlsIdentity;
use crate::classify::classify;
use crate::dispatch::{
    Arrival, DeadLetter, DeadLetterHandler, DeferredHandler, Delivery, Handler, HandlerError,
    HandlerKind, Message, Received, dispatch,
};
use crate::error::{Error, Result};
use crate::options::{Backoff, ConnectOptions, TlsVersions};
use crate::qos::QoS;
use crate::subscriptions::Subscriptions;
use crate::topic::{TopicFilter, check_publish_topic};
use crate::tracker::{Tracker, Wire};

/// Counters for tests, health checks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connection attempts that failed.
    pub failed_attempts: u64,
    /// Successful connections (CONNACK received).
    pub connections: u64,
    /// Messages whose handlers all succeeded.
    pub messages_handled: u64,
    /// Handler calls that returned an error.
    pub handler_failures: u64,
    /// QoS 0 messages dropped because `max_queued_qos0` of them already
    /// waited for the handlers.
    pub qos0_dropped: u64,
    /// Messages no subscription matched within `unmatched_grace`: handed to
    /// the [`MqttClient::on_dead_letter`] handler, or acknowledged and
    /// dropped.
    pub unmatched: u64,
    /// Messages whose handler failed `handler_attempts` times.
    pub handler_gave_up: u64,
    /// Messages over [`ConnectOptions::max_incoming_packet_size`]: dropped
    /// unread, then handed to the [`MqttClient::on_dead_letter`] handler
    /// (with [`DeadLetter::TooLarge`]) or acknowledged and logged.
    pub too_large: u64,
    /// Publishes under way now: waiting to be sent or for the broker's
    /// acknowledgement (including those whose caller stopped waiting).
    pub pending_publishes: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) failed_attempts: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) messages_handled: AtomicU64,
    pub(crate) handler_failures: AtomicU64,
    pub(crate) qos0_dropped: AtomicU64,
    pub(crate) unmatched: AtomicU64,
    pub(crate) handler_gave_up: AtomicU64,
    pub(crate) too_large: AtomicU64,
    /// QoS 0 messages waiting for the dispatcher now.
    pub(crate) qos0_queued: AtomicU64,
    /// `publish` calls waiting for room in the request channel.
    pub(crate) waiting_for_room: AtomicU64,
}

/// How long a connection must stay up before the reconnect backoff starts
/// over (or `Backoff::max`, when that is shorter): longer than a broker
/// takes to kick a client it accepted, short enough that a broker restarting
/// twice in a row is found again quickly.
const STABLE_CONNECTION: Duration = Duration::from_secs(2);

/// The filter of the barrier request: an UNSUBSCRIBE of a filter nobody
/// subscribes to, which the broker answers and otherwise ignores.
const BARRIER_FILTER: &str = "$mqtt-tls/barrier/none";

pub(crate) struct Shared {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls_versions: TlsVersions,
    /// An identity for the next connection ([`MqttClient::set_identity`]).
    pub(crate) next_identity: Mutex<Option<Arc<rustls::ClientConfig>>>,
    /// An identity to reconnect with now, and who waits for the outcome
    /// ([`MqttClient::reconnect_with_identity`]); `swap_notify` wakes the
    /// connection for it.
    forced_identity: Mutex<Option<IdentitySwap>>,
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
    max_offline_queue: Option<usize>,
    pub(crate) unmatched_grace: Duration,
    pub(crate) connected: AtomicBool,
    pub(crate) tracker: Mutex<Tracker>,
    pub(crate) shutdown: AtomicBool,
    pub(crate) shutdown_notify: Notify,
    /// Woken whenever the connection takes requests from its channel (and
    /// when it stops): a publisher that found the channel full waits here.
    pub(crate) room: Notify,
    /// The broker session's number: one more at every CONNACK without a
    /// session present. An acknowledgement is sent only in the session its
    /// message came in.
    pub(crate) session: Arc<AtomicU64>,
    /// Woken at every CONNACK (after `session` and `connected` are set) and
    /// when the connection stops: acknowledgements held during an outage
    /// look again.
    pub(crate) link_changed: Notify,
    /// The `Connection` is gone: nothing will take requests any more.
    /// Written under the tracker's lock.
    pub(crate) gone: AtomicBool,
    pub(crate) stopped: watch::Sender<bool>,
    pub(crate) last_error: Mutex<Option<String>>,
    /// [`ConnectionEvent`]s for [`MqttClient::connection_events`], made
    /// when first asked for: the channel allocates its whole backlog up
    /// front, a few KB on every idle connection of a fleet otherwise.
    pub(crate) events: Mutex<Option<broadcast::Sender<ConnectionEvent>>>,
    pub(crate) counters: Counters,
}

impl Shared {
    /// Tells `event` to whoever listens to [`MqttClient::connection_events`].
    fn event(&self, event: ConnectionEvent) {
        if let Some(events) = lock(&self.events).as_ref() {
            let _ = events.send(event);
        }
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
            unmatched_grace: options.unmatched_grace,
            connected: AtomicBool::new(false),
            tracker: Mutex::new(Tracker::default()),
            shutdown: AtomicBool::new(false),
            shutdown_notify: Notify::new(),
            room: Notify::new(),
            gone: AtomicBool::new(false),
            session: Arc::new(AtomicU64::new(0)),
            link_changed: Notify::new(),
            stopped,
            last_error: Mutex::new(None),
            events: Mutex::new(None),
            counters: Counters::default(),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind;
    // carrying on is safer than poisoning the whole client.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The handle for subscribing, publishing and disconnecting. Cheap to clone
/// and to share between tasks.
#[derive(Clone)]
pub struct MqttClient {
    rumqtt: AsyncClient,
    shared: Arc<Shared>,
}

/// The connection: drive it with [`Connection::connect`] and then
/// [`Connection::run`] (or [`Connection::loop_forever`] from blocking code).
pub struct Connection {
    eventloop: EventLoop,
    rumqtt: AsyncClient,
    shared: Arc<Shared>,
    reconnect: Backoff,
    had_connection_error: bool,
    attempt: u32,
    /// When the current connection got its CONNACK.
    connected_at: Option<std::time::Instant>,
    max_queued_qos0: u64,
    /// Connections in a row that ended soon after their CONNACK.
    short_lived: ShortLived,
}

/// Counts connections that end within [`STABLE_CONNECTION`] of their
/// CONNACK, to say once, after three in a row, what usually causes it (and
/// again only after a connection stayed up).
#[derive(Debug, Default)]
struct ShortLived {
    in_a_row: u32,
    said: bool,
}

impl ShortLived {
    /// A connection ended after `up_for`: whether to warn now.
    fn ended(&mut self, up_for: Duration) -> bool {
        if up_for >= STABLE_CONNECTION {
            *self = Self::default();
            return false;
        }
        self.in_a_row += 1;
        if self.in_a_row >= 3 && !self.said {
            self.said = true;
            return true;
        }
        false
    }
}

impl MqttClient {
    /// Prepares a client for `options` with `identity`; nothing is sent
    /// until the [`Connection`] is driven.
    pub fn new(options: &ConnectOptions, identity: &TlsIdentity) -> Result<(Self, Connection)> {
        check_host(&options.host)?;
        let tls = identity.tls_config(options.tls_versions)?;
        let mut mqtt = MqttOptions::new(&options.client_id, &options.host, options.port);
        mqtt.set_keep_alive(options.keep_alive)
            .set_clean_session(options.clean_session)
            .set_manual_acks(true)
            .set_inflight(options.max_inflight.max(1))
            .set_max_packet_size(
                options.max_incoming_packet_size,
                options.max_outgoing_packet_size,
            )
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        if let Some(will) = &options.last_will {
            mqtt.set_last_will(rumqttc_mtls::LastWill::new(
                &will.topic,
                will.payload.clone(),
                will.qos.to_wire(),
                will.retain,
            ));
        }
        if let Some(credentials) = &options.credentials {
            mqtt.set_credentials(&credentials.username, credentials.password());
        }
        let (rumqtt, mut eventloop) = AsyncClient::new(mqtt, 256);
        // MQTT packets are small and latency-bound: without TCP_NODELAY the
        // TLS handshake and CONNECT wait on delayed ACKs (~40 ms a connect).
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        // Whole seconds, at least one (the event loop's unit): TCP, TLS
        // and CONNACK together, and each flush of a write.
        network.set_connection_timeout(options.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(network);
        let shared = Arc::new(Shared::new(options));
        let client = Self {
            rumqtt: rumqtt.clone(),
            shared: shared.clone(),
        };
        let connection = Connection {
            eventloop,
            rumqtt,
            shared,
            reconnect: options.reconnect,
            had_connection_error: false,
            attempt: 0,
            connected_at: None,
            short_lived: ShortLived::default(),
            max_queued_qos0: options.max_queued_qos0,
        };
        Ok((client, connection))
    }

    /// Subscribes `handler` to `filter` (wildcards and `$share/<group>/...`
    /// allowed). Messages are routed by their topic to every matching
    /// handler; a QoS 1/2 message is acknowledged once all returned `Ok`.
    /// The subscription is renewed after every reconnect without a session,
    /// and sent again whenever the broker may not have confirmed it. The
    /// returned [`Subscribed`] resolves on the broker's SUBACK.
    ///
    /// `filter` is a [`TopicFilter`] (or a reference to one) or a string,
    /// validated here.
    pub fn subscribe<T, F, Fut, E>(&self, filter: T, qos: QoS, handler: F) -> Result<Subscribed>
    where
        T: TryInto<TopicFilter>,
        Error: From<T::Error>,
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        let filter: TopicFilter = filter.try_into()?;
        let handler: Handler = Arc::new(move |m| {
            let fut = handler(m);
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        Ok(self.add_subscription(filter, qos, HandlerKind::Immediate(handler)))
    }

    /// Subscribes a handler that acknowledges later: it gets each message
    /// with a [`Delivery`] and returns at once (say, after queueing both for
    /// a batched database write); the broker gets the acknowledgement when
    /// the `Delivery` is acknowledged. A handler returning `Err` did not take
    /// the message: it is called again, with backoff.
    /// `filter` as for [`subscribe`](Self::subscribe).
    pub fn subscribe_deferred<T, F, Fut, E>(
        &self,
        filter: T,
        qos: QoS,
        handler: F,
    ) -> Result<Subscribed>
    where
        T: TryInto<TopicFilter>,
        Error: From<T::Error>,
        F: Fn(Message, Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        let filter: TopicFilter = filter.try_into()?;
        let handler: DeferredHandler = Arc::new(move |m, d| {
            let fut = handler(m, d);
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        Ok(self.add_subscription(filter, qos, HandlerKind::Deferred(handler)))
    }

    fn add_subscription(&self, filter: TopicFilter, qos: QoS, handler: HandlerKind) -> Subscribed {
        let mut subs = lock(&self.shared.subscriptions);
        let answer = subs.add(filter, qos, handler);
        if self.shared.gone.load(Ordering::SeqCst) {
            subs.close();
        }
        self.shared.subscription_added.notify_waiters();
        if self.shared.connected.load(Ordering::SeqCst) {
            send_unsent(&self.rumqtt, &self.shared, &mut subs);
        }
        Subscribed { answer }
    }

    /// Removes every handler of `filter` (exactly as it was subscribed) and
    /// sends UNSUBSCRIBE; returns once the request is queued. Messages for
    /// it already on their way find no handler. `filter` as for
    /// [`subscribe`](Self::subscribe).
    pub async fn unsubscribe<T>(&self, filter: T) -> Result<()>
    where
        T: TryInto<TopicFilter>,
        Error: From<T::Error>,
    {
        let filter: TopicFilter = filter.try_into()?;
        lock(&self.shared.subscriptions).remove(filter.as_str());
        self.rumqtt
            .unsubscribe(filter.as_str())
            .await
            .map_err(|_| Error::Closed)
    }

    /// Takes the messages that cannot be handled: those no subscription
    /// matches (after [`ConnectOptions::unmatched_grace`]) and those whose
    /// handler failed [`ConnectOptions::handler_attempts`] times, with the
    /// [`DeadLetter`] reason. Like a
    /// [`subscribe_deferred`](Self::subscribe_deferred) handler, it
    /// acknowledges each `Delivery` once the message is safe (the ingest
    /// stores them in a `dead_letters` table); returning `Err` retries it,
    /// without limit. Without one, either kind is acknowledged, counted
    /// ([`Stats::unmatched`], [`Stats::handler_gave_up`]) and logged.
    pub fn on_dead_letter<F, Fut, E>(&self, handler: F)
    where
        F: Fn(Message, Delivery, DeadLetter) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        let handler: DeadLetterHandler = Arc::new(move |m, d, r| {
            let fut = handler(m, d, r);
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        *lock(&self.shared.dead_letter_handler) = Some(handler);
    }

    /// The filters the broker refused (SUBACK 0x80), for health checks.
    pub fn refused_subscriptions(&self) -> Vec<String> {
        lock(&self.shared.subscriptions).refused()
    }

    /// Publishes and waits until the broker acknowledged it (PUBACK for QoS
    /// 1, PUBCOMP for QoS 2); QoS 0 returns once it is handed to the
    /// connection. Needs the [`Connection`] running.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<()> {
        check_publish_topic(topic)?;
        // Counted while it waits for room; once queued, the tracker counts
        // it until the broker's answer, even if this caller gives up.
        let mut waiting = Some(self.pending_publish()?);
        let payload: Bytes = payload.into();
        let rx = loop {
            // Registered before trying, so a wake-up between the try and
            // the wait is not missed.
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.shared.shutdown.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            {
                let mut tracker = lock(&self.shared.tracker);
                if self.shared.gone.load(Ordering::SeqCst) {
                    return Err(Error::Closed);
                }
                let mut closed = false;
                let ready = tracker.ready(|| match self.rumqtt.try_unsubscribe(BARRIER_FILTER) {
                    Ok(()) => true,
                    Err(ClientError::TryRequest(_)) => false,
                    Err(_) => {
                        closed = true;
                        false
                    }
                });
                if closed {
                    return Err(Error::Closed);
                }
                if ready {
                    match self.rumqtt.try_publish_bytes(
                        topic,
                        qos.to_wire(),
                        retain,
                        payload.clone(),
                    ) {
                        Ok(()) => {
                            let (tx, rx) = oneshot::channel();
                            tracker.queued(qos, tx);
                            waiting.take();
                            break rx;
                        }
                        // Full: the connection is busy or down; wait below.
                        Err(ClientError::TryRequest(_)) => {}
                        Err(ClientError::PacketTooLarge { size, max }) => {
                            return Err(Error::PacketTooLarge {
                                topic: topic.to_owned(),
                                size,
                                max,
                            });
                        }
                        Err(_) => return Err(Error::Closed),
                    }
                }
            }
            // The request channel is full: wait until the connection takes
            // requests again (or stops), not on a timer.
            room.await;
        };
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// Counts a publish waiting for room in the request channel for as long
    /// as the returned guard lives (dropped once queued, on return, and when
    /// the caller cancels); while the broker is not connected, refuses it
    /// when `max_offline_queue` publishes are already under way (waiting
    /// for room, or queued and not yet answered).
    fn pending_publish(&self) -> Result<PendingPublish<'_>> {
        let waiting = &self.shared.counters.waiting_for_room;
        // Under the tracker's lock: other publishers count and queue under
        // it too, so the limit holds however many try at once.
        let tracker = lock(&self.shared.tracker);
        if let Some(limit) = self.shared.max_offline_queue
            && !self.shared.connected.load(Ordering::SeqCst)
            && tracker.len() as u64 + waiting.load(Ordering::SeqCst) >= limit as u64
        {
            return Err(Error::OfflineQueueFull { limit });
        }
        waiting.fetch_add(1, Ordering::SeqCst);
        drop(tracker);
        Ok(PendingPublish(waiting))
    }

    /// Sends DISCONNECT and waits until it is on the wire and the
    /// connection has stopped (at most 10 s). Unacknowledged messages stay
    /// unacknowledged: a persistent session gets them again.
    pub async fn disconnect(&self) -> Result<()> {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.shutdown_notify.notify_waiters();
        self.shared.room.notify_waiters();
        let mut stopped = self.shared.stopped.subscribe();
        if !*stopped.borrow() && self.shared.connected.load(Ordering::SeqCst) {
            self.rumqtt.disconnect().await.map_err(|_| Error::Closed)?;
        }
        // The connection stops after writing DISCONNECT, or at once when it
        // is between connection attempts. If it is not being run at all,
        // there is nothing to wait for.
        let _ = tokio::time::timeout(Duration::from_secs(10), stopped.wait_for(|s| *s)).await;
        Ok(())
    }

    /// Uses `identity` (say, a renewed certificate) for every connection
    /// from the next one on, without touching the current one. The client,
    /// its subscriptions and the broker's session stay as they are.
    pub fn set_identity(&self, identity: &TlsIdentity) -> Result<()> {
        let tls = identity.tls_config(self.shared.tls_versions)?;
        *lock(&self.shared.next_identity) = Some(tls);
        Ok(())
    }

    /// Switches to `identity` now: the current connection is closed and
    /// the next one made with the new identity, resuming the same session
    /// (with `clean_session = false` the broker keeps what is
    /// unacknowledged; publishes in flight are sent again, and messages
    /// whose acknowledgement had not gone out yet may come again, marked
    /// as duplicates). Returns `Ok` once the broker accepted the new
    /// identity (CONNACK). If the first attempt fails (a TLS alert, a
    /// refused CONNECT, a reset), returns that error and goes back to the
    /// last identity known to work. Only a broker that is not there at all
    /// (TCP connection refused, no address) does not count against the
    /// identity: it keeps being tried, with the usual backoff, and this
    /// waits; bound it with `tokio::time::timeout` if needed (a caller that
    /// gave up gets the old identity back at the next failure). Fails with [`Error::Closed`] if the [`Connection`] is not
    /// running or stops meanwhile. A later swap supersedes this one.
    pub async fn reconnect_with_identity(&self, identity: &TlsIdentity) -> Result<()> {
        let tls = identity.tls_config(self.shared.tls_versions)?;
        let (tx, rx) = oneshot::channel();
        {
            let _tracker = lock(&self.shared.tracker);
            if self.shared.gone.load(Ordering::SeqCst)
                || self.shared.shutdown.load(Ordering::SeqCst)
            {
                return Err(Error::Closed);
            }
            // Newer than any identity set for the next connection.
            lock(&self.shared.next_identity).take();
            *lock(&self.shared.forced_identity) = Some(IdentitySwap { tls, reply: tx });
        }
        self.shared.swap_notify.notify_one();
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// The connection's events from now on: each connection made (with
    /// whether the broker kept the session), each lost or failed attempt
    /// with its reason, and the end. Every receiver gets every event in
    /// order, however quickly they follow one another, unless it falls more
    /// than 64 behind (then [`ConnectionEvents::next`] skips to the oldest
    /// kept and says how many it missed, with [`ConnectionEvent::Missed`]).
    pub fn connection_events(&self) -> ConnectionEvents {
        ConnectionEvents {
            rx: lock(&self.shared.events)
                .get_or_insert_with(|| broadcast::channel(EVENTS_BACKLOG).0)
                .subscribe(),
        }
    }

    /// Whether the connection is up (CONNACK received, no error since).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// The last connection error, as a person-readable message.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// Counters since the client was made.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            failed_attempts: c.failed_attempts.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
            messages_handled: c.messages_handled.load(Ordering::Relaxed),
            handler_failures: c.handler_failures.load(Ordering::Relaxed),
            qos0_dropped: c.qos0_dropped.load(Ordering::Relaxed),
            unmatched: c.unmatched.load(Ordering::Relaxed),
            handler_gave_up: c.handler_gave_up.load(Ordering::Relaxed),
            too_large: c.too_large.load(Ordering::Relaxed),
            pending_publishes: lock(&self.shared.tracker).len() as u64
                + c.waiting_for_room.load(Ordering::Relaxed),
        }
    }
}

/// A publish waiting for room, counted in [`Stats::pending_publishes`].
struct PendingPublish<'a>(&'a AtomicU64);

impl Drop for PendingPublish<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many connection events a slow receiver may fall behind.
const EVENTS_BACKLOG: usize = 64;

/// A change of the connection, from [`MqttClient::connection_events`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The broker accepted the connection (CONNACK).
    Connected {
        /// Whether it resumed the persistent session (`false`: a new one;
        /// subscriptions are sent again, unacknowledged publishes failed
        /// with [`Error::SessionLost`]).
        session_present: bool,
    },
    /// An established connection was lost; reconnecting follows.
    Disconnected {
        /// Why, classified as [`Connection::connect`] classifies it.
        error: Arc<Error>,
    },
    /// A connection attempt failed; another follows after the backoff.
    ConnectFailed {
        /// Attempts failed in a row so far.
        attempt: u32,
        /// Why.
        error: Arc<Error>,
    },
    /// The connection stopped for good ([`MqttClient::disconnect`], or the
    /// [`Connection`] dropped).
    Stopped,
    /// This receiver fell behind and this many events were dropped for it.
    Missed(u64),
}

/// The receiving end of [`MqttClient::connection_events`].
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

/// A new identity to reconnect with now.
struct IdentitySwap {
    tls: Arc<rustls::ClientConfig>,
    /// Told how the first connection with it went.
    reply: oneshot::Sender<Result<()>>,
}

fn check_host(host: &str) -> Result<()> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    rustls::pki_types::ServerName::try_from(host)
        .map(|_| ())
        .map_err(|e| Error::InvalidHost {
            host: host.to_owned(),
            reason: e.to_string(),
        })
}

/// Sends every subscription not sent yet, in one SUBSCRIBE, unless the
/// request channel is full (then the connection tries again when it takes
/// requests).
fn send_unsent(rumqtt: &AsyncClient, shared: &Shared, subs: &mut Subscriptions) {
    let unsent = subs.unsent();
    if unsent.is_empty() {
        shared.subscriptions_unsent.store(false, Ordering::SeqCst);
        return;
    }
    let names: Vec<String> = unsent.iter().map(|(f, _)| f.clone()).collect();
    let filters: Vec<rumqttc_mtls::SubscribeFilter> = unsent
        .into_iter()
        .map(|(f, q)| rumqttc_mtls::SubscribeFilter::new(f, q.to_wire()))
        .collect();
    match rumqtt.try_subscribe_many(filters) {
        Ok(()) => {
            subs.requested(&names);
            shared.subscriptions_unsent.store(false, Ordering::SeqCst);
        }
        Err(_) => shared.subscriptions_unsent.store(true, Ordering::SeqCst),
    }
}

/// The broker's answer to a subscription, from [`MqttClient::subscribe`].
#[derive(Debug)]
pub struct Subscribed {
    answer: oneshot::Receiver<Result<QoS>>,
}

impl Subscribed {
    /// Waits for the broker's SUBACK: the QoS it granted, or
    /// [`Error::SubscriptionRefused`]. Needs the [`Connection`] running;
    /// [`Error::Closed`] if it stops first.
    pub async fn granted(self) -> Result<QoS> {
        self.answer.await.unwrap_or(Err(Error::Closed))
    }
}

impl Connection {
    /// Connects once: resolves the host, makes the TLS connection and the
    /// MQTT session. Errors are classified (name mismatch, rejected
    /// certificate, refused, DNS, ...) and returned, not retried.
    pub async fn connect(&mut self) -> Result<()> {
        let host = self.shared.host.clone();
        let port = self.shared.port;
        if host.parse::<IpAddr>().is_err() {
            let resolved = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map(|_| ());
            if let Err(e) = resolved {
                return Err(Error::Dns {
                    host,
                    reason: e.to_string(),
                });
            }
        }
        loop {
            match self.eventloop.poll().await {
                Ok(event) => {
                    let connected = matches!(event, Event::Incoming(Incoming::ConnAck(_)));
                    self.handle(event, None);
                    if connected {
                        return Ok(());
                    }
                }
                Err(e) => {
                    self.shared
                        .counters
                        .failed_attempts
                        .fetch_add(1, Ordering::Relaxed);
                    let err = classify(&e, &host, port);
                    *lock(&self.shared.last_error) = Some(err.to_string());
                    self.shared.event(ConnectionEvent::ConnectFailed {
                        attempt: self.attempt.saturating_add(1),
                        error: Arc::new(classify(&e, &host, port)),
                    });
                    return Err(err);
                }
            }
        }
    }

    /// Runs until [`MqttClient::disconnect`]: dispatches messages to the
    /// handlers, resolves publishes, and reconnects with backoff after any
    /// failure, renewing subscriptions when the broker kept no session.
    pub async fn run(mut self) -> Result<()> {
        let (dispatch_tx, dispatch_rx) = mpsc::unbounded_channel();
        let dispatcher = tokio::spawn(dispatch(
            dispatch_rx,
            self.rumqtt.clone(),
            self.shared.clone(),
        ));
        // A forced identity swap waiting for its first CONNACK: the last
        // transport known to work (to go back to if the broker refuses the
        // new identity), and who waits.
        let mut trial: Option<(Transport, oneshot::Sender<Result<()>>)> = None;
        loop {
            if self.shared.shutdown.load(Ordering::SeqCst)
                && !self.shared.connected.load(Ordering::SeqCst)
            {
                break;
            }
            if !self.shared.connected.load(Ordering::SeqCst) {
                // Between connections: a forced swap that arrived during a
                // backoff, or else an identity set for "from the next
                // connection on", is taken into use here.
                self.take_forced_swap(&mut trial);
                let next = if trial.is_none() {
                    lock(&self.shared.next_identity).take()
                } else {
                    None
                };
                if let Some(tls) = next {
                    self.use_tls(tls);
                }
            }
            let polled = tokio::select! {
                biased;
                () = self.shared.swap_notify.notified() => None,
                polled = self.eventloop.poll() => Some(polled),
            };
            let Some(polled) = polled else {
                if self.take_forced_swap(&mut trial) {
                    // Close this connection: publishes in flight move to
                    // the event loop's pending list and go out again on
                    // the next connection of the same session.
                    self.eventloop.clean();
                    self.shared.room.notify_waiters();
                    if self.shared.connected.swap(false, Ordering::SeqCst) {
                        self.had_connection_error = true;
                    }
                }
                continue;
            };
            match polled {
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(event) => {
                    let connack = matches!(event, Event::Incoming(Incoming::ConnAck(_)));
                    self.handle(event, Some(&dispatch_tx));
                    if connack && let Some((_, reply)) = trial.take() {
                        tracing::info!("connected with the new identity");
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(e) => {
                    let was_connected = self.shared.connected.swap(false, Ordering::SeqCst);
                    // The event loop moved what was in the request channel
                    // to its pending list: there is room for publishers.
                    self.shared.room.notify_waiters();
                    if self.shared.shutdown.load(Ordering::SeqCst) {
                        break;
                    }
                    self.had_connection_error = true;
                    let err = classify(&e, &self.shared.host, self.shared.port);
                    // Any failure of the first attempts with a new identity
                    // rolls back to the last one known to work, except a
                    // broker that is not there at all (TCP refused, no
                    // address), which says nothing about the identity: then
                    // the new one keeps being tried, unless whoever asked
                    // for it gave up waiting.
                    let unreachable =
                        matches!(err, Error::ConnectionRefused { .. } | Error::Dns { .. });
                    let given_up = trial.as_ref().is_some_and(|(_, reply)| reply.is_closed());
                    if (!unreachable || given_up)
                        && let Some((previous, reply)) = trial.take()
                    {
                        tracing::warn!(
                            "the new identity was refused ({err}); back to the previous one"
                        );
                        self.eventloop.mqtt_options.set_transport(previous);
                        let _ = reply.send(Err(classify(&e, &self.shared.host, self.shared.port)));
                    }
                    let event_error = Arc::new(classify(&e, &self.shared.host, self.shared.port));
                    self.shared.event(if was_connected {
                        ConnectionEvent::Disconnected { error: event_error }
                    } else {
                        ConnectionEvent::ConnectFailed {
                            attempt: self.attempt.saturating_add(1),
                            error: event_error,
                        }
                    });
                    if was_connected {
                        tracing::warn!("connection lost: {err}");
                        let up_for = self.connected_at.map_or(Duration::ZERO, |at| at.elapsed());
                        if self.short_lived.ended(up_for) {
                            tracing::warn!(
                                "3 connections in a row ended within 2 s of the broker's CONNACK: \
                                 most likely another client is connected with the same identity \
                                 (our brokers bind the client id to the certificate's name, so \
                                 each connection knocks the other off): give each instance its \
                                 own identity; else the broker refuses this certificate (revoked, \
                                 or outside its rules)"
                            );
                        }
                        // The backoff starts over only after a connection
                        // that stayed up: a broker that accepts and then
                        // kicks (a client-id takeover, an ACL) is not
                        // hammered every few milliseconds.
                        let stable = self.reconnect.max.min(STABLE_CONNECTION);
                        if self.connected_at.is_some_and(|at| at.elapsed() >= stable) {
                            self.attempt = 0;
                        }
                    } else {
                        self.shared
                            .counters
                            .failed_attempts
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("connecting failed (attempt {}): {err}", self.attempt + 1);
                    }
                    *lock(&self.shared.last_error) = Some(err.to_string());
                    let delay = self.reconnect.delay(self.attempt);
                    self.attempt = self.attempt.saturating_add(1);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shared.shutdown_notify.notified() => {}
                        // A forced swap does not wait out the backoff.
                        () = self.shared.swap_notify.notified() => {}
                    }
                }
            }
        }
        self.shared.connected.store(false, Ordering::SeqCst);
        if let Some((_, reply)) = trial.take() {
            let _ = reply.send(Err(Error::Closed));
        }
        drop(dispatch_tx);
        dispatcher.abort();
        fail_all(&self.shared, || Error::Closed);
        // Stored even when nobody listens yet: a later `disconnect` must see it.
        self.shared.stopped.send_replace(true);
        self.shared.event(ConnectionEvent::Stopped);
        Ok(())
    }

    /// [`Connection::run`] until `shutdown` completes (e.g.
    /// `tokio::signal::ctrl_c()`), then a clean [`MqttClient::disconnect`].
    pub async fn run_until<F>(self, shutdown: F) -> Result<()>
    where
        F: Future + Send + 'static,
    {
        let client = MqttClient {
            rumqtt: self.rumqtt.clone(),
            shared: self.shared.clone(),
        };
        let stopper = tokio::spawn(async move {
            shutdown.await;
            let _ = client.disconnect().await;
        });
        let result = self.run().await;
        stopper.abort();
        result
    }

    /// [`Connection::run`] for code that is not async: a Tokio runtime is
    /// made for it, and handlers run on it.
    pub fn loop_forever(self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Connection {
                host: self.shared.host.clone(),
                port: self.shared.port,
                reason: format!("cannot start a Tokio runtime: {e}"),
            })?;
        runtime.block_on(self.run())
    }

    /// Takes a forced identity swap into use, if one is waiting: the
    /// transport changes and `trial` holds who waits for the outcome (a
    /// trial it supersedes is told so, and the identity to go back to stays
    /// the last one known to work). Returns whether there was one.
    fn take_forced_swap(
        &mut self,
        trial: &mut Option<(Transport, oneshot::Sender<Result<()>>)>,
    ) -> bool {
        let Some(swap) = lock(&self.shared.forced_identity).take() else {
            return false;
        };
        if self.shared.shutdown.load(Ordering::SeqCst) {
            let _ = swap.reply.send(Err(Error::Closed));
            return false;
        }
        let replaced = self.use_tls(swap.tls);
        let previous = match trial.take() {
            Some((known_good, superseded)) => {
                let _ = superseded.send(Err(Error::Connection {
                    host: self.shared.host.clone(),
                    port: self.shared.port,
                    reason: "superseded by a newer identity swap".into(),
                }));
                known_good
            }
            None => replaced,
        };
        *trial = Some((previous, swap.reply));
        true
    }

    /// Makes `tls` the identity of the following connections; returns the
    /// transport it replaces.
    fn use_tls(&mut self, tls: Arc<rustls::ClientConfig>) -> Transport {
        let previous = self.eventloop.mqtt_options.transport();
        self.eventloop
            .mqtt_options
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        previous
    }

    fn handle(&mut self, event: Event, dispatch: Option<&mpsc::UnboundedSender<Received>>) {
        if matches!(event, Event::Outgoing(_)) {
            // The event loop took a request from the channel: there is room.
            self.shared.room.notify_waiters();
            if self.shared.subscriptions_unsent.load(Ordering::SeqCst)
                && self.shared.connected.load(Ordering::SeqCst)
            {
                let mut subs = lock(&self.shared.subscriptions);
                send_unsent(&self.rumqtt, &self.shared, &mut subs);
            }
        }
        match event {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                self.connected_at = Some(std::time::Instant::now());
                if !ack.session_present {
                    self.shared.session.fetch_add(1, Ordering::SeqCst);
                }
                if self.shared.shutdown.load(Ordering::SeqCst) {
                    // disconnect() came while we were connecting: say
                    // goodbye now that there is a connection to say it on
                    // (waiting for room if the channel is full).
                    if self.rumqtt.try_disconnect().is_err() {
                        let rumqtt = self.rumqtt.clone();
                        tokio::spawn(async move {
                            let _ = rumqtt.disconnect().await;
                        });
                    }
                }
                self.shared
                    .counters
                    .connections
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.event(ConnectionEvent::Connected {
                    session_present: ack.session_present,
                });
                if !ack.session_present && self.had_connection_error {
                    // rumqttc dropped everything it had queued: fail the
                    // waiting publishes rather than let them hang or, worse,
                    // be matched with other publishes' acknowledgements.
                    // One lock for failing the waiting publishes, marking
                    // the skip and sending the barrier: no publish slips
                    // in between.
                    lock(&self.shared.tracker)
                        .session_lost(|| self.rumqtt.try_unsubscribe(BARRIER_FILTER).is_ok());
                }
                let mut subs = lock(&self.shared.subscriptions);
                self.shared.connected.store(true, Ordering::SeqCst);
                self.shared.link_changed.notify_waiters();
                // Whatever the broker may not have (everything, without a
                // session; what was in flight, with one) goes out again.
                subs.on_connack(ack.session_present);
                send_unsent(&self.rumqtt, &self.shared, &mut subs);
                tracing::info!(
                    "connected to {}:{} (session present: {})",
                    self.shared.host,
                    self.shared.port,
                    ack.session_present
                );
            }
            Event::Incoming(Incoming::Publish(publish)) => self.deliver(publish, None, dispatch),
            Event::TooLarge { publish, size, max } => {
                self.deliver(publish, Some((size, max)), dispatch);
            }
            Event::Incoming(Incoming::PubAck(ack)) => self.wire(Wire::PubAck(ack.pkid)),
            Event::Incoming(Incoming::PubComp(comp)) => self.wire(Wire::PubComp(comp.pkid)),
            Event::Incoming(Incoming::SubAck(ack)) => {
                let Some(filters) = self.eventloop.state.take_subscribe_filters(ack.pkid) else {
                    return;
                };
                let granted: Vec<Option<QoS>> = ack
                    .return_codes
                    .iter()
                    .map(|code| match code {
                        rumqttc_mtls::SubscribeReasonCode::Success(qos) => {
                            Some(QoS::from_wire(*qos))
                        }
                        rumqttc_mtls::SubscribeReasonCode::Failure => None,
                    })
                    .collect();
                let refused = lock(&self.shared.subscriptions).on_suback(&filters, &granted);
                for filter in refused {
                    let err = Error::SubscriptionRefused { filter };
                    tracing::warn!("{err}");
                    *lock(&self.shared.last_error) = Some(err.to_string());
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => self.wire(Wire::Sent(pkid)),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => self.wire(Wire::AwaitAck(pkid)),
            Event::Outgoing(Outgoing::Unsubscribe(pkid)) => {
                // The barrier, not an application's unsubscribe.
                let barrier = self
                    .eventloop
                    .state
                    .unsubscribe_topics(pkid)
                    .is_some_and(|topics| topics == [BARRIER_FILTER]);
                if barrier {
                    self.wire(Wire::Barrier);
                }
            }
            _ => {}
        }
    }

    /// Hands a received message to the dispatcher (with its size and the
    /// limit when it was too large to read).
    fn deliver(
        &self,
        publish: rumqttc_mtls::Publish,
        too_large: Option<(usize, usize)>,
        dispatch: Option<&mpsc::UnboundedSender<Received>>,
    ) {
        match dispatch {
            Some(tx) => {
                let counters = &self.shared.counters;
                if publish.qos == rumqttc_mtls::QoS::AtMostOnce {
                    // QoS 1/2 are bounded by the broker's in-flight
                    // window (nothing is acknowledged before it is
                    // handled); QoS 0 has no such brake, so a flood
                    // while the handlers are slow is cut off here.
                    if counters.qos0_queued.load(Ordering::Relaxed) >= self.max_queued_qos0 {
                        let dropped = counters.qos0_dropped.fetch_add(1, Ordering::Relaxed);
                        if dropped.is_power_of_two() {
                            tracing::warn!(
                                "QoS 0 message on {} dropped: {} are waiting for the handlers \
                                 ({} dropped so far)",
                                publish.topic,
                                self.max_queued_qos0,
                                dropped + 1
                            );
                        }
                        return;
                    }
                    counters.qos0_queued.fetch_add(1, Ordering::Relaxed);
                }
                let session = self.shared.session.load(Ordering::SeqCst);
                let _ = tx.send(Box::new(Arrival {
                    publish,
                    session,
                    too_large,
                }));
            }
            None => tracing::debug!("message before run(): left unacknowledged"),
        }
    }

    fn wire(&self, event: Wire) {
        lock(&self.shared.tracker).on_wire(event);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Gone (stopped, or its task dropped): no publish may be queued any
        // more, those waiting for an acknowledgement fail, and those waiting
        // for room wake up and fail, all with `Closed`.
        {
            let _tracker = lock(&self.shared.tracker);
            self.shared.gone.store(true, Ordering::SeqCst);
        }
        if let Some(swap) = lock(&self.shared.forced_identity).take() {
            let _ = swap.reply.send(Err(Error::Closed));
        }
        lock(&self.shared.subscriptions).close();
        fail_all(&self.shared, || Error::Closed);
        if !self.shared.stopped.send_replace(true) {
            // Dropped without `run` ending: that is the end too.
            self.shared.event(ConnectionEvent::Stopped);
        }
        self.shared.connected.store(false, Ordering::SeqCst);
        self.shared.room.notify_waiters();
        self.shared.link_changed.notify_waiters();
    }
}

fn fail_all(shared: &Shared, err: impl Fn() -> Error) {
    lock(&shared.tracker).fail_all(err);
}

#[cfg(test)]
mod tests {
    #[test]
    fn three_short_connections_in_a_row_warn_once_until_one_stays_up() {
        use super::ShortLived;
        use std::time::Duration;
        let short = Duration::from_millis(300);
        let long = Duration::from_secs(5);
        let mut s = ShortLived::default();
        assert_eq!(
            [short, short, short, short, short].map(|d| s.ended(d)),
            [false, false, true, false, false]
        );
        assert!(!s.ended(long));
        assert_eq!(
            [short, short, short].map(|d| s.ended(d)),
            [false, false, true]
        );
        let mut s = ShortLived::default();
        assert_eq!(
            [short, short, long, short, short].map(|d| s.ended(d)),
            [false, false, false, false, false]
        );
    }

    use super::*;

    #[test]
    fn hosts_are_dns_names_or_ip_addresses() {
        assert!(check_host("localhost").is_ok());
        assert!(check_host("127.0.0.1").is_ok());
        assert!(check_host("::1").is_ok());
        assert!(check_host("bad host").is_err());
    }
}
