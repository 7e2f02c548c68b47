//! What a reconcile does while the policy cannot be applied yet on this node: it waits for the
//! policies it depends on, for its variables to have a value here, or for a slot in its
//! rollout. Each says so in the enactment once per reason, and is looked at again.

use super::{
    Context, EnactmentError,
    conditions::EnactmentSituation,
    events,
    objects::finish,
    plan::{self, OnAdmission},
    variables::Unresolved,
};
use kube::{Api, ResourceExt, runtime::controller::Action};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationEnactmentStatus,
    NodeNetworkConfigurationPolicy, condition::find_condition, enactment::EnactmentConditionType,
    selection::selects,
};
use std::time::Duration;
use tracing::{info, warn};

/// How soon a policy waiting for a dependency looks again by itself (a dependency settling on
/// this node wakes it at once).
pub(super) const DEPENDENCY_RECHECK: Duration = Duration::from_secs(10);
/// How soon a policy whose variables did not resolve looks again (a pool address may be freed,
/// a label added).
const UNRESOLVED_RECHECK: Duration = Duration::from_secs(10);

/// Pending until what `message` names is done; reported (and an event recorded) once per wait,
/// looked at again on every change of a policy this node enacts, and at least every
/// [`DEPENDENCY_RECHECK`].
pub(super) async fn wait_for_dependency(
    policy: &NodeNetworkConfigurationPolicy,
    name: &str,
    status: &mut NodeNetworkConfigurationEnactmentStatus,
    context: &Context,
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    message: String,
) -> Result<Action, EnactmentError> {
    let reported = find_condition(&status.conditions, EnactmentConditionType::Pending.as_str())
        .is_some_and(|condition| condition.is_true() && condition.message == message);
    if !reported {
        info!(policy = %policy.name_any(), "{message}");
        (context.events)
            .normal(
                policy,
                events::WAITING_FOR_DEPENDENCY,
                events::APPLY,
                format!("{name}: {message}"),
            )
            .await;
        finish(
            enactments,
            name,
            status,
            EnactmentSituation::WaitingForDependency { message },
        )
        .await?;
    }
    Ok(Action::requeue(DEPENDENCY_RECHECK))
}

/// Failing with why the variables have no value here, reported once per reason (with an
/// event); looked at again every [`UNRESOLVED_RECHECK`].
pub(super) async fn unresolved_variables(
    policy: &NodeNetworkConfigurationPolicy,
    name: &str,
    status: &mut NodeNetworkConfigurationEnactmentStatus,
    context: &Context,
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    unresolved: Unresolved,
) -> Result<Action, EnactmentError> {
    let reported =
        find_condition(&status.conditions, EnactmentConditionType::Failing.as_str()).is_some_and(|c| {
            c.is_true() && c.reason == unresolved.reason.as_str() && c.message == unresolved.message
        });
    if !reported {
        warn!(policy = %policy.name_any(), reason = unresolved.reason.as_str(), "not applied: {}", unresolved.message);
        (context.events)
            .warn(
                policy,
                events::RECONCILE_FAILED,
                events::APPLY,
                format!("{name}: {}", unresolved.message),
            )
            .await;
        let situation = EnactmentSituation::Unresolved {
            reason: unresolved.reason,
            message: unresolved.message,
        };
        finish(enactments, name, status, situation).await?;
    }
    Ok(Action::requeue(UNRESOLVED_RECHECK))
}

/// Takes a slot in the policy's rollout; when there is none, the enactment is marked Pending
/// (or Aborted, when failures used up every slot) and the action to take instead is returned.
pub(super) async fn take_slot(
    policy: &NodeNetworkConfigurationPolicy,
    generation: i64,
    name: &str,
    status: &mut NodeNetworkConfigurationEnactmentStatus,
    context: &Context,
    enactments: &Api<NodeNetworkConfigurationEnactment>,
) -> Result<Option<Action>, EnactmentError> {
    let policy_name = policy.name_any();
    if context.rollout.holds(&policy_name, generation) {
        return Ok(None); // retrying with the slot it took
    }
    if context.rollout.claim_handed(&policy_name, generation) {
        return Ok(None); // woken by the slot handed to it
    }
    let survey = context
        .rollout
        .survey(policy, |node, labels| selects(&policy.spec, node, labels))
        .await?;
    let limit = &survey.limit;
    if let Some(invalid) = &limit.invalid
        && context.first_report_of_invalid_max_unavailable(&policy_name, generation)
    {
        let message = format!(
            "{invalid}; using the default {} ({} nodes at once)",
            nmstate_api::policy::DEFAULT_MAX_UNAVAILABLE,
            limit.limit
        );
        warn!(policy = %policy_name, "{message}");
        (context.events)
            .warn(policy, events::INVALID_MAX_UNAVAILABLE, events::ROLLOUT, message)
            .await;
    }
    let admission = context.rollout.acquire(policy, generation, &survey).await?;
    let pending = status.is(EnactmentConditionType::Pending);
    match plan::on_admission(&admission, pending) {
        OnAdmission::Apply => Ok(None),
        OnAdmission::Wait { retry_after, report } => {
            if report {
                info!(policy = %policy_name, generation, limit = limit.limit, "waiting for a slot in the rollout");
                finish(enactments, name, status, EnactmentSituation::Pending).await?;
            }
            Ok(Some(Action::requeue(retry_after)))
        }
        OnAdmission::Abort => {
            warn!(policy = %policy_name, generation, "aborted: failed nodes hold every slot in the rollout");
            (context.events)
                .warn(
                    policy,
                    events::RECONCILE_FAILED,
                    events::ROLLOUT,
                    events::aborted(name),
                )
                .await;
            let situation = EnactmentSituation::Aborted {
                enactment: name.to_string(),
            };
            Ok(Some(finish(enactments, name, status, situation).await?))
        }
    }
}
