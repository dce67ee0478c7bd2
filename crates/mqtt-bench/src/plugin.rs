//! `mqtt-bench plugin COUNT CRL_ENTRIES`: what the broker plugin costs.
//! Two Mosquittos from `provision broker-config` on one CA, one loading the
//! plugin and one with Mosquitto's `acl_file` (`--without-plugin`), and the
//! same work through each: a QoS 1 stream from `mosquitto_pub -l` (a
//! device) to `mosquitto_sub` (a service), and sequential mTLS connections
//! that each make one SUBSCRIBE (the plugin reads the certificate at a
//! connection's first check). Then the cost of one decision in-process,
//! and a CRL of CRL_ENTRIES serials signed and put in the plugin broker's
//! folder while a QoS 1 stream runs: the longest pause between two
//! deliveries while the plugin reads it and reloads its broker, against
//! the longest pause before.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use mqtt_tls::{ClientCert, ConnectOptions, MqttClient, QoS};
use peers::mosquitto::{Mosquitto, free_port};
use pki_core::{CrlParams, Profile, RevocationReason, RevokedEntry, Serial};
use provision::broker::{BrokerConfig, Enforcement};
use provision::inventory::Inventory;
use provision::roles::Role;

use crate::results::Plugin;

pub(crate) fn run(count: usize, crl_entries: usize) -> anyhow::Result<Plugin> {
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    let (ca_dir, ca) = crate::lifecycle::new_ca(d)?;
    let certs = d.join("backend_certs");
    let (plugin_port, acl_port) = (free_port(), free_port());
    {
        let inventory = Inventory::open(&ca_dir)?;
        let mut locked = inventory.lock(&ca)?;
        let issue = crate::lifecycle::issue_one;
        issue(&mut locked, &certs, "broker", Profile::Server, Role::Device)?;
        issue(&mut locked, &certs, "sensor", Profile::Client, Role::Device)?;
        issue(
            &mut locked,
            &certs,
            "ingest",
            Profile::Client,
            Role::Service,
        )?;
        issue(&mut locked, &certs, "conn", Profile::Client, Role::Device)?;
        let plugin = provision::broker::default_plugin()
            .context("the broker plugin was not built beside mqtt-bench")?;
        for (out, port, enforcement) in [
            ("plugin", plugin_port, Enforcement::Plugin(plugin)),
            ("acl", acl_port, Enforcement::AclFileOnly),
        ] {
            provision::broker::write(
                &mut locked,
                &BrokerConfig {
                    server: "broker".into(),
                    certs_dir: certs.clone(),
                    out: d.join(out),
                    port,
                    bind: Some("127.0.0.1".into()),
                    enroll_port: None,
                    force: false,
                    enforcement,
                    max_packet_size: None,
                },
            )?;
        }
        provision::broker::apply(&inventory, &locked.commit()?)?;
    }
    let with_plugin = Mosquitto::with_config(&d.join("plugin/mosquitto.conf"), plugin_port);
    let with_acl = Mosquitto::with_config(&d.join("acl/mosquitto.conf"), acl_port);
    let ca_file = ca_dir.cert_path();
    let bundle = |name: &str| {
        let p = provision::layout::IdentityPaths::new(&certs, name);
        ClientCert::new(p.cert, p.key, &ca_file)
    };

    // Alternating, so that neither gets the machine's better moments.
    let plugin_qos1 = stream(plugin_port, count, &bundle)?;
    let acl_qos1 = stream(acl_port, count, &bundle)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let connects = (count / 100).clamp(20, 500);
    let conn = bundle("conn").load()?;
    let plugin_connects = runtime.block_on(connect_rate(plugin_port, &conn, connects))?;
    let acl_connects = runtime.block_on(connect_rate(acl_port, &conn, connects))?;
    drop(with_acl);

    let check_ns = check_cost();

    // A large CRL, signed and handed to the plugin's broker mid-stream.
    let mut entries = Vec::with_capacity(crl_entries);
    let now = SystemTime::now();
    for _ in 0..crl_entries {
        entries.push(RevokedEntry {
            serial: Serial::random()?,
            revoked_at: now,
            reason: RevocationReason::Superseded,
        });
    }
    let signed_at = Instant::now();
    let crl = ca.crl(
        &entries,
        &CrlParams {
            number: 1_000,
            this_update: now - Duration::from_secs(300),
            next_update: now + Duration::from_secs(86_400),
        },
    )?;
    let pem = crl.to_pem();
    let crl_sign_seconds = signed_at.elapsed().as_secs_f64();
    let crl_path = d.join("plugin/crl.pem");
    let written = pem.clone();
    let (baseline_gap, reload_gap, reloaded) = runtime.block_on(gaps_around(
        plugin_port,
        &bundle("sensor").load()?,
        &bundle("ingest").load()?,
        move || {
            let tmp = crl_path.with_extension("new");
            std::fs::write(&tmp, &written)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
            std::fs::rename(&tmp, &crl_path)
        },
        &with_plugin,
    ))?;
    Ok(Plugin {
        count,
        plugin_qos1_per_second: plugin_qos1,
        acl_file_qos1_per_second: acl_qos1,
        throughput_ratio: plugin_qos1 / acl_qos1,
        connects,
        plugin_connects_per_second: plugin_connects,
        acl_file_connects_per_second: acl_connects,
        connects_ratio: plugin_connects / acl_connects,
        check_ns,
        crl_entries,
        crl_bytes: pem.len(),
        crl_sign_seconds,
        baseline_max_gap_ms: baseline_gap.as_secs_f64() * 1e3,
        reload_max_gap_ms: reload_gap.as_secs_f64() * 1e3,
        broker_reloaded: reloaded,
    })
}

