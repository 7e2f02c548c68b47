//! Enacting policies on this node: every NodeNetworkConfigurationPolicy whose selector matches
//! this node's labels is resolved (captures, bridge VLAN defaults), applied through
//! [`crate::apply`], and reported in the enactment `<node>.<policy>`.
//!
//! One policy is applied at a time (NetworkManager holds one checkpoint at a time), and only
//! with a slot in the policy's rollout ([`crate::rollout`]: at most `maxUnavailable` nodes at
//! once). A policy is not applied when the node is already in its desired state
//! ([`crate::network::drift`]), so a handler restart or upgrade does not touch the node unless it
//! drifted. Enactments of deleted policies, or of policies that no longer select this node, are
//! removed. The decisions are [`plan`]'s; `reconcile.rs` does the I/O around them.

/// Upstream's enactment conditions for each situation.
pub mod conditions;
/// A deleted policy: reverted on this node when it asks for it.
pub mod deletion;
/// Ordering between policies (`dependsOn`) on this node.
pub mod dependencies;
/// What the Warning events on a policy say.
pub mod events;
/// Creating, writing and removing enactments.
pub mod objects;
/// What to do next about a policy, decided from what was read (pure).
pub mod plan;
/// The network-ready gate: this Node's `NetworkConfigured` condition and startup taint.
pub mod readiness;
mod reconcile;
/// A policy's variables on this node: values from the Node, and addresses from pools.
pub mod variables;
/// Waiting until a policy can be applied: for its dependencies, its variables, a rollout slot.
mod waiting;

use crate::{
    config::HandlerConfig,
    network::{node_support::NodeSupport, state::StateCache},
    node_state_reporter::ReportNow,
    rollout::Rollout,
};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::{Action, Config as ControllerConfig},
        reflector::ObjectRef,
        watcher::{self, watcher},
    },
};
use nmstate_api::{NodeNetworkConfigurationPolicy, labels};
use nmstate_runtime::{events::Events, watch};
use objects::remove_enactments_of_deleted_policies;
use reconcile::reconcile;
use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum EnactmentError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot read the node's network state: {0}")]
    NodeState(#[from] nmstate::NmstateError),
    #[error("internal error: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("cannot serialize the enactment status: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("{0} changed under every attempt to allocate an address; trying again")]
    Contended(String),
}

impl EnactmentError {
    /// A bounded category, for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            EnactmentError::Kube(_) => "kube",
            EnactmentError::NodeState(_) => "node-state",
            EnactmentError::Join(_) => "internal",
            EnactmentError::Serialize(_) => "serialize",
            EnactmentError::Contended(_) => "contended",
        }
    }
}

/// How long an apply waits for the node state to be reported before saying Available anyway.
const REPORT_BEFORE_AVAILABLE: Duration = Duration::from_secs(10);

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    /// Warning events on the policies, reported by this node.
    pub events: Events,
    pub config: HandlerConfig,
    /// What this node can do: a policy it cannot is refused before anything is applied.
    pub support: NodeSupport,
    /// Reports the node state after each successful apply, before the enactment says
    /// Available.
    pub report_now: ReportNow,
    /// The node's state as the reporter or the last apply read it, while nothing changed.
    pub node_state: Arc<StateCache>,
    /// The generation of each policy this process has applied, or found the node already in.
    /// Checked once per process: a restarted handler re-applies a policy only if the node
    /// drifted from it, and a running one does not chase changes made by others (two policies
    /// on one interface would otherwise re-apply each other forever).
    pub in_desired_state: Mutex<BTreeMap<String, i64>>,
    /// This node's slots in policy rollouts.
    pub rollout: Rollout,
    /// The generation of each policy whose unusable `maxUnavailable` was already reported.
    pub reported_invalid_max_unavailable: Mutex<BTreeMap<String, i64>>,
    /// The policies as the node settles in them or reverts them: wakes the policies waiting
    /// for that (`dependsOn`).
    pub settled: tokio::sync::broadcast::Sender<Settled>,
    /// The enactments whose last Progressing write was refused: their next apply waits for
    /// that write before the change (see [`reconcile::enact`]).
    pub status_refused: Mutex<BTreeSet<String>>,
}

