//! `provision serve`: the CA as an MQTT service (`docs/lifecycle.md`).
//!
//! It connects with its own identity (role `ca-service`) to the main broker
//! (renewals) and, when given, to the enrollment broker (enrollments), and
//! subscribes through a shared subscription (`$share/GROUP/...`), so that
//! several instances, each with its own identity, can serve one CA: the
//! CA's lock keeps serials and the inventory whole.
//!
//! Requests go to one worker thread, which answers a batch of them in one
//! [`LockedCa`](crate::inventory::LockedCa) transaction
//! ([`crate::enrollment::handle`]) and commits; only then is each answer
//! published (QoS 1), and only once the broker has it is the request
//! acknowledged. A service killed anywhere in between gets the request
//! again and answers it from the inventory: one certificate per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use mqtt_tls::lifecycle::topics;
use mqtt_tls::{ConnectOptions, Delivery, Message, MqttClient, QoS, TlsIdentity, TopicFilter};
use tokio::sync::mpsc;

use crate::ca_folder::CaDir;
use crate::enrollment::{Outcome, Policy, handle, settle_overdue};
use crate::error::{Error, Result};
use crate::inventory::Inventory;

/// A broker to connect to.
#[derive(Debug, Clone)]
pub struct Broker {
    /// Host (its certificate must name it).
    pub host: String,
    /// Port.
    pub port: u16,
}

/// How to serve.
pub struct ServeOptions {
    /// The CA folder.
    pub ca_dir: CaDir,
    /// The CA, loaded (its key stays in this process).
    pub ca: pki_core::CertificateAuthority,
    /// The service's own identity (role `ca-service`); its CN is its
    /// client id.
    pub identity: TlsIdentity,
    /// The main broker: renewals.
    pub broker: Broker,
    /// The enrollment broker, where claims connect: enrollments.
    pub enroll_broker: Option<Broker>,
    /// The shared subscription's group.
    pub share_group: String,
    /// What to issue.
    pub policy: Policy,
    /// How long a renewed device has to confirm before its old
    /// certificate is revoked anyway.
    pub grace: Duration,
    /// Where to serve `/healthz` and `/metrics` (plain HTTP: keep it on
    /// loopback).
    pub http: Option<SocketAddr>,
    /// How long stopping may take, whatever the CA store does: past it,
    /// [`serve`] returns an error (requests not answered stay with the
    /// broker, unacknowledged).
    pub shutdown_timeout: Duration,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("ca_dir", &self.ca_dir)
            .field("broker", &self.broker)
            .field("enroll_broker", &self.enroll_broker)
            .finish_non_exhaustive()
    }
}

/// The service's counters, as `/metrics` shows them.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests taken from the brokers.
    pub requests: AtomicU64,
    /// Certificates issued.
    pub issued: AtomicU64,
    /// Requests refused.
    pub rejected: AtomicU64,
    /// Copies of requests answered from the inventory.
    pub repeated: AtomicU64,
    /// Old certificates revoked (confirmed, or after the grace period).
    pub revoked: AtomicU64,
    /// Batches that failed and were retried.
    pub retried_batches: AtomicU64,
    /// Whether the last batch failed (the database away, say): `/healthz`
    /// says so until one succeeds.
    pub failing: std::sync::atomic::AtomicBool,
}

