//! mqtt-tls against a real Mosquitto with `require_certificate true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mqtt_tls::{ClientCert, ConnectOptions, Connection, Error, MqttClient, QoS};
use peers::mosquitto::{BrokerOptions, Mosquitto, Pki, cli, expired};
use peers::{output, root};
use pki_core::{Profile, Validity};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

fn options(host: &str, broker: &Mosquitto, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(host, broker.port, id);
    o.reconnect.initial = Duration::from_millis(50);
    o.reconnect.max = Duration::from_millis(500);
    o.handler_retry.initial = Duration::from_millis(20);
    o
}

async fn connect(bundle: &ClientCert, options: &ConnectOptions) -> (MqttClient, Connection) {
    let identity = bundle.load().unwrap();
    let (client, mut connection) = MqttClient::new(options, &identity).unwrap();
    connection.connect().await.unwrap();
    (client, connection)
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("channel closed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_at_every_qos_by_name_and_address_with_wildcards_and_shares() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());

    let (sub, conn) = connect(
        &pki.client("subscriber"),
        &options("localhost", &broker, "subscriber"),
    )
    .await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let plus = tx.clone();
    sub.subscribe("sensors/+/temp", QoS::ExactlyOnce, move |m| {
        let plus = plus.clone();
        async move {
            plus.send(("plus", m.topic, m.payload, m.qos)).unwrap();
            Ok::<(), std::io::Error>(())
        }
    })
    .unwrap();
    let shared = tx.clone();
    sub.subscribe("$share/group/alarms/#", QoS::AtLeastOnce, move |m| {
        let shared = shared.clone();
        async move {
            shared.send(("share", m.topic, m.payload, m.qos)).unwrap();
            Ok::<(), std::io::Error>(())
        }
    })
    .unwrap();
    let runner = tokio::spawn(conn.run());

    let (publisher, pconn) = connect(
        &pki.client("publisher"),
        &options("127.0.0.1", &broker, "publisher"),
    )
    .await;
    let prunner = tokio::spawn(pconn.run());
    // Wait until the subscriptions are in place: a retained-free probe loop.
    let mut seen = None;
    for _ in 0..100 {
        publisher
            .publish("sensors/probe/temp", "probe", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            seen = Some(m);
            break;
        }
    }
    assert!(seen.is_some(), "subscriptions never became active");
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {}

    for (qos, body) in [
        (QoS::AtMostOnce, "q0"),
        (QoS::AtLeastOnce, "q1"),
        (QoS::ExactlyOnce, "q2"),
    ] {
        publisher
            .publish("sensors/kitchen/temp", body, qos, false)
            .await
            .unwrap();
        let (route, topic, payload, got_qos) = recv(&mut rx).await;
        assert_eq!(
            (route, topic.as_str(), &payload[..]),
            ("plus", "sensors/kitchen/temp", body.as_bytes())
        );
        assert_eq!(got_qos, qos);
    }
    publisher
        .publish("alarms/fire/floor1", "hot", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let (route, topic, _, _) = recv(&mut rx).await;
    assert_eq!((route, topic.as_str()), ("share", "alarms/fire/floor1"));
    // Not matched by either filter: nothing arrives.
    publisher
        .publish("sensors/kitchen/humidity", "x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );

    publisher.disconnect().await.unwrap();
    sub.disconnect().await.unwrap();
    runner.await.unwrap().unwrap();
    prunner.await.unwrap().unwrap();
    assert!(!sub.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interoperates_with_mosquitto_clients() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let bundle = pki.client("ours");
    let (client, conn) = connect(&bundle, &options("localhost", &broker, "ours")).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    client
        .subscribe("interop/in", QoS::AtLeastOnce, move |m| {
            let tx = tx.clone();
            async move {
                tx.send(m.payload).unwrap();
                Ok::<(), std::io::Error>(())
            }
        })
        .unwrap();
    let runner = tokio::spawn(conn.run());

    // mosquitto_sub, with its own bundle, waits for one message from us.
    let theirs = pki.client("theirs");
    let sub = cli("mosquitto_sub", broker.port, "interop/out", 1, &theirs)
        .args(["-C", "1", "-W", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // mosquitto_pub reaches our handler (retried until our subscription is active).
    let mut got = None;
    for _ in 0..50 {
        let out = output(
            cli("mosquitto_pub", broker.port, "interop/in", 1, &theirs)
                .args(["-m", "from mosquitto_pub"]),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            got = Some(p);
            break;
        }
    }
    assert_eq!(
        &got.expect("mosquitto_pub's message never arrived")[..],
        b"from mosquitto_pub"
    );

    // Our publisher reaches mosquitto_sub (published until it is subscribed).
    let waiter = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap());
    for _ in 0..100 {
        client
            .publish("interop/out", "from mqtt-tls", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        if waiter.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = waiter.await.unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from mqtt-tls");
    client.disconnect().await.unwrap();
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_has_its_own_error() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());

    // A client certificate from another CA: the broker rejects it. (The
    // bundle trusts both CAs, so our side of the handshake succeeds.)
    let other = root(pki_core::KeyType::P256);
    let foreign = pki.issue(
        &other,
        "foreign",
        Profile::Client,
        Validity::days_from_now(5).unwrap(),
    );
    let both = peers::write(
        pki.dir.path(),
        "both.pem",
        &format!(
            "{}{}",
            pki.ca.certificate().to_pem(),
            other.certificate().to_pem()
        ),
    );
    let foreign = ClientCert {
        ca_cert_path: both,
        ..foreign
    };
    let identity = foreign.load().unwrap();
    let (_c, mut conn) =
        MqttClient::new(&options("localhost", &broker, "foreign"), &identity).unwrap();
    let err = conn.connect().await.unwrap_err();
    assert!(
        matches!(err, Error::ClientCertificateRejected { ref alert, .. } if alert == "UnknownCA"),
        "{err}"
    );

    // The same certificate with only its own CA: caught before connecting.
    let alone = pki.issue(
        &other,
        "alone",
        Profile::Client,
        Validity::days_from_now(5).unwrap(),
    );
    let err = alone.load().unwrap_err();
    assert!(matches!(err, Error::NotIssuedByCa { .. }), "{err}");

    // Expired: caught before connecting, with the date.
    let now = std::time::SystemTime::now();
    let old_ca = pki_core::CertificateAuthority::new_root(
        &pki_core::Subject::new("Old Root").unwrap(),
        pki_core::KeyPair::generate(pki_core::KeyType::P256).unwrap(),
        Validity::new(
            now - Duration::from_secs(30 * 86_400),
            now + Duration::from_secs(30 * 86_400),
        )
        .unwrap(),
    )
    .unwrap();
    let err = pki
        .issue(&old_ca, "old", Profile::Client, expired())
        .load()
        .unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    assert!(err.to_string().contains("certificate expired at"), "{err}");

    // A server certificate presented as a client certificate.
    let err = pki
        .issue(
            &pki.ca,
            "server-as-client",
            Profile::Server,
            Validity::days_from_now(5).unwrap(),
        )
        .load()
        .unwrap_err();
    assert!(matches!(err, Error::NotClientCertificate { .. }), "{err}");

    // A key that is not the certificate's.
    let a = pki.client("a");
    let b = pki.client("b");
    let err = ClientCert {
        key_path: b.key_path.clone(),
        ..a.clone()
    }
    .load()
    .unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("key does not match certificate"),
        "{err}"
    );

    // A missing file names it.
    let err = ClientCert {
        cert_path: "/nonexistent/cert.pem".into(),
        ..a.clone()
    }
    .load()
    .unwrap_err();
    assert!(
        err.to_string().starts_with("reading /nonexistent/cert.pem"),
        "{err}"
    );

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let identity = a.load().unwrap();
    let (_c, mut conn) =
        MqttClient::new(&ConnectOptions::new("127.0.0.1", closed, "x"), &identity).unwrap();
    let err = conn.connect().await.unwrap_err();
    assert!(matches!(err, Error::ConnectionRefused { .. }), "{err}");

    // A host that does not resolve.
    let (_c, mut conn) = MqttClient::new(
        &ConnectOptions::new("no-such-host.invalid", 8883, "x"),
        &identity,
    )
    .unwrap();
    let err = conn.connect().await.unwrap_err();
    assert!(matches!(err, Error::Dns { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_without_the_dialled_name() {
    let pki = Pki::with_server_names(&["localhost"], &[]);
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let identity = pki.client("c").load().unwrap();
    let (_c, mut conn) = MqttClient::new(&options("127.0.0.1", &broker, "c"), &identity).unwrap();
    let err = conn.connect().await.unwrap_err();
    match &err {
        Error::ServerNameMismatch { host, names } => {
            assert_eq!(host, "127.0.0.1");
            assert!(names.iter().any(|n| n.contains("localhost")), "{names:?}");
        }
        other => panic!("expected a name mismatch, got {other}"),
    }
    // Dialling the name it has works.
    let (c, mut conn) = MqttClient::new(&options("localhost", &broker, "c"), &identity).unwrap();
    conn.connect().await.unwrap();
    let runner = tokio::spawn(conn.run());
    c.disconnect().await.unwrap();
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_broker_restart_without_losing_acknowledged_messages() {
    let pki = Pki::new();
    let mut broker = Mosquitto::start(
        &pki,
        &BrokerOptions {
            persistence: true,
            ..Default::default()
        },
    );

    let mut sub_opts = options("localhost", &broker, "durable-sub");
    sub_opts.clean_session = false;
    let (sub, conn) = connect(&pki.client("durable-sub"), &sub_opts).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    sub.subscribe("stream/#", QoS::AtLeastOnce, move |m| {
        let tx = tx.clone();
        async move {
            tx.send(String::from_utf8_lossy(&m.payload).into_owned())
                .unwrap();
            Ok::<(), std::io::Error>(())
        }
    })
    .unwrap();
    let runner = tokio::spawn(conn.run());

    let mut pub_opts = options("localhost", &broker, "durable-pub");
    pub_opts.clean_session = false;
    let (publisher, pconn) = connect(&pki.client("durable-pub"), &pub_opts).await;
    let prunner = tokio::spawn(pconn.run());
    // The subscription is active once a probe arrives.
    loop {
        publisher
            .publish("stream/probe", "probe", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            break;
        }
    }

    const N: u32 = 600;
    let acked = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let sender = {
        let publisher = publisher.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            for i in 0..N {
                // A publish that fails (connection lost) is sent again, as
                // a publisher that wants its data delivered would.
                for _ in 0..200 {
                    match publisher
                        .publish("stream/n", i.to_string(), QoS::AtLeastOnce, false)
                        .await
                    {
                        Ok(()) => {
                            acked.lock().unwrap().insert(i);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        })
    };
    // Restart mid-stream.
    while acked.lock().unwrap().len() < (N / 3) as usize {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = sub.stats();
    tokio::task::block_in_place(|| broker.restart());
    tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .unwrap()
        .unwrap();

    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        N as usize,
        "every publish was eventually acknowledged"
    );
    let mut received = BTreeSet::new();
    while received.len() < acked.len() {
        let m = recv(&mut rx).await;
        if let Ok(n) = m.parse::<u32>() {
            received.insert(n);
        }
    }
    assert_eq!(
        received, acked,
        "every acknowledged message reached the handler"
    );

    let after = sub.stats();
    assert!(
        after.connections > before.connections,
        "the subscriber reconnected"
    );
    // Backoff, not a busy loop: the restart takes well under a few seconds,
    // and attempts are at least 25 ms apart.
    let attempts = after.failed_attempts - before.failed_attempts;
    assert!(attempts < 40, "{attempts} failed attempts: busy loop?");

    publisher.disconnect().await.unwrap();
    sub.disconnect().await.unwrap();
    runner.await.unwrap().unwrap();
    prunner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_unacknowledged_messages_come_back() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let (publisher, pconn) =
        connect(&pki.client("pub"), &options("localhost", &broker, "pub")).await;
    let prunner = tokio::spawn(pconn.run());

    // A handler that fails once gets the message again.
    let bundle = pki.client("flaky");
    let (sub, conn) = connect(&bundle, &options("localhost", &broker, "flaky")).await;
    let calls = Arc::new(AtomicU32::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let calls = calls.clone();
        sub.subscribe("jobs/flaky", QoS::AtLeastOnce, move |m| {
            let calls = calls.clone();
            let tx = tx.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(std::io::Error::other("database busy"));
                }
                tx.send(m.payload).unwrap();
                Ok(())
            }
        })
        .unwrap();
    }
    let runner = tokio::spawn(conn.run());
    let payload = loop {
        publisher
            .publish("jobs/flaky", "job-1", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            break p;
        }
    };
    assert_eq!(&payload[..], b"job-1");
    assert!(sub.stats().handler_failures >= 1);
    sub.disconnect().await.unwrap();
    runner.await.unwrap().unwrap();

    // A client stopped before acknowledging gets the message when it comes
    // back with the same id and a persistent session.
    let bundle = pki.client("worker");
    let mut opts = options("localhost", &broker, "worker");
    opts.clean_session = false;
    let (worker, conn) = connect(&bundle, &opts).await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    worker
        .subscribe("jobs/slow", QoS::AtLeastOnce, move |_m| {
            let started_tx = started_tx.clone();
            async move {
                started_tx.send(()).unwrap();
                // Never finishes: the process "dies" before acknowledging.
                std::future::pending::<()>().await;
                Ok::<(), std::io::Error>(())
            }
        })
        .unwrap();
    let runner = tokio::spawn(conn.run());
    loop {
        publisher
            .publish("jobs/slow", "job-2", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        if tokio::time::timeout(Duration::from_millis(300), started.recv())
            .await
            .is_ok()
        {
            break;
        }
    }
    worker.disconnect().await.unwrap();
    runner.await.unwrap().unwrap();

    let (again, conn) = connect(&bundle, &opts).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    again
        .subscribe("jobs/slow", QoS::AtLeastOnce, move |m| {
            let tx = tx.clone();
            async move {
                tx.send((m.payload, m.duplicate)).unwrap();
                Ok::<(), std::io::Error>(())
            }
        })
        .unwrap();
    let runner = tokio::spawn(conn.run());
    let (payload, duplicate) = recv(&mut rx).await;
    assert_eq!(&payload[..], b"job-2");
    assert!(duplicate, "a redelivered message carries the DUP flag");
    again.disconnect().await.unwrap();
    runner.await.unwrap().unwrap();
    publisher.disconnect().await.unwrap();
    prunner.await.unwrap().unwrap();
}

/// A bundle whose key OpenSSL wrote in `format`, with a certificate our CA
/// issued for it.
fn openssl_bundle(pki: &Pki, name: &str, genkey: &[&str]) -> ClientCert {
    let key_path = pki.dir.path().join(format!("{name}.key"));
    let mut cmd = Command::new(peers::openssl());
    for arg in genkey {
        if *arg == "{out}" {
            cmd.arg(&key_path);
        } else {
            cmd.arg(arg);
        }
    }
    peers::run_ok(&mut cmd);
    let csr_path = pki.dir.path().join(format!("{name}.csr"));
    peers::run_ok(
        Command::new(peers::openssl())
            .args(["req", "-new", "-subj", &format!("/CN={name}"), "-key"])
            .arg(&key_path)
            .arg("-out")
            .arg(&csr_path),
    );
    let csr = pki_core::Csr::from_pem(&std::fs::read_to_string(&csr_path).unwrap()).unwrap();
    let cert = pki
        .ca
        .sign(
            &csr,
            &pki_core::IssueParams::new(Profile::Client, Validity::days_from_now(5).unwrap()),
        )
        .unwrap()
        .certificate;
    ClientCert::new(
        peers::write(pki.dir.path(), &format!("{name}_cert.pem"), &cert.to_pem()),
        key_path,
        pki.ca_path.clone(),
    )
}

/// Keys in PKCS#8, PKCS#1 and SEC1 (as OpenSSL writes them) and an
/// encrypted PKCS#8 key all connect, over TLS 1.2 and TLS 1.3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_format_and_tls_version_connects() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let mut bundles = vec![
        (
            "pkcs1-rsa",
            openssl_bundle(
                &pki,
                "pkcs1-rsa",
                &["genrsa", "-traditional", "-out", "{out}", "2048"],
            ),
        ),
        (
            "sec1-ec",
            openssl_bundle(
                &pki,
                "sec1-ec",
                &["ecparam", "-genkey", "-name", "prime256v1", "-out", "{out}"],
            ),
        ),
        (
            "pkcs8-ed25519",
            openssl_bundle(
                &pki,
                "pkcs8-ed25519",
                &["genpkey", "-algorithm", "ed25519", "-out", "{out}"],
            ),
        ),
    ];
    // An encrypted PKCS#8 key whose passphrase is in the environment
    // (`cargo xtask test` sets MQTT_MTLS_TEST_PASSPHRASE).
    let passphrase = std::env::var("MQTT_MTLS_TEST_PASSPHRASE")
        .expect("MQTT_MTLS_TEST_PASSPHRASE is not set: run the suite with `cargo xtask test`");
    let mut encrypted = pki.client("encrypted");
    let key = pki_core::KeyPair::from_pem(&std::fs::read_to_string(&encrypted.key_path).unwrap())
        .unwrap();
    std::fs::write(
        &encrypted.key_path,
        key.to_encrypted_pkcs8_pem(passphrase.as_bytes()).unwrap(),
    )
    .unwrap();
    encrypted.passphrase_env = Some("MQTT_MTLS_TEST_PASSPHRASE".into());
    bundles.push(("pkcs8-encrypted", encrypted));

    for (name, bundle) in &bundles {
        for versions in [
            mqtt_tls::TlsVersions::Tls12Only,
            mqtt_tls::TlsVersions::Tls13Only,
        ] {
            let mut o = options("localhost", &broker, name);
            o.tls_versions = versions;
            let (client, conn) = connect(bundle, &o).await;
            let runner = tokio::spawn(conn.run());
            client
                .publish("formats/ok", *name, QoS::AtLeastOnce, false)
                .await
                .unwrap();
            client.disconnect().await.unwrap();
            runner.await.unwrap().unwrap();
        }
    }
}

/// `loop_forever` drives the connection from blocking code; `disconnect`
/// sends DISCONNECT (the broker logs a clean disconnect, not a lost one).
#[test]
fn loop_forever_and_a_clean_disconnect() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let identity = pki.client("blocking").load().unwrap();
    let (client, connection) =
        MqttClient::new(&options("localhost", &broker, "blocking"), &identity).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    client
        .subscribe("blocking/in", QoS::AtLeastOnce, move |m| {
            let tx = tx.clone();
            async move {
                tx.send(m.payload).unwrap();
                Ok::<(), std::io::Error>(())
            }
        })
        .unwrap();
    let looping = std::thread::spawn(move || connection.loop_forever());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (publisher, pconn) = connect(
            &pki.client("feeder"),
            &options("127.0.0.1", &broker, "feeder"),
        )
        .await;
        let prunner = tokio::spawn(pconn.run());
        let payload = loop {
            publisher
                .publish("blocking/in", "hi", QoS::AtLeastOnce, false)
                .await
                .unwrap();
            if let Ok(p) = rx.recv_timeout(Duration::from_millis(200)) {
                break p;
            }
        };
        assert_eq!(&payload[..], b"hi");
        client.disconnect().await.unwrap();
        publisher.disconnect().await.unwrap();
        prunner.await.unwrap().unwrap();
    });
    looping.join().unwrap().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !broker.log().contains("Client blocking disconnected.") {
        assert!(
            std::time::Instant::now() < deadline,
            "no clean disconnect in:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A deferred handler's message is acknowledged only when its `Delivery`
/// is: unacknowledged, it comes back to the persistent session; acknowledged,
/// it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_acknowledgement() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let (publisher, pconn) =
        connect(&pki.client("dpub"), &options("localhost", &broker, "dpub")).await;
    let prunner = tokio::spawn(pconn.run());
    let bundle = pki.client("batcher");
    let mut opts = options("localhost", &broker, "batcher");
    opts.clean_session = false;

    let session = || {
        let bundle = bundle.clone();
        let opts = opts.clone();
        async move {
            let (client, conn) = connect(&bundle, &opts).await;
            let (tx, rx) = mpsc::unbounded_channel();
            client
                .subscribe_deferred("batch/#", QoS::AtLeastOnce, move |m, delivery| {
                    let tx = tx.clone();
                    async move {
                        tx.send((m, delivery)).unwrap();
                        Ok::<(), std::io::Error>(())
                    }
                })
                .unwrap();
            let runner = tokio::spawn(conn.run());
            (client, runner, rx)
        }
    };

    // First session: receive, do not acknowledge, go away.
    let (client, runner, mut rx) = session().await;
    let (first, delivery) = loop {
        publisher
            .publish("batch/1", "row", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            break m;
        }
    };
    assert!(!first.duplicate);
    drop(delivery);
    client.disconnect().await.unwrap();
    runner.await.unwrap().unwrap();

    // Second session: it comes back; acknowledge it this time.
    let (client, runner, mut rx) = session().await;
    let (again, delivery) = recv(&mut rx).await;
    assert_eq!(&again.payload[..], b"row");
    assert!(again.duplicate);
    delivery.ack().await.unwrap();
    // Drain any further copies the probe loop published, acknowledging them.
    while let Ok(Some((_, d))) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        d.ack().await.unwrap();
    }
    client.disconnect().await.unwrap();
    runner.await.unwrap().unwrap();

    // Third session: nothing is redelivered.
    let (client, runner, mut rx) = session().await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "an acknowledged message came back"
    );
    client.disconnect().await.unwrap();
    runner.await.unwrap().unwrap();
    publisher.disconnect().await.unwrap();
    prunner.await.unwrap().unwrap();
}
