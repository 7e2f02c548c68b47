//! A deleted policy on this node. With `deletionPolicy: Revert` (and its finalizer held), the
//! node applies the enactment's `revertState`, with what the other policies Available on the
//! node declare set as they declare it, through the same slot, checkpoint, probes and commit as an apply; then its
//! enactment goes, and the cluster controller lets the policy go once none is left. A revert
//! that fails is rolled back and tried again, visible in the enactment. Without a revert, a
//! deleted policy is left alone: its enactment goes with it.

use super::{
    Context, EnactmentError, Settled,
    conditions::EnactmentSituation,
    dependencies,
    objects::{delete_enactment, finish},
    plan,
    reconcile::{count_attempt, enact},
    waiting::{take_slot, wait_for_dependency},
};
use crate::{
    apply::ApplyError,
    network::{drift::is_empty_section, revert::with_declared},
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, api::ListParams, runtime::controller::Action};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy,
    enactment::{EnactmentConditionType, enactment_name},
    labels,
};
use serde_json::Value;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// The event reasons of a revert, on the policy.
pub const REVERTED: &str = "Reverted";
pub const REVERT_FAILED: &str = "RevertFailed";
const REVERT: &str = "Revert";

pub(super) async fn on_deletion(
    policy: &NodeNetworkConfigurationPolicy,
    context: &Context,
) -> Result<Action, EnactmentError> {
    if !(policy.spec.reverts_on_deletion() && policy.holds_revert_finalizer()) {
        return Ok(Action::await_change());
    }
    let policy_name = policy.name_any();
    let node = &context.config.node_name;
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(context.client.clone());
    let name = enactment_name(node, &policy_name);
    let Some(enactment) = enactments.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let mut status = enactment.status.unwrap_or_default();
    let undo = status
        .revert_state
        .as_ref()
        .map(|document| document.0.clone())
        .unwrap_or(Value::Null);
    let declared = declared_by_other_policies(context, &policy_name).await?;
    let remaining = with_declared(&undo, &declared.iter().collect::<Vec<_>>());
    if is_empty_section(&remaining) {
        info!(policy = %policy_name, "deleted: nothing of it to revert on this node");
        return reverted(policy, context, &enactments, &name).await;
    }

    // The deletion is a generation of its own: its conditions start over.
    let generation = policy.metadata.generation.unwrap_or_default();
    if status.policy_generation != Some(generation) {
        status.conditions.clear();
        status.policy_generation = Some(generation);
        status.retry_count = None;
    }
    // Reverts run in the reverse order of applies.
    if let Some(message) = dependencies::revert_wait_reason(policy, context).await? {
        return wait_for_dependency(policy, &name, &mut status, context, &enactments, message).await;
    }
    if let Some(waiting) = take_slot(policy, generation, &name, &mut status, context, &enactments).await? {
        return Ok(waiting);
    }
    EnactmentSituation::Reverting.apply_to(&mut status.conditions, generation, &Time(Timestamp::now()));
    info!(policy = %policy_name, revert = %remaining, "deleted: reverting");
    let applied = enact(policy, context, &enactments, &name, &remaining, &mut status).await?;
    match applied {
        Ok(()) => reverted(policy, context, &enactments, &name).await,
        Err(error) => {
            let attempt = count_attempt(&mut status.retry_count, generation);
            let retry_after = plan::backoff(
                attempt,
                context.config.initial_backoff,
                context.config.max_backoff,
            );
            let message = format!(
                "failed to revert deleted NodeNetworkConfigurationPolicy {policy_name} on node {node} \
                 (attempt {attempt}, next in {} s): {error}",
                retry_after.as_secs()
            );
            warn!(policy = %policy_name, attempt, category = error.category(), "{message}");
            (context.events)
                .warn(policy, REVERT_FAILED, REVERT, message.clone())
                .await;
            if matches!(error, ApplyError::LostSlot) {
                finish(&enactments, &name, &mut status, EnactmentSituation::Pending).await?;
            } else {
                let situation = EnactmentSituation::RevertFailed { message };
                finish(&enactments, &name, &mut status, situation).await?;
            }
            Ok(Action::requeue(retry_after))
        }
    }
}

/// Done on this node: the enactment goes, the slot is given back, and an event says so.
async fn reverted(
    policy: &NodeNetworkConfigurationPolicy,
    context: &Context,
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    name: &str,
) -> Result<Action, EnactmentError> {
    let policy_name = policy.name_any();
    delete_enactment(enactments, name).await?;
    context.rollout.release(&policy_name).await;
    let generation = policy.metadata.generation.unwrap_or_default();
    context.rollout.release_unclaimed(policy, generation).await;
    context.forget(&policy_name);
    context.wake_waiting(Settled::Reverted(policy.spec.dependencies().to_vec()));
    let node = &context.config.node_name;
    info!(policy = %policy_name, "deleted: reverted on this node");
    (context.events)
        .normal(policy, REVERTED, REVERT, format!("reverted on node {node}"))
        .await;
    Ok(Action::await_change())
}

/// The desired states of the other policies on this node that are not being deleted (and are
/// no previews): what a revert sets as they declare it.
async fn declared_by_other_policies(context: &Context, policy: &str) -> Result<Vec<Value>, EnactmentError> {
    let live: BTreeMap<String, bool> = Api::<NodeNetworkConfigurationPolicy>::all(context.client.clone())
        .list(&ListParams::default())
        .await?
        .into_iter()
        .map(|other| {
            let declares = other.metadata.deletion_timestamp.is_none() && !other.spec.is_preview();
            (other.name_any(), declares)
        })
        .collect();
    let mine = ListParams::default().labels(&format!("{}={}", labels::NODE, context.config.node_name));
    let enactments = Api::<NodeNetworkConfigurationEnactment>::all(context.client.clone())
        .list(&mine)
        .await?;
    Ok(enactments
        .into_iter()
        .filter(|enactment| {
            enactment
                .labels()
                .get(labels::POLICY)
                .is_some_and(|other| other != policy && live.get(other) == Some(&true))
        })
        .filter_map(applied_here)
        .collect())
}

/// What an enactment's policy set on this node: its desired state while it is Available. A
/// policy that failed here, was rolled back or is still on its way declares nothing the node
/// has: a revert that kept its state would apply what was refused (a change that cut the node
/// off, say) and fail, or worse, for ever.
fn applied_here(enactment: NodeNetworkConfigurationEnactment) -> Option<Value> {
    let status = enactment.status?;
    status
        .is(EnactmentConditionType::Available)
        .then_some(status.desired_state?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enactment(condition: &str, status: &str) -> NodeNetworkConfigurationEnactment {
        serde_json::from_value(json!({
            "apiVersion": "nmstate.io/v1beta1", "kind": "NodeNetworkConfigurationEnactment",
            "metadata": {"name": "node01.other"},
            "status": {
                "desiredState": {"interfaces": [{"name": "eth0", "type": "ethernet", "state": "up"}]},
                "conditions": [{"type": condition, "status": status, "reason": "x", "message": ""}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn only_a_policy_available_here_declares_what_a_revert_keeps() {
        let cases = [
            ("Available", "True", true),
            ("Available", "False", false),
            ("Failing", "True", false),
            ("Progressing", "True", false),
            ("Pending", "True", false),
            ("Aborted", "True", false),
        ];
        for (condition, status, declares) in cases {
            assert_eq!(
                applied_here(enactment(condition, status)).is_some(),
                declares,
                "{condition}={status}"
            );
        }
    }
}
