//! The reconcile of one policy on this node, a driver over [`plan`]'s pure decisions:
//!
//! a deleted policy goes to [`deletion`]; dereference (client) → [`plan::entry`] → wait for
//! the policies it depends on ([`dependencies`]) → read the node and resolve the desired state
//! (NetworkManager) → [`plan::before_apply`] (a preview ends here) → the revert finalizer, a
//! slot in the rollout (client) → [`plan::on_admission`] → what undoes the apply, kept; the
//! checkpointed apply (NetworkManager) → [`plan::after_apply`] → the enactment's status and the
//! slot (client). What waits (a dependency, the variables, a slot) is in [`super::waiting`].

use super::{
    Context, EnactmentError, REPORT_BEFORE_AVAILABLE,
    conditions::EnactmentSituation,
    deletion, dependencies, events,
    objects::{self, create_enactment, delete_enactment, finish, write_status},
    plan::{self, AfterApply, BeforeApply, Drift, Entry, Findings, Outcome, Preview, Retries},
    variables::{self, Resolution, Unresolved},
    waiting::{DEPENDENCY_RECHECK, take_slot, unresolved_variables, wait_for_dependency},
};
use crate::{
    apply::{self, ApplyError, probes},
    network::{bridge_vlan, capture, drift, node_support, revert, state as node_state},
    phases::{self, names},
    rollout::Rollout,
};
use futures::future::Either;
use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, runtime::controller::Action};
use nmstate::NetworkState;
use nmstate_api::{
    NetworkStateDocument, NodeNetworkConfigurationEnactment, NodeNetworkConfigurationEnactmentStatus,
    NodeNetworkConfigurationPolicy,
    enactment::{CapturedState, EnactmentPreview, StateMetaInfo, enactment_name},
    selection::selects,
};
use serde_json::Value;
use std::{collections::BTreeMap, sync::Arc, time::Duration};
use tracing::{debug, info, warn};

/// How soon a policy that reverts on deletion looks again for its finalizer (the finalizer's
/// arrival, a policy update, wakes it sooner).
const FINALIZER_WAIT: Duration = Duration::from_secs(5);

