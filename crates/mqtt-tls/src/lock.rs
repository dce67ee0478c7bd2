//! The one way this crate takes a lock.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, carrying on past a poisoned lock.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind;
    // carrying on is safer than poisoning the whole client.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
