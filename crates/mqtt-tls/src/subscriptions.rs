//! The subscription table: which filters are registered, which the broker
//! confirmed (SUBACK, with the QoS it granted) or refused, and which still
//! have to be sent. Pure bookkeeping, driven by the connection's events, so
//! that it can be tested on event sequences without a broker.
//!
//! A SUBACK is matched to its filters by packet id, through the event
//! loop (`MqttState::take_subscribe_filters`). After every reconnect, all
//! of them are sent again, even to a broker that says it kept the session:
//! a duplicate SUBSCRIBE is harmless (the broker replaces the subscription;
//! it does send the retained messages again), a lost one is not.

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::handler::HandlerKind;
use crate::qos::QoS;
use crate::topic::TopicFilter;

/// Where a subscription stands with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Not sent on this connection yet.
    Unsent,
    /// Sent; no SUBACK yet.
    Requested,
    /// Confirmed, with the QoS the broker granted.
    Granted(QoS),
    /// Refused by the broker (SUBACK 0x80).
    Refused,
}

pub(crate) struct Subscription {
    pub(crate) filter: TopicFilter,
    pub(crate) qos: QoS,
    pub(crate) handler: HandlerKind,
    pub(crate) status: Status,
    waiters: Vec<oneshot::Sender<Result<QoS>>>,
}

impl Subscription {
    fn settle(&mut self, status: Status) {
        self.status = status;
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(match status {
                Status::Granted(qos) => Ok(qos),
                _ => Err(Error::SubscriptionRefused {
                    filter: self.filter.as_str().to_owned(),
                }),
            });
        }
    }
}

#[derive(Default)]
pub(crate) struct Subscriptions {
    pub(crate) list: Vec<Subscription>,
    /// Filters unsubscribed whose UNSUBACK has not come yet: sent again
    /// after a reconnect to a session the broker kept (an UNSUBSCRIBE lost
    /// with the link would leave the broker's subscription in place).
    pub(crate) unsubscribing: std::collections::BTreeSet<String>,
}

impl Subscriptions {
    /// Registers a subscription; the receiver gets the broker's answer.
    pub(crate) fn add(
        &mut self,
        filter: TopicFilter,
        qos: QoS,
        handler: HandlerKind,
    ) -> oneshot::Receiver<Result<QoS>> {
        let (tx, rx) = oneshot::channel();
        self.unsubscribing.remove(filter.as_str());
        self.list.push(Subscription {
            filter,
            qos,
            handler,
            status: Status::Unsent,
            waiters: vec![tx],
        });
        rx
    }

    /// Removes every subscription to `filter`; whether there was one. The
    /// filter counts as unsubscribing until its UNSUBACK.
    pub(crate) fn remove(&mut self, filter: &str) -> bool {
        let before = self.list.len();
        self.list.retain(|s| s.filter.as_str() != filter);
        self.unsubscribing.insert(filter.to_owned());
        self.list.len() != before
    }

    /// Removes every subscription to `filter` without asking the broker
    /// (one it never had).
    pub(crate) fn forget(&mut self, filter: &str) {
        self.list.retain(|s| s.filter.as_str() != filter);
    }

    /// The broker answered an UNSUBSCRIBE of `filters`.
    pub(crate) fn on_unsuback(&mut self, filters: &[String]) {
        for filter in filters {
            self.unsubscribing.remove(filter);
        }
    }

    /// The filters to send, each once, with the highest QoS any handler
    /// of it asked for (a SUBSCRIBE replaces the broker's subscription, so
    /// a later, lower request must not lower an earlier one).
    pub(crate) fn unsent(&self) -> Vec<(String, QoS)> {
        let mut out: Vec<(String, QoS)> = Vec::new();
        for s in self.list.iter().filter(|s| s.status == Status::Unsent) {
            if out.iter().any(|(f, _)| f == s.filter.as_str()) {
                continue;
            }
            let qos = self
                .list
                .iter()
                .filter(|o| o.filter.as_str() == s.filter.as_str() && o.status != Status::Refused)
                .map(|o| o.qos)
                .fold(s.qos, |a, b| if b > a { b } else { a });
            out.push((s.filter.as_str().to_owned(), qos));
        }
        out
    }

