//! `mqtt-bench`: measurements for `cargo xtask bench`, one JSON object per
//! run on standard output. Run by the xtask in release builds; see
//! `docs/benchmarks.md` for the results and how they compare.

mod chart;
mod lifecycle;
mod store;

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mqtt_tls::{ConnectOptions, MqttClient, QoS};
use pki_core::{KeyType, Profile};
use provision::files::Durability;
use provision::ops::{CsrRequest, IssueRequest, SubjectOptions, issue_files};
use rayon::prelude::*;
use serde_json::json;
use verify_tests::mosquitto::{
    BrokerOptions, Mosquitto, Pki, mosquitto_client, raise_open_file_limit, tls_args,
};

const USAGE: &str = "\
mqtt-bench identities KEY_TYPE COUNT THREADS OUT_DIR  key + CSR + CSR check + signature + 3 files, per second
mqtt-bench fleet MANIFEST                      provision fleet in-process: seconds and peak memory
mqtt-bench ingest MQTT_INGEST_BIN COUNT         stored/s with acks after commit vs mosquitto_sub's receive rate
mqtt-bench throughput QOS COUNT [PYTHON PAHO]  publisher → subscriber msgs/s: ours vs mosquitto_pub -l → mosquitto_sub (and paho)
mqtt-bench connects COUNT PYTHON SSL [PAHO]    mTLS connect+CONNACK+disconnect/s: ours sequential, 100 concurrent, Python ssl (and paho)
mqtt-bench idle COUNT                          memory per idle mTLS connection (COUNT clients, own certificates)
mqtt-bench storm COUNT                         a fleet of COUNT devices (own certificates) connecting at once, then a broker restart
mqtt-bench lifecycle COUNT                     COUNT devices enroll at once from one claim and connect; then renew at once while publishing
mqtt-bench store PROVISION_BIN TIME_BIN N       issue/revoke/verify/list --name on an empty CA and one with N identities
mqtt-bench chart RESULTS_JSON OUT_SVG          every target in one chart (ratio measured vs target)";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["identities", key, count, threads, out] => identities(
            key.parse()?,
            count.parse()?,
            threads.parse()?,
            Path::new(out),
        )?,
        ["fleet", manifest] => fleet(Path::new(manifest))?,
        ["ingest", bin, count] => ingest(Path::new(bin), count.parse()?)?,
        ["throughput", qos, count] => throughput(qos.parse()?, count.parse()?, None)?,
        ["throughput", qos, count, python, paho] => throughput(
            qos.parse()?,
            count.parse()?,
            Some((Path::new(python), Path::new(paho))),
        )?,
        ["connects", count, python, script] => {
            connects(count.parse()?, Path::new(python), Path::new(script), None)?
        }
        ["connects", count, python, script, paho] => connects(
            count.parse()?,
            Path::new(python),
            Path::new(script),
            Some(Path::new(paho)),
        )?,
        ["idle", count] => idle(count.parse()?)?,
        ["storm", count] => storm(count.parse()?)?,
        ["lifecycle", count] => lifecycle::run(count.parse()?)?,
        ["store", provision, time, count] => {
            store::run(Path::new(provision), Path::new(time), count.parse()?)?
        }
        ["chart", results, out] => {
            chart::chart(Path::new(results), Path::new(out))?;
            json!({ "what": "chart", "out": out })
        }
        _ => bail!("usage:\n{USAGE}"),
    };
    println!("{result}");
    Ok(())
}

/// Issues `count` identities the way `provision issue` does (key, CSR,
/// CSR signature check, signature, files written atomically), on `threads`
/// threads (0: all cores), into `out` (a new folder: the caller keeps it
/// until its measurements are done, as deleting thousands of files makes
/// ext4's inode allocator slow for the next run on the same disk).
fn identities(
    key_type: KeyType,
    count: usize,
    threads: usize,
    out: &Path,
) -> anyhow::Result<serde_json::Value> {
    std::fs::create_dir(out).with_context(|| format!("creating {}", out.display()))?;
    let ca = pki_core::CertificateAuthority::new_root(
        &pki_core::Subject::new("Bench Root")?,
        pki_core::KeyPair::generate(KeyType::P256)?,
        pki_core::Validity::days_from_now(3650)?,
    )?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    // Each thread's first key seeds its random generator (aws-lc's jitter
    // entropy, milliseconds once per thread): done before the clock starts,
    // as the Python flow starts its clock after its imports and CA key.
    pool.broadcast(|_| pki_core::KeyPair::generate(key_type).map(|_| ()))
        .into_iter()
        .collect::<Result<(), _>>()?;
    let started = Instant::now();
    pool.install(|| {
        (0..count).into_par_iter().try_for_each(|i| {
            let request = IssueRequest {
                identity: CsrRequest {
                    name: format!("dev-{i}"),
                    subject: SubjectOptions::default(),
                    key_type,
                    dns: vec![],
                    ip: vec![],
                    out: out.to_owned(),
                    force: false,
                },
                profile: Profile::Client,
                days: 365,
                role: provision::roles::Role::Device,
            };
            // As `provision fleet` writes: one flush at the end.
            issue_files(
                |csr, params| Ok(ca.sign(csr, params)?),
                ca.certificate(),
                &request,
                Durability::Deferred,
            )
            .map(|_| ())
        })
    })?;
    let written = started.elapsed().as_secs_f64();
    provision::files::flush_all();
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({
        "what": "identities",
        "key_type": key_type.as_str(),
        "threads": pool.current_num_threads(),
        "count": count,
        "seconds": seconds,
        "flush_seconds": seconds - written,
        "per_second": count as f64 / seconds,
    }))
}

