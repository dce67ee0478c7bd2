//! Faults on the wire between our client and a real Mosquitto, injected by
//! a proxy (`peers::proxy`), and what the broker saw, read from its
//! log: the MQTT client fork's (`crates/rumqttc-mtls`) fixes proven against
//! a real peer.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use mqtt_tls::{ConnectOptions, ConnectionEvent, Delivery, Error, Message, MqttClient, QoS};
use peers::mosquitto::{BrokerOptions, Mosquitto, Pki};
use peers::proxy::FaultProxy;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

fn options(port: u16, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new("localhost", port, id);
    o.reconnect.initial = Duration::from_millis(50);
    o.reconnect.max = Duration::from_millis(500);
    o
}

/// Waits until the broker's log holds `needle` `times` times; the log is
/// the broker's own account of every packet (`log_type all`).
async fn broker_logged(broker: &Mosquitto, needle: &str, times: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = broker.log();
        if log.matches(needle).count() >= times {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the broker never logged {needle:?} {times} time(s); its log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Received = mpsc::UnboundedReceiver<(Message, Delivery)>;

/// A QoS 2 subscriber with a persistent session through `proxy`, handing
/// each message and its acknowledgement to the test.
async fn qos2_subscriber(pki: &Pki, proxy: &FaultProxy) -> (MqttClient, JoinHandle<()>, Received) {
    let mut opts = options(proxy.port, "q2sub");
    opts.clean_session = false;
    let identity = pki.client("q2sub").load().unwrap();
    let (client, mut conn) = MqttClient::new(&opts, &identity).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    client
        .subscribe_deferred("q2/#", QoS::ExactlyOnce, move |m, d| {
            let tx = tx.clone();
            async move {
                tx.send((m, d)).unwrap();
                Ok::<(), std::io::Error>(())
            }
        })
        .unwrap();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(async move {
        let _ = conn.run().await;
    });
    (client, runner, rx)
}

/// A handler that hands each message to the returned receiver.
fn forwarding() -> (
    impl Fn(Message) -> std::future::Ready<Result<(), std::io::Error>> + Clone + Send + Sync + 'static,
    mpsc::UnboundedReceiver<Message>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |m| {
        let _ = tx.send(m);
        std::future::ready(Ok(()))
    };
    (handler, rx)
}

/// A clean DISCONNECT, and the connection's end.
async fn stop(client: MqttClient, runner: JoinHandle<mqtt_tls::Result<()>>) {
    client.disconnect().await.unwrap();
    runner.await.unwrap().unwrap();
}

/// A connected, running client with its own certificate, client id `name`.
async fn running(
    pki: &Pki,
    port: u16,
    name: &str,
) -> (MqttClient, JoinHandle<mqtt_tls::Result<()>>) {
    let identity = pki.client(name).load().unwrap();
    let (client, mut conn) = MqttClient::new(&options(port, name), &identity).unwrap();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    (client, runner)
}

async fn next(rx: &mut Received) -> (Message, Delivery) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("channel closed")
}

/// The scenario of rumqtt issue #664: the subscriber sent PUBREC, the
/// broker's PUBREL is on its way, and the link goes. `restart` drops the
/// whole client before reconnecting (a process restart: no state left);
/// otherwise the same client reconnects. Either way the broker resends
/// PUBREL, must get PUBCOMP, and the session carries on.
async fn qos2_interrupted_between_pubrec_and_pubcomp(restart: bool) {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let proxy = FaultProxy::start(broker.port).await;
    let (publisher, prunner) = running(&pki, broker.port, "q2pub").await;

    let (client, runner, mut rx) = qos2_subscriber(&pki, &proxy).await;
    broker_logged(&broker, "Received SUBSCRIBE from q2sub\n", 1).await;
    publisher
        .publish("q2/a", "one", QoS::ExactlyOnce, false)
        .await
        .unwrap();
    let (first, delivery) = next(&mut rx).await;
    assert_eq!(&first.payload[..], b"one");

    // Our PUBREC reaches the broker; its PUBREL stays in the proxy.
    proxy.hold_to_client();
    delivery.ack().await.unwrap();
    broker_logged(&broker, "Sending PUBREL to q2sub (", 1).await;

    let (client, runner, mut rx) = if restart {
        runner.abort();
        let _ = runner.await;
        drop(client);
        proxy.cut();
        proxy.release();
        qos2_subscriber(&pki, &proxy).await
    } else {
        proxy.cut();
        proxy.release();
        (client, runner, rx)
    };

    // The broker resends PUBREL on the resumed session and gets PUBCOMP.
    broker_logged(&broker, "Received PUBCOMP from q2sub (", 1).await;
    // And the session goes on: the next message arrives, once, and the
    // first is not delivered again.
    publisher
        .publish("q2/a", "two", QoS::ExactlyOnce, false)
        .await
        .unwrap();
    let (second, delivery) = next(&mut rx).await;
    assert_eq!(&second.payload[..], b"two");
    delivery.ack().await.unwrap();
    broker_logged(&broker, "Received PUBCOMP from q2sub (", 2).await;
    assert!(
        client.stats().connections <= 2,
        "reconnected {} times",
        client.stats().connections
    );

    client.disconnect().await.unwrap();
    let _ = runner.await;
    stop(publisher, prunner).await;
}

#[tokio::test]
async fn qos2_link_cut_between_pubrec_and_pubcomp_resumes() {
    qos2_interrupted_between_pubrec_and_pubcomp(false).await;
}

#[tokio::test]
async fn qos2_restart_between_pubrec_and_pubcomp_resumes() {
    qos2_interrupted_between_pubrec_and_pubcomp(true).await;
}

/// 64 KiB both ways with the default options (rumqttc's 10 KiB default
/// limit dropped the connection for good on a persistent session), and a
/// publish over the configured outgoing limit refused before it is queued.
#[tokio::test]
async fn large_messages_pass_and_oversized_publishes_are_refused() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let mut sub_opts = options(broker.port, "bigsub");
    sub_opts.clean_session = false;
    let identity = pki.client("bigsub").load().unwrap();
    let (sub, mut sconn) = MqttClient::new(&sub_opts, &identity).unwrap();
    let (handler, mut rx) = forwarding();
    sub.subscribe("big/#", QoS::AtLeastOnce, handler).unwrap();
    sconn.connect().await.unwrap();
    let srunner = tokio::spawn(sconn.run());
    broker_logged(&broker, "Received SUBSCRIBE from bigsub\n", 1).await;

    let mut pub_opts = options(broker.port, "bigpub");
    pub_opts.max_outgoing_packet_size = 128 * 1024;
    let identity = pki.client("bigpub").load().unwrap();
    let (publisher, mut pconn) = MqttClient::new(&pub_opts, &identity).unwrap();
    pconn.connect().await.unwrap();
    let prunner = tokio::spawn(pconn.run());

    let big = vec![b'x'; 64 * 1024];
    publisher
        .publish("big/1", big.clone(), QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.payload.len(), big.len());

    let err = publisher
        .publish("big/2", vec![0u8; 200 * 1024], QoS::AtLeastOnce, false)
        .await
        .unwrap_err();
    match &err {
        Error::PacketTooLarge { topic, size, max } => {
            assert_eq!(topic, "big/2");
            assert!(*size > 200 * 1024, "{size}");
            assert_eq!(*max, 128 * 1024);
        }
        other => panic!("expected PacketTooLarge, got {other}"),
    }
    // Nothing of it was queued: the next publish is the next the broker
    // sees, and the subscriber gets it right after the first.
    publisher
        .publish("big/3", "after", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.topic, "big/3");
    assert!(
        !broker.log().contains("big/2"),
        "the refused publish reached the broker"
    );

    stop(publisher, prunner).await;
    stop(sub, srunner).await;
}

/// The client's TLS session store (one ticket per identity) resumes a
/// session with Mosquitto: after a cut link, the client's next handshake
/// is an abbreviated one, as the broker's ServerHello (seen by the proxy)
/// shows.
#[tokio::test]
async fn tls_sessions_resume_with_the_one_ticket_store() {
    use peers::proxy::Handshake::{Full, Resumed};

    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let proxy = FaultProxy::start(broker.port).await;
    let (client, runner) = running(&pki, proxy.port, "resumer").await;
    let mut events = client.connection_events();
    for _ in 0..2 {
        // Connected: the CONNACK came, and the broker's session tickets
        // with it.
        proxy.cut();
        loop {
            let event = tokio::time::timeout(WAIT, events.next())
                .await
                .expect("no reconnection")
                .expect("the client stopped");
            if matches!(event, ConnectionEvent::Connected { .. }) {
                break;
            }
        }
    }
    stop(client, runner).await;
    assert_eq!(
        proxy.handshakes(),
        [Some(Full), Some(Resumed), Some(Resumed)]
    );
}

