//! The soak: the ingest under a steady QoS 1 stream while faults come one
//! after another, against a Mosquitto left at its defaults
//! (`max_queued_messages 1000`, `max_inflight_messages 20`) with
//! persistence.
//!
//! Faults, in a shuffled rotation: the link between the ingest and the
//! broker cut (by a proxy), the broker restarted, the database locked for a
//! while (every store fails and is retried), and once the ingest SIGKILLed
//! and started again. One message in a hundred is 200 KiB, over the
//! ingest's `--max-packet-size`: those must end up as dead letters.
//!
//! At the end, every message the publisher saw acknowledged is in
//! `messages` (small ones) or `dead_letters` (large ones, and nothing
//! else), and the ingest's memory stayed bounded.
//!
//! `cargo xtask test` runs it for 20 s; `cargo xtask soak --minutes N` for
//! longer (it sets `MQTT_MTLS_SOAK_SECONDS`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_tls::{ConnectOptions, MqttClient, QoS};
use peers::mosquitto::{BrokerOptions, Mosquitto, Pki};
use peers::proxy::FaultProxy;
use sqlx::Row;

mod common;

use common::{Db, Ingest, IngestCommands};

/// Messages a second.
const RATE: u64 = 100;
/// Every this many messages, one is large.
const LARGE_EVERY: u32 = 100;
const LARGE: usize = 200 * 1024;
/// The ingest reads messages up to this size; the large ones are over it.
const MAX_PACKET: usize = 150 * 1024;
/// The ingest's resident memory must stay under this.
const MAX_RSS_KB: u64 = 256 * 1024;

