//! Reports this node's network state as its NodeNetworkState (named after the node, owned by
//! the Node), and keeps it current.
//!
//! A refresh reads the state with nmstate, filters it ([`crate::network::filter`]) and writes it
//! only when it differs from what was last reported, so an idle node causes no API writes.
//! Refreshes follow NetworkManager's D-Bus signals (a burst is coalesced into one refresh; its
//! checkpoints, the handler's own bookkeeping, do not count), a deleted NodeNetworkState is
//! recreated at once, one left by an earlier Node object of the same name is adopted, and a
//! periodic check is the safety net for what NetworkManager does not signal: every minute (by
//! default) it reads the kernel alone (a third of a full read's cost), and a full refresh
//! follows when what it reports moved, and every ten checks in any case. The kernel's change
//! notifications are counted as they come ([`kernel_notifications`]), and the check reads the
//! kernel only if one came, so an idle node is not read at all. Without them (the socket could
//! not be opened, or closed) the check reads the kernel every time.
//!
//! Kernel notifications alone do not trigger a refresh: a node's routing daemon may change
//! routes all the time, and a refresh per burst would then read the node every second. They
//! wait for the next check, as a kernel read's findings did.
//! After an apply, the enactment asks for a report and waits for it ([`ReportNow`]) before it
//! says Available, so whoever waited for the policy reads the new state in the
//! NodeNetworkState.

mod conditions;
pub use conditions::{report_conditions, trimmed_message};

use crate::network::{
    filter::{ReportRules, filter_for_report},
    kernel_notifications,
    network_manager::{self, NetworkManagerError},
    state::{self as node_state, NMSTATE_VERSION, NodeStateError, StateCache},
    trim,
};
use crate::phases::{self, names};
use crate::status_patch::write_whole;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::OwnerReference, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::watcher,
};
use nmstate_api::{
    NodeNetworkState,
    state::{NodeNetworkStateFields, NodeNetworkStateStatus},
};
use nmstate_runtime::kube_errors::is_conflict;
use nmstate_runtime::watch;
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, sleep_until},
};
use tracing::{debug, info, warn};

use nmstate_api::names::HANDLER_FIELD_MANAGER as FIELD_MANAGER;

/// Every this many periodic checks, a full refresh anyway (what neither the kernel nor a
/// NetworkManager signal shows, such as a setting outside NetworkManager).
const FULL_REFRESH_EVERY: u32 = 10;
/// A refresh waits for this long without further signals…
const QUIET: Duration = Duration::from_millis(250);
/// …but never longer than this after the first signal of a burst.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// When a refresh fails, the next attempt comes this much later.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    NodeState(#[from] NodeStateError),
    #[error(transparent)]
    NetworkManager(#[from] NetworkManagerError),
    #[error("Kubernetes API: {0}")]
    Kube(kube::Error),
    #[error(
        "the NodeNetworkState CRD (nodenetworkstates.nmstate.io) is not installed; the operator \
         installs it, or `kubectl apply -f manifests/crds/`"
    )]
    CrdMissing,
    #[error("internal error: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("NetworkManager's D-Bus signals stopped (NetworkManager or the system bus went away)")]
    SignalsEnded,
}

impl ReportError {
    /// A bounded category, for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ReportError::NodeState(_) => "node-state",
            ReportError::NetworkManager(_) => "network-manager",
            ReportError::Kube(_) => "kube",
            ReportError::CrdMissing => "crd-missing",
            ReportError::Join(_) => "internal",
            ReportError::SignalsEnded => "signals-ended",
        }
    }
}

impl From<kube::Error> for ReportError {
    fn from(error: kube::Error) -> Self {
        match &error {
            // A missing resource type answers 404 with a plain-text body (no Status object).
            kube::Error::Api(status) if status.code == 404 && status.message.contains("page not found") => {
                ReportError::CrdMissing
            }
            _ => ReportError::Kube(error),
        }
    }
}

