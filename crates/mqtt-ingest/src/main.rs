//! `mqtt-ingest`: store every MQTT message, acknowledge after the commit,
//! serve them over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mqtt_ingest::config::Config;
use mqtt_ingest::{AppState, Batching, Metrics, Store, app, pipeline, redact};
use mqtt_tls::{ConnectOptions, MqttClient};

/// Subscribe over mutual TLS and store every message in SQLite or
/// PostgreSQL, acknowledging each to the broker only after it is committed.
/// Flags override the config file; each flag also reads the environment
/// variable named in its help.
#[derive(Parser)]
#[command(
    name = "mqtt-ingest",
    version,
    after_help = "Example:\n  mqtt-ingest --cert backend_certs/backend_cert.pem --key backend_certs/backend.key \\\n    --ca root_cert/root_ca_cert.pem --host localhost --topic 'devices/#' --db sqlite://ingest.db\n  (a service identity: a device may read only its own topics)"
)]
struct Args {
    /// A TOML configuration file.
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_CONFIG")]
    config: Option<PathBuf>,
    /// Client certificate.
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_CERT", requires_all = ["key", "ca"])]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_KEY")]
    key: Option<PathBuf>,
    /// CA certificate.
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_CA")]
    ca: Option<PathBuf>,
    /// Broker host.
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_HOST")]
    host: Option<String>,
    /// Broker port.
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_PORT")]
    port: Option<u16>,
    /// Renew the client certificate over MQTT before it ends (at two
    /// thirds of its lifetime; `provision serve` answers), switching the
    /// connection to the new identity on the same session and replacing
    /// the certificate and key files (docs/lifecycle.md).
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_RENEW")]
    renew: bool,
    /// Client id (keep it stable: the persistent session belongs to it).
    /// Brokers from `provision broker-config` use the certificate's name
    /// instead: run each instance with its own identity.
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_CLIENT_ID")]
    client_id: Option<String>,
    /// Filter to subscribe (repeatable; QoS 1 unless FILTER@0 or FILTER@2).
    #[arg(
        long = "topic",
        hide_env_values = true,
        env = "MQTT_INGEST_TOPICS",
        value_delimiter = ','
    )]
    topics: Vec<String>,
    /// Subscribe through `$share/GROUP/FILTER`: instances with the same
    /// group (each with its own identity and --client-id) split the
    /// messages.
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_SHARE_GROUP")]
    share_group: Option<String>,
    /// The largest message to read, in bytes; a larger one goes to the
    /// `dead_letters` table (payload empty, the reason) and is acknowledged
    /// (default: the largest MQTT allows).
    #[arg(
        long,
        hide_env_values = true,
        env = "MQTT_INGEST_MAX_PACKET_SIZE",
        value_name = "BYTES"
    )]
    max_packet_size: Option<usize>,
    /// Bytes of received messages held in memory before they are stored
    /// (default 64 MiB): QoS 0 messages beyond it are dropped and counted,
    /// QoS 1/2 messages wait in the broker; a larger message goes to
    /// `dead_letters` as too large.
    #[arg(
        long,
        hide_env_values = true,
        env = "MQTT_INGEST_MAX_QUEUED_BYTES",
        value_name = "BYTES",
        value_parser = clap::value_parser!(u64).range(1024..)
    )]
    max_queued_bytes: Option<u64>,
    /// Database URL (default sqlite://ingest.db). A remote PostgreSQL
    /// needs sslmode=verify-full&sslrootcert=FILE (and sslcert/sslkey for
    /// certificate authentication).
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_DB")]
    db: Option<String>,
    /// Allow a link to a remote PostgreSQL that is not verified TLS: for a
    /// network you trust.
    #[arg(long, env = "MQTT_INGEST_INSECURE_DB")]
    insecure_db: bool,
    /// HTTP listen address (default 127.0.0.1:8080; port 0 picks one).
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_LISTEN")]
    listen: Option<SocketAddr>,
    /// Serve HTTPS with this server certificate (from `provision issue
    /// server`), requiring client certificates from --http-client-ca.
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_HTTP_CERT", requires_all = ["http_key", "http_client_ca"])]
    http_cert: Option<PathBuf>,
    /// The HTTPS server certificate's key.
    #[arg(
        long,
        hide_env_values = true,
        env = "MQTT_INGEST_HTTP_KEY",
        requires = "http_cert"
    )]
    http_key: Option<PathBuf>,
    /// The CA clients' certificates must come from (our root): readers
    /// (role reader) read /api/messages and /metrics, others get 403.
    #[arg(
        long,
        hide_env_values = true,
        env = "MQTT_INGEST_HTTP_CLIENT_CA",
        requires = "http_cert"
    )]
    http_client_ca: Option<PathBuf>,
    /// The CA's CRL: revoked clients are refused at the handshake (read
    /// again when the file changes).
    #[arg(
        long,
        hide_env_values = true,
        env = "MQTT_INGEST_HTTP_CRL",
        requires = "http_cert"
    )]
    http_crl: Option<PathBuf>,
    /// Also serve /healthz and /metrics over plain HTTP here (a probe port
    /// on loopback).
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_PROBE_LISTEN")]
    probe_listen: Option<SocketAddr>,
    /// Serve plain HTTP on an address other than loopback, where anyone who
    /// can reach it reads every message (refused without this).
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_INSECURE_PLAIN_HTTP")]
    insecure_plain_http: bool,
    /// Flush a batch at this many messages.
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_BATCH_MAX")]
    batch_max: Option<usize>,
    /// Flush a batch this many milliseconds after its first message.
    #[arg(long, hide_env_values = true, env = "MQTT_INGEST_BATCH_WAIT_MS")]
    batch_wait_ms: Option<u64>,
    /// On SIGTERM/SIGINT, wait at most this many seconds for the database
    /// to take what was received; what it has not taken by then stays
    /// unacknowledged with the broker's session, and the exit code is 1.
    #[arg(
        long,
        env = "MQTT_INGEST_SHUTDOWN_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    shutdown_timeout: u64,
    /// Log to standard error as `text` (colour only at a terminal without
    /// NO_COLOR) or `json` (one object a line: time, level, target,
    /// message, fields); RUST_LOG chooses what (default: info).
    #[arg(
        long,
        value_enum,
        value_name = "text|json",
        hide_possible_values = true,
        env = "MQTT_INGEST_LOG_FORMAT",
        default_value_t = service_log::LogFormat::Text
    )]
    log_format: service_log::LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = service_log::init(args.log_format, "info") {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let format = args.log_format;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            service_log::fatal(format, &format!("starting the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            service_log::fatal(format, &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn configure(args: Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let (Some(cert), Some(key), Some(ca)) = (args.cert, args.key, args.ca) {
        config.tls = Some(mqtt_tls::ClientCert::new(cert, key, ca));
    }
    if let Some(h) = args.host {
        config.mqtt.host = h;
    }
    if let Some(p) = args.port {
        config.mqtt.port = p;
    }
    if let Some(c) = args.client_id {
        config.mqtt.client_id = c;
    }
    if !args.topics.is_empty() {
        config.mqtt.topics = args.topics;
    }
    if let Some(g) = args.share_group {
        config.mqtt.share_group = Some(g);
    }
    if let Some(m) = args.max_packet_size {
        config.mqtt.max_packet_size = Some(m);
    }
    if let Some(m) = args.max_queued_bytes {
        config.mqtt.max_queued_bytes = Some(m);
    }
    config.insecure_db |= args.insecure_db;
    if let Some(d) = args.db {
        config.db = d;
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let (Some(cert), Some(key), Some(client_ca)) =
        (args.http_cert, args.http_key, args.http_client_ca)
    {
        config.http = Some(mqtt_ingest::https::HttpsOptions {
            cert,
            key,
            client_ca,
            crl: args.http_crl,
        });
    }
    if let Some(p) = args.probe_listen {
        config.probe_listen = Some(p);
    }
    if args.insecure_plain_http {
        config.insecure_plain_http = true;
    }
    if let Some(m) = args.batch_max {
        config.batch.max_messages = m;
    }
    if let Some(w) = args.batch_wait_ms {
        config.batch.max_wait_ms = w;
    }
    Ok(config)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown_timeout = args.shutdown_timeout;
    let renew = args.renew;
    let config = configure(args)?;
    let filters = config.filters()?;
    config.check_listeners()?;
    config.check_sizes()?;
    // Read and checked before anything connects: a bad file fails here.
    let https = config
        .http
        .clone()
        .map(mqtt_ingest::https::Https::new)
        .transpose()?
        .map(Arc::new);
    if renew {
        // A replacement a crash interrupted is finished first.
        mqtt_tls::lifecycle::settle(config.bundle()?)?;
    }
    let identity = config.bundle()?.load()?;
    let transport = if config.insecure_db {
        db_link::Transport::AllowInsecure
    } else {
        db_link::Transport::VerifiedTls
    };
    let store = Store::open_with(&config.db, transport).await?;

    let mut options =
        ConnectOptions::new(&config.mqtt.host, config.mqtt.port, &config.mqtt.client_id);
    options.clean_session = false;
    if let Some(max) = config.mqtt.max_packet_size {
        options.max_incoming_packet_size = max;
    }
    if let Some(max) = config.mqtt.max_queued_bytes {
        options.max_queued_bytes = max;
    }
    let (client, connection) = MqttClient::new(&options, &identity)?;
    let metrics = Arc::new(Metrics::default());
    let batching = Batching {
        max_messages: config.batch.max_messages.max(1),
        max_wait: Duration::from_millis(config.batch.max_wait_ms),
    };
    let pipeline = pipeline::start(&client, &filters, store.clone(), metrics.clone(), batching)?;
    // The background task: connects, and reconnects with backoff, for the
    // service's whole life (Django's AppConfig.ready).
    let mqtt = tokio::spawn(connection.run());
    let renewer = if renew {
        let renewer = mqtt_tls::lifecycle::Renewer::new(
            client.clone(),
            config.bundle()?.clone(),
            mqtt_tls::lifecycle::RenewOptions::default(),
        )?;
        let due = renewer.due()?;
        let wait = due
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tracing::info!(
            "renewing the client certificate over MQTT in {} s",
            wait.as_secs()
        );
        Some(tokio::spawn(async move {
            if let Err(e) = renewer.run().await {
                tracing::error!("renewing the client certificate stopped: {e}");
            }
        }))
    } else {
        None
    };

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        "mqtt-ingest listening on {}://{addr} (database {}, broker {}:{})",
        if https.is_some() { "https" } else { "http" },
        redact(&config.db),
        config.mqtt.host,
        config.mqtt.port
    );
    let state = AppState {
        store: store.clone(),
        client: client.clone(),
        metrics,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let probe = match config.probe_listen {
        Some(probe_addr) => {
            let probe_listener = tokio::net::TcpListener::bind(probe_addr)
                .await
                .with_context(|| format!("listening on {probe_addr} (--probe-listen)"))?;
            tracing::info!(
                "health and metrics on http://{}",
                probe_listener.local_addr()?
            );
            let router = mqtt_ingest::probes(state.clone());
            let stop = stopped(stop_rx.clone());
            Some(tokio::spawn(async move {
                axum::serve(probe_listener, router)
                    .with_graceful_shutdown(stop)
                    .await
            }))
        }
        None => None,
    };
    let served = match https {
        Some(https) => {
            let signal = async move {
                shutdown_signal().await;
                let _ = stop_tx.send(true);
            };
            mqtt_ingest::https::serve(listener, https, app(state), signal)
                .await
                .context("serving HTTPS")
        }
        None => {
            let signal = async move {
                shutdown_signal().await;
                let _ = stop_tx.send(true);
            };
            axum::serve(listener, app(state))
                .with_graceful_shutdown(signal)
                .await
                .context("serving HTTP")
        }
    };
    if let Some(p) = probe {
        let _ = p.await;
    }
    served?;

    tracing::info!("shutting down: committing and acknowledging what was received");
    let limit = std::time::Duration::from_secs(shutdown_timeout);
    if let Some(r) = renewer {
        r.abort();
    }
    let drained = pipeline.drain_within(limit).await;
    // Bounded too: with the broker's socket stalled, even queueing the
    // DISCONNECT could wait.
    let bound = std::time::Duration::from_secs(10);
    if tokio::time::timeout(bound, client.disconnect())
        .await
        .is_err()
    {
        tracing::warn!("the broker did not take our DISCONNECT within {bound:?}");
    }
    let _ = tokio::time::timeout(bound, mqtt).await;
    if !drained {
        anyhow::bail!(
            "stopped after {shutdown_timeout} s with messages the database did not take; \
             they stay unacknowledged with the broker's session and come to the next one"
        );
    }
    store.close().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The same spellings as `provision`'s (`peers::vocabulary::CONCEPTS`).
    #[test]
    fn the_flags_speak_the_shared_vocabulary() {
        let problems = peers::vocabulary::check(&super::Args::command());
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
