use crate::{Incoming, MqttState, NetworkOptions, Packet, QoS, Request, StateError};
use crate::{MqttOptions, Outgoing};
use crate::{Transport, framed::Network};

use crate::mqttbytes::v4::*;
use crate::tls;
use flume::{Receiver, Sender, bounded};
use tokio::net::{TcpSocket, TcpStream, lookup_host};
use tokio::select;
use tokio::time::{self, Instant, Sleep};

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

/// Critical errors during eventloop polling
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("Mqtt state: {0}")]
    MqttState(#[from] StateError),
    #[error("Network timeout")]
    NetworkTimeout,
    #[error("Flush timeout")]
    FlushTimeout,
    #[error("TLS: {0}")]
    Tls(#[from] tls::Error),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("Connection refused, return code: `{0:?}`")]
    ConnectionRefused(ConnectReturnCode),
    #[error("Expected ConnAck packet, received: {0:?}")]
    NotConnAck(Box<Packet>),
    #[error("Requests done")]
    RequestsDone,
}

/// Eventloop with all the state of a connection
pub struct EventLoop {
    /// Options of the current mqtt connection
    pub mqtt_options: MqttOptions,
    /// Current state of the connection
    pub state: MqttState,
    /// Request stream
    requests_rx: Receiver<Request>,
    /// Requests handle to send requests
    pub(crate) requests_tx: Sender<Request>,
    /// Pending packets from last session
    pub pending: VecDeque<Request>,
    /// Network connection to the broker
    pub network: Option<Network>,
    /// Keep alive time
    keepalive_timeout: Option<Pin<Box<Sleep>>>,
    pub network_options: NetworkOptions,
}

/// Events which can be yielded by the event loop
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Incoming(Incoming),
    Outgoing(Outgoing),
    /// Not upstream: a PUBLISH larger than the incoming limit, whose bytes
    /// were read and dropped so that the connection carries on. `publish`
    /// has its topic, QoS, flags and packet id, and an empty payload;
    /// `size` is its remaining length, `max` the limit. With manual acks,
    /// acknowledge it like any publish, or the broker keeps it.
    TooLarge {
        publish: Publish,
        size: usize,
        max: usize,
    },
    /// Not upstream: a QoS 2 PUBLISH sent again (marked DUP after a
    /// reconnect) with the packet id of one delivered before whose PUBREC
    /// the caller has not sent yet: not delivered a second time (MQTT 3.1.1
    /// section 4.3.3); the caller's PUBREC answers both.
    DuplicateDropped(u16),
}

impl EventLoop {
    /// New MQTT `EventLoop`
    ///
    /// When connection encounters critical errors (like auth failure), user has a choice to
    /// access and update `options`, `state` and `requests`.
    pub fn new(mqtt_options: MqttOptions, cap: usize) -> EventLoop {
        let (requests_tx, requests_rx) = bounded(cap);
        let pending = VecDeque::new();
        let max_inflight = mqtt_options.inflight;
        let manual_acks = mqtt_options.manual_acks;

        EventLoop {
            mqtt_options,
            state: MqttState::new(max_inflight, manual_acks),
            requests_tx,
            requests_rx,
            pending,
            network: None,
            keepalive_timeout: None,
            network_options: NetworkOptions::new(),
        }
    }

    /// Last session might contain packets which aren't acked. MQTT says these packets should be
    /// republished in the next session. Move pending messages from state to eventloop, drops the
    /// underlying network connection and clears the keepalive timeout if any.
    ///
    /// > NOTE: Use only when EventLoop is blocked on network and unable to immediately handle disconnect.
    /// > Also, while this helps prevent data loss, the pending list length should be managed properly.
    /// > For this reason we recommend setting [`AsycClient`](crate::AsyncClient)'s channel capacity to `0`.
    pub fn clean(&mut self) {
        self.network = None;
        self.keepalive_timeout = None;
        self.requeue_in_flight();

        // drain requests from channel which weren't yet received
        let mut requests_in_channel: Vec<_> = self.requests_rx.drain().collect();

        // Wait for publish retransmission, else the broker could be
        // confused by an unexpected ack.
        requests_in_channel.retain(|request| !request.is_puback());

        self.pending.extend(requests_in_channel);
    }

