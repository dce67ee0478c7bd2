//! The client's counters: [`Stats`], a copy for callers, and the atomic
//! counters behind it.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// waited for the handlers, or because they did not fit in
    /// `max_queued_bytes`.
    pub qos0_dropped: u64,
    /// Bytes of received messages held now (payload and topic), against
    /// [`ConnectOptions::max_queued_bytes`](crate::ConnectOptions::max_queued_bytes).
    pub queued_bytes: u64,
    /// Times the client stopped reading from the broker because QoS 1/2
    /// messages filled `max_queued_bytes`.
    pub read_pauses: u64,
    /// Messages no subscription matched within `unmatched_grace`: handed to
    /// the [`MqttClient::on_dead_letter`](crate::MqttClient::on_dead_letter)
    /// handler, or acknowledged and dropped.
    pub unmatched: u64,
    /// Messages whose handler failed `handler_attempts` times.
    pub handler_gave_up: u64,
    /// Messages over
    /// [`ConnectOptions::max_incoming_packet_size`](crate::ConnectOptions::max_incoming_packet_size):
    /// dropped unread, then handed to the
    /// [`MqttClient::on_dead_letter`](crate::MqttClient::on_dead_letter)
    /// handler (with [`DeadLetter::TooLarge`](crate::DeadLetter::TooLarge))
    /// or acknowledged and logged.
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
    pub(crate) read_pauses: AtomicU64,
    /// QoS 0 messages waiting for the dispatcher now.
    pub(crate) qos0_queued: AtomicU64,
    /// `publish` calls waiting for room in the request channel.
    pub(crate) waiting_for_room: AtomicU64,
}

impl Counters {
    /// The counters now, with `tracked` publishes in the tracker and
    /// `queued_bytes` of received messages held.
    pub(crate) fn stats(&self, tracked: usize, queued_bytes: u64) -> Stats {
        Stats {
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            messages_handled: self.messages_handled.load(Ordering::Relaxed),
            handler_failures: self.handler_failures.load(Ordering::Relaxed),
            qos0_dropped: self.qos0_dropped.load(Ordering::Relaxed),
            queued_bytes,
            read_pauses: self.read_pauses.load(Ordering::Relaxed),
            unmatched: self.unmatched.load(Ordering::Relaxed),
            handler_gave_up: self.handler_gave_up.load(Ordering::Relaxed),
            too_large: self.too_large.load(Ordering::Relaxed),
            pending_publishes: tracked as u64 + self.waiting_for_room.load(Ordering::Relaxed),
        }
    }
}
