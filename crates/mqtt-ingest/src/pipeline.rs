//! From MQTT to the database: messages are batched, committed, and only
//! then acknowledged to the broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use mqtt_tls::{Backoff, DeadLetter, Delivery, Message, MqttClient, QoS, TopicFilter};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::metrics::Metrics;
use crate::store::{NewMessage, Store};

/// How batches are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Flush when this many messages wait.
    pub max_messages: usize,
    /// Flush this long after the first message of a batch arrived.
    pub max_wait: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_messages: 500,
            max_wait: Duration::from_millis(5),
        }
    }
}

/// The running pipeline.
pub struct Pipeline {
    closing: Arc<AtomicBool>,
    wake: Arc<Notify>,
    writer: JoinHandle<()>,
}

type Item = (NewMessage, Delivery);

/// Subscribes `filters` on `client` and starts the writer.
pub fn start(
    client: &MqttClient,
    filters: &[(TopicFilter, QoS)],
    store: Store,
    metrics: Arc<Metrics>,
    batching: Batching,
) -> Result<Pipeline> {
    // Bounded: when the database stalls, handlers wait here, and the broker
    // stops sending once its in-flight window of unacknowledged messages is
    // full. Nothing piles up in memory.
    let (tx, rx) = mpsc::channel::<Item>(batching.max_messages.max(1) * 4);
    let closing = Arc::new(AtomicBool::new(false));
    // Overlapping filters (`a/#` and `a/+/t`) all match one message, and
    // the client calls each one's handler: the first filter in the list that
    // matches stores it, the others only release their share of the
    // acknowledgement. One arrival, one row.
    let parsed: Arc<Vec<TopicFilter>> = Arc::new(filters.iter().map(|(f, _)| f.clone()).collect());
    for (index, (filter, qos)) in filters.iter().enumerate() {
        let tx = tx.clone();
        let closing = closing.clone();
        let metrics = metrics.clone();
        let parsed = parsed.clone();
        client.subscribe_deferred(filter, *qos, move |m: Message, delivery: Delivery| {
            let tx = tx.clone();
            let closing = closing.clone();
            let metrics = metrics.clone();
            let stores = parsed.iter().position(|f| f.matches(&m.topic)) == Some(index);
            async move {
                if !stores {
                    return delivery
                        .ack()
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()));
                }
                if closing.load(Ordering::SeqCst) {
                    // Shutting down: leave it unacknowledged; the broker
                    // redelivers it to the next session.
                    return Ok(());
                }
                metrics.received.fetch_add(1, Ordering::Relaxed);
                let row = NewMessage {
                    topic: m.topic,
                    payload: m.payload,
                    qos: u8::from(m.qos),
                    retain: m.retain,
                    duplicate: m.duplicate,
                    received_at_us: micros_now(),
                };
                tx.send((row, delivery))
                    .await
                    .map_err(|_| std::io::Error::other("the writer has stopped"))
            }
        })?;
    }
    drop(tx);
    // A message that cannot be handled (no subscription matches it: a filter
    // left in the persistent session by an earlier configuration; or its
    // handler gave up) is kept as a dead letter with the reason, then
    // acknowledged; if the database fails, it is retried and stays
    // unacknowledged meanwhile.
    {
        let store = store.clone();
        let metrics = metrics.clone();
        client.on_dead_letter(move |m: Message, delivery: Delivery, reason: DeadLetter| {
            let store = store.clone();
            let metrics = metrics.clone();
            async move {
                let row = NewMessage {
                    topic: m.topic,
                    payload: m.payload,
                    qos: u8::from(m.qos),
                    retain: m.retain,
                    duplicate: m.duplicate,
                    received_at_us: micros_now(),
                };
                keep_dead_letter(&store, &row, &reason.to_string()).await?;
                metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
                if matches!(reason, DeadLetter::TooLarge { .. }) {
                    metrics.too_large.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!("message on {} stored as a dead letter: {reason}", row.topic);
                delivery
                    .ack()
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            }
        });
    }
    let wake = Arc::new(Notify::new());
    let writer = tokio::spawn(write_loop(
        rx,
        store,
        metrics,
        batching,
        closing.clone(),
        wake.clone(),
    ));
    Ok(Pipeline {
        closing,
        wake,
        writer,
    })
}

