//! The connection: drives the fork's event loop (connect, run, reconnect
//! with backoff), turns its events into the tracker's, the subscription
//! table's and the link's, hands received messages to the dispatcher, and
//! switches identities.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc_mtls::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, oneshot};

use crate::classify::classify;
use crate::client::dispatch::{Arrival, Received, dispatch};
use crate::client::events::ConnectionEvent;
use crate::client::shared::Shared;
use crate::client::subscribe::send_unsent;
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::options::{Backoff, ConnectOptions};
use crate::qos::QoS;
use crate::tracker::Wire;

/// How long a connection must stay up before the reconnect backoff starts
/// over (or `Backoff::max`, when that is shorter): longer than a broker
/// takes to kick a client it accepted, short enough that a broker restarting
/// twice in a row is found again quickly.
const STABLE_CONNECTION: Duration = Duration::from_secs(2);

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
    max_queued_bytes: u64,
    /// Connections in a row that ended soon after their CONNACK.
    short_lived: ShortLived,
    /// The application's UNSUBSCRIBEs on this connection awaiting their
    /// UNSUBACK, by packet id.
    unsubscribes: std::collections::HashMap<u16, Vec<String>>,
    /// UNSUBSCRIBEs to send again on this connection (their UNSUBACK never
    /// came before the link went) that found the request channel full:
    /// tried again whenever the event loop takes a request.
    unsubscribes_unsent: Vec<String>,
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

impl Connection {
    /// The connection of a client made with `options` and the TLS
    /// configuration `tls`, and its request channel; nothing is sent until
    /// it is driven.
    pub(crate) fn new(
        options: &ConnectOptions,
        tls: Arc<rustls::ClientConfig>,
        shared: Arc<Shared>,
    ) -> (AsyncClient, Self) {
        let mut mqtt = MqttOptions::new(&options.client_id, &options.host, options.port);
        mqtt.set_keep_alive(options.keep_alive)
            .set_clean_session(options.clean_session)
            .set_manual_acks(true)
            .set_inflight(options.max_inflight.max(1))
            .set_max_packet_size(incoming_limit(options), options.max_outgoing_packet_size)
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
        let connection = Self {
            eventloop,
            rumqtt: rumqtt.clone(),
            shared,
            reconnect: options.reconnect,
            had_connection_error: false,
            attempt: 0,
            connected_at: None,
            short_lived: ShortLived::default(),
            unsubscribes: std::collections::HashMap::new(),
            unsubscribes_unsent: Vec::new(),
            max_queued_qos0: options.max_queued_qos0,
            max_queued_bytes: options.max_queued_bytes,
        };
        (rumqtt, connection)
    }

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

