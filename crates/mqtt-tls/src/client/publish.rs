//! Publishing: a publish goes into the request channel when there is room
//! (waiting for room otherwise, not on a timer), into the [`Tracker`] with
//! it, and resolves when the broker acknowledged it; while the broker is
//! not connected, at most `max_offline_queue` are under way.
//!
//! [`Tracker`]: crate::tracker::Tracker

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rumqttc_mtls::{AsyncClient, ClientError};
use tokio::sync::oneshot;

use crate::client::shared::Shared;
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::qos::QoS;
use crate::topic::check_publish_topic;

/// [`MqttClient::publish`](crate::MqttClient::publish): publishes and waits
/// until the broker acknowledged it (PUBACK for QoS 1, PUBCOMP for QoS 2);
/// QoS 0 returns once it is handed to the connection.
pub(crate) async fn publish(
    rumqtt: &AsyncClient,
    shared: &Shared,
    topic: &str,
    payload: Bytes,
    qos: QoS,
    retain: bool,
) -> Result<()> {
    check_publish_topic(topic)?;
    // Counted while it waits for room; once queued, the tracker counts
    // it until the broker's answer, even if this caller gives up.
    let mut waiting = Some(pending_publish(shared)?);
    let rx = loop {
        // Registered before trying, so a wake-up between the try and
        // the wait is not missed.
        let room = shared.room.notified();
        tokio::pin!(room);
        room.as_mut().enable();
        if shared.shutdown.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        {
            let mut tracker = lock(&shared.tracker);
            if shared.link.gone.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            {
                match rumqtt.try_publish_bytes(topic, qos.to_wire(), retain, payload.clone()) {
                    Ok(()) => {
                        let (tx, rx) = oneshot::channel();
                        tracker.queued(qos, tx);
                        waiting.take();
                        break rx;
                    }
                    // Full: the connection is busy or down; wait below.
                    Err(ClientError::TryRequest(_)) => {}
                    Err(ClientError::PacketTooLarge { size, max }) => {
                        return Err(Error::PacketTooLarge {
                            topic: topic.to_owned(),
                            size,
                            max,
                        });
                    }
                    Err(_) => return Err(Error::Closed),
                }
            }
        }
        // The request channel is full: wait until the connection takes
        // requests again (or stops), not on a timer.
        room.await;
    };
    rx.await.unwrap_or(Err(Error::Closed))
}

/// Counts a publish waiting for room in the request channel for as long
/// as the returned guard lives (dropped once queued, on return, and when
/// the caller cancels); while the broker is not connected, refuses it
/// when `max_offline_queue` publishes are already under way (waiting
/// for room, or queued and not yet answered).
fn pending_publish(shared: &Shared) -> Result<PendingPublish<'_>> {
    let waiting = &shared.counters.waiting_for_room;
    // Under the tracker's lock: other publishers count and queue under
    // it too, so the limit holds however many try at once.
    let tracker = lock(&shared.tracker);
    if let Some(limit) = shared.max_offline_queue
        && !shared.link.connected.load(Ordering::SeqCst)
        && tracker.len() as u64 + waiting.load(Ordering::SeqCst) >= limit as u64
    {
        return Err(Error::OfflineQueueFull { limit });
    }
    waiting.fetch_add(1, Ordering::SeqCst);
    drop(tracker);
    Ok(PendingPublish(waiting))
}

/// A publish waiting for room, counted in
/// [`Stats::pending_publishes`](crate::Stats::pending_publishes).
struct PendingPublish<'a>(&'a AtomicU64);

impl Drop for PendingPublish<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
