//! `mqtt-bench lifecycle COUNT`: COUNT devices enroll at once from one
//! claim through the enrollment broker and connect to the main broker with
//! their new identities; then all COUNT renew at once while each publishes
//! QoS 1 messages, and a service counts what arrived. `provision serve`
//! runs in-process against two real Mosquittos with the generated
//! configuration and ACLs.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use mqtt_tls::lifecycle::{Enrollment, RenewOptions, Renewer, enroll};
use mqtt_tls::{ClientCert, ConnectOptions, MqttClient, QoS};
use peers::mosquitto::{Mosquitto, free_port, raise_open_file_limit};
use pki_core::{DnsName, KeyType, Profile};
use provision::ca_folder::CaDir;
use provision::inventory::Inventory;
use provision::ops::{CsrRequest, InitCa, IssueRequest, SubjectOptions, init_ca, issue};
use provision::roles::Role;
use provision::serve::{Broker, ServeOptions, serve};

use crate::results::Lifecycle;

/// A new CA (P-256, ten years) in `d/root_cert`, `d` made readable by the
/// broker's user (Mosquitto started as root reads its files as its own).
pub(crate) fn new_ca(
    d: &std::path::Path,
) -> anyhow::Result<(CaDir, pki_core::CertificateAuthority)> {
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    let ca_dir = CaDir::new(d.join("root_cert"));
    let ca = init_ca(
        &ca_dir,
        &InitCa {
            subject: SubjectOptions::default(),
            key_type: KeyType::P256,
            days: 3650,
            passphrase: None,
            token: None,
            force: false,
        },
    )?;
    Ok((ca_dir, ca))
}

/// Issues `name` with `role` (server for the broker) into `out`.
pub(crate) fn issue_one(
    locked: &mut provision::inventory::LockedCa<'_>,
    out: &std::path::Path,
    name: &str,
    profile: Profile,
    role: Role,
) -> anyhow::Result<()> {
    issue(
        locked,
        &IssueRequest {
            identity: CsrRequest {
                name: provision::files::Name::new(name)?,
                subject: SubjectOptions::default(),
                key_type: KeyType::P256,
                dns: if profile == Profile::Server {
                    vec!["localhost".parse::<DnsName>()?]
                } else {
                    Vec::new()
                },
                ip: Vec::new(),
                out: out.to_owned(),
                force: false,
                token: None,
            },
            profile,
            days: 365,
            role,
        },
    )?;
    Ok(())
}

