//! The publish tracker: which waiting [`MqttClient::publish`] an event of
//! the event loop resolves.
//!
//! A publish is handed to rumqttc's request channel and only later gets a
//! packet id, when the event loop writes it. rumqttc reports each publish
//! it writes as `Outgoing::Publish(pkid)` (0 for QoS 0), in the order of
//! its request channel, so the front of `queued` belongs to the next such
//! event; `Outgoing::AwaitAck(pkid)` says the publish waits for `pkid` to
//! free up (a collision) and is written later under that id. The broker's
//! PUBACK resolves a QoS 1 publish, its PUBCOMP a QoS 2 one: an
//! acknowledgement of the other kind for the same id resolves nothing.
//!
//! When the broker starts a new session after a connection loss, the
//! event loop hands out every event of the old connection first, then
//! drops what it wrote and had not seen acknowledged: those publishes fail
//! with [`Error::DeliveryUnknown`] (the broker may have passed them on
//! before it lost the session). A publish held back for a packet id was
//! never written and fails with [`Error::SessionLost`]. Publishes not
//! written yet stay queued and go out on the new session, resolving as
//! usual.
//!
//! No I/O here: [`Tracker`] is a state machine fed with [`Wire`] events,
//! tested on synthetic sequences below.
//!
//! [`MqttClient::publish`]: crate::MqttClient::publish

use std::collections::{HashMap, VecDeque};

use crate::qos::QoS;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Who waits for a publish's outcome.
pub(crate) type Ack = oneshot::Sender<Result<()>>;

/// What the event loop reported, as far as the tracker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// A publish was written with this packet id (0: QoS 0).
    Sent(u16),
    /// The next publish waits for this packet id to be acknowledged.
    AwaitAck(u16),
    /// The broker's PUBACK.
    PubAck(u16),
    /// The broker's PUBCOMP.
    PubComp(u16),
}

/// A publish and who waits for it.
#[derive(Debug)]
struct Waiting {
    qos: QoS,
    ack: Ack,
}

/// Publishes between "handed to rumqttc" and "acknowledged by the broker".
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    queued: VecDeque<Waiting>,
    inflight: HashMap<u16, Waiting>,
    collided: HashMap<u16, Waiting>,
}

impl Tracker {
    /// A publish of `qos` was handed to the request channel; `ack` hears
    /// how it ends.
    pub(crate) fn queued(&mut self, qos: QoS, ack: Ack) {
        self.queued.push_back(Waiting { qos, ack });
    }

    /// Publishes waiting for their outcome.
    pub(crate) fn len(&self) -> usize {
        self.queued.len() + self.inflight.len() + self.collided.len()
    }

    /// The event loop reported `event`.
    pub(crate) fn on_wire(&mut self, event: Wire) {
        match event {
            Wire::Sent(0) => {
                if let Some(w) = self.queued.pop_front() {
                    if w.qos == QoS::AtMostOnce {
                        let _ = w.ack.send(Ok(()));
                    } else {
                        tracing::error!("a QoS 0 write for a waiting QoS {:?} publish", w.qos);
                        self.queued.push_front(w);
                    }
                }
            }
            Wire::Sent(pkid) => {
                if let Some(w) = self.collided.remove(&pkid) {
                    self.inflight.insert(pkid, w);
                } else if !self.inflight.contains_key(&pkid) {
                    // Not a retransmission: the next publish in line.
                    if let Some(w) = self.queued.pop_front() {
                        self.inflight.insert(pkid, w);
                    }
                }
            }
            Wire::AwaitAck(pkid) => {
                if let Some(w) = self.queued.pop_front() {
                    self.collided.insert(pkid, w);
                }
            }
            Wire::PubAck(pkid) => self.resolve(pkid, QoS::AtLeastOnce),
            Wire::PubComp(pkid) => self.resolve(pkid, QoS::ExactlyOnce),
        }
    }

    fn resolve(&mut self, pkid: u16, qos: QoS) {
        match self.inflight.remove(&pkid) {
            Some(w) if w.qos == qos => {
                let _ = w.ack.send(Ok(()));
            }
            Some(w) => {
                tracing::warn!(
                    "the broker acknowledged packet {pkid} as QoS {qos:?}, but it is a QoS {:?} \
                     publish: not resolved",
                    w.qos
                );
                self.inflight.insert(pkid, w);
            }
            None => {}
        }
    }

    /// The broker started a new session after a connection loss: the
    /// publishes written and not acknowledged fail with
    /// [`Error::DeliveryUnknown`], one held back for its packet id (never
    /// written) with [`Error::SessionLost`]; those not written yet wait on.
    pub(crate) fn session_lost(&mut self) {
        for (_, w) in self.inflight.drain() {
            let _ = w.ack.send(Err(Error::DeliveryUnknown));
        }
        for (_, w) in self.collided.drain() {
            let _ = w.ack.send(Err(Error::SessionLost));
        }
    }

