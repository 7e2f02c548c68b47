//! The cluster controller's driver: the single writer of every policy's status.
//!
//! Replicas elect a leader through a Lease (`nmstate-cluster`, kube-lease-manager); only the
//! leader watches and writes. A policy's status is recomputed from scratch (its enactments of
//! the current generation, the nodes it selects, their readiness and handler heartbeats) on
//! every change of those, so a new leader, or a restarted one, converges on the right status.

use crate::{
    finalizer::{self, Remaining, Step},
    metrics::{ClusterMetrics, Sources},
    status::{NodeView, PolicyOutcome, evaluate},
};
use futures::{FutureExt, StreamExt};
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, NodeNetworkState,
    condition::updated_conditions,
    dependencies::cycle_through,
    ip_pool::NodeNetworkIPPool,
    labels,
    names::{self, CLUSTER_METRICS_CONTROLLER, CLUSTER_STATUS_FIELD_MANAGER},
    selection::selects,
};
use nmstate_runtime::{
    election::{self, Election},
    events::Events,
    heartbeat::{self, Sight},
    leases,
    watch::{self, cached},
};
use serde_json::json;
use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot serialize the policy status: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("leader election: {0}")]
    Election(#[from] kube_lease_manager::LeaseManagerError),
}

impl ClusterError {
    /// A bounded category, for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ClusterError::Kube(_) => "kube",
            ClusterError::Serialize(_) => "serialize",
            ClusterError::Election(_) => "election",
        }
    }
}

pub struct Settings {
    /// Where the handlers' heartbeats are.
    pub namespace: String,
    /// The election for [`nmstate_api::names::CLUSTER_LEASE`].
    pub election: Election,
    /// How long a node that cannot revert a deleted policy holds its deletion.
    pub revert_timeout: Duration,
}

struct Context {
    client: Client,
    /// Every policy: their `dependsOn`, for cycles.
    policies: Store<NodeNetworkConfigurationPolicy>,
    nodes: Store<Node>,
    enactments: Store<NodeNetworkConfigurationEnactment>,
    heartbeats: Store<Lease>,
    sight: Arc<HeartbeatSight>,
    metrics: Arc<ClusterMetrics>,
    /// Warning events on policies (a node skipped by a revert).
    events: Events,
    revert_timeout: Duration,
}

/// What the heartbeat watch has seen, updated from its events.
#[derive(Default)]
struct HeartbeatSight {
    sight: Mutex<Option<Timestamp>>,
    regained: AtomicBool,
}

impl HeartbeatSight {
    fn observe(&self, event: &Result<watcher::Event<Lease>, watcher::Error>) {
        let Ok(mut since) = self.sight.lock() else { return };
        match event {
            Err(_) => *since = None,
            Ok(_) if since.is_none() => {
                *since = Some(Timestamp::now());
                self.regained.store(true, Ordering::SeqCst);
            }
            Ok(_) => {}
        }
    }

    fn get(&self) -> Sight {
        match self.sight.lock().ok().and_then(|since| *since) {
            Some(since) => Sight::Since(since),
            None => Sight::Lost,
        }
    }

    fn take_regained(&self) -> bool {
        self.regained.swap(false, Ordering::SeqCst)
    }
}

/// Runs for as long as `shutdown` does not complete: waits to lead, then writes statuses
/// until the lead is lost, and so on.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<ClusterMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClusterError> {
    let lead = || lead(&client, &settings, &metrics);
    election::run_while_leading(client.clone(), &settings.election, shutdown, lead, || {
        metrics.set_sources(None)
    })
    .await?;
    Ok(())
}

