//! Enacting policies on this node: every NodeNetworkConfigurationPolicy whose selector matches
//! this node's labels is resolved (captures, bridge VLAN defaults), applied through
//! [`crate::apply`], and reported in the enactment `<node>.<policy>`.
//!
//! One policy is applied at a time (NetworkManager holds one checkpoint at a time). A policy is
//! not applied when the node is already in its desired state ([`drift`]), so a handler restart
//! or upgrade does not touch the node unless it drifted. Enactments of deleted policies, or of
//! policies that no longer select this node, are removed.

use crate::{
    apply, bridge_vlan, capture,
    config::HandlerConfig,
    drift,
    enactment_conditions::EnactmentSituation,
    node_state,
    node_state_reporter::{FIELD_MANAGER, STATUS_FIELD_MANAGER},
    policy_events, probes,
};
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::Node,
    apimachinery::pkg::apis::meta::v1::{OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{
        Controller,
        controller::{Action, Config as ControllerConfig},
        reflector::ObjectRef,
        watcher,
    },
};
use nmstate_api::{
    NetworkStateDocument, NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy,
    condition::find_condition,
    enactment::{NodeNetworkConfigurationEnactmentFields, enactment_name},
    labels,
};
use serde_json::{Value, json};
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

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub config: HandlerConfig,
    /// Whether this node's kernel can filter VLANs on bridges (see [`bridge_vlan`]).
    pub vlan_filtering: bool,
    /// Notified after each successful apply, so the node state is reported at once.
    pub applied: Arc<tokio::sync::Notify>,
    /// The generation of each policy this process has applied, or found the node already in.
    /// Checked once per process: a restarted handler re-applies a policy only if the node
    /// drifted from it, and a running one does not chase changes made by others (two policies
    /// on one interface would otherwise re-apply each other forever).
    pub in_desired_state: Mutex<BTreeMap<String, i64>>,
}

impl Context {
    fn is_in_desired_state(&self, policy: &str, generation: i64) -> bool {
        self.in_desired_state
            .lock()
            .is_ok_and(|known| known.get(policy) == Some(&generation))
    }

    fn mark_in_desired_state(&self, policy: &str, generation: i64) {
        if let Ok(mut known) = self.in_desired_state.lock() {
            known.insert(policy.to_string(), generation);
        }
    }

    fn forget(&self, policy: &str) {
        if let Ok(mut known) = self.in_desired_state.lock() {
            known.remove(policy);
        }
    }
}

