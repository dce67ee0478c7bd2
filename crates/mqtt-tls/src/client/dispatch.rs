//! The dispatcher: runs the handlers of each received message, one message
//! at a time in arrival order, and acknowledges a QoS 1/2 message only
//! once every handler took it.
//!
//! What it decides, and the tests at the bottom check on synthetic
//! messages without a broker (acknowledgements are read from the request
//! channel, where the event loop would take them):
//! - a handler's `Err` or panic is a failed handling, retried with backoff
//!   while the message stays unacknowledged, up to
//!   [`ConnectOptions::handler_attempts`](crate::ConnectOptions::handler_attempts),
//!   then the dead-letter path;
//! - several matching handlers each hold a share of the acknowledgement,
//!   which goes out once all released theirs;
//! - a message no subscription matches waits for one briefly, then takes
//!   the dead-letter path; never dropped silently;
//! - an acknowledgement from an earlier broker session is not sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rumqttc_mtls::{AsyncClient, Publish};
use tokio::sync::mpsc;

use crate::budget::Charge;
use crate::client::shared::Shared;
use crate::handler::{Acknowledgement, DeadLetter, HandlerError, HandlerFuture, HandlerKind};
use crate::lock::lock;

/// A message for the dispatcher. Boxed: the channel allocates its first
/// block of 32 slots up front, on every connection whether it ever receives
/// or not.
pub(crate) type Received = Box<Arrival>;

/// A message as it arrived.
#[derive(Debug)]
pub(crate) struct Arrival {
    pub(crate) publish: Publish,
    /// The broker session it came in (see `Link::session`).
    pub(crate) session: u64,
    /// Over the incoming limit: its size and the limit (its payload was
    /// dropped unread).
    pub(crate) too_large: Option<(usize, usize)>,
    /// Its bytes in the client's budget, held until its handlers are done
    /// with it.
    pub(crate) charge: Charge,
}

/// Calls a handler and runs its future, a panic in either becoming an
/// error like any other failed handling (retried with backoff, the message
/// unacknowledged), instead of killing the dispatcher.
async fn guarded(call: impl FnOnce() -> HandlerFuture) -> std::result::Result<(), HandlerError> {
    let mut future = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(future) => future,
        Err(panic) => return Err(panicked(&panic)),
    };
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => std::task::Poll::Ready(Err(panicked(&panic))),
        }
    })
    .await
}

fn panicked(panic: &Box<dyn std::any::Any + Send>) -> HandlerError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    format!("the handler panicked: {what}").into()
}

