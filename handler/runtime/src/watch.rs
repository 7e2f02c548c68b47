//! The backoff of every watch the programs run. kube's default grows to 30 s and resets only
//! after two minutes without an error, so once the API server was away for a few seconds, each
//! watch of a process took up to minutes to list again: a policy status was written from
//! heartbeats the status writer had not seen renewed for three minutes. Here a watch retries
//! after at most 4 s, and starts over from 250 ms as soon as it delivers anything.

use futures::{Stream, StreamExt};
use kube::runtime::{WatchStreamExt, utils::Backoff, watcher};
use std::{
    hash::{BuildHasher, RandomState},
    time::Duration,
};

const FIRST: Duration = Duration::from_millis(250);
const LONGEST: Duration = Duration::from_secs(4);

/// Doubling from 250 ms to at most 4 s, each wait shortened by up to a quarter at random so
/// that the watches of many nodes do not return to a restarted API server in step.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (self.next * 2).min(LONGEST);
        let jitter = RandomState::new().hash_one(wait) % 256;
        Some(wait - wait / 4 * u32::try_from(jitter).unwrap_or(0) / 255)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

/// The objects a watch touches, for `Controller::watches_stream`: retried with a
/// [`WatchBackoff`] of its own, its errors logged (naming `what`) and kept out of the
/// controller. A controller pauses all its triggers after any error it sees, so errors passed
/// on from several watches (each says its resourceVersion expired after an API server restart)
/// chained their pauses into many seconds without a reconcile.
pub fn touched<K>(
    what: &'static str,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Clone + Send + 'static,
{
    events
        .backoff(WatchBackoff::default())
        .touched_objects()
        .filter_map(move |touched| {
            std::future::ready(match touched {
                Ok(object) => Some(Ok(object)),
                Err(error) => {
                    tracing::warn!("watching {what}: {error}");
                    None
                }
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_four_seconds_and_start_over_after_a_reset() {
        let mut backoff = WatchBackoff::default();
        let waits: Vec<Duration> = backoff.by_ref().take(7).collect();
        let ceilings = [250, 500, 1_000, 2_000, 4_000, 4_000, 4_000].map(Duration::from_millis);
        for (wait, ceiling) in waits.iter().zip(ceilings) {
            assert!(
                *wait <= ceiling && *wait >= ceiling * 3 / 4,
                "{wait:?} for {ceiling:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next().is_some_and(|wait| wait <= FIRST));
    }
}
