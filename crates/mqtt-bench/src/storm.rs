//! `mqtt-bench storm COUNT`: a fleet of COUNT devices (own certificates,
//! from `provision fleet`) connecting at once, then a broker restart.

use std::time::{Duration, Instant};

use anyhow::Context;
use mqtt_tls::{ConnectOptions, MqttClient};
use peers::mosquitto::{BrokerOptions, Mosquitto, Pki, raise_open_file_limit};

use crate::memory::rss_kb;
use crate::results::Storm;

/// A connection storm: `count` devices from `provision fleet`, each with its
/// own certificate, connect at once from this process; then the broker
/// restarts and all reconnect (backoff with full jitter).
pub(crate) fn run(count: usize) -> anyhow::Result<Storm> {
    raise_open_file_limit(3 * count as u64).map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("fleet.toml");
    std::fs::write(
        &manifest,
        format!(
            "[ca]\ndir = \"root_cert\"\ncommon_name = \"Storm Root\"\n\
             [[broker]]\nname = \"broker\"\ndns = [\"localhost\"]\n\
             [[devices]]\nprefix = \"dev-\"\ncount = {count}\n"
        ),
    )?;
    let made = provision::fleet::run(
        &manifest,
        &provision::fleet::RunOptions::default(),
        &|_, _| {},
    )?;
    let (_, broker_files) = made.brokers.first().context("the fleet made no broker")?;
    let certs = made
        .device_folders
        .first()
        .context("the fleet made no devices")?
        .clone();
    let ca = provision::ca_folder::CaDir::new(&made.ca_dir).cert_path();
    let mut broker = Mosquitto::start(
        &Pki::new(),
        &BrokerOptions {
            cafile: Some(ca.clone()),
            server: Some((broker_files.cert.clone(), broker_files.key.clone())),
            ..Default::default()
        },
    );
    let identities: Vec<_> = (1..=count)
        .map(|i| {
            let files = provision::layout::IdentityPaths::new(&certs, &format!("dev-{i}"));
            mqtt_tls::ClientCert::new(files.cert, files.key, &ca).load()
        })
        .collect::<Result<_, _>>()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let before = rss_kb()?;
    let started = Instant::now();
    let clients = runtime.block_on(async {
        let mut clients = Vec::with_capacity(count);
        for (i, identity) in identities.iter().enumerate() {
            let mut options = ConnectOptions::new("localhost", broker.port, format!("dev-{i}"));
            options.keep_alive = Duration::from_secs(600);
            let (client, mut connection) = MqttClient::new(&options, identity)?;
            clients.push(client);
            tokio::spawn(async move {
                connection.connect().await?;
                connection.run().await
            });
        }
        while !clients.iter().all(MqttClient::is_connected) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        anyhow::Ok(clients)
    })?;
    let connected_in = started.elapsed().as_secs_f64();
    let after = rss_kb()?;
    broker.restart();
    let back = Instant::now();
    runtime.block_on(async {
        while !clients.iter().all(|c| c.stats().connections >= 2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for client in &clients {
            let _ = client.disconnect().await;
        }
    });
    Ok(Storm {
        count,
        seconds_until_all_connected: connected_in,
        connects_per_second: count as f64 / connected_in,
        kb_per_connection: after.saturating_sub(before) as f64 / count as f64,
        seconds_until_all_reconnected: back.elapsed().as_secs_f64(),
    })
}
