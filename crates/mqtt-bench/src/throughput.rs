//! `mqtt-bench throughput QOS COUNT [--python PYTHON]`: MQTT over mTLS,
//! publisher to subscriber through one local Mosquitto, 64-byte payloads:
//! ours (mqtt-tls → mqtt-tls), `mosquitto_pub -l` → `mosquitto_sub`, and
//! paho-mqtt → paho-mqtt when given a Python with paho.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mqtt_tls::{ConnectOptions, MqttClient, QoS};
use peers::mosquitto::{BrokerOptions, Mosquitto, Pki, cli};

use crate::python::{self, Script, bundle_args};
use crate::results::Throughput;

/// End-to-end throughput through one broker, 64-byte payloads: our
/// publisher to our subscriber, and `mosquitto_pub -l` to `mosquitto_sub`.
/// The rate is messages received over the time from the first publish to
/// the last message received (QoS 0 may drop under load: counted as is).
pub(crate) fn run(qos: u8, count: usize, python: Option<&Path>) -> anyhow::Result<Throughput> {
    let runtime = tokio::runtime::Runtime::new()?;
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let level = QoS::try_from(qos)?;
    if level == QoS::ExactlyOnce {
        bail!("QoS 0 or 1");
    }
    let payload = vec![b'x'; 64];

    // Theirs.
    let (received, theirs) = mosquitto_clients(
        broker.port,
        ("tp/mosq", &pki.client("mosq-sub")),
        ("tp/mosq", &pki.client("mosq-pub")),
        qos,
        count,
    )?;

    // Ours.
    let ours = runtime.block_on(async {
        let sub_identity = pki.client("our-sub").load()?;
        let (sub, mut conn) = MqttClient::new(
            &ConnectOptions::new("localhost", broker.port, "our-sub"),
            &sub_identity,
        )?;
        conn.connect().await?;
        let got = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let last_at = Arc::new(std::sync::Mutex::new(Instant::now()));
        {
            let got = got.clone();
            let last_at = last_at.clone();
            sub.subscribe("tp/ours", level, move |_m| {
                got.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Ok(mut t) = last_at.lock() {
                    *t = Instant::now();
                }
                async { Ok::<(), std::io::Error>(()) }
            })?;
        }
        let runner = tokio::spawn(conn.run());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pub_identity = pki.client("our-pub").load()?;
        let (publisher, mut pconn) = MqttClient::new(
            &ConnectOptions::new("localhost", broker.port, "our-pub"),
            &pub_identity,
        )?;
        pconn.connect().await?;
        let prunner = tokio::spawn(pconn.run());
        let started = Instant::now();
        let permits = Arc::new(tokio::sync::Semaphore::new(200));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..count {
            let permit = permits.clone().acquire_owned().await?;
            let p = publisher.clone();
            let payload = payload.clone();
            tasks.spawn(async move {
                let r = p.publish("tp/ours", payload, level, false).await;
                drop(permit);
                r
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        // Wait for the stream to end: everything, or a second of silence.
        loop {
            let n = got.load(std::sync::atomic::Ordering::Relaxed);
            let idle = last_at.lock().map(|t| t.elapsed()).unwrap_or_default();
            if n >= count || (n > 0 && idle > Duration::from_secs(1)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let n = got.load(std::sync::atomic::Ordering::Relaxed);
        let end = last_at
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|_| Instant::now());
        let rate = n as f64 / end.duration_since(started).as_secs_f64();
        publisher.disconnect().await?;
        sub.disconnect().await?;
        let _ = prunner.await;
        let _ = runner.await;
        anyhow::Ok((rate, n))
    })?;
    let paho_per_second = match python {
        Some(python) => Some(python::per_second(
            Script::Paho,
            Script::Paho
                .command(python)
                .arg("throughput")
                .arg(broker.port.to_string())
                .args(bundle_args(&pki.client("paho")))
                .arg(qos.to_string())
                .arg(count.to_string()),
        )?),
        None => None,
    };
    Ok(Throughput {
        qos,
        count,
        paho_per_second,
        ours_per_second: ours.0,
        ours_received: ours.1,
        mosquitto_clients_per_second: theirs,
        mosquitto_received: received,
        ratio: ours.0 / theirs,
    })
}

/// `mosquitto_pub -l` (`publisher`: its topic and bundle) → `mosquitto_sub`
/// (`subscriber`: its filter and bundle) at `qos` through the broker on
/// `port`, `count` 64-byte messages: how many arrived, and their rate over
/// the time from the first publish to the last message received.
pub(crate) fn mosquitto_clients(
    port: u16,
    subscriber: (&str, &mqtt_tls::ClientCert),
    publisher: (&str, &mqtt_tls::ClientCert),
    qos: u8,
    count: usize,
) -> anyhow::Result<(usize, f64)> {
    let mut sub = cli("mosquitto_sub", port, subscriber.0, qos, subscriber.1)
        .args(["-C", &count.to_string(), "-W", "120"])
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut publishing = cli("mosquitto_pub", port, publisher.0, qos, publisher.1)
        .arg("-l")
        .stdin(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = publishing.stdin.take().context("no stdin")?;
        let line = format!("{}\n", "x".repeat(64));
        for _ in 0..count {
            stdin.write_all(line.as_bytes())?;
        }
    }
    let mut received = 0usize;
    let mut last = started.elapsed();
    if let Some(out) = sub.stdout.take() {
        use std::io::BufRead;
        for _ in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            received += 1;
            last = started.elapsed();
        }
    }
    let _ = sub.wait();
    let _ = publishing.wait();
    Ok((received, received as f64 / last.as_secs_f64()))
}
