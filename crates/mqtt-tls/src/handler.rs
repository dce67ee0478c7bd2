//! The handler API: what a handler gets ([`Message`], and with a deferred
//! acknowledgement a [`Delivery`]), what it returns on failure
//! ([`HandlerError`]), and why a message went to the dead-letter handler
//! ([`DeadLetter`]). A [`Delivery`] holds its message's
//! [`Acknowledgement`], which needs only the [`Link`] to the broker and the
//! request channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rumqttc_mtls::{AsyncClient, Publish};

use crate::budget::Charge;
use crate::error::{Error, Result};
use crate::link::Link;
use crate::lock::lock;
use crate::qos::QoS;

/// A message delivered to a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to (never the `$share/...` filter).
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it was delivered with.
    pub qos: QoS,
    /// The broker's retain flag.
    pub retain: bool,
    /// The broker's duplicate flag: it may have been delivered before.
    pub duplicate: bool,
}

/// What a handler returns on failure; the message is then retried and not
/// acknowledged meanwhile.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) type HandlerFuture =
    Pin<Box<dyn Future<Output = std::result::Result<(), HandlerError>> + Send>>;
pub(crate) type Handler = Arc<dyn Fn(Message) -> HandlerFuture + Send + Sync>;

pub(crate) type DeferredHandler = Arc<dyn Fn(Message, Delivery) -> HandlerFuture + Send + Sync>;
pub(crate) type DeadLetterHandler =
    Arc<dyn Fn(Message, Delivery, DeadLetter) -> HandlerFuture + Send + Sync>;

/// Why a message went to the
/// [`MqttClient::on_dead_letter`](crate::MqttClient::on_dead_letter) handler.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetter {
    /// No subscription's filter matches its topic.
    NoSubscription,
    /// Larger than [`ConnectOptions::max_incoming_packet_size`](crate::ConnectOptions::max_incoming_packet_size):
    /// read and dropped, so the [`Message`]'s payload is empty.
    TooLarge {
        /// Its size (MQTT's remaining length: topic, packet id, payload).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A handler failed this many times, the last time with this error.
    HandlerFailed {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
}

impl std::fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoSubscription => f.write_str("no subscription matches this topic"),
            Self::TooLarge { size, max } => write!(
                f,
                "the message is {size} bytes, over the incoming limit of {max} bytes \
                 (max_incoming_packet_size); its payload was dropped unread"
            ),
            Self::HandlerFailed { attempts, error } => {
                write!(f, "the handler failed {attempts} times, last: {error}")
            }
        }
    }
}

#[derive(Clone)]
pub(crate) enum HandlerKind {
    /// Acknowledged when the handler returns `Ok`.
    Immediate(Handler),
    /// Acknowledged when the handler's [`Delivery`] is acknowledged.
    Deferred(DeferredHandler),
}

/// The right to acknowledge one received QoS 1/2 message, handed to
/// handlers registered with
/// [`MqttClient::subscribe_deferred`](crate::MqttClient::subscribe_deferred).
///
/// Call [`Delivery::ack`] once the message is safe (for example after the
/// database transaction holding it committed). Dropping it without
/// acknowledging leaves the message unacknowledged: the broker redelivers it
/// to the next connection of a persistent session (a QoS 2 message only to
/// the next process: MQTT forbids handing it over twice before PUBREL). When several handlers
/// match a message, the broker gets its acknowledgement once all of them
/// acknowledged.
pub struct Delivery {
    inner: Arc<Acknowledgement>,
    /// How many acknowledgement shares this one releases (more than one
    /// for a dead-letter handler taking over handlers that gave up).
    shares: u64,
    /// Shared by the deliveries of one handler's attempts: its share is
    /// released once, whichever attempt acknowledges.
    released: Arc<AtomicBool>,
}