pub(super) async fn reconcile(
    policy: Arc<NodeNetworkConfigurationPolicy>,
    context: Arc<Context>,
) -> Result<Action, EnactmentError> {
    let config = &context.config;
    let policy_name = policy.name_any();
    let generation = policy.metadata.generation.unwrap_or_default();
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(context.client.clone());
    let name = enactment_name(&config.node_name, &policy_name);
    if policy.metadata.deletion_timestamp.is_some() {
        return deletion::on_deletion(&policy, &context).await;
    }
    phases::start(phases::names::RECONCILE);

    // dereference (client)
    let nodes = Api::<Node>::all(context.client.clone());
    let read = async { tokio::try_join!(nodes.get(&config.node_name), enactments.get_opt(&name)) };
    let (node, existing) = phases::timed(names::DEREFERENCE, read).await?;
    let selected = selects(&policy.spec, &config.node_name, node.labels());
    let mut status = if selected {
        let enactment = match existing {
            Some(existing) => existing,
            None => {
                let created = create_enactment(&enactments, &name, &policy_name, &node, config);
                let created = phases::timed(names::DEREFERENCE, created).await?;
                // This reconcile may work from a cache that still holds a policy just deleted
                // (a related Lease woke it): checked after the create, so an enactment made for
                // a deleted policy goes again, whichever side of the check the deletion falls.
                let exists = objects::policy_still_exists(&context.client, &policy);
                if !phases::timed(names::DEREFERENCE, exists).await? {
                    delete_enactment(&enactments, &name).await?;
                    return Ok(Action::await_change());
                }
                created
            }
        };
        enactment.status.unwrap_or_default()
    } else {
        NodeNetworkConfigurationEnactmentStatus::default()
    };

    // entry (pure)
    let known_applied = context.is_in_desired_state(&policy_name, generation);
    let enacted = match plan::entry(selected, generation, &status, known_applied) {
        Entry::Remove => {
            context.rollout.release(&policy_name).await;
            // A slot handed to it while it waited goes back too.
            context.rollout.release_unclaimed(&policy, generation).await;
            // Its addresses go with the enactment (once: this runs on every change of a policy
            // that does not select the node). One left by a crash in between is reclaimed when
            // the pool runs out.
            if delete_enactment(&enactments, &name).await? {
                variables::release(&context.client, &policy, &config.node_name).await;
            }
            return Ok(Action::await_change());
        }
        Entry::Done => {
            context.rollout.release_unclaimed(&policy, generation).await;
            return Ok(Action::await_change());
        }
        Entry::Enact { fresh, enacted } => {
            if fresh {
                status.conditions.clear();
                status.policy_generation = Some(generation);
                status.preview = None;
            }
            enacted
        }
    };

    // wait for the policies it depends on (client); a preview does not wait
    if !policy.spec.is_preview()
        && let Some(message) = dependencies::wait_reason(&policy, node.labels(), &context).await?
    {
        if enacted {
            // Applied before (this handler restarted): it stays Available while the policies
            // it depends on are checked first, and is checked once they are.
            debug!(policy = %policy_name, "{message}");
            return Ok(Action::requeue(DEPENDENCY_RECHECK));
        }
        return wait_for_dependency(&policy, &name, &mut status, &context, &enactments, message).await;
    }

    // the variables' values on this node (client: pools)
    let written = policy
        .spec
        .desired_state
        .as_ref()
        .map(|document| document.0.clone())
        .unwrap_or(Value::Null);
    let values = match variables::resolve(&context.client, &policy, &node).await? {
        Resolution::Resolved(values) => values,
        Resolution::Unresolved(unresolved) => {
            return unresolved_variables(&policy, &name, &mut status, &context, &enactments, unresolved)
                .await;
        }
        Resolution::PolicyGone => {
            delete_enactment(&enactments, &name).await?;
            return Ok(Action::await_change());
        }
    };
    let desired = match nmstate_api::variables::substitute(&written, &values) {
        Ok(desired) => desired,
        Err(problem) => {
            let unresolved = Unresolved {
                reason: nmstate_api::enactment::EnactmentConditionReason::VariableUnresolved,
                message: format!("spec.desiredState: {problem}"),
            };
            return unresolved_variables(&policy, &name, &mut status, &context, &enactments, unresolved)
                .await;
        }
    };

    // read the node and resolve the captures (NetworkManager, no client)
    let capture = policy.spec.capture.clone().unwrap_or_default();
    let cached: BTreeMap<String, Value> = status
        .captured_states
        .iter()
        .flatten()
        .filter_map(|(name, captured)| Some((name.clone(), captured.state.as_ref()?.0.clone())))
        .collect();
    let cache = context.node_state.clone();
    let current = phases::timed(
        phases::names::READ_NODE,
        tokio::task::spawn_blocking(move || cache.current()),
    )
    .await??;
    let resolved = match capture::resolve(&capture, &desired, &current, &cached) {
        Ok(resolved) => resolved,
        Err(error) => {
            let situation = EnactmentSituation::failed_generating(error);
            return finish(&enactments, &name, &mut status, situation).await;
        }
    };
    let mut desired = resolved.desired;
    let vlan_filtering = context.support.vlan_filtering;
    let ports_without_vlan = bridge_vlan::apply_default_vlan_filtering(&mut desired, vlan_filtering);
    status.desired_state = Some(NetworkStateDocument(desired.clone()));
    let refusals = context.support.refusals(&desired, &current).await;
    let findings = Findings {
        refusal: (!refusals.is_empty()).then(|| node_support::message(&refusals)),
        empty: NetworkStateDocument(desired.clone()).is_empty(),
        drift: drift_from(&desired, &current),
        enacted,
        note: (!vlan_filtering && ports_without_vlan > 0).then_some(bridge_vlan::SKIPPED_NOTE),
        preview: policy.spec.is_preview(),
    };

    // before the apply (pure)
    let step = plan::before_apply(&findings);
    if !matches!(step, BeforeApply::Refuse { .. }) {
        status.features = node_state::features_used(&desired, &current);
        status.captured_states = captured_states(resolved.captured);
    }
    match step {
        BeforeApply::Refuse { reason } => {
            // Nothing is applied, so no slot in the rollout is used.
            warn!(policy = %policy_name, "not applied: {reason}");
            context.rollout.release_unclaimed(&policy, generation).await;
            let event = events::failed_without_retries(&name);
            return fail_for_good(&policy, &name, &mut status, &context, &enactments, reason, event).await;
        }
        BeforeApply::IgnoreEmpty => {
            info!(policy = %policy_name, "Ignoring empty desired state");
            context.mark_in_desired_state(&policy_name, generation);
            context.rollout.release_unclaimed(&policy, generation).await;
            let situation = EnactmentSituation::Succeeded { note: None };
            return finish(&enactments, &name, &mut status, situation).await;
        }
        BeforeApply::StillApplied => {
            context.mark_in_desired_state(&policy_name, generation);
            info!(policy = %policy_name, generation, "the node is still in the desired state");
            context.rollout.release_unclaimed(&policy, generation).await;
            return Ok(Action::await_change());
        }
        BeforeApply::AlreadyApplied { note } => {
            context.mark_in_desired_state(&policy_name, generation);
            info!(policy = %policy_name, generation, "the node is already in the desired state: not applied");
            // A slot taken before a restart, when the apply had finished but was not reported.
            context.rollout.release_any(&policy, generation).await;
            let situation = EnactmentSituation::Succeeded { note };
            return finish(&enactments, &name, &mut status, situation).await;
        }
        BeforeApply::Preview(preview) => {
            // Nothing is applied, so no slot in the rollout is used.
            let (reason, message) = preview.condition();
            info!(policy = %policy_name, generation, "preview: {message}");
            status.preview = Some(EnactmentPreview {
                diff: match preview {
                    Preview::WouldChange { diff } => diff.map(NetworkStateDocument),
                    Preview::NoChange | Preview::WouldFail { .. } => None,
                },
                revert: match revert::revert(&desired, &current) {
                    Ok(revert) => Some(NetworkStateDocument(revert)),
                    Err(error) => {
                        warn!(policy = %policy_name, "preview: no revert: {error}");
                        None
                    }
                },
            });
            let situation = EnactmentSituation::Previewed { reason, message };
            return finish(&enactments, &name, &mut status, situation).await;
        }
        BeforeApply::Apply { drifted } => {
            if let (true, Drift::Pending(pending)) = (drifted, &findings.drift) {
                info!(policy = %policy_name, generation, %pending, "the node drifted from the policy: re-applying");
            }
        }
    }

    // A policy that reverts on deletion is applied only once it holds the finalizer that keeps
    // it until the revert: the cluster controller adds it as soon as it sees the policy.
    if policy.spec.reverts_on_deletion() && !policy.holds_revert_finalizer() {
        info!(policy = %policy_name, "waiting for the revert finalizer before applying");
        return Ok(Action::requeue(FINALIZER_WAIT));
    }

    // a slot in the rollout (client)
    let slot = take_slot(&policy, generation, &name, &mut status, &context, &enactments);
    if let Some(waiting) = phases::timed(phases::names::TAKE_SLOT, slot).await? {
        return Ok(waiting);
    }

    // the checkpointed apply (NetworkManager)
    EnactmentSituation::Progressing.apply_to(&mut status.conditions, generation, &Time(Timestamp::now()));
    // What undoes this apply, kept before it starts: a revert goes back to before the first.
    match revert::revert(&desired, &current) {
        Ok(undo) => {
            let kept = status.revert_state.take().map(|document| document.0);
            status.revert_state = Some(NetworkStateDocument(revert::merge_earliest(kept.as_ref(), &undo)));
        }
        Err(error) => warn!(policy = %policy_name, "cannot work out what would undo this apply: {error}"),
    }
    info!(policy = %policy_name, generation, "applying");
    let applied = enact(&policy, &context, &enactments, &name, &desired, &mut status).await?;
    let outcome = match &applied {
        Ok(()) => Outcome::Applied,
        Err(ApplyError::LostSlot) => Outcome::LostSlot,
        Err(error) => Outcome::Failed {
            permanent: error.is_permanent(),
        },
    };
    let attempt = match outcome {
        Outcome::Failed { .. } => count_attempt(&mut status.retry_count, generation),
        _ => 0,
    };

    // after the apply (pure), then the status and the slot (client)
    let retries = Retries {
        max: config.max_retries,
        initial_backoff: config.initial_backoff,
        max_backoff: config.max_backoff,
    };
    match plan::after_apply(&outcome, attempt, &retries, &name, findings.note) {
        AfterApply::Succeeded { note } => {
            info!(policy = %policy_name, generation, "applied");
            context.mark_in_desired_state(&policy_name, generation);
            let available = finish(
                &enactments,
                &name,
                &mut status,
                EnactmentSituation::Succeeded { note },
            );
            // Whom the slot goes to is read meanwhile; it is handed on once Available is
            // written, so no one sees more nodes applying than there are slots.
            let (action, next) = tokio::join!(
                phases::timed(phases::names::STATUS_AVAILABLE, available),
                context.rollout.next_in_line(&policy_name)
            );
            context.rollout.release_to(&policy_name, next).await;
            action
        }
        AfterApply::Pending { retry_after } => {
            warn!(policy = %policy_name, generation, "{}", ApplyError::LostSlot);
            finish(&enactments, &name, &mut status, EnactmentSituation::Pending).await?;
            Ok(Action::requeue(retry_after))
        }
        AfterApply::Retry { attempt, after } => {
            warn!(policy = %policy_name, attempt, category = category(&applied), "apply failed: {}", failure(&applied));
            let situation = EnactmentSituation::Retrying {
                node: config.node_name.clone(),
                attempt,
                max: config.max_retries,
            };
            finish(&enactments, &name, &mut status, situation).await?;
            Ok(Action::requeue(after))
        }
        AfterApply::FailForGood { event } => {
            let reason = failure(&applied);
            warn!(policy = %policy_name, attempt, category = category(&applied), "apply failed: {reason}");
            let action =
                fail_for_good(&policy, &name, &mut status, &context, &enactments, reason, event).await;
            context.rollout.mark_failed(&policy_name).await;
            action
        }
    }
}

