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

/// Sends every subscription not sent yet, in one SUBSCRIBE, unless the
/// request channel is full (then the connection tries again when it takes
/// requests).
pub(crate) fn send_unsent(rumqtt: &AsyncClient, shared: &Shared, subs: &mut Subscriptions) {
    let unsent = subs.unsent();
    if unsent.is_empty() {
        shared.subscriptions_unsent.store(false, Ordering::SeqCst);
        return;
    }
    let names: Vec<String> = unsent.iter().map(|(f, _)| f.clone()).collect();
    let filters: Vec<rumqttc_mtls::SubscribeFilter> = unsent
        .into_iter()
        .map(|(f, q)| rumqttc_mtls::SubscribeFilter::new(f, q.to_wire()))
        .collect();
    match rumqtt.try_subscribe_many(filters) {
        Ok(()) => {
            subs.requested(&names);
            shared.subscriptions_unsent.store(false, Ordering::SeqCst);
        }
        Err(_) => shared.subscriptions_unsent.store(true, Ordering::SeqCst),
    }
}
