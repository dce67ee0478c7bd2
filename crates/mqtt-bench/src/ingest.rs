//! `mqtt-bench ingest MQTT_INGEST_BIN COUNT`: the same QoS 1 stream of
//! COUNT 64-byte messages, received once by `mosquitto_sub` and once stored
//! by the release `mqtt-ingest` binary (acknowledging after each batch
//! commit into SQLite with synchronous=FULL).

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mqtt_tls::{ClientCert, ConnectOptions, MqttClient, QoS};
use verify_tests::mosquitto::{BrokerOptions, Mosquitto, Pki, mosquitto_client, tls_args};

use crate::results::Ingest;

pub(crate) fn run(bin: &Path, count: usize) -> anyhow::Result<Ingest> {
    let runtime = tokio::runtime::Runtime::new()?;
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let publisher = pki.client("bench-pub");
    let payload = vec![b'x'; 64];

    // Baseline: mosquitto_sub receiving the stream.
    let sub_bundle = pki.client("bench-sub");
    let mut sub = Command::new(mosquitto_client("mosquitto_sub"))
        .args([
            "-h",
            "localhost",
            "-p",
            &broker.port.to_string(),
            "-t",
            "bench/sub",
            "-q",
            "1",
        ])
        .args(["-C", &count.to_string(), "-W", "300"])
        .args(tls_args(&sub_bundle))
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
    let ingest = IngestProcess::start(bin, &pki.client("bench-ingest"), broker.port, &db)?;
    wait_until(&ingest.http, "/healthz", |status, _| status == 200)?;
    let started = Instant::now();
    runtime.block_on(publish(
        &publisher,
        &broker,
        "bench/ingest",
        count,
        &payload,
    ))?;
    wait_until(&ingest.http, "/metrics", |_, body| {
        metric(body, "mqtt_ingest_acknowledged_total").is_some_and(|n| n >= count as u64)
    })?;
    let stored = count as f64 / started.elapsed().as_secs_f64();
    drop(ingest);
    Ok(Ingest {
        count,
        mosquitto_sub_per_second: baseline,
        ingest_stored_per_second: stored,
        ratio: stored / baseline,
    })
}

/// A running `mqtt-ingest`, killed when dropped.
struct IngestProcess {
    child: Child,
    /// Its plain HTTP listener (`HOST:PORT`).
    http: String,
}

impl IngestProcess {
    /// Starts the `mqtt-ingest` binary `bin` on `topic` `bench/ingest` of
    /// the broker at `localhost:port` with `bundle`'s identity, storing
    /// into the SQLite file `db`, and waits for its listening address.
    fn start(bin: &Path, bundle: &ClientCert, port: u16, db: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .arg("--cert")
            .arg(&bundle.cert_path)
            .arg("--key")
            .arg(&bundle.key_path)
            .arg("--ca")
            .arg(&bundle.ca_cert_path)
            .args([
                "--host",
                "localhost",
                "--port",
                &port.to_string(),
                "--topic",
                "bench/ingest",
            ])
            .arg("--db")
            .arg(format!("sqlite://{}", db.display()))
            .args(["--listen", "127.0.0.1:0", "--client-id", "bench-ingest"])
            .env("RUST_LOG", "warn,mqtt_ingest=info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        match listening_address(&mut child) {
            Ok(http) => Ok(Self { child, http }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }
}

impl Drop for IngestProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// The address from the ingest's `listening on http://ADDR` log line.
fn listening_address(child: &mut Child) -> anyhow::Result<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .context("mqtt-ingest did not start")
}

fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::Write;
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad HTTP response")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn wait_until(addr: &str, path: &str, done: impl Fn(u16, &str) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (status, body) = http_get(addr, path)?;
        if done(status, &body) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting on {path}: {body}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A counter's value in Prometheus' text format.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_counter() {
        let text = "# TYPE mqtt_ingest_acknowledged_total counter\n\
                    mqtt_ingest_acknowledged_total 42\nmqtt_ingest_acknowledged_total_x 1\n";
        assert_eq!(metric(text, "mqtt_ingest_acknowledged_total"), Some(42));
        assert_eq!(metric(text, "missing"), None);
    }
}
