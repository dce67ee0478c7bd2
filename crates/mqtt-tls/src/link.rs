//! The link to the broker as an acknowledgement sees it: which broker
//! session is current, whether it is connected, whether the connection is
//! gone for good, and a signal when that changes. A [`Delivery`] holds this
//! (and the request channel), not the client's whole state.
//!
//! [`Delivery`]: crate::Delivery

use std::sync::atomic::{AtomicBool, AtomicU64};

use tokio::sync::Notify;

/// The state of the link to the broker, written by the connection.
#[derive(Debug, Default)]
pub(crate) struct Link {
    /// The broker session's number: one more at every CONNACK without a
    /// session present (the fork's `EventLoop::session_generation`, taken
    /// at that CONNACK). An acknowledgement is sent only in the session its
    /// message came in: checked here before it is queued, and by the event
    /// loop when it takes it from the request channel (`AsyncClient::ack_in`).
    pub(crate) session: AtomicU64,
    /// Whether the connection is up (CONNACK received, no error since).
    pub(crate) connected: AtomicBool,
    /// The `Connection` is gone: nothing will take requests any more.
    /// Written under the tracker's lock.
    pub(crate) gone: AtomicBool,
    /// Woken at every CONNACK (after `session` and `connected` are set) and
    /// when the connection stops: acknowledgements held during an outage
    /// look again.
    pub(crate) changed: Notify,
}
