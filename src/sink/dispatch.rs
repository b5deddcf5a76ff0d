//! Sending changes: bodies in flight under an adaptive concurrency limit, retryable actions
//! re-sent with backoff until they succeed or the invocation's time runs out.

use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use crate::pipeline::bulk::{self, BulkBody, ItemOutcome};
use crate::pipeline::change::{Action, Change};
use crate::sink::backoff::Backoff;
use crate::sink::transport::{BulkReply, OpenSearch, RequestFailure};

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
    /// How long each `_bulk` request took, in milliseconds (the first [`MAX_LATENCIES`]).
    pub latencies_ms: Vec<u64>,
}

/// Latencies kept per delivery: CloudWatch takes at most 100 values per metric.
pub const MAX_LATENCIES: usize = 100;

/// A request shorter than this is not worth starting: it would time out before the cluster
/// could answer, and the actions are reported for retry anyway.
const MIN_REQUEST_TIME: Duration = Duration::from_millis(200);

/// A body that failed as a whole this many times in a row is split in halves: one poisonous
/// action (a document that makes the cluster drop the connection or answer 5xx) must not take
/// the rest of its body down. Not sooner: most whole failures are transient, and a blip of one
/// or two failed requests should cost no extra requests.
const SPLIT_AFTER_FAILURES: u32 = 3;

/// An action alone in its body that has failed as a whole this many times in a row, while the
/// cluster accepted other bodies of this delivery, is refused for good (and quarantined).
const ISOLATED_FAILURES: u32 = 3;

/// Per-change delivery state that outlives a round.
struct Progress {
    /// The most actions this change's body may hold (halved by each split).
    cap: Vec<usize>,
    /// The cap before any split (BULK_MAX_ACTIONS).
    max_actions: usize,
    /// Whole-body failures in a row of the bodies that carried this change.
    whole_failures: Vec<u32>,
    /// Some `_bulk` request of this delivery was answered item by item: the cluster is up, so a
    /// body that keeps failing as a whole is failing for what it holds.
    accepted_any: bool,
}

/// Delivers `changes`, each to its index; returns one outcome per change.
pub async fn deliver(
    os: &OpenSearch,
    changes: &[Change],
    limits: &Limits,
) -> (Vec<ItemOutcome>, DeliveryStats) {
    // `None`: not attempted yet. Filled in as bodies are answered, rather than starting from a
    // copy of the deadline's reason per change (one of a record's seven heap allocations).
    let mut outcomes: Vec<Option<ItemOutcome>> = vec![None; changes.len()];
    let mut stats = DeliveryStats::default();
    let mut pending: Vec<usize> = (0..changes.len()).collect();
    let mut max_bytes = limits.max_bytes;
    let mut live_limit = limits.concurrency;
    let mut progress = Progress {
        cap: vec![limits.max_actions; changes.len()],
        max_actions: limits.max_actions,
        whole_failures: vec![0; changes.len()],
        accepted_any: false,
    };
    let mut attempt = 0u32;
    while !pending.is_empty() {
        stats.rounds += 1;
        // Set by any failure that a smaller body does not answer: the next round waits.
        let mut back_off = false;
        let mut queue = pack_by_cap(changes, &pending, max_bytes, &progress.cap).into_iter();
        let mut in_flight = FuturesUnordered::new();
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
                    let sent = Instant::now();
                    let reply = os.bulk(&body.index, body.bytes, &actions, timeout).await;
                    (body.changes, len, reply, sent.elapsed())
                });
            }
            let Some((members, len, reply, took)) = in_flight.next().await else {
                break;
            };
            if stats.latencies_ms.len() < MAX_LATENCIES {
                stats.latencies_ms.push(took.as_millis() as u64);
            }
            match reply {
                BulkReply::Items(items) => {
                    progress.accepted_any = true;
                    for (i, outcome) in members.into_iter().zip(items) {
                        back_off |= outcome.is_retry();
                        progress.whole_failures[i] = 0;
                        outcomes[i] = Some(outcome);
                    }
                    live_limit = (live_limit + 1).min(limits.concurrency);
                }
                BulkReply::TooLarge => {
                    let reason = format!("413 request entity too large ({len} bytes)");
                    if members.len() == 1 {
                        outcomes[members[0]] = Some(ItemOutcome::Permanent(format!(
                            "{reason} for a single document"
                        )));
                    } else {
                        // Re-sent in the next round under half this body's size: the halves.
                        max_bytes = max_bytes.min(len / 2).max(1);
                        for i in members {
                            outcomes[i] = Some(ItemOutcome::Retry(reason.clone()));
                        }
                    }
                }
                BulkReply::Failed { reason, failure } => {
                    if failure == RequestFailure::Throttled {
                        stats.throttled += 1;
                        live_limit = (live_limit / 2).max(1);
                        back_off = true;
                        for i in members {
                            outcomes[i] = Some(ItemOutcome::Retry(reason.clone()));
                        }
                    } else {
                        back_off |= !whole_failure(&mut progress, &mut outcomes, &members, &reason);
                    }
                }
            }
        }
        pending = (0..changes.len())
            .filter(|&i| outcomes[i].as_ref().is_none_or(ItemOutcome::is_retry))
            .collect();
        if pending.is_empty() {
            break;
        }
        // A split alone needs no pause; anything else backs off before the next round, if the
        // pause and one more request still fit before the stop.
        attempt += 1;
        let delay = if back_off {
            limits.backoff.delay(attempt)
        } else {
            Duration::ZERO
        };
        if Instant::now() + delay + MIN_REQUEST_TIME > limits.stop_at {
            break;
        }
        Backoff::wait(delay).await;
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| ItemOutcome::Retry("not attempted before the deadline".into()))
        })
        .collect();
    (outcomes, stats)
}