    /// Not upstream: stops (`true`) or resumes reading from the network,
    /// for a caller whose queues of received messages are full. Requests
    /// and pings still go out meanwhile; the broker's messages wait in the
    /// socket, and then in the broker (TCP flow control). Kept across
    /// reconnects until changed.
    pub fn pause_reading(&mut self, paused: bool) {
        self.state.set_reading_paused(paused);
    }

    /// Not upstream: how many sessions the broker has started for us so
    /// far (CONNACKs without a session present). A message handed out by
    /// [`EventLoop::poll`] came in the session current when it was handed
    /// out; acknowledge it with [`AsyncClient::ack_in`] and that number.
    ///
    /// [`AsyncClient::ack_in`]: crate::AsyncClient::ack_in
    pub fn session_generation(&self) -> u64 {
        self.state.session_generation()
    }

    /// Not upstream: ends the connection the polite way, for a client that
    /// reconnects at once (say, with a renewed certificate). The
    /// acknowledgements waiting in the request channel are written first
    /// (`clean` would drop them, and the broker would deliver those
    /// messages again), then DISCONNECT (so the broker does not publish
    /// the Last Will, MQTT 3.1.1 section 3.14.4), all flushed within the
    /// connection timeout, and the stream ended the orderly way (TLS
    /// close_notify, TCP FIN, and what the broker still sends read and
    /// dropped until it closes, so no reset discards the DISCONNECT); then
    /// the rest is kept as [`EventLoop::clean`] keeps it. A link that is already broken only loses the politeness:
    /// the error is returned after cleaning.
    pub async fn close_gracefully(&mut self) -> Result<(), ConnectionError> {
        let mut written: Result<(), ConnectionError> = Ok(());
        let mut kept = Vec::new();
        if let Some(network) = self.network.as_mut() {
            for request in self.requests_rx.drain() {
                if !matches!(
                    request,
                    Request::PubAck(_) | Request::PubRec(_) | Request::AckIn { .. }
                ) {
                    kept.push(request);
                    continue;
                }
                if written.is_ok() {
                    written = match self.state.handle_outgoing_packet(request) {
                        Ok(Some(packet)) => network.write(packet).await.map_err(Into::into),
                        Ok(None) => Ok(()),
                        Err(e) => Err(e.into()),
                    };
                }
            }
            if written.is_ok() {
                written = network.write(Packet::Disconnect).await.map_err(Into::into);
            }
            let timeout = Duration::from_secs(self.network_options.connection_timeout());
            if written.is_ok() {
                written = match time::timeout(timeout, network.flush()).await {
                    Ok(flushed) => flushed.map_err(Into::into),
                    Err(_) => Err(ConnectionError::FlushTimeout),
                };
            }
            if written.is_ok() {
                network.close(timeout).await;
            }
        }
        self.network = None;
        self.keepalive_timeout = None;
        self.requeue_in_flight();
        self.pending.extend(kept);
        // Whatever came meanwhile, as `clean` keeps it.
        let late: Vec<_> = self
            .requests_rx
            .drain()
            .filter(|request| !request.is_puback())
            .collect();
        self.pending.extend(late);
        written
    }

    /// What was in flight goes out first on the next connection, ahead of
    /// what is still pending from an earlier one (not upstream, which put
    /// it behind: new publishes pending then took the ids first, and the
    /// replays collided with them).
    fn requeue_in_flight(&mut self) {
        let mut requests: VecDeque<Request> = self.state.clean().into();
        requests.append(&mut self.pending);
        self.pending = requests;
    }