/// The hot identity swap: a persistent subscriber switches to a renewed
/// certificate (its CN changed, so the broker's log shows which one each
/// connection used) without a new client or a new session; a certificate
/// the broker refuses is rolled back; an identity set for "the next
/// connection" is taken into use when the link is cut.
#[tokio::test]
async fn identity_swap_keeps_the_session_and_rolls_back_a_refused_identity() {
    use peers::root;
    use pki_core::{Profile, Validity};

    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let proxy = FaultProxy::start(broker.port).await;
    let (publisher, prunner) = running(&pki, broker.port, "swap-pub").await;

    let first = pki.client("swap-v1").load().unwrap();
    let renewed = pki.client("swap-v2").load().unwrap();
    let other = root(pki_core::KeyType::P256);
    let foreign = pki.issue(
        &other,
        "swap-foreign",
        Profile::Client,
        Validity::days_from_now(5).unwrap(),
    );
    let both = peers::write(
        pki.dir.path(),
        "both.pem",
        &format!(
            "{}{}",
            pki.ca.certificate().to_pem(),
            other.certificate().to_pem()
        ),
    );
    let foreign = mqtt_tls::ClientCert {
        ca_cert_path: both,
        ..foreign
    }
    .load()
    .unwrap();

    let mut opts = options(proxy.port, "swapper");
    opts.clean_session = false;
    let (client, mut conn) = MqttClient::new(&opts, &first).unwrap();
    let (handler, mut rx) = forwarding();
    client
        .subscribe("swap/#", QoS::AtLeastOnce, handler)
        .unwrap();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    broker_logged(&broker, "Received SUBSCRIBE from swapper\n", 1).await;
    broker_logged(&broker, "as swapper (p2, c0, k30, u'swap-v1')", 1).await;

    // Each payload arrives; a message whose PUBACK a cut lost may come
    // again first, marked as a duplicate (MQTT's at least once).
    let mut seen: Vec<String> = Vec::new();
    let mut expect = async |payload: &str| {
        publisher
            .publish("swap/t", payload.to_owned(), QoS::AtLeastOnce, false)
            .await
            .unwrap();
        loop {
            let m = tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap();
            let got = String::from_utf8(m.payload.to_vec()).unwrap();
            if got == payload {
                seen.push(got);
                return;
            }
            assert!(m.duplicate && seen.contains(&got), "unexpected {got:?}");
        }
    };
    expect("before").await;

    // Forced: the next connection is the renewed certificate's, and the
    // broker resumes the session (CONNACK with session present).
    tokio::time::timeout(WAIT, client.reconnect_with_identity(&renewed))
        .await
        .expect("the swap did not finish")
        .unwrap();
    broker_logged(&broker, "as swapper (p2, c0, k30, u'swap-v2')", 1).await;
    broker_logged(&broker, "Sending CONNACK to swapper (1, 0)", 1).await;
    expect("after the swap").await;

    // Refused by the broker: the error comes back, and the client goes on
    // with the renewed identity.
    let err = tokio::time::timeout(WAIT, client.reconnect_with_identity(&foreign))
        .await
        .expect("the refused swap did not come back")
        .unwrap_err();
    assert!(
        matches!(err, Error::ClientCertificateRejected { .. }),
        "{err}"
    );
    broker_logged(&broker, "as swapper (p2, c0, k30, u'swap-v2')", 2).await;
    expect("after the refused swap").await;
    assert!(!broker.log().contains("u'swap-foreign'"));

    // Lazy: nothing happens until the link goes; then the first identity.
    client.set_identity(&first).unwrap();
    expect("still v2").await;
    assert_eq!(broker.log().matches("u'swap-v1')").count(), 1);
    proxy.cut();
    broker_logged(&broker, "as swapper (p2, c0, k30, u'swap-v1')", 2).await;
    expect("v1 again").await;

    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// A hot identity swap (a renewal) ends the old connection with DISCONNECT:
/// the broker publishes no Last Will ("offline" at every renewal), and the
/// acknowledgement a handler had just queued goes out before it, so the
/// message is not delivered again on the new connection.
#[tokio::test]
async fn a_hot_swap_says_goodbye_and_keeps_the_acknowledgements_it_queued() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let (publisher, prunner) = running(&pki, broker.port, "goodbye-pub").await;
    let (watcher, mut wconn) = MqttClient::new(
        &options(broker.port, "goodbye-watch"),
        &pki.client("goodbye-watch").load().unwrap(),
    )
    .unwrap();
    let (on_status, mut statuses) = forwarding();
    watcher
        .subscribe("status/#", QoS::AtLeastOnce, on_status)
        .unwrap();
    wconn.connect().await.unwrap();
    let wrunner = tokio::spawn(wconn.run());
    broker_logged(&broker, "Received SUBSCRIBE from goodbye-watch\n", 1).await;

    let mut opts = options(broker.port, "goodbye");
    opts.clean_session = false;
    opts.last_will = Some(mqtt_tls::LastWill {
        topic: "status/goodbye".into(),
        payload: "offline".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
    });
    let (client, mut conn) =
        MqttClient::new(&opts, &pki.client("goodbye").load().unwrap()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    client
        .subscribe_deferred("work/#", QoS::AtLeastOnce, move |m, d| {
            let tx = tx.clone();
            async move {
                tx.send((m, d)).unwrap();
                Ok::<(), std::io::Error>(())
            }
        })
        .unwrap();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    broker_logged(&broker, "Received SUBSCRIBE from goodbye\n", 1).await;

    publisher
        .publish("work/t", "one", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let (first, delivery) = next(&mut rx).await;
    assert_eq!(&first.payload[..], b"one");
    // The acknowledgement is queued, and the swap asked for, before the
    // connection's task runs again (one thread): the swap finds it waiting.
    delivery.ack().await.unwrap();
    tokio::time::timeout(
        WAIT,
        client.reconnect_with_identity(&pki.client("goodbye").load().unwrap()),
    )
    .await
    .expect("the swap did not finish")
    .unwrap();
    broker_logged(&broker, "Sending CONNACK to goodbye (1, 0)", 1).await;
    let log = broker.log();
    let acked = log
        .find("Received PUBACK from goodbye (")
        .expect("the queued PUBACK never reached the broker");
    let goodbye = log
        .find("Received DISCONNECT from goodbye\n")
        .expect("the old connection ended without DISCONNECT");
    assert!(acked < goodbye, "PUBACK after DISCONNECT:\n{log}");

    // No will: the first status the watcher sees is the marker.
    publisher
        .publish("status/goodbye", "marker", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let status = tokio::time::timeout(WAIT, statuses.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&status.payload[..], b"marker", "the Last Will went out");
    // No redelivery: the next message on the new connection is the next one.
    publisher
        .publish("work/t", "two", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let (second, delivery) = next(&mut rx).await;
    assert_eq!(&second.payload[..], b"two", "\"one\" came again");
    delivery.ack().await.unwrap();

    stop(client, runner).await;
    stop(watcher, wrunner).await;
    stop(publisher, prunner).await;
}

/// A broker killed (`kill -9`) and restored from an older save of its
/// sessions says "session present" without the subscriptions made since the
/// save: the client subscribes again to everything on every CONNACK, so a
/// filter added after the save still gets its messages. The price, shown
/// here: a retained message comes again after each reconnect.
#[tokio::test]
async fn subscriptions_come_back_after_a_crash_restored_an_older_save() {
    let pki = Pki::new();
    let mut broker = Mosquitto::start(
        &pki,
        &BrokerOptions {
            persistence: true,
            autosave_interval: Some(60),
            ..BrokerOptions::default()
        },
    );
    let (publisher, prunner) = running(&pki, broker.port, "crash-pub").await;
    publisher
        .publish("old/retained", "kept", QoS::AtLeastOnce, true)
        .await
        .unwrap();

    let mut opts = options(broker.port, "crashsub");
    opts.clean_session = false;
    let (client, mut conn) =
        MqttClient::new(&opts, &pki.client("crashsub").load().unwrap()).unwrap();
    let (handler, mut rx) = forwarding();
    let old = client
        .subscribe("old/#", QoS::AtLeastOnce, handler.clone())
        .unwrap();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    old.granted().await.unwrap();
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&first.payload[..], first.retain), (&b"kept"[..], true));

    // A graceful stop saves the session (old/#); the client comes back.
    broker.stop();
    broker.restart();
    broker_logged(&broker, "Sending CONNACK to crashsub (1, 0)", 1).await;
    let again = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (&again.payload[..], again.retain),
        (&b"kept"[..], true),
        "the repeated SUBSCRIBE brings the retained message again"
    );

    // A filter added now is in no save when the broker is killed.
    client
        .subscribe("new/#", QoS::AtLeastOnce, handler)
        .unwrap()
        .granted()
        .await
        .unwrap();
    broker.crash();
    broker.restart();
    broker_logged(&broker, "Sending CONNACK to crashsub (1, 0)", 2).await;
    broker_logged(&broker, "crashsub 1 new/#", 2).await;
    // The publisher's clean session went with the crash: a publish in
    // flight then fails with DeliveryUnknown, and is sent again.
    loop {
        match publisher
            .publish("new/x", "after the crash", QoS::AtLeastOnce, false)
            .await
        {
            Err(Error::SessionLost | Error::DeliveryUnknown) => continue,
            sent => break sent.unwrap(),
        }
    }
    loop {
        let m = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the filter made after the save was lost with the crash")
            .unwrap();
        if m.topic == "new/x" {
            assert_eq!(&m.payload[..], b"after the crash");
            break;
        }
        assert!(m.retain, "unexpected {m:?}");
    }

    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// Received messages are bounded in bytes (`max_queued_bytes`, here
/// 1 MiB), counted from their arrival until their handler lets go of them:
/// QoS 0 messages that do not fit are dropped and counted; QoS 1 messages
/// are never dropped: reading pauses while they fill the bound, the link
/// stays up (pings go out, 1 s keep-alive, no reconnect), and the rest come
/// once handlers let go; one message larger than the bound is read past and
/// goes to the dead-letter handler as too large.
#[tokio::test]
async fn received_messages_are_bounded_in_bytes() {
    const SIZE: usize = 300 * 1024;
    const BOUND: u64 = 1 << 20;
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let mut popts = options(broker.port, "bytes-pub");
    popts.max_outgoing_packet_size = 4 << 20;
    let (publisher, mut pconn) =
        MqttClient::new(&popts, &pki.client("bytes-pub").load().unwrap()).unwrap();
    pconn.connect().await.unwrap();
    let prunner = tokio::spawn(pconn.run());

    let mut opts = options(broker.port, "bytes-sub");
    opts.max_queued_bytes = BOUND;
    opts.keep_alive = Duration::from_secs(1);
    let (client, mut conn) =
        MqttClient::new(&opts, &pki.client("bytes-sub").load().unwrap()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    client
        .subscribe_deferred("big/#", QoS::AtLeastOnce, move |m, d| {
            let tx = tx.clone();
            async move {
                tx.send((m, d)).unwrap();
                Ok::<(), std::io::Error>(())
            }
        })
        .unwrap();
    let (dead_tx, mut dead) = mpsc::unbounded_channel();
    client.on_dead_letter(move |m, d, why| {
        let dead_tx = dead_tx.clone();
        async move {
            dead_tx.send((m.topic, why)).unwrap();
            d.ack().await
        }
    });
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    broker_logged(&broker, "Received SUBSCRIBE from bytes-sub\n", 1).await;

    // QoS 0, the handler holding on to each: three fit, seven do not.
    for i in 0..10u8 {
        publisher
            .publish("big/q0", vec![i; SIZE], QoS::AtMostOnce, false)
            .await
            .unwrap();
    }
    publisher
        .publish("big/end", "end", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let mut held = Vec::new();
    loop {
        let (m, d) = next(&mut rx).await;
        held.push(d);
        if m.topic == "big/end" {
            break;
        }
    }
    assert_eq!(held.len(), 4, "three QoS 0 messages and the end marker");
    assert_eq!(client.stats().qos0_dropped, 7);
    for d in held.drain(..) {
        d.ack().await.unwrap();
    }
    assert_eq!(client.stats().queued_bytes, 0);

    // QoS 1: the fourth fills the bound and reading pauses, for longer
    // than the keep-alive; nothing is dropped.
    for i in 0..6u8 {
        publisher
            .publish("big/q1", vec![i; SIZE], QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + WAIT;
    while client.stats().read_pauses == 0 {
        assert!(Instant::now() < deadline, "reading never paused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(client.stats().queued_bytes >= BOUND);
    let pings = broker
        .log()
        .matches("Received PINGREQ from bytes-sub")
        .count();
    broker_logged(&broker, "Received PINGREQ from bytes-sub", pings + 2).await;
    // Two keep-alives later, still the four it held when it paused.
    assert_eq!(rx.len(), 4, "read on while the bound was reached");
    let mut got = Vec::new();
    while got.len() < 6 {
        let (m, d) = next(&mut rx).await;
        got.push(m.payload[0]);
        d.ack().await.unwrap();
    }
    assert_eq!(got, [0, 1, 2, 3, 4, 5], "QoS 1: every message, in order");
    let stats = client.stats();
    assert_eq!((stats.connections, stats.qos0_dropped), (1, 7), "{stats:?}");

    // Larger than the bound: read past, a dead letter.
    publisher
        .publish("big/huge", vec![0u8; 2 << 20], QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let (topic, why) = tokio::time::timeout(WAIT, dead.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topic, "big/huge");
    assert!(
        matches!(why, mqtt_tls::DeadLetter::TooLarge { size, max } if size > 2 << 20 && max == 1 << 20),
        "{why:?}"
    );
    assert_eq!(client.stats().queued_bytes, 0);

    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// A publish with nobody to take it fails with `Closed`, at once, instead
/// of waiting for ever (or spinning on a timer, as it did when the request
/// channel was full or closed): both those already queued and those
/// waiting for room in the full channel.
#[tokio::test]
async fn publishes_fail_with_closed_when_the_connection_is_gone() {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    let pki = Pki::new();
    let identity = pki.client("orphan").load().unwrap();
    let (client, conn) = MqttClient::new(&options(1, "orphan"), &identity).unwrap();
    // More than the request channel holds (256), each polled once: the
    // first 256 are queued and wait for their acknowledgement, the rest
    // find the channel full and wait for room. The connection never runs.
    type Publishing<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + 'a>>;
    let mut publishes: Vec<Publishing<'_>> = (0..300)
        .map(|i| Box::pin(client.publish("orphan/t", format!("{i}"), QoS::AtLeastOnce, false)) as _)
        .collect();
    for publish in &mut publishes {
        let first = std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "{first:?}");
    }
    drop(conn);
    for publish in publishes {
        let outcome = tokio::time::timeout(WAIT, publish)
            .await
            .expect("a publish still waits after the connection was dropped");
        assert!(matches!(outcome, Err(Error::Closed)), "{outcome:?}");
    }
    // And a later one does not wait at all.
    let late = tokio::time::timeout(
        Duration::from_secs(1),
        client.publish("orphan/t", "late", QoS::AtMostOnce, false),
    )
    .await
    .expect("a publish after the connection is gone must not wait");
    assert!(matches!(late, Err(Error::Closed)));
}

/// Two clients with one client id take the session from each other: the
/// broker accepts each and then kicks it. The reconnect backoff must grow
/// anyway (it used to start over at every CONNACK, a reconnect every few
/// tens of milliseconds for ever). Counted in the broker's log over 4 s.
#[tokio::test]
async fn a_broker_that_accepts_and_kicks_is_not_hammered() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let mut runners = Vec::new();
    let mut clients = Vec::new();
    for name in ["twin-a", "twin-b"] {
        let identity = pki.client(name).load().unwrap();
        let mut opts = options(broker.port, "twin");
        opts.reconnect.initial = Duration::from_millis(50);
        opts.reconnect.max = Duration::from_secs(2);
        let (client, mut conn) = MqttClient::new(&opts, &identity).unwrap();
        conn.connect().await.unwrap();
        runners.push(tokio::spawn(conn.run()));
        clients.push(client);
    }
    broker_logged(&broker, "as twin (", 3).await;
    let start = broker.log().matches("as twin (").count();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let connects = broker.log().matches("as twin (").count() - start;
    // Starting over at 50 ms after every kick: about 150 connections in
    // 4 s. Growing to 2 s: about a dozen.
    assert!(connects < 40, "{connects} connections in 4 s");
    for client in clients {
        client.disconnect().await.unwrap();
    }
    for runner in runners {
        runner.await.unwrap().unwrap();
    }
}

/// A handler that panics is a failed handling: the message stays
/// unacknowledged and is tried again, and the messages after it are still
/// handled (the panic used to kill the dispatcher while the connection
/// looked healthy).
#[tokio::test]
async fn a_panicking_handler_is_retried_and_the_dispatcher_lives_on() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let identity = pki.client("panic-sub").load().unwrap();
    let mut opts = options(broker.port, "panic-sub");
    opts.handler_retry.initial = Duration::from_millis(10);
    let (client, mut conn) = MqttClient::new(&opts, &identity).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let calls = calls.clone();
        client
            .subscribe("panic/#", QoS::AtLeastOnce, move |m| {
                let tx = tx.clone();
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    assert!(!first, "a handler bug, on the first call only");
                    tx.send(m).unwrap();
                    Ok::<(), std::io::Error>(())
                }
            })
            .unwrap();
    }
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    broker_logged(&broker, "Received SUBSCRIBE from panic-sub\n", 1).await;

    let (publisher, prunner) = running(&pki, broker.port, "panic-pub").await;
    for payload in ["one", "two"] {
        publisher
            .publish("panic/t", payload, QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    for payload in ["one", "two"] {
        let m = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], payload.as_bytes());
    }
    // The broker got the acknowledgements of both (after the retry).
    broker_logged(&broker, "Received PUBACK from panic-sub (", 2).await;
    assert!(client.stats().handler_failures >= 1);
    assert!(client.is_connected());

    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// A QoS 0 flood while the handler is stuck: at most `max_queued_qos0`
/// wait in memory, the rest are dropped and counted; the QoS 1 message
/// after them is not dropped. Everything the broker sent is accounted for.
#[tokio::test]
async fn a_qos0_flood_is_bounded_and_counted() {
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    const FLOOD: usize = 2_000;
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let identity = pki.client("bounded").load().unwrap();
    let mut opts = options(broker.port, "bounded");
    opts.max_queued_qos0 = 50;
    let (client, mut conn) = MqttClient::new(&opts, &identity).unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let gate = gate.clone();
        client
            .subscribe("flood/#", QoS::AtLeastOnce, move |m| {
                let tx = tx.clone();
                let gate = gate.clone();
                async move {
                    // The first message holds the dispatcher until released.
                    let _ = gate.acquire().await.unwrap();
                    tx.send(m).unwrap();
                    Ok::<(), std::io::Error>(())
                }
            })
            .unwrap();
    }
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    broker_logged(&broker, "Received SUBSCRIBE from bounded\n", 1).await;

    let (publisher, prunner) = running(&pki, broker.port, "flooder").await;
    for i in 0..FLOOD {
        publisher
            .publish("flood/q0", format!("{i}"), QoS::AtMostOnce, false)
            .await
            .unwrap();
    }
    publisher
        .publish("flood/end", "end", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    broker_logged(&broker, "Sending PUBLISH to bounded (d0, q0", FLOOD).await;
    broker_logged(&broker, "Sending PUBLISH to bounded (d0, q1", 1).await;

    // Everything read by the client before the handler moves on: 1 in the
    // handler, 50 waiting, the rest dropped.
    let deadline = Instant::now() + WAIT;
    while client.stats().qos0_dropped < (FLOOD - 51) as u64 {
        assert!(
            Instant::now() < deadline,
            "only {} QoS 0 messages dropped",
            client.stats().qos0_dropped
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.add_permits(1_000_000);
    let mut handled_qos0 = 0;
    loop {
        let m = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if m.topic == "flood/end" {
            break;
        }
        handled_qos0 += 1;
    }
    let dropped = client.stats().qos0_dropped as usize;
    // One in the handler, at most 50 waiting.
    assert!(
        handled_qos0 <= 51,
        "{handled_qos0} QoS 0 messages were held"
    );
    assert_eq!(
        handled_qos0 + dropped,
        FLOOD,
        "handled {handled_qos0}, dropped {dropped}"
    );

    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// An acknowledgement from an earlier session is not sent on a new one: the
/// broker numbers the new session's packets from 1 again, so acknowledging
/// the old message's packet id would acknowledge a new message that was
/// never handled. Counted in the broker's log: one PUBACK per message of
/// the new session, none for the old one.
#[tokio::test]
async fn an_acknowledgement_from_an_earlier_session_is_dropped() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let proxy = FaultProxy::start(broker.port).await;
    let identity = pki.client("epochsub").load().unwrap();
    // A clean session: after the cut the broker starts a new one.
    let (client, mut conn) = MqttClient::new(&options(proxy.port, "epochsub"), &identity).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    client
        .subscribe_deferred("epoch/#", QoS::AtLeastOnce, move |m, d| {
            let tx = tx.clone();
            async move {
                tx.send((m, d)).unwrap();
                Ok::<(), std::io::Error>(())
            }
        })
        .unwrap();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    broker_logged(&broker, "Received SUBSCRIBE from epochsub\n", 1).await;

    let (publisher, prunner) = running(&pki, broker.port, "epochpub").await;
    let mut next = async |payload: &str| {
        publisher
            .publish("epoch/t", payload.to_owned(), QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let (m, d) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], payload.as_bytes());
        d
    };

    let old = next("old session").await;
    proxy.cut();
    broker_logged(&broker, "Received SUBSCRIBE from epochsub\n", 2).await;
    let new = next("new session").await;
    // Late: the old session's acknowledgement, then the new one's.
    old.ack().await.unwrap();
    new.ack().await.unwrap();
    // A third message marks the end: once its PUBACK is in the log, every
    // acknowledgement sent before it is too.
    next("marker").await.ack().await.unwrap();
    broker_logged(&broker, "Received PUBACK from epochsub (Mid: 2", 1).await;
    let pubacks = broker
        .log()
        .matches("Received PUBACK from epochsub (")
        .count();
    assert_eq!(pubacks, 2, "{}", broker.log());

    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// `subscribe` resolves on the SUBACK with the QoS the broker granted (a
/// broker with `max_qos 1` grants 1 for a QoS 2 request); `unsubscribe`
/// stops the broker sending (a message published after it is not
/// delivered, while one for another subscription, published after it too,
/// is). (A refused SUBACK is tested on the subscription table itself:
/// Mosquitto 2.0.11 grants a subscription its ACL denies and then delivers
/// nothing, measured.)
#[tokio::test]
async fn subscribe_waits_for_the_suback_and_unsubscribe_stops_delivery() {
    let pki = Pki::new();
    let broker = Mosquitto::start(
        &pki,
        &BrokerOptions {
            extra: "max_qos 1\n".into(),
            ..Default::default()
        },
    );
    let identity = pki.client("subber").load().unwrap();
    let (client, mut conn) = MqttClient::new(&options(broker.port, "subber"), &identity).unwrap();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |m: Message| {
        let tx = tx.clone();
        async move {
            tx.send(m).unwrap();
            Ok::<(), std::io::Error>(())
        }
    };
    let granted = client
        .subscribe("allowed/#", QoS::ExactlyOnce, handler.clone())
        .unwrap()
        .granted();
    assert_eq!(
        tokio::time::timeout(WAIT, granted).await.unwrap().unwrap(),
        QoS::AtLeastOnce,
        "the broker's max_qos"
    );
    let marker = client
        .subscribe("marker/#", QoS::AtLeastOnce, handler)
        .unwrap()
        .granted();
    tokio::time::timeout(WAIT, marker).await.unwrap().unwrap();
    assert!(client.refused_subscriptions().is_empty());

    let (publisher, prunner) = running(&pki, broker.port, "subpub").await;
    publisher
        .publish("allowed/1", "before", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.topic, "allowed/1");

    client.unsubscribe("allowed/#").await.unwrap();
    broker_logged(&broker, "Received UNSUBSCRIBE from subber\n", 1).await;
    publisher
        .publish("allowed/2", "after", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    publisher
        .publish("marker/1", "marker", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        m.topic, "marker/1",
        "the unsubscribed filter still delivered"
    );
    // And the broker itself sent it to nobody: the UNSUBSCRIBE took effect
    // there, not only in our handler table.
    assert!(
        !broker
            .log()
            .lines()
            .any(|l| l.contains("Sending PUBLISH to subber") && l.contains("'allowed/2'")),
        "{}",
        broker.log()
    );

    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// A subscription made while the broker is down reaches it when it is back,
/// even though the broker kept the session (it used to be sent only to a
/// broker without a session, so it was never sent at all).
#[tokio::test]
async fn a_subscription_made_during_an_outage_reaches_a_broker_that_kept_the_session() {
    let pki = Pki::new();
    let mut broker = Mosquitto::start(
        &pki,
        &BrokerOptions {
            persistence: true,
            ..Default::default()
        },
    );
    let identity = pki.client("outage").load().unwrap();
    let mut opts = options(broker.port, "outage");
    opts.clean_session = false;
    let (client, mut conn) = MqttClient::new(&opts, &identity).unwrap();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    broker.stop();
    let deadline = Instant::now() + WAIT;
    while client.is_connected() {
        assert!(
            Instant::now() < deadline,
            "the client never noticed the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let granted = client
        .subscribe("late/#", QoS::AtLeastOnce, move |m| {
            let tx = tx.clone();
            async move {
                tx.send(m).unwrap();
                Ok::<(), std::io::Error>(())
            }
        })
        .unwrap()
        .granted();
    broker.restart();
    tokio::time::timeout(WAIT, granted).await.unwrap().unwrap();
    broker_logged(&broker, "Sending CONNACK to outage (1, 0)", 1).await;

    let (publisher, prunner) = running(&pki, broker.port, "outage-pub").await;
    publisher
        .publish("late/1", "arrives", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"arrives");

    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// A persistent session's backlog arrives right after CONNACK, before the
/// application subscribed: it waits for the handler subscribed a moment
/// later instead of being acknowledged and lost. A message that still has
/// no handler after the grace goes to the `on_dead_letter` handler.
#[tokio::test]
async fn a_backlog_waits_for_its_handler_and_the_rest_goes_to_on_dead_letter() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let identity = pki.client("backlog").load().unwrap();
    let mut opts = options(broker.port, "backlog");
    opts.clean_session = false;
    opts.unmatched_grace = Duration::from_secs(5);

    // A first run subscribes (the filter stays in the session) and leaves.
    let (client, mut conn) = MqttClient::new(&opts, &identity).unwrap();
    let granted = client
        .subscribe("bk/#", QoS::AtLeastOnce, |_| async {
            Ok::<(), std::io::Error>(())
        })
        .unwrap()
        .granted();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    tokio::time::timeout(WAIT, granted).await.unwrap().unwrap();
    stop(client, runner).await;

    // Meanwhile: 25 messages for it, more than the 16 that may wait for a
    // handler at once (the rest must wait in line, not be dropped).
    let (publisher, prunner) = running(&pki, broker.port, "backlog-pub").await;
    for i in 0..25 {
        publisher
            .publish("bk/data", format!("{i}"), QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }

    // The next run connects and is running before it subscribes: the
    // backlog reaches it with no handler registered.
    let (client, mut conn) = MqttClient::new(&opts, &identity).unwrap();
    let (unmatched_tx, mut unmatched_rx) = mpsc::unbounded_channel();
    client.on_dead_letter(move |m, d, reason| {
        let tx = unmatched_tx.clone();
        async move {
            assert_eq!(reason, mqtt_tls::DeadLetter::NoSubscription);
            tx.send((m, d)).unwrap();
            Ok::<(), std::io::Error>(())
        }
    });
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    broker_logged(&broker, "Sending PUBLISH to backlog (d0, q1", 25).await;
    // The application subscribes "a moment later": this pause is the
    // scenario (well inside the 5 s grace), not a synchronisation.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _ = client
        .subscribe("bk/data", QoS::AtLeastOnce, move |m| {
            let tx = tx.clone();
            async move {
                tx.send(m).unwrap();
                Ok::<(), std::io::Error>(())
            }
        })
        .unwrap();
    for i in 0..25 {
        let m = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.payload, format!("{i}").into_bytes());
    }
    broker_logged(&broker, "Received PUBACK from backlog (", 25).await;

    // bk/other matches only the session's old bk/# filter: after the grace
    // it goes to the fallback, which acknowledges it.
    publisher
        .publish("bk/other", "orphan", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let (m, delivery) = tokio::time::timeout(WAIT, unmatched_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.topic, "bk/other");
    delivery.ack().await.unwrap();
    broker_logged(&broker, "Received PUBACK from backlog (", 26).await;
    assert_eq!(client.stats().unmatched, 1);

    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// A handler that always fails for one message gives up after
/// `handler_attempts`: the message goes to the dead-letter handler (which
/// acknowledges it) and the messages behind it are handled; it used to
/// block every later message for ever.
#[tokio::test]
async fn a_handler_that_keeps_failing_gives_up_and_the_stream_goes_on() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let identity = pki.client("giveup").load().unwrap();
    let mut opts = options(broker.port, "giveup");
    opts.handler_attempts = Some(3);
    opts.handler_retry.initial = Duration::from_millis(10);
    opts.handler_retry.max = Duration::from_millis(20);
    let (client, mut conn) = MqttClient::new(&opts, &identity).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _ = client
        .subscribe("work/#", QoS::AtLeastOnce, move |m| {
            let tx = tx.clone();
            async move {
                if m.topic == "work/poison" {
                    return Err(std::io::Error::other("cannot parse"));
                }
                tx.send(m.topic).unwrap();
                Ok(())
            }
        })
        .unwrap();
    let (dead_tx, mut dead_rx) = mpsc::unbounded_channel();
    client.on_dead_letter(move |m, d, reason| {
        let tx = dead_tx.clone();
        async move {
            tx.send((m.topic, reason)).unwrap();
            d.ack().await.map_err(std::io::Error::other)
        }
    });
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    broker_logged(&broker, "Received SUBSCRIBE from giveup\n", 1).await;

    let (publisher, prunner) = running(&pki, broker.port, "giveup-pub").await;
    for topic in ["work/poison", "work/fine"] {
        publisher
            .publish(topic, "x", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    let (topic, reason) = tokio::time::timeout(WAIT, dead_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topic, "work/poison");
    assert!(
        matches!(reason, mqtt_tls::DeadLetter::HandlerFailed { attempts: 3, ref error } if error.contains("cannot parse")),
        "{reason:?}"
    );
    let next = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next, "work/fine");
    // Both acknowledged to the broker: the poison one by the dead-letter
    // handler.
    broker_logged(&broker, "Received PUBACK from giveup (", 2).await;
    assert_eq!(client.stats().handler_gave_up, 1);

    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// A broker that accepts the TCP connection and then says nothing (a
/// black hole): the attempt fails after `connect_timeout`, not the default
/// 5 s and not never.
#[tokio::test]
async fn a_silent_broker_fails_the_attempt_after_connect_timeout() {
    let pki = Pki::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let identity = pki.client("patient").load().unwrap();
    let mut opts = options(port, "patient");
    opts.connect_timeout = Duration::from_secs(1);
    let (_client, mut conn) = MqttClient::new(&opts, &identity).unwrap();
    let started = Instant::now();
    let err = tokio::time::timeout(WAIT, conn.connect())
        .await
        .expect("connect never gave up")
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "gave up after {took:?}: {err}"
    );
    holder.abort();
}

/// Every change of the connection is an event, in order, none missed
/// however quickly the next follows: connected (without and then with a
/// session), the loss with its reason, and the end.
#[tokio::test]
async fn connection_events_follow_the_link() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let proxy = FaultProxy::start(broker.port).await;
    let mut opts = options(proxy.port, "watched");
    opts.clean_session = false;
    let identity = pki.client("watched").load().unwrap();
    let (client, conn) = MqttClient::new(&opts, &identity).unwrap();
    let mut events = client.connection_events();
    let runner = tokio::spawn(conn.run());
    let mut next_event = async || {
        tokio::time::timeout(WAIT, events.next())
            .await
            .expect("no connection event")
            .expect("events ended")
    };
    let first = next_event().await;
    assert!(
        matches!(
            first,
            ConnectionEvent::Connected {
                session_present: false
            }
        ),
        "{first:?}"
    );
    broker_logged(&broker, "New client connected from", 1).await;
    proxy.cut();
    match next_event().await {
        ConnectionEvent::Disconnected { error } => {
            assert!(!error.to_string().is_empty());
        }
        other => panic!("expected the loss, got {other:?}"),
    }
    let back = next_event().await;
    assert!(
        matches!(
            back,
            ConnectionEvent::Connected {
                session_present: true
            }
        ),
        "{back:?}"
    );
    broker_logged(&broker, "New client connected from", 2).await;
    client.disconnect().await.unwrap();
    let last = next_event().await;
    assert!(matches!(last, ConnectionEvent::Stopped), "{last:?}");
    runner.await.unwrap().unwrap();
}

/// While the broker is away, at most `max_offline_queue` publishes wait
/// for it (counted until answered, even when their callers stopped
/// waiting); one more fails at once instead of waiting without bound, and
/// those queued go out when the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_beyond_the_offline_queue_limit_fail_at_once() {
    let pki = Pki::new();
    let mut broker = Mosquitto::start(
        &pki,
        &BrokerOptions {
            persistence: true,
            ..BrokerOptions::default()
        },
    );
    let mut opts = options(broker.port, "offliner");
    opts.clean_session = false;
    opts.max_offline_queue = Some(3);
    let identity = pki.client("offliner").load().unwrap();
    let (client, mut conn) = MqttClient::new(&opts, &identity).unwrap();
    let mut events = client.connection_events();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    tokio::task::block_in_place(|| broker.stop());
    loop {
        let event = tokio::time::timeout(WAIT, events.next()).await.unwrap();
        if matches!(event, Some(mqtt_tls::ConnectionEvent::Disconnected { .. })) {
            break;
        }
    }
    // Three publishes queued for the broker; their callers stop waiting
    // (a timeout), but the messages stay queued and still count.
    for i in 0..3 {
        let gave_up = tokio::time::timeout(
            Duration::from_millis(100),
            client.publish("offline/q", i.to_string(), QoS::AtLeastOnce, false),
        )
        .await;
        assert!(
            gave_up.is_err(),
            "publish {i} resolved while offline: {gave_up:?}"
        );
    }
    assert_eq!(client.stats().pending_publishes, 3);
    let refused = tokio::time::timeout(
        WAIT,
        client.publish("offline/q", "3", QoS::AtLeastOnce, false),
    )
    .await
    .expect("the fourth publish waited instead of failing");
    assert!(
        matches!(refused, Err(Error::OfflineQueueFull { limit: 3 })),
        "{refused:?}"
    );
    assert!(refused.unwrap_err().to_string().contains("3 publishes"));
    tokio::task::block_in_place(|| broker.restart());
    // They go out when the broker is back, and are answered.
    broker_logged(&broker, "Sending PUBACK to offliner", 3).await;
    let deadline = Instant::now() + WAIT;
    while client.stats().pending_publishes > 0 {
        assert!(Instant::now() < deadline, "{:?}", client.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = broker.log();
    let received: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Received PUBLISH from offliner"))
        .collect();
    assert_eq!(received.len(), 3, "{log}");
    assert_eq!(client.stats().pending_publishes, 0);
    stop(client, runner).await;
}

/// Without a dead-letter handler, a message over the incoming limit is
/// acknowledged (the broker logs its PUBACK), counted, and the one behind
/// it is handled on the same connection.
#[tokio::test]
async fn a_message_over_the_incoming_limit_is_acknowledged_and_counted() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let (publisher, prunner) = running(&pki, broker.port, "bigpub").await;
    let mut opts = options(broker.port, "limited");
    opts.clean_session = false;
    opts.max_incoming_packet_size = 1024;
    let identity = pki.client("limited").load().unwrap();
    let (client, mut conn) = MqttClient::new(&opts, &identity).unwrap();
    let (handler, mut rx) = forwarding();
    client
        .subscribe("big/#", QoS::AtLeastOnce, handler)
        .unwrap();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    broker_logged(&broker, "Received SUBSCRIBE from limited", 1).await;
    publisher
        .publish("big/one", vec![0u8; 4096], QoS::AtLeastOnce, false)
        .await
        .unwrap();
    publisher
        .publish("big/two", "small", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("big/two", &b"small"[..])
    );
    broker_logged(&broker, "Received PUBACK from limited", 2).await;
    assert_eq!(client.stats().too_large, 1);
    assert_eq!(client.stats().connections, 1, "one connection throughout");
    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// A QoS 1 publisher with a persistent session, its link cut at two
/// moments: in the middle of a 100 KiB PUBLISH, and after the broker got a
/// PUBLISH but before its PUBACK arrived (a cut right after CONNECT is
/// `connection_events_follow_the_link`; a broker silent after TCP,
/// `a_silent_broker_fails_the_attempt_after_connect_timeout`). Each time the client reconnects, the publish resolves `Ok`
/// once, and the broker received each message whole: a second
/// subscriber gets each, byte for byte.
#[tokio::test]
async fn publishes_survive_cuts_mid_publish_and_before_puback() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let proxy = FaultProxy::start(broker.port).await;
    let (watcher, wrunner) = running(&pki, broker.port, "watcher").await;
    let (handler, mut seen) = forwarding();
    watcher
        .subscribe("cuts/#", QoS::AtLeastOnce, handler)
        .unwrap()
        .granted()
        .await
        .unwrap();

    let mut opts = options(proxy.port, "cutpub");
    opts.clean_session = false;
    let identity = pki.client("cutpub").load().unwrap();
    let (publisher, mut conn) = MqttClient::new(&opts, &identity).unwrap();
    conn.connect().await.unwrap();
    let prunner = tokio::spawn(conn.run());

    // Mid-PUBLISH: 1,000 bytes of a 100 KiB publish reach the broker.
    let big: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    proxy.hold_to_broker_after(1000);
    let sending = {
        let publisher = publisher.clone();
        let big = big.clone();
        tokio::spawn(async move {
            publisher
                .publish("cuts/big", big, QoS::AtLeastOnce, false)
                .await
        })
    };
    proxy.wait_held_to_broker().await;
    proxy.cut();
    proxy.release();
    tokio::time::timeout(WAIT, sending)
        .await
        .expect("the publish never resolved")
        .unwrap()
        .unwrap();
    let got = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("cuts/big", &big[..])
    );

    // Before PUBACK: the broker has the PUBLISH, its PUBACK is held.
    proxy.hold_to_client();
    let sending = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            publisher
                .publish("cuts/small", "after", QoS::AtLeastOnce, false)
                .await
        })
    };
    broker_logged(&broker, "Sending PUBACK to cutpub", 2).await;
    proxy.cut();
    proxy.release();
    tokio::time::timeout(WAIT, sending)
        .await
        .expect("the publish never resolved")
        .unwrap()
        .unwrap();
    // The broker got it again, marked as a duplicate (the client cannot
    // know its first copy arrived), and acknowledged that too.
    broker_logged(&broker, "Received PUBLISH from cutpub (d1, q1", 2).await;
    broker_logged(&broker, "Sending PUBACK to cutpub", 3).await;
    let got = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("cuts/small", &b"after"[..])
    );
    assert_eq!(publisher.stats().pending_publishes, 0);
    stop(publisher, prunner).await;
    stop(watcher, wrunner).await;
}

/// More publishes at once than `max_inflight` (3,000 against 10), through a
/// link cut every 30–200 ms (five at least) and a hot identity swap, with
/// two threads keeping both cores busy: a reconnect finds up to the request
/// channel's capacity of new publishes pending, which used to go out past
/// the in-flight window, collide on packet ids and be dropped unsent or
/// resolved by another's PUBACK. Now every publish resolves `Ok` within
/// 20 s of the last cut, and the independent subscriber (`mosquitto_sub`,
/// straight to the broker) got every one. One round here;
/// `cargo xtask soak` runs ten (`MQTT_MTLS_BURST_ROUNDS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_window_survives_link_cuts() {
    const COUNT: usize = 3_000;
    let BurstBench {
        pki,
        _broker,
        proxy,
        sub,
        lines,
        publisher,
        prunner,
    } = BurstBench::start("burst", false).await;

    let rounds: u32 = std::env::var("MQTT_MTLS_BURST_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let mut received = std::collections::BTreeSet::new();
    let mut total_cuts = 0;
    for round in 0..rounds {
        let busy = Busy::start(2);
        let mut publishes = publish_all(&publisher, "burst/t", COUNT, |i| format!("{round}-{i}"));
        // A hot identity swap (a renewal) in the middle of it all.
        let swapper = {
            let publisher = publisher.clone();
            let renewed = pki.client("burst-pub").load().unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(50..300))).await;
                tokio::time::timeout(WAIT, publisher.reconnect_with_identity(&renewed)).await
            })
        };
        let cutter = Cutter::start(&proxy);
        let mut ok = std::collections::BTreeSet::new();
        let mut failed = Vec::new();
        let mut last_cut = Instant::now();
        loop {
            // Cuts go on until nine in ten resolved, five at least; then the
            // link stays.
            if ok.len() + failed.len() >= COUNT * 9 / 10
                && cutter.cuts() >= 5
                && cutter.stop_cutting()
            {
                last_cut = Instant::now();
            }
            let limit = if cutter.is_cutting() {
                Duration::from_secs(60)
            } else {
                WAIT.saturating_sub(last_cut.elapsed())
            };
            match tokio::time::timeout(limit, publishes.join_next()).await {
                Ok(Some(joined)) => match joined.unwrap() {
                    (i, Ok(())) => {
                        ok.insert(format!("{round}-{i}"));
                    }
                    (i, Err(e)) => failed.push((i, e.to_string())),
                },
                Ok(None) => break,
                Err(_) => panic!(
                    "{} publishes unresolved 20 s after the last cut ({} Ok, {} failed)",
                    publishes.len(),
                    ok.len(),
                    failed.len()
                ),
            }
        }
        let cuts = cutter.stop().await;
        drop(busy);
        // Refused by a cut in its first attempt or through: either way the
        // publishes must not suffer.
        let swapped = swapper.await.unwrap().expect("the swap never ended");
        assert!(cuts >= 5, "only {cuts} cuts");
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(10)]
        );
        // The independent subscriber got every publish that resolved Ok.
        let deadline = Instant::now() + WAIT;
        while !ok.is_subset(&received) {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    received.insert(line);
                }
                Err(_) => assert!(
                    Instant::now() < deadline,
                    "{} acknowledged publishes never reached the subscriber (first {:?})",
                    ok.difference(&received).count(),
                    ok.difference(&received).take(10).collect::<Vec<_>>()
                ),
            }
        }
        total_cuts += cuts;
        eprintln!(
            "round {round}: {COUNT} publishes, {cuts} cuts, swap {swapped:?}: all acknowledged and received"
        );
    }
    drop(sub);
    eprintln!(
        "{rounds} rounds of {COUNT} publishes, {total_cuts} cuts, all acknowledged and received"
    );
    stop(publisher, prunner).await;
}