impl Pipeline {
    /// Stops taking messages, commits and acknowledges what was taken, and
    /// waits for the writer to finish. Call before disconnecting.
    pub async fn drain(self) {
        self.closing.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let _ = self.writer.await;
    }

    /// [`Pipeline::drain`] for at most `limit`: if the database still fails
    /// then, the writer is stopped and what it held stays unacknowledged,
    /// for the broker to send again to the next session. Whether everything
    /// taken was committed and acknowledged.
    pub async fn drain_within(self, limit: Duration) -> bool {
        self.closing.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let mut writer = self.writer;
        match tokio::time::timeout(limit, &mut writer).await {
            Ok(_) => true,
            Err(_) => {
                writer.abort();
                let _ = writer.await;
                false
            }
        }
    }
}

async fn write_loop(
    mut rx: mpsc::Receiver<Item>,
    store: Store,
    metrics: Arc<Metrics>,
    batching: Batching,
    closing: Arc<AtomicBool>,
    wake: Arc<Notify>,
) {
    let retry = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(5),
    };
    loop {
        let first = if closing.load(Ordering::SeqCst) {
            // Draining: flush what is queued, then stop.
            match rx.try_recv() {
                Ok(item) => item,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => return,
                },
                () = wake.notified() => continue,
            }
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + batching.max_wait;
        while batch.len() < batching.max_messages {
            if closing.load(Ordering::SeqCst) {
                // Take whatever is already queued, then flush.
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
                continue;
            }
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => batch.push(item),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
                () = wake.notified() => {}
            }
        }
        let (rows, deliveries): (Vec<NewMessage>, Vec<Delivery>) = batch.into_iter().unzip();
        let mut deliveries = deliveries.into_iter();
        let mut attempt = 0;
        // Rows before it are stored (or dead letters): a retry goes on from
        // there, never storing one twice.
        let mut stored = 0;
        // Deliveries acknowledged so far: those of committed rows only, in
        // order.
        let mut acked = 0;
        loop {
            let result = store_from(&store, &rows, &mut stored, &metrics).await;
            // Committed: now, and only now, the broker may forget them (the
            // part committed before a failure too, so that a crash during
            // the retries does not bring those back to be stored again).
            while acked < stored {
                if let Some(delivery) = deliveries.next()
                    && delivery.ack().await.is_ok()
                {
                    metrics.acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                acked += 1;
            }
            match result {
                Ok(()) => break,
                Err(e) => {
                    metrics.store_failures.fetch_add(1, Ordering::Relaxed);
                    metrics.database_ok.store(false, Ordering::Relaxed);
                    tracing::warn!(
                        "storing {} messages failed (attempt {}): {e}; those not stored are not \
                         acknowledged, retrying",
                        rows.len() - stored,
                        attempt + 1
                    );
                    tokio::time::sleep(retry.delay(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}

/// Stores `rows[*stored..]`, moving `stored` past each part committed. A
/// row the database refuses for good ([`crate::Error::Refused`]) is found
/// by halving the part that holds it, and goes to `dead_letters` with the
/// database's reason, so that one device's message never stops the rest;
/// any other error is returned (the caller retries from `stored`).
async fn store_from(
    store: &Store,
    rows: &[NewMessage],
    stored: &mut usize,
    metrics: &Metrics,
) -> crate::Result<()> {
    while *stored < rows.len() {
        let mut len = rows.len() - *stored;
        loop {
            let part = &rows[*stored..*stored + len];
            let started = Instant::now();
            match store.insert_batch(part).await {
                Ok(()) => {
                    metrics.batch_stored(len, started.elapsed());
                    *stored += len;
                    break;
                }
                Err(crate::Error::Refused { .. }) if len > 1 => len /= 2,
                Err(crate::Error::Refused { reason }) => {
                    let row = &part[0];
                    tracing::warn!(
                        "the database refuses a message on {:?} for good: {reason}; stored as a \
                         dead letter",
                        row.topic.chars().take(64).collect::<String>()
                    );
                    let why = format!("the database refused it: {reason}");
                    keep_dead_letter(store, row, &why).await?;
                    metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
                    *stored += 1;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Stores `row` in `dead_letters` with `why`. Refused there too (a
/// trigger, a limit, characters the database will not take), it is kept
/// with its topic cut to 200 characters, then with a fixed topic and no
/// payload, the reason saying so; a database that refuses even that
/// refuses every row, and the error is returned as one to retry.
async fn keep_dead_letter(store: &Store, row: &NewMessage, why: &str) -> crate::Result<()> {
    let mut short = row.clone();
    short.topic = row.topic.chars().take(200).collect();
    let mut bare = row.clone();
    bare.topic = "(topic not storable)".into();
    bare.payload.clear();
    let tries = [
        (row, why.to_owned()),
        (
            &short,
            format!("{why} (topic cut to 200 characters: the dead letter was refused too)"),
        ),
        (
            &bare,
            format!(
                "{why} (topic and payload of {} bytes left out: the dead letter was refused too)",
                row.payload.len()
            ),
        ),
    ];
    for (letter, reason) in &tries {
        match store.insert_dead_letter(letter, reason).await {
            Ok(()) => return Ok(()),
            Err(crate::Error::Refused { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(crate::Error::Store {
        reason: format!("{why}; and dead_letters refuses even a bare row"),
    })
}

fn micros_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn row(topic: &str, n: u32) -> NewMessage {
        NewMessage {
            topic: topic.into(),
            payload: n.to_string().into_bytes().into(),
            qos: 1,
            retain: false,
            duplicate: false,
            received_at_us: 0,
        }
    }

    async fn sql(url: &str, statement: &'static str) {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query(statement).execute(&pool).await.unwrap();
        pool.close().await;
    }

    /// One refused row in the middle of a batch is found by halving: the
    /// seven others are stored in order, once each, and it becomes a dead
    /// letter with the database's reason; refused in `dead_letters` too, it
    /// is kept there bare.
    #[tokio::test]
    async fn a_refused_row_in_the_middle_of_a_batch_is_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ingest.db").display());
        let store = Store::open(&url).await.unwrap();
        sql(
            &url,
            "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.topic = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poisoned row'); END",
        )
        .await;
        let rows: Vec<NewMessage> = (1..=8)
            .map(|n| row(if n == 5 { "poison" } else { "fine" }, n))
            .collect();
        let metrics = Metrics::default();
        let mut stored = 0;
        store_from(&store, &rows, &mut stored, &metrics)
            .await
            .unwrap();
        assert_eq!(stored, 8);
        let kept: Vec<u32> = store
            .list(None, 0, 100)
            .await
            .unwrap()
            .iter()
            .map(|m| {
                String::from_utf8(m.payload.clone())
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(kept, [1, 2, 3, 4, 6, 7, 8]);
        assert_eq!(metrics.dead_letters.load(Ordering::Relaxed), 1);
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let letters: Vec<(String, Vec<u8>, String)> =
            sqlx::query_as("SELECT topic, payload, reason FROM dead_letters ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(
            (letters[0].0.as_str(), letters[0].1.as_slice()),
            ("poison", &b"5"[..])
        );
        assert!(letters[0].2.contains("poisoned row"), "{}", letters[0].2);

        // Refused in dead_letters too: kept bare, the reason saying so.
        sqlx::query(
            "CREATE TRIGGER poison_letter BEFORE INSERT ON dead_letters \
             WHEN NEW.topic = 'poison' BEGIN SELECT RAISE(ABORT, 'no'); END",
        )
        .execute(&pool)
        .await
        .unwrap();
        let mut stored = 0;
        store_from(&store, &[row("poison", 9)], &mut stored, &metrics)
            .await
            .unwrap();
        let last: (String, Vec<u8>, String) =
            sqlx::query_as("SELECT topic, payload, reason FROM dead_letters ORDER BY id DESC")
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        assert_eq!(last.0, "(topic not storable)");
        assert!(
            last.1.is_empty() && last.2.contains("refused too"),
            "{last:?}"
        );
    }
}