/// What the node did with a policy that other policies on the node may be waiting for.
#[derive(Clone, Debug)]
pub enum Settled {
    /// In its desired state: the policies that depend on it apply next.
    Applied(String),
    /// Reverted after its deletion: the policies it depended on (named here: it may be gone
    /// from the store) revert next, in the reverse order of the applies.
    Reverted(Vec<String>),
}

impl Context {
    fn is_in_desired_state(&self, policy: &str, generation: i64) -> bool {
        self.in_desired_state
            .lock()
            .is_ok_and(|known| known.get(policy) == Some(&generation))
    }

    /// Whether `maxUnavailable` of this policy generation still has to be reported unusable.
    fn first_report_of_invalid_max_unavailable(&self, policy: &str, generation: i64) -> bool {
        self.reported_invalid_max_unavailable
            .lock()
            .is_ok_and(|mut reported| reported.insert(policy.to_string(), generation) != Some(generation))
    }

    fn mark_in_desired_state(&self, policy: &str, generation: i64) {
        if let Ok(mut known) = self.in_desired_state.lock() {
            known.insert(policy.to_string(), generation);
        }
        self.wake_waiting(Settled::Applied(policy.to_string()));
    }

    /// Wakes the policies waiting for what `settled` says.
    fn wake_waiting(&self, settled: Settled) {
        // No receiver only while the controller is not running: nothing to wake then.
        let _ = self.settled.send(settled);
    }

    /// Whether the last Progressing write of enactment `name` was refused.
    fn status_was_refused(&self, name: &str) -> bool {
        self.status_refused.lock().is_ok_and(|names| names.contains(name))
    }

    fn note_status_refused(&self, name: &str, refused: bool) {
        if let Ok(mut names) = self.status_refused.lock() {
            if refused {
                names.insert(name.to_string());
            } else {
                names.remove(name);
            }
        }
    }

    pub(crate) fn forget(&self, policy: &str) {
        if let Ok(mut known) = self.in_desired_state.lock() {
            known.remove(policy);
        }
    }
}