/// Runs handlers one message at a time, in arrival order, and acknowledges
/// each QoS 1/2 message only after all its handlers succeeded. A failing
/// handler is retried with backoff; its message stays unacknowledged, so if
/// the process dies the broker redelivers it to the persistent session.
///
/// A message no subscription matches (a persistent session's backlog,
/// delivered right after CONNACK before the application subscribed; a
/// filter left in the session) waits up to `unmatched_grace` for a handler
/// subscribed a moment later, at most [`UNMATCHED_PARKED`] at a time (below
/// Mosquitto's default in-flight window of 20, so the session never stalls
/// on them); then it goes to the
/// [`MqttClient::on_dead_letter`](crate::MqttClient::on_dead_letter)
/// handler, or, without one, is acknowledged, counted and logged: never
/// dropped silently.
pub(crate) async fn dispatch(
    mut rx: mpsc::UnboundedReceiver<Received>,
    rumqtt: AsyncClient,
    shared: Arc<Shared>,
) {
    let mut parked: VecDeque<(Publish, u64, tokio::time::Instant, Charge)> = VecDeque::new();
    loop {
        // Registered before looking at the table, so a subscription added
        // in between is not missed.
        let added = shared.subscription_added.notified();
        tokio::pin!(added);
        added.as_mut().enable();
        let now = tokio::time::Instant::now();
        let ready = parked.iter().position(|(p, _, deadline, _)| {
            *deadline <= now || !matching(&shared, &p.topic).is_empty()
        });
        let (publish, session, charge, waited) = match ready.and_then(|i| parked.remove(i)) {
            Some((publish, session, _, charge)) => (publish, session, charge, true),
            None => {
                let deadline = parked.front().map(|(_, _, d, _)| *d);
                // With as many waiting as allowed, later messages stay in
                // the channel (and the broker's window) until a handler comes
                // or the oldest waiting one's grace ends: none is dropped for
                // want of room.
                let room = parked.len() < UNMATCHED_PARKED;
                tokio::select! {
                    received = rx.recv(), if room => match received {
                        Some(received) => {
                            let Arrival { publish, session, too_large, charge } = *received;
                            if publish.qos == rumqttc_mtls::QoS::AtMostOnce {
                                shared.counters.qos0_queued.fetch_sub(1, Ordering::Relaxed);
                            }
                            if let Some((size, max)) = too_large {
                                let arrived = (publish, session, charge);
                                if !too_large_message(arrived, size, max, &rumqtt, &shared).await {
                                    return;
                                }
                                continue;
                            }
                            (publish, session, charge, false)
                        }
                        None => return,
                    },
                    () = tokio::time::sleep_until(deadline.unwrap_or(now)), if deadline.is_some() => continue,
                    () = added, if !parked.is_empty() => continue,
                }
            }
        };
        let mut handlers = matching(&shared, &publish.topic);
        let mut attempts_limit = shared.handler_attempts;
        let matched = !handlers.is_empty();
        if !matched {
            if !waited && parked.len() < UNMATCHED_PARKED {
                // The grace starts now, when the message is here.
                let now = tokio::time::Instant::now();
                tracing::debug!(
                    "no handler for {} yet: waiting up to {:?} for one",
                    publish.topic,
                    shared.unmatched_grace
                );
                parked.push_back((publish, session, now + shared.unmatched_grace, charge));
                continue;
            }
            shared.counters.unmatched.fetch_add(1, Ordering::Relaxed);
            let dead_letter_handler = lock(&shared.dead_letter_handler).clone();
            match dead_letter_handler {
                Some(dead_letter) => {
                    // The dead-letter handler is retried for ever: giving up
                    // on it would mislabel the message.
                    attempts_limit = None;
                    handlers.push(HandlerKind::Deferred(Arc::new(move |m, d| {
                        dead_letter(m, d, DeadLetter::NoSubscription)
                    })));
                }
                None => tracing::warn!(
                    "a message on {} matches no subscription: acknowledged and dropped \
                     (set MqttClient::on_dead_letter to keep such messages)",
                    publish.topic
                ),
            }
        }
        let limits = Limits {
            attempts: attempts_limit,
            matched,
        };
        let arrived = (publish, session, charge);
        if !handle_message(arrived, handlers, limits, &rumqtt, &shared).await {
            return;
        }
    }
}

/// A message over the incoming limit, its payload dropped unread: to the
/// dead-letter handler with [`DeadLetter::TooLarge`], or acknowledged,
/// counted and logged with its topic, size and the limit. Waiting would
/// gain nothing: no handler can have what was not read, and the broker would
/// send it again on every reconnect, holding up what follows.
async fn too_large_message(
    (publish, session, charge): (Publish, u64, Charge),
    size: usize,
    max: usize,
    rumqtt: &AsyncClient,
    shared: &Arc<Shared>,
) -> bool {
    shared.counters.too_large.fetch_add(1, Ordering::Relaxed);
    let reason = DeadLetter::TooLarge { size, max };
    let mut handlers = Vec::new();
    match lock(&shared.dead_letter_handler).clone() {
        Some(dead_letter) => handlers.push(HandlerKind::Deferred(Arc::new(move |m, d| {
            dead_letter(m, d, reason.clone())
        }))),
        None => tracing::error!(
            "a message on {} dropped: {reason} (set MqttClient::on_dead_letter to record such \
             messages)",
            publish.topic
        ),
    }
    let limits = Limits {
        attempts: None,
        matched: false,
    };
    handle_message((publish, session, charge), handlers, limits, rumqtt, shared).await
}