/// Writes one node's NodeNetworkState.
pub struct NodeStateReporter {
    api: Api<NodeNetworkState>,
    nodes: Api<Node>,
    node_name: String,
    labels: BTreeMap<String, String>,
    network_manager_version: String,
    /// Why no policy is applied on this node, if so; reported as the node state's conditions.
    unsupported: Option<String>,
    /// What is left out of the report, and its size cap.
    rules: ReportRules,
    /// The state last written (or found already reported), to skip unchanged refreshes.
    last_reported: Option<Value>,
    /// Each read kept for the applies, and the signals and notifications counted against it.
    cache: Arc<StateCache>,
    /// How often the periodic check runs, for what NetworkManager does not signal.
    check_interval: Duration,
    /// What the kernel alone reported at the last periodic check that read it, filtered as a
    /// report is.
    last_kernel: Option<Value>,
    /// Whether the kernel's change notifications are listened to (and counted in `cache`).
    listening: Arc<AtomicBool>,
    /// The notifications counted at the last periodic check that read the kernel.
    last_notified: u64,
    /// The status as this reporter last wrote or read it: a write needs no read before it
    /// (this reporter is the status's only writer; a deletion forces a read).
    last_status: Option<NodeNetworkStateStatus>,
    /// A state read after a change (nmstate's verification read it), which the next refresh
    /// reports instead of reading the node ([`ReportNow::report`]).
    read_after_change: Option<nmstate::NetworkState>,
}

impl NodeStateReporter {
    pub fn new(
        client: Client,
        node_name: String,
        labels: BTreeMap<String, String>,
        network_manager_version: String,
    ) -> Self {
        NodeStateReporter {
            api: Api::all(client.clone()),
            nodes: Api::all(client),
            node_name,
            labels,
            network_manager_version,
            unsupported: None,
            rules: ReportRules::default(),
            last_reported: None,
            cache: Arc::default(),
            check_interval: Duration::from_secs(60),
            last_kernel: None,
            listening: Arc::default(),
            last_notified: 0,
            last_status: None,
            read_after_change: None,
        }
    }

