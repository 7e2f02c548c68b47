//! Enacting policies on this node: every NodeNetworkConfigurationPolicy whose selector matches
//! this node's labels is resolved (captures, bridge VLAN defaults), applied through
//! [`crate::apply`], and reported in the enactment `<node>.<policy>`.
//!
//! One policy is applied at a time (NetworkManager holds one checkpoint at a time), and only
//! with a place in the policy's rollout ([`rollout`]: at most `maxUnavailable` nodes at once).
//! A policy is not applied when the node is already in its desired state ([`drift`]), so a
//! handler restart or upgrade does not touch the node unless it drifted. Enactments of deleted
//! policies, or of policies that no longer select this node, are removed.

/// Upstream's enactment conditions for each situation.
pub mod conditions;
/// What the Warning events on a policy say.
pub mod events;
/// Creating, writing and removing enactments.
pub mod objects;

use crate::{
    apply::{self, ApplyError, probes},
    config::HandlerConfig,
    network::{
        bridge_vlan, capture, drift,
        node_support::{self, NodeSupport},
        state as node_state,
    },
    node_state_reporter::ReportNow,
    rollout::{Admission, Rollout},
};
use conditions::EnactmentSituation;
use events as policy_events;
use futures::StreamExt;
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller,
        controller::{Action, Config as ControllerConfig},
        reflector::ObjectRef,
        watcher,
    },
};
use nmstate_api::policy::selects;
use nmstate_api::{
    NetworkStateDocument, NodeNetworkConfigurationEnactment, NodeNetworkConfigurationEnactmentStatus,
    NodeNetworkConfigurationPolicy, condition::find_condition, enactment::enactment_name, labels,
};
use nmstate_runtime::events::Events;
use objects::{
    create_enactment, delete_enactment, finish, remove_enactments_of_deleted_policies, write_status,
};
use serde_json::Value;
use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};
use tracing::{debug, info, warn};

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
    /// The generation of each policy this process has applied, or found the node already in.
    /// Checked once per process: a restarted handler re-applies a policy only if the node
    /// drifted from it, and a running one does not chase changes made by others (two policies
    /// on one interface would otherwise re-apply each other forever).
    pub in_desired_state: Mutex<BTreeMap<String, i64>>,
    /// This node's places in policy rollouts.
    pub rollout: Rollout,
    /// The generation of each policy whose unusable `maxUnavailable` was already reported.
    pub reported_invalid_max_unavailable: Mutex<BTreeMap<String, i64>>,
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
    }

    pub(crate) fn forget(&self, policy: &str) {
        if let Ok(mut known) = self.in_desired_state.lock() {
            known.remove(policy);
        }
    }
}

/// How long to wait before attempt `attempt + 1`: doubling from `initial`, at most `max`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    initial
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(max)
}

/// Enacts policies on this node until `shutdown` completes.
pub async fn run(context: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(context.client.clone());
    let node_name = context.config.node_name.clone();
    let controller = Controller::new(policies.clone(), watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(1));
    let store = controller.store();
    // A change of this node's labels re-evaluates every policy; other Node updates (status
    // heartbeats) do not.
    let last_labels: Mutex<Option<BTreeMap<String, String>>> = Mutex::new(None);
    let node_changes = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let controller = controller.watches(
        Api::<Node>::all(context.client.clone()),
        node_changes,
        move |node: Node| {
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
        },
    );

    // A place freed in a policy's rollout wakes the nodes waiting for one.
    let slots =
        watcher::Config::default().labels(&format!("{}={}", labels::LEASE, labels::LEASE_ROLLOUT_SLOT));
    let controller = controller.watches(
        Api::<Lease>::namespaced(context.client.clone(), context.config.lease_namespace()),
        slots,
        |lease: Lease| {
            lease
                .labels()
                .get(labels::POLICY)
                .map(|policy| ObjectRef::<NodeNetworkConfigurationPolicy>::new(policy))
        },
    );

    let cleanup = remove_enactments_of_deleted_policies(context.clone());
    let reconciler = controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!("policy reconcile: {error}");
            }
        });
    tokio::select! {
        () = reconciler => {}
        () = cleanup => {}
    }
}

