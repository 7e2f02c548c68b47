//! Ordering between policies on this node (`spec.dependsOn`): a policy is applied only once each
//! policy it depends on that selects this node is Available here for its current generation,
//! and this process has seen the node in it (so a restarted handler re-applies in order). Until
//! then its enactment is Pending (`WaitingForDependency`) and it holds no rollout slot. On
//! delete with `Revert`, the order is reversed: a policy is reverted only once the policies
//! being deleted that depend on it are reverted here. [`waiting`] decides; the I/O is around it.

use super::{Context, EnactmentError};
use kube::{Api, ResourceExt, api::ListParams};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy,
    dependencies::cycle_through,
    enactment::{EnactmentConditionType, enactment_name},
    labels,
    selection::selects,
};
use std::collections::BTreeMap;

/// How a dependency stands on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dependency {
    /// No such policy (yet).
    Missing,
    /// It does not select this node: nothing to wait for.
    NotSelecting,
    /// Available here for its current generation.
    Settled,
    /// Not there yet; `state` says where it is.
    NotYet { state: String },
}

/// What the policy waits for, if anything: the first dependency not settled.
pub fn waiting(dependencies: &[(String, Dependency)]) -> Option<String> {
    dependencies
        .iter()
        .find_map(|(name, dependency)| match dependency {
            Dependency::NotSelecting | Dependency::Settled => None,
            Dependency::Missing => Some(format!(
                "waiting for policy {name}, which it depends on: no such policy"
            )),
            Dependency::NotYet { state } => Some(format!(
                "waiting for policy {name}, which it depends on, to be Available on this node ({state})"
            )),
        })
}

/// What `policy` waits for on this node, whose labels are `node_labels`; `None`: apply it.
pub async fn wait_reason(
    policy: &NodeNetworkConfigurationPolicy,
    node_labels: &BTreeMap<String, String>,
    context: &Context,
) -> Result<Option<String>, EnactmentError> {
    if policy.spec.dependencies().is_empty() {
        return Ok(None);
    }
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(context.client.clone());
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(context.client.clone());
    let mut found = Vec::new();
    for name in policy.spec.dependencies() {
        let dependency = match policies.get_opt(name).await? {
            None => Dependency::Missing,
            Some(other) if !selects(&other.spec, &context.config.node_name, node_labels) => {
                Dependency::NotSelecting
            }
            Some(other) => {
                let generation = other.metadata.generation.unwrap_or_default();
                let enactment = enactments
                    .get_opt(&enactment_name(&context.config.node_name, name))
                    .await?;
                let status = enactment.and_then(|enactment| enactment.status);
                let available = status.as_ref().is_some_and(|status| {
                    status.policy_generation == Some(generation)
                        && status.is(EnactmentConditionType::Available)
                });
                if available && context.is_in_desired_state(name, generation) {
                    Dependency::Settled
                } else {
                    let state = status
                        .as_ref()
                        .and_then(|status| status.conditions.iter().find(|c| c.is_true()))
                        .map_or("not enacted here yet".to_string(), |c| {
                            format!("{} here", c.type_)
                        });
                    Dependency::NotYet { state }
                }
            }
        };
        found.push((name.clone(), dependency));
    }
    let Some(reason) = waiting(&found) else {
        return Ok(None);
    };
    // A wait that can never end says so.
    let graph: BTreeMap<String, Vec<String>> = policies
        .list(&ListParams::default())
        .await?
        .into_iter()
        .map(|other| (other.name_any(), other.spec.dependencies().to_vec()))
        .collect();
    Ok(Some(match cycle_through(&policy.name_any(), &graph) {
        Some(cycle) => format!(
            "{reason}; it never will: the policies depend on each other ({}), remove one dependsOn",
            cycle.join(" → ")
        ),
        None => reason,
    }))
}

/// What a deleted `policy` waits for before its revert on this node: the policies being
/// deleted that depend on it and still have an enactment here (their reverts come first).
pub async fn revert_wait_reason(
    policy: &NodeNetworkConfigurationPolicy,
    context: &Context,
) -> Result<Option<String>, EnactmentError> {
    let name = policy.name_any();
    let dependents: Vec<String> = Api::<NodeNetworkConfigurationPolicy>::all(context.client.clone())
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|other| {
            other.metadata.deletion_timestamp.is_some()
                && other.spec.reverts_on_deletion()
                && other.spec.dependencies().contains(&name)
        })
        .map(|other| other.name_any())
        .collect();
    if dependents.is_empty() {
        return Ok(None);
    }
    let mine = ListParams::default().labels(&format!("{}={}", labels::NODE, context.config.node_name));
    let here: Vec<String> = Api::<NodeNetworkConfigurationEnactment>::all(context.client.clone())
        .list(&mine)
        .await?
        .into_iter()
        .filter_map(|enactment| enactment.labels().get(labels::POLICY).cloned())
        .collect();
    Ok(dependents
        .iter()
        .find(|dependent| here.contains(dependent))
        .map(|dependent| {
            format!("waiting for policy {dependent}, which depends on it, to be reverted on this node first")
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_dependency_not_settled_is_waited_for() {
        let not_yet = |state: &str| Dependency::NotYet { state: state.into() };
        let cases = [
            (vec![], None),
            (
                vec![("br", Dependency::Settled), ("other", Dependency::NotSelecting)],
                None,
            ),
            (
                vec![("br", Dependency::Settled), ("bond", not_yet("Progressing here"))],
                Some(
                    "waiting for policy bond, which it depends on, to be Available on this node (Progressing here)",
                ),
            ),
            (
                vec![("gone", Dependency::Missing), ("bond", not_yet("Failing here"))],
                Some("waiting for policy gone, which it depends on: no such policy"),
            ),
        ];
        for (dependencies, expected) in cases {
            let dependencies: Vec<(String, Dependency)> = dependencies
                .into_iter()
                .map(|(name, d)| (name.to_string(), d))
                .collect();
            assert_eq!(waiting(&dependencies).as_deref(), expected, "{dependencies:?}");
        }
    }
}
