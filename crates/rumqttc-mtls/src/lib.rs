//! A trimmed fork of [rumqttc] 0.25.1's MQTT 3.1.1 client, owned by this
//! workspace so that `mqtt-tls` (its only user) does not bring rustls-webpki
//! 0.102 (four RustSec advisories), ring, rustls-pemfile and
//! rustls-native-certs into every project that depends on it, and so that
//! the fixes below travel with `mqtt-tls` to anyone who depends on it.
//!
//! Every change against upstream is listed in `CHANGES.md` next to this
//! crate's manifest; the code is upstream's (Apache-2.0, see `LICENSE`)
//! where that file does not say otherwise. In short:
//!
//! - TLS is rustls 0.23 only, through a caller-built `ClientConfig`
//!   ([`TlsConfiguration::Rustls`]); no native-tls, websockets, proxies,
//!   URL parsing, MQTT 5 or synchronous client.
//! - Incoming QoS 2 state survives a reconnect of a persistent session: a
//!   PUBLISH redelivered after our PUBREC is acknowledged again, not
//!   delivered twice, and a PUBREL for a packet id we do not know is
//!   answered with PUBCOMP (MQTT 3.1.1 section 4.3.3) instead of failing the
//!   connection: upstream reconnects forever after a cut between PUBREC and
//!   PUBCOMP (rumqtt #664).
//! - Per-connection state is sized to what is in use: no 65,536-bit table,
//!   no outgoing table sized by `max_inflight`, read and write buffers that
//!   grow with the traffic and are released when idle.
//! - Packet-size limits: the incoming default is the largest packet MQTT
//!   allows, the outgoing default 1 MiB, and an oversized publish is refused
//!   by [`AsyncClient`] before anything is queued.
//!
//! ```no_run
//! use rumqttc_mtls::{AsyncClient, MqttOptions, QoS};
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let options = MqttOptions::new("client-1", "localhost", 1883);
//! let (client, mut eventloop) = AsyncClient::new(options, 10);
//! client.subscribe("hello/rumqtt", QoS::AtLeastOnce).await?;
//! loop {
//!     println!("{:?}", eventloop.poll().await?);
//! }
//! # }
//! ```
//!
//! [rumqttc]: https://github.com/bytebeamio/rumqtt/tree/main/rumqttc

use std::fmt::{self, Debug, Formatter};
use std::sync::Arc;
use std::time::Duration;

mod client;
mod eventloop;
mod framed;
pub mod mqttbytes;
mod state;
mod tls;

pub use client::{AsyncClient, ClientError};
pub use eventloop::{ConnectionError, Event, EventLoop};
pub use mqttbytes::v4::*;
pub use mqttbytes::*;
pub use state::{MqttState, StateError};
pub use tls::Error as TlsError;
pub use tokio_rustls;
use tokio_rustls::rustls::ClientConfig;

/// The largest packet MQTT 3.1.1 can frame: a remaining length of
/// 268,435,455 bytes plus the fixed header (section 2.2.3).
pub const MQTT_MAX_PACKET_SIZE: usize = 268_435_455 + 5;

/// The default limit on packets we send: 1 MiB.
pub const DEFAULT_MAX_OUTGOING_PACKET_SIZE: usize = 1024 * 1024;

pub type Incoming = Packet;

/// Current outgoing activity on the eventloop
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Publish packet with packet identifier. 0 implies QoS 0
    Publish(u16),
    /// Subscribe packet with packet identifier
    Subscribe(u16),
    /// Unsubscribe packet with packet identifier
    Unsubscribe(u16),
    /// PubAck packet
    PubAck(u16),
    /// PubRec packet
    PubRec(u16),
    /// PubRel packet
    PubRel(u16),
    /// PubComp packet
    PubComp(u16),
    /// Ping request packet
    PingReq,
    /// Ping response packet
    PingResp,
    /// Disconnect packet
    Disconnect,
    /// Await for an ack for more outgoing progress
    AwaitAck(u16),
}

/// Requests by the client to mqtt event loop. Request are
/// handled one by one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubRec),
    PubComp(PubComp),
    PubRel(PubRel),
    PingReq(PingReq),
    PingResp(PingResp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    Disconnect(Disconnect),
    /// Not upstream: PUBACK or PUBREC for a message received in broker
    /// session `generation` ([`EventLoop::session_generation`]), written
    /// only while that session is the broker's. An acknowledgement that
    /// waited for room in the request channel across a new session is
    /// dropped: there its packet id belongs to another message.
    AckIn {
        /// The session the message came in.
        generation: u64,
        /// `PubAck` or `PubRec`.
        ack: SessionAck,
    },
}

impl Request {
    /// Not upstream: a QoS 1 acknowledgement, tagged with its session or
    /// not. Dropped rather than kept when a connection ends: the broker
    /// sends the message again and it is acknowledged then.
    pub(crate) fn is_puback(&self) -> bool {
        matches!(
            self,
            Request::PubAck(_)
                | Request::AckIn {
                    ack: SessionAck::PubAck(_),
                    ..
                }
        )
    }
}