fn is_large(n: u32) -> bool {
    n % LARGE_EVERY == LARGE_EVERY - 1
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    CutLink,
    RestartBroker,
    LockDatabase,
    KillIngest,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let seconds: u64 = std::env::var("MQTT_MTLS_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    println!("soak: {seconds} s, seed {seed}");

    let pki = Pki::new();
    let mut broker = Mosquitto::start(
        &pki,
        &BrokerOptions {
            persistence: true,
            mosquitto_defaults: true,
            ..BrokerOptions::default()
        },
    );
    let proxy = FaultProxy::start(broker.port).await;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::Sqlite(dir.path().join("soak.db"));
    let bundle = pki.client("ingest");
    let start_ingest = || {
        let ingest = Ingest::spawn(
            Ingest::command_at(&bundle, proxy.port, &db, "soak-ingest")
                .args(["--topic", "soak/#"])
                .args(["--max-packet-size", &MAX_PACKET.to_string()]),
        );
        ingest.wait_healthy();
        ingest
    };
    let mut ingest = tokio::task::block_in_place(start_ingest);

    // The publisher: its own link to the broker, a persistent session.
    let identity = pki.client("soak-publisher").load().unwrap();
    let mut options = ConnectOptions::new("localhost", broker.port, "soak-publisher");
    options.clean_session = false;
    options.reconnect.initial = Duration::from_millis(50);
    options.reconnect.max = Duration::from_millis(500);
    let (publisher, mut connection) = MqttClient::new(&options, &identity).unwrap();
    connection.connect().await.unwrap();
    let publisher_task = tokio::spawn(connection.run());
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let publishing = Arc::new(AtomicBool::new(true));
    let stream = {
        let publisher = publisher.clone();
        let acked = acked.clone();
        let publishing = publishing.clone();
        tokio::spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(50));
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            let mut tasks = tokio::task::JoinSet::new();
            let mut n: u32 = 0;
            while publishing.load(Ordering::SeqCst) {
                tick.tick().await;
                let permit = permits.clone().acquire_owned().await.unwrap();
                let publisher = publisher.clone();
                let acked = acked.clone();
                tasks.spawn(async move {
                    let payload = if is_large(n) {
                        vec![b'L'; LARGE]
                    } else {
                        n.to_string().into_bytes()
                    };
                    // Retried until the broker acknowledges it (a publish
                    // the broker lost with its session fails and is sent
                    // again, at least once).
                    for _ in 0..200 {
                        let sent = publisher
                            .publish(
                                &format!("soak/{n}"),
                                payload.clone(),
                                QoS::AtLeastOnce,
                                false,
                            )
                            .await;
                        if sent.is_ok() {
                            acked.lock().unwrap().insert(n);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    drop(permit);
                });
                n += 1;
            }
            while tasks.join_next().await.is_some() {}
            n
        })
    };

    // Memory of the ingest, sampled as it runs.
    let peak_rss = Arc::new(Mutex::new(0u64));
    let ingest_pid = Arc::new(Mutex::new(ingest.pid()));
    let sampler = {
        let peak_rss = peak_rss.clone();
        let ingest_pid = ingest_pid.clone();
        tokio::spawn(async move {
            loop {
                let pid = *ingest_pid.lock().unwrap();
                if let Some(kb) = pid.and_then(rss_kb) {
                    let mut peak = peak_rss.lock().unwrap();
                    *peak = (*peak).max(kb);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The faults: a shuffled rotation, one every few seconds, the SIGKILL
    // once, halfway.
    let mut rotation = vec![Fault::CutLink, Fault::RestartBroker, Fault::LockDatabase];
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let gap = Duration::from_millis(2_500);
    let mut killed = false;
    let mut injected: BTreeMap<&'static str, u32> = BTreeMap::new();
    while Instant::now() + gap < end {
        tokio::time::sleep(gap.mul_f64(0.5 + rng.f64())).await;
        let fault = if !killed && started.elapsed() * 2 >= end - started {
            killed = true;
            Fault::KillIngest
        } else {
            if rotation.is_empty() {
                rotation = vec![Fault::CutLink, Fault::RestartBroker, Fault::LockDatabase];
            }
            rotation.remove(rng.usize(..rotation.len()))
        };
        match fault {
            Fault::CutLink => {
                proxy.cut();
                *injected.entry("link cuts").or_default() += 1;
            }
            Fault::RestartBroker => {
                tokio::task::block_in_place(|| broker.restart());
                *injected.entry("broker restarts").or_default() += 1;
            }
            Fault::LockDatabase => {
                let pool = sqlx::SqlitePool::connect(&db.url()).await.unwrap();
                let mut locker = pool.acquire().await.unwrap();
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut *locker)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(1_000)).await;
                sqlx::query("COMMIT").execute(&mut *locker).await.unwrap();
                drop(locker);
                pool.close().await;
                *injected.entry("database locks").or_default() += 1;
            }
            Fault::KillIngest => {
                tokio::task::block_in_place(|| ingest.kill9());
                ingest = tokio::task::block_in_place(start_ingest);
                *ingest_pid.lock().unwrap() = ingest.pid();
                *injected.entry("ingest SIGKILLs").or_default() += 1;
            }
        }
    }
    tokio::time::sleep_until(end.into()).await;
    publishing.store(false, Ordering::SeqCst);
    let published = tokio::time::timeout(Duration::from_secs(60), stream)
        .await
        .expect("the publisher did not finish")
        .unwrap();
    let acked = acked.lock().unwrap().clone();
    // Faults may cost a publish its acknowledgement now and then, not the
    // stream: a run where most publishes failed proves nothing.
    assert!(
        acked.len() as u64 * 10 >= u64::from(published) * 9,
        "only {} of {published} publishes acknowledged",
        acked.len()
    );

    // Everything acknowledged arrives: small ones in messages, large ones
    // in dead_letters.
    let want_small: BTreeSet<u32> = acked.iter().copied().filter(|n| !is_large(*n)).collect();
    let want_large: BTreeSet<u32> = acked.iter().copied().filter(|n| is_large(*n)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (stored, copies, letters) = loop {
        let (stored, copies) = stored_numbers(&db).await;
        let letters = dead_letter_numbers(&db).await;
        let have_small: BTreeSet<u32> = stored.keys().copied().collect();
        let have_large: BTreeSet<u32> = letters.keys().copied().collect();
        if want_small.is_subset(&have_small) && want_large.is_subset(&have_large) {
            break (stored, copies, letters);
        }
        if Instant::now() > deadline {
            let lost_small: Vec<_> = want_small.difference(&have_small).take(20).collect();
            let lost_large: Vec<_> = want_large.difference(&have_large).take(20).collect();
            let broker_log = broker.log();
            let dropped = broker_log
                .lines()
                .filter(|l| l.contains("dropped"))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "acknowledged but not stored: {} small (first {lost_small:?}), {} large (first \
                 {lost_large:?}); faults {injected:?}; broker lines about dropping:\n{dropped}\n\
                 ingest log:\n{}",
                want_small.difference(&have_small).count(),
                want_large.difference(&have_large).count(),
                ingest.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Nothing else in either table: no large message stored as a row, no
    // small one as a dead letter, every dead letter for its size.
    assert!(stored.keys().all(|n| !is_large(*n)));
    for (n, reason) in &letters {
        assert!(is_large(*n), "message {n} is a dead letter: {reason}");
        assert!(
            reason.contains(&format!("over the incoming limit of {MAX_PACKET} bytes")),
            "{reason}"
        );
    }
    assert!(stored.keys().chain(letters.keys()).all(|n| *n < published));
    let peak = *peak_rss.lock().unwrap();
    sampler.abort();
    assert!(
        peak < MAX_RSS_KB,
        "the ingest's resident memory peaked at {peak} KiB"
    );
    println!(
        "soak: {published} published, {} acknowledged, {} stored ({copies} copies of a stored \
         message), {} dead letters (all 200 KiB), faults {injected:?}, ingest peak RSS {} MiB",
        acked.len(),
        stored.len(),
        letters.len(),
        peak / 1024
    );
    publisher.disconnect().await.unwrap();
    let _ = publisher_task.await;
}

/// The ingest's resident set size in KiB.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The numbers in `messages` (from the topic `soak/N`), with how often each
/// is stored, and how many extra copies there are in all.
async fn stored_numbers(db: &Db) -> (BTreeMap<u32, usize>, usize) {
    let pool = sqlx::SqlitePool::connect(&db.url()).await.unwrap();
    let rows = sqlx::query("SELECT topic, payload FROM messages")
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
    pool.close().await;
    let mut counts = BTreeMap::new();
    for row in rows {
        let n = number(&row.get::<String, _>("topic"));
        let payload: Vec<u8> = row.get("payload");
        assert_eq!(payload, n.to_string().into_bytes(), "payload of {n}");
        *counts.entry(n).or_insert(0) += 1;
    }
    let copies = counts.values().map(|c| c - 1).sum();
    (counts, copies)
}

/// The numbers in `dead_letters`, with their reasons.
async fn dead_letter_numbers(db: &Db) -> BTreeMap<u32, String> {
    let pool = sqlx::SqlitePool::connect(&db.url()).await.unwrap();
    let rows = sqlx::query("SELECT topic, reason FROM dead_letters")
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
    pool.close().await;
    rows.iter()
        .map(|r| (number(&r.get::<String, _>("topic")), r.get("reason")))
        .collect()
}

fn number(topic: &str) -> u32 {
    topic
        .strip_prefix("soak/")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected topic {topic}"))
}