/// `mosquitto_pub -l` as the device `sensor` → `mosquitto_sub` as the
/// service `ingest`, QoS 1, 64-byte payloads: messages received per second.
fn stream(port: u16, count: usize, bundle: &dyn Fn(&str) -> ClientCert) -> anyhow::Result<f64> {
    let (received, rate) = crate::throughput::mosquitto_clients(
        port,
        ("devices/#", &bundle("ingest")),
        ("devices/sensor/x", &bundle("sensor")),
        1,
        count,
    )?;
    anyhow::ensure!(received == count, "received {received} of {count}");
    Ok(rate)
}

/// Sequential mTLS connections, each with one SUBSCRIBE granted, then a
/// DISCONNECT: connections per second.
async fn connect_rate(
    port: u16,
    identity: &mqtt_tls::TlsIdentity,
    n: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    for _ in 0..n {
        let (client, mut connection) =
            MqttClient::new(&ConnectOptions::new("localhost", port, "conn"), identity)?;
        connection.connect().await?;
        let runner = tokio::spawn(connection.run());
        client
            .subscribe("devices/conn/#", QoS::AtLeastOnce, |_m| async {
                Ok::<(), std::io::Error>(())
            })?
            .granted()
            .await?;
        client.disconnect().await?;
        let _ = runner.await;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// One decision of the plugin (a delivery's READ and a PUBLISH's WRITE,
/// half each) on the default rules, in nanoseconds.
fn check_cost() -> f64 {
    let Ok(rules) = provision::roles::AclPolicy::default().broker_rules() else {
        return f64::NAN;
    };
    let grant = rules.grant("device", "sensor-1");
    let n = 1_000_000u32;
    let started = Instant::now();
    let mut allowed = 0u32;
    for i in 0..n {
        let request = if i % 2 == 0 {
            mosquitto_auth::Request::Read("fleet/broadcast/all")
        } else {
            mosquitto_auth::Request::Write("devices/sensor-1/telemetry")
        };
        allowed += u32::from(std::hint::black_box(&grant).allows(request));
    }
    assert_eq!(allowed, n);
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

/// A QoS 1 stream (a publish every 2 ms), `swap` done after 1.5 s, going
/// on until a second after the broker logged its reload (at most 60 s):
/// the longest pause between two deliveries before the swap, and from the
/// swap to the end; and whether the broker reloaded.
async fn gaps_around(
    port: u16,
    publisher: &mqtt_tls::TlsIdentity,
    subscriber: &mqtt_tls::TlsIdentity,
    swap: impl FnOnce() -> std::io::Result<()> + Send + 'static,
    broker: &Mosquitto,
) -> anyhow::Result<(Duration, Duration, bool)> {
    let (sub, mut sub_conn) = MqttClient::new(
        &ConnectOptions::new("localhost", port, "ingest"),
        subscriber,
    )?;
    sub_conn.connect().await?;
    let sub_runner = tokio::spawn(sub_conn.run());
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    {
        let arrivals = arrivals.clone();
        sub.subscribe("devices/#", QoS::AtLeastOnce, move |_m| {
            if let Ok(mut a) = arrivals.lock() {
                a.push(Instant::now());
            }
            async { Ok::<(), std::io::Error>(()) }
        })?
        .granted()
        .await?;
    }
    let (publ, mut pub_conn) =
        MqttClient::new(&ConnectOptions::new("localhost", port, "sensor"), publisher)?;
    pub_conn.connect().await?;
    let pub_runner = tokio::spawn(pub_conn.run());
    let reloads_before = broker.log().matches("Reloading config").count();
    let started = Instant::now();
    let mut swapped_at = None;
    let mut swap = Some(swap);
    let mut swapping = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    // Until the broker has reloaded and a second more, at most 60 s.
    let mut reloaded_at: Option<Instant> = None;
    let mut looked = Instant::now();
    while started.elapsed() < Duration::from_secs(3)
        || reloaded_at.is_none_or(|at| at.elapsed() < Duration::from_secs(1))
    {
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        ticker.tick().await;
        if reloaded_at.is_none()
            && swapped_at.is_some()
            && looked.elapsed() > Duration::from_millis(50)
        {
            looked = Instant::now();
            if broker.log().matches("Reloading config").count() > reloads_before {
                reloaded_at = Some(Instant::now());
            }
        }
        if swapped_at.is_none() && started.elapsed() >= Duration::from_millis(1500) {
            // Written beside the stream, not in its way.
            if let Some(swap) = swap.take() {
                swapping = Some(std::thread::spawn(swap));
            }
            swapped_at = Some(Instant::now());
        }
        let p = publ.clone();
        tokio::spawn(async move {
            let _ = p
                .publish("devices/sensor/x", vec![b'x'; 64], QoS::AtLeastOnce, false)
                .await;
        });
    }
    if let Some(swapping) = swapping {
        swapping
            .join()
            .map_err(|_| anyhow::anyhow!("writing the CRL panicked"))??;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reloaded = reloaded_at.is_some();
    let _ = publ.disconnect().await;
    let _ = pub_runner.await;
    let _ = sub.disconnect().await;
    let _ = sub_runner.await;
    let swapped_at = swapped_at.context("the stream never reached the swap")?;
    let arrivals = arrivals
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    // A pause belongs to the part where it began.
    let max_gap = |from: Instant, to: Option<Instant>| {
        arrivals
            .windows(2)
            .filter(|w| w[0] >= from && to.is_none_or(|t| w[0] < t))
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    };
    Ok((
        max_gap(started, Some(swapped_at)),
        max_gap(swapped_at, None),
        reloaded,
    ))
}
