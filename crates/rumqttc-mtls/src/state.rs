use crate::{Event, Incoming, Outgoing, Request, SessionAck};
use tracing::{debug, error, info};

use crate::mqttbytes::v4::*;
use crate::mqttbytes::{self, *};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::{io, time::Instant};

/// Errors during state handling
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Io Error while state is passed to network
    #[error("Io error: {0:?}")]
    Io(#[from] io::Error),
    /// Invalid state for a given operation
    #[error("Invalid state for a given operation")]
    InvalidState,
    /// Received a packet (ack) which isn't asked for
    #[error("Received unsolicited ack pkid: {0}")]
    Unsolicited(u16),
    /// Last pingreq isn't acked
    #[error("Last pingreq isn't acked")]
    AwaitPingResp,
    /// Received a wrong packet while waiting for another packet
    #[error("Received a wrong packet while waiting for another packet")]
    WrongPacket,
    #[error("Timeout while waiting to resolve collision")]
    CollisionTimeout,
    #[error("A Subscribe packet must contain atleast one filter")]
    EmptySubscription,
    #[error("Mqtt serialization/deserialization error: {0}")]
    Deserialization(#[from] mqttbytes::Error),
    #[error("Connection closed by peer abruptly")]
    ConnectionAborted,
}

/// State of the mqtt connection.
// Design: Methods will just modify the state of the object without doing any network operations
// Design (this fork): the in-flight tables are ordered maps and sets keyed by packet id that
// hold only what is in flight. Upstream pre-sizes a vec by max_inflight and a 65,536-bit set
// for incoming QoS 2 ids, about 14 KB per connection whether anything is in flight or not.
// Lookups stay O(log n) with n at most max_inflight.
#[derive(Debug, Clone)]
pub struct MqttState {
    /// Status of last ping
    pub await_pingresp: bool,
    /// Collision ping count. Collisions stop user requests
    /// which inturn trigger pings. Multiple pings without
    /// resolving collisions will result in error
    pub collision_ping_count: usize,
    /// Last incoming packet time
    last_incoming: Instant,
    /// Last outgoing packet time
    last_outgoing: Instant,
    /// Packet id of the last outgoing packet
    pub(crate) last_pkid: u16,
    /// Packet id of the last acked publish
    pub(crate) last_puback: u16,
    /// Packet id of the last SUBSCRIBE or UNSUBSCRIBE (not upstream: they
    /// take ids above the publishes' window).
    last_control_pkid: u16,
    /// Number of outgoing inflight publishes
    pub(crate) inflight: u16,
    /// Maximum number of allowed inflight
    pub(crate) max_inflight: u16,
    /// Outgoing QoS 1, 2 publishes which aren't acked yet
    pub(crate) outgoing_pub: BTreeMap<u16, Publish>,
    /// Packet ids of released QoS 2 publishes
    pub(crate) outgoing_rel: BTreeSet<u16>,
    /// Packet ids of incoming QoS 2 publishes awaiting PUBREL. Kept across
    /// reconnects of a persistent session (not upstream: rumqtt #664).
    pub(crate) incoming_pub: BTreeSet<u16>,
    /// Of those, the ids we sent PUBREC for: a PUBLISH redelivered with one
    /// of them is answered with PUBREC again and not delivered twice (MQTT
    /// 3.1.1 section 4.3.3, method B). Not upstream.
    pub(crate) incoming_rec: BTreeSet<u16>,
    /// The filters of each SUBSCRIBE on the wire, by packet id, for the
    /// caller to match with its SUBACK ([`MqttState::take_subscribe_filters`]).
    /// Not upstream.
    subscribe_filters: BTreeMap<u16, VecDeque<Vec<String>>>,
    /// The topics of each UNSUBSCRIBE, by packet id, until its UNSUBACK
    /// ([`MqttState::unsubscribe_topics`]) or the next CONNACK (the event
    /// loop hands out every event of a connection before making the next;
    /// [`MqttState::forget_unsubscribes`]). Not upstream.
    unsubscribe_topics: BTreeMap<u16, Vec<String>>,
    /// Last collision due to broker not acking in order
    pub collision: Option<Publish>,
    /// Buffered incoming packets
    pub events: VecDeque<Event>,
    /// Indicates if acknowledgements should be send immediately
    pub manual_acks: bool,
    /// Not upstream: the caller paused reading from the network
    /// ([`MqttState::set_reading_paused`]), its queues being full. Pings
    /// still go out (the broker must hear from us within the keep-alive),
    /// but an unanswered one is no error then: its PINGRESP is waiting,
    /// unread, behind the messages we do not take. A dead link is not
    /// noticed while paused (only when reading again).
    pub(crate) reading_paused: bool,
    /// Not upstream: how many sessions the broker started for us (CONNACKs
    /// without a session present); see [`Request::AckIn`].
    session_generation: u64,
}

impl MqttState {
    /// Creates new mqtt state. Same state should be used during a
    /// connection for persistent sessions while new state should
    /// instantiated for clean sessions
    pub fn new(max_inflight: u16, manual_acks: bool) -> Self {
        MqttState {
            await_pingresp: false,
            reading_paused: false,
            session_generation: 0,
            collision_ping_count: 0,
            last_incoming: Instant::now(),
            last_outgoing: Instant::now(),
            last_pkid: 0,
            last_control_pkid: 0,
            last_puback: 0,
            inflight: 0,
            max_inflight,
            outgoing_pub: BTreeMap::new(),
            outgoing_rel: BTreeSet::new(),
            incoming_pub: BTreeSet::new(),
            incoming_rec: BTreeSet::new(),
            subscribe_filters: BTreeMap::new(),
            unsubscribe_topics: BTreeMap::new(),
            collision: None,
            events: VecDeque::new(),
            manual_acks,
        }
    }

    /// Returns inflight outgoing packets and clears internal queues.
    ///
    /// The packet ids of incoming QoS 2 publishes stay: a persistent
    /// session resends their PUBREL after the reconnect, and they are
    /// answered then. [`MqttState::new_session`] forgets them.
    pub fn clean(&mut self) -> Vec<Request> {
        let mut pending = Vec::new();
        // Oldest first: the ids after the last acknowledged one, then the
        // ids that wrapped around.
        let split = self.last_puback.saturating_add(1);
        let outgoing = std::mem::take(&mut self.outgoing_pub);
        let (newer, older): (Vec<_>, Vec<_>) =
            outgoing.into_iter().partition(|(pkid, _)| *pkid >= split);
        for (_, mut publish) in newer.into_iter().chain(older) {
            // Sent before, maybe received: MQTT 3.1.1 section 3.3.1.1 has
            // a re-delivery marked DUP (not upstream, which resends it
            // unmarked).
            publish.dup = true;
            pending.push(Request::Publish(publish));
        }

        // SUBSCRIBEs on the wire are not resent: their filters are the
        // caller's to send again (they may never have arrived).
        self.subscribe_filters.clear();

        // remove and collect pending releases
        for pkid in std::mem::take(&mut self.outgoing_rel) {
            pending.push(Request::PubRel(PubRel::new(pkid)));
        }

        // A publish held back for its packet id goes out after the ones
        // before it (not upstream, which kept it here: after a CONNACK
        // without a session nothing frees its id, and the event loop never
        // took a request again).
        if let Some(publish) = self.collision.take() {
            pending.push(Request::Publish(publish));
        }

        self.await_pingresp = false;
        self.collision_ping_count = 0;
        self.inflight = 0;
        pending
    }

    pub fn inflight(&self) -> u16 {
        self.inflight
    }

    /// The filters of the SUBSCRIBE with packet id `pkid`, in the order of
    /// its SUBACK's return codes; taken once, when its SUBACK arrives.
    pub fn take_subscribe_filters(&mut self, pkid: u16) -> Option<Vec<String>> {
        let queue = self.subscribe_filters.get_mut(&pkid)?;
        let filters = queue.pop_front();
        if queue.is_empty() {
            self.subscribe_filters.remove(&pkid);
        }
        filters
    }

    /// Not upstream: a new connection; the UNSUBSCRIBEs of the last one get
    /// no UNSUBACK now (the caller sends them again), so their packet ids
    /// are free.
    pub fn forget_unsubscribes(&mut self) {
        self.unsubscribe_topics.clear();
    }

    /// How many sessions the broker started for us: what
    /// [`Request::AckIn`] compares with.
    pub fn session_generation(&self) -> u64 {
        self.session_generation
    }

    /// The topics of the UNSUBSCRIBE with packet id `pkid`, until its
    /// UNSUBACK.
    pub fn unsubscribe_topics(&self, pkid: u16) -> Option<&[String]> {
        self.unsubscribe_topics.get(&pkid).map(Vec::as_slice)
    }

    /// The broker started a new session (CONNACK without session present):
    /// it will not send PUBREL for anything of the old one.
    pub fn new_session(&mut self) {
        self.session_generation += 1;
        self.incoming_pub.clear();
        self.incoming_rec.clear();
    }

    /// Consolidates handling of all outgoing mqtt packet logic. Returns a packet which should
    /// be put on to the network by the eventloop
    pub fn handle_outgoing_packet(
        &mut self,
        request: Request,
    ) -> Result<Option<Packet>, StateError> {
        let packet = match request {
            Request::Publish(publish) => self.outgoing_publish(publish)?,
            Request::PubRel(pubrel) => self.outgoing_pubrel(pubrel)?,
            Request::Subscribe(subscribe) => self.outgoing_subscribe(subscribe)?,
            Request::Unsubscribe(unsubscribe) => self.outgoing_unsubscribe(unsubscribe)?,
            Request::PingReq(_) => self.outgoing_ping()?,
            Request::Disconnect(_) => self.outgoing_disconnect()?,
            Request::PubAck(puback) => self.outgoing_puback(puback)?,
            Request::PubRec(pubrec) => self.outgoing_pubrec(pubrec)?,
            Request::AckIn { generation, ack } if generation != self.session_generation => {
                debug!(
                    "{ack:?} dropped: its message came in session {generation}, the broker's is {}",
                    self.session_generation
                );
                return Ok(None);
            }
            Request::AckIn { ack, .. } => match ack {
                SessionAck::PubAck(puback) => self.outgoing_puback(puback)?,
                SessionAck::PubRec(pubrec) => self.outgoing_pubrec(pubrec)?,
            },
            _ => return Err(StateError::InvalidState),
        };

        self.last_outgoing = Instant::now();
        Ok(packet)
    }

    /// Consolidates handling of all incoming mqtt packets. Returns a `Notification` which for the
    /// user to consume and `Packet` which for the eventloop to put on the network
    /// E.g For incoming QoS1 publish packet, this method returns (Publish, Puback). Publish packet will
    /// be forwarded to user and Pubck packet will be written to network
    pub fn handle_incoming_packet(
        &mut self,
        packet: Incoming,
    ) -> Result<Option<Packet>, StateError> {
        // Not upstream: only a copy marked DUP is a copy (MQTT-3.3.1-1). A
        // broker back from an older save hands out recent ids again: a new
        // message with such an id is delivered.
        if let Incoming::Publish(publish) = &packet
            && publish.qos == QoS::ExactlyOnce
            && publish.dup
            && self.incoming_rec.contains(&publish.pkid)
        {
            // Delivered before and PUBREC sent, but the broker did not get
            // it (the link went): acknowledge again, do not deliver again.
            self.last_incoming = Instant::now();
            return self.outgoing_pubrec(PubRec::new(publish.pkid));
        }
        if let Incoming::Publish(publish) = &packet
            && publish.qos == QoS::ExactlyOnce
            && publish.dup
            && self.incoming_pub.contains(&publish.pkid)
        {
            // Not upstream: delivered before, and its handler has not sent
            // PUBREC yet (manual acks; the link went before it did). MQTT
            // 3.1.1 section 4.3.3 forbids delivering it again before
            // PUBREL: the PUBREC the handler sends answers this copy too.
            self.last_incoming = Instant::now();
            self.events.push_back(Event::DuplicateDropped(publish.pkid));
            return Ok(None);
        }
        self.events.push_back(Event::Incoming(packet.clone()));

        let outgoing = match &packet {
            Incoming::PingResp => self.handle_incoming_pingresp()?,
            Incoming::Publish(publish) => self.handle_incoming_publish(publish)?,
            Incoming::SubAck(_suback) => self.handle_incoming_suback()?,
            Incoming::UnsubAck(unsuback) => {
                self.unsubscribe_topics.remove(&unsuback.pkid);
                self.handle_incoming_unsuback()?
            }
            Incoming::PubAck(puback) => self.handle_incoming_puback(puback)?,
            Incoming::PubRec(pubrec) => self.handle_incoming_pubrec(pubrec)?,
            Incoming::PubRel(pubrel) => self.handle_incoming_pubrel(pubrel)?,
            Incoming::PubComp(pubcomp) => self.handle_incoming_pubcomp(pubcomp)?,
            _ => {
                error!("Invalid incoming packet = {:?}", packet);
                return Err(StateError::WrongPacket);
            }
        };
        self.last_incoming = Instant::now();

        Ok(outgoing)
    }

    fn handle_incoming_suback(&mut self) -> Result<Option<Packet>, StateError> {
        Ok(None)
    }

    fn handle_incoming_unsuback(&mut self) -> Result<Option<Packet>, StateError> {
        Ok(None)
    }

    /// Results in a publish notification in all the QoS cases. Replys with an ack
    /// in case of QoS1 and Replys rec in case of QoS while also storing the message
    /// A PUBLISH over the incoming limit, its payload dropped (see
    /// [`Event::TooLarge`]): reported, and acknowledged as any publish
    /// would be (at once without manual acks; its QoS 2 id remembered).
    pub(crate) fn handle_incoming_too_large(
        &mut self,
        publish: Publish,
        size: usize,
        max: usize,
    ) -> Result<Option<Packet>, StateError> {
        self.last_incoming = Instant::now();
        let copy = publish.qos == QoS::ExactlyOnce && publish.dup;
        if copy && self.incoming_rec.contains(&publish.pkid) {
            return self.outgoing_pubrec(PubRec::new(publish.pkid));
        }
        if copy && self.incoming_pub.contains(&publish.pkid) {
            // Reported before; its PUBREC is still to come from the caller.
            self.events.push_back(Event::DuplicateDropped(publish.pkid));
            return Ok(None);
        }
        debug!(
            "a message on {} is {size} bytes, over the incoming limit of {max}: dropped",
            publish.topic
        );
        let event = Event::TooLarge {
            publish: publish.clone(),
            size,
            max,
        };
        self.events.push_back(event);
        self.handle_incoming_publish(&publish)
    }

    fn handle_incoming_publish(&mut self, publish: &Publish) -> Result<Option<Packet>, StateError> {
        let qos = publish.qos;

        match qos {
            QoS::AtMostOnce => Ok(None),
            QoS::AtLeastOnce => {
                if !self.manual_acks {
                    let puback = PubAck::new(publish.pkid);
                    return self.outgoing_puback(puback);
                }
                Ok(None)
            }
            QoS::ExactlyOnce => {
                let pkid = publish.pkid;
                self.incoming_pub.insert(pkid);
                // Not upstream: delivered now, so its PUBREC is the
                // handler's to send. A PUBREC remembered for an earlier
                // message with this id (a broker back from an older save
                // reuses ids) must not answer this one's DUP copy.
                self.incoming_rec.remove(&pkid);

                if !self.manual_acks {
                    let pubrec = PubRec::new(pkid);
                    return self.outgoing_pubrec(pubrec);
                }
                Ok(None)
            }
        }
    }

    fn handle_incoming_puback(&mut self, puback: &PubAck) -> Result<Option<Packet>, StateError> {
        if puback.pkid > self.max_inflight {
            return Err(StateError::Unsolicited(puback.pkid));
        }
        self.last_puback = puback.pkid;

        // Only a QoS 1 publish is acknowledged with PUBACK: one for a QoS 2
        // publish with the same id is a protocol error, and must not end
        // that publish (not upstream, which matches on the id alone).
        if !matches!(self.outgoing_pub.get(&puback.pkid), Some(p) if p.qos == QoS::AtLeastOnce) {
            error!("Unsolicited puback packet: {:?}", puback.pkid);
            return Err(StateError::Unsolicited(puback.pkid));
        }
        self.outgoing_pub.remove(&puback.pkid);

        self.inflight -= 1;
        let packet = self.check_collision(puback.pkid).map(|publish| {
            self.outgoing_pub.insert(publish.pkid, publish.clone());
            self.inflight += 1;

            let event = Event::Outgoing(Outgoing::Publish(publish.pkid));
            self.events.push_back(event);
            self.collision_ping_count = 0;

            Packet::Publish(publish)
        });

        Ok(packet)
    }

    fn handle_incoming_pubrec(&mut self, pubrec: &PubRec) -> Result<Option<Packet>, StateError> {
        // Only a QoS 2 publish is answered with PUBREC (see the PUBACK case).
        if !matches!(self.outgoing_pub.get(&pubrec.pkid), Some(p) if p.qos == QoS::ExactlyOnce) {
            error!("Unsolicited pubrec packet: {:?}", pubrec.pkid);
            return Err(StateError::Unsolicited(pubrec.pkid));
        }
        self.outgoing_pub.remove(&pubrec.pkid);

        // NOTE: Inflight - 1 for qos2 in comp
        self.outgoing_rel.insert(pubrec.pkid);
        let pubrel = PubRel { pkid: pubrec.pkid };
        let event = Event::Outgoing(Outgoing::PubRel(pubrec.pkid));
        self.events.push_back(event);

        Ok(Some(Packet::PubRel(pubrel)))
    }

    fn handle_incoming_pubrel(&mut self, pubrel: &PubRel) -> Result<Option<Packet>, StateError> {
        // MQTT 3.1.1 section 4.3.3: the receiver MUST answer PUBREL with
        // PUBCOMP. An id we do not know belongs to a PUBREC sent before a
        // restart of this process; the broker resends PUBREL until it gets
        // PUBCOMP, so answer it (upstream fails the connection instead, and
        // then reconnects forever: rumqtt #664).
        self.incoming_rec.remove(&pubrel.pkid);
        if !self.incoming_pub.remove(&pubrel.pkid) {
            debug!(
                "PUBREL for unknown packet id {}: answering PUBCOMP",
                pubrel.pkid
            );
        }
        let event = Event::Outgoing(Outgoing::PubComp(pubrel.pkid));
        let pubcomp = PubComp { pkid: pubrel.pkid };
        self.events.push_back(event);

        Ok(Some(Packet::PubComp(pubcomp)))
    }

    fn handle_incoming_pubcomp(&mut self, pubcomp: &PubComp) -> Result<Option<Packet>, StateError> {
        if !self.outgoing_rel.remove(&pubcomp.pkid) {
            error!("Unsolicited pubcomp packet: {:?}", pubcomp.pkid);
            return Err(StateError::Unsolicited(pubcomp.pkid));
        }

        self.inflight -= 1;
        let packet = self.check_collision(pubcomp.pkid).map(|publish| {
            // Tracked as any publish written (not upstream, which forgot it
            // here: its PUBACK was then refused as unsolicited).
            self.outgoing_pub.insert(publish.pkid, publish.clone());
            self.inflight += 1;
            let event = Event::Outgoing(Outgoing::Publish(publish.pkid));
            self.events.push_back(event);
            self.collision_ping_count = 0;

            Packet::Publish(publish)
        });

        Ok(packet)
    }

    fn handle_incoming_pingresp(&mut self) -> Result<Option<Packet>, StateError> {
        self.await_pingresp = false;

        Ok(None)
    }

    /// Adds next packet identifier to QoS 1 and 2 publish packets and returns
    /// it buy wrapping publish in packet
    fn outgoing_publish(&mut self, mut publish: Publish) -> Result<Option<Packet>, StateError> {
        if publish.qos != QoS::AtMostOnce {
            if publish.pkid == 0 {
                // Not upstream: a free id, never one in flight (upstream
                // takes the next in turn and, when the broker acknowledged
                // out of order, holds the publish as a "collision", one at
                // a time, overwriting an earlier one). With fewer than
                // `max_inflight` in flight there always is one; the event
                // loop takes no new publish otherwise.
                match self.free_publish_pkid() {
                    Some(pkid) => publish.pkid = pkid,
                    None if self.collision.is_none() => {
                        // Every id taken: held back as the one collision
                        // until the id in turn is acknowledged.
                        let max = self.max_inflight.max(1);
                        self.last_pkid = self.last_pkid % max + 1;
                        publish.pkid = self.last_pkid;
                    }
                    None => return Err(StateError::InvalidState),
                }
            }

            let pkid = publish.pkid;
            // As upstream: a preset packet id beyond the window is refused
            // (its PUBACK would be refused too).
            if pkid > self.max_inflight {
                return Err(StateError::Unsolicited(pkid));
            }
            // An id awaiting PUBCOMP is taken too (not upstream, which
            // reuses it: the broker's PUBCOMP for the old QoS 2 publish
            // would then end the new one).
            if self.outgoing_pub.contains_key(&pkid) || self.outgoing_rel.contains(&pkid) {
                // Not upstream: one held at most, never overwritten (the
                // overwritten one was dropped unsent).
                if self.collision.is_some() {
                    return Err(StateError::InvalidState);
                }
                info!("Collision on packet id = {:?}", publish.pkid);
                self.collision = Some(publish);
                let event = Event::Outgoing(Outgoing::AwaitAck(pkid));
                self.events.push_back(event);
                return Ok(None);
            }

            // if there is an existing publish at this pkid, this implies that broker hasn't acked this
            // packet yet. This error is possible only when broker isn't acking sequentially
            self.outgoing_pub.insert(pkid, publish.clone());
            self.inflight += 1;
        };

        debug!(
            "Publish. Topic = {}, Pkid = {:?}, Payload Size = {:?}",
            publish.topic,
            publish.pkid,
            publish.payload.len()
        );

        let event = Event::Outgoing(Outgoing::Publish(publish.pkid));
        self.events.push_back(event);

        Ok(Some(Packet::Publish(publish)))
    }

    fn outgoing_pubrel(&mut self, pubrel: PubRel) -> Result<Option<Packet>, StateError> {
        let pubrel = self.save_pubrel(pubrel)?;

        debug!("Pubrel. Pkid = {}", pubrel.pkid);
        let event = Event::Outgoing(Outgoing::PubRel(pubrel.pkid));
        self.events.push_back(event);

        Ok(Some(Packet::PubRel(pubrel)))
    }

    fn outgoing_puback(&mut self, puback: PubAck) -> Result<Option<Packet>, StateError> {
        let event = Event::Outgoing(Outgoing::PubAck(puback.pkid));
        self.events.push_back(event);

        Ok(Some(Packet::PubAck(puback)))
    }

    fn outgoing_pubrec(&mut self, pubrec: PubRec) -> Result<Option<Packet>, StateError> {
        if self.incoming_pub.contains(&pubrec.pkid) {
            self.incoming_rec.insert(pubrec.pkid);
        }
        let event = Event::Outgoing(Outgoing::PubRec(pubrec.pkid));
        self.events.push_back(event);

        Ok(Some(Packet::PubRec(pubrec)))
    }

    /// check when the last control packet/pingreq packet is received and return
    /// the status which tells if keep alive time has exceeded
    /// NOTE: status will be checked for zero keepalive times also
    /// Not upstream: pauses (`true`) or resumes reading. Resuming forgets
    /// the ping answers still unread and the collision pings counted, which
    /// are behind the backlog read next: the keep-alive check starts over.
    pub fn set_reading_paused(&mut self, paused: bool) {
        if self.reading_paused && !paused {
            self.await_pingresp = false;
            self.collision_ping_count = 0;
        }
        self.reading_paused = paused;
    }

    /// Whether reading is paused ([`MqttState::set_reading_paused`]).
    pub fn reading_paused(&self) -> bool {
        self.reading_paused
    }

    fn outgoing_ping(&mut self) -> Result<Option<Packet>, StateError> {
        let elapsed_in = self.last_incoming.elapsed();
        let elapsed_out = self.last_outgoing.elapsed();

        // Not upstream: while reading is paused, neither the PINGRESP nor
        // the acknowledgement that resolves a collision can arrive.
        if self.collision.is_some() && !self.reading_paused {
            self.collision_ping_count += 1;
            if self.collision_ping_count >= 2 {
                return Err(StateError::CollisionTimeout);
            }
        }

        // raise error if last ping didn't receive ack
        if self.await_pingresp && !self.reading_paused {
            return Err(StateError::AwaitPingResp);
        }

        // Not upstream: a ping sent while reading is paused only keeps the
        // broker's keep-alive; its PINGRESP is not waited for.
        self.await_pingresp = !self.reading_paused;

        debug!(
            "Pingreq,
            last incoming packet before {} millisecs,
            last outgoing request before {} millisecs",
            elapsed_in.as_millis(),
            elapsed_out.as_millis()
        );

        let event = Event::Outgoing(Outgoing::PingReq);
        self.events.push_back(event);

        Ok(Some(Packet::PingReq))
    }

    fn outgoing_subscribe(
        &mut self,
        mut subscription: Subscribe,
    ) -> Result<Option<Packet>, StateError> {
        if subscription.filters.is_empty() {
            return Err(StateError::EmptySubscription);
        }

        let pkid = self.next_control_pkid();
        subscription.pkid = pkid;
        // A queue per id (kept from before ids were never shared while
        // in use; harmless).
        self.subscribe_filters.entry(pkid).or_default().push_back(
            subscription
                .filters
                .iter()
                .map(|f| f.path.clone())
                .collect(),
        );

        debug!(
            "Subscribe. Topics = {:?}, Pkid = {:?}",
            subscription.filters, subscription.pkid
        );

        let event = Event::Outgoing(Outgoing::Subscribe(subscription.pkid));
        self.events.push_back(event);

        Ok(Some(Packet::Subscribe(subscription)))
    }

    fn outgoing_unsubscribe(
        &mut self,
        mut unsub: Unsubscribe,
    ) -> Result<Option<Packet>, StateError> {
        let pkid = self.next_control_pkid();
        unsub.pkid = pkid;
        self.unsubscribe_topics.insert(pkid, unsub.topics.clone());

        debug!(
            "Unsubscribe. Topics = {:?}, Pkid = {:?}",
            unsub.topics, unsub.pkid
        );

        let event = Event::Outgoing(Outgoing::Unsubscribe(unsub.pkid));
        self.events.push_back(event);

        Ok(Some(Packet::Unsubscribe(unsub)))
    }

    fn outgoing_disconnect(&mut self) -> Result<Option<Packet>, StateError> {
        debug!("Disconnect");

        let event = Event::Outgoing(Outgoing::Disconnect);
        self.events.push_back(event);

        Ok(Some(Packet::Disconnect))
    }

    fn check_collision(&mut self, pkid: u16) -> Option<Publish> {
        if let Some(publish) = &self.collision
            && publish.pkid == pkid
        {
            return self.collision.take();
        }

        None
    }

    fn save_pubrel(&mut self, mut pubrel: PubRel) -> Result<PubRel, StateError> {
        let pubrel = match pubrel.pkid {
            // consider PacketIdentifier(0) as uninitialized packets
            0 => {
                pubrel.pkid = self.next_pkid();
                pubrel
            }
            _ => pubrel,
        };

        self.outgoing_rel.insert(pubrel.pkid);
        self.inflight += 1;
        Ok(pubrel)
    }

    /// http://stackoverflow.com/questions/11115364/mqtt-messageid-practical-implementation
    /// Packet ids are incremented till maximum set inflight messages and reset to 1 after that.
    ///
    /// Not upstream: the next publish packet id after the last one, in
    /// 1..=`max_inflight`, that no publish (or QoS 2 release) in flight
    /// holds; `None` when all are taken.
    fn free_publish_pkid(&mut self) -> Option<u16> {
        let max = u32::from(self.max_inflight.max(1));
        let start = u32::from(self.last_pkid);
        (0..max)
            .map(|i| u16::try_from((start + i) % max + 1).unwrap_or(1))
            .find(|id| !self.outgoing_pub.contains_key(id) && !self.outgoing_rel.contains(id))
            .inspect(|id| self.last_pkid = *id)
    }

    /// Not upstream: a packet id for a SUBSCRIBE or UNSUBSCRIBE that no
    /// other one awaiting its answer holds ([MQTT-2.3.1-2]), above the
    /// publishes' window (1..=`max_inflight`), so that it can never take a
    /// publish's id either. Upstream takes the publishes' next id.
    fn next_control_pkid(&mut self) -> u16 {
        let low = u32::from(self.max_inflight) + 1;
        if low > u32::from(u16::MAX) {
            // No room above the window: share it.
            return self.free_publish_pkid().unwrap_or(1);
        }
        let span = u32::from(u16::MAX) - low + 1;
        let last = u32::from(self.last_control_pkid).max(low - 1);
        (0..span)
            .map(|i| u16::try_from(low + (last + 1 - low + i) % span).unwrap_or(u16::MAX))
            .find(|id| {
                !self.subscribe_filters.contains_key(id)
                    && !self.unsubscribe_topics.contains_key(id)
            })
            .inspect(|id| self.last_control_pkid = *id)
            // Every id awaiting an answer: 65,000 subscriptions lost in
            // flight. Take the oldest turn's.
            .unwrap_or(u16::try_from(low).unwrap_or(u16::MAX))
    }

    fn next_pkid(&mut self) -> u16 {
        let next_pkid = self.last_pkid + 1;

        // When next packet id is at the edge of inflight queue,
        // set await flag. This instructs eventloop to stop
        // processing requests until all the inflight publishes
        // are acked
        if next_pkid == self.max_inflight {
            self.last_pkid = 0;
            return next_pkid;
        }

        self.last_pkid = next_pkid;
        next_pkid
    }
}

#[cfg(test)]
mod test {
    use super::{MqttState, StateError};
    use crate::mqttbytes::v4::*;
    use crate::mqttbytes::*;
    use crate::{Event, Incoming, Outgoing, Request, SessionAck};

    fn build_outgoing_publish(qos: QoS) -> Publish {
        let topic = "hello/world".to_owned();
        let payload = vec![1, 2, 3];

        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
        publish.qos = qos;
        publish
    }

    fn build_incoming_publish(qos: QoS, pkid: u16) -> Publish {
        let topic = "hello/world".to_owned();
        let payload = vec![1, 2, 3];

        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
        publish.pkid = pkid;
        publish.qos = qos;
        publish
    }

    fn build_mqttstate() -> MqttState {
        MqttState::new(100, false)
    }

    #[test]
    fn next_pkid_increments_as_expected() {
        let mut mqtt = build_mqttstate();

        for i in 1..=100 {
            let pkid = mqtt.next_pkid();

            // loops between 0-99. % 100 == 0 implies border
            let expected = i % 100;
            if expected == 0 {
                break;
            }

            assert_eq!(expected, pkid);
        }
    }

    #[test]
    fn outgoing_publish_should_set_pkid_and_add_publish_to_queue() {
        let mut mqtt = build_mqttstate();

        // QoS0 Publish
        let publish = build_outgoing_publish(QoS::AtMostOnce);

        // QoS 0 publish shouldn't be saved in queue
        mqtt.outgoing_publish(publish).unwrap();
        assert_eq!(mqtt.last_pkid, 0);
        assert_eq!(mqtt.inflight, 0);

        // QoS1 Publish
        let publish = build_outgoing_publish(QoS::AtLeastOnce);

        // Packet id should be set and publish should be saved in queue
        mqtt.outgoing_publish(publish.clone()).unwrap();
        assert_eq!(mqtt.last_pkid, 1);
        assert_eq!(mqtt.inflight, 1);

        // Packet id should be incremented and publish should be saved in queue
        mqtt.outgoing_publish(publish).unwrap();
        assert_eq!(mqtt.last_pkid, 2);
        assert_eq!(mqtt.inflight, 2);

        // QoS1 Publish
        let publish = build_outgoing_publish(QoS::ExactlyOnce);

        // Packet id should be set and publish should be saved in queue
        mqtt.outgoing_publish(publish.clone()).unwrap();
        assert_eq!(mqtt.last_pkid, 3);
        assert_eq!(mqtt.inflight, 3);

        // Packet id should be incremented and publish should be saved in queue
        mqtt.outgoing_publish(publish).unwrap();
        assert_eq!(mqtt.last_pkid, 4);
        assert_eq!(mqtt.inflight, 4);
    }

    #[test]
    fn incoming_publish_should_be_added_to_queue_correctly() {
        let mut mqtt = build_mqttstate();

        // QoS0, 1, 2 Publishes
        let publish1 = build_incoming_publish(QoS::AtMostOnce, 1);
        let publish2 = build_incoming_publish(QoS::AtLeastOnce, 2);
        let publish3 = build_incoming_publish(QoS::ExactlyOnce, 3);

        mqtt.handle_incoming_publish(&publish1).unwrap();
        mqtt.handle_incoming_publish(&publish2).unwrap();
        mqtt.handle_incoming_publish(&publish3).unwrap();

        // only qos2 publish should be add to queue
        assert!(mqtt.incoming_pub.contains(&3));
    }

    #[test]
    fn incoming_publish_should_be_acked() {
        let mut mqtt = build_mqttstate();

        // QoS0, 1, 2 Publishes
        let publish1 = build_incoming_publish(QoS::AtMostOnce, 1);
        let publish2 = build_incoming_publish(QoS::AtLeastOnce, 2);
        let publish3 = build_incoming_publish(QoS::ExactlyOnce, 3);

        mqtt.handle_incoming_publish(&publish1).unwrap();
        mqtt.handle_incoming_publish(&publish2).unwrap();
        mqtt.handle_incoming_publish(&publish3).unwrap();

        if let Event::Outgoing(Outgoing::PubAck(pkid)) = mqtt.events[0] {
            assert_eq!(pkid, 2);
        } else {
            panic!("missing puback");
        }

        if let Event::Outgoing(Outgoing::PubRec(pkid)) = mqtt.events[1] {
            assert_eq!(pkid, 3);
        } else {
            panic!("missing PubRec");
        }
    }

    #[test]
    fn incoming_publish_should_not_be_acked_with_manual_acks() {
        let mut mqtt = build_mqttstate();
        mqtt.manual_acks = true;

        // QoS0, 1, 2 Publishes
        let publish1 = build_incoming_publish(QoS::AtMostOnce, 1);
        let publish2 = build_incoming_publish(QoS::AtLeastOnce, 2);
        let publish3 = build_incoming_publish(QoS::ExactlyOnce, 3);

        mqtt.handle_incoming_publish(&publish1).unwrap();
        mqtt.handle_incoming_publish(&publish2).unwrap();
        mqtt.handle_incoming_publish(&publish3).unwrap();

        assert!(mqtt.incoming_pub.contains(&3));

        assert!(mqtt.events.is_empty());
    }

    #[test]
    fn incoming_qos2_publish_should_send_rec_to_network_and_publish_to_user() {
        let mut mqtt = build_mqttstate();
        let publish = build_incoming_publish(QoS::ExactlyOnce, 1);

        let packet = mqtt.handle_incoming_publish(&publish).unwrap().unwrap();
        match packet {
            Packet::PubRec(pubrec) => assert_eq!(pubrec.pkid, 1),
            _ => panic!("Invalid network request: {:?}", packet),
        }
    }

    #[test]
    fn incoming_puback_should_remove_correct_publish_from_queue() {
        let mut mqtt = build_mqttstate();

        let publish1 = build_outgoing_publish(QoS::AtLeastOnce);
        let publish2 = build_outgoing_publish(QoS::ExactlyOnce);

        mqtt.outgoing_publish(publish1).unwrap();
        mqtt.outgoing_publish(publish2).unwrap();
        assert_eq!(mqtt.inflight, 2);

        mqtt.handle_incoming_puback(&PubAck::new(1)).unwrap();
        assert_eq!(mqtt.inflight, 1);

        // Changed from upstream: a PUBACK does not end a QoS 2 publish.
        let got = mqtt.handle_incoming_puback(&PubAck::new(2)).unwrap_err();
        assert!(matches!(got, StateError::Unsolicited(2)), "{got}");
        assert_eq!(mqtt.inflight, 1);

        assert!(!mqtt.outgoing_pub.contains_key(&1));
        assert!(mqtt.outgoing_pub.contains_key(&2));
    }

    #[test]
    fn publishes_sent_again_after_a_reconnect_are_marked_dup() {
        let mut mqtt = build_mqttstate();
        mqtt.outgoing_publish(build_outgoing_publish(QoS::AtLeastOnce))
            .unwrap();
        let pending = mqtt.clean();
        match pending.as_slice() {
            [Request::Publish(p)] => assert!(p.dup, "{p:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_id_awaiting_pubcomp_is_not_reused() {
        let mut mqtt = MqttState::new(2, false);
        mqtt.outgoing_publish(build_outgoing_publish(QoS::ExactlyOnce))
            .unwrap();
        mqtt.handle_incoming_pubrec(&PubRec::new(1)).unwrap();
        mqtt.outgoing_publish(build_outgoing_publish(QoS::AtLeastOnce))
            .unwrap();
        mqtt.handle_incoming_puback(&PubAck::new(2)).unwrap();
        // 1 still awaits its PUBCOMP: the next publish takes 2 again.
        match mqtt
            .outgoing_publish(build_outgoing_publish(QoS::AtLeastOnce))
            .unwrap()
        {
            Some(Packet::Publish(p)) => assert_eq!(p.pkid, 2),
            other => panic!("{other:?}"),
        }
        assert!(mqtt.collision.is_none());
    }

    /// More publishes than packet ids, acknowledged out of order: each new
    /// one takes an id no publish in flight holds, never a collision;
    /// with every id taken (the event loop would not ask then), one is
    /// held back and a second one is refused, never overwriting it.
    #[test]
    fn more_publishes_than_ids_never_share_an_id_in_flight() {
        let mut mqtt = MqttState::new(3, false);
        let send = |mqtt: &mut MqttState| match mqtt
            .outgoing_publish(build_outgoing_publish(QoS::AtLeastOnce))
            .unwrap()
        {
            Some(Packet::Publish(p)) => p.pkid,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            [send(&mut mqtt), send(&mut mqtt), send(&mut mqtt)],
            [1, 2, 3]
        );
        let mut in_flight: std::collections::BTreeSet<u16> = [1, 2, 3].into();
        // The broker acknowledges 2, then 3, then 1; a new publish after each.
        for acked in [2, 3, 1, 3, 2] {
            mqtt.handle_incoming_puback(&PubAck::new(acked)).unwrap();
            assert!(in_flight.remove(&acked));
            let id = send(&mut mqtt);
            assert!(in_flight.insert(id), "{id} was in flight already");
            assert_eq!(id, acked, "the only free id");
        }
        assert!(mqtt.collision.is_none());
        // All three taken: held back, and the next one refused.
        assert!(
            mqtt.outgoing_publish(build_outgoing_publish(QoS::AtLeastOnce))
                .unwrap()
                .is_none()
        );
        let held = mqtt.collision.clone().unwrap();
        assert!(matches!(
            mqtt.outgoing_publish(build_outgoing_publish(QoS::AtLeastOnce)),
            Err(StateError::InvalidState)
        ));
        assert_eq!(mqtt.collision, Some(held), "the held one is kept");
    }

    #[test]
    fn a_held_back_publish_is_not_kept_across_a_reconnect() {
        let mut mqtt = MqttState::new(2, false);
        mqtt.outgoing_publish(build_outgoing_publish(QoS::ExactlyOnce))
            .unwrap();
        mqtt.handle_incoming_pubrec(&PubRec::new(1)).unwrap();
        mqtt.outgoing_publish(build_outgoing_publish(QoS::AtLeastOnce))
            .unwrap();
        // Both ids taken: the next publish is held back.
        mqtt.outgoing_publish(build_outgoing_publish(QoS::AtLeastOnce))
            .unwrap();
        assert!(mqtt.collision.is_some());
        let pending = mqtt.clean();
        assert!(mqtt.collision.is_none(), "nothing left to block requests");
        // What was in flight (the QoS 1 publish marked DUP, the QoS 2
        // one's PUBREL), then the held one, not marked DUP.
        match pending.as_slice() {
            [Request::Publish(a), Request::PubRel(r), Request::Publish(p)] => {
                assert_eq!(r.pkid, 1);
                assert_eq!((a.pkid, a.dup), (2, true));
                assert!(!p.dup);
            }
            other => panic!("{other:?}"),
        }
    }

    /// SUBSCRIBE and UNSUBSCRIBE ids are above the publishes' window and
    /// not reused while one awaits its answer ([MQTT-2.3.1-2]).
    #[test]
    fn subscribe_ids_are_not_reused_while_in_use_nor_shared_with_publishes() {
        let mut mqtt = MqttState::new(3, false);
        let mut ids = std::collections::BTreeSet::new();
        for i in 0..10 {
            let packet = if i % 2 == 0 {
                mqtt.outgoing_subscribe(Subscribe::new("a/b", QoS::AtLeastOnce))
            } else {
                mqtt.outgoing_unsubscribe(Unsubscribe::new("a/b"))
            };
            let id = match packet.unwrap() {
                Some(Packet::Subscribe(s)) => s.pkid,
                Some(Packet::Unsubscribe(u)) => u.pkid,
                other => panic!("{other:?}"),
            };
            assert!(id > 3, "{id} is a publish id");
            assert!(ids.insert(id), "{id} reused while awaiting its answer");
        }
        // Answered, an id may come round again.
        let first = *ids.first().unwrap();
        assert!(mqtt.take_subscribe_filters(first).is_some());
    }

    #[test]
    fn pubrec_for_a_qos1_publish_is_unsolicited_and_ends_nothing() {
        let mut mqtt = build_mqttstate();
        mqtt.outgoing_publish(build_outgoing_publish(QoS::AtLeastOnce))
            .unwrap();
        let got = mqtt.handle_incoming_pubrec(&PubRec::new(1)).unwrap_err();
        assert!(matches!(got, StateError::Unsolicited(1)), "{got}");
        assert!(mqtt.outgoing_pub.contains_key(&1));
        assert!(mqtt.outgoing_rel.is_empty());
        mqtt.handle_incoming_puback(&PubAck::new(1)).unwrap();
        assert_eq!(mqtt.inflight, 0);
    }

    #[test]
    fn incoming_puback_with_pkid_greater_than_max_inflight_should_be_handled_gracefully() {
        let mut mqtt = build_mqttstate();

        let got = mqtt.handle_incoming_puback(&PubAck::new(101)).unwrap_err();

        match got {
            StateError::Unsolicited(pkid) => assert_eq!(pkid, 101),
            e => panic!("Unexpected error: {}", e),
        }
    }

    #[test]
    fn incoming_pubrec_should_release_publish_from_queue_and_add_relid_to_rel_queue() {
        let mut mqtt = build_mqttstate();

        let publish1 = build_outgoing_publish(QoS::AtLeastOnce);
        let publish2 = build_outgoing_publish(QoS::ExactlyOnce);

        let _publish_out = mqtt.outgoing_publish(publish1);
        let _publish_out = mqtt.outgoing_publish(publish2);

        mqtt.handle_incoming_pubrec(&PubRec::new(2)).unwrap();
        assert_eq!(mqtt.inflight, 2);

        // check if the remaining element's pkid is 1
        let backup = mqtt.outgoing_pub.get(&1).cloned();
        assert_eq!(backup.unwrap().pkid, 1);

        // check if the qos2 element's release pkid is 2
        assert!(mqtt.outgoing_rel.contains(&2));
    }

    #[test]
    fn incoming_pubrec_should_send_release_to_network_and_nothing_to_user() {
        let mut mqtt = build_mqttstate();

        let publish = build_outgoing_publish(QoS::ExactlyOnce);
        let packet = mqtt.outgoing_publish(publish).unwrap().unwrap();
        match packet {
            Packet::Publish(publish) => assert_eq!(publish.pkid, 1),
            packet => panic!("Invalid network request: {:?}", packet),
        }

        let packet = mqtt
            .handle_incoming_pubrec(&PubRec::new(1))
            .unwrap()
            .unwrap();
        match packet {
            Packet::PubRel(pubrel) => assert_eq!(pubrel.pkid, 1),
            packet => panic!("Invalid network request: {:?}", packet),
        }
    }

    #[test]
    fn incoming_pubrel_should_send_comp_to_network_and_nothing_to_user() {
        let mut mqtt = build_mqttstate();
        let publish = build_incoming_publish(QoS::ExactlyOnce, 1);

        let packet = mqtt.handle_incoming_publish(&publish).unwrap().unwrap();
        match packet {
            Packet::PubRec(pubrec) => assert_eq!(pubrec.pkid, 1),
            packet => panic!("Invalid network request: {:?}", packet),
        }

        let packet = mqtt
            .handle_incoming_pubrel(&PubRel::new(1))
            .unwrap()
            .unwrap();
        match packet {
            Packet::PubComp(pubcomp) => assert_eq!(pubcomp.pkid, 1),
            packet => panic!("Invalid network request: {:?}", packet),
        }
    }

    #[test]
    fn incoming_pubcomp_should_release_correct_pkid_from_release_queue() {
        let mut mqtt = build_mqttstate();
        let publish = build_outgoing_publish(QoS::ExactlyOnce);

        mqtt.outgoing_publish(publish).unwrap();
        mqtt.handle_incoming_pubrec(&PubRec::new(1)).unwrap();

        mqtt.handle_incoming_pubcomp(&PubComp::new(1)).unwrap();
        assert_eq!(mqtt.inflight, 0);
    }

    #[test]
    fn outgoing_ping_handle_should_throw_errors_for_no_pingresp() {
        let mut mqtt = build_mqttstate();
        mqtt.outgoing_ping().unwrap();

        // network activity other than pingresp
        let publish = build_outgoing_publish(QoS::AtLeastOnce);
        mqtt.handle_outgoing_packet(Request::Publish(publish))
            .unwrap();
        mqtt.handle_incoming_packet(Incoming::PubAck(PubAck::new(1)))
            .unwrap();

        // should throw error because we didn't get pingresp for previous ping
        match mqtt.outgoing_ping() {
            Ok(_) => panic!("Should throw pingresp await error"),
            Err(StateError::AwaitPingResp) => (),
            Err(e) => panic!("Should throw pingresp await error. Error = {:?}", e),
        }
    }

    #[test]
    fn an_unanswered_ping_is_no_error_while_reading_is_paused() {
        let mut mqtt = build_mqttstate();
        mqtt.outgoing_ping().unwrap();
        mqtt.set_reading_paused(true);
        assert!(matches!(mqtt.outgoing_ping(), Ok(Some(Packet::PingReq))));
        assert!(matches!(mqtt.outgoing_ping(), Ok(Some(Packet::PingReq))));
        // Reading again: the answers still unread are forgotten, and the
        // keep-alive check starts over with the next ping.
        mqtt.set_reading_paused(false);
        assert!(matches!(mqtt.outgoing_ping(), Ok(Some(Packet::PingReq))));
        assert!(matches!(
            mqtt.outgoing_ping(),
            Err(StateError::AwaitPingResp)
        ));
        mqtt.handle_incoming_packet(Incoming::PingResp).unwrap();
        assert!(mqtt.outgoing_ping().is_ok());
    }

    #[test]
    fn outgoing_ping_handle_should_succeed_if_pingresp_is_received() {
        let mut mqtt = build_mqttstate();

        // should ping
        mqtt.outgoing_ping().unwrap();
        mqtt.handle_incoming_packet(Incoming::PingResp).unwrap();

        // should ping
        mqtt.outgoing_ping().unwrap();
    }

    #[test]
    fn clean_is_calculating_pending_correctly() {
        let mut mqtt = build_mqttstate();

        fn build_outgoing_pub() -> std::collections::BTreeMap<u16, Publish> {
            [
                Some(Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: "test".to_string(),
                    pkid: 1,
                    payload: "".into(),
                }),
                Some(Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: "test".to_string(),
                    pkid: 2,
                    payload: "".into(),
                }),
                Some(Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: "test".to_string(),
                    pkid: 3,
                    payload: "".into(),
                }),
                Some(Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: "test".to_string(),
                    pkid: 6,
                    payload: "".into(),
                }),
            ]
            .into_iter()
            .flatten()
            .map(|p| (p.pkid, p))
            .collect()
        }

        mqtt.outgoing_pub = build_outgoing_pub();
        mqtt.last_puback = 3;
        let requests = mqtt.clean();
        let res = vec![6, 1, 2, 3];
        for (req, idx) in requests.iter().zip(res) {
            if let Request::Publish(publish) = req {
                assert_eq!(publish.pkid, idx);
            } else {
                unreachable!()
            }
        }

        mqtt.outgoing_pub = build_outgoing_pub();
        mqtt.last_puback = 0;
        let requests = mqtt.clean();
        let res = vec![1, 2, 3, 6];
        for (req, idx) in requests.iter().zip(res) {
            if let Request::Publish(publish) = req {
                assert_eq!(publish.pkid, idx);
            } else {
                unreachable!()
            }
        }

        mqtt.outgoing_pub = build_outgoing_pub();
        mqtt.last_puback = 6;
        let requests = mqtt.clean();
        let res = vec![1, 2, 3, 6];
        for (req, idx) in requests.iter().zip(res) {
            if let Request::Publish(publish) = req {
                assert_eq!(publish.pkid, idx);
            } else {
                unreachable!()
            }
        }
    }

    #[test]
    fn incoming_qos2_state_survives_a_reconnect_of_a_persistent_session() {
        let mut mqtt = build_mqttstate();
        mqtt.manual_acks = true;
        mqtt.handle_incoming_publish(&build_incoming_publish(QoS::ExactlyOnce, 7))
            .unwrap();
        // PUBREC sent by the application, then the link drops.
        let _ = mqtt.clean();
        assert!(mqtt.incoming_pub.contains(&7));
        // The broker resends PUBREL on the new connection.
        let packet = mqtt
            .handle_incoming_packet(Incoming::PubRel(PubRel::new(7)))
            .unwrap();
        assert_eq!(packet, Some(Packet::PubComp(PubComp::new(7))));
        assert!(mqtt.incoming_pub.is_empty());
    }

    #[test]
    fn an_unknown_pubrel_is_answered_with_pubcomp_not_an_error() {
        // A new process (fresh state) gets the PUBREL of a PUBREC that the
        // one before it sent: MQTT 3.1.1 section 4.3.3 wants a PUBCOMP.
        let mut mqtt = build_mqttstate();
        let packet = mqtt
            .handle_incoming_packet(Incoming::PubRel(PubRel::new(42)))
            .unwrap();
        assert_eq!(packet, Some(Packet::PubComp(PubComp::new(42))));
    }

    #[test]
    fn a_new_session_forgets_incoming_qos2_ids() {
        let mut mqtt = build_mqttstate();
        mqtt.handle_incoming_publish(&build_incoming_publish(QoS::ExactlyOnce, 3))
            .unwrap();
        mqtt.new_session();
        assert!(mqtt.incoming_pub.is_empty());
    }

    #[test]
    fn an_idle_state_holds_no_tables() {
        let mut mqtt = MqttState::new(u16::MAX, true);
        for _ in 0..50 {
            let publish = build_outgoing_publish(QoS::AtLeastOnce);
            mqtt.outgoing_publish(publish).unwrap();
        }
        for pkid in 1..=50 {
            mqtt.handle_incoming_puback(&PubAck::new(pkid)).unwrap();
        }
        assert!(mqtt.outgoing_pub.is_empty());
        assert!(mqtt.outgoing_rel.is_empty());
        assert!(mqtt.incoming_pub.is_empty());
    }

    #[test]
    fn a_qos2_publish_redelivered_after_pubrec_is_acknowledged_not_delivered_again() {
        let mut mqtt = build_mqttstate();
        mqtt.manual_acks = true;
        let publish = build_incoming_publish(QoS::ExactlyOnce, 5);
        mqtt.handle_incoming_packet(Incoming::Publish(publish.clone()))
            .unwrap();
        assert!(matches!(mqtt.events.pop_front(), Some(Event::Incoming(_))));
        // The application acknowledges: PUBREC goes out, then the link drops
        // before the broker has it; the broker resends the PUBLISH.
        mqtt.handle_outgoing_packet(Request::PubRec(PubRec::new(5)))
            .unwrap();
        mqtt.events.clear();
        let _ = mqtt.clean();
        let mut again = publish;
        again.dup = true;
        let packet = mqtt
            .handle_incoming_packet(Incoming::Publish(again))
            .unwrap();
        assert_eq!(packet, Some(Packet::PubRec(PubRec::new(5))));
        assert_eq!(
            mqtt.events.pop_front(),
            Some(Event::Outgoing(Outgoing::PubRec(5))),
            "not delivered to the application again"
        );
        // PUBREL completes it; the id is free for a new message.
        mqtt.handle_incoming_packet(Incoming::PubRel(PubRel::new(5)))
            .unwrap();
        mqtt.events.clear();
        let fresh = build_incoming_publish(QoS::ExactlyOnce, 5);
        mqtt.handle_incoming_packet(Incoming::Publish(fresh))
            .unwrap();
        assert!(matches!(mqtt.events.pop_front(), Some(Event::Incoming(_))));
    }

    #[test]
    fn a_new_qos2_message_with_an_id_in_use_is_delivered() {
        // A broker back from an older save hands out a recent id again: the
        // message is new (no DUP), and is delivered, not taken for a copy.
        let mut mqtt = build_mqttstate();
        mqtt.manual_acks = true;
        let first = build_incoming_publish(QoS::ExactlyOnce, 8);
        mqtt.handle_incoming_packet(Incoming::Publish(first.clone()))
            .unwrap();
        mqtt.events.clear();
        let mut second = first;
        second.payload = bytes::Bytes::from_static(b"another");
        mqtt.handle_incoming_packet(Incoming::Publish(second))
            .unwrap();
        assert!(matches!(
            mqtt.events.pop_front(),
            Some(Event::Incoming(Incoming::Publish(p))) if &p.payload[..] == b"another"
        ));
    }

    #[test]
    fn a_new_qos2_message_on_a_remembered_id_waits_for_its_own_pubrec() {
        // PUBREC sent for message 9, no PUBREL yet; a broker back from an
        // older save sends a new message (no DUP) with id 9, delivered;
        // the link goes before its handler answers, and the broker's DUP
        // copy comes. The PUBREC remembered for the first message must not
        // answer it: that would acknowledge a message not yet handled.
        let mut mqtt = build_mqttstate();
        mqtt.manual_acks = true;
        let first = build_incoming_publish(QoS::ExactlyOnce, 9);
        mqtt.handle_incoming_packet(Incoming::Publish(first.clone()))
            .unwrap();
        mqtt.handle_outgoing_packet(Request::PubRec(PubRec::new(9)))
            .unwrap();
        let mut second = first;
        second.payload = bytes::Bytes::from_static(b"second");
        mqtt.handle_incoming_packet(Incoming::Publish(second.clone()))
            .unwrap();
        mqtt.events.clear();
        let _ = mqtt.clean();
        let mut copy = second;
        copy.dup = true;
        assert_eq!(
            mqtt.handle_incoming_packet(Incoming::Publish(copy))
                .unwrap(),
            None,
            "no PUBREC before the handler's"
        );
        assert!(
            matches!(mqtt.events.pop_front(), Some(Event::DuplicateDropped(9))),
            "{:?}",
            mqtt.events
        );
    }

    #[test]
    fn an_unsubscribe_lost_with_its_connection_frees_its_id() {
        let mut mqtt = build_mqttstate();
        let unsubscribe = Unsubscribe::new("a/#");
        let Some(Packet::Unsubscribe(sent)) = mqtt
            .handle_outgoing_packet(Request::Unsubscribe(unsubscribe))
            .unwrap()
        else {
            panic!("no UNSUBSCRIBE written");
        };
        assert_eq!(
            mqtt.unsubscribe_topics(sent.pkid),
            Some(&["a/#".to_owned()][..])
        );
        // The link went before UNSUBACK; the next connection's CONNACK.
        let _ = mqtt.clean();
        mqtt.forget_unsubscribes();
        assert_eq!(mqtt.unsubscribe_topics(sent.pkid), None);
    }

    #[test]
    fn an_acknowledgement_from_an_earlier_session_is_not_written() {
        // A message of session 0 acknowledged after the broker started
        // session 1 (the acknowledgement waited in the request channel):
        // packet id 3 belongs to another message there. Dropped; the same
        // acknowledgement tagged with the current session is written.
        let mut mqtt = build_mqttstate();
        assert_eq!(mqtt.session_generation(), 0);
        mqtt.new_session();
        assert_eq!(mqtt.session_generation(), 1);
        mqtt.events.clear();
        let stale = Request::AckIn {
            generation: 0,
            ack: SessionAck::PubAck(PubAck::new(3)),
        };
        assert_eq!(mqtt.handle_outgoing_packet(stale).unwrap(), None);
        let stale = Request::AckIn {
            generation: 0,
            ack: SessionAck::PubRec(PubRec::new(3)),
        };
        assert_eq!(mqtt.handle_outgoing_packet(stale).unwrap(), None);
        assert!(mqtt.events.is_empty(), "{:?}", mqtt.events);
        let current = Request::AckIn {
            generation: 1,
            ack: SessionAck::PubAck(PubAck::new(3)),
        };
        assert!(matches!(
            mqtt.handle_outgoing_packet(current),
            Ok(Some(Packet::PubAck(a))) if a.pkid == 3
        ));
    }

    #[test]
    fn a_qos2_publish_delivered_and_not_yet_acknowledged_is_not_delivered_again() {
        // Delivered, its handler still at work (no PUBREC yet), and the
        // link went: the broker's copy marked DUP is not delivered again
        // (MQTT 3.1.1 section 4.3.3: no second delivery before PUBREL; the
        // ingest stored such a message twice). The handler's PUBREC then
        // answers it, and the exchange ends as usual.
        let mut mqtt = build_mqttstate();
        mqtt.manual_acks = true;
        let publish = build_incoming_publish(QoS::ExactlyOnce, 6);
        mqtt.handle_incoming_packet(Incoming::Publish(publish.clone()))
            .unwrap();
        mqtt.events.clear();
        let _ = mqtt.clean();
        let mut again = publish;
        again.dup = true;
        assert!(
            mqtt.handle_incoming_packet(Incoming::Publish(again))
                .unwrap()
                .is_none()
        );
        assert!(
            matches!(mqtt.events.pop_front(), Some(Event::DuplicateDropped(6))),
            "{:?}",
            mqtt.events
        );
        assert!(mqtt.events.is_empty(), "{:?}", mqtt.events);
        assert!(matches!(
            mqtt.handle_outgoing_packet(Request::PubRec(PubRec::new(6))),
            Ok(Some(Packet::PubRec(_)))
        ));
        assert!(matches!(
            mqtt.handle_incoming_packet(Incoming::PubRel(PubRel::new(6))),
            Ok(Some(Packet::PubComp(_)))
        ));
        assert!(mqtt.incoming_pub.is_empty());
    }
}