/// A QoS 2 message delivered to a handler that has not acknowledged it
/// yet (no PUBREC) when the link goes: the broker sends it again marked
/// DUP, and it is not handed to the handler a second time (MQTT 3.1.1
/// section 4.3.3; the ingest stored such messages twice). The handler's
/// acknowledgement, made after the reconnect, completes the exchange.
#[tokio::test]
async fn a_qos2_message_is_not_handled_twice_when_the_link_goes_before_pubrec() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let proxy = FaultProxy::start(broker.port).await;
    let (publisher, prunner) = running(&pki, broker.port, "q2once-pub").await;
    let mut opts = options(proxy.port, "q2once");
    opts.clean_session = false;
    let (client, mut conn) = MqttClient::new(&opts, &pki.client("q2once").load().unwrap()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    client
        .subscribe_deferred("once/#", QoS::ExactlyOnce, move |m, d| {
            let tx = tx.clone();
            async move {
                tx.send((m, d)).unwrap();
                Ok::<(), std::io::Error>(())
            }
        })
        .unwrap();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    broker_logged(&broker, "Received SUBSCRIBE from q2once\n", 1).await;

    publisher
        .publish("once/t", "first", QoS::ExactlyOnce, false)
        .await
        .unwrap();
    let (first, delivery) = next(&mut rx).await;
    assert_eq!(&first.payload[..], b"first");
    proxy.cut();
    // The broker has no PUBREC: it sends the message again on the resumed
    // session.
    broker_logged(&broker, "Sending CONNACK to q2once (1, 0)", 1).await;
    broker_logged(&broker, "Sending PUBLISH to q2once (d1, q2", 1).await;
    delivery.ack().await.unwrap();
    broker_logged(&broker, "Received PUBCOMP from q2once", 1).await;
    publisher
        .publish("once/t", "second", QoS::ExactlyOnce, false)
        .await
        .unwrap();
    let (second, delivery) = next(&mut rx).await;
    assert_eq!(
        &second.payload[..],
        b"second",
        "\"first\" was handled twice"
    );
    delivery.ack().await.unwrap();
    // One reconnect, the cut's: the copy held back did not break the link.
    assert_eq!(
        broker.log().matches("as q2once (").count(),
        2,
        "{}",
        broker.log()
    );
    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// A hundred 100-byte filters with a 1 KiB outgoing limit: one SUBSCRIBE
/// of 10 KiB failed the connection and was sent again on every reconnect;
/// they go out in SUBSCRIBEs that fit, and the broker grants every one.
#[tokio::test]
async fn subscriptions_too_many_for_one_packet_are_split() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let mut opts = options(broker.port, "many-subs");
    opts.max_outgoing_packet_size = 1024;
    let (client, mut conn) =
        MqttClient::new(&opts, &pki.client("many-subs").load().unwrap()).unwrap();
    let (handler, mut rx) = forwarding();
    let granted: Vec<_> = (0..100)
        .map(|i| {
            client
                .subscribe(
                    format!("many/{i:03}/{}", "x".repeat(91)),
                    QoS::AtLeastOnce,
                    handler.clone(),
                )
                .unwrap()
        })
        .collect();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    for answer in granted {
        tokio::time::timeout(WAIT, answer.granted())
            .await
            .expect("a subscription was never answered")
            .unwrap();
    }
    // A filter too big for one packet even alone is refused, and
    // unsubscribing it asks the broker nothing (it would fail the
    // connection on every reconnect).
    let huge = format!("many/{}", "z".repeat(2_000));
    let refused = client
        .subscribe(huge.as_str(), QoS::AtLeastOnce, handler.clone())
        .unwrap()
        .granted()
        .await;
    assert!(
        matches!(refused, Err(Error::SubscriptionRefused { .. })),
        "{refused:?}"
    );
    client.unsubscribe(huge.as_str()).await.unwrap();
    let subscribes = broker
        .log()
        .matches("Received SUBSCRIBE from many-subs")
        .count();
    assert!(subscribes >= 11, "{subscribes} SUBSCRIBEs");
    assert_eq!(
        broker.log().matches("as many-subs (").count(),
        1,
        "one connection"
    );
    let (publisher, prunner) = running(&pki, broker.port, "many-pub").await;
    let topic = format!("many/099/{}", "x".repeat(91));
    publisher
        .publish(&topic, "last", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.topic, topic);
    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// An UNSUBSCRIBE lost with the link (held in the proxy, then cut) is sent
/// again on the resumed session, so the broker's subscription goes: it used
/// to stay, its messages arriving as unmatched for ever.
#[tokio::test]
async fn an_unsubscribe_lost_with_the_link_is_sent_again() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let proxy = FaultProxy::start(broker.port).await;
    let mut opts = options(proxy.port, "unsub");
    opts.clean_session = false;
    let (client, mut conn) = MqttClient::new(&opts, &pki.client("unsub").load().unwrap()).unwrap();
    let (handler, _rx) = forwarding();
    let gone = client
        .subscribe("gone/#", QoS::AtLeastOnce, handler)
        .unwrap();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    gone.granted().await.unwrap();

    proxy.hold_to_broker_after(1);
    client.unsubscribe("gone/#").await.unwrap();
    proxy.wait_held_to_broker().await;
    proxy.cut();
    proxy.release();
    broker_logged(&broker, "Sending CONNACK to unsub (1, 0)", 1).await;
    broker_logged(&broker, "Received UNSUBSCRIBE from unsub", 1).await;
    broker_logged(&broker, "Sending UNSUBACK to unsub", 1).await;
    stop(client, runner).await;
}