/// Applies `desired` as `policy` applies anything on this node (an apply, or a revert) once
/// `status` says so: its status written (without the last apply's probes) beside the apply's
/// preparation (probes chosen, a stale checkpoint cleared, DNS saved) and the change itself,
/// which is committed only once that write is done (nothing is committed that the status did
/// not announce); the change under a checkpoint, with its probes, committed only while this
/// node holds its slot; and, when it worked, the node state reported before this returns (the
/// state nmstate's verification read; the report overlaps the probes), so the status written
/// next finds it current. The probes' reports go into `status`. `Err` only when `status` could
/// not be written: nothing was committed (and the next apply of this enactment writes its
/// status before the change).
pub(super) async fn enact(
    policy: &NodeNetworkConfigurationPolicy,
    context: &Context,
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    name: &str,
    desired: &Value,
    status: &mut NodeNetworkConfigurationEnactmentStatus,
) -> Result<Result<(), ApplyError>, EnactmentError> {
    let policy_name = policy.name_any();
    // Until the change is committed or rolled back and reported: the node-state reporter
    // leaves the node alone meanwhile, and reports once asked below.
    let _applying = context.report_now.applying();
    status.probes = None; // the last apply's, until this one's are known
    let plan = probes::plan(policy.spec.probes.as_ref(), &context.config.probe_defaults);
    let prober = probes::Prober {
        client: context.client.clone(),
        node: context.config.node_name.clone(),
    };
    let (changed, change_in) = tokio::sync::oneshot::channel::<Option<NetworkState>>();
    let report_now = context.report_now.clone();
    let report = tokio::spawn(async move {
        let verified = change_in.await.ok()?;
        Some(
            phases::timed(
                names::REPORT,
                report_now.report(verified, REPORT_BEFORE_AVAILABLE),
            )
            .await,
        )
    });
    let slot = PolicySlot {
        rollout: &context.rollout,
        policy: &policy_name,
    };
    let mut reports = Vec::new();
    let on_change = move |verified| {
        let _ = changed.send(verified); // the report's task ends only with the runtime
    };
    let write = phases::timed(names::STATUS_PROGRESSING, write_status(enactments, name, status));
    // After a refused write, the next apply waits for its write first: a status the API server
    // keeps refusing (its RBAC, an admission policy) then changes nothing on the node, where
    // each retry would apply the change and roll it back.
    let announced = if context.status_was_refused(name) {
        write.await?;
        context.note_status_refused(name, false);
        Either::Left(std::future::ready(Ok(())))
    } else {
        Either::Right(write)
    };
    let change = async {
        let chosen = probes::Probes::select(prober, plan);
        let prepared = phases::timed(names::PREPARE, apply::prepare(chosen)).await?;
        // Taken once the preparation is done: a stale checkpoint it rolled back outdates it.
        let over = context.node_state.for_apply();
        if over.is_none() {
            debug!(policy = %policy_name, "no read of the node is current: nmstate reads it before the change");
        }
        apply::change(desired, prepared, &slot, over, on_change, &mut reports).await
    };
    let (announced, changed) = tokio::join!(announced, change);
    status.probes = (!reports.is_empty()).then_some(reports);
    let applied = match (announced, changed) {
        (Ok(()), Ok(uncommitted)) => uncommitted.commit(&slot).await,
        (Ok(()), Err(error)) => Err(error),
        (Err(unannounced), changed) => {
            context.note_status_refused(name, true);
            if let Ok(uncommitted) = changed {
                match uncommitted.roll_back().await {
                    Ok(()) => {
                        warn!(policy = %policy_name, "the enactment's status could not be written ({unannounced}): the change was rolled back")
                    }
                    Err(error) => {
                        warn!(policy = %policy_name, "the enactment's status could not be written ({unannounced}), nor the change rolled back: {error}")
                    }
                }
            }
            return Err(unannounced);
        }
    };
    if applied.is_ok() {
        let reported = phases::timed(names::REPORT_WAIT, report).await;
        if !matches!(reported, Ok(Some(true))) {
            warn!(
                policy = %policy_name,
                "the node state was not reported within {} s of the apply; it follows shortly",
                REPORT_BEFORE_AVAILABLE.as_secs()
            );
        }
    }
    Ok(applied)
}