/// The acknowledgement of one received message, in shares: one for each
/// deferred handler and one for the dispatcher; the last share released
/// sends it, in the broker session the message came in.
pub(crate) struct Acknowledgement {
    publish: Publish,
    /// The session the message came in (see [`Link::session`]).
    session: u64,
    /// The link: its current session, and whether it is connected.
    link: Arc<Link>,
    rumqtt: AsyncClient,
    /// Handlers (and the dispatcher) that still have to acknowledge.
    outstanding: AtomicU64,
    /// The message's bytes in the client's budget, given back when the
    /// last share is released (before its acknowledgement waits for room
    /// in the request channel: a full channel must not keep the client
    /// from reading the acknowledgements that empty it), or when the last
    /// share of this is dropped.
    charge: Mutex<Option<Charge>>,
}

impl Acknowledgement {
    /// The acknowledgement of `publish`, received in broker session
    /// `session` and holding `charge`, held in `shares` shares.
    pub(crate) fn new(
        publish: Publish,
        session: u64,
        charge: Charge,
        link: Arc<Link>,
        rumqtt: AsyncClient,
        shares: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            publish,
            session,
            link,
            rumqtt,
            outstanding: AtomicU64::new(shares),
            charge: Mutex::new(Some(charge)),
        })
    }

    /// The message as handlers get it.
    pub(crate) fn message(&self) -> Message {
        let publish = &self.publish;
        Message {
            topic: publish.topic.clone(),
            payload: publish.payload.clone(),
            qos: QoS::from_wire(publish.qos),
            retain: publish.retain,
            duplicate: publish.dup,
        }
    }

    /// A [`Delivery`] that releases `shares` shares, once, whichever
    /// delivery sharing `released` does it first.
    pub(crate) fn delivery(self: &Arc<Self>, shares: u64, released: Arc<AtomicBool>) -> Delivery {
        Delivery {
            inner: self.clone(),
            shares,
            released,
        }
    }

    /// Releases `shares` shares; the last sends PUBACK (QoS 1) or PUBREC
    /// (QoS 2), once connected in the session the message came in, and
    /// not at all once that session is over.
    pub(crate) async fn release(&self, shares: u64) -> Result<()> {
        let last = shares > 0 && self.outstanding.fetch_sub(shares, Ordering::SeqCst) == shares;
        if last {
            lock(&self.charge).take();
        }
        if last && self.publish.qos != rumqttc_mtls::QoS::AtMostOnce {
            let link = &self.link;
            loop {
                // Registered before looking, so a CONNACK in between is seen.
                let changed = link.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if link.session.load(Ordering::SeqCst) != self.session {
                    // The broker started a new session since: it forgot this
                    // message, and numbers its packets from 1 again, so this
                    // packet id may now belong to another message, not yet
                    // handled.
                    tracing::debug!(
                        "acknowledgement of packet {} on {} dropped: it belongs to an earlier session",
                        self.publish.pkid,
                        self.publish.topic
                    );
                    return Ok(());
                }
                if link.connected.load(Ordering::SeqCst) {
                    break;
                }
                if link.gone.load(Ordering::SeqCst) {
                    return Err(Error::Closed);
                }
                // Disconnected: whether this session survives is known only at
                // the next CONNACK. Queued now, the acknowledgement could go out
                // on a new session and acknowledge a different message there.
                changed.await;
            }
            // Tagged with the session: if the channel is full and a new
            // session begins while this waits for room, the event loop
            // drops it instead of writing it there.
            self.rumqtt
                .ack_in(&self.publish, self.session)
                .await
                .map_err(|_| Error::Closed)?;
        }
        Ok(())
    }
}

impl Delivery {
    /// Acknowledges this handler's share; the last share sends PUBACK
    /// (QoS 1) or PUBREC (QoS 2). A no-op for QoS 0.
    pub async fn ack(self) -> Result<()> {
        if self.released.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.release(self.shares).await
    }

    /// The QoS the message was delivered with.
    pub fn qos(&self) -> QoS {
        QoS::from_wire(self.inner.publish.qos)
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.inner.publish.topic)
            .field("pkid", &self.inner.publish.pkid)
            .finish()
    }
}
