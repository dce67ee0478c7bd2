//! mqtt-ingest against a real Mosquitto (mTLS, `persistence true`) with an
//! independent publisher sending numbered QoS 1 messages; each scenario runs
//! on SQLite and on a real PostgreSQL (one server per test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use peers::mosquitto::{Mosquitto, Pki};
use peers::postgres::Postgres;

mod common;

use common::{
    Db, Ingest, IngestCommands, Publisher, check_at_least_once, dead_letters, persistent_broker,
    wait_for_rows,
};

struct Setup {
    pki: Pki,
    broker: Mosquitto,
    db: Db,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    setup_with(Db::Sqlite(dir.path().join("ingest.db")), dir)
}

fn setup_postgres() -> Setup {
    setup_with(
        Db::Postgres(Postgres::start()),
        tempfile::tempdir().unwrap(),
    )
}

fn setup_with(db: Db, dir: tempfile::TempDir) -> Setup {
    let pki = Pki::new();
    let broker = persistent_broker(&pki);
    Setup {
        db,
        pki,
        broker,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_stored_exactly_once() {
    ten_thousand_messages_stored_exactly_once_on(setup()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_stored_exactly_once_postgres() {
    ten_thousand_messages_stored_exactly_once_on(tokio::task::block_in_place(setup_postgres)).await;
}

async fn ten_thousand_messages_stored_exactly_once_on(s: Setup) {
    let bundle = s.pki.client("ingest");
    let mut ingest = tokio::task::block_in_place(|| Ingest::start(&bundle, &s.broker, &s.db));
    let publisher = Publisher::connect(&s.pki, &s.broker).await;
    const N: u32 = 10_000;
    publisher.send(0..N).await.unwrap();
    assert_eq!(publisher.acked().len(), N as usize);

    let rows = wait_for_rows(&s.db, N as usize).await;
    assert_eq!(rows.len(), N as usize, "each message exactly once");
    let numbers: BTreeSet<u32> = rows.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (0..N).collect());
    assert!(rows.iter().all(|(_, dup)| !dup));

    // The HTTP side.
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while ingest.metric("mqtt_ingest_acknowledged_total") < u64::from(N) {
            assert!(Instant::now() < deadline, "not all acknowledged");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(ingest.metric("mqtt_ingest_stored_total"), u64::from(N));
        assert_eq!(ingest.metric("mqtt_ingest_received_total"), u64::from(N));
        let (status, body) = ingest.get("/healthz");
        assert_eq!(status, 200, "{body}");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["mqtt"]["connected"], true);
        assert_eq!(health["database"]["ok"], true);
        let (status, body) = ingest.get("/api/messages?topic=load/3&limit=5");
        assert_eq!(status, 200);
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        let messages = page["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 5);
        assert!(
            messages
                .iter()
                .all(|m| m["topic"] == "load/3" && m["qos"] == 1)
        );
        let next = page["next_after"].as_i64().unwrap();
        let (_, body) = ingest.get(&format!("/api/messages?topic=load/3&limit=5&after={next}"));
        let page2: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(page2["messages"][0]["id"].as_i64().unwrap() > next);
        // SIGTERM: a clean shutdown.
        assert!(ingest.terminate(), "unclean exit:\n{}", ingest.log());
    });
}

/// A filter left in the persistent session by an earlier configuration
/// still brings messages; none of today's subscriptions matches them. They
/// are stored in `dead_letters` with the reason, then acknowledged, not
/// dropped; the messages table gets none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_messages_become_dead_letters() {
    unmatched_messages_become_dead_letters_on(setup()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_messages_become_dead_letters_postgres() {
    unmatched_messages_become_dead_letters_on(tokio::task::block_in_place(setup_postgres)).await;
}

async fn unmatched_messages_become_dead_letters_on(s: Setup) {
    let bundle = s.pki.client("ingest");
    {
        // Yesterday's configuration also subscribed to old/#.
        let mut first = tokio::task::block_in_place(|| {
            Ingest::spawn(
                Ingest::command(&bundle, &s.broker, &s.db, "ingest-under-test")
                    .args(["--topic", "old/#"]),
            )
        });
        first.wait_healthy();
        assert!(first.terminate(), "{}", first.log());
    }
    let ingest = tokio::task::block_in_place(|| Ingest::start(&bundle, &s.broker, &s.db));
    ingest.wait_healthy();
    let publisher = Publisher::connect(&s.pki, &s.broker).await;
    publisher.publish("old/thing", "left over").await;
    publisher.publish("load/x", "7").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters = dead_letters(&s.db).await;
        if !letters.is_empty() {
            break letters;
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter; log:\n{}",
            ingest.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        letters,
        [(
            "old/thing".to_owned(),
            "left over".to_owned(),
            "no subscription matches this topic".to_owned()
        )]
    );
    let rows = wait_for_rows(&s.db, 1).await;
    assert_eq!(
        rows,
        [(7, false)],
        "only the matched message is in messages"
    );
    assert_eq!(ingest.metric("mqtt_ingest_dead_letters_total"), 1);
    // Acknowledged: the broker logged the PUBACK of both messages.
    acknowledged_on_the_wire(&s, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_acknowledged() {
    broker_restart_loses_nothing_acknowledged_on(setup()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_acknowledged_postgres() {
    broker_restart_loses_nothing_acknowledged_on(tokio::task::block_in_place(setup_postgres)).await;
}

async fn broker_restart_loses_nothing_acknowledged_on(mut s: Setup) {
    let bundle = s.pki.client("ingest");
    let _ingest = tokio::task::block_in_place(|| Ingest::start(&bundle, &s.broker, &s.db));
    let publisher = Publisher::connect(&s.pki, &s.broker).await;
    const N: u32 = 3_000;
    let sending = publisher.send(0..N);
    while publisher.acked().len() < 1_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| s.broker.restart());
    sending.await.unwrap();
    let acked = publisher.acked();
    assert_eq!(acked.len(), N as usize);
    let rows = wait_for_rows(&s.db, acked.len()).await;
    let stored: BTreeSet<u32> = rows.iter().map(|(n, _)| *n).collect();
    assert!(
        acked.is_subset(&stored),
        "acknowledged messages missing from the database"
    );
    println!(
        "broker restart: {} rows for {} messages",
        rows.len(),
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_mid_stream_loses_nothing_acknowledged() {
    ingest_killed_mid_stream_loses_nothing_acknowledged_on(setup()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_mid_stream_loses_nothing_acknowledged_postgres() {
    ingest_killed_mid_stream_loses_nothing_acknowledged_on(tokio::task::block_in_place(
        setup_postgres,
    ))
    .await;
}

async fn ingest_killed_mid_stream_loses_nothing_acknowledged_on(s: Setup) {
    let bundle = s.pki.client("ingest");
    let mut ingest = tokio::task::block_in_place(|| Ingest::start(&bundle, &s.broker, &s.db));
    let publisher = Publisher::connect(&s.pki, &s.broker).await;
    const N: u32 = 3_000;
    let sending = publisher.send(0..N);
    wait_for_rows(&s.db, 800).await;
    tokio::task::block_in_place(|| ingest.kill9());
    let _again = tokio::task::block_in_place(|| Ingest::start(&bundle, &s.broker, &s.db));
    sending.await.unwrap();
    let acked = publisher.acked();
    assert_eq!(acked.len(), N as usize);
    let rows = wait_for_rows(&s.db, acked.len()).await;
    let (stored, twice) = check_at_least_once(&rows, &acked);
    println!(
        "SIGKILL mid-stream: {stored} messages, {twice} stored twice (redelivered with the duplicate flag)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_unavailable_for_a_while() {
    let s = setup();
    let bundle = s.pki.client("ingest");
    let ingest = tokio::task::block_in_place(|| Ingest::start(&bundle, &s.broker, &s.db));
    let publisher = Publisher::connect(&s.pki, &s.broker).await;
    let acked_before = first_ten_acknowledged(&s, &ingest, &publisher).await;

    // Another process holds the write lock: the database is unavailable.
    let locker = common::SqliteLock::take(&s.db).await;
    publisher.send(10..60).await.unwrap();
    tokio::task::block_in_place(|| holds_acknowledgements_while_down(&ingest, acked_before));
    // It comes back: everything is stored and acknowledged.
    locker.release().await;
    recovers_with_everything(&s, &ingest).await;
}

/// SIGTERM while the database is down ends within `--shutdown-timeout`
/// (it used to wait for the database for ever), with exit code 1; what was
/// not stored was not acknowledged, so the next run stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_database_down_ends_in_time_and_loses_nothing() {
    let s = setup();
    let bundle = s.pki.client("ingest");
    let start = || {
        Ingest::spawn(
            Ingest::command(&bundle, &s.broker, &s.db, "ingest-under-test")
                .args(["--shutdown-timeout", "2"]),
        )
    };
    let mut ingest = tokio::task::block_in_place(start);
    let publisher = Publisher::connect(&s.pki, &s.broker).await;
    let acked_before = first_ten_acknowledged(&s, &ingest, &publisher).await;

    let locker = common::SqliteLock::take(&s.db).await;
    publisher.send(10..60).await.unwrap();
    tokio::task::block_in_place(|| holds_acknowledgements_while_down(&ingest, acked_before));
    let status = tokio::task::block_in_place(|| ingest.terminate_within(Duration::from_secs(20)));
    let status = status.expect("still running 20 s after SIGTERM with --shutdown-timeout 2");
    assert_eq!(status.code(), Some(1), "{}", ingest.log());
    assert!(
        ingest
            .log()
            .contains("stay unacknowledged with the broker's session"),
        "{}",
        ingest.log()
    );

    locker.release().await;
    // The next run gets what the last one did not store from the broker.
    let _ingest = tokio::task::block_in_place(start);
    let rows = wait_for_rows(&s.db, 60).await;
    let stored: BTreeSet<u32> = rows.iter().map(|(n, _)| *n).collect();
    assert_eq!(stored, (0..60).collect());
}

/// Stores the first 10 messages and returns the acknowledged count then.
async fn first_ten_acknowledged(s: &Setup, ingest: &Ingest, publisher: &Publisher) -> u64 {
    publisher.send(0..10).await.unwrap();
    wait_for_rows(&s.db, 10).await;
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let a = ingest.metric("mqtt_ingest_acknowledged_total");
            if a >= 10 {
                return a;
            }
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// While the database is down: /healthz says so, and nothing more is
/// acknowledged (checked for a full second).
fn holds_acknowledgements_while_down(ingest: &Ingest, acked_before: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = ingest.get("/healthz");
        if status == 503 {
            let health: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(health["database"]["ok"], false, "{body}");
            assert_eq!(health["mqtt"]["connected"], true, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "healthz never said the database is down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        ingest.metric("mqtt_ingest_acknowledged_total"),
        acked_before,
        "acknowledged while nothing could be stored"
    );
}

/// Once the database is back: all 60 messages stored, all acknowledged.
async fn recovers_with_everything(s: &Setup, ingest: &Ingest) {
    let rows = wait_for_rows(&s.db, 60).await;
    let stored: BTreeSet<u32> = rows.iter().map(|(n, _)| *n).collect();
    assert_eq!(stored, (0..60).collect());
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while ingest.get("/healthz").0 != 200
            || ingest.metric("mqtt_ingest_acknowledged_total") < 60
        {
            assert!(
                Instant::now() < deadline,
                "did not recover:\n{}",
                ingest.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_unavailable_for_a_while_postgres() {
    let s = tokio::task::block_in_place(setup_postgres);
    let bundle = s.pki.client("ingest");
    let ingest = tokio::task::block_in_place(|| Ingest::start(&bundle, &s.broker, &s.db));
    let publisher = Publisher::connect(&s.pki, &s.broker).await;
    let acked_before = first_ten_acknowledged(&s, &ingest, &publisher).await;
    let Db::Postgres(pg) = &s.db else {
        unreachable!("a PostgreSQL setup")
    };
    // The server goes away (as a crash: no shutdown checkpoint).
    tokio::task::block_in_place(|| pg.stop());
    publisher.send(10..60).await.unwrap();
    tokio::task::block_in_place(|| {
        holds_acknowledgements_while_down(&ingest, acked_before);
        // A server that is gone leaves the pool waiting for a connection:
        // the probe answers anyway, saying the database did not answer.
        let (status, body) = ingest.get("/healthz");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("did not answer within 800 ms"), "{body}");
        pg.restart();
    });
    recovers_with_everything(&s, &ingest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_log_at_trace_level() {
    let s = setup();
    let bundle = s.pki.client("secretive");
    let plain_pem = std::fs::read_to_string(&bundle.key_path).unwrap();
    let passphrase = "correct-horse-battery-staple-4711";
    let encrypted_pem = pki_core::KeyPair::from_pem(&plain_pem)
        .unwrap()
        .to_encrypted_pkcs8_pem(passphrase.as_bytes())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("secretive.key");
    std::fs::write(&key_path, &encrypted_pem).unwrap();
    let config = dir.path().join("ingest.toml");
    std::fs::write(
        &config,
        format!(
            "db = \"{db}\"\nlisten = \"127.0.0.1:0\"\n\
             [tls]\ncert_path = \"{cert}\"\nkey_path = \"{key}\"\nca_cert_path = \"{ca}\"\n\
             passphrase_env = \"INGEST_KEY_PASSPHRASE\"\n\
             [mqtt]\nhost = \"localhost\"\nport = {port}\nclient_id = \"secretive\"\n\
             topics = [\"load/#\"]\n",
            db = s.db.url(),
            cert = bundle.cert_path.display(),
            key = key_path.display(),
            ca = bundle.ca_cert_path.display(),
            port = s.broker.port,
        ),
    )
    .unwrap();
    let mut ingest = tokio::task::block_in_place(|| {
        Ingest::spawn(
            Command::new(env!("CARGO_BIN_EXE_mqtt-ingest"))
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "trace")
                .env("INGEST_KEY_PASSPHRASE", passphrase),
        )
    });
    let publisher = Publisher::connect(&s.pki, &s.broker).await;
    publisher.send(0..50).await.unwrap();
    wait_for_rows(&s.db, 50).await;
    tokio::task::block_in_place(|| assert!(ingest.terminate(), "{}", ingest.log()));

    let log = ingest.log();
    assert!(
        log.lines().count() > 100,
        "trace logging was on: {} lines",
        log.lines().count()
    );
    assert!(!log.contains(passphrase), "the passphrase is in the log");
    for pem in [&plain_pem, &encrypted_pem] {
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!log.contains(line), "key material in the log: {line}");
        }
    }
}

/// `load/#` and `load/+/t` both match `load/x/t`: Mosquitto sends the
/// message once (measured), and it is stored once, not once per filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_filters_store_a_message_once() {
    let s = setup();
    let bundle = s.pki.client("ingest");
    let ingest = tokio::task::block_in_place(|| {
        Ingest::spawn(
            Ingest::command(&bundle, &s.broker, &s.db, "ingest-under-test")
                .args(["--topic", "load/+/t"]),
        )
    });
    ingest.wait_healthy();
    let publisher = Publisher::connect(&s.pki, &s.broker).await;
    publisher.publish("load/x/t", "1").await;
    publisher.publish("load/y", "2").await;
    // Both acknowledged on the wire: everything the ingest will store of
    // them is stored.
    acknowledged_on_the_wire(&s, 2).await;
    assert_eq!(
        s.broker
            .log()
            .matches("Sending PUBLISH to ingest-under-test")
            .count(),
        2,
        "the broker sent each message once:\n{}",
        s.broker.log()
    );
    assert_eq!(common::rows(&s.db).await, [(1, false), (2, false)]);
    assert_eq!(ingest.metric("mqtt_ingest_stored_total"), 2);
}

/// Two instances write to one PostgreSQL; the first takes an id and is
/// still inside its transaction when the second commits a higher one. A
/// reader following `next_after` must still see both: ids become visible
/// in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_by_id_skips_nothing_committed_out_of_order_postgres() {
    use mqtt_ingest::{NewMessage, Store};
    let pg = tokio::task::block_in_place(Postgres::start);
    let url = pg.url();
    let slow = Store::open(&url).await.unwrap();
    let fast = Store::open(&url).await.unwrap();
    let reader = Store::open(&url).await.unwrap();
    // An insert on topic "slow" takes its id, then waits inside its
    // transaction (a slow disk, a long batch).
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    for sql in [
        "CREATE FUNCTION linger() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN IF NEW.topic = 'slow' THEN PERFORM pg_sleep(1.5); END IF; RETURN NEW; END $$",
        "CREATE TRIGGER linger AFTER INSERT ON messages FOR EACH ROW EXECUTE FUNCTION linger()",
    ] {
        sqlx::query(sql).execute(&admin).await.unwrap();
    }
    let message = |topic: &str| NewMessage {
        topic: topic.to_owned(),
        payload: b"x".to_vec().into(),
        qos: 1,
        retain: false,
        duplicate: false,
        received_at_us: 0,
    };
    let first = tokio::spawn(async move { slow.insert_batch(&[message("slow")]).await });
    // The first insert is inside its transaction, lingering.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lingering: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'INSERT INTO messages%' \
             AND wait_event = 'PgSleep'",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        if lingering == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the slow insert never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fast.insert_batch(&[message("fast")]).await.unwrap();
    // A reader pages now, and again once everything committed.
    let mut seen = Vec::new();
    let mut after = 0;
    for row in reader.list(None, after, 100).await.unwrap() {
        after = row.id;
        seen.push(row.topic);
    }
    first.await.unwrap().unwrap();
    for row in reader.list(None, after, 100).await.unwrap() {
        seen.push(row.topic);
    }
    seen.sort();
    assert_eq!(seen, ["fast", "slow"], "every row once");
}

/// With `--max-packet-size 1024`, a 4 KiB message cannot be read: it is
/// kept as a dead letter naming its size and the limit (payload empty),
/// counted, acknowledged, and the message behind it is stored, where before
/// the connection dropped and the broker sent it again on every reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_packet_limit_is_a_dead_letter_and_the_stream_goes_on() {
    let s = setup();
    let bundle = s.pki.client("ingest");
    let ingest = tokio::task::block_in_place(|| {
        Ingest::spawn(
            Ingest::command(&bundle, &s.broker, &s.db, "ingest-under-test")
                .args(["--max-packet-size", "1024"]),
        )
    });
    ingest.wait_healthy();
    let publisher = Publisher::connect(&s.pki, &s.broker).await;
    publisher.publish("load/big", &"x".repeat(4096)).await;
    publisher.publish("load/small", "5").await;
    let rows = wait_for_rows(&s.db, 1).await;
    assert_eq!(rows, [(5, false)]);
    let letters = dead_letters(&s.db).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (topic, payload, reason) = &letters[0];
    assert_eq!((topic.as_str(), payload.as_str()), ("load/big", ""));
    assert!(
        reason.contains("4108 bytes") && reason.contains("limit of 1024"),
        "{reason}"
    );
    assert_eq!(ingest.metric("mqtt_ingest_too_large_total"), 1);
    assert_eq!(ingest.metric("mqtt_ingest_dead_letters_total"), 1);
    // Both acknowledged on the wire, over one connection.
    acknowledged_on_the_wire(&s, 2).await;
    assert_eq!(
        s.broker.log().matches("New client connected from").count(),
        2,
        "the ingest and the publisher, each once:\n{}",
        s.broker.log()
    );
}

/// A QoS 2 message the ingest has taken but not stored yet (the database
/// is locked, so no PUBREC) is sent again by the broker, flagged DUP, once
/// the link comes back (here the broker restarts with its session saved).
/// MQTT 3.1.1 section 4.3.3 forbids handing it on twice before PUBREL: the
/// client drops the copy, and each message is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_message_resent_before_pubrec_is_stored_once() {
    let mut s = setup();
    let bundle = s.pki.client("ingest");
    let ingest = tokio::task::block_in_place(|| {
        Ingest::spawn(
            Ingest::command(&bundle, &s.broker, &s.db, "ingest-under-test")
                .args(["--topic", "exact/#@2"]),
        )
    });
    let publisher = Publisher::connect(&s.pki, &s.broker).await;

    let locker = common::SqliteLock::take(&s.db).await;
    for n in 1..=3 {
        publisher
            .publish_at("exact/t", &n.to_string(), mqtt_tls::QoS::ExactlyOnce)
            .await;
    }
    broker_logged(&s, "Sending PUBLISH to ingest-under-test (d0, q2", 3).await;
    tokio::task::block_in_place(|| s.broker.restart());
    // The broker resends all three, flagged as copies.
    broker_logged(&s, "Sending PUBLISH to ingest-under-test (d1, q2", 3).await;

    locker.release().await;
    // A last message behind the copies: once it is stored, whatever the
    // ingest was handed before it is stored too (one writer, in order).
    publisher
        .publish_at("exact/t", "4", mqtt_tls::QoS::ExactlyOnce)
        .await;
    let rows = wait_for_rows(&s.db, 4).await;
    assert_eq!(
        rows,
        [(1, false), (2, false), (3, false), (4, false)],
        "{}",
        ingest.log()
    );
    broker_logged(&s, "Received PUBCOMP from ingest-under-test", 4).await;
    assert_eq!(ingest.metric("mqtt_ingest_stored_total"), 4);
}

/// Waits until the broker's log has `needle` `count` times.
async fn broker_logged(s: &Setup, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.broker.log().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "waited for {count} of {needle:?}:\n{}",
            s.broker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the broker logged `count` PUBACKs from the ingest: what it
/// will store of the messages so far is stored.
async fn acknowledged_on_the_wire(s: &Setup, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while s
        .broker
        .log()
        .matches("Received PUBACK from ingest-under-test (")
        .count()
        < count
    {
        assert!(Instant::now() < deadline, "{}", s.broker.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ingest's PostgreSQL link is TLS, the server's certificate checked
/// against the operator's CA alone, the ingest authenticated by a
/// certificate of that CA (PostgreSQL's `cert` method, no password); a
/// server that refuses plaintext refuses `sslmode=disable`, and a remote
/// host is refused without verified TLS before anything is tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_link_is_verified_tls_with_a_client_certificate() {
    use mqtt_ingest::{NewMessage, Store};
    let pki = Pki::with_server_names(&["localhost"], &["127.0.0.1"]);
    let me = pki.client("ingest");
    // Its key for PostgreSQL readable by its owner only (refused else, as
    // libpq refuses it).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&me.key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let pg = tokio::task::block_in_place(|| {
        Postgres::start_tls(&pki.server_cert, &pki.server_key, &pki.ca_path)
    });
    pg.psql("CREATE ROLE ingest LOGIN");
    pg.psql("CREATE DATABASE messages OWNER ingest");
    let url = format!(
        "postgres://ingest@localhost:{}/messages?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        pg.port,
        pki.ca_path.display(),
        me.cert_path.display(),
        me.key_path.display()
    );
    let store = Store::open(&url).await.unwrap();
    store
        .insert_batch(&[NewMessage {
            topic: "devices/d1/t".into(),
            payload: b"over tls".to_vec().into(),
            qos: 1,
            retain: false,
            duplicate: false,
            received_at_us: 1,
        }])
        .await
        .unwrap();
    let stored = store.list(Some("devices/d1/t"), 0, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload, b"over tls");
    let plain = format!(
        "postgres://ingest@localhost:{}/messages?sslmode=disable",
        pg.port
    );
    let e = Store::open(&plain).await.unwrap_err().to_string();
    assert!(e.contains("pg_hba.conf") || e.contains("reject"), "{e}");
    let e = Store::open("postgres://ingest@db.invalid/messages")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--insecure-db") && e.contains("plaintext"),
        "{e}"
    );
}

/// A row the database refuses for good (PostgreSQL: a topic too long for
/// the btree index; SQLite: a trigger's RAISE(ABORT)) goes to
/// `dead_letters` with the database's reason, and the messages behind it
/// are stored and acknowledged: one device never stops the fleet's ingest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_is_a_dead_letter_and_the_stream_goes_on() {
    let s = setup();
    let ingest =
        tokio::task::block_in_place(|| Ingest::start(&s.pki.client("ingest"), &s.broker, &s.db));
    ingest.wait_healthy();
    // The schema exists now: a trigger refuses one topic.
    let pool = sqlx::SqlitePool::connect(&s.db.url()).await.unwrap();
    sqlx::query(
        "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.topic = 'load/poison' \
         BEGIN SELECT RAISE(ABORT, 'poisoned row'); END",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    refused_row_then_five(&s, &ingest, "load/poison", "poisoned row").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_is_a_dead_letter_and_the_stream_goes_on_postgres() {
    let s = tokio::task::block_in_place(setup_postgres);
    let ingest =
        tokio::task::block_in_place(|| Ingest::start(&s.pki.client("ingest"), &s.broker, &s.db));
    ingest.wait_healthy();
    // 3,000 characters that do not compress: over btree's 2,704-byte row.
    let mut rng = fastrand::Rng::with_seed(7);
    let long: String = (0..3000).map(|_| rng.alphanumeric()).collect();
    refused_row_then_five(&s, &ingest, &format!("load/{long}"), "index row").await;
}

async fn refused_row_then_five(s: &Setup, ingest: &Ingest, poison: &str, says: &str) {
    let publisher = Publisher::connect(&s.pki, &s.broker).await;
    publisher.publish(poison, "0").await;
    for n in 1..=5 {
        publisher.publish("load/fine", &n.to_string()).await;
    }
    let rows = wait_for_rows(&s.db, 5).await;
    assert_eq!(
        rows,
        [(1, false), (2, false), (3, false), (4, false), (5, false)]
    );
    let letters = dead_letters(&s.db).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].0.starts_with(&poison[..poison.len().min(20)]) && letters[0].2.contains(says),
        "{:?}",
        letters[0]
    );
    assert_eq!(ingest.metric("mqtt_ingest_dead_letters_total"), 1);
    // All six acknowledged on the wire, and the service is healthy.
    acknowledged_on_the_wire(s, 6).await;
    assert_eq!(ingest.get("/healthz").0, 200);
    // Its log (standard error, a pipe here) is plain text: no colour
    // escapes in a log file or the journal.
    let log = ingest.log();
    assert!(
        log.contains("dead letter") && !log.contains('\u{1b}'),
        "{log:?}"
    );
}

/// The ingest's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(ingest: &Ingest) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", ingest.pid().unwrap())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// A device sending huge QoS 0 messages cannot run the ingest out of
/// memory: with the default `--max-queued-bytes` (64 MiB), ten 100 MB
/// messages (the broker has no `max_packet_size`) are read past as too
/// large, kept as dead letters without their payload, and the ingest's peak
/// RSS stays under 256 MiB (it read several GB before). Then a hundred 2 MB
/// messages while the database is locked: those over the bound are dropped
/// and counted, the others stored whole once it is free again. The message behind
/// both bursts is stored. The bursts come from `mosquitto_pub`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_qos0_messages_keep_the_ingest_under_256_mib() {
    const MIB: u64 = 1024 * 1024;
    let s = setup();
    let ingest =
        tokio::task::block_in_place(|| Ingest::start(&s.pki.client("ingest"), &s.broker, &s.db));
    ingest.wait_healthy();
    let sender = s.pki.client("huge-sender");
    let burst = |topic: &str, size: usize, times: u32| {
        let file = s._dir.path().join(format!("{size}.bin"));
        std::fs::write(&file, vec![b'7'; size]).unwrap();
        let status = peers::mosquitto::cli("mosquitto_pub", s.broker.port, topic, 0, &sender)
            .arg("-f")
            .arg(&file)
            .args(["--repeat", &times.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::remove_file(file).unwrap();
    };
    let publisher = Publisher::connect(&s.pki, &s.broker).await;
    tokio::task::block_in_place(|| burst("load/huge", 100_000_000, 10));
    publisher.publish("load/after-huge", "1").await;
    let stored = stored_topics(&s.db, "load/after-huge").await;
    let letters = dead_letters(&s.db).await;
    assert_eq!(letters.len(), 10, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|(topic, payload, reason)| topic == "load/huge"
                && payload.is_empty()
                && reason.contains(&format!("limit of {}", 64 * MIB))),
        "{letters:?}"
    );
    assert_eq!(stored, [("load/after-huge".to_owned(), 1)]);
    let peak = peak_rss(&ingest);
    eprintln!("peak RSS after 10 x 100 MB: {} MiB", peak / MIB);
    assert!(peak < 256 * MIB, "peak RSS {} MiB", peak / MIB);

    // The database locked meanwhile: nothing stored frees the bound, so
    // exactly what fits in 64 MiB is held (33 of 2,000,008 bytes with the
    // topic) and the other 67 are dropped.
    let locker = common::SqliteLock::take(&s.db).await;
    tokio::task::block_in_place(|| burst("load/big", 2_000_000, 100));
    let deadline = Instant::now() + Duration::from_secs(60);
    while ingest.metric("mqtt_ingest_qos0_dropped_total") < 67 {
        assert!(Instant::now() < deadline, "{}", ingest.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    locker.release().await;
    publisher.publish("load/after-big", "2").await;
    let stored = stored_topics(&s.db, "load/after-big").await;
    let big: Vec<i64> = stored
        .iter()
        .filter(|(t, _)| t == "load/big")
        .map(|(_, len)| *len)
        .collect();
    assert!(big.iter().all(|len| *len == 2_000_000));
    let dropped = ingest.metric("mqtt_ingest_qos0_dropped_total");
    let kept = big.len() as u64;
    eprintln!("2 MB messages: stored {kept}, dropped {dropped}");
    assert_eq!((kept, dropped), (33, 67));
    let peak = peak_rss(&ingest);
    assert!(peak < 256 * MIB, "peak RSS {} MiB", peak / MIB);
}

/// Waits until a row on `last` is stored; returns every row's topic and
/// payload length, in order.
async fn stored_topics(db: &Db, last: &str) -> Vec<(String, i64)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let pool = sqlx::SqlitePool::connect(&db.url()).await.unwrap();
    let rows = loop {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT topic, length(payload) FROM messages ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        if rows.iter().any(|(topic, _)| topic == last) {
            break rows;
        }
        assert!(Instant::now() < deadline, "nothing on {last} stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    pool.close().await;
    rows
}
