//! How to connect: [`ConnectOptions`] and the types of its fields.

use std::time::Duration;

use bytes::Bytes;
use zeroize::Zeroizing;

use crate::qos::QoS;

/// Exponential backoff with full jitter: attempt `n` waits a random time
/// between zero and `min(max, initial × 2ⁿ)`, so a fleet that lost its
/// broker at the same instant spreads its reconnects over the whole window
/// instead of arriving in step (`tests/storm.rs` in provision measures it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        base.mul_f64(fastrand::f64())
    }
}

/// What to publish if we vanish without a DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Topic of the will message.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// Its QoS.
    pub qos: QoS,
    /// Whether the broker retains it.
    pub retain: bool,
}

/// A username and password, for a broker that wants them besides the
/// certificate. The password is wiped from memory when dropped, and left
/// out of `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username.
    pub username: String,
    password: Zeroizing<String>,
}

impl Credentials {
    /// A username and its password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: Zeroizing::new(password.into()),
        }
    }

    /// The password.
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Which TLS versions to offer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsVersions {
    /// TLS 1.3 and 1.2.
    #[default]
    Default,
    /// TLS 1.2 only.
    Tls12Only,
    /// TLS 1.3 only.
    Tls13Only,
}

/// [`ConnectOptions::max_queued_bytes`]'s default: 64 MiB.
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 64 * 1024 * 1024;

/// How to connect. Start from [`ConnectOptions::new`] and change fields.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Broker host: a DNS name or an IP address; the broker's certificate
    /// must name it.
    pub host: String,
    /// Broker port (MQTT over TLS: 8883).
    pub port: u16,
    /// The client id; keep it stable for a persistent session.
    pub client_id: String,
    /// Keep-alive interval: whole seconds, up to 65,535 (MQTT's field);
    /// zero for none. Anything else is refused by
    /// [`MqttClient::new`](crate::MqttClient::new).
    pub keep_alive: Duration,
    /// `true`: the broker forgets our subscriptions and queued messages at
    /// each connect. `false`: a persistent session.
    pub clean_session: bool,
    /// Last will, if any.
    pub last_will: Option<LastWill>,
    /// Username and password, if the broker wants them besides the certificate.
    pub credentials: Option<Credentials>,
    /// Delays between reconnection attempts.
    pub reconnect: Backoff,
    /// Delays between retries of a failing handler.
    pub handler_retry: Backoff,
    /// QoS 1/2 publishes in flight at once.
    pub max_inflight: u16,
    /// TLS versions to offer.
    pub tls_versions: TlsVersions,
    /// Calls of a failing handler for one message before giving up on it:
    /// it then goes to the
    /// [`MqttClient::on_dead_letter`](crate::MqttClient::on_dead_letter)
    /// handler, or, without one, is acknowledged, counted
    /// ([`Stats::handler_gave_up`](crate::Stats::handler_gave_up)) and logged, so that one poison message does not hold up the stream.
    /// Default `None`: retry for ever, never acknowledging a message no
    /// handler took (at least once, whatever happens).
    pub handler_attempts: Option<u32>,
    /// How long a connection attempt (TCP, TLS handshake, CONNACK) may take
    /// before it counts as failed, and writing out one batch of packets
    /// (whole seconds, at least one; keep it above what a largest publish
    /// takes on the slowest link). Default: 5 s.
    pub connect_timeout: Duration,
    /// How long a message no subscription matches waits for a handler
    /// subscribed a moment later (a persistent session's backlog arrives
    /// right after CONNACK, often before the application subscribed).
    /// Default: 2 s.
    pub unmatched_grace: Duration,
    /// QoS 0 messages that may wait for the handlers at once; more are
    /// dropped and counted
    /// ([`Stats::qos0_dropped`](crate::Stats::qos0_dropped)). QoS 1/2
    /// messages are not dropped: the broker stops sending when its window
    /// of unacknowledged messages is full. Default: 1,000.
    pub max_queued_qos0: u64,
    /// Bytes of received messages (payload and topic) held in memory at
    /// once, from the moment they are read until their handlers are done
    /// with them (the acknowledgement went out, or the last
    /// [`Delivery`](crate::Delivery) was dropped). A QoS 0 message that
    /// does not fit is dropped and counted
    /// ([`Stats::qos0_dropped`](crate::Stats::qos0_dropped)); QoS 1/2
    /// messages are never dropped: while they fill it, the client stops
    /// reading from the broker (which then holds them; pings still go out)
    /// and carries on when handlers let go of some. One message larger than
    /// this is read past like one over
    /// [`max_incoming_packet_size`](Self::max_incoming_packet_size)
    /// ([`DeadLetter::TooLarge`](crate::DeadLetter::TooLarge)). A handler
    /// that waits for the acknowledgement of its own publish while the
    /// bound is reached can wait for ever (the acknowledgement is behind
    /// the messages not read): keep such handlers' messages small, or this
    /// bound large. Default: 64 MiB.
    pub max_queued_bytes: u64,
    /// The largest packet we accept from the broker, counted without its
    /// 2 to 5 byte fixed header (MQTT's remaining length); a larger one is
    /// read past ([`DeadLetter::TooLarge`](crate::DeadLetter::TooLarge)).
    /// Default: the largest MQTT allows. The limit in force is the smaller
    /// of this and [`max_queued_bytes`](Self::max_queued_bytes) (64 MiB by
    /// default): raise both to read larger messages.
    pub max_incoming_packet_size: usize,
    /// While the broker is not connected, at most this many publishes may
    /// wait for it (counting those sent and not yet acknowledged); one more
    /// fails at once with [`Error::OfflineQueueFull`](crate::Error::OfflineQueueFull).
    /// `Some(0)`: publishing while disconnected fails at once. Default
    /// `None`: publishes wait for the broker however many there are (each
    /// waiting caller holds its payload).
    pub max_offline_queue: Option<usize>,
    /// The largest packet we send;
    /// [`MqttClient::publish`](crate::MqttClient::publish) refuses a bigger
    /// one before anything is queued. Default: 1 MiB.
    pub max_outgoing_packet_size: usize,
}