/// Runs a fleet manifest in-process; reports wall time and peak memory.
fn fleet(manifest: &Path) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let summary = provision::fleet::run(
        manifest,
        &provision::fleet::RunOptions::default(),
        &|_, _| {},
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_mb = peak_rss_kb()? as f64 / 1024.0;
    // Again, with nothing to change: every identity's files are read and
    // checked against the CA and the inventory.
    let started = Instant::now();
    let rerun = provision::fleet::run(
        manifest,
        &provision::fleet::RunOptions::default(),
        &|_, _| {},
    )?;
    let rerun_seconds = started.elapsed().as_secs_f64();
    if rerun.issued != 0 {
        bail!("a fleet run changing nothing issued {}", rerun.issued);
    }
    Ok(json!({
        "what": "fleet",
        "issued": summary.issued,
        "kept": rerun.kept,
        "seconds": seconds,
        "rerun_seconds": rerun_seconds,
        "peak_rss_mb": peak_rss_mb,
    }))
}

fn peak_rss_kb() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}

/// The same QoS 1 stream of `count` 64-byte messages, received once by
/// `mosquitto_sub` and once stored by `mqtt-ingest` (acknowledging after
/// each batch commit into SQLite with synchronous=FULL).
fn ingest(bin: &Path, count: usize) -> anyhow::Result<serde_json::Value> {
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
    let bundle = pki.client("bench-ingest");
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
            &broker.port.to_string(),
            "--topic",
            "bench/ingest",
        ])
        .arg("--db")
        .arg(format!("sqlite://{}", db.display()))
        .args(["--listen", "127.0.0.1:0", "--client-id", "bench-ingest"])
        .env("RUST_LOG", "warn,mqtt_ingest=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let http = listening_address(&mut child)?;
    wait_until(&http, "/healthz", |status, _| status == 200)?;
    let started = Instant::now();
    runtime.block_on(publish(
        &publisher,
        &broker,
        "bench/ingest",
        count,
        &payload,
    ))?;
    wait_until(&http, "/metrics", |_, body| {
        metric(body, "mqtt_ingest_acknowledged_total").is_some_and(|n| n >= count as u64)
    })?;
    let stored = count as f64 / started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    Ok(json!({
        "what": "ingest",
        "count": count,
        "mosquitto_sub_per_second": baseline,
        "ingest_stored_per_second": stored,
        "ratio": stored / baseline,
    }))
}

