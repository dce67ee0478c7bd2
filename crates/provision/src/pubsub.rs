//! `provision pub` and `provision sub`: one-shot MQTT over mutual TLS with
//! a client bundle.

use std::time::Duration;

use mqtt_tls::{ConnectOptions, DeadLetter, Delivery, Message, MqttClient, QoS, TlsIdentity};
use tokio::sync::mpsc;

use crate::error::Result;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Broker host (DNS name or IP address).
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id.
    pub client_id: String,
    /// The largest packet to send and to accept, when not the defaults.
    pub max_packet_size: Option<usize>,
}

fn options(endpoint: &Endpoint) -> ConnectOptions {
    let mut options = ConnectOptions::new(&endpoint.host, endpoint.port, &endpoint.client_id);
    if let Some(max) = endpoint.max_packet_size {
        options.max_outgoing_packet_size = max;
        options.max_incoming_packet_size = max;
        // A message up to that size must fit in memory to be printed.
        options.max_queued_bytes = options.max_queued_bytes.max(max as u64);
    }
    options
}

/// Connects, publishes one message, waits for the broker's acknowledgement
/// (QoS 1/2), and disconnects.
pub async fn publish(
    identity: &TlsIdentity,
    endpoint: &Endpoint,
    topic: &str,
    payload: Vec<u8>,
    qos: QoS,
    retain: bool,
) -> Result<()> {
    let (client, mut connection) = MqttClient::new(&options(endpoint), identity)?;
    connection.connect().await?;
    let runner = tokio::spawn(connection.run());
    let result = client.publish(topic, payload, qos, retain).await;
    client.disconnect().await?;
    let _ = runner.await;
    Ok(result?)
}

/// What [`subscribe`] hands over.
#[derive(Debug)]
pub enum Received<'a> {
    /// A message.
    Message {
        /// Its topic.
        topic: &'a str,
        /// Its payload.
        payload: &'a [u8],
    },
    /// A message that could not be read or matched, acknowledged and
    /// dropped.
    Dropped {
        /// Its topic.
        topic: &'a str,
        /// Why.
        reason: &'a DeadLetter,
    },
}

/// Connects, subscribes, and hands each payload to `each` until `count`
/// messages arrived (forever with `None`), or `timeout` passes. A message
/// that cannot be handed over (larger than `endpoint.max_packet_size`) comes
/// as [`Received::Dropped`] with the reason, and does not count.
pub async fn subscribe(
    identity: &TlsIdentity,
    endpoint: &Endpoint,
    topic: &str,
    qos: QoS,
    count: Option<usize>,
    timeout: Option<Duration>,
    mut each: impl FnMut(Received<'_>),
) -> Result<usize> {
    let (client, mut connection) = MqttClient::new(&options(endpoint), identity)?;
    connection.connect().await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (drop_tx, mut drop_rx) = mpsc::unbounded_channel();
    client.on_dead_letter(move |m: Message, delivery: Delivery, reason: DeadLetter| {
        let _ = drop_tx.send((m.topic, reason));
        delivery.ack()
    });
    let subscribed = client.subscribe(topic, qos, move |m| {
        let tx = tx.clone();
        async move {
            // The receiver is gone only when we are done: nothing to keep.
            let _ = tx.send((m.topic, m.payload));
            Ok::<(), std::io::Error>(())
        }
    })?;
    // A certificate the broker says is revoked will not be taken later:
    // reconnecting with it is pointless, so `sub` ends with the broker's
    // verdict.
    let mut events = client.connection_events();
    let (refused_tx, mut refused_rx) = mpsc::unbounded_channel();
    let refused_cert = refused_tx.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let mqtt_tls::ConnectionEvent::ConnectFailed { error, .. } = event
                && let mqtt_tls::Error::ClientCertificateRejected { alert, hint } = &*error
                // Revoked is final; other refusals (a lapsed CRL, a broker
                // being reconfigured) may pass, and reconnecting goes on.
                && alert.contains("Revoked")
            {
                let _ = refused_cert.send(mqtt_tls::Error::ClientCertificateRejected {
                    alert: alert.clone(),
                    hint,
                });
                break;
            }
        }
    });
    // A subscription the broker refuses (SUBACK 0x80: outside our
    // identity's rules) would wait for ever: `sub` ends with the refusal.
    let refused_sub = refused_tx.clone();
    tokio::spawn(async move {
        if let Err(e @ mqtt_tls::Error::SubscriptionRefused { .. }) = subscribed.granted().await {
            let _ = refused_sub.send(e);
        }
    });
    let runner = tokio::spawn(connection.run());
    let mut received = 0;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    while count.is_none_or(|c| received < c) {
        let next = async {
            tokio::select! {
                // The dispatcher handles messages in order, so a dropped one
                // reported by now came before any message waiting.
                biased;
                Some(d) = drop_rx.recv() => Some(Err(d)),
                m = rx.recv() => m.map(|m| Ok(Ok(m))),
                Some(refused) = refused_rx.recv() => Some(Ok(Err(refused))),
            }
        };
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, next).await {
                Ok(m) => m,
                Err(_) => break,
            },
            None => next.await,
        };
        let (topic, payload) = match next {
            Some(Ok(Ok(message))) => message,
            Some(Ok(Err(refused))) => {
                let _ = client.disconnect().await;
                let _ = runner.await;
                return Err(refused.into());
            }
            Some(Err((topic, reason))) => {
                each(Received::Dropped {
                    topic: &topic,
                    reason: &reason,
                });
                continue;
            }
            None => break,
        };
        each(Received::Message {
            topic: &topic,
            payload: &payload,
        });
        received += 1;
    }
    client.disconnect().await?;
    let _ = runner.await;
    Ok(received)
}
