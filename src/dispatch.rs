//! Sending changes: bodies in flight under an adaptive concurrency limit, retryable actions
//! re-sent with backoff until they succeed or the invocation's time runs out.

use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::bulk::{self, ItemOutcome};
use crate::change::{Action, Change};
use crate::transport::{BulkReply, OpenSearch};

/// The limits one delivery works within.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_actions: usize,
    /// Upper bound of concurrent `_bulk` requests; the live limit halves on 429 and grows back
    /// by one per successful request.
    pub concurrency: usize,
    pub request_timeout: Duration,
    pub backoff: Backoff,
    /// Nothing new is started after this instant; whatever is unconfirmed then is retryable.
    pub stop_at: Instant,
}

/// What one delivery did, for the invocation's log line.
#[derive(Debug, Default, Clone)]
pub struct DeliveryStats {
    pub requests: u64,
    pub bytes: u64,
    pub rounds: u32,
    pub throttled: u64,
}

/// A request shorter than this is not worth starting: it would time out before the cluster
/// could answer, and the actions are reported for retry anyway.
const MIN_REQUEST_TIME: Duration = Duration::from_millis(200);

/// Delivers `changes` to `index`; returns one outcome per change.
pub async fn deliver(
    os: &OpenSearch,
    index: &str,
    changes: &[Change],
    limits: &Limits,
) -> (Vec<ItemOutcome>, DeliveryStats) {
    let mut outcomes =
        vec![ItemOutcome::Retry("not attempted before the deadline".into()); changes.len()];
    let mut stats = DeliveryStats::default();
    let mut pending: Vec<usize> = (0..changes.len()).collect();
    let mut max_bytes = limits.max_bytes;
    let mut live_limit = limits.concurrency;
    let mut attempt = 0u32;
    while !pending.is_empty() {
        stats.rounds += 1;
        let mut queue = bulk::pack(changes, &pending, max_bytes, limits.max_actions).into_iter();
        let mut in_flight = FuturesUnordered::new();
        let mut split = false;
        loop {
            while in_flight.len() < live_limit {
                let left = limits.stop_at.saturating_duration_since(Instant::now());
                if left < MIN_REQUEST_TIME {
                    break;
                }
                let Some(body) = queue.next() else { break };
                let actions: Vec<Action> =
                    body.changes.iter().map(|&i| changes[i].action).collect();
                let timeout = limits.request_timeout.min(left);
                stats.requests += 1;
                stats.bytes += body.bytes.len() as u64;
                in_flight.push(async move {
                    let len = body.bytes.len();
                    let reply = os.bulk(index, body.bytes, &actions, timeout).await;
                    (body.changes, len, reply)
                });
            }
            let Some((members, len, reply)) = in_flight.next().await else {
                break;
            };
            match reply {
                BulkReply::Items(items) => {
                    for (i, outcome) in members.into_iter().zip(items) {
                        outcomes[i] = outcome;
                    }
                    live_limit = (live_limit + 1).min(limits.concurrency);
                }
                BulkReply::TooLarge => {
                    let reason = format!("413 request entity too large ({len} bytes)");
                    if members.len() == 1 {
                        outcomes[members[0]] =
                            ItemOutcome::Permanent(format!("{reason} for a single document"));
                    } else {
                        // Re-sent in the next round under half this body's size: the halves.
                        max_bytes = max_bytes.min(len / 2).max(1);
                        split = true;
                        for i in members {
                            outcomes[i] = ItemOutcome::Retry(reason.clone());
                        }
                    }
                }
                BulkReply::Failed { reason, throttled } => {
                    if throttled {
                        stats.throttled += 1;
                        live_limit = (live_limit / 2).max(1);
                    }
                    for i in members {
                        outcomes[i] = ItemOutcome::Retry(reason.clone());
                    }
                }
            }
        }
        pending = (0..changes.len())
            .filter(|&i| outcomes[i].is_retry())
            .collect();
        if pending.is_empty() {
            break;
        }
        // A split alone needs no pause; anything else backs off before the next round, if the
        // pause and one more request still fit before the stop.
        attempt += 1;
        let delay = if split && !pending.iter().any(|&i| !is_split(&outcomes[i])) {
            Duration::ZERO
        } else {
            limits.backoff.delay(attempt)
        };
        if Instant::now() + delay + MIN_REQUEST_TIME > limits.stop_at {
            break;
        }
        Backoff::wait(delay).await;
    }
    (outcomes, stats)
}

fn is_split(outcome: &ItemOutcome) -> bool {
    matches!(outcome, ItemOutcome::Retry(r) if r.starts_with("413"))
}
