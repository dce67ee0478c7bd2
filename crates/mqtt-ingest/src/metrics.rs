//! Counters for `/metrics` (Prometheus text format) and `/healthz`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Batch-size histogram bucket bounds.
const BATCH_BUCKETS: [u64; 8] = [1, 2, 5, 10, 20, 50, 100, 500];
/// Store-latency histogram bucket bounds, in microseconds.
const LATENCY_BUCKETS_US: [u64; 8] = [500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000];

/// What the service counts. All counters only grow.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages received from the broker.
    pub received: AtomicU64,
    /// Messages committed to the database.
    pub stored: AtomicU64,
    /// Messages stored in `dead_letters` (no subscription matched them, a
    /// handler gave up, or too large to read).
    pub dead_letters: AtomicU64,
    /// Of those, the messages over the packet-size limit.
    pub too_large: AtomicU64,
    /// Messages acknowledged to the broker (after their commit).
    pub acknowledged: AtomicU64,
    /// Failed store attempts (each retried).
    pub store_failures: AtomicU64,
    /// Whether the last store attempt succeeded.
    pub database_ok: AtomicBool,
    batches: Histogram<8>,
    latency_us: Histogram<8>,
}

#[derive(Debug)]
struct Histogram<const N: usize> {
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Histogram<N> {
    fn observe(&self, bounds: &[u64; N], value: u64) {
        for (bucket, bound) in self.buckets.iter().zip(bounds) {
            if value <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Renders the histogram; values are recorded in units of
    /// 1/`divisor` of the exposed unit (microseconds for seconds: 1e6).
    fn render(&self, out: &mut String, name: &str, help: &str, bounds: &[u64; N], divisor: u64) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bucket, bound) in self.buckets.iter().zip(bounds) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {}",
                decimal(*bound, divisor),
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            decimal(self.sum.load(Ordering::Relaxed), divisor)
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// `value / divisor` written exactly in decimal (`25000 / 1e6` is `0.025`,
/// where floating point prints `0.024999999999999998`); `divisor` is a
/// power of ten.
fn decimal(value: u64, divisor: u64) -> String {
    let (whole, fraction) = (value / divisor.max(1), value % divisor.max(1));
    if fraction == 0 {
        return whole.to_string();
    }
    let width = divisor.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

impl Metrics {
    /// Records one committed batch.
    pub fn batch_stored(&self, size: usize, latency: std::time::Duration) {
        self.stored.fetch_add(size as u64, Ordering::Relaxed);
        self.batches.observe(&BATCH_BUCKETS, size as u64);
        self.latency_us.observe(
            &LATENCY_BUCKETS_US,
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        );
        self.database_ok.store(true, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4). Written by hand: it is
    /// a few lines, and a metrics crate would outweigh it.
    /// `client`: the MQTT client's counters; `connected`: whether its
    /// session is up.
    pub fn render(&self, client: &mqtt_tls::Stats, connected: bool) -> String {
        let reconnects = client.connections.saturating_sub(1);
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "mqtt_ingest_received_total",
            "Messages received from the broker.",
            self.received.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "mqtt_ingest_dead_letters_total",
            "Messages stored as dead letters (no subscription matched, or too large to read).",
            self.dead_letters.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "mqtt_ingest_too_large_total",
            "Messages over the packet-size limit (--max-packet-size), stored as dead letters without their payload.",
            self.too_large.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "mqtt_ingest_stored_total",
            "Messages committed to the database.",
            self.stored.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "mqtt_ingest_acknowledged_total",
            "Messages acknowledged to the broker after their commit.",
            self.acknowledged.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "mqtt_ingest_store_failures_total",
            "Failed store attempts (retried).",
            self.store_failures.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "mqtt_ingest_reconnects_total",
            "MQTT connections made after the first.",
            reconnects,
        );
        counter(
            &mut out,
            "mqtt_ingest_qos0_dropped_total",
            "QoS 0 messages dropped unread: more than --max-queued-bytes (or 1,000 QoS 0 messages) waited to be stored.",
            client.qos0_dropped,
        );
        counter(
            &mut out,
            "mqtt_ingest_read_pauses_total",
            "Times reading from the broker paused because QoS 1/2 messages filled --max-queued-bytes.",
            client.read_pauses,
        );
        let _ = writeln!(
            out,
            "# HELP mqtt_ingest_queued_bytes Bytes of received messages not stored yet.\n# TYPE mqtt_ingest_queued_bytes gauge\nmqtt_ingest_queued_bytes {}",
            client.queued_bytes
        );
        let _ = writeln!(
            out,
            "# HELP mqtt_ingest_connected Whether the MQTT session is up.\n# TYPE mqtt_ingest_connected gauge\nmqtt_ingest_connected {}",
            u8::from(connected)
        );
        self.batches.render(
            &mut out,
            "mqtt_ingest_batch_size",
            "Messages per committed batch.",
            &BATCH_BUCKETS,
            1,
        );
        self.latency_us.render(
            &mut out,
            "mqtt_ingest_store_seconds",
            "Time to commit a batch.",
            &LATENCY_BUCKETS_US,
            1_000_000,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.received.fetch_add(3, Ordering::Relaxed);
        m.batch_stored(3, std::time::Duration::from_millis(2));
        let mut client = mqtt_tls::Stats::default();
        client.connections = 2;
        client.queued_bytes = 42;
        let text = m.render(&client, true);
        assert!(text.contains("mqtt_ingest_reconnects_total 1\n"), "{text}");
        assert!(text.contains("mqtt_ingest_queued_bytes 42\n"), "{text}");
        assert!(text.contains("mqtt_ingest_received_total 3\n"), "{text}");
        assert!(text.contains("mqtt_ingest_stored_total 3\n"));
        assert!(
            text.contains("mqtt_ingest_batch_size_bucket{le=\"5\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("mqtt_ingest_batch_size_bucket{le=\"2\"} 0\n"));
        assert!(text.contains("mqtt_ingest_store_seconds_count 1\n"));
        assert!(text.contains("mqtt_ingest_connected 1\n"));
        // Bucket bounds exactly as configured, not floating-point noise.
        for le in [
            "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.1", "1",
        ] {
            assert!(
                text.contains(&format!("mqtt_ingest_store_seconds_bucket{{le=\"{le}\"}}")),
                "{le}: {text}"
            );
        }
        assert!(
            text.contains("mqtt_ingest_store_seconds_sum 0.002\n"),
            "{text}"
        );
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal(25_000, 1_000_000), "0.025");
        assert_eq!(decimal(1_000_000, 1_000_000), "1");
        assert_eq!(decimal(1_500_001, 1_000_000), "1.500001");
        assert_eq!(decimal(7, 1), "7");
        assert_eq!(decimal(0, 1_000_000), "0");
    }
}