    /// Yields Next notification or outgoing request and periodically pings
    /// the broker. Continuing to poll will reconnect to the broker if there is
    /// a disconnection.
    /// **NOTE** Don't block this while iterating
    pub async fn poll(&mut self) -> Result<Event, ConnectionError> {
        // Not upstream: what the last connection produced is handed out
        // before the next one is made, so that the caller has seen every
        // publish it wrote before it learns whether the broker kept the
        // session (upstream hands it out after the next CONNACK).
        if self.network.is_none()
            && let Some(event) = self.state.events.pop_front()
        {
            return Ok(event);
        }
        if self.network.is_none() {
            let (network, connack) = match time::timeout(
                Duration::from_secs(self.network_options.connection_timeout()),
                // Boxed (not upstream): the handshake's state is large and
                // needed once per connection, so it should not size every
                // idle connection's task.
                Box::pin(connect(&self.mqtt_options, self.network_options.clone())),
            )
            .await
            {
                Ok(inner) => inner?,
                Err(_) => return Err(ConnectionError::NetworkTimeout),
            };
            // Not upstream: every event of the last connection was handed
            // out above, and no broker answers an UNSUBSCRIBE of an
            // earlier connection (the caller sends it again): their ids
            // are free again, not held for ever.
            self.state.forget_unsubscribes();
            // Last session might contain packets which aren't acked. If it's a new session, clear the pending packets.
            if !connack.session_present {
                // Not upstream: publishes never written (no packet id yet,
                // or QoS 0) go out on the new session, ahead of what comes
                // later; what was written and not acknowledged is dropped
                // (the caller learns its delivery is unknown), and so is a
                // publish held back for a packet id. Upstream dropped every
                // pending request, and sent those in the channel.
                let unwritten = |request: &Request| matches!(request, Request::Publish(p) if p.qos == QoS::AtMostOnce || p.pkid == 0);
                let mut kept: VecDeque<Request> =
                    self.pending.drain(..).filter(|r| unwritten(r)).collect();
                self.state.new_session();
                // Not upstream: acknowledgements queued for the old session
                // (during the outage) must not reach the new one, where
                // their packet ids belong to other messages. Other requests
                // keep their order, ahead of what comes later.
                kept.extend(self.requests_rx.drain().filter(|request| {
                    !matches!(
                        request,
                        Request::PubAck(_)
                            | Request::PubRec(_)
                            | Request::PubRel(_)
                            | Request::PubComp(_)
                            | Request::AckIn { .. }
                    )
                }));
                self.pending = kept;
                // Not upstream: what the old session delivered and was not
                // handed out yet must not surface in the new one, where its
                // packet ids belong to other messages.
                self.state
                    .events
                    .retain(|event| !matches!(event, Event::Incoming(_) | Event::TooLarge { .. }));
            }
            self.network = Some(network);

            if self.keepalive_timeout.is_none() && !self.mqtt_options.keep_alive.is_zero() {
                self.keepalive_timeout = Some(Box::pin(time::sleep(self.mqtt_options.keep_alive)));
            }

            return Ok(Event::Incoming(Packet::ConnAck(connack)));
        }

        match self.select().await {
            Ok(v) => Ok(v),
            Err(e) => {
                // MQTT requires that packets pending acknowledgement should be republished on session resume.
                // Move pending messages from state to eventloop.
                self.clean();
                Err(e)
            }
        }
    }