    /// Runs until [`MqttClient::disconnect`](crate::MqttClient::disconnect):
    /// dispatches messages to the handlers, resolves publishes, and
    /// reconnects with backoff after any failure, renewing every
    /// subscription at each CONNACK; stops reading while received messages
    /// fill `max_queued_bytes`.
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
                && !self.shared.link.connected.load(Ordering::SeqCst)
            {
                break;
            }
            if !self.shared.link.connected.load(Ordering::SeqCst) {
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
            // Received messages fill `max_queued_bytes`: stop reading
            // until handlers let go of some.
            let budget = &self.shared.budget;
            let full = budget.full();
            if full != self.eventloop.state.reading_paused() {
                self.eventloop.pause_reading(full);
                if full {
                    self.shared
                        .counters
                        .read_pauses
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        "{} bytes of received messages wait for their handlers: \
                         reading paused",
                        budget.used()
                    );
                }
            }
            // Only while connected: a connection attempt is not cut short
            // (its CONNACK is read whatever the budget says). Nothing to
            // register otherwise: this runs for every event.
            let watch = full && self.shared.link.connected.load(Ordering::SeqCst);
            let freed = async {
                if !watch {
                    return std::future::pending().await;
                }
                // Registered before looking again, so a release in between
                // is not missed.
                let notified = budget.freed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if budget.full() {
                    notified.await;
                }
            };
            let polled = tokio::select! {
                biased;
                () = self.shared.swap_notify.notified() => None,
                () = freed => continue,
                polled = self.eventloop.poll() => Some(polled),
            };
            let Some(polled) = polled else {
                if self.take_forced_swap(&mut trial) {
                    // Close this connection politely: the acknowledgements
                    // already queued go out, then DISCONNECT (no Last
                    // Will); publishes in flight move to the event loop's
                    // pending list and go out again on the next connection
                    // of the same session.
                    if let Err(e) = self.eventloop.close_gracefully().await {
                        tracing::debug!("closing the connection for the new identity: {e}");
                    }
                    self.shared.room.notify_waiters();
                    if self.shared.link.connected.swap(false, Ordering::SeqCst) {
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
                    let was_connected = self.shared.link.connected.swap(false, Ordering::SeqCst);
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
        self.shared.link.connected.store(false, Ordering::SeqCst);
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
    /// `tokio::signal::ctrl_c()`), then a clean
    /// [`MqttClient::disconnect`](crate::MqttClient::disconnect).
    pub async fn run_until<F>(self, shutdown: F) -> Result<()>
    where
        F: Future + Send + 'static,
    {
        let (rumqtt, shared) = (self.rumqtt.clone(), self.shared.clone());
        let stopper = tokio::spawn(async move {
            shutdown.await;
            let _ = disconnect(&rumqtt, &shared).await;
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
                && self.shared.link.connected.load(Ordering::SeqCst)
            {
                let mut subs = lock(&self.shared.subscriptions);
                send_unsent(&self.rumqtt, &self.shared, &mut subs);
            }
            if !self.unsubscribes_unsent.is_empty()
                && self.shared.link.connected.load(Ordering::SeqCst)
            {
                self.send_unsubscribes();
            }
        }
        match event {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                self.connected_at = Some(std::time::Instant::now());
                if !ack.session_present {
                    // The fork's count of sessions, bumped at this CONNACK:
                    // messages are acknowledged with it (`ack_in`), so an
                    // acknowledgement that waited in the request channel
                    // across a new session is dropped by the event loop,
                    // not written where its packet id is another message's.
                    let generation = self.eventloop.session_generation();
                    self.shared.link.session.store(generation, Ordering::SeqCst);
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
                if !ack.session_present {
                    // The event loop dropped what it wrote and had not seen
                    // acknowledged (and handed out every event of the old
                    // connection first): those fail as of unknown delivery;
                    // publishes not written yet go out on the new session.
                    lock(&self.shared.tracker).session_lost();
                }
                // UNSUBSCRIBEs of the old connection get no answer now.
                self.unsubscribes.clear();
                self.unsubscribes_unsent =
                    lock(&self.shared.subscriptions).on_connack_unsubscribing(ack.session_present);
                self.send_unsubscribes();
                let mut subs = lock(&self.shared.subscriptions);
                self.shared.link.connected.store(true, Ordering::SeqCst);
                self.shared.link.changed.notify_waiters();
                // Every subscription goes out again: a broker that came
                // back from an older save says "session present" without
                // the subscriptions made since.
                subs.on_connack();
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
                let topics = self
                    .eventloop
                    .state
                    .unsubscribe_topics(pkid)
                    .map(<[String]>::to_vec)
                    .unwrap_or_default();
                self.unsubscribes.insert(pkid, topics);
            }
            Event::Incoming(Incoming::UnsubAck(ack)) => {
                if let Some(topics) = self.unsubscribes.remove(&ack.pkid) {
                    lock(&self.shared.subscriptions).on_unsuback(&topics);
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
                let bytes = (publish.payload.len() + publish.topic.len()) as u64;
                let charge = if publish.qos == rumqttc_mtls::QoS::AtMostOnce {
                    // QoS 1/2 are bounded by the broker's in-flight
                    // window (nothing is acknowledged before it is
                    // handled) and by pausing the reading; QoS 0 has no
                    // such brake, so a flood while the handlers are slow
                    // is cut off here, by count and by bytes.
                    let charge = (counters.qos0_queued.load(Ordering::Relaxed)
                        < self.max_queued_qos0)
                        .then(|| self.shared.budget.try_charge(bytes))
                        .flatten();
                    let Some(charge) = charge else {
                        let dropped = counters.qos0_dropped.fetch_add(1, Ordering::Relaxed);
                        if dropped.is_power_of_two() {
                            tracing::warn!(
                                "QoS 0 message on {} ({bytes} bytes) dropped: {} bytes of \
                                 received messages wait for the handlers, at most {} messages \
                                 and {} bytes may ({} dropped so far)",
                                publish.topic,
                                self.shared.budget.used(),
                                self.max_queued_qos0,
                                self.max_queued_bytes,
                                dropped + 1
                            );
                        }
                        return;
                    };
                    counters.qos0_queued.fetch_add(1, Ordering::Relaxed);
                    charge
                } else {
                    self.shared.budget.charge(bytes)
                };
                let session = self.shared.link.session.load(Ordering::SeqCst);
                let _ = tx.send(Box::new(Arrival {
                    publish,
                    session,
                    too_large,
                    charge,
                }));
            }
            None => tracing::debug!("message before run(): left unacknowledged"),
        }
    }

    /// Sends the UNSUBSCRIBEs still to send again, in order, while the
    /// request channel has room; a filter subscribed to again meanwhile is
    /// skipped (its UNSUBSCRIBE would remove the new subscription).
    fn send_unsubscribes(&mut self) {
        let subs = lock(&self.shared.subscriptions);
        while let Some(filter) = self.unsubscribes_unsent.first() {
            if subs.unsubscribing.contains(filter) && self.rumqtt.try_unsubscribe(filter).is_err() {
                tracing::debug!(
                    "the UNSUBSCRIBE of {filter} waits for room in the request channel"
                );
                return;
            }
            self.unsubscribes_unsent.remove(0);
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
            self.shared.link.gone.store(true, Ordering::SeqCst);
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
        self.shared.link.connected.store(false, Ordering::SeqCst);
        self.shared.room.notify_waiters();
        self.shared.link.changed.notify_waiters();
    }
}

/// The largest message read: `max_incoming_packet_size`, or
/// `max_queued_bytes` when smaller (a message that could never fit is read
/// past, as one over the limit).
fn incoming_limit(options: &ConnectOptions) -> usize {
    let queued = usize::try_from(options.max_queued_bytes).unwrap_or(usize::MAX);
    options.max_incoming_packet_size.min(queued)
}

fn fail_all(shared: &Shared, err: impl Fn() -> Error) {
    lock(&shared.tracker).fail_all(err);
}

/// [`MqttClient::disconnect`](crate::MqttClient::disconnect): sends
/// DISCONNECT and waits until it is on the wire and the connection has
/// stopped (at most 10 s).
pub(crate) async fn disconnect(rumqtt: &AsyncClient, shared: &Shared) -> Result<()> {
    shared.shutdown.store(true, Ordering::SeqCst);
    shared.shutdown_notify.notify_waiters();
    shared.room.notify_waiters();
    let mut stopped = shared.stopped.subscribe();
    if !*stopped.borrow() && shared.link.connected.load(Ordering::SeqCst) {
        rumqtt.disconnect().await.map_err(|_| Error::Closed)?;
    }
    // The connection stops after writing DISCONNECT, or at once when it
    // is between connection attempts. If it is not being run at all,
    // there is nothing to wait for.
    let _ = tokio::time::timeout(Duration::from_secs(10), stopped.wait_for(|s| *s)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ShortLived;
    use std::time::Duration;

    #[test]
    fn three_short_connections_in_a_row_warn_once_until_one_stays_up() {
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
}