async fn reconcile(
    policy: Arc<NodeNetworkConfigurationPolicy>,
    context: Arc<Context>,
) -> Result<Action, EnactmentError> {
    let config = &context.config;
    let policy_name = policy.name_any();
    let generation = policy.metadata.generation.unwrap_or_default();
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(context.client.clone());
    let name = enactment_name(&config.node_name, &policy_name);

    let node = Api::<Node>::all(context.client.clone())
        .get(&config.node_name)
        .await?;
    if !selects(policy.spec.node_selector.as_ref(), node.labels()) {
        context.rollout.release(&policy_name).await;
        delete_enactment(&enactments, &name).await?;
        return Ok(Action::await_change());
    }
    let enactment = match enactments.get_opt(&name).await? {
        Some(existing) => existing,
        None => create_enactment(&enactments, &name, &policy_name, &node, config).await?,
    };
    let mut status = enactment.status.clone().unwrap_or_default();
    let mut enacted = false;
    if status.policy_generation == Some(generation) {
        let is_true = |type_: &str| find_condition(&status.conditions, type_).is_some_and(|c| c.is_true());
        enacted = is_true("Available");
        let failed = is_true("Failing") && !is_true("Progressing");
        if failed || is_true("Aborted") || (enacted && context.is_in_desired_state(&policy_name, generation))
        {
            return Ok(Action::await_change()); // done with this generation: no churn
        }
    } else {
        // A new generation starts with fresh conditions (upstream #1442).
        status.conditions.clear();
        status.policy_generation = Some(generation);
    }

    let desired = policy
        .spec
        .desired_state
        .as_ref()
        .map(|document| document.0.clone())
        .unwrap_or(Value::Null);
    let capture = policy.spec.capture.clone().unwrap_or_default();
    let cached: BTreeMap<String, Value> = status
        .captured_states
        .iter()
        .flatten()
        .filter_map(|(name, captured)| Some((name.clone(), captured.state.as_ref()?.0.clone())))
        .collect();
    debug!(policy = %policy_name, generation, "reading the node's state");
    let current = tokio::task::spawn_blocking(node_state::retrieve_state).await??;
    debug!(policy = %policy_name, "read the node's state");
    let resolved = match capture::resolve(&capture, &desired, &current, &cached) {
        Ok(resolved) => resolved,
        Err(error) => {
            return finish(
                &enactments,
                &name,
                &mut status,
                EnactmentSituation::failed_generating(error),
            )
            .await;
        }
    };
    let mut desired = resolved.desired;
    let vlan_filtering = context.support.vlan_filtering;
    let ports_without_vlan = bridge_vlan::apply_default_vlan_filtering(&mut desired, vlan_filtering);
    let vlan_note = (!vlan_filtering && ports_without_vlan > 0).then_some(bridge_vlan::SKIPPED_NOTE);
    status.desired_state = Some(NetworkStateDocument(desired.clone()));
    let refusals = context.support.refusals(&desired, &current).await;
    if !refusals.is_empty() {
        // Nothing is applied, so no place in the rollout is used.
        let reason = node_support::message(&refusals);
        warn!(policy = %policy_name, "not applied: {reason}");
        let event = policy_events::failed_without_retries(&name);
        return fail_for_good(&policy, &name, &mut status, &context, &enactments, reason, event).await;
    }
    status.features = node_state::features_used(&desired, &current);
    status.captured_states = (!resolved.captured.is_empty()).then(|| {
        resolved
            .captured
            .into_iter()
            .map(|(name, state)| {
                let captured = nmstate_api::enactment::CapturedState {
                    state: Some(NetworkStateDocument(state)),
                    meta_info: Some(nmstate_api::enactment::StateMetaInfo {
                        version: Some("0".into()),
                        time: Some(Time(Timestamp::now())),
                    }),
                };
                (name, captured)
            })
            .collect()
    });
    if NetworkStateDocument(desired.clone()).is_empty() {
        info!(policy = %policy_name, "Ignoring empty desired state");
        return finish(
            &enactments,
            &name,
            &mut status,
            EnactmentSituation::Succeeded { note: None },
        )
        .await;
    }
    match drift::pending_changes(&desired, &current) {
        Ok(None) => {
            context.mark_in_desired_state(&policy_name, generation);
            if enacted {
                info!(policy = %policy_name, generation, "the node is still in the desired state");
                return Ok(Action::await_change());
            }
            info!(policy = %policy_name, generation, "the node is already in the desired state: not applied");
            // A place taken before a restart, when the apply had finished but was not reported.
            context.rollout.release_any(&policy, generation).await;
            return finish(
                &enactments,
                &name,
                &mut status,
                EnactmentSituation::Succeeded { note: vlan_note },
            )
            .await;
        }
        Ok(Some(pending)) if enacted => {
            info!(policy = %policy_name, generation, %pending, "the node drifted from the policy: re-applying");
        }
        // nmstate's apply reports anything it cannot read, with the same message.
        Ok(Some(_)) | Err(_) => {}
    }
    if let Some(waiting) = take_place(&policy, generation, &name, &mut status, &context, &enactments).await? {
        return Ok(waiting);
    }
    EnactmentSituation::Progressing.apply_to(&mut status.conditions, generation, &Time(Timestamp::now()));
    write_status(&enactments, &name, &status).await?;

    let probes = probes::select(
        &context.client,
        &config.node_name,
        &config.probe_dns_host,
        config.probe_timeout,
    )
    .await;
    debug!(policy = %policy_name, probes = probes.len(), "selected the probes");
    info!(policy = %policy_name, generation, "applying");
    let checkpoint = apply::checkpoint_timeout(config.probe_timeout);
    let may_commit = context.rollout.still_held(&policy_name);
    match apply::apply(&desired, &probes, checkpoint, may_commit).await {
        Ok(()) => {
            info!(policy = %policy_name, generation, "applied");
            context.mark_in_desired_state(&policy_name, generation);
            // Reported before Available: whoever waited for the policy then reads the new
            // state in the NodeNetworkState.
            if !context.report_now.report(REPORT_BEFORE_AVAILABLE).await {
                warn!(
                    policy = %policy_name,
                    "the node state was not reported within {} s of the apply; it follows shortly",
                    REPORT_BEFORE_AVAILABLE.as_secs()
                );
            }
            let action = finish(
                &enactments,
                &name,
                &mut status,
                EnactmentSituation::Succeeded { note: vlan_note },
            )
            .await;
            // Reported first, so no one sees more nodes applying than there are places.
            context.rollout.release(&policy_name).await;
            action
        }
        Err(ApplyError::LostPlace) => {
            warn!(policy = %policy_name, generation, "{}", ApplyError::LostPlace);
            finish(&enactments, &name, &mut status, EnactmentSituation::Pending).await?;
            Ok(Action::requeue(config.initial_backoff))
        }
        Err(error) => {
            failed(
                &policy,
                generation,
                &name,
                &mut status,
                &context,
                &enactments,
                error,
            )
            .await
        }
    }
}