    /// Select on network and requests and generate keepalive pings when necessary
    async fn select(&mut self) -> Result<Event, ConnectionError> {
        let Some(network) = self.network.as_mut() else {
            return Err(ConnectionError::MqttState(StateError::InvalidState));
        };
        // let await_acks = self.state.await_acks;
        let inflight_full = self.state.inflight >= self.mqtt_options.inflight;
        let collision = self.state.collision.is_some();
        let network_timeout = Duration::from_secs(self.network_options.connection_timeout());

        // Read buffered events from previous polls before calling a new poll
        if let Some(event) = self.state.events.pop_front() {
            return Ok(event);
        }

        let mut no_sleep = Box::pin(time::sleep(Duration::ZERO));
        // this loop is necessary since self.incoming.pop_front() might return None. In that case,
        // instead of returning a None event, we try again.
        select! {
            // Pull a bunch of packets from network, reply in bunch and yield the first item
            o = network.readb(&mut self.state), if !self.state.reading_paused() => {
                o?;
                // flush all the acks and return first incoming packet
                match time::timeout(network_timeout, network.flush()).await {
                    Ok(inner) => inner?,
                    Err(_)=> return Err(ConnectionError::FlushTimeout),
                };
                next_event(&mut self.state)
            },
             // Handles pending and new requests.
            // If available, prioritises pending requests from previous session.
            // Else, pulls next request from user requests channel.
            // If conditions in the below branch are for flow control.
            // The branch is disabled if there's no pending messages and new user requests
            // cannot be serviced due flow control.
            // We read next user user request only when inflight messages are < configured inflight
            // and there are no collisions while handling previous outgoing requests.
            //
            // Flow control is based on ack count. If inflight packet count in the buffer is
            // less than max_inflight setting, next outgoing request will progress. For this
            // to work correctly, broker should ack in sequence (a lot of brokers won't)
            //
            // E.g If max inflight = 5, user requests will be blocked when inflight queue
            // looks like this                 -> [1, 2, 3, 4, 5].
            // If broker acking 2 instead of 1 -> [1, x, 3, 4, 5].
            // This pulls next user request. But because max packet id = max_inflight, next
            // user request's packet id will roll to 1. This replaces existing packet id 1.
            // Resulting in a collision
            //
            // Eventloop can stop receiving outgoing user requests when previous outgoing
            // request collided. I.e collision state. Collision state will be cleared only
            // when correct ack is received
            // Full inflight queue will look like -> [1a, 2, 3, 4, 5].
            // If 3 is acked instead of 1 first   -> [1a, 2, x, 4, 5].
            // After collision with pkid 1        -> [1b ,2, x, 4, 5].
            // 1a is saved to state and event loop is set to collision mode stopping new
            // outgoing requests (along with 1b).
            o = Self::next_request(
                &mut self.pending,
                &self.requests_rx,
                self.mqtt_options.pending_throttle
            ), if may_take_request(self.pending.front(), inflight_full, collision) => match o {
                Ok(request) => {
                    if let Some(outgoing) = self.state.handle_outgoing_packet(request)? {
                        network.write(outgoing).await?;
                    }
                    match time::timeout(network_timeout, network.flush()).await {
                        Ok(inner) => inner?,
                        Err(_)=> return Err(ConnectionError::FlushTimeout),
                    };
                    next_event(&mut self.state)
                }
                Err(_) => Err(ConnectionError::RequestsDone),
            },
            // We generate pings irrespective of network activity. This keeps the ping logic
            // simple. We can change this behavior in future if necessary (to prevent extra pings)
            _ = self.keepalive_timeout.as_mut().unwrap_or(&mut no_sleep),
                if self.keepalive_timeout.is_some() && !self.mqtt_options.keep_alive.is_zero() => {
                if let Some(timeout) = self.keepalive_timeout.as_mut() {
                    timeout.as_mut().reset(Instant::now() + self.mqtt_options.keep_alive);
                }

                if let Some(outgoing) = self.state.handle_outgoing_packet(Request::PingReq(PingReq))? {
                    network.write(outgoing).await?;
                }
                match time::timeout(network_timeout, network.flush()).await {
                    Ok(inner) => inner?,
                    Err(_)=> return Err(ConnectionError::FlushTimeout),
                };
                next_event(&mut self.state)
            }
            // Not upstream: reading paused, the request channel closed to
            // us and no keep-alive: nothing to do until the caller resumes
            // reading (select! would panic with every branch disabled).
            else => std::future::pending().await,
        }
    }

    pub fn network_options(&self) -> NetworkOptions {
        self.network_options.clone()
    }

    pub fn set_network_options(&mut self, network_options: NetworkOptions) -> &mut Self {
        self.network_options = network_options;
        self
    }

    async fn next_request(
        pending: &mut VecDeque<Request>,
        rx: &Receiver<Request>,
        pending_throttle: Duration,
    ) -> Result<Request, ConnectionError> {
        if !pending.is_empty() {
            time::sleep(pending_throttle).await;
            // We must call .pop_front() AFTER sleep() otherwise we would have
            // advanced the iterator but the future might be canceled before return
            pending.pop_front().ok_or(ConnectionError::RequestsDone)
        } else {
            match rx.recv_async().await {
                Ok(r) => Ok(r),
                Err(_) => Err(ConnectionError::RequestsDone),
            }
        }
    }
}

/// Whether the event loop may take its next request: the first one
/// pending from an earlier connection, else one from the channel. Not
/// upstream: a pending request that is a new QoS 1/2 publish (no packet id
/// yet: it was still in the channel when the link went) waits for room in
/// the in-flight window and for no collision, as one from the channel does.
/// Upstream sends every pending request at once, so a reconnect with up to
/// the channel's capacity of publishes queued put more in flight than there
/// are ids: a publish held as a "collision" was overwritten by the next
/// (dropped unsent) and acknowledgements resolved the wrong callers.
/// Replays of publishes in flight (with their ids), PUBRELs and the rest
/// go at once.
fn may_take_request(pending: Option<&Request>, inflight_full: bool, collision: bool) -> bool {
    match pending {
        Some(Request::Publish(p)) if p.qos != QoS::AtMostOnce && p.pkid == 0 => {
            !inflight_full && !collision
        }
        Some(_) => true,
        None => !inflight_full && !collision,
    }
}

