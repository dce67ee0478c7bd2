//! mTLS connections: `mqtt-bench connects COUNT --python PYTHON`
//! (connections per second: ours one after another and 100 at once, Python's
//! `ssl` and paho-mqtt one after another) and `mqtt-bench idle COUNT`
//! (memory per idle connection).

use std::path::Path;
use std::time::{Duration, Instant};

use mqtt_tls::{ConnectOptions, MqttClient};
use peers::mosquitto::{BrokerOptions, Mosquitto, Pki};

use crate::memory::rss_kb;
use crate::python::{self, Script, bundle_args};
use crate::results::{Connects, Idle};

/// Connections per second, `count` of them one after another as
/// `identity` against the broker on `port` (connect, CONNACK, DISCONNECT on
/// the wire; each client a TLS configuration of its own, so each a full
/// handshake), client ids `PREFIX-N`.
pub(crate) async fn one_after_another(
    port: u16,
    identity: &mqtt_tls::TlsIdentity,
    prefix: &str,
    count: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    for i in 0..count {
        let (client, mut conn) = MqttClient::new(
            &ConnectOptions::new("localhost", port, format!("{prefix}-{i}")),
            identity,
        )?;
        conn.connect().await?;
        let runner = tokio::spawn(conn.run());
        client.disconnect().await?;
        let _ = runner.await;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Connections per second: ours one after another (connect, CONNACK,
/// DISCONNECT on the wire), ours 100 at once each with its own certificate,
/// and Python's `ssl` module doing the same handshake and packets.
pub(crate) fn run(count: usize, python: &Path) -> anyhow::Result<Connects> {
    let runtime = tokio::runtime::Runtime::new()?;
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let bundle = pki.client("connector");
    let identity = bundle.load()?;
    let sequential = runtime.block_on(one_after_another(broker.port, &identity, "seq", count))?;
    let identities: Vec<_> = (0..100)
        .map(|i| pki.client(&format!("conc-{i}")).load())
        .collect::<Result<_, _>>()?;
    let concurrent = runtime.block_on(async {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, identity) in identities.into_iter().enumerate() {
            let port = broker.port;
            tasks.spawn(async move {
                let (client, mut conn) = MqttClient::new(
                    &ConnectOptions::new("localhost", port, format!("conc-{i}")),
                    &identity,
                )?;
                conn.connect().await?;
                let runner = tokio::spawn(conn.run());
                client.disconnect().await?;
                let _ = runner.await;
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        anyhow::Ok(100.0 / started.elapsed().as_secs_f64())
    })?;
    let python_ssl_per_second = python::per_second(
        Script::Connects,
        Script::Connects
            .command(python)
            .arg(broker.port.to_string())
            .args(bundle_args(&bundle))
            .arg(count.to_string()),
    )?;
    let paho_per_second = python::per_second(
        Script::Paho,
        Script::Paho
            .command(python)
            .arg("connects")
            .arg(broker.port.to_string())
            .args(bundle_args(&bundle))
            .arg(count.to_string()),
    )?;
    Ok(Connects {
        count,
        ours_sequential_per_second: sequential,
        ours_100_concurrent_per_second: concurrent,
        python_ssl_per_second,
        paho_per_second,
        ratio_vs_python: sequential / python_ssl_per_second,
    })
}
/// Memory per idle mTLS connection: `count` clients, each with its own
/// certificate, connected from this process; resident memory before and
/// after, divided by `count`.
pub(crate) fn idle(count: usize) -> anyhow::Result<Idle> {
    let runtime = tokio::runtime::Runtime::new()?;
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let identities: Vec<_> = (0..count)
        .map(|i| pki.client(&format!("idle-{i}")).load())
        .collect::<Result<_, _>>()?;
    let before = rss_kb()?;
    let clients = runtime.block_on(async {
        let mut clients = Vec::with_capacity(count);
        for (i, identity) in identities.iter().enumerate() {
            let mut options = ConnectOptions::new("localhost", broker.port, format!("idle-{i}"));
            options.keep_alive = Duration::from_secs(600);
            let (client, mut conn) = MqttClient::new(&options, identity)?;
            conn.connect().await?;
            let runner = tokio::spawn(conn.run());
            clients.push((client, runner));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        anyhow::Ok(clients)
    })?;
    let after = rss_kb()?;
    let connected = clients.iter().filter(|(c, _)| c.is_connected()).count();
    runtime.block_on(async {
        for (client, runner) in clients {
            let _ = client.disconnect().await;
            let _ = runner.await;
        }
    });
    Ok(Idle {
        count,
        connected,
        kb_per_connection: (after.saturating_sub(before)) as f64 / count as f64,
    })
}