/// End-to-end throughput through one broker, 64-byte payloads: our
/// publisher to our subscriber, and `mosquitto_pub -l` to `mosquitto_sub`.
/// The rate is messages received over the time from the first publish to
/// the last message received (QoS 0 may drop under load: counted as is).
fn throughput(
    qos: u8,
    count: usize,
    paho: Option<(&Path, &Path)>,
) -> anyhow::Result<serde_json::Value> {
    let runtime = tokio::runtime::Runtime::new()?;
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let level = QoS::try_from(qos)?;
    if level == QoS::ExactlyOnce {
        bail!("QoS 0 or 1");
    }
    let payload = vec![b'x'; 64];

    // Theirs.
    let sub_bundle = pki.client("mosq-sub");
    let port = broker.port.to_string();
    let mut sub = Command::new(mosquitto_client("mosquitto_sub"))
        .args([
            "-h",
            "localhost",
            "-p",
            &port,
            "-t",
            "tp/mosq",
            "-q",
            &qos.to_string(),
        ])
        .args(["-C", &count.to_string(), "-W", "60"])
        .args(tls_args(&sub_bundle))
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let pub_bundle = pki.client("mosq-pub");
    let started = Instant::now();
    let mut publisher = Command::new(mosquitto_client("mosquitto_pub"))
        .args([
            "-h",
            "localhost",
            "-p",
            &port,
            "-t",
            "tp/mosq",
            "-q",
            &qos.to_string(),
            "-l",
        ])
        .args(tls_args(&pub_bundle))
        .stdin(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = publisher.stdin.take().context("no stdin")?;
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
    let _ = publisher.wait();
    let theirs = received as f64 / last.as_secs_f64();

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
    let paho_rate = match paho {
        Some((python, script)) => Some(run_python(
            Command::new(python)
                .arg(script)
                .arg("throughput")
                .arg(broker.port.to_string())
                .args(bundle_args(&pki.client("paho")))
                .arg(qos.to_string())
                .arg(count.to_string()),
        )?),
        None => None,
    };
    Ok(json!({
        "what": "throughput",
        "qos": qos,
        "count": count,
        "paho_per_second": paho_rate,
        "ours_per_second": ours.0,
        "ours_received": ours.1,
        "mosquitto_clients_per_second": theirs,
        "mosquitto_received": received,
        "ratio": ours.0 / theirs,
    }))
}

/// Connections per second: ours one after another (connect, CONNACK,
/// DISCONNECT on the wire), ours 100 at once each with its own certificate,
/// and Python's `ssl` module doing the same handshake and packets.
fn connects(
    count: usize,
    python: &Path,
    script: &Path,
    paho: Option<&Path>,
) -> anyhow::Result<serde_json::Value> {
    let runtime = tokio::runtime::Runtime::new()?;
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let bundle = pki.client("connector");
    let identity = bundle.load()?;
    let sequential = runtime.block_on(async {
        let started = Instant::now();
        for i in 0..count {
            let (client, mut conn) = MqttClient::new(
                &ConnectOptions::new("localhost", broker.port, format!("seq-{i}")),
                &identity,
            )?;
            conn.connect().await?;
            let runner = tokio::spawn(conn.run());
            client.disconnect().await?;
            let _ = runner.await;
        }
        anyhow::Ok(count as f64 / started.elapsed().as_secs_f64())
    })?;
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
    let out = Command::new(python)
        .arg(script)
        .arg(broker.port.to_string())
        .arg(&bundle.ca_cert_path)
        .arg(&bundle.cert_path)
        .arg(&bundle.key_path)
        .arg(count.to_string())
        .output()?;
    if !out.status.success() {
        bail!(
            "python connects failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let python_rate: f64 = text
        .split("\"per_second\": ")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|n| n.trim().parse().ok())
        .context("no per_second from python")?;
    let paho_rate = match paho {
        Some(paho) => Some(run_python(
            Command::new(python)
                .arg(paho)
                .arg("connects")
                .arg(broker.port.to_string())
                .args(bundle_args(&bundle))
                .arg(count.to_string()),
        )?),
        None => None,
    };
    Ok(json!({
        "what": "connects",
        "paho_per_second": paho_rate,
        "count": count,
        "ours_sequential_per_second": sequential,
        "ours_100_concurrent_per_second": concurrent,
        "python_ssl_per_second": python_rate,
        "ratio_vs_python": sequential / python_rate,
    }))
}

/// Memory per idle mTLS connection: `count` clients, each with its own
/// certificate, connected from this process; resident memory before and
/// after, divided by `count`.
fn idle(count: usize) -> anyhow::Result<serde_json::Value> {
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
    Ok(json!({
        "what": "idle",
        "count": count,
        "connected": connected,
        "kb_per_connection": (after.saturating_sub(before)) as f64 / count as f64,
    }))
}

/// A connection storm: `count` devices from `provision fleet`, each with its
/// own certificate, connect at once from this process; then the broker
/// restarts and all reconnect (backoff with full jitter).
fn storm(count: usize) -> anyhow::Result<serde_json::Value> {
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
    let ca = provision::store::CaDir::new(&made.ca_dir).cert_path();
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
    Ok(json!({
        "what": "storm",
        "count": count,
        "seconds_until_all_connected": connected_in,
        "connects_per_second": count as f64 / connected_in,
        "kb_per_connection": after.saturating_sub(before) as f64 / count as f64,
        "seconds_until_all_reconnected": back.elapsed().as_secs_f64(),
    }))
}

/// CA, certificate and key paths, in the order the Python scripts take them.
fn bundle_args(b: &mqtt_tls::ClientCert) -> [std::path::PathBuf; 3] {
    [
        b.ca_cert_path.clone(),
        b.cert_path.clone(),
        b.key_path.clone(),
    ]
}

/// Runs a Python measurement and reads its `per_second`.
fn run_python(cmd: &mut Command) -> anyhow::Result<f64> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("\"per_second\": ")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no per_second in {text}"))
}

fn rss_kb() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

/// Publishes `count` QoS 1 messages with up to 200 in flight.
async fn publish(
    bundle: &mqtt_tls::ClientCert,
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

fn listening_address(child: &mut std::process::Child) -> anyhow::Result<String> {
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

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}