impl Metrics {
    fn render(&self, connected: &[bool]) -> String {
        let mut text = String::new();
        for (name, help, value) in [
            ("requests", "Requests received.", &self.requests),
            ("issued", "Certificates issued.", &self.issued),
            ("rejected", "Requests refused.", &self.rejected),
            (
                "repeated",
                "Copies of requests answered again from the inventory.",
                &self.repeated,
            ),
            (
                "revoked",
                "Old certificates revoked after renewal.",
                &self.revoked,
            ),
            (
                "retried_batches",
                "Batches that failed and were retried.",
                &self.retried_batches,
            ),
        ] {
            text.push_str(&format!(
                "# HELP provision_serve_{name}_total {help}\n\
                 # TYPE provision_serve_{name}_total counter\n\
                 provision_serve_{name}_total {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        text.push_str(
            "# HELP provision_serve_connected Whether each broker connection is up.\n\
             # TYPE provision_serve_connected gauge\n",
        );
        for (i, up) in connected.iter().enumerate() {
            let broker = if i == 0 { "main" } else { "enroll" };
            text.push_str(&format!(
                "provision_serve_connected{{broker=\"{broker}\"}} {}\n",
                u8::from(*up)
            ));
        }
        text
    }
}

/// A request for the worker.
struct Job {
    client: usize,
    topic: String,
    payload: Vec<u8>,
    delivery: Delivery,
}

/// What the worker decided for one request, to carry out after the commit.
struct Reply {
    client: usize,
    answer: Option<(String, Vec<u8>)>,
    delivery: Delivery,
}

/// Requests answered in one transaction at most (the broker sends at most
/// its inflight window, 20 by default, unacknowledged at a time anyway).
const BATCH: usize = 256;

/// The service's client id on the enrollment broker: its name and a tag
/// only the CA's key holder can compute.
fn enrollment_client_id(secret: &str, name: &str) -> String {
    let tag: String = pki_core::sha256_fingerprint(
        format!("provision serve: enrollment client id\n{secret}\n{name}").as_bytes(),
    )
    .chars()
    .filter(char::is_ascii_hexdigit)
    .take(16)
    .collect();
    format!("{name}-{}", tag.to_ascii_lowercase())
}

/// The largest request taken (MQTT's remaining length).
pub const MAX_REQUEST: usize = 64 * 1024;

/// How often overdue renewals are settled.
const TICK: Duration = Duration::from_secs(1);

/// How often the worker brings this host's CA and broker folders up to a
/// shared inventory's latest CRL, when it changed nothing itself.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves (or a broker connection cannot be made
/// at the start). Opens the inventory first: a wrong folder or database
/// fails here, not at the first request.
pub async fn serve(
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let ServeOptions {
        ca_dir,
        ca,
        identity,
        broker,
        enroll_broker,
        share_group,
        policy,
        grace,
        http: http_addr,
        shutdown_timeout,
    } = options;
    // The shared subscriptions of each broker, checked before anything
    // starts: renewals on the main broker, enrollments on the other.
    let shared = |filters: &[&str]| -> Result<Vec<TopicFilter>> {
        filters
            .iter()
            .map(|f| Ok(TopicFilter::shared(&share_group, &TopicFilter::new(*f)?)?))
            .collect()
    };
    let renewals = shared(&[topics::RENEW_REQUESTS, topics::RENEW_DONE])?;
    let enrollments = shared(&[topics::ENROLL_REQUESTS])?;
    let name = identity
        .certificate()
        .common_name()
        .ok_or_else(|| Error::Lifecycle {
            reason: "the service's certificate has no CN (its MQTT username)".into(),
        })?;
    let metrics = Arc::new(Metrics::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // From the CA's key (which only the service holds): stable across the
    // service's own renewals, and different for each instance's name. A
    // key in a token cannot be read: a random secret kept in the CA's
    // inventory instead, read by the worker below.
    let key_secret = match ca.key().external_location() {
        None => Some(pki_core::sha256_fingerprint(
            &ca.key().to_pkcs8_der().map_err(|e| Error::Lifecycle {
                reason: format!("the CA key: {e}"),
            })?,
        )),
        Some(_) => None,
    };
    let (job_tx, job_rx) = std_mpsc::channel::<Job>();
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<Vec<Reply>>();
    // The CA and its inventory live on the worker thread (the inventory
    // runs its own runtime, so never on an async task).
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let worker = {
        let metrics = metrics.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let opened = Inventory::open(&ca_dir).and_then(|inventory| {
                let secret = match key_secret {
                    Some(secret) => secret,
                    // Read without the lock; the lock only to make it.
                    None => {
                        if let Some(secret) = inventory.service_secret()? {
                            secret
                        } else {
                            let mut locked = inventory.lock(&ca)?;
                            let secret = locked.service_secret()?;
                            // A setting, no certificate: nothing for the brokers.
                            let _settings = locked.commit()?;
                            secret
                        }
                    }
                };
                Ok((inventory, secret))
            });
            let inventory = match opened {
                Ok((inventory, secret)) => {
                    let _ = ready_tx.send(Ok(secret));
                    inventory
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            work(
                &inventory, &ca, &policy, grace, &metrics, &stop, &job_rx, &reply_tx,
            );
        })
    };
    let enroll_secret = ready_rx.await.unwrap_or_else(|_| {
        Err(Error::Lifecycle {
            reason: "the CA worker stopped".into(),
        })
    })?;

    let mut brokers = vec![(broker, renewals)];
    if let Some(b) = enroll_broker {
        brokers.push((b, enrollments));
    }
    let mut clients = Vec::new();
    let mut runners = Vec::new();
    for (index, (broker, filters)) in brokers.into_iter().enumerate() {
        // On the enrollment broker client ids are not tied to usernames
        // (claims choose theirs): the service's is one only its key can
        // make, so no claim holder can take its session over.
        let client_id = if index == 0 {
            name.clone()
        } else {
            enrollment_client_id(&enroll_secret, &name)
        };
        let mut connect = ConnectOptions::new(&broker.host, broker.port, client_id);
        // Requests wait in the session while the service is down.
        connect.clean_session = false;
        // A request is a CSR and a certificate or two: a larger message is
        // acknowledged and dropped (logged) instead of taking a slot of the
        // broker's window for ever.
        connect.max_incoming_packet_size = MAX_REQUEST;
        let (client, mut connection) = MqttClient::new(&connect, &identity)?;
        connection.connect().await?;
        runners.push(tokio::spawn(connection.run()));
        for filter in filters {
            let jobs = job_tx.clone();
            let metrics = metrics.clone();
            client
                .subscribe_deferred(
                    filter,
                    QoS::AtLeastOnce,
                    move |m: Message, delivery: Delivery| {
                        metrics.requests.fetch_add(1, Ordering::Relaxed);
                        let sent = jobs.send(Job {
                            client: index,
                            topic: m.topic,
                            payload: m.payload.to_vec(),
                            delivery,
                        });
                        async move {
                            // The worker is gone only when shutting down:
                            // the request stays unacknowledged.
                            sent.map_err(|_| std::io::Error::other("the CA worker stopped"))
                        }
                    },
                )?
                .granted()
                .await?;
        }
        tracing::info!(
            "serving {} on {}:{} as {name}",
            if index == 0 {
                "renewals"
            } else {
                "enrollments"
            },
            broker.host,
            broker.port
        );
        clients.push(client);
    }
    drop(job_tx);

    let http = match http_addr {
        Some(addr) => Some(http(addr, clients.clone(), metrics.clone()).await?),
        None => None,
    };

    let publisher = {
        let clients = clients.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            while let Some(replies) = reply_rx.recv().await {
                let sends = replies.into_iter().map(|reply| {
                    let client = clients[reply.client].clone();
                    async move {
                        if let Some((topic, answer)) = reply.answer
                            && let Err(e) = client
                                .publish(&topic, answer, QoS::AtLeastOnce, false)
                                .await
                        {
                            tracing::warn!("publishing the answer on {topic}: {e}");
                            // Lost with the connection: not acknowledged, the
                            // request comes again and gets the stored answer.
                            // Any other failure would fail the same way again:
                            // the request is acknowledged and dropped.
                            if !matches!(e, mqtt_tls::Error::PacketTooLarge { .. }) {
                                return;
                            }
                        }
                        if let Err(e) = reply.delivery.ack().await {
                            tracing::warn!("acknowledging a request: {e}");
                        }
                    }
                });
                futures_util::future::join_all(sends).await;
            }
            let _ = metrics;
        })
    };

    shutdown.await;
    tracing::info!("stopping");
    // The worker finishes its batch and stops; what it answered but did
    // not send goes unacknowledged, and comes again to the next instance.
    stop.store(true, Ordering::SeqCst);
    let stopping = async {
        for client in &clients {
            let _ = client.disconnect().await;
        }
        for runner in runners {
            let _ = runner.await;
        }
        publisher.abort();
        if let Some(h) = http {
            h.abort();
        }
        // Polled, not joined on a blocking task: the runtime, when it is
        // dropped, would wait for such a task, and a worker stuck in the
        // store (a database that hangs) would then hold the process for
        // ever. Past the timeout it is left to the process's exit.
        while !worker.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // Whatever the CA store does (a database that hangs, a folder gone),
    // the service stops within the timeout.
    tokio::time::timeout(shutdown_timeout, stopping)
        .await
        .map_err(|_| Error::Lifecycle {
            reason: format!(
                "not stopped within {shutdown_timeout:?} (--shutdown-timeout): requests not \
                 answered stay with the broker"
            ),
        })
}

/// The worker (until `stop`): batches of requests, each answered in one transaction,
/// committed before any answer goes out; overdue renewals settled every
/// tick.
#[allow(clippy::too_many_arguments)]
fn work(
    inventory: &Inventory,
    ca: &pki_core::CertificateAuthority,
    policy: &Policy,
    grace: Duration,
    metrics: &Metrics,
    stop: &std::sync::atomic::AtomicBool,
    jobs: &std_mpsc::Receiver<Job>,
    replies: &mpsc::UnboundedSender<Vec<Reply>>,
) {
    let mut last_tick = std::time::Instant::now();
    let mut last_apply = std::time::Instant::now();
    // The inventory's CRL number at the last catch-up (`None` at start: the
    // first tick catches up).
    let mut last_stamp: Option<Option<u64>> = None;
    while !stop.load(Ordering::SeqCst) {
        let mut batch = match jobs.recv_timeout(TICK) {
            Ok(job) => vec![job],
            Err(std_mpsc::RecvTimeoutError::Timeout) => Vec::new(),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        };
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let tick = last_tick.elapsed() >= TICK;
        if batch.is_empty() && !tick {
            continue;
        }
        if tick {
            last_tick = std::time::Instant::now();
        }
        // A failing batch (the database away, say) is retried whole: none
        // of it was answered or acknowledged.
        let mut attempt = 0u32;
        let outcomes = loop {
            match answer(inventory, ca, policy, grace, tick, &batch) {
                Ok(o) => {
                    metrics.failing.store(false, Ordering::Relaxed);
                    break o;
                }
                Err(e) => {
                    metrics.failing.store(true, Ordering::Relaxed);
                    metrics.retried_batches.fetch_add(1, Ordering::Relaxed);
                    let delay = Duration::from_millis(200 << attempt.min(5));
                    attempt += 1;
                    tracing::error!(
                        "answering {} requests: {e}; retrying in {delay:?}",
                        batch.len()
                    );
                    // Asked to stop meanwhile: stop, the batch unanswered
                    // (its requests stay with the broker).
                    let until = std::time::Instant::now() + delay;
                    while std::time::Instant::now() < until {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
            }
        };
        let (outcomes, revoked, committed) = outcomes;
        metrics.revoked.fetch_add(revoked as u64, Ordering::Relaxed);
        // What changed reaches this host's brokers at once; a change
        // another host made to a shared inventory within CATCH_UP.
        // The stamp first: the CRL itself (tens of megabytes for a large
        // fleet) is read only when another host signed a new one.
        let mut catch_up = false;
        if last_apply.elapsed() >= CATCH_UP {
            last_apply = std::time::Instant::now();
            match inventory.latest_crl_number() {
                Ok(stamp) => {
                    catch_up = Some(stamp) != last_stamp;
                    last_stamp = Some(stamp);
                }
                Err(e) => tracing::warn!("reading the inventory's CRL number: {e}"),
            }
        }
        if catch_up || !committed.is_empty() {
            match crate::broker::apply(inventory, &committed) {
                Ok(applied) => {
                    if let Some(n) = applied.caught_up {
                        tracing::info!("CRL number {n} from the shared inventory brought here");
                    }
                    for r in applied.brokers.iter().filter_map(|r| r.error.as_ref()) {
                        tracing::warn!("bringing a broker folder in step: {r}");
                    }
                }
                Err(e) => tracing::warn!("bringing the broker folders in step: {e}"),
            }
        }
        let mut out = Vec::with_capacity(batch.len());
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            if outcome.repeated {
                metrics.repeated.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(serial) = &outcome.issued {
                metrics.issued.fetch_add(1, Ordering::Relaxed);
                // Committed: every certificate the service issues, as
                // fields a JSON log carries.
                tracing::info!(
                    name = outcome.issued_name.as_deref().unwrap_or("?"),
                    serial = %serial,
                    via = if job.topic.starts_with("pki/v1/enroll/") { "claim" } else { "renewal" },
                    "issued a certificate"
                );
            }
            if let Some(reason) = outcome.rejected {
                metrics.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::info!("refused {}: {reason}", job.topic);
            }
            out.push(Reply {
                client: job.client,
                answer: outcome.topic.map(|t| (t, outcome.answer)),
                delivery: job.delivery,
            });
        }
        if !out.is_empty() && replies.send(out).is_err() {
            return;
        }
    }
}

/// One transaction: every request of the batch, and overdue renewals on a
/// tick; a CRL when anything was revoked. The outcomes, how many were
/// revoked, and what the commit changed.
fn answer(
    inventory: &Inventory,
    ca: &pki_core::CertificateAuthority,
    policy: &Policy,
    grace: Duration,
    tick: bool,
    batch: &[Job],
) -> Result<(Vec<Outcome>, usize, crate::inventory::Committed)> {
    let mut locked = inventory.lock(ca)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut revoked = 0;
    for job in batch {
        let outcome = handle(&mut locked, policy, &job.topic, &job.payload)?;
        revoked += outcome.revoked.len();
        outcomes.push(outcome);
    }
    if tick {
        revoked += settle_overdue(&mut locked, grace)?.len();
        // Refusals are kept a day: long enough for every copy of the
        // request. Forgotten once an hour.
        let hour = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 3600);
        if FORGOTTEN.swap(hour, Ordering::Relaxed) != hour {
            locked.forget_refusals(std::time::SystemTime::now() - Duration::from_secs(86_400))?;
        }
    }
    if revoked > 0 {
        let crl = locked.ca_dir().crl_path();
        locked.write_crl(&crl, CRL_DAYS)?;
    }
    let committed = locked.commit()?;
    Ok((outcomes, revoked, committed))
}

/// The hour refusals were last forgotten in.
static FORGOTTEN: AtomicU64 = AtomicU64::new(0);

/// Days until the nextUpdate of a CRL written after a renewal.
const CRL_DAYS: u32 = 30;

/// `/healthz` (200 when every broker connection is up, else 503) and
/// `/metrics` (Prometheus text).
async fn http(
    addr: SocketAddr,
    clients: Vec<MqttClient>,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Lifecycle {
            reason: format!("listening on {addr} (--listen): {e}"),
        })?;
    tracing::info!(
        "health and metrics on http://{}",
        listener.local_addr().map_or(addr, |a| a)
    );
    let health_clients = clients.clone();
    let health_metrics = metrics.clone();
    let router = axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let up = health_clients.iter().all(MqttClient::is_connected);
                let failing = health_metrics.failing.load(Ordering::Relaxed);
                async move {
                    if failing {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "answering requests fails (see the log); retrying\n",
                        )
                    } else if up {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "a broker connection is down\n",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let connected: Vec<bool> = clients.iter().map(MqttClient::is_connected).collect();
                let text = metrics.render(&connected);
                async move { text }
            }),
        );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("the health and metrics listener stopped: {e}");
        }
    }))
}