/// At most this many messages without a handler wait for one at a time.
const UNMATCHED_PARKED: usize = 16;

/// The handlers whose filter matches `topic`.
fn matching(shared: &Shared, topic: &str) -> Vec<HandlerKind> {
    lock(&shared.subscriptions)
        .list
        .iter()
        .filter(|s| s.filter.matches(topic))
        .map(|s| s.handler.clone())
        .collect()
}

/// How [`handle_message`] treats one message.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Calls of a failing handler before giving up (`None`: no limit).
    attempts: Option<u32>,
    /// Whether a subscription matched it (else `handlers` is the dead-letter
    /// handler, or empty): only then does it count as handled.
    matched: bool,
}

/// Runs `handlers` on one message (with the session it came in and its
/// bytes in the budget) and acknowledges it when all succeeded
/// (with no handler: at once). `false` when the client is shutting down or
/// closed.
async fn handle_message(
    (publish, session, charge): (Publish, u64, Charge),
    handlers: Vec<HandlerKind>,
    limits: Limits,
    rumqtt: &AsyncClient,
    shared: &Arc<Shared>,
) -> bool {
    let deferred = handlers
        .iter()
        .filter(|h| matches!(h, HandlerKind::Deferred(_)))
        .count();
    // One share per deferred handler, and one for this dispatcher once
    // the immediate handlers succeeded.
    let ack = Acknowledgement::new(
        publish,
        session,
        charge,
        shared.link.clone(),
        rumqtt.clone(),
        deferred as u64 + 1,
    );
    let message = ack.message();
    // Shares nobody will release because their handler gave up.
    let mut orphaned = 0;
    let mut gave_up: Option<(u32, String)> = None;
    for handler in handlers {
        let mut attempt: u32 = 0;
        // One share per deferred handler, however many attempts: a handler
        // that acknowledged and then failed has released it already.
        let released = Arc::new(AtomicBool::new(false));
        loop {
            let result = match &handler {
                HandlerKind::Immediate(h) => guarded(|| h(message.clone())).await,
                HandlerKind::Deferred(h) => {
                    let delivery = ack.delivery(1, released.clone());
                    guarded(|| h(message.clone(), delivery)).await
                }
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    shared
                        .counters
                        .handler_failures
                        .fetch_add(1, Ordering::Relaxed);
                    attempt = attempt.saturating_add(1);
                    if limits.attempts.is_some_and(|max| attempt >= max) {
                        shared
                            .counters
                            .handler_gave_up
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            "handler for {} failed {attempt} times, giving up: {e}",
                            message.topic
                        );
                        orphaned += match handler {
                            // Taken for good: a Delivery of an earlier
                            // attempt acknowledged later releases nothing.
                            HandlerKind::Deferred(_) => {
                                u64::from(!released.swap(true, Ordering::SeqCst))
                            }
                            // The dispatcher's own share then stays too.
                            HandlerKind::Immediate(_) => 0,
                        };
                        gave_up = Some((attempt, e.to_string()));
                        break;
                    }
                    tracing::warn!(
                        "handler for {} failed (attempt {attempt}): {e}; retrying, message not acknowledged",
                        message.topic
                    );
                    let delay = shared.handler_retry.delay(attempt - 1);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shared.shutdown_notify.notified() => return false,
                    }
                }
            }
        }
    }
    let Some((attempts, error)) = gave_up else {
        if limits.matched {
            shared
                .counters
                .messages_handled
                .fetch_add(1, Ordering::Relaxed);
        }
        return ack.release(1).await.is_ok();
    };
    // The dispatcher's share goes with the orphans: the message is done
    // only when the dead-letter handler says so.
    orphaned += 1;
    let reason = DeadLetter::HandlerFailed { attempts, error };
    let dead_letter_handler = lock(&shared.dead_letter_handler).clone();
    match dead_letter_handler {
        Some(dead_letter) => {
            let mut attempt = 0;
            loop {
                let delivery = ack.delivery(orphaned, Arc::new(AtomicBool::new(false)));
                match guarded(|| dead_letter(message.clone(), delivery, reason.clone())).await {
                    Ok(()) => return true,
                    Err(e) => {
                        tracing::warn!(
                            "dead-letter handler for {} failed (attempt {}): {e}; retrying",
                            message.topic,
                            attempt + 1
                        );
                        let delay = shared.handler_retry.delay(attempt);
                        attempt = attempt.saturating_add(1);
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = shared.shutdown_notify.notified() => return false,
                        }
                    }
                }
            }
        }
        None => {
            // The application asked for a limit and has nowhere to put such
            // messages: acknowledged (leaving it unacknowledged would hold
            // one of the broker's in-flight slots for good, and enough of
            // them stop the stream), counted and logged.
            tracing::error!(
                "message on {} dropped: {reason} (set MqttClient::on_dead_letter to keep such \
                 messages)",
                message.topic
            );
            ack.release(orphaned).await.is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use rumqttc_mtls::{Request, SessionAck};

    use super::*;
    use crate::handler::{Delivery, Message};
    use crate::options::{Backoff, ConnectOptions};
    use crate::qos::QoS;
    use crate::topic::TopicFilter;

    /// What a handler does with each message it gets.
    #[derive(Debug, Clone, Copy)]
    enum Behaviour {
        Ok,
        /// Fails this many calls, then succeeds.
        FailFirst(u32),
        /// Panics on the first call, then succeeds.
        PanicOnce,
        AlwaysFails,
        /// A deferred handler that acknowledges its `Delivery` at once.
        DeferredAck,
        /// A deferred handler that keeps its `Delivery` and never
        /// acknowledges.
        DeferredKeep,
    }

    /// What reached the request channel.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Sent {
        PubAck(u16),
        PubRec(u16),
    }

    struct Case {
        name: &'static str,
        handler_attempts: Option<u32>,
        dead_letters: bool,
        handlers: &'static [(&'static str, Behaviour)],
        /// (topic, QoS, packet id, session); a sentinel (QoS 1, packet id
        /// 999, with its own handler) follows.
        messages: &'static [(&'static str, QoS, u16, u64)],
        /// The session current while dispatching.
        session: u64,
        expected: &'static [Sent],
        /// (handled, handler failures, gave up, unmatched), sentinel included.
        stats: (u64, u64, u64, u64),
        /// Reasons the dead-letter handler saw.
        reasons: &'static [&'static str],
    }

    const Q0: QoS = QoS::AtMostOnce;
    const Q1: QoS = QoS::AtLeastOnce;
    const Q2: QoS = QoS::ExactlyOnce;
    const SENTINEL: Sent = Sent::PubAck(999);

    fn handler(behaviour: Behaviour, kept: Arc<Mutex<Vec<Delivery>>>) -> HandlerKind {
        let calls = Arc::new(AtomicU64::new(0));
        match behaviour {
            Behaviour::DeferredAck => HandlerKind::Deferred(Arc::new(|_, d: Delivery| {
                Box::pin(async move { d.ack().await.map_err(Into::into) })
            })),
            Behaviour::DeferredKeep => HandlerKind::Deferred(Arc::new(move |_, d| {
                kept.lock().unwrap().push(d);
                Box::pin(async { Ok(()) })
            })),
            _ => HandlerKind::Immediate(Arc::new(move |_| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                let result: std::result::Result<(), HandlerError> = match behaviour {
                    Behaviour::FailFirst(n) if call < u64::from(n) => Err("not yet".into()),
                    Behaviour::PanicOnce if call == 0 => panic!("boom"),
                    Behaviour::AlwaysFails => Err("never".into()),
                    _ => Ok(()),
                };
                Box::pin(async move { result })
            })),
        }
    }

    async fn run(case: &Case) {
        let mut options = ConnectOptions::new("localhost", 1, "dispatch-test");
        options.handler_attempts = case.handler_attempts;
        options.handler_retry = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        options.unmatched_grace = Duration::from_millis(20);
        let shared = Arc::new(Shared::new(&options));
        shared.link.session.store(case.session, Ordering::SeqCst);
        shared.link.connected.store(true, Ordering::SeqCst);
        let kept = Arc::new(Mutex::new(Vec::new()));
        {
            let mut subs = lock(&shared.subscriptions);
            for (filter, behaviour) in case.handlers {
                let filter = TopicFilter::new(*filter).unwrap();
                subs.add(filter, Q1, handler(*behaviour, kept.clone()));
            }
            let sentinel = TopicFilter::new("sentinel").unwrap();
            subs.add(sentinel, Q1, handler(Behaviour::Ok, kept.clone()));
        }
        let reasons = Arc::new(Mutex::new(Vec::new()));
        if case.dead_letters {
            let reasons = reasons.clone();
            *lock(&shared.dead_letter_handler) = Some(Arc::new(move |_, d: Delivery, why| {
                reasons.lock().unwrap().push(why.to_string());
                Box::pin(async move { d.ack().await.map_err(Into::into) })
            }));
        }
        let (requests_tx, requests) = flume::bounded(64);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(dispatch(
            rx,
            AsyncClient::from_senders(requests_tx),
            shared.clone(),
        ));
        for (topic, qos, pkid, session) in case.messages {
            let mut publish = Publish::new(*topic, qos.to_wire(), "x");
            publish.pkid = *pkid;
            tx.send(Box::new(Arrival {
                publish,
                session: *session,
                too_large: None,
                charge: shared.budget.charge(1),
            }))
            .unwrap();
        }
        let mut sentinel = Publish::new("sentinel", Q1.to_wire(), "x");
        sentinel.pkid = 999;
        tx.send(Box::new(Arrival {
            publish: sentinel,
            session: case.session,
            too_large: None,
            charge: shared.budget.charge(1),
        }))
        .unwrap();
        let mut sent = Vec::new();
        while sent.len() < case.expected.len() {
            let request = tokio::time::timeout(Duration::from_secs(10), requests.recv_async())
                .await
                .unwrap_or_else(|_| panic!("{}: only {sent:?} sent", case.name))
                .unwrap();
            sent.push(match request {
                Request::PubAck(a) => Sent::PubAck(a.pkid),
                Request::AckIn {
                    ack: SessionAck::PubAck(a),
                    ..
                } => Sent::PubAck(a.pkid),
                Request::AckIn {
                    ack: SessionAck::PubRec(r),
                    ..
                } => Sent::PubRec(r.pkid),
                other => panic!("{}: unexpected request {other:?}", case.name),
            });
        }
        assert_eq!(sent, case.expected, "{}", case.name);
        let c = &shared.counters;
        let stats = (
            c.messages_handled.load(Ordering::SeqCst),
            c.handler_failures.load(Ordering::SeqCst),
            c.handler_gave_up.load(Ordering::SeqCst),
            c.unmatched.load(Ordering::SeqCst),
        );
        assert_eq!(
            stats, case.stats,
            "{}: (handled, failures, gave up, unmatched)",
            case.name
        );
        assert_eq!(*reasons.lock().unwrap(), case.reasons, "{}", case.name);
        task.abort();
    }

    #[tokio::test]
    async fn sequences() {
        use Behaviour::*;
        use Sent::*;
        let cases = [
            Case {
                name: "QoS 1 is acknowledged with PUBACK once handled",
                handler_attempts: None,
                dead_letters: false,
                handlers: &[("t/#", Ok)],
                messages: &[("t/a", Q1, 1, 0)],
                session: 0,
                expected: &[PubAck(1), SENTINEL],
                stats: (2, 0, 0, 0),
                reasons: &[],
            },
            Case {
                name: "QoS 2 with PUBREC; QoS 0 with nothing",
                handler_attempts: None,
                dead_letters: false,
                handlers: &[("t/#", Ok)],
                messages: &[("t/a", Q2, 1, 0), ("t/b", Q0, 0, 0), ("t/c", Q1, 2, 0)],
                session: 0,
                expected: &[PubRec(1), PubAck(2), SENTINEL],
                stats: (4, 0, 0, 0),
                reasons: &[],
            },
            Case {
                name: "a failing handler is retried; the acknowledgement waits, order kept",
                handler_attempts: None,
                dead_letters: false,
                handlers: &[("t/#", FailFirst(3))],
                messages: &[("t/a", Q1, 1, 0), ("t/b", Q1, 2, 0)],
                session: 0,
                expected: &[PubAck(1), PubAck(2), SENTINEL],
                stats: (3, 3, 0, 0),
                reasons: &[],
            },
            Case {
                name: "a panic is a failed handling, not a dead dispatcher",
                handler_attempts: None,
                dead_letters: false,
                handlers: &[("t/#", PanicOnce)],
                messages: &[("t/a", Q1, 1, 0)],
                session: 0,
                expected: &[PubAck(1), SENTINEL],
                stats: (2, 1, 0, 0),
                reasons: &[],
            },
            Case {
                name: "two handlers: acknowledged once, when both took it",
                handler_attempts: None,
                dead_letters: false,
                handlers: &[("t/#", DeferredAck), ("t/+", FailFirst(1))],
                messages: &[("t/a", Q1, 1, 0)],
                session: 0,
                expected: &[PubAck(1), SENTINEL],
                stats: (2, 1, 0, 0),
                reasons: &[],
            },
            Case {
                name: "a deferred handler that keeps its delivery holds the acknowledgement",
                handler_attempts: None,
                dead_letters: false,
                handlers: &[("t/#", DeferredKeep), ("t/+", Ok)],
                messages: &[("t/a", Q1, 1, 0)],
                session: 0,
                expected: &[SENTINEL],
                stats: (2, 0, 0, 0),
                reasons: &[],
            },
            Case {
                name: "an acknowledgement for an earlier session is not sent",
                handler_attempts: None,
                dead_letters: false,
                handlers: &[("t/#", Ok)],
                messages: &[("t/a", Q1, 5, 1), ("t/b", Q1, 6, 2)],
                session: 2,
                expected: &[PubAck(6), SENTINEL],
                stats: (3, 0, 0, 0),
                reasons: &[],
            },
            Case {
                name: "giving up without a dead-letter handler acknowledges and counts",
                handler_attempts: Some(2),
                dead_letters: false,
                handlers: &[("t/#", AlwaysFails)],
                messages: &[("t/a", Q1, 1, 0), ("t/b", Q2, 2, 0)],
                session: 0,
                expected: &[PubAck(1), PubRec(2), SENTINEL],
                stats: (1, 4, 2, 0),
                reasons: &[],
            },
            Case {
                name: "giving up hands the message to the dead-letter handler",
                handler_attempts: Some(3),
                dead_letters: true,
                handlers: &[("t/#", AlwaysFails), ("t/+", DeferredAck)],
                messages: &[("t/a", Q1, 1, 0)],
                session: 0,
                expected: &[PubAck(1), SENTINEL],
                stats: (1, 3, 1, 0),
                reasons: &["the handler failed 3 times, last: never"],
            },
            Case {
                name: "a handler that recovers within the limit is not given up on",
                handler_attempts: Some(3),
                dead_letters: true,
                handlers: &[("t/#", FailFirst(2))],
                messages: &[("t/a", Q1, 1, 0)],
                session: 0,
                expected: &[PubAck(1), SENTINEL],
                stats: (2, 2, 0, 0),
                reasons: &[],
            },
            Case {
                name: "unmatched: waits its grace, then acknowledged, counted",
                handler_attempts: None,
                dead_letters: false,
                handlers: &[("t/#", Ok)],
                messages: &[("other/a", Q1, 1, 0), ("t/a", Q1, 2, 0)],
                session: 0,
                // Later messages are not held up by one waiting for a handler.
                expected: &[PubAck(2), SENTINEL, PubAck(1)],
                stats: (2, 0, 0, 1),
                reasons: &[],
            },
            Case {
                name: "unmatched goes to the dead-letter handler",
                handler_attempts: None,
                dead_letters: true,
                handlers: &[("t/#", Ok)],
                messages: &[("other/a", Q2, 1, 0)],
                session: 0,
                expected: &[SENTINEL, PubRec(1)],
                stats: (1, 0, 0, 1),
                reasons: &["no subscription matches this topic"],
            },
        ];
        for case in &cases {
            run(case).await;
        }
    }

    /// An acknowledgement due while disconnected waits for the next
    /// CONNACK: sent if the broker kept the session, dropped if it started
    /// a new one (queued at once, it could have acknowledged another
    /// message of the new session with the same packet id).
    #[tokio::test]
    async fn acknowledgements_wait_out_an_outage_then_go_or_are_dropped() {
        for session_kept in [true, false] {
            let shared = Arc::new(Shared::new(&ConnectOptions::new("localhost", 1, "t")));
            lock(&shared.subscriptions).add(
                TopicFilter::new("t/#").unwrap(),
                Q1,
                handler(Behaviour::Ok, Arc::default()),
            );
            let (requests_tx, requests) = flume::bounded(8);
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(dispatch(
                rx,
                AsyncClient::from_senders(requests_tx),
                shared.clone(),
            ));
            let send = |pkid: u16, session: u64| {
                let mut publish = Publish::new("t/a", Q1.to_wire(), "x");
                publish.pkid = pkid;
                tx.send(Box::new(Arrival {
                    publish,
                    session,
                    too_large: None,
                    charge: shared.budget.charge(1),
                }))
                .unwrap();
            };
            // Handled while the link is down.
            send(5, 0);
            while shared.counters.messages_handled.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
            // The CONNACK: the same session, or a new one.
            if !session_kept {
                shared.link.session.fetch_add(1, Ordering::SeqCst);
            }
            shared.link.connected.store(true, Ordering::SeqCst);
            shared.link.changed.notify_waiters();
            let now = shared.link.session.load(Ordering::SeqCst);
            send(6, now);
            let first = tokio::time::timeout(Duration::from_secs(10), requests.recv_async())
                .await
                .unwrap()
                .unwrap();
            let first = match first {
                // Tagged with the session it may be written in.
                Request::AckIn {
                    ack: SessionAck::PubAck(a),
                    generation,
                } if generation == now => a.pkid,
                other => panic!("{other:?} (session now {now})"),
            };
            assert_eq!(
                first,
                if session_kept { 5 } else { 6 },
                "kept: {session_kept}"
            );
            task.abort();
        }
    }

    /// A message too large to read: to the dead-letter handler with its
    /// size and the limit, or acknowledged and counted; never to a handler,
    /// never left unacknowledged.
    #[tokio::test]
    async fn a_too_large_message_takes_the_dead_letter_path() {
        for with_dead_letters in [false, true] {
            let shared = Arc::new(Shared::new(&ConnectOptions::new("localhost", 1, "t")));
            shared.link.connected.store(true, Ordering::SeqCst);
            let handled = Arc::new(AtomicU64::new(0));
            {
                let handled = handled.clone();
                lock(&shared.subscriptions).add(
                    TopicFilter::new("t/#").unwrap(),
                    Q1,
                    HandlerKind::Immediate(Arc::new(move |_| {
                        handled.fetch_add(1, Ordering::SeqCst);
                        Box::pin(async { Ok(()) })
                    })),
                );
            }
            let reasons = Arc::new(Mutex::new(Vec::new()));
            if with_dead_letters {
                let reasons = reasons.clone();
                *lock(&shared.dead_letter_handler) =
                    Some(Arc::new(move |m: Message, d: Delivery, why| {
                        reasons
                            .lock()
                            .unwrap()
                            .push((m.topic, m.payload.len(), why));
                        Box::pin(async move { d.ack().await.map_err(Into::into) })
                    }));
            }
            let (requests_tx, requests) = flume::bounded(8);
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(dispatch(
                rx,
                AsyncClient::from_senders(requests_tx),
                shared.clone(),
            ));
            let mut publish = Publish::new("t/big", Q2.to_wire(), "");
            publish.pkid = 4;
            tx.send(Box::new(Arrival {
                publish,
                session: 0,
                too_large: Some((5000, 1024)),
                charge: shared.budget.charge(5),
            }))
            .unwrap();
            let sent = tokio::time::timeout(Duration::from_secs(10), requests.recv_async())
                .await
                .unwrap()
                .unwrap();
            assert!(
                matches!(&sent, Request::AckIn { ack: SessionAck::PubRec(r), .. } if r.pkid == 4),
                "{sent:?}"
            );
            assert_eq!(shared.counters.too_large.load(Ordering::SeqCst), 1);
            assert_eq!(handled.load(Ordering::SeqCst), 0, "no handler sees it");
            let reasons = reasons.lock().unwrap().clone();
            if with_dead_letters {
                assert_eq!(
                    reasons,
                    [(
                        "t/big".to_owned(),
                        0,
                        DeadLetter::TooLarge {
                            size: 5000,
                            max: 1024
                        }
                    )]
                );
            } else {
                assert!(reasons.is_empty());
            }
            task.abort();
        }
    }

    /// A message's bytes stay in the budget while any handler holds its
    /// `Delivery` (the ingest keeps it until the row is committed), and go
    /// back when the last one is dropped or acknowledged.
    #[tokio::test]
    async fn a_message_holds_its_bytes_until_its_last_delivery_is_gone() {
        let shared = Arc::new(Shared::new(&ConnectOptions::new("localhost", 1, "t")));
        shared.link.connected.store(true, Ordering::SeqCst);
        let kept = Arc::new(Mutex::new(Vec::new()));
        {
            let kept = kept.clone();
            lock(&shared.subscriptions).add(
                TopicFilter::new("t/#").unwrap(),
                Q1,
                HandlerKind::Deferred(Arc::new(move |_m: Message, d: Delivery| {
                    kept.lock().unwrap().push(d);
                    Box::pin(async { Ok(()) })
                })),
            );
        }
        let (requests_tx, requests) = flume::bounded(8);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(dispatch(
            rx,
            AsyncClient::from_senders(requests_tx.clone()),
            shared.clone(),
        ));
        for (pkid, qos) in [(1, Q1), (0, Q0)] {
            let mut publish = Publish::new("t/a", qos.to_wire(), vec![7u8; 1000]);
            publish.pkid = pkid;
            let charge = shared.budget.charge(1003);
            tx.send(Box::new(Arrival {
                publish,
                session: 0,
                too_large: None,
                charge,
            }))
            .unwrap();
        }
        while kept.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(shared.budget.used(), 2006, "handled, but still held");
        let mut deliveries = std::mem::take(&mut *kept.lock().unwrap());
        let qos0 = deliveries.pop().unwrap();
        drop(qos0);
        assert_eq!(shared.budget.used(), 1003);
        // The request channel is full (the event loop takes nothing while
        // its in-flight window waits for acknowledgements it cannot read):
        // the acknowledgement waits for room, its bytes do not.
        while requests_tx
            .try_send(Request::PingReq(rumqttc_mtls::PingReq))
            .is_ok()
        {}
        let ack = tokio::spawn(deliveries.pop().unwrap().ack());
        for _ in 0..10_000 {
            if shared.budget.used() == 0 {
                break;
            }
            assert!(!ack.is_finished(), "the acknowledgement found room");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            shared.budget.used(),
            0,
            "an acknowledgement waiting for room holds its bytes"
        );
        let mut sent = Vec::new();
        while !ack.is_finished() || !requests.is_empty() {
            if let Ok(request) = requests.try_recv() {
                sent.push(request);
            }
            tokio::task::yield_now().await;
        }
        ack.await.unwrap().unwrap();
        assert!(
            matches!(sent.last(), Some(Request::AckIn { ack: SessionAck::PubAck(a), .. }) if a.pkid == 1),
            "{sent:?}"
        );
        task.abort();
    }
}