/// Not upstream: the acknowledgement a [`Request::AckIn`] carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionAck {
    /// QoS 1.
    PubAck(PubAck),
    /// QoS 2 (the first step).
    PubRec(PubRec),
}

impl From<Publish> for Request {
    fn from(publish: Publish) -> Request {
        Request::Publish(publish)
    }
}

impl From<Subscribe> for Request {
    fn from(subscribe: Subscribe) -> Request {
        Request::Subscribe(subscribe)
    }
}

impl From<Unsubscribe> for Request {
    fn from(unsubscribe: Unsubscribe) -> Request {
        Request::Unsubscribe(unsubscribe)
    }
}

/// Transport methods. Defaults to TCP.
/// How to reach the broker.
#[derive(Clone)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP, with rustls.
    Tls(TlsConfiguration),
}

impl Default for Transport {
    fn default() -> Self {
        Self::tcp()
    }
}

impl Transport {
    pub fn tcp() -> Self {
        Self::Tcp
    }

    pub fn tls_with_config(tls_config: TlsConfiguration) -> Self {
        Self::Tls(tls_config)
    }
}

/// The TLS configuration: a rustls `ClientConfig` the caller built (with
/// its crypto provider, roots and client certificate).
#[derive(Clone, Debug)]
pub enum TlsConfiguration {
    Rustls(Arc<ClientConfig>),
}

impl From<ClientConfig> for TlsConfiguration {
    fn from(config: ClientConfig) -> Self {
        TlsConfiguration::Rustls(Arc::new(config))
    }
}

impl From<Arc<ClientConfig>> for TlsConfiguration {
    fn from(config: Arc<ClientConfig>) -> Self {
        TlsConfiguration::Rustls(config)
    }
}

#[derive(Clone, Default)]
pub struct NetworkOptions {
    tcp_send_buffer_size: Option<u32>,
    tcp_recv_buffer_size: Option<u32>,
    tcp_nodelay: bool,
    conn_timeout: u64,
}

impl NetworkOptions {
    pub fn new() -> Self {
        NetworkOptions {
            tcp_send_buffer_size: None,
            tcp_recv_buffer_size: None,
            tcp_nodelay: false,
            conn_timeout: 5,
        }
    }

    pub fn set_tcp_nodelay(&mut self, nodelay: bool) {
        self.tcp_nodelay = nodelay;
    }

    pub fn set_tcp_send_buffer_size(&mut self, size: u32) {
        self.tcp_send_buffer_size = Some(size);
    }

    pub fn set_tcp_recv_buffer_size(&mut self, size: u32) {
        self.tcp_recv_buffer_size = Some(size);
    }

    pub fn set_connection_timeout(&mut self, timeout: u64) -> &mut Self {
        self.conn_timeout = timeout;
        self
    }

    pub fn connection_timeout(&self) -> u64 {
        self.conn_timeout
    }
}

/// Options for a connection.
#[derive(Clone)]
pub struct MqttOptions {
    broker_addr: String,
    port: u16,
    transport: Transport,
    keep_alive: Duration,
    clean_session: bool,
    client_id: String,
    credentials: Option<Login>,
    max_incoming_packet_size: usize,
    max_outgoing_packet_size: usize,
    pending_throttle: Duration,
    inflight: u16,
    last_will: Option<LastWill>,
    manual_acks: bool,
}

impl MqttOptions {
    /// New options for `id` at `host:port`: keep-alive 60 s, clean
    /// session, 100 publishes in flight, incoming packets up to
    /// [`MQTT_MAX_PACKET_SIZE`], outgoing up to
    /// [`DEFAULT_MAX_OUTGOING_PACKET_SIZE`].
    pub fn new<S: Into<String>, T: Into<String>>(id: S, host: T, port: u16) -> MqttOptions {
        MqttOptions {
            broker_addr: host.into(),
            port,
            transport: Transport::tcp(),
            keep_alive: Duration::from_secs(60),
            clean_session: true,
            client_id: id.into(),
            credentials: None,
            max_incoming_packet_size: MQTT_MAX_PACKET_SIZE,
            max_outgoing_packet_size: DEFAULT_MAX_OUTGOING_PACKET_SIZE,
            pending_throttle: Duration::from_micros(0),
            inflight: 100,
            last_will: None,
            manual_acks: false,
        }
    }

    pub fn broker_address(&self) -> (String, u16) {
        (self.broker_addr.clone(), self.port)
    }

    pub fn set_last_will(&mut self, will: LastWill) -> &mut Self {
        self.last_will = Some(will);
        self
    }

    pub fn last_will(&self) -> Option<LastWill> {
        self.last_will.clone()
    }

    pub fn set_client_id(&mut self, client_id: String) -> &mut Self {
        self.client_id = client_id;
        self
    }

