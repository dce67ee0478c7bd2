//! Configuration: a TOML file, overridden by flags and environment
//! variables (see `main.rs`).

use std::net::SocketAddr;

use mqtt_tls::{ClientCert, QoS, TopicFilter};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The client bundle.
    pub tls: Option<ClientCert>,
    /// Broker and subscriptions.
    #[serde(default)]
    pub mqtt: MqttSection,
    /// Database URL: `sqlite://FILE` (default `sqlite://ingest.db`) or
    /// `postgres://user:pass@host/db`.
    #[serde(default = "default_db")]
    pub db: String,
    /// Allow a link to a remote PostgreSQL that is not verified TLS (an
    /// sslmode other than verify-full or verify-ca): for a network you
    /// trust. Off: refused at startup.
    #[serde(default)]
    pub insecure_db: bool,
    /// HTTP listen address (default 127.0.0.1:8080).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Serve `listen` over HTTPS with client certificates (`[http]`).
    #[serde(default)]
    pub http: Option<crate::https::HttpsOptions>,
    /// A plain-HTTP listener for `/healthz` and `/metrics` only (a probe
    /// port), on loopback.
    #[serde(default)]
    pub probe_listen: Option<SocketAddr>,
    /// Serve plain HTTP on an address other than loopback: anyone who can
    /// reach it reads every message. Off: refused at startup.
    #[serde(default)]
    pub insecure_plain_http: bool,
    /// Batching.
    #[serde(default)]
    pub batch: BatchSection,
}

/// `[mqtt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Broker host.
    #[serde(default = "default_host")]
    pub host: String,
    /// Broker port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// A stable client id: the persistent session is tied to it.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Filters, `FILTER` (QoS 1) or `FILTER@0` / `FILTER@2`.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Subscribe every filter through the shared subscription
    /// `$share/GROUP/FILTER`: instances with the same group split the
    /// messages between them (each with its own client id).
    #[serde(default)]
    pub share_group: Option<String>,
    /// The largest message to read, in bytes (MQTT's remaining length:
    /// topic, packet id and payload). A larger one is stored in
    /// `dead_letters` with an empty payload and the reason, and
    /// acknowledged. Default: the largest MQTT allows.
    #[serde(default)]
    pub max_packet_size: Option<usize>,
    /// Bytes of received messages held in memory before they are stored
    /// (default 64 MiB): QoS 0 messages beyond it are dropped and counted,
    /// QoS 1/2 messages wait in the broker until rows are committed; one
    /// message larger than this is kept as a dead letter, like one over
    /// `max_packet_size`.
    #[serde(default)]
    pub max_queued_bytes: Option<u64>,
}

/// `[batch]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSection {
    /// Flush at this many messages.
    #[serde(default = "default_batch_max")]
    pub max_messages: usize,
    /// Flush this many milliseconds after a batch's first message.
    #[serde(default = "default_batch_wait")]
    pub max_wait_ms: u64,
}

impl Default for MqttSection {
    fn default() -> Self {
        Self {
            host: default_host(),
            port: default_port(),
            client_id: default_client_id(),
            topics: Vec::new(),
            share_group: None,
            max_packet_size: None,
            max_queued_bytes: None,
        }
    }
}