/// A policy's slot in its rollout, as an apply sees it.
struct PolicySlot<'a> {
    rollout: &'a Rollout,
    policy: &'a str,
}

impl apply::Slot for PolicySlot<'_> {
    async fn may_commit(&self) -> bool {
        self.rollout.still_held(self.policy).await
    }
    async fn lapsing(&self) {
        self.rollout.lapsing(self.policy).await;
    }
    async fn renewed_after(&self, since: Timestamp) -> bool {
        self.rollout.renewed_after(self.policy, since).await
    }
}

/// How the node stands against `desired`.
fn drift_from(desired: &Value, current: &NetworkState) -> Drift {
    match drift::pending_changes(desired, current) {
        Ok(None) => Drift::InDesiredState,
        Ok(Some(pending)) => Drift::Pending(pending),
        // nmstate's apply reports anything it cannot read, with the same message.
        Err(_) => Drift::Unknown,
    }
}

/// The captures, as the enactment keeps them.
fn captured_states(captured: BTreeMap<String, Value>) -> Option<BTreeMap<String, CapturedState>> {
    (!captured.is_empty()).then(|| {
        captured
            .into_iter()
            .map(|(name, state)| {
                let captured = CapturedState {
                    state: Some(NetworkStateDocument(state)),
                    meta_info: Some(StateMetaInfo {
                        version: Some("0".into()),
                        time: Some(Time(Timestamp::now())),
                    }),
                };
                (name, captured)
            })
            .collect()
    })
}

/// Counts a failed apply of `generation` in `retries` (the status's `retryCount`); returns how
/// many there were.
pub(super) fn count_attempt(retries: &mut Option<BTreeMap<String, i64>>, generation: i64) -> u32 {
    let retries = retries.get_or_insert_with(BTreeMap::new);
    let attempt = retries.get(&generation.to_string()).copied().unwrap_or(0) + 1;
    retries.insert(generation.to_string(), attempt);
    u32::try_from(attempt).unwrap_or(u32::MAX)
}

fn failure(applied: &Result<(), ApplyError>) -> String {
    applied
        .as_ref()
        .err()
        .map(ToString::to_string)
        .unwrap_or_default()
}

fn category(applied: &Result<(), ApplyError>) -> &'static str {
    applied.as_ref().err().map_or("none", ApplyError::category)
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
    (context.events)
        .warn(policy, events::RECONCILE_FAILED, events::APPLY, event)
        .await;
    let message = format!(
        "error reconciling NodeNetworkConfigurationPolicy on node {node} at desired state apply: {reason}"
    );
    finish(enactments, name, status, EnactmentSituation::Failed { message }).await
}
