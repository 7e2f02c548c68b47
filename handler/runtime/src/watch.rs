//! The backoff of every watch the programs run. kube's default grows to 30 s and resets only
//! after two minutes without an error, so once the API server was away for a few seconds, each
//! watch of a process took up to minutes to list again: a policy status was written from
//! heartbeats the status writer had not seen renewed for three minutes. Here a watch retries
//! after at most 4 s, and starts over from 250 ms as soon as it delivers anything.
//!
//! A restarted API server answers a watch resumed from before the restart with 410 Expired
//! once it is up again. That is no failure to wait out: the watcher lists again, and waiting a
//! backoff first cost up to 4 s more on top of the reconnect (a policy status written 6.9 s
//! after its last node on a loaded machine). So the retry after an Expired is immediate, once.

use futures::{Stream, StreamExt};
use kube::{
    Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        utils::Backoff,
        watcher,
    },
};
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

/// `events` retried after an error: the next poll waits a [`WatchBackoff`], except right after
/// an Expired (410), when the watcher lists again at once. The backoff starts over after
/// anything delivered.
pub fn retried<T>(
    events: impl Stream<Item = Result<T, watcher::Error>> + Send,
) -> impl Stream<Item = Result<T, watcher::Error>> + Send
where
    T: Send,
{
    struct Retry<S> {
        events: S,
        backoff: WatchBackoff,
        pause: Option<Duration>,
        expired_before: bool,
    }
    let start = Retry {
        events: Box::pin(events),
        backoff: WatchBackoff::default(),
        pause: None,
        expired_before: false,
    };
    futures::stream::unfold(start, |mut retry| async move {
        if let Some(pause) = retry.pause.take() {
            tokio::time::sleep(pause).await;
        }
        let item = retry.events.next().await?;
        match &item {
            Ok(_) => {
                retry.backoff.reset();
                retry.expired_before = false;
            }
            Err(error) => {
                let expired = is_expired(error);
                let list_at_once = expired && !retry.expired_before;
                if !list_at_once {
                    retry.pause = retry.backoff.next();
                }
                retry.expired_before = expired;
            }
        }
        Some((item, retry))
    })
}

/// The API server no longer has the watch's resourceVersion: only listing again helps.
fn is_expired(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
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
    retried(events).touched_objects().filter_map(move |touched| {
        std::future::ready(match touched {
            Ok(object) => Some(Ok(object)),
            Err(error) => {
                tracing::warn!("watching {what}: {error}");
                None
            }
        })
    })
}

/// A cache of what `events` watches, and the stream of the objects it touches ([`touched`]),
/// which keeps the cache filled while it is polled: for `Controller::for_stream` and
/// `watches_stream`, or for a store alone.
pub fn cached<K>(
    what: &'static str,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send)
where
    K: Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    (store, touched(what, reflector::reflector(writer, events)))
}

/// Completes when `shutdown` does before `store` was first filled, and never otherwise: for a
/// `select!` beside a Controller stopped gracefully on `shutdown`. kube's runner holds every
/// reconcile until its store's first list, and keeps waiting for that list after a stop (it
/// answers Pending while not ready, even once nothing is left to schedule), which the stopped
/// watch never delivers: a program stopped in its first moments ran until SIGKILL. No
/// reconcile ran before the first list, so nothing is left half done.
pub async fn stopped_before_listed<K>(store: Store<K>, shutdown: impl Future<Output = ()>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures::FutureExt;
    shutdown.await;
    // Filled (or its writer gone, which ends the runner too): the Controller ends by itself.
    if store.wait_until_ready().now_or_never().is_some() {
        std::future::pending::<()>().await;
    }
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

    fn status(code: u16) -> watcher::Error {
        let status = kube::core::Status {
            code,
            ..kube::core::Status::failure("", "")
        };
        watcher::Error::WatchError(status.boxed())
    }

    type Items = Vec<Result<u8, watcher::Error>>;

    /// How long after the previous item each item came, in paused time.
    async fn gaps(items: Items) -> Vec<Duration> {
        let mut retried = Box::pin(retried(futures::stream::iter(items)));
        let mut last = tokio::time::Instant::now();
        let mut gaps = Vec::new();
        while retried.next().await.is_some() {
            gaps.push(last.elapsed());
            last = tokio::time::Instant::now();
        }
        gaps
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_watch_lists_again_at_once_other_errors_wait() {
        let cases: [(&str, Items, [bool; 3]); 4] = [
            (
                "expired, then the list",
                vec![Err(status(410)), Ok(1), Ok(2)],
                [false, false, false],
            ),
            (
                "unavailable, then the list",
                vec![Err(status(503)), Ok(1), Ok(2)],
                [false, true, false],
            ),
            // An Expired again right after one is a server that keeps refusing: back off.
            (
                "expired twice",
                vec![Err(status(410)), Err(status(410)), Ok(1)],
                [false, false, true],
            ),
            (
                "unavailable, then expired",
                vec![Err(status(503)), Err(status(410)), Ok(1)],
                [false, true, false],
            ),
        ];
        for (case, items, waited) in cases {
            let gaps = gaps(items).await;
            let seen: Vec<bool> = gaps.iter().map(|gap| !gap.is_zero()).collect();
            assert_eq!(seen, waited, "{case}: {gaps:?}");
        }
    }

    /// kube's Controller, stopped before its store's first list: it does not end by itself
    /// (what [`stopped_before_listed`] is for); once the store was filled, it does.
    #[tokio::test]
    async fn a_controller_stopped_before_its_first_list_is_let_go() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::runtime::{Controller, controller::Action};
        use std::{convert::Infallible, sync::Arc};

        let controller = |store: Store<ConfigMap>| {
            Controller::for_stream(
                futures::stream::pending::<Result<ConfigMap, watcher::Error>>(),
                store,
            )
            .graceful_shutdown_on(std::future::ready(()))
            .run(
                |_, _: Arc<()>| async { Ok::<_, Infallible>(Action::await_change()) },
                |_, _, _| Action::await_change(),
                Arc::new(()),
            )
            .for_each(|_| async {})
        };
        let wait = Duration::from_millis(500);

        let (unlisted, _writer) = reflector::store::<ConfigMap>();
        let alone = tokio::time::timeout(wait, controller(unlisted.clone())).await;
        assert!(
            alone.is_err(),
            "kube's Controller now ends by itself: the guard may go"
        );
        let guarded = async {
            tokio::select! {
                () = controller(unlisted.clone()) => {}
                () = stopped_before_listed(unlisted, std::future::ready(())) => {}
            }
        };
        assert!(
            tokio::time::timeout(wait, guarded).await.is_ok(),
            "the guard lets it go"
        );

        let (listed, mut writer) = reflector::store::<ConfigMap>();
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert!(
            tokio::time::timeout(wait, controller(listed.clone()))
                .await
                .is_ok(),
            "a Controller whose store was filled ends by itself"
        );
        let guard = stopped_before_listed(listed, std::future::ready(()));
        assert!(
            tokio::time::timeout(wait, guard).await.is_err(),
            "the guard leaves a filled store's Controller to end by itself"
        );
    }
}
