//! The MQTT client: [`MqttClient`], the handle for subscribing,
//! publishing and switching identities, and the [`Connection`] that drives
//! it. What they share is [`shared::Shared`]; subscribing, publishing,
//! connection events, counters and the dispatcher each have a module.

mod connection;
mod dispatch;
mod events;
mod publish;
mod shared;
mod stats;
mod subscribe;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use rumqttc_mtls::AsyncClient;
use tokio::sync::oneshot;

pub use self::connection::Connection;
pub use self::events::{ConnectionEvent, ConnectionEvents};
pub use self::stats::Stats;
pub use self::subscribe::Subscribed;

use self::shared::{IdentitySwap, Shared};
use crate::bundle::TlsIdentity;
use crate::error::{Error, Result};
use crate::handler::{
    DeadLetter, DeadLetterHandler, DeferredHandler, Delivery, Handler, HandlerError, HandlerKind,
    Message,
};
use crate::lock::lock;
use crate::options::ConnectOptions;
use crate::qos::QoS;
use crate::topic::TopicFilter;

/// The handle for subscribing, publishing and disconnecting. Cheap to clone
/// and to share between tasks.
#[derive(Clone)]
pub struct MqttClient {
    rumqtt: AsyncClient,
    shared: Arc<Shared>,
}

impl MqttClient {
    /// Prepares a client for `options` with `identity`; nothing is sent
    /// until the [`Connection`] is driven.
    pub fn new(options: &ConnectOptions, identity: &TlsIdentity) -> Result<(Self, Connection)> {
        check_host(&options.host)?;
        check_options(options)?;
        if options.max_queued_bytes < MIN_QUEUED_BYTES {
            return Err(Error::InvalidOption {
                option: "max_queued_bytes",
                reason: format!(
                    "{} bytes; at least {MIN_QUEUED_BYTES} (with less, no message could be read)",
                    options.max_queued_bytes
                ),
            });
        }
        let tls = identity.tls_config(options.tls_versions)?;
        let shared = Arc::new(Shared::new(options));
        let (rumqtt, connection) = Connection::new(options, tls, shared.clone());
        let client = Self { rumqtt, shared };
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
        Ok(subscribe::add(
            &self.rumqtt,
            &self.shared,
            filter,
            qos,
            HandlerKind::Immediate(handler),
        ))
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
        Ok(subscribe::add(
            &self.rumqtt,
            &self.shared,
            filter,
            qos,
            HandlerKind::Deferred(handler),
        ))
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
        if filter.as_str().len() + 9 > self.shared.max_outgoing_packet_size {
            // Too big for one packet: it could never have been subscribed
            // (such a subscription is refused), so there is nothing to ask
            // the broker; sending it would fail the connection on every
            // reconnect.
            lock(&self.shared.subscriptions).forget(filter.as_str());
            return Ok(());
        }
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
        publish::publish(
            &self.rumqtt,
            &self.shared,
            topic,
            payload.into(),
            qos,
            retain,
        )
        .await
    }

    /// Sends DISCONNECT and waits until it is on the wire and the
    /// connection has stopped (at most 10 s). Unacknowledged messages stay
    /// unacknowledged: a persistent session gets them again.
    pub async fn disconnect(&self) -> Result<()> {
        connection::disconnect(&self.rumqtt, &self.shared).await
    }

    /// Uses `identity` (say, a renewed certificate) for every connection
    /// from the next one on, without touching the current one. The client,
    /// its subscriptions and the broker's session stay as they are.
    pub fn set_identity(&self, identity: &TlsIdentity) -> Result<()> {
        let tls = identity.tls_config(self.shared.tls_versions)?;
        *lock(&self.shared.next_identity) = Some(tls);
        Ok(())
    }

    /// Switches to `identity` now: the current connection is closed (with
    /// DISCONNECT, after the acknowledgements already queued, so the broker
    /// publishes no Last Will) and the next one made with the new identity,
    /// resuming the same session
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
            if self.shared.link.gone.load(Ordering::SeqCst)
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
        self.shared.events.subscribe()
    }

    /// Whether the connection is up (CONNACK received, no error since).
    pub fn is_connected(&self) -> bool {
        self.shared.link.connected.load(Ordering::SeqCst)
    }

    /// The last connection error, as a person-readable message.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// Counters since the client was made.
    pub fn stats(&self) -> Stats {
        let tracked = lock(&self.shared.tracker).len();
        self.shared
            .counters
            .stats(tracked, self.shared.budget.used())
    }
}

/// The smallest [`ConnectOptions::max_queued_bytes`].
const MIN_QUEUED_BYTES: u64 = 1024;

/// Refuses what MQTT cannot carry: a keep-alive that is not whole seconds
/// or over 65,535 s (CONNECT's 16-bit field: 1.9 s went out as 1 s, and
/// 65,536 s as 0, no keep-alive at all), and a Last Will topic or payload
/// or a client id over 65,535 bytes (CONNECT writes each with a 16-bit
/// length: cut, the packet corrupt on every reconnect).
fn check_options(options: &ConnectOptions) -> Result<()> {
    let keep_alive = options.keep_alive;
    if keep_alive.subsec_nanos() != 0 || keep_alive.as_secs() > u64::from(u16::MAX) {
        return Err(Error::InvalidOption {
            option: "keep_alive",
            reason: format!("{keep_alive:?}; MQTT carries whole seconds from 0 (none) to 65535"),
        });
    }
    if let Some(will) = &options.last_will {
        crate::topic::check_publish_topic(&will.topic)?;
        if will.payload.len() > usize::from(u16::MAX) {
            return Err(Error::InvalidOption {
                option: "last_will",
                reason: format!(
                    "a payload of {} bytes; a Last Will carries at most 65535",
                    will.payload.len()
                ),
            });
        }
    }
    if options.client_id.len() > usize::from(u16::MAX) {
        return Err(Error::InvalidOption {
            option: "client_id",
            reason: format!(
                "{} bytes; MQTT carries at most 65535",
                options.client_id.len()
            ),
        });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_mqtt_cannot_carry_are_refused() {
        let mut o = ConnectOptions::new("localhost", 8883, "c");
        assert!(check_options(&o).is_ok());
        for bad in [
            std::time::Duration::from_millis(1_900),
            std::time::Duration::from_secs(65_536),
        ] {
            o.keep_alive = bad;
            let err = check_options(&o).unwrap_err().to_string();
            assert!(err.contains("keep_alive"), "{err}");
        }
        o.keep_alive = std::time::Duration::from_secs(65_535);
        assert!(check_options(&o).is_ok());
        o.last_will = Some(crate::LastWill {
            topic: "w".repeat(70_000),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
        });
        assert!(check_options(&o).is_err());
        o.last_will = Some(crate::LastWill {
            topic: "w".into(),
            payload: bytes::Bytes::from(vec![0; 65_536]),
            qos: QoS::AtLeastOnce,
            retain: false,
        });
        let err = check_options(&o).unwrap_err().to_string();
        assert!(
            err.contains("last_will") && err.contains("65536 bytes"),
            "{err}"
        );
        o.last_will = None;
        o.client_id = "c".repeat(65_536);
        let err = check_options(&o).unwrap_err().to_string();
        assert!(err.contains("client_id"), "{err}");
        o.client_id = "c".repeat(65_535);
        assert!(check_options(&o).is_ok());
    }

    #[test]
    fn hosts_are_dns_names_or_ip_addresses() {
        assert!(check_host("localhost").is_ok());
        assert!(check_host("127.0.0.1").is_ok());
        assert!(check_host("::1").is_ok());
        assert!(check_host("bad host").is_err());
    }
}