/// Whether a policy's selector (equality on every label, as upstream) matches the node.
pub fn selects(selector: Option<&BTreeMap<String, String>>, node_labels: &BTreeMap<String, String>) -> bool {
    selector
        .into_iter()
        .flatten()
        .all(|(key, value)| node_labels.get(key) == Some(value))
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
        if failed || (enacted && context.is_in_desired_state(&policy_name, generation)) {
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
    let ports_without_vlan = bridge_vlan::apply_default_vlan_filtering(&mut desired, context.vlan_filtering);
    let vlan_note = (!context.vlan_filtering && ports_without_vlan > 0).then_some(bridge_vlan::SKIPPED_NOTE);
    status.desired_state = Some(NetworkStateDocument(desired.clone()));
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
    match apply::apply(&desired, &probes, apply::checkpoint_timeout(config.probe_timeout)).await {
        Ok(()) => {
            info!(policy = %policy_name, generation, "applied");
            context.mark_in_desired_state(&policy_name, generation);
            context.applied.notify_one();
            finish(
                &enactments,
                &name,
                &mut status,
                EnactmentSituation::Succeeded { note: vlan_note },
            )
            .await
        }
        Err(error) => {
            let retries = status.retry_count.get_or_insert_with(BTreeMap::new);
            let attempt = retries.get(&generation.to_string()).copied().unwrap_or(0) + 1;
            retries.insert(generation.to_string(), attempt);
            let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
            warn!(policy = %policy_name, attempt, "apply failed: {error}");
            let permanent = error.is_permanent();
            if permanent || attempt >= config.max_retries {
                let message = format!(
                    "error reconciling NodeNetworkConfigurationPolicy on node {} at desired state apply: {error}",
                    config.node_name
                );
                let event_message = if permanent {
                    policy_events::failed_without_retries(&name)
                } else {
                    policy_events::failed_after_retries(&name, attempt)
                };
                let event = policy_events::reconcile_failed(&policy, &config.node_name, event_message);
                policy_events::record(&context.client, &event).await;
                finish(
                    &enactments,
                    &name,
                    &mut status,
                    EnactmentSituation::Failed { message },
                )
                .await
            } else {
                let situation = EnactmentSituation::Retrying {
                    node: config.node_name.clone(),
                    attempt,
                    max: config.max_retries,
                };
                finish(&enactments, &name, &mut status, situation).await?;
                Ok(Action::requeue(backoff(
                    attempt,
                    config.initial_backoff,
                    config.max_backoff,
                )))
            }
        }
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

async fn finish(
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    name: &str,
    status: &mut nmstate_api::NodeNetworkConfigurationEnactmentStatus,
    situation: EnactmentSituation,
) -> Result<Action, EnactmentError> {
    let generation = status.policy_generation.unwrap_or_default();
    situation.apply_to(&mut status.conditions, generation, &Time(Timestamp::now()));
    write_status(enactments, name, status).await?;
    Ok(Action::await_change())
}

async fn write_status(
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    name: &str,
    status: &nmstate_api::NodeNetworkConfigurationEnactmentStatus,
) -> Result<(), EnactmentError> {
    let patch = json!({
        "apiVersion": NodeNetworkConfigurationEnactment::api_version(&()),
        "kind": NodeNetworkConfigurationEnactment::kind(&()),
        "status": serde_json::to_value(status)?,
    });
    enactments
        .patch_status(
            name,
            &PatchParams::apply(STATUS_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

async fn create_enactment(
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    name: &str,
    policy: &str,
    node: &Node,
    config: &HandlerConfig,
) -> Result<NodeNetworkConfigurationEnactment, EnactmentError> {
    let mut enactment =
        NodeNetworkConfigurationEnactment::new(name, NodeNetworkConfigurationEnactmentFields {});
    let mut object_labels = config.relationship_labels.clone();
    object_labels.insert(labels::POLICY.into(), policy.into());
    object_labels.insert(labels::NODE.into(), config.node_name.clone());
    enactment.metadata.labels = Some(object_labels);
    enactment.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: config.node_name.clone(),
        uid: node.uid().unwrap_or_default(),
        ..OwnerReference::default()
    }]);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match enactments.create(&params, &enactment).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(enactments.get(name).await?),
        Err(error) => Err(error.into()),
    }
}

async fn delete_enactment(
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    name: &str,
) -> Result<(), EnactmentError> {
    match enactments.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            info!(enactment = name, "removed the enactment");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Removes this node's enactments whose policy is gone: at start (policies deleted while the
/// handler was down), then whenever a policy is deleted. Runs until the watch ends.
async fn remove_enactments_of_deleted_policies(context: Arc<Context>) {
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(context.client.clone());
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(context.client.clone());
    let node = context.config.node_name.clone();
    let mine = ListParams::default().labels(&format!("{}={node}", labels::NODE));
    match enactments.list(&mine).await {
        Ok(list) => {
            for enactment in list {
                let Some(policy) = enactment.labels().get(labels::POLICY).cloned() else {
                    continue;
                };
                if matches!(policies.get_opt(&policy).await, Ok(None)) {
                    let _ = delete_enactment(&enactments, &enactment.name_any()).await;
                }
            }
        }
        Err(error) => warn!("cannot list this node's enactments: {error}"),
    }
    let mut deletions = watcher(policies, watcher::Config::default()).boxed();
    while let Some(event) = deletions.next().await {
        match event {
            Ok(watcher::Event::Delete(policy)) => {
                context.forget(&policy.name_any());
                if let Err(error) =
                    delete_enactment(&enactments, &enactment_name(&node, &policy.name_any())).await
                {
                    warn!(
                        "cannot remove the enactment of deleted policy {}: {error}",
                        policy.name_any()
                    );
                }
            }
            Ok(_) => {}
            Err(error) => {
                warn!("watching policies for deletions: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_by_equality_on_every_label() {
        let node = labels(&[
            ("kubernetes.io/hostname", "node01"),
            ("node-role.kubernetes.io/worker", ""),
        ]);
        assert!(selects(None, &node));
        assert!(selects(Some(&labels(&[])), &node));
        assert!(selects(
            Some(&labels(&[("node-role.kubernetes.io/worker", "")])),
            &node
        ));
        assert!(!selects(
            Some(&labels(&[("node-role.kubernetes.io/worker", "yes")])),
            &node
        ));
        assert!(!selects(
            Some(&labels(&[("kubernetes.io/hostname", "node01"), ("zone", "a")])),
            &node
        ));
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let delays: Vec<u64> = (1..=7)
            .map(|attempt| backoff(attempt, Duration::from_secs(1), Duration::from_secs(30)).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    }
}