/// Takes a place in the policy's rollout; when there is none, the enactment is marked Pending
/// (or Aborted, when failures used up every place) and the action to take instead is returned.
async fn take_place(
    policy: &NodeNetworkConfigurationPolicy,
    generation: i64,
    name: &str,
    status: &mut NodeNetworkConfigurationEnactmentStatus,
    context: &Context,
    enactments: &Api<NodeNetworkConfigurationEnactment>,
) -> Result<Option<Action>, EnactmentError> {
    let policy_name = policy.name_any();
    if context.rollout.holds(&policy_name, generation) {
        return Ok(None); // retrying with the place it took
    }
    let selector = policy.spec.node_selector.as_ref();
    let limit = context
        .rollout
        .limit(policy, |labels| selects(selector, labels))
        .await?;
    if let Some(invalid) = &limit.invalid
        && context.first_report_of_invalid_max_unavailable(&policy_name, generation)
    {
        let message = format!(
            "{invalid}; using the default {} ({} nodes at once)",
            nmstate_api::policy::DEFAULT_MAX_UNAVAILABLE,
            limit.limit
        );
        warn!(policy = %policy_name, "{message}");
        context
            .events
            .warn(
                policy,
                policy_events::INVALID_MAX_UNAVAILABLE,
                policy_events::ROLLOUT,
                message,
            )
            .await;
    }
    match context.rollout.acquire(policy, generation, limit.limit).await? {
        Admission::Granted => Ok(None),
        Admission::Wait { retry_after } => {
            let pending = find_condition(&status.conditions, "Pending").is_some_and(|c| c.is_true());
            if !pending {
                info!(policy = %policy_name, generation, limit = limit.limit, "waiting for a place in the rollout");
                finish(enactments, name, status, EnactmentSituation::Pending).await?;
            }
            Ok(Some(Action::requeue(retry_after)))
        }
        Admission::Abort => {
            warn!(policy = %policy_name, generation, "aborted: failed nodes hold every place in the rollout");
            context
                .events
                .warn(
                    policy,
                    policy_events::RECONCILE_FAILED,
                    policy_events::ROLLOUT,
                    policy_events::aborted(name),
                )
                .await;
            let situation = EnactmentSituation::Aborted {
                enactment: name.to_string(),
            };
            Ok(Some(finish(enactments, name, status, situation).await?))
        }
    }
}

