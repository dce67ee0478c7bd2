//! Subscribing: a handler goes into the subscription table, and every
//! subscription the broker does not have yet goes out in one SUBSCRIBE
//! whenever the connection is up and the request channel has room.

use std::sync::atomic::Ordering;

use rumqttc_mtls::AsyncClient;
use tokio::sync::oneshot;

use crate::client::shared::Shared;
use crate::error::{Error, Result};
use crate::handler::HandlerKind;
use crate::lock::lock;
use crate::qos::QoS;
use crate::subscriptions::Subscriptions;
use crate::topic::TopicFilter;

/// The broker's answer to a subscription, from
/// [`MqttClient::subscribe`](crate::MqttClient::subscribe).
#[derive(Debug)]
pub struct Subscribed {
    answer: oneshot::Receiver<Result<QoS>>,
}

impl Subscribed {
    /// Waits for the broker's SUBACK: the QoS it granted, or
    /// [`Error::SubscriptionRefused`]. Needs the
    /// [`Connection`](crate::Connection) running; [`Error::Closed`] if it
    /// stops first.
    pub async fn granted(self) -> Result<QoS> {
        self.answer.await.unwrap_or(Err(Error::Closed))
    }
}

/// Adds `handler` for `filter` to the table, wakes the dispatcher (for
/// messages waiting for a handler) and, when connected, sends it.
pub(crate) fn add(
    rumqtt: &AsyncClient,
    shared: &Shared,
    filter: TopicFilter,
    qos: QoS,
    handler: HandlerKind,
) -> Subscribed {
    let mut subs = lock(&shared.subscriptions);
    let answer = subs.add(filter, qos, handler);
    if shared.link.gone.load(Ordering::SeqCst) {
        subs.close();
    }
    shared.subscription_added.notify_waiters();
    if shared.link.connected.load(Ordering::SeqCst) {
        send_unsent(rumqtt, shared, &mut subs);
    }
    Subscribed { answer }
}

/// Sends every subscription not sent yet, in as few SUBSCRIBEs as fit
/// `max_outgoing_packet_size` (one too big for it would fail the
/// connection, and be sent again on every reconnect), unless the request
/// channel is full (then the connection tries again when it takes
/// requests). A filter that cannot fit even alone is refused.
pub(crate) fn send_unsent(rumqtt: &AsyncClient, shared: &Shared, subs: &mut Subscriptions) {
    let unsent = subs.unsent();
    if unsent.is_empty() {
        shared.subscriptions_unsent.store(false, Ordering::SeqCst);
        return;
    }
    for chunk in chunks(unsent, shared.max_outgoing_packet_size) {
        let names: Vec<String> = chunk.iter().map(|(f, _)| f.clone()).collect();
        if subscribe_size(&chunk) > shared.max_outgoing_packet_size {
            let filter = names.concat();
            tracing::warn!(
                "the subscription to {filter:?} does not fit in one packet of at most {} \
                 bytes (max_outgoing_packet_size): refused",
                shared.max_outgoing_packet_size
            );
            subs.requested(&names);
            subs.on_suback(&names, &[None]);
            continue;
        }
        let filters: Vec<rumqttc_mtls::SubscribeFilter> = chunk
            .into_iter()
            .map(|(f, q)| rumqttc_mtls::SubscribeFilter::new(f, q.to_wire()))
            .collect();
        match rumqtt.try_subscribe_many(filters) {
            Ok(()) => subs.requested(&names),
            Err(_) => {
                shared.subscriptions_unsent.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
    shared.subscriptions_unsent.store(false, Ordering::SeqCst);
}

/// A SUBSCRIBE's size on the wire, remaining length and fixed header
/// (at most 5 bytes): packet id, then each filter's length, bytes and QoS.
fn subscribe_size(filters: &[(String, QoS)]) -> usize {
    let remaining: usize = 2 + filters.iter().map(|(f, _)| 2 + f.len() + 1).sum::<usize>();
    remaining + 5
}

/// `filters` in runs that each fit in `max` bytes as one SUBSCRIBE (a
/// filter too big alone is a run of its own).
fn chunks(filters: Vec<(String, QoS)>, max: usize) -> Vec<Vec<(String, QoS)>> {
    let mut out: Vec<Vec<(String, QoS)>> = Vec::new();
    let mut current: Vec<(String, QoS)> = Vec::new();
    for filter in filters {
        current.push(filter);
        if current.len() > 1 && subscribe_size(&current) > max {
            let last = current.pop().into_iter().collect();
            out.push(std::mem::replace(&mut current, last));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_split_to_fit_the_outgoing_limit() {
        let filters: Vec<(String, QoS)> = (0..100)
            .map(|i| (format!("{i:03}/{}", "x".repeat(96)), QoS::AtLeastOnce))
            .collect();
        // 100 filters of 100 bytes: 10,300 bytes in one SUBSCRIBE.
        assert!(subscribe_size(&filters) > 1024);
        let runs = chunks(filters.clone(), 1024);
        assert!(runs.len() >= 11, "{}", runs.len());
        assert!(runs.iter().all(|r| subscribe_size(r) <= 1024));
        assert_eq!(runs.concat(), filters, "every filter, in order");
        // One too big alone is a run of its own (and is refused).
        let big = vec![
            ("y".repeat(2000), QoS::AtMostOnce),
            ("a".into(), QoS::AtMostOnce),
        ];
        let runs = chunks(big, 1024);
        assert_eq!(runs.len(), 2);
        assert!(subscribe_size(&runs[0]) > 1024);
    }
}