    /// Runs the periodic check every `interval`, for what NetworkManager does not signal.
    pub fn with_check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval;
        self
    }

    /// Keeps each read in `cache`, and counts NetworkManager's signals and the kernel's
    /// notifications there.
    pub fn with_cache(mut self, cache: Arc<StateCache>) -> Self {
        self.cache = cache;
        self
    }

    /// Leaves out what `rules` exclude, and keeps the report under their size cap.
    pub fn with_rules(mut self, rules: ReportRules) -> Self {
        self.rules = rules;
        self
    }

    /// Reports, with every write, that no policy is applied on this node and why.
    pub fn with_unsupported(mut self, reason: String) -> Self {
        self.unsupported = Some(reason);
        self
    }

    /// Reads the node's state and writes it when it changed, creating the object if it is
    /// missing. `force` also checks the object when the state did not change (e.g. after it was
    /// deleted). Returns whether it wrote.
    pub async fn refresh(&mut self, force: bool) -> Result<bool, ReportError> {
        let read = match self.read_after_change.take() {
            Some(state) => state,
            None => {
                let cache = self.cache.clone();
                let read = tokio::task::spawn_blocking(move || cache.read_with_kernel());
                phases::timed(names::REPORT_READ, read)
                    .await?
                    .map_err(NodeStateError::from)?
            }
        };
        let retrieved = node_state::without_secrets(read)?;
        let state = filter_for_report(retrieved, &self.rules);
        if !force && self.last_reported.as_ref() == Some(&state) {
            return Ok(false);
        }
        let writing = std::time::Instant::now();
        let (trimmed_state, trimming) = trim::to_cap(state.clone(), self.rules.max_bytes);
        let status = match self.last_status.take() {
            Some(status) if !force => status,
            _ => self.read_or_create(force).await?.status.unwrap_or_default(),
        };
        let conditions =
            report_conditions(self.unsupported.as_deref(), trimming.as_ref(), &status.conditions);
        let unchanged = status.current_state.as_ref().map(|document| &document.0) == Some(&trimmed_state)
            && status.host_network_manager_version.as_deref() == Some(self.network_manager_version.as_str())
            && status.handler_nmstate_version.as_deref() == Some(NMSTATE_VERSION)
            && status.trimmed == trimming
            && conditions.is_none();
        if !unchanged {
            if let Some(trimming) = &trimming {
                warn!(node = %self.node_name, "{}", trimmed_message(trimming));
            }
            let mut whole = json!({
                "currentState": trimmed_state,
                "lastSuccessfulUpdateTime": Timestamp::now().to_string(),
                "hostNetworkManagerVersion": self.network_manager_version,
                "handlerNmstateVersion": NMSTATE_VERSION,
            });
            // Left out when empty: the status is replaced whole, so what was written before
            // goes (e.g. NetworkManager has since been upgraded, the state fits again).
            if let Some(trimming) = &trimming {
                whole["trimmed"] = serde_json::to_value(trimming).unwrap_or_default();
            }
            let conditions = conditions.unwrap_or(status.conditions);
            if !conditions.is_empty() {
                whole["conditions"] = serde_json::to_value(conditions).unwrap_or_default();
            }
            let written = write_whole(&self.api, &self.node_name, whole).await?;
            self.last_status = written.status;
        } else {
            self.last_status = Some(status);
        }
        phases::ended(names::REPORT_WRITE, writing);
        // Compared before trimming, which is the costly part of an unchanged refresh.
        self.last_reported = Some(state);
        Ok(!unchanged)
    }

    /// The periodic check: whether the kernel moved since the last check (then a full refresh
    /// is due). What the kernel alone reports is read and compared with the last check's read,
    /// but while its notifications are listened to, only if one came: a notification of
    /// nothing the report shows (an address's lifetimes renewed) costs that read, not a full
    /// one. The last full read is confirmed current for the applies when nothing was notified
    /// ([`StateCache::confirm`]), or when the kernel is as it was at that read
    /// ([`StateCache::confirm_kernel`]).
    pub async fn kernel_moved(&mut self) -> Result<bool, ReportError> {
        // Counted before the read: what is notified during it is looked at by the next check.
        let since = self.cache.changes();
        if self.listening.load(Ordering::SeqCst) && self.last_kernel.is_some() {
            if self.last_notified == since.notified {
                debug!("periodic check: nothing notified since the last check");
                self.cache.confirm(since);
                return Ok(false);
            }
            debug!("periodic check: the kernel notified a change since the last check");
        }
        let cache = self.cache.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let since = cache.changes();
            node_state::retrieve_kernel().map(|kernel| (kernel, since))
        });
        let (kernel, since) = checked.await??;
        self.last_notified = since.notified;
        let kept = self.cache.confirm_kernel(since, kernel.clone());
        let kernel = filter_for_report(kernel, &self.rules);
        let moved = self.last_kernel.as_ref() != Some(&kernel);
        debug!(moved, kept, "periodic check: the kernel read");
        if !moved && !kept {
            self.cache.confirm(since);
        }
        self.last_kernel = Some(kernel);
        Ok(moved)
    }

    /// The NodeNetworkState as stored, created if missing; `force` also adopts one an earlier
    /// Node object of the same name owned.
    async fn read_or_create(&self, force: bool) -> Result<NodeNetworkState, ReportError> {
        Ok(match self.api.get_opt(&self.node_name).await? {
            Some(existing) if force => self.adopt(existing, &self.node_uid().await?).await?,
            Some(existing) => existing,
            None => self.create().await?,
        })
    }

    /// The Node's UID, which the NodeNetworkState's owner reference must carry.
    async fn node_uid(&self) -> Result<String, ReportError> {
        Ok(self
            .nodes
            .get(&self.node_name)
            .await?
            .metadata
            .uid
            .unwrap_or_default())
    }

    /// Takes over a NodeNetworkState that an earlier Node object of the same name owned (the
    /// node was deleted and registered again). Left as it is, the garbage collector deletes it
    /// seconds later, after this handler may have reported into it and an enactment said
    /// Available: whoever then reads the node state finds none until it is recreated.
    async fn adopt(&self, existing: NodeNetworkState, uid: &str) -> Result<NodeNetworkState, ReportError> {
        if owned_by(&existing, uid) {
            return Ok(existing);
        }
        let patch = json!({"metadata": {"ownerReferences": [node_owner(&self.node_name, uid)]}});
        let adopted = self
            .api
            .patch(&self.node_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        info!(node = %self.node_name, "adopted the NodeNetworkState an earlier Node object of this name owned");
        Ok(adopted)
    }

    async fn create(&self) -> Result<NodeNetworkState, ReportError> {
        let uid = self.node_uid().await?;
        let mut object = NodeNetworkState::new(&self.node_name, NodeNetworkStateFields {});
        object.metadata.labels = Some(self.labels.clone()).filter(|labels| !labels.is_empty());
        object.metadata.owner_references = Some(vec![node_owner(&self.node_name, &uid)]);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match self.api.create(&params, &object).await {
            Ok(created) => {
                info!(node = %self.node_name, "created the NodeNetworkState");
                Ok(created)
            }
            // Created meanwhile (e.g. by a previous handler that is still stopping).
            Err(error) if is_conflict(&error) => self.adopt(self.api.get(&self.node_name).await?, &uid).await,
            Err(error) => Err(error.into()),
        }
    }
}

/// The owner reference that ties a NodeNetworkState to its Node, so that it goes with it.
fn node_owner(node_name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node_name.into(),
        uid: uid.into(),
        ..OwnerReference::default()
    }
}