    pub fn set_transport(&mut self, transport: Transport) -> &mut Self {
        self.transport = transport;
        self
    }

    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// Sets the keep-alive; whole seconds from 1 s, or zero for none.
    /// Shorter values are raised to 1 s (upstream panics on them).
    pub fn set_keep_alive(&mut self, duration: Duration) -> &mut Self {
        self.keep_alive = if duration.is_zero() {
            duration
        } else {
            duration.max(Duration::from_secs(1))
        };
        self
    }

    pub fn keep_alive(&self) -> Duration {
        self.keep_alive
    }

    pub fn client_id(&self) -> String {
        self.client_id.clone()
    }

    /// Limits on packet sizes: incoming, the remaining length (the packet
    /// less its 2 to 5 byte fixed header) we accept; outgoing, the whole
    /// packet we send. Values above [`MQTT_MAX_PACKET_SIZE`] are lowered to
    /// it.
    pub fn set_max_packet_size(&mut self, incoming: usize, outgoing: usize) -> &mut Self {
        self.max_incoming_packet_size = incoming.min(MQTT_MAX_PACKET_SIZE);
        self.max_outgoing_packet_size = outgoing.min(MQTT_MAX_PACKET_SIZE);
        self
    }

    /// The incoming limit.
    pub fn max_packet_size(&self) -> usize {
        self.max_incoming_packet_size
    }

    /// The outgoing limit.
    pub fn max_outgoing_packet_size(&self) -> usize {
        self.max_outgoing_packet_size
    }

    /// Sets clean session; a persistent session (`false`) needs a client id
    /// and is otherwise left clean.
    pub fn set_clean_session(&mut self, clean_session: bool) -> &mut Self {
        self.clean_session = clean_session || self.client_id.is_empty();
        self
    }

    pub fn clean_session(&self) -> bool {
        self.clean_session
    }

    pub fn set_credentials<U: Into<String>, P: Into<String>>(
        &mut self,
        username: U,
        password: P,
    ) -> &mut Self {
        self.credentials = Some(Login::new(username, password));
        self
    }

    pub fn credentials(&self) -> Option<Login> {
        self.credentials.clone()
    }

    pub fn set_pending_throttle(&mut self, duration: Duration) -> &mut Self {
        self.pending_throttle = duration;
        self
    }

    pub fn pending_throttle(&self) -> Duration {
        self.pending_throttle
    }

    /// Sets how many QoS 1/2 publishes may be in flight; zero is raised to
    /// one (upstream panics on it).
    pub fn set_inflight(&mut self, inflight: u16) -> &mut Self {
        self.inflight = inflight.max(1);
        self
    }

    pub fn inflight(&self) -> u16 {
        self.inflight
    }

    pub fn set_manual_acks(&mut self, manual_acks: bool) -> &mut Self {
        self.manual_acks = manual_acks;
        self
    }

    pub fn manual_acks(&self) -> bool {
        self.manual_acks
    }
}

// Implement Debug manually because ClientConfig doesn't implement it, so derive(Debug) doesn't
// work.
impl Debug for MqttOptions {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        f.debug_struct("MqttOptions")
            .field("broker_addr", &self.broker_addr)
            .field("port", &self.port)
            .field("keep_alive", &self.keep_alive)
            .field("clean_session", &self.clean_session)
            .field("client_id", &self.client_id)
            .field("credentials", &self.credentials)
            .field("max_incoming_packet_size", &self.max_incoming_packet_size)
            .field("max_outgoing_packet_size", &self.max_outgoing_packet_size)
            .field("pending_throttle", &self.pending_throttle)
            .field("inflight", &self.inflight)
            .field("last_will", &self.last_will)
            .field("manual_acks", &self.manual_acks)
            .finish()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn accept_empty_client_id() {
        let _mqtt_opts = MqttOptions::new("", "127.0.0.1", 1883).set_clean_session(true);
    }

    #[test]
    fn set_clean_session_when_client_id_present() {
        let mut options = MqttOptions::new("client_id", "127.0.0.1", 1883);
        options.set_clean_session(false);
        assert!(!options.clean_session());
        options.set_clean_session(true);
        assert!(options.clean_session());
    }

    #[test]
    fn out_of_range_settings_are_clamped_not_panics() {
        let mut options = MqttOptions::new("", "127.0.0.1", 1883);
        options.set_clean_session(false);
        assert!(
            options.clean_session(),
            "a persistent session needs a client id"
        );
        options.set_keep_alive(Duration::from_millis(10));
        assert_eq!(options.keep_alive(), Duration::from_secs(1));
        options.set_inflight(0);
        assert_eq!(options.inflight(), 1);
        options.set_max_packet_size(usize::MAX, usize::MAX);
        assert_eq!(options.max_packet_size(), MQTT_MAX_PACKET_SIZE);
        assert_eq!(options.max_outgoing_packet_size(), MQTT_MAX_PACKET_SIZE);
    }
}