/// Failing for good, for `reason`: upstream's message in the enactment, and `event` on the policy.
async fn fail_for_good(
    policy: &NodeNetworkConfigurationPolicy,
    name: &str,
    status: &mut NodeNetworkConfigurationEnactmentStatus,
    context: &Context,
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    reason: impl std::fmt::Display,
    event: String,
) -> Result<Action, EnactmentError> {
    let node = &context.config.node_name;
    context
        .events
        .warn(
            policy,
            policy_events::RECONCILE_FAILED,
            policy_events::APPLY,
            event,
        )
        .await;
    let message = format!(
        "error reconciling NodeNetworkConfigurationPolicy on node {node} at desired state apply: {reason}"
    );
    finish(enactments, name, status, EnactmentSituation::Failed { message }).await
}

/// After a failed apply: another attempt later, keeping the place, or, when the retries are
/// used up or retrying cannot help, Failing for good, the place kept and marked failed.
async fn failed(
    policy: &NodeNetworkConfigurationPolicy,
    generation: i64,
    name: &str,
    status: &mut NodeNetworkConfigurationEnactmentStatus,
    context: &Context,
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    error: ApplyError,
) -> Result<Action, EnactmentError> {
    let config = &context.config;
    let policy_name = policy.name_any();
    let retries = status.retry_count.get_or_insert_with(BTreeMap::new);
    let attempt = retries.get(&generation.to_string()).copied().unwrap_or(0) + 1;
    retries.insert(generation.to_string(), attempt);
    let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
    warn!(policy = %policy_name, attempt, "apply failed: {error}");
    let permanent = error.is_permanent();
    if permanent || attempt >= config.max_retries {
        let event = if permanent {
            policy_events::failed_without_retries(name)
        } else {
            policy_events::failed_after_retries(name, attempt)
        };
        let action = fail_for_good(policy, name, status, context, enactments, error, event).await;
        context.rollout.mark_failed(&policy_name).await;
        action
    } else {
        let situation = EnactmentSituation::Retrying {
            node: config.node_name.clone(),
            attempt,
            max: config.max_retries,
        };
        finish(enactments, name, status, situation).await?;
        Ok(Action::requeue(backoff(
            attempt,
            config.initial_backoff,
            config.max_backoff,
        )))
    }
}

fn error_policy(
    policy: Arc<NodeNetworkConfigurationPolicy>,
    error: &EnactmentError,
    context: Arc<Context>,
) -> Action {
    warn!(policy = %policy.name_any(), "reconcile failed, retrying: {error}");
    Action::requeue(context.config.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let delays: Vec<u64> = (1..=7)
            .map(|attempt| backoff(attempt, Duration::from_secs(1), Duration::from_secs(30)).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    }
}