/// Watches what policy statuses depend on, and keeps them up to date.
async fn lead(client: &Client, settings: &Settings, metrics: &Arc<ClusterMetrics>) {
    let (nodes, node_stream) = cached(
        "nodes",
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            // Only labels and conditions matter: drop the rest of each Node from the cache.
            .modify(|node| {
                node.managed_fields_mut().clear();
                node.annotations_mut().clear();
                node.spec = None;
                if let Some(status) = node.status.as_mut() {
                    *status = k8s_openapi::api::core::v1::NodeStatus {
                        conditions: status.conditions.take(),
                        ..Default::default()
                    };
                }
            }),
    );
    let (enactments, enactment_stream) = cached(
        "enactments",
        watcher(
            Api::<NodeNetworkConfigurationEnactment>::all(client.clone()),
            watcher::Config::default(),
        ),
    );
    // What this replica has seen of the heartbeats: while the watch is down, or for one lease
    // after it is back, a heartbeat it has not seen renewed does not make a node drop out.
    let sight = Arc::new(HeartbeatSight::default());
    let seen = sight.clone();
    let (heartbeats, heartbeat_stream) = cached(
        "heartbeats",
        watcher(
            Api::<Lease>::namespaced(client.clone(), &settings.namespace),
            watcher::Config::default().labels(&heartbeat::selector()),
        )
        .inspect(move |event| seen.observe(event)),
    );
    let (states, state_stream) = cached(
        "node states",
        watcher(
            Api::<NodeNetworkState>::all(client.clone()),
            watcher::Config::default(),
        ),
    );
    let (pools, pool_stream) = cached(
        "IP pools",
        watcher(
            Api::<NodeNetworkIPPool>::all(client.clone()),
            watcher::Config::default(),
        ),
    );
    // Kept filled for the metrics only.
    let state_stream = futures::stream::select(state_stream.map(|_| ()), pool_stream.map(|_| ()))
        .for_each(|()| futures::future::ready(()));

    // The policies through the same retries as every other watch: a Controller's own watch
    // would wait out a backoff after the API server says a resumed watch expired.
    let (policies, policy_stream) = cached(
        "policies",
        watcher(
            Api::<NodeNetworkConfigurationPolicy>::all(client.clone()),
            watcher::Config::default(),
        ),
    );
    let controller = Controller::for_stream(policy_stream, policies.clone());
    metrics.set_sources(Some(Sources {
        policies: policies.clone(),
        enactments: enactments.clone(),
        states,
        nodes: nodes.clone(),
        pools,
    }));
    let every_policy = |policies: Store<NodeNetworkConfigurationPolicy>| {
        move || -> Vec<ObjectRef<NodeNetworkConfigurationPolicy>> {
            policies
                .state()
                .iter()
                .map(|policy| ObjectRef::from_obj(&**policy))
                .collect()
        }
    };
    // Nodes matter when their labels or readiness change; heartbeats when their holder comes
    // or goes (renewals are covered by requeueing at the next expiry).
    let node_views: Mutex<BTreeMap<String, NodeFacts>> = Mutex::default();
    let all_for_node = every_policy(policies.clone());
    let holders: Mutex<BTreeMap<String, Option<String>>> = Mutex::default();
    let all_for_heartbeat = every_policy(policies.clone());
    let heartbeat_store = heartbeats.clone();
    let regained = sight.clone();
    // A policy's change re-evaluates the policies it names in dependsOn (a cycle it closes).
    let dependents = watch::touched(
        "policies for dependsOn",
        watcher(
            Api::<NodeNetworkConfigurationPolicy>::all(client.clone()),
            watcher::Config::default(),
        ),
    );
    let controller = controller.watches_stream(dependents, |policy: NodeNetworkConfigurationPolicy| {
        policy
            .spec
            .dependencies()
            .iter()
            .map(|name| ObjectRef::<NodeNetworkConfigurationPolicy>::new(name))
            .collect::<Vec<_>>()
    });
    let controller = controller
        .watches_stream(
            enactment_stream,
            |enactment: NodeNetworkConfigurationEnactment| {
                enactment
                    .labels()
                    .get(labels::POLICY)
                    .map(|policy| ObjectRef::<NodeNetworkConfigurationPolicy>::new(policy))
            },
        )
        .watches_stream(node_stream, move |node: Node| {
            let view = (node.labels().clone(), is_ready(&node));
            let changed = node_views.lock().map_or(true, |mut views| {
                views.insert(node.name_any(), view.clone()).as_ref() != Some(&view)
            });
            if changed { all_for_node() } else { Vec::new() }
        })
        .watches_stream(heartbeat_stream, move |lease: Lease| {
            let gone = heartbeat_store.get(&ObjectRef::from_obj(&lease)).is_none();
            let holder = if gone {
                None
            } else {
                leases::holder(&lease).map(str::to_string)
            };
            let changed = holders.lock().map_or(true, |mut all| {
                all.insert(lease.name_any(), holder.clone()) != Some(holder)
            });
            // Seeing again: every status is evaluated at once, and again one lease later.
            if changed || regained.take_regained() {
                all_for_heartbeat()
            } else {
                Vec::new()
            }
        });
    let server_minor = match client.apiserver_version().await {
        Ok(version) => nmstate_api::crd::server_minor(&version),
        Err(_) => u32::MAX, // a current server: the events API
    };
    let context = Arc::new(Context {
        client: client.clone(),
        policies: policies.clone(),
        nodes,
        enactments,
        heartbeats,
        sight,
        metrics: metrics.clone(),
        events: Events::new(
            client.clone(),
            names::CLUSTER_EVENTS_COMPONENT,
            &settings.election.identity,
            server_minor,
        ),
        revert_timeout: settings.revert_timeout,
    });
    let statuses = controller
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!("policy status: {error}");
            }
        });
    futures::future::join(statuses, state_stream).await;
}

