//! Read rates the tools keep to (items or read capacity units per second), so that a backfill
//! or a verification leaves production traffic its table's capacity: shared by the scan, the
//! export load, verify and the item lookups.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A token bucket shared by every reader of a run: `acquire(n)` waits until `n` more units fit the rate.
pub struct RateLimiter {
    per_second: f64,
    next_free: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(per_second: f64) -> RateLimiter {
        RateLimiter {
            per_second,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Books `units` and waits until the booking starts.
    pub async fn acquire(&self, units: f64) {
        let start = {
            let mut next = self.next_free.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(units / self.per_second);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}
