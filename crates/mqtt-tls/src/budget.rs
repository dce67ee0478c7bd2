//! The byte budget of received messages held in memory: from the moment
//! the connection reads one until its last handler let go of it (its
//! acknowledgement went out, or its last [`Delivery`](crate::Delivery) was
//! dropped). [`ConnectOptions::max_queued_bytes`](crate::ConnectOptions::max_queued_bytes)
//! sets it; the connection drops QoS 0 messages that do not fit and stops
//! reading while QoS 1/2 messages fill it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Bytes held now against a bound.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicU64,
    max: u64,
    /// Woken when a release brings `used` under `max` again.
    pub(crate) freed: Notify,
}

/// Bytes held for one message, given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Budget {
    /// A budget of `max` bytes.
    pub(crate) fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            max,
            freed: Notify::new(),
        })
    }

    /// Holds `bytes` whatever is held already (a QoS 1/2 message, which
    /// must not be dropped).
    pub(crate) fn charge(self: &Arc<Self>, bytes: u64) -> Charge {
        self.used.fetch_add(bytes, Ordering::SeqCst);
        Charge {
            budget: self.clone(),
            bytes,
        }
    }

    /// Holds `bytes` if they fit under the bound (a QoS 0 message, dropped
    /// otherwise).
    pub(crate) fn try_charge(self: &Arc<Self>, bytes: u64) -> Option<Charge> {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .ok()
            .map(|_| Charge {
                budget: self.clone(),
                bytes,
            })
    }

    /// Whether the bound is reached: reading pauses until a release.
    pub(crate) fn full(&self) -> bool {
        self.used.load(Ordering::SeqCst) >= self.max
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let before = self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
        if before >= self.budget.max && before - self.bytes < self.budget.max {
            self.budget.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos0_must_fit_qos12_always_gets_in_and_reading_resumes_under_the_bound() {
        let budget = Budget::new(100);
        let a = budget.try_charge(60).unwrap();
        assert!(budget.try_charge(41).is_none(), "over the bound");
        let b = budget.try_charge(40).unwrap();
        assert!(budget.full());
        // QoS 1/2 is never refused, even over the bound.
        let c = budget.charge(500);
        assert_eq!(budget.used(), 600);
        let freed = budget.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        drop(c);
        assert!(budget.full(), "exactly at the bound is still full");
        drop(b);
        assert!(!budget.full());
        assert_eq!(budget.used(), 60);
        // Under the bound again: the paused reader was woken.
        assert!(
            futures_now(freed.as_mut()),
            "no wake-up when the budget freed"
        );
        drop(a);
        assert_eq!(budget.used(), 0);
    }

    /// Whether a future is ready at once.
    fn futures_now<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.poll(&mut cx).is_ready()
    }
}