    /// The connection is gone: whoever waits for an answer gets `Closed`.
    pub(crate) fn close(&mut self) {
        for s in &mut self.list {
            for waiter in s.waiters.drain(..) {
                let _ = waiter.send(Err(Error::Closed));
            }
        }
    }

    /// `filters` went into the request channel.
    pub(crate) fn requested(&mut self, filters: &[String]) {
        for s in &mut self.list {
            if s.status == Status::Unsent && filters.iter().any(|f| f == s.filter.as_str()) {
                s.status = Status::Requested;
            }
        }
    }

    /// The broker answered a SUBSCRIBE of `filters`, one code each
    /// (`None`: refused). Returns the refused filters.
    pub(crate) fn on_suback(&mut self, filters: &[String], granted: &[Option<QoS>]) -> Vec<String> {
        let mut refused = Vec::new();
        for (filter, answer) in filters.iter().zip(granted) {
            let status = match answer {
                Some(qos) => Status::Granted(*qos),
                None => {
                    refused.push(filter.clone());
                    Status::Refused
                }
            };
            for s in self
                .list
                .iter_mut()
                .filter(|s| s.filter.as_str() == filter && s.status != Status::Unsent)
            {
                s.settle(status);
            }
        }
        refused
    }

    /// A CONNACK: the filters to unsubscribe again (those whose UNSUBACK
    /// never came, when the broker kept the session; none with a new one).
    pub(crate) fn on_connack_unsubscribing(&mut self, session_present: bool) -> Vec<String> {
        if !session_present {
            // A new session has no subscription to remove.
            self.unsubscribing.clear();
        }
        self.unsubscribing.iter().cloned().collect()
    }

    /// A CONNACK: every subscription is sent again, whatever the broker
    /// says of its session. Without a session it has none of them; with
    /// one, a SUBSCRIBE in flight when the link went may never have
    /// arrived, and a broker that crashed and came back from an older save
    /// of its sessions says "session present" without the subscriptions
    /// made since (Mosquitto's `autosave_interval`). A repeated SUBSCRIBE
    /// replaces the broker's subscription and costs nothing else, except
    /// that the broker sends the filter's retained messages again. Refused
    /// ones are not asked again.
    pub(crate) fn on_connack(&mut self) {
        for s in &mut self.list {
            let resend = match s.status {
                Status::Requested | Status::Granted(_) => true,
                Status::Unsent | Status::Refused => false,
            };
            if resend {
                s.status = Status::Unsent;
            }
        }
    }