impl ConnectOptions {
    /// Options for `client_id` at `host:port`: clean session, 30 s
    /// keep-alive, reconnect backoff from 250 ms to 30 s, handler retries
    /// from 100 ms to 10 s.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            client_id: client_id.into(),
            keep_alive: Duration::from_secs(30),
            clean_session: true,
            last_will: None,
            credentials: None,
            reconnect: Backoff {
                initial: Duration::from_millis(250),
                max: Duration::from_secs(30),
            },
            handler_retry: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
            },
            max_inflight: 100,
            tls_versions: TlsVersions::Default,
            max_queued_qos0: 1_000,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            unmatched_grace: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            handler_attempts: None,
            max_offline_queue: None,
            max_incoming_packet_size: rumqttc_mtls::MQTT_MAX_PACKET_SIZE,
            max_outgoing_packet_size: rumqttc_mtls::DEFAULT_MAX_OUTGOING_PACKET_SIZE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_hide_their_password() {
        let c = Credentials::new("user", "s3cret");
        assert_eq!((c.username.as_str(), c.password()), ("user", "s3cret"));
        let shown = format!("{c:?}");
        assert!(
            shown.contains("user") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_bounded() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for attempt in 0..40 {
            let d = b.delay(attempt);
            let base = (Duration::from_millis(100) * (1 << attempt.min(20))).min(b.max);
            assert!(d <= base, "attempt {attempt}: {d:?}");
        }
        let samples: Vec<_> = (0..1000).map(|_| b.delay(2)).collect();
        // Full jitter: spread over the whole window, not its upper half.
        let early = samples
            .iter()
            .filter(|d| **d < Duration::from_millis(200))
            .count();
        assert!((300..700).contains(&early), "{early} of 1000 below half");
    }
}