/// What a policy status needs of a node: its labels and whether it is Ready.
type NodeFacts = (BTreeMap<String, String>, bool);

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
}

async fn reconcile(
    policy: Arc<NodeNetworkConfigurationPolicy>,
    context: Arc<Context>,
) -> Result<Action, ClusterError> {
    let started = Instant::now();
    let result = write_status(&policy, &context).await;
    context
        .metrics
        .served
        .record_reconcile(CLUSTER_METRICS_CONTROLLER, result.is_ok(), started.elapsed());
    result
}

async fn write_status(
    policy: &NodeNetworkConfigurationPolicy,
    context: &Context,
) -> Result<Action, ClusterError> {
    // Nothing is evaluated from a cache that has not listed yet (a new leader's first events
    // would otherwise count no node at all). Asked, not awaited: `Store::wait_until_ready` is a
    // one-shot that wakes one waiter, and reconciles of several policies would wait at once.
    let listed = [
        context.nodes.wait_until_ready().now_or_never(),
        context.enactments.wait_until_ready().now_or_never(),
        context.heartbeats.wait_until_ready().now_or_never(),
    ];
    if !listed.iter().all(|ready| matches!(ready, Some(Ok(())))) {
        return Ok(Action::requeue(Duration::from_millis(250)));
    }
    let name = policy.name_any();
    let generation = policy.metadata.generation.unwrap_or_default();
    let now = Timestamp::now();
    let heartbeats = context.heartbeats.state();
    let sight = context.sight.get();
    let live = heartbeat::live_nodes_seen(heartbeats.iter().map(|lease| &**lease), now, sight);
    let nodes: Vec<NodeView> = context
        .nodes
        .state()
        .iter()
        .map(|node| NodeView {
            name: node.name_any(),
            selected: selects(&policy.spec, &node.name_any(), node.labels()),
            ready: is_ready(node),
            runs_handler: live.contains(&node.name_any()),
        })
        .collect();
    let enactments: Vec<Arc<NodeNetworkConfigurationEnactment>> = context
        .enactments
        .state()
        .into_iter()
        .filter(|enactment| enactment.labels().get(labels::POLICY) == Some(&name))
        .collect();
    let enactments: Vec<&NodeNetworkConfigurationEnactment> = enactments.iter().map(|e| &**e).collect();
    let graph: BTreeMap<String, Vec<String>> = context
        .policies
        .state()
        .iter()
        .map(|other| (other.name_any(), other.spec.dependencies().to_vec()))
        .collect();
    let outcome = match cycle_through(&name, &graph) {
        Some(cycle) => PolicyOutcome::cycle(&cycle),
        None => evaluate(generation, &nodes, &enactments),
    };
    let current = policy
        .status
        .as_ref()
        .map(|status| status.conditions.as_slice())
        .unwrap_or_default();
    if let Some(conditions) =
        updated_conditions(current, outcome.conditions_over(current, generation), &Time(now))
    {
        info!(policy = %name, generation, status = outcome.status(), "{outcome:?}");
        let patch = json!({
            "apiVersion": NodeNetworkConfigurationPolicy::api_version(&()),
            "kind": NodeNetworkConfigurationPolicy::kind(&()),
            "status": {"conditions": serde_json::to_value(conditions)?},
        });
        Api::<NodeNetworkConfigurationPolicy>::all(context.client.clone())
            .patch_status(
                &name,
                &PatchParams::apply(CLUSTER_STATUS_FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
    }
    let recheck = revert_finalizer(policy, context, &nodes, &enactments, now).await?;
    // A handler that stops renewing its heartbeat drops out of the count when it expires (or,
    // after this replica could not see, one lease after it sees again).
    let next_expiry = heartbeats
        .iter()
        .filter(|lease| {
            leases::holder(lease).is_some_and(|node| {
                live.contains(node) && nodes.iter().any(|view| view.name == node && view.selected)
            })
        })
        .filter_map(|lease| heartbeat::live_until(lease, sight))
        .min();
    let expiry = next_expiry.map(|expiry| {
        Duration::try_from(expiry.duration_since(now)).unwrap_or_default() + Duration::from_millis(200)
    });
    Ok(match expiry.into_iter().chain(recheck).min() {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// Adds or removes the policy's revert finalizer ([`finalizer::decide`]); when to look again.
async fn revert_finalizer(
    policy: &NodeNetworkConfigurationPolicy,
    context: &Context,
    nodes: &[NodeView],
    enactments: &[&NodeNetworkConfigurationEnactment],
    now: Timestamp,
) -> Result<Option<Duration>, ClusterError> {
    let remaining: Vec<Remaining> = enactments
        .iter()
        .filter_map(|enactment| enactment.labels().get(labels::NODE))
        .map(|node| Remaining {
            node: node.clone(),
            able: nodes
                .iter()
                .any(|view| &view.name == node && view.ready && view.runs_handler),
        })
        .collect();
    match finalizer::decide(policy, &remaining, now, context.revert_timeout) {
        Step::Nothing | Step::Wait { recheck: None } => Ok(None),
        Step::Wait { recheck } => Ok(recheck),
        Step::Add => {
            finalizer::patch(&context.client, policy, true).await?;
            info!(policy = %policy.name_any(), "added the revert finalizer");
            Ok(None)
        }
        Step::Remove { skipped } => {
            if !skipped.is_empty() {
                let message = format!(
                    "not reverted on {}: NotReady or without a live handler for {} s since the policy was deleted",
                    skipped.join(", "),
                    context.revert_timeout.as_secs()
                );
                warn!(policy = %policy.name_any(), "{message}");
                (context.events)
                    .warn(policy, REVERT_SKIPPED, "Revert", message)
                    .await;
            }
            finalizer::patch(&context.client, policy, false).await?;
            info!(policy = %policy.name_any(), "removed the revert finalizer");
            Ok(None)
        }
    }
}

/// The reason of the Warning event on a deleted policy whose revert skipped nodes.
pub const REVERT_SKIPPED: &str = "RevertSkipped";

fn error_policy(
    policy: Arc<NodeNetworkConfigurationPolicy>,
    error: &ClusterError,
    _: Arc<Context>,
) -> Action {
    warn!(policy = %policy.name_any(), category = error.category(), "cannot write the policy status, retrying: {error}");
    Action::requeue(Duration::from_secs(5))
}