/// Whether `state` is owned by the Node with `uid` (not by an earlier one of the same name).
fn owned_by(state: &NodeNetworkState, uid: &str) -> bool {
    state
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.kind == "Node" && owner.uid == uid)
}

/// Logged (at debug) when a refresh of the NodeNetworkState begins, with `asked=true` when an
/// apply asked for it ([`ReportNow::report`]).
pub const REFRESHING: &str = "refreshing the node state";

/// Asks the running reporter ([`run`]) to report the node's state now, and tells it while a
/// change is applied.
#[derive(Clone, Debug)]
pub struct ReportNow {
    requests: mpsc::Sender<Request>,
    /// How many applies are under way on the node.
    applying: Arc<tokio::sync::watch::Sender<usize>>,
}

/// The reporter's end of [`ReportNow`].
pub struct ReportRequests {
    requests: mpsc::Receiver<Request>,
    applying: tokio::sync::watch::Receiver<usize>,
}

/// Held while a change is applied ([`ReportNow::applying`]).
pub struct Applying(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for Applying {
    fn drop(&mut self) {
        self.0.send_modify(|count| *count = count.saturating_sub(1));
    }
}

/// A report asked for: of a state read after a change, or of a new read (None); answered once
/// it is in the NodeNetworkState.
type Request = (Option<nmstate::NetworkState>, oneshot::Sender<()>);

impl ReportNow {
    pub fn channel() -> (ReportNow, ReportRequests) {
        let (sender, receiver) = mpsc::channel(16);
        let (applying, applies) = tokio::sync::watch::channel(0);
        let now = ReportNow {
            requests: sender,
            applying: Arc::new(applying),
        };
        let requests = ReportRequests {
            requests: receiver,
            applying: applies,
        };
        (now, requests)
    }

    /// A change is applied on the node until the guard is dropped: the refreshes NetworkManager's
    /// signals and the periodic check call for wait until then. A read in the middle of an
    /// apply reports a state on its way, takes CPU from the apply, and, while it runs, holds up
    /// the report the apply asks for at its end, which reports the state after it anyway.
    pub fn applying(&self) -> Applying {
        self.applying.send_modify(|count| *count += 1);
        Applying(self.applying.clone())
    }

    /// Returns once the state read after this call is in the NodeNetworkState, or after
    /// `timeout` (false; the reporter goes on retrying by itself). `read_after_change`
    /// (secrets included), when given, stands for that read: the one nmstate's verification
    /// made after a change, so the node is not read twice. The reporter still reads the node
    /// once it is quiet ([`QUIET`]), for what NetworkManager did after that read.
    pub async fn report(&self, read_after_change: Option<nmstate::NetworkState>, timeout: Duration) -> bool {
        let (reply, reported) = oneshot::channel();
        let request = (read_after_change, reply);
        let requested = async { self.requests.send(request).await.is_ok() && reported.await.is_ok() };
        tokio::time::timeout(timeout, requested).await.unwrap_or(false)
    }
}

/// Keeps the node's NodeNetworkState current until `shutdown` completes, reporting at once
/// when asked through `requests`.
pub async fn run(
    mut reporter: NodeStateReporter,
    mut requests: ReportRequests,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ReportError> {
    // Counted as they arrive, not when the loop below gets to them (it does not while it
    // refreshes): an apply must not take a read for current that a change already outdated.
    let mut signals = network_manager::change_signals(None).await?;
    let (signalled, mut changes) = mpsc::channel::<()>(1);
    let mut counting = tokio::task::JoinSet::new();
    let cache = reporter.cache.clone();
    counting.spawn(async move {
        while signals.next().await.is_some() {
            cache.signalled();
            // A burst is one refresh: a signal already waiting stands for this one too.
            let _ = signalled.try_send(());
        }
    });
    match kernel_notifications::change_notifications() {
        Ok(mut notifications) => {
            let (cache, listening) = (reporter.cache.clone(), reporter.listening.clone());
            listening.store(true, Ordering::SeqCst);
            counting.spawn(async move {
                while notifications.next().await.is_some() {
                    cache.notified();
                }
                listening.store(false, Ordering::SeqCst);
                warn!(
                    "the kernel's change notifications stopped; the periodic check reads the kernel instead"
                );
            });
        }
        Err(error) => {
            warn!(
                "cannot listen to the kernel's change notifications, the periodic check reads the kernel instead: {error}"
            );
        }
    }
    let config = watcher::Config::default().fields(&format!("metadata.name={}", reporter.node_name));
    let mut deletions = watch::retried(watcher(reporter.api.clone(), config))
        .try_filter_map(|event| async move { Ok(matches!(event, watcher::Event::Delete(_)).then_some(())) })
        .boxed();
    let interval = reporter.check_interval;
    let mut periodic = tokio::time::interval_at(Instant::now() + interval, interval);
    let mut checks: u32 = 0;
    tokio::pin!(shutdown);

    // (when the next refresh is due, whether it must check the object, when its burst began)
    let mut due: Option<(Instant, bool, Instant)> = Some((Instant::now(), true, Instant::now()));
    // Who asked for the refresh that is due, answered once it is reported.
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let wake = due.map_or_else(|| Instant::now() + interval, |(at, _, _)| at);
        // A refresh asked for goes ahead during an apply; one that signals call for waits.
        let may_refresh = *requests.applying.borrow() == 0 || !waiting.is_empty();
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            signal = changes.recv() => {
                if signal.is_none() {
                    return Err(ReportError::SignalsEnded);
                }
                let now = Instant::now();
                let (force, first) = due.map_or((false, now), |(_, force, first)| (force, first));
                due = Some(((now + QUIET).min(first + MAX_DELAY), force, first));
            }
            deleted = deletions.next() => match deleted {
                Some(Ok(())) => {
                    info!("the NodeNetworkState was deleted; recreating it");
                    due = Some((Instant::now(), true, Instant::now()));
                }
                Some(Err(error)) => warn!("watching the NodeNetworkState: {error}"),
                None => warn!("the NodeNetworkState watch ended"),
            },
            Ok(()) = requests.applying.changed() => {} // looks again whether it may refresh
            Some((read, reply)) = requests.requests.recv() => {
                if read.is_some() {
                    reporter.read_after_change = read;
                }
                waiting.push(reply);
                let force = due.is_some_and(|(_, force, _)| force);
                due = Some((Instant::now(), force, Instant::now()));
            }
            _ = periodic.tick() => {
                checks = checks.wrapping_add(1);
                let moved = tokio::select! {
                    moved = reporter.kernel_moved() => moved,
                    () = &mut shutdown => return Ok(()),
                };
                let refresh = match moved {
                    Ok(moved) => moved || checks.is_multiple_of(FULL_REFRESH_EVERY),
                    Err(error) => {
                        debug!("the periodic check could not read the kernel, refreshing instead: {error}");
                        true
                    }
                };
                if refresh {
                    due.get_or_insert((Instant::now(), false, Instant::now()));
                }
            }
            () = sleep_until(wake), if due.is_some() && may_refresh => {
                let force = due.is_some_and(|(_, force, _)| force);
                due = None;
                let read_again = reporter.read_after_change.is_some();
                debug!(asked = !waiting.is_empty(), "{REFRESHING}");
                // A stop does not wait for a read or a write in progress: either is safe to drop.
                let refreshed = tokio::select! {
                    refreshed = reporter.refresh(force) => refreshed,
                    () = &mut shutdown => return Ok(()),
                };
                if refreshed.is_ok() {
                    for reply in waiting.drain(..) {
                        let _ = reply.send(()); // the asker may have stopped waiting
                    }
                }
                match refreshed {
                    Ok(true) => debug!("reported a new node state"),
                    Ok(false) => debug!("node state unchanged"),
                    Err(error) => {
                        warn!(category = error.category(), "cannot report the node state, retrying in {} s: {error}", RETRY.as_secs());
                        let retry_at = Instant::now() + RETRY;
                        due = Some((retry_at, force, retry_at));
                    }
                }
                // A state read after a change may predate what NetworkManager did next (the
                // signals counted meanwhile were folded into this refresh): the node is read
                // again once it is quiet, which also keeps a read for the next apply.
                if read_again && due.is_none() {
                    let now = Instant::now();
                    due = Some((now + QUIET, false, now));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_state_is_owned_only_by_the_node_object_of_its_uid() {
        let mut state = NodeNetworkState::new("node01", NodeNetworkStateFields {});
        assert!(!owned_by(&state, "uid-2"), "no owner at all");
        state.metadata.owner_references = Some(vec![node_owner("node01", "uid-1")]);
        assert!(owned_by(&state, "uid-1"));
        assert!(!owned_by(&state, "uid-2"), "an earlier Node of the same name");
        let mut other_kind = node_owner("node01", "uid-2");
        other_kind.kind = "Pod".into();
        state.metadata.owner_references = Some(vec![other_kind]);
        assert!(!owned_by(&state, "uid-2"), "a UID alone is not a Node");
    }
}