/// What a node acts on in a policy, hashed: anything but its status.
fn acted_on(policy: &NodeNetworkConfigurationPolicy) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = &policy.metadata;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        meta.generation,
        meta.deletion_timestamp.as_ref().map(|time| time.0),
        &meta.finalizers,
        &meta.labels,
        &meta.annotations,
    )
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Enacts policies on this node until `shutdown` completes.
pub async fn run(context: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let shutdown = shutdown.shared();
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(context.client.clone());
    let node_name = context.config.node_name.clone();
    // Through the same retries as every other watch: a Controller's own watch would wait out a
    // backoff after the API server says a resumed watch expired.
    let (store, policy_stream) =
        watch::cached("policies", watcher(policies.clone(), watcher::Config::default()));
    // Only what a node acts on: not the status, which the cluster controller writes after
    // every enactment change (each write woke every node to reconcile every policy).
    let policy_stream = policy_stream.predicate_filter(acted_on, Default::default());
    let controller = Controller::for_stream(policy_stream, store.clone())
        .with_config(ControllerConfig::default().concurrency(1));
    let controller_store = store.clone();
    let readiness_store = store.clone();
    // A change of this node's labels re-evaluates every policy; other Node updates (status
    // heartbeats) do not.
    let last_labels: Mutex<Option<BTreeMap<String, String>>> = Mutex::new(None);
    let node_changes = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let node_events = watcher(Api::<Node>::all(context.client.clone()), node_changes);
    let controller =
        controller.watches_stream(watch::touched("this node", node_events), move |node: Node| {
            let labels = node.labels().clone();
            let changed = match last_labels.lock() {
                Ok(mut last) => last.replace(labels.clone()).as_ref() != Some(&labels),
                Err(_) => true,
            };
            let policies: Vec<ObjectRef<NodeNetworkConfigurationPolicy>> = if changed {
                store
                    .state()
                    .iter()
                    .map(|policy| ObjectRef::from_obj(&**policy))
                    .collect()
            } else {
                Vec::new()
            };
            policies
        });

    // A slot handed to this node wakes it; a slot freed, deleted or kept failed wakes it while
    // it waits for one of that policy's slots; a slot taken, handed to another node or renewed
    // wakes no one (each of them woke every node of the rollout to read the policy's slots
    // again).
    let slots = watcher::Config::default().labels(&crate::rollout::slots_selector());
    let leases = Api::<Lease>::namespaced(context.client.clone(), context.config.lease_namespace());
    let me = node_name.clone();
    let rollout = context.clone();
    let slot_events = watch::retried(watcher(leases, slots)).filter_map(move |event| {
        let seen = |lease: Lease, deleted: bool| {
            rollout.rollout.saw_slot(&lease, deleted);
            let waiting = lease
                .labels()
                .get(labels::POLICY)
                .is_none_or(|policy| rollout.rollout.waits_for_slot(policy));
            crate::rollout::wakes(&lease, &me, deleted, waiting).then_some(lease)
        };
        let woken = match event {
            Ok(watcher::Event::Delete(lease)) => seen(lease, true),
            Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => seen(lease, false),
            Ok(_) => None,
            Err(error) => {
                warn!("watching rollout slots: {error}");
                None
            }
        };
        std::future::ready(woken.map(Ok))
    });
    let controller = controller.watches_stream(slot_events, |lease: Lease| {
        lease
            .labels()
            .get(labels::POLICY)
            .map(|policy| ObjectRef::<NodeNetworkConfigurationPolicy>::new(policy))
    });

    // A policy settling or reverted here wakes the policies waiting for it (`dependsOn`).
    let settled = futures::stream::unfold(context.settled.subscribe(), |mut settled| async move {
        loop {
            match settled.recv().await {
                Ok(policy) => return Some((policy, settled)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let dependents_store = controller_store.clone();
    let wakes = settled.flat_map(move |settled| {
        let woken: Vec<ObjectRef<NodeNetworkConfigurationPolicy>> = match settled {
            Settled::Applied(policy) => dependents_store
                .state()
                .iter()
                .filter(|other| other.spec.dependencies().contains(&policy))
                .map(|other| ObjectRef::from_obj(&**other))
                .collect(),
            Settled::Reverted(dependencies) => dependencies.iter().map(|name| ObjectRef::new(name)).collect(),
        };
        futures::stream::iter(woken)
    });
    let controller = controller.reconcile_on(wakes);

    let cleanup = remove_enactments_of_deleted_policies(context.clone());
    let gate = (context.clone(), readiness_store.clone());
    let unlisted = watch::stopped_before_listed(controller.store(), shutdown.clone());
    let reconciler = controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context.clone())
        .for_each(|result| {
            let (context, policies) = gate.clone();
            async move {
                if let Err(error) = result {
                    warn!("policy reconcile: {error}");
                }
                // Every enactment change here comes from a reconcile: the gate follows it.
                update_readiness(&context, &policies).await;
            }
        });
    // A policy deleted, or a node relabelled, changes the gate without a reconcile here.
    let periodic = async {
        if context.config.network_readiness.is_none() {
            return std::future::pending().await;
        }
        let mut every =
            tokio::time::interval_at(tokio::time::Instant::now() + READINESS_REFRESH, READINESS_REFRESH);
        loop {
            every.tick().await;
            update_readiness(&context, &readiness_store).await;
        }
    };
    tokio::select! {
        () = reconciler => {}
        () = cleanup => {}
        () = periodic => {}
        () = unlisted => {}
    }
}

/// How often the network-ready gate is looked at besides after each reconcile.
const READINESS_REFRESH: Duration = Duration::from_secs(30);

async fn update_readiness(
    context: &Context,
    policies: &kube::runtime::reflector::Store<NodeNetworkConfigurationPolicy>,
) {
    if let Err(error) = readiness::update(context, policies).await {
        warn!("cannot update the network-ready gate of this node: {error}");
    }
}

fn error_policy(
    policy: Arc<NodeNetworkConfigurationPolicy>,
    error: &EnactmentError,
    context: Arc<Context>,
) -> Action {
    warn!(policy = %policy.name_any(), category = error.category(), "reconcile failed, retrying: {error}");
    Action::requeue(context.config.max_backoff)
}