pub(crate) fn run(count: usize) -> anyhow::Result<Lifecycle> {
    raise_open_file_limit(6 * count as u64 + 256).map_err(anyhow::Error::msg)?;
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    let (ca_dir, ca) = new_ca(d)?;
    let certs = d.join("backend_certs");
    let (main_port, enroll_port) = (free_port(), free_port());
    {
        let inventory = Inventory::open(&ca_dir)?;
        let mut locked = inventory.lock(&ca)?;
        issue_one(&mut locked, &certs, "broker", Profile::Server, Role::Device)?;
        issue_one(
            &mut locked,
            &certs,
            "ca-1",
            Profile::Client,
            Role::CaService,
        )?;
        issue_one(
            &mut locked,
            &certs,
            "ingest",
            Profile::Client,
            Role::Service,
        )?;
        issue_one(&mut locked, &certs, "factory", Profile::Client, Role::Claim)?;
        let policy = provision::enrollment::claim_policy(
            Vec::new(),
            Some("dev-*".into()),
            None,
            SystemTime::now() + Duration::from_secs(86_400),
        )?;
        locked.set_claim_policy("factory", &policy)?;
        provision::broker::write(
            &mut locked,
            &provision::broker::BrokerConfig {
                server: "broker".into(),
                certs_dir: certs.clone(),
                out: d.join("broker"),
                port: main_port,
                bind: Some("127.0.0.1".into()),
                enroll_port: Some(enroll_port),
                force: false,
                // The broker plugin, as users run it (built beside us).
                enforcement: provision::broker::Enforcement::Plugin(
                    provision::broker::default_plugin().ok_or_else(|| {
                        anyhow::anyhow!("the broker plugin was not built beside mqtt-bench")
                    })?,
                ),
                max_packet_size: None,
            },
        )?;
        provision::broker::apply(&inventory, &locked.commit()?)?;
    }
    let main = Mosquitto::with_config(&d.join("broker/mosquitto.conf"), main_port);
    let enroll_broker = Mosquitto::with_config(&d.join("broker/enroll.conf"), enroll_port);
    let ca_file = ca_dir.cert_path();
    let files = |name: &str, dir: &std::path::Path| {
        let p = provision::layout::IdentityPaths::new(dir, name);
        ClientCert::new(p.cert, p.key, &ca_file)
    };
    let service = files("ca-1", &certs).load()?;
    let claim = files("factory", &certs).load()?;
    let ingest = files("ingest", &certs).load()?;
    let devices_dir = d.join("devices");

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            ServeOptions {
                ca_dir: ca_dir.clone(),
                ca,
                identity: service,
                broker: Broker {
                    host: "localhost".into(),
                    port: main_port,
                },
                enroll_broker: Some(Broker {
                    host: "localhost".into(),
                    port: enroll_port,
                }),
                share_group: "pki".into(),
                policy: provision::enrollment::Policy { days: 30 },
                grace: Duration::from_secs(600),
                http: None,
                shutdown_timeout: Duration::from_secs(10),
            },
            async {
                let _ = stop_rx.await;
            },
        ));
        let enrollment = |name: String| {
            let mut e = Enrollment::new(
                ConnectOptions::new("localhost", enroll_port, "x"),
                name,
                &devices_dir,
                &ca_file,
            );
            e.timeout = Duration::from_secs(120);
            e
        };
        // The service is up once a first device got through.
        enroll(&claim, &enrollment("dev-warmup".into()))
            .await
            .context("the warm-up enrollment")?;

        // 1. COUNT devices enroll at once, then connect with what they got.
        let started = Instant::now();
        let claim = Arc::new(claim);
        let tasks: Vec<_> = (0..count)
            .map(|i| {
                let claim = claim.clone();
                let request = enrollment(format!("dev-{i}"));
                tokio::spawn(async move { enroll(&claim, &request).await })
            })
            .collect();
        let mut bundles = Vec::with_capacity(count);
        for t in tasks {
            bundles.push(t.await??);
        }
        let enrolled_in = started.elapsed().as_secs_f64();
        let mut clients = Vec::with_capacity(count);
        for (i, bundle) in bundles.iter().enumerate() {
            let mut options = ConnectOptions::new("localhost", main_port, format!("dev-{i}"));
            options.clean_session = false;
            options.keep_alive = Duration::from_secs(600);
            let (client, mut connection) = MqttClient::new(&options, &bundle.load()?)?;
            clients.push(client);
            tokio::spawn(async move {
                connection.connect().await?;
                connection.run().await
            });
        }
        while !clients.iter().all(MqttClient::is_connected) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let connected_in = started.elapsed().as_secs_f64();

        // 2. A service counts every device's messages; each device
        // publishes every 200 ms; all renew at once.
        let mut options = ConnectOptions::new("localhost", main_port, "ingest");
        options.clean_session = false;
        // Right after 1,000 handshakes on 2 cores the broker can take more
        // than the default 5 s to answer one more (a full run once failed
        // here with "Network timeout"); the figures do not time this.
        options.connect_timeout = Duration::from_secs(30);
        let (reader, mut connection) = MqttClient::new(&options, &ingest)?;
        connection.connect().await?;
        let reader_runner = tokio::spawn(connection.run());
        let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let sink = seen.clone();
        reader
            .subscribe("devices/+/data", QoS::AtLeastOnce, move |m| {
                if let Ok(mut s) = sink.lock() {
                    s.insert(m.payload.to_vec());
                }
                async { Ok::<(), std::io::Error>(()) }
            })?
            .granted()
            .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let mut publishers = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            let (client, stop, published) = (client.clone(), stop.clone(), published.clone());
            publishers.push(tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let payload = format!("{i}/{seq}");
                    if client
                        .publish(
                            &format!("devices/dev-{i}/data"),
                            payload,
                            QoS::AtLeastOnce,
                            false,
                        )
                        .await
                        .is_ok()
                    {
                        published.fetch_add(1, Ordering::SeqCst);
                    }
                    seq += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let renew_started = Instant::now();
        let renewals: Vec<_> = clients
            .iter()
            .zip(&bundles)
            .map(|(client, bundle)| {
                let renewer = Renewer::new(
                    client.clone(),
                    bundle.clone(),
                    RenewOptions {
                        timeout: Duration::from_secs(120),
                        ..RenewOptions::default()
                    },
                );
                tokio::spawn(async move { renewer?.renew_now().await })
            })
            .collect();
        let mut renewed = 0usize;
        for r in renewals {
            if r.await?.is_ok() {
                renewed += 1;
            }
        }
        let renewed_in = renew_started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        for p in publishers {
            p.await?;
        }
        let published = published.load(Ordering::SeqCst) as usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        let received = loop {
            let n = seen.lock().map(|s| s.len()).unwrap_or(0);
            if n >= published || Instant::now() > deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for client in &clients {
            let _ = client.disconnect().await;
        }
        let _ = reader.disconnect().await;
        let _ = reader_runner.await;
        let _ = stop_tx.send(());
        server.await??;
        drop((main, enroll_broker));
        anyhow::Ok(Lifecycle {
            count,
            enroll_seconds: enrolled_in,
            enrollments_per_second: count as f64 / enrolled_in,
            enroll_and_connect_seconds: connected_in,
            renew_seconds: renewed_in,
            renewed,
            published,
            received,
            lost: published.saturating_sub(received),
        })
    })
}