impl Default for BatchSection {
    fn default() -> Self {
        Self {
            max_messages: default_batch_max(),
            max_wait_ms: default_batch_wait(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tls: None,
            mqtt: MqttSection::default(),
            db: default_db(),
            insecure_db: false,
            listen: default_listen(),
            http: None,
            probe_listen: None,
            insecure_plain_http: false,
            batch: BatchSection::default(),
        }
    }
}

fn default_db() -> String {
    "sqlite://ingest.db".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_host() -> String {
    "localhost".into()
}
fn default_port() -> u16 {
    8883
}
fn default_client_id() -> String {
    "mqtt-ingest".into()
}
fn default_batch_max() -> usize {
    500
}
fn default_batch_wait() -> u64 {
    5
}

impl Config {
    /// Reads a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = safe_files::read_capped_text(path).map_err(|e| Error::Config {
            reason: format!("reading {}: {e}", path.display()),
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|e| Error::Config {
            reason: format!("{}: {e}", path.display()),
        })?;
        // Relative bundle paths are relative to the file.
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        config.tls = config.tls.map(|tls| tls.relative_to(base));
        if let Some(http) = &mut config.http {
            for p in [&mut http.cert, &mut http.key, &mut http.client_ca] {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
            if let Some(crl) = &mut http.crl
                && crl.is_relative()
            {
                *crl = base.join(&*crl);
            }
        }
        Ok(config)
    }

    /// Refuses plain HTTP where anyone could read every message: the main
    /// listener or the probe listener on an address other than loopback
    /// without TLS, unless `insecure_plain_http`.
    pub fn check_listeners(&self) -> Result<()> {
        if self.insecure_plain_http {
            return Ok(());
        }
        let plain = |addr: &SocketAddr, what: &str| {
            if addr.ip().is_loopback() {
                Ok(())
            } else {
                Err(Error::Config {
                    reason: format!(
                        "refusing to serve {what} over plain HTTP on {addr}: anyone who can reach \
                         it would read it. Serve HTTPS with client certificates (--http-cert, \
                         --http-key, --http-client-ca; docs/ingest.md), listen on 127.0.0.1, or \
                         pass --insecure-plain-http if that is really what you want"
                    ),
                })
            }
        };
        if self.http.is_none() {
            plain(&self.listen, "every stored message")?;
        }
        if let Some(probe) = &self.probe_listen {
            plain(probe, "the metrics")?;
        }
        Ok(())
    }

    /// Refuses a packet-size limit above the memory bound: a message
    /// larger than `max_queued_bytes` is read past (a dead letter without
    /// its payload), so such a `max_packet_size` would promise what is not
    /// kept.
    pub fn check_sizes(&self) -> Result<()> {
        let queued = self
            .mqtt
            .max_queued_bytes
            .unwrap_or(mqtt_tls::DEFAULT_MAX_QUEUED_BYTES);
        match self.mqtt.max_packet_size {
            Some(packet) if packet as u64 > queued => Err(Error::Config {
                reason: format!(
                    "--max-packet-size ({packet} bytes) is over --max-queued-bytes ({queued} \
                     bytes): a message that large could never be held to store it; raise \
                     --max-queued-bytes to at least {packet}"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The subscriptions with their QoS (shared ones with a share group).
    pub fn filters(&self) -> Result<Vec<(TopicFilter, QoS)>> {
        if self.mqtt.topics.is_empty() {
            return Err(Error::Config {
                reason: "no topic to subscribe to: give --topic FILTER or [mqtt] topics".into(),
            });
        }
        let filters = self
            .mqtt
            .topics
            .iter()
            .map(|t| parse_topic(t))
            .collect::<Result<Vec<_>>>()?;
        let Some(group) = &self.mqtt.share_group else {
            return Ok(filters);
        };
        if self.mqtt.client_id == default_client_id() {
            // Every instance would take the others' sessions over: the
            // broker disconnects the older of two connections with one
            // client id, and they would kick each other.
            return Err(Error::Config {
                reason: format!(
                    "--share-group {group}: give each instance an identity of its own \
                     (its own certificate: our brokers take the client id from it) and a \
                     client id of its own (--client-id, or client_id in [mqtt]) for brokers \
                     that do not; with the default {:?} instances would disconnect each other",
                    default_client_id()
                ),
            });
        }
        // Each shared subscription delivers its own copy (maybe to another
        // instance), so a message matching two filters would be stored
        // twice: refuse filters that overlap.
        for (i, (a, _)) in filters.iter().enumerate() {
            if let Some((b, _)) = filters[i + 1..].iter().find(|(b, _)| a.overlaps(b)) {
                return Err(Error::Config {
                    reason: format!(
                        "topics {a} and {b} overlap: with --share-group each is a \
                         shared subscription of its own that delivers its own copy, \
                         so a message matching both would be stored twice; give \
                         filters that do not overlap"
                    ),
                });
            }
        }
        filters
            .into_iter()
            .map(|(filter, qos)| {
                if filter.share_group().is_some() {
                    return Err(Error::Config {
                        reason: format!(
                            "topic {:?} is already a shared subscription; \
                             give the plain filter with --share-group",
                            filter.as_str()
                        ),
                    });
                }
                Ok((TopicFilter::shared(group, &filter)?, qos))
            })
            .collect()
    }

    /// The client bundle, or an error saying how to give one.
    pub fn bundle(&self) -> Result<&ClientCert> {
        self.tls.as_ref().ok_or_else(|| Error::Config {
            reason: "no client certificate: give --cert --key --ca, or a [tls] table".into(),
        })
    }
}

/// `FILTER`, `FILTER@0`, `FILTER@1`, `FILTER@2`.
pub fn parse_topic(spec: &str) -> Result<(TopicFilter, QoS)> {
    let (filter, qos) = match spec.rsplit_once('@').map(|(f, q)| (f, q.parse())) {
        Some((f, Ok(qos))) => (f, qos),
        _ => (spec, QoS::AtLeastOnce),
    };
    Ok((TopicFilter::new(filter)?, qos))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_share_group_needs_a_client_id_of_its_own() {
        let mut config: Config = toml::from_str("[mqtt]\ntopics = [\"a/#\"]\n").unwrap();
        config.mqtt.share_group = Some("ingest".into());
        let err = config.filters().unwrap_err().to_string();
        assert!(
            err.contains("an identity of its own") && err.contains("client id of its own"),
            "{err}"
        );
        config.mqtt.client_id = "ingest-1".into();
        assert!(config.filters().is_ok());
    }

    #[test]
    fn a_share_group_refuses_overlapping_filters() {
        let mut config = Config::default();
        config.mqtt.client_id = "ingest-a".into();
        config.mqtt.share_group = Some("g".into());
        config.mqtt.topics = vec!["a/#".into(), "a/+/t@2".into()];
        let err = config.filters().unwrap_err().to_string();
        assert!(err.contains("a/# and a/+/t overlap"), "{err}");
        config.mqtt.topics = vec!["a/#".into(), "b/+/t".into()];
        assert_eq!(config.filters().unwrap().len(), 2);
        // Without a share group, one subscription gets each message once.
        config.mqtt.share_group = None;
        config.mqtt.topics = vec!["a/#".into(), "a/+/t".into()];
        assert_eq!(config.filters().unwrap().len(), 2);
    }

    #[test]
    fn a_share_group_shares_every_filter() {
        let mut config = super::Config::default();
        config.mqtt.topics = vec!["devices/+/telemetry".into(), "alerts/#@2".into()];
        config.mqtt.client_id = "ingest-1".into();
        config.mqtt.share_group = Some("ingest".into());
        let filters = config.filters().unwrap();
        assert_eq!(filters[0].0.as_str(), "$share/ingest/devices/+/telemetry");
        assert_eq!(filters[1].0.as_str(), "$share/ingest/alerts/#");
        assert_eq!(filters[1].1, mqtt_tls::QoS::ExactlyOnce);
        for bad in ["", "a/b", "+", "g#"] {
            config.mqtt.share_group = Some(bad.into());
            assert!(config.filters().is_err(), "{bad:?}");
        }
        config.mqtt.share_group = Some("g".into());
        config.mqtt.topics = vec!["$share/x/t".into()];
        assert!(config.filters().is_err());
    }

    use super::*;

    #[test]
    fn topics_take_an_optional_qos() {
        let parsed = |spec| {
            let (filter, qos) = parse_topic(spec).unwrap();
            (filter.as_str().to_owned(), qos)
        };
        assert_eq!(parsed("a/#"), ("a/#".into(), QoS::AtLeastOnce));
        assert_eq!(parsed("a/+@0"), ("a/+".into(), QoS::AtMostOnce));
        assert_eq!(
            parsed("$share/g/a@2"),
            ("$share/g/a".into(), QoS::ExactlyOnce)
        );
        assert!(parse_topic("a/#/b").is_err());
    }

    #[test]
    fn a_packet_limit_over_the_memory_bound_is_refused() {
        let mut config = Config::default();
        config.mqtt.max_packet_size = Some(100 << 20);
        let err = config.check_sizes().unwrap_err().to_string();
        assert!(
            err.contains("--max-packet-size (104857600 bytes) is over --max-queued-bytes"),
            "{err}"
        );
        config.mqtt.max_queued_bytes = Some(100 << 20);
        config.check_sizes().unwrap();
        config.mqtt.max_packet_size = Some(1 << 20);
        config.mqtt.max_queued_bytes = None;
        config.check_sizes().unwrap();
    }

    #[test]
    fn reads_a_full_file() {
        let config: Config = toml::from_str(
            r#"
            db = "sqlite:///var/lib/ingest.db"
            listen = "0.0.0.0:9000"
            [tls]
            cert_path = "c.pem"
            key_path = "k.pem"
            ca_cert_path = "ca.pem"
            [mqtt]
            host = "broker.example.com"
            client_id = "ingest-1"
            topics = ["sensors/#", "alarms/#@2"]
            [batch]
            max_messages = 100
            "#,
        )
        .unwrap();
        assert_eq!(config.mqtt.port, 8883);
        assert_eq!(config.filters().unwrap().len(), 2);
        assert_eq!(config.batch.max_wait_ms, 5);
        assert!(toml::from_str::<Config>("unknown = 1").is_err());
    }
}
