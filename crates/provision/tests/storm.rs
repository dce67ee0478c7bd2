//! A fleet connection storm: 1,000 devices, each with its own certificate
//! from `provision fleet`, connect over mTLS to one Mosquitto at once from
//! one process; then the broker goes away and comes back, and all of them
//! reconnect, with their attempts spread over time by the backoff's jitter.
//!
//! While the broker is down a plain TCP listener takes its port and records
//! when each reconnect attempt arrives: clients reconnecting in step would
//! land in one instant; ours spread over the backoff window.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ok;
use mqtt_tls::{ClientCert, ConnectOptions, MqttClient};
use peers::mosquitto::{BrokerOptions, Mosquitto, Pki, raise_open_file_limit};

const DEVICES: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_devices_connect_at_once_and_come_back_after_a_broker_restart() {
    // 1,000 client sockets here and 1,000 in the broker we start.
    raise_open_file_limit(3 * DEVICES as u64).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("fleet.toml"),
        format!(
            "[ca]\ndir = \"root_cert\"\ncommon_name = \"Storm Root\"\n\
             [[broker]]\nname = \"broker\"\ndns = [\"localhost\"]\nip = [\"127.0.0.1\"]\n\
             [[devices]]\nprefix = \"dev-\"\ncount = {DEVICES}\n"
        ),
    )
    .unwrap();
    tokio::task::block_in_place(|| ok(d, &["fleet", "fleet.toml"]));
    let certs = d.join("backend_certs");
    let ca = d.join("root_cert/root_ca_cert.pem");
    let mut broker = tokio::task::block_in_place(|| {
        Mosquitto::start(
            &Pki::new(),
            &BrokerOptions {
                cafile: Some(ca.clone()),
                server: Some((certs.join("broker_cert.pem"), certs.join("broker.key"))),
                ..Default::default()
            },
        )
    });
    let identities: Vec<_> = (1..=DEVICES)
        .map(|i| {
            ClientCert::new(
                certs.join(format!("dev-{i}_cert.pem")),
                certs.join(format!("dev-{i}.key")),
                &ca,
            )
            .load()
            .unwrap()
        })
        .collect();

    // All at once.
    let started = Instant::now();
    let mut clients = Vec::new();
    let mut connecting = tokio::task::JoinSet::new();
    for (i, identity) in identities.iter().enumerate() {
        let mut options = ConnectOptions::new("localhost", broker.port, format!("dev-{}", i + 1));
        options.keep_alive = Duration::from_secs(120);
        let (client, mut connection) = MqttClient::new(&options, identity).unwrap();
        clients.push(client);
        connecting.spawn(async move {
            connection.connect().await.unwrap();
            connection.run().await
        });
    }
    let all_connected = wait_until(|| clients.iter().all(MqttClient::is_connected)).await;
    let storm = all_connected - started;
    println!(
        "{DEVICES} devices connected in {:.2} s ({:.0} connections/s)",
        storm.as_secs_f64(),
        DEVICES as f64 / storm.as_secs_f64()
    );

    // The broker goes away; a plain listener on its port records when the
    // reconnect attempts arrive (and closes each at once).
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let down_for = Duration::from_millis(1500);
    let down_at = tokio::task::block_in_place(|| {
        broker.stop();
        Instant::now()
    });
    let listener = TcpListener::bind(("127.0.0.1", broker.port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let recorder = {
        let attempts = attempts.clone();
        std::thread::spawn(move || {
            while down_at.elapsed() < down_for {
                match listener.accept() {
                    Ok((socket, _)) => {
                        attempts.lock().unwrap().push(down_at.elapsed());
                        drop(socket);
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        })
    };
    tokio::task::block_in_place(|| recorder.join().unwrap());
    let back_at = tokio::task::block_in_place(|| {
        broker.restart();
        Instant::now()
    });
    let all_back = wait_until(|| clients.iter().all(|c| c.stats().connections >= 2)).await;
    println!(
        "all {DEVICES} reconnected {:.2} s after the broker was back",
        (all_back - back_at).as_secs_f64()
    );

    // How the attempts spread while the broker was down, in 50 ms buckets.
    let attempts = attempts.lock().unwrap().clone();
    let mut buckets = vec![0usize; (down_for.as_millis() / 50) as usize + 1];
    for a in &attempts {
        buckets[(a.as_millis() / 50) as usize] += 1;
    }
    println!(
        "{} attempts while down, per 50 ms: {buckets:?}",
        attempts.len()
    );
    assert!(
        attempts.len() >= DEVICES,
        "every client tried while the broker was down ({} attempts)",
        attempts.len()
    );
    // The first wave: clients reconnecting in step would all arrive within
    // a few milliseconds; with full jitter over the first 250 ms window the
    // middle 80% of the first 1,000 arrivals span about 200 ms.
    let mut first = attempts.clone();
    first.sort();
    first.truncate(DEVICES);
    let spread = first[DEVICES * 9 / 10] - first[DEVICES / 10];
    println!("the middle 80% of the first {DEVICES} attempts spread over {spread:?}");
    assert!(
        spread >= Duration::from_millis(100),
        "the first {DEVICES} attempts arrived within {spread:?} of each other: not spread"
    );
    // The backoff bounds the attempts: no client hammers a dead broker.
    let failed: u64 = clients.iter().map(|c| c.stats().failed_attempts).sum();
    assert!(
        failed < 10 * DEVICES as u64,
        "{failed} failed attempts for {DEVICES} clients in {down_for:?}"
    );

    for client in &clients {
        let _ = client.disconnect().await;
    }
    while connecting.join_next().await.is_some() {}
}

/// Polls `done` every 5 ms for up to two minutes; returns when it held.
async fn wait_until(done: impl Fn() -> bool) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Instant::now()
}