/// A body failed as a whole (not a 429 or 413). Returns true when the failure was answered by
/// a split or an isolation, so the next round need not wait.
fn whole_failure(
    progress: &mut Progress,
    outcomes: &mut [Option<ItemOutcome>],
    members: &[usize],
    reason: &str,
) -> bool {
    let failures = members
        .iter()
        .map(|&i| {
            progress.whole_failures[i] += 1;
            progress.whole_failures[i]
        })
        .max()
        .unwrap_or(0);
    if members.len() == 1 && progress.accepted_any && failures >= ISOLATED_FAILURES {
        outcomes[members[0]] = Some(ItemOutcome::Permanent(format!(
            "the cluster failed the request holding only this action {failures} times while accepting others: {reason}"
        )));
        return true;
    }
    for &i in members {
        outcomes[i] = Some(ItemOutcome::Retry(reason.to_string()));
    }
    // Split when the failure repeats. Without evidence that the cluster is up (nothing accepted
    // yet), split only a body never split before: an outage then costs at most twice the
    // requests, while one half succeeding is the evidence that lets splitting go on.
    let never_split = members
        .iter()
        .all(|&i| progress.cap[i] == progress.max_actions);
    if members.len() > 1
        && failures >= SPLIT_AFTER_FAILURES
        && (progress.accepted_any || never_split)
    {
        let half = members.len().div_ceil(2);
        for &i in members {
            progress.cap[i] = half;
        }
        return progress.accepted_any;
    }
    false
}

/// Packs pending changes into bodies, each change in a body of at most its cap of actions and
/// of its own index (changes of one index stay together, in batch order).
fn pack_by_cap(
    changes: &[Change],
    pending: &[usize],
    max_bytes: usize,
    cap: &[usize],
) -> Vec<BulkBody> {
    let mut groups: Vec<(usize, &str)> = pending
        .iter()
        .map(|&i| (cap[i], &*changes[i].index))
        .collect();
    groups.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    groups.dedup();
    groups
        .into_iter()
        .flat_map(|(c, index)| {
            let group: Vec<usize> = pending
                .iter()
                .copied()
                .filter(|&i| cap[i] == c && &*changes[i].index == index)
                .collect();
            bulk::pack(changes, &group, max_bytes, c)
        })
        .collect()
}