    /// The filters the broker refused.
    pub(crate) fn refused(&self) -> Vec<String> {
        self.list
            .iter()
            .filter(|s| s.status == Status::Refused)
            .map(|s| s.filter.as_str().to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn handler() -> HandlerKind {
        HandlerKind::Immediate(Arc::new(|_| Box::pin(async { Ok(()) })))
    }

    fn table(filters: &[&str]) -> (Subscriptions, Vec<oneshot::Receiver<Result<QoS>>>) {
        let mut t = Subscriptions::default();
        let rx = filters
            .iter()
            .map(|f| t.add(TopicFilter::new(*f).unwrap(), QoS::ExactlyOnce, handler()))
            .collect();
        (t, rx)
    }

    /// What the connection does: send the unsent filters in one SUBSCRIBE.
    fn send(t: &mut Subscriptions) -> Vec<String> {
        let filters: Vec<String> = t.unsent().into_iter().map(|(f, _)| f).collect();
        t.requested(&filters);
        filters
    }

    fn statuses(t: &Subscriptions) -> Vec<Status> {
        t.list.iter().map(|s| s.status).collect()
    }

    #[test]
    fn a_suback_settles_each_filter_with_its_granted_qos_or_a_refusal() {
        let (mut t, mut rx) = table(&["a/#", "b/#"]);
        let sent = send(&mut t);
        assert_eq!(sent, ["a/#", "b/#"]);
        assert!(t.unsent().is_empty());
        let refused = t.on_suback(&sent, &[Some(QoS::AtLeastOnce), None]);
        assert_eq!(refused, ["b/#"]);
        assert_eq!(rx[0].try_recv().unwrap().unwrap(), QoS::AtLeastOnce);
        assert!(matches!(
            rx[1].try_recv().unwrap(),
            Err(Error::SubscriptionRefused { ref filter }) if filter == "b/#"
        ));
        assert_eq!(t.refused(), ["b/#"]);
    }

    #[test]
    fn every_subscription_is_sent_again_even_to_a_broker_that_kept_the_session() {
        let (mut t, _rx) = table(&["a/#", "b/#"]);
        let sent = send(&mut t);
        t.on_suback(&sent, &[Some(QoS::AtLeastOnce), Some(QoS::AtLeastOnce)]);
        // A new subscription goes out, and the link drops before its SUBACK.
        t.add(
            TopicFilter::new("c/#").unwrap(),
            QoS::AtLeastOnce,
            handler(),
        );
        assert_eq!(send(&mut t), ["c/#"]);
        t.on_connack();
        // c/# may never have arrived, and a broker that came back from an
        // older save may not have the others either, whatever it says.
        assert_eq!(send(&mut t), ["a/#", "b/#", "c/#"]);
    }

    #[test]
    fn everything_but_refusals_is_sent_again() {
        let (mut t, _rx) = table(&["a/#", "b/#"]);
        let sent = send(&mut t);
        t.on_suback(&sent, &[Some(QoS::AtLeastOnce), None]);
        t.on_connack();
        let again = send(&mut t);
        assert_eq!(again, ["a/#"]);
        t.on_suback(&again, &[Some(QoS::AtMostOnce)]);
        assert_eq!(
            statuses(&t),
            [Status::Granted(QoS::AtMostOnce), Status::Refused]
        );
    }

    #[test]
    fn an_unsubscribe_is_sent_again_until_answered_and_only_to_a_kept_session() {
        let (mut t, _rx) = table(&["a/#", "b/#"]);
        assert!(t.remove("a/#"));
        assert_eq!(t.on_connack_unsubscribing(true), ["a/#"]);
        t.on_unsuback(&["a/#".to_owned()]);
        assert!(t.on_connack_unsubscribing(true).is_empty());
        t.remove("b/#");
        assert!(
            t.on_connack_unsubscribing(false).is_empty(),
            "a new session"
        );
        // Subscribing again ends the unsubscribing.
        t.remove("c/#");
        t.add(
            TopicFilter::new("c/#").unwrap(),
            QoS::AtLeastOnce,
            handler(),
        );
        assert!(t.on_connack_unsubscribing(true).is_empty());
    }

    #[test]
    fn two_handlers_on_one_filter_share_one_request_and_its_answer() {
        let (mut t, mut rx) = table(&["a/#", "a/#"]);
        let sent = send(&mut t);
        assert_eq!(sent, ["a/#"]);
        t.on_suback(&sent, &[Some(QoS::AtLeastOnce)]);
        assert!(rx.iter_mut().all(|r| r.try_recv().unwrap().is_ok()));
        assert!(t.remove("a/#"));
        assert!(t.list.is_empty());
    }

    #[test]
    fn the_highest_qos_asked_for_a_filter_is_requested() {
        let mut t = Subscriptions::default();
        t.add(TopicFilter::new("a/#").unwrap(), QoS::AtMostOnce, handler());
        t.add(
            TopicFilter::new("a/#").unwrap(),
            QoS::ExactlyOnce,
            handler(),
        );
        assert_eq!(t.unsent(), [("a/#".to_owned(), QoS::ExactlyOnce)]);
    }

    #[test]
    fn a_later_lower_request_does_not_lower_a_granted_subscription() {
        let (mut t, _rx) = table(&["a/#"]);
        let sent = send(&mut t);
        t.on_suback(&sent, &[Some(QoS::ExactlyOnce)]);
        t.add(TopicFilter::new("a/#").unwrap(), QoS::AtMostOnce, handler());
        assert_eq!(t.unsent(), [("a/#".to_owned(), QoS::ExactlyOnce)]);
    }

    #[test]
    fn waiters_get_closed_when_the_connection_is_gone() {
        let (mut t, mut rx) = table(&["a/#"]);
        t.close();
        assert!(matches!(rx[0].try_recv().unwrap(), Err(Error::Closed)));
    }
}