/// The event the branch that just ran pushed; every state transition
/// pushes one.
fn next_event(state: &mut MqttState) -> Result<Event, ConnectionError> {
    state
        .events
        .pop_front()
        .ok_or(ConnectionError::MqttState(StateError::InvalidState))
}

/// This stream internally processes requests from the request stream provided to the eventloop
/// while also consuming byte stream from the network and yielding mqtt packets as the output of
/// the stream.
/// This function (for convenience) includes internal delays for users to perform internal sleeps
/// between re-connections so that cancel semantics can be used during this sleep
async fn connect(
    mqtt_options: &MqttOptions,
    network_options: NetworkOptions,
) -> Result<(Network, ConnAck), ConnectionError> {
    // connect to the broker
    let mut network = network_connect(mqtt_options, network_options).await?;

    // make MQTT connection request (which internally awaits for ack)
    let connack = mqtt_connect(mqtt_options, &mut network).await?;

    Ok((network, connack))
}

pub(crate) async fn socket_connect(
    host: String,
    network_options: NetworkOptions,
) -> io::Result<TcpStream> {
    let addrs = lookup_host(host).await?;
    let mut last_err = None;

    for addr in addrs {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };

        socket.set_nodelay(network_options.tcp_nodelay)?;

        if let Some(send_buff_size) = network_options.tcp_send_buffer_size {
            socket.set_send_buffer_size(send_buff_size)?;
        }
        if let Some(recv_buffer_size) = network_options.tcp_recv_buffer_size {
            socket.set_recv_buffer_size(recv_buffer_size)?;
        }

        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                last_err = Some(e);
            }
        };
    }

    Err(last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

async fn network_connect(
    options: &MqttOptions,
    network_options: NetworkOptions,
) -> Result<Network, ConnectionError> {
    let (domain, port) = options.broker_address();
    let tcp = socket_connect(format!("{domain}:{port}"), network_options).await?;
    let network = match options.transport() {
        Transport::Tcp => Network::new(
            tcp,
            options.max_incoming_packet_size,
            options.max_outgoing_packet_size,
        ),
        Transport::Tls(tls_config) => {
            let socket = tls::tls_connect(&domain, &tls_config, Box::new(tcp)).await?;
            Network::new(
                socket,
                options.max_incoming_packet_size,
                options.max_outgoing_packet_size,
            )
        }
    };
    Ok(network)
}

async fn mqtt_connect(
    options: &MqttOptions,
    network: &mut Network,
) -> Result<ConnAck, ConnectionError> {
    let mut connect = Connect::new(options.client_id());
    connect.keep_alive = options.keep_alive().as_secs() as u16;
    connect.clean_session = options.clean_session();
    connect.last_will = options.last_will();
    connect.login = options.credentials();

    // send mqtt connect packet
    network.write(Packet::Connect(connect)).await?;
    network.flush().await?;

    // validate connack
    match network.read().await? {
        Incoming::ConnAck(connack) if connack.code == ConnectReturnCode::Success => Ok(connack),
        Incoming::ConnAck(connack) => Err(ConnectionError::ConnectionRefused(connack.code)),
        packet => Err(ConnectionError::NotConnAck(Box::new(packet))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PubAck, Publish};

    /// A reconnect leaves up to the channel's capacity of new publishes
    /// pending: they wait for room in the in-flight window like any new
    /// publish, while replays (with their ids) and acknowledgements go.
    #[test]
    fn new_publishes_pending_wait_for_the_window_replays_do_not() {
        let new = Request::Publish(Publish::new("t", QoS::AtLeastOnce, "x"));
        let mut replay = Publish::new("t", QoS::AtLeastOnce, "x");
        replay.pkid = 7;
        let replay = Request::Publish(replay);
        let qos0 = Request::Publish(Publish::new("t", QoS::AtMostOnce, "x"));
        let ack = Request::PubAck(PubAck::new(3));
        for (pending, full, collision, expected) in [
            (Some(&new), true, false, false),
            (Some(&new), false, true, false),
            (Some(&new), false, false, true),
            (Some(&replay), true, true, true),
            (Some(&qos0), true, false, true),
            (Some(&ack), true, true, true),
            (None, true, false, false),
            (None, false, false, true),
        ] {
            assert_eq!(
                may_take_request(pending, full, collision),
                expected,
                "{pending:?} full {full} collision {collision}"
            );
        }
    }
}