    /// Fails every waiting publish with `err`.
    pub(crate) fn fail_all(&mut self, err: impl Fn() -> Error) {
        for w in self.queued.drain(..) {
            let _ = w.ack.send(Err(err()));
        }
        for (_, w) in self.inflight.drain() {
            let _ = w.ack.send(Err(err()));
        }
        for (_, w) in self.collided.drain() {
            let _ = w.ack.send(Err(err()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot::error::TryRecvError;

    /// One step of a synthetic sequence.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// `publish()` of this QoS (publishes are numbered from 0).
        Publish(QoS),
        Wire(Wire),
        /// A CONNACK without a session after a loss.
        SessionLost,
        /// The connection went away for good.
        Closed,
    }

    /// How a publish stands at the end.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        Waiting,
        Acked,
        SessionLost,
        Unknown,
        Closed,
    }

    use Outcome::{Acked, Waiting};
    use Step::{Publish, SessionLost, Wire as W};
    use Wire::{AwaitAck, PubAck, PubComp, Sent};

    const Q0: QoS = QoS::AtMostOnce;
    const Q1: QoS = QoS::AtLeastOnce;
    const Q2: QoS = QoS::ExactlyOnce;

    fn run(steps: &[Step]) -> Vec<Outcome> {
        let mut tracker = Tracker::default();
        let mut receivers = Vec::new();
        for step in steps {
            match *step {
                Publish(qos) => {
                    let (tx, rx) = oneshot::channel();
                    tracker.queued(qos, tx);
                    receivers.push(rx);
                }
                W(event) => tracker.on_wire(event),
                SessionLost => tracker.session_lost(),
                Step::Closed => tracker.fail_all(|| Error::Closed),
            }
        }
        receivers
            .iter_mut()
            .map(|rx| match rx.try_recv() {
                Ok(Ok(())) => Acked,
                Ok(Err(Error::SessionLost)) => Outcome::SessionLost,
                Ok(Err(Error::DeliveryUnknown)) => Outcome::Unknown,
                Ok(Err(Error::Closed)) => Outcome::Closed,
                Ok(Err(e)) => panic!("unexpected error {e}"),
                Err(TryRecvError::Empty) => Waiting,
                Err(TryRecvError::Closed) => panic!("a waiter was dropped unanswered"),
            })
            .collect()
    }

    #[test]
    fn sequences() {
        let cases: &[(&str, &[Step], &[Outcome])] = &[
            (
                "QoS 0 resolves when written",
                &[Publish(Q0), W(Sent(0))],
                &[Acked],
            ),
            (
                "QoS 1 waits for its PUBACK",
                &[Publish(Q1), W(Sent(1))],
                &[Waiting],
            ),
            (
                "QoS 1 resolves on PUBACK",
                &[Publish(Q1), W(Sent(1)), W(PubAck(1))],
                &[Acked],
            ),
            (
                "QoS 2 resolves on PUBCOMP",
                &[Publish(Q2), W(Sent(1)), W(PubComp(1))],
                &[Acked],
            ),
            (
                "a PUBACK does not resolve a QoS 2 publish with the same id",
                &[Publish(Q2), W(Sent(7)), W(PubAck(7))],
                &[Waiting],
            ),
            (
                "a PUBCOMP does not resolve a QoS 1 publish with the same id",
                &[Publish(Q1), W(Sent(7)), W(PubComp(7))],
                &[Waiting],
            ),
            (
                "...and the right acknowledgement still resolves it after",
                &[Publish(Q2), W(Sent(7)), W(PubAck(7)), W(PubComp(7))],
                &[Acked],
            ),
            (
                "acknowledgements in any order find their publish",
                &[
                    Publish(Q1),
                    Publish(Q2),
                    Publish(Q1),
                    W(Sent(1)),
                    W(Sent(2)),
                    W(Sent(3)),
                    W(PubAck(3)),
                    W(PubComp(2)),
                ],
                &[Waiting, Acked, Acked],
            ),
            (
                "mixed QoS 0 and 1 in channel order",
                &[
                    Publish(Q1),
                    Publish(Q0),
                    W(Sent(1)),
                    W(Sent(0)),
                    W(PubAck(1)),
                ],
                &[Acked, Acked],
            ),
            (
                "a retransmission (same id again) takes no new publish",
                &[
                    Publish(Q1),
                    Publish(Q1),
                    W(Sent(1)),
                    W(Sent(1)),
                    W(PubAck(1)),
                ],
                &[Acked, Waiting],
            ),
            (
                "a collision waits for its id, then is written under it",
                &[
                    Publish(Q1),
                    Publish(Q1),
                    W(Sent(1)),
                    W(AwaitAck(1)),
                    W(PubAck(1)),
                    W(Sent(1)),
                ],
                &[Acked, Waiting],
            ),
            (
                "...and its own PUBACK resolves it",
                &[
                    Publish(Q1),
                    Publish(Q1),
                    W(Sent(1)),
                    W(AwaitAck(1)),
                    W(PubAck(1)),
                    W(Sent(1)),
                    W(PubAck(1)),
                ],
                &[Acked, Acked],
            ),
            (
                "a new session: written and unacknowledged is unknown, unwritten waits on",
                &[
                    Publish(Q1),
                    Publish(Q2),
                    Publish(Q0),
                    W(Sent(1)),
                    SessionLost,
                    // The unwritten ones go out on the new session.
                    W(Sent(1)),
                    W(Sent(0)),
                    W(PubComp(1)),
                ],
                &[Outcome::Unknown, Acked, Acked],
            ),
            (
                "a publish held for its id was never sent",
                &[
                    Publish(Q1),
                    Publish(Q1),
                    W(Sent(1)),
                    W(AwaitAck(1)),
                    SessionLost,
                ],
                &[Outcome::Unknown, Outcome::SessionLost],
            ),
            (
                "closing fails everything with Closed",
                &[Publish(Q1), Publish(Q0), W(Sent(1)), Step::Closed],
                &[Outcome::Closed, Outcome::Closed],
            ),
            (
                "an acknowledgement nobody waits for is ignored",
                &[
                    W(PubAck(9)),
                    W(PubComp(9)),
                    Publish(Q1),
                    W(Sent(9)),
                    W(PubAck(9)),
                ],
                &[Acked],
            ),
        ];
        for (name, steps, expected) in cases {
            assert_eq!(run(steps), *expected, "{name}");
        }
    }
}