/// Threads keeping the cores busy until dropped (also when a test panics,
/// so that they do not slow the tests that run after it).
struct Busy(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Vec<std::thread::JoinHandle<u64>>,
);

impl Busy {
    fn start(threads: usize) -> Self {
        let on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let spinners = (0..threads)
            .map(|_| {
                let on = on.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while on.load(std::sync::atomic::Ordering::Relaxed) {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    }
                    x
                })
            })
            .collect();
        Self(on, spinners)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
        for spinner in self.1.drain(..) {
            let _ = spinner.join();
        }
    }
}

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A deliberate deviation from MQTT 3.1.1 [MQTT-4.6.0-2] (PUBACKs in the
/// order the PUBLISHes arrived): a message's acknowledgement goes out when
/// its handlers are done with it, so a deferred handler that finishes the
/// second message first acknowledges it first. Holding back later
/// acknowledgements behind a slow one would stall the broker's window.
/// Mosquitto takes them in any order, and the session carries on: nothing
/// comes again after a reconnect.
#[tokio::test]
async fn acknowledgements_go_out_as_handlers_finish_and_the_broker_takes_them() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let proxy = FaultProxy::start(broker.port).await;
    let (publisher, prunner) = running(&pki, broker.port, "order-pub").await;
    let mut opts = options(proxy.port, "order-sub");
    opts.clean_session = false;
    let (client, mut conn) =
        MqttClient::new(&opts, &pki.client("order-sub").load().unwrap()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    client
        .subscribe_deferred("order/#", QoS::AtLeastOnce, move |m, d| {
            let tx = tx.clone();
            async move {
                tx.send((m, d)).unwrap();
                Ok::<(), std::io::Error>(())
            }
        })
        .unwrap();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    broker_logged(&broker, "Received SUBSCRIBE from order-sub\n", 1).await;
    for payload in ["one", "two"] {
        publisher
            .publish("order/t", payload, QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    let (first, first_delivery) = next(&mut rx).await;
    let (second, second_delivery) = next(&mut rx).await;
    assert_eq!(
        (&first.payload[..], &second.payload[..]),
        (&b"one"[..], &b"two"[..])
    );
    second_delivery.ack().await.unwrap();
    broker_logged(&broker, "Received PUBACK from order-sub (Mid: 2", 1).await;
    first_delivery.ack().await.unwrap();
    broker_logged(&broker, "Received PUBACK from order-sub (Mid: 1", 1).await;
    let log = broker.log();
    assert!(
        log.find("Received PUBACK from order-sub (Mid: 2").unwrap()
            < log.find("Received PUBACK from order-sub (Mid: 1").unwrap()
    );
    // Both done for the broker: after a reconnect, the next message is new.
    proxy.cut();
    broker_logged(&broker, "Sending CONNACK to order-sub (1, 0)", 1).await;
    publisher
        .publish("order/t", "three", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let (third, delivery) = next(&mut rx).await;
    assert_eq!(
        &third.payload[..],
        b"three",
        "an acknowledged message came again"
    );
    delivery.ack().await.unwrap();
    stop(client, runner).await;
    stop(publisher, prunner).await;
}

/// With a clean session every reconnect is a new session, and each publish
/// under way at a cut ends honestly: publishes not written yet go out on
/// the new session and resolve `Ok` (the independent subscriber,
/// `mosquitto_sub` straight to the broker, got each); those written and
/// not acknowledged fail with `DeliveryUnknown` (either way, and at least
/// one does: sessions were lost with publishes in flight). None is dropped
/// unsent (`SessionLost`, which only a publish held back for a packet id
/// can get, and the event loop never holds one now): it used to be
/// `SessionLost` for hundreds of publishes, many of which the subscriber
/// did get (those in the request channel went out on the new session after
/// their callers were told to send them again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_session_each_publish_is_received_or_of_unknown_delivery() {
    const COUNT: usize = 2_000;
    const ROUNDS: usize = 5;
    // A clean session: every reconnect is a new session.
    // Every part kept to the end (`..` would drop the broker at once).
    let BurstBench {
        pki: _pki,
        _broker,
        proxy,
        sub,
        lines,
        publisher,
        prunner,
    } = BurstBench::start("honest", true).await;
    let (mut ok, mut never_sent, mut unknown) = (Vec::new(), Vec::new(), 0usize);
    // The cuts of the last round (the one that lost a publish in flight),
    // and how many rounds it took.
    let (mut cuts, mut rounds) = (0, 0);
    // Rounds until a cut lost a session with a publish in flight (on a
    // busy machine a round's cuts may all fall between publishes): the
    // test is about those.
    for round in 0..ROUNDS {
        let name = move |i: usize| format!("{round}-{i}");
        let mut publishes = publish_all(&publisher, "honest/t", COUNT, name);
        let cutter = Cutter::start(&proxy);
        while let Some(joined) =
            tokio::time::timeout(Duration::from_secs(60), publishes.join_next())
                .await
                .expect("publishes unresolved for 60 s")
        {
            match joined.unwrap() {
                (i, Ok(())) => ok.push(name(i)),
                (i, Err(Error::SessionLost)) => never_sent.push(name(i)),
                (_, Err(Error::DeliveryUnknown)) => unknown += 1,
                (i, Err(e)) => panic!("publish {i}: {e}"),
            }
        }
        // The cut `stop` makes after the last publish resolved is not one
        // of those the round's publishes went through.
        cuts = cutter.stop().await.saturating_sub(1);
        rounds = round + 1;
        if unknown > 0 {
            break;
        }
    }
    // A marker after everything: once the subscriber has it, it has all
    // the broker passed on before.
    loop {
        match publisher
            .publish("honest/t", "marker", QoS::AtLeastOnce, false)
            .await
        {
            Ok(()) => break,
            Err(Error::SessionLost | Error::DeliveryUnknown) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    let mut received = std::collections::BTreeSet::new();
    loop {
        let line = lines
            .recv_timeout(WAIT)
            .expect("the subscriber never got the marker");
        if line == "marker" {
            break;
        }
        received.insert(line);
    }
    let lied: Vec<_> = never_sent
        .iter()
        .filter(|n| received.contains(*n))
        .take(10)
        .collect();
    assert!(
        lied.is_empty(),
        "publishes that failed as never sent were received: {lied:?}"
    );
    assert!(
        never_sent.is_empty(),
        "{} publishes dropped unsent in a lost session, such as {:?}",
        never_sent.len(),
        never_sent.iter().take(10).collect::<Vec<_>>()
    );
    let missing: Vec<_> = ok
        .iter()
        .filter(|n| !received.contains(*n))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged, never received: {missing:?}"
    );
    assert!(
        cuts >= 3 && unknown > 0,
        "no session was lost with a publish in flight"
    );
    eprintln!(
        "{rounds} round(s) of {COUNT} publishes, {cuts} cuts in the last: {} Ok, {} never sent, \
         {unknown} unknown",
        ok.len(),
        never_sent.len()
    );
    drop(sub);
    stop(publisher, prunner).await;
}

/// What the burst tests share, all named after `prefix`: a broker at its
/// defaults, a fault proxy in front of it, `mosquitto_sub` (`PREFIX-sub`)
/// on `PREFIX/#` straight to the broker and subscribed, and a running
/// publisher `PREFIX-pub` through the proxy with an in-flight window of 10.
struct BurstBench {
    pki: Pki,
    _broker: Mosquitto,
    proxy: std::sync::Arc<FaultProxy>,
    sub: KillOnDrop,
    lines: std::sync::mpsc::Receiver<String>,
    publisher: MqttClient,
    prunner: JoinHandle<mqtt_tls::Result<()>>,
}

impl BurstBench {
    async fn start(prefix: &str, clean_session: bool) -> Self {
        let pki = Pki::new();
        let broker = Mosquitto::start(&pki, &BrokerOptions::default());
        let proxy = std::sync::Arc::new(FaultProxy::start(broker.port).await);
        let sub_name = format!("{prefix}-sub");
        let (sub, lines) =
            mosquitto_sub_lines(&pki, broker.port, &format!("{prefix}/#"), &sub_name);
        broker_logged(&broker, &format!("Received SUBSCRIBE from {sub_name}\n"), 1).await;
        let pub_name = format!("{prefix}-pub");
        let mut opts = options(proxy.port, &pub_name);
        opts.clean_session = clean_session;
        opts.max_inflight = 10;
        let (publisher, mut conn) =
            MqttClient::new(&opts, &pki.client(&pub_name).load().unwrap()).unwrap();
        conn.connect().await.unwrap();
        let prunner = tokio::spawn(conn.run());
        Self {
            pki,
            _broker: broker,
            proxy,
            sub,
            lines,
            publisher,
            prunner,
        }
    }
}

/// `count` QoS 1 publishes on `topic` at once, the `i`th carrying
/// `payload(i)`, each ending as `(i, outcome)`.
fn publish_all(
    publisher: &MqttClient,
    topic: &'static str,
    count: usize,
    payload: impl Fn(usize) -> String,
) -> tokio::task::JoinSet<(usize, mqtt_tls::Result<()>)> {
    let mut publishes = tokio::task::JoinSet::new();
    for i in 0..count {
        let (publisher, payload) = (publisher.clone(), payload(i));
        publishes.spawn(async move {
            let outcome = publisher
                .publish(topic, payload, QoS::AtLeastOnce, false)
                .await;
            (i, outcome)
        });
    }
    publishes
}

/// Cuts the link through a fault proxy every 30–200 ms, on a task of its
/// own, until stopped.
struct Cutter {
    cutting: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicU32>,
    task: JoinHandle<()>,
}

impl Cutter {
    fn start(proxy: &std::sync::Arc<FaultProxy>) -> Self {
        let cutting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cuts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let task = {
            let (cutting, cuts, proxy) = (cutting.clone(), cuts.clone(), proxy.clone());
            tokio::spawn(async move {
                while cutting.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(30..200))).await;
                    proxy.cut();
                    cuts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        Self {
            cutting,
            cuts,
            task,
        }
    }

    /// The cuts so far.
    fn cuts(&self) -> u32 {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn is_cutting(&self) -> bool {
        self.cutting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// No more cuts from now on; whether it was still cutting.
    fn stop_cutting(&self) -> bool {
        self.cutting
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops, and waits for the last cut: how many there were.
    async fn stop(self) -> u32 {
        self.stop_cutting();
        let Self { cuts, task, .. } = self;
        task.await.unwrap();
        cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `mosquitto_sub` as `name` (its own certificate, a persistent QoS 1
/// session) straight to the broker on `port`: each payload it prints, one
/// a line; killed when the first value is dropped.
fn mosquitto_sub_lines(
    pki: &Pki,
    port: u16,
    filter: &str,
    name: &str,
) -> (KillOnDrop, std::sync::mpsc::Receiver<String>) {
    let bundle = pki.client(name);
    let mut sub = KillOnDrop(
        peers::mosquitto::cli("mosquitto_sub", port, filter, 1, &bundle)
            .args(["-F", "%p", "-c", "-i", name])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (line_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = sub.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    (sub, lines)
}
