//! `mqtt-bench ingest MQTT_INGEST_BIN COUNT`: the same QoS 1 stream of
//! COUNT 64-byte messages, received once by `mosquitto_sub` and once stored
//! by the release `mqtt-ingest` binary (acknowledging after each batch
//! commit into SQLite with synchronous=FULL).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use mqtt_tls::{ClientCert, ConnectOptions, MqttClient, QoS};
use peers::mosquitto::{BrokerOptions, Mosquitto, Pki, cli};

use crate::results::Ingest;

pub(crate) fn run(bin: &Path, count: usize) -> anyhow::Result<Ingest> {
    let runtime = tokio::runtime::Runtime::new()?;
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let publisher = pki.client("bench-pub");
    let payload = vec![b'x'; 64];

    // Baseline: mosquitto_sub receiving the stream.
    let sub_bundle = pki.client("bench-sub");
    let mut sub = cli("mosquitto_sub", broker.port, "bench/sub", 1, &sub_bundle)
        .args(["-C", &count.to_string(), "-W", "300"])
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    runtime.block_on(publish(&publisher, &broker, "bench/sub", count, &payload))?;
    sub.wait()?;
    let baseline = count as f64 / started.elapsed().as_secs_f64();

    // mqtt-ingest storing the same stream.
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.db");
    // The process harness the ingest's own suites use; it waits until
    // `/healthz` answers 200.
    let mut command = peers::ingest::Ingest::command_line(
        bin,
        &pki.client("bench-ingest"),
        broker.port,
        &peers::ingest::Db::Sqlite(db),
        "bench-ingest",
        "bench/ingest",
        "127.0.0.1:0",
    );
    let ingest = peers::ingest::Ingest::spawn(command.env("RUST_LOG", "warn,mqtt_ingest=info"));
    let started = Instant::now();
    runtime.block_on(publish(
        &publisher,
        &broker,
        "bench/ingest",
        count,
        &payload,
    ))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while ingest.metric("mqtt_ingest_acknowledged_total") < count as u64 {
        if Instant::now() > deadline {
            bail!("mqtt-ingest did not acknowledge {count} messages within 300 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let stored = count as f64 / started.elapsed().as_secs_f64();
    // Where a message waits: how many commits, of how many messages, each
    // taking how long.
    let batches = ingest.metric("mqtt_ingest_batch_size_count");
    let batched = ingest.metric_f64("mqtt_ingest_batch_size_sum");
    let commit_seconds = ingest.metric_f64("mqtt_ingest_store_seconds_sum");
    drop(ingest);
    Ok(Ingest {
        count,
        mosquitto_sub_per_second: baseline,
        ingest_stored_per_second: stored,
        ratio: stored / baseline,
        batches: Some(batches),
        mean_batch: Some(batched / batches.max(1) as f64),
        mean_commit_ms: Some(commit_seconds * 1e3 / batches.max(1) as f64),
        runs: None,
    })
}

/// Publishes `count` QoS 1 messages with up to 200 in flight.
async fn publish(
    bundle: &ClientCert,
    broker: &Mosquitto,
    topic: &str,
    count: usize,
    payload: &[u8],
) -> anyhow::Result<()> {
    let identity = bundle.load()?;
    let (client, mut connection) = MqttClient::new(
        &ConnectOptions::new("localhost", broker.port, format!("pub-{topic}")),
        &identity,
    )?;
    connection.connect().await?;
    let runner = tokio::spawn(connection.run());
    let permits = Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let permit = permits.clone().acquire_owned().await?;
        let client = client.clone();
        let topic = topic.to_owned();
        let payload = payload.to_vec();
        tasks.spawn(async move {
            let r = client
                .publish(&topic, payload, QoS::AtLeastOnce, false)
                .await;
            drop(permit);
            r
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    client.disconnect().await?;
    let _ = runner.await;
    Ok(())
}
