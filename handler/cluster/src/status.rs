//! A policy's conditions, from its enactments and the nodes it selects: upstream's types,
//! reasons, messages and precedence (`kubectl wait nncp/<name> --for condition=Available` and
//! dashboards match on them). Pure: the cluster controller feeds it what it watches.

use nmstate_api::{
    Condition, ConditionStatus, NodeNetworkConfigurationEnactment,
    condition::find_condition,
    enactment::{EnactmentConditionReason as EnactmentReason, EnactmentConditionType as EnactmentType},
    labels,
    policy::{PolicyConditionReason as Reason, PolicyConditionType as Type},
};
use std::collections::BTreeSet;

/// A node as the policy status sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// The policy's selector matches the node's labels.
    pub selected: bool,
    /// Its Ready condition is True.
    pub ready: bool,
    /// Its handler's heartbeat is live.
    pub runs_handler: bool,
}

/// Where a policy stands, with the message of its True condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOutcome {
    Ignored,
    Progressing(String),
    Available(String),
    Degraded(String),
    /// A preview (`spec.preview`): every node worked out what it would do.
    Previewed(String),
    /// Its `dependsOn` leads back to it: no node will ever apply it.
    DependencyCycle(String),
}

impl PolicyOutcome {
    /// The outcome of a policy on the dependency cycle `cycle` (`[a, b, a]`).
    pub fn cycle(cycle: &[String]) -> Self {
        PolicyOutcome::DependencyCycle(format!(
            "the policies depend on each other ({}): none of them is applied; remove one dependsOn",
            cycle.join(" → ")
        ))
    }
}

/// Upstream's precedence: no matching node → Ignored; any failed or aborted node → Degraded;
/// fewer finished than ready nodes, or any pending → Progressing; else Available. Only
/// enactments of this `generation`, on selected nodes that run a handler, count; NotReady
/// nodes are left out of the progress and mentioned.
pub fn evaluate(
    generation: i64,
    nodes: &[NodeView],
    enactments: &[&NodeNetworkConfigurationEnactment],
) -> PolicyOutcome {
    let matching: BTreeSet<&str> = nodes
        .iter()
        .filter(|node| node.selected && node.runs_handler)
        .map(|node| node.name.as_str())
        .collect();
    if matching.is_empty() {
        return PolicyOutcome::Ignored;
    }
    let ready: BTreeSet<&str> = nodes
        .iter()
        .filter(|node| node.ready && matching.contains(node.name.as_str()))
        .map(|node| node.name.as_str())
        .collect();
    let not_ready = matching.len() - ready.len();
    let (mut available, mut failed, mut aborted, mut pending) = (0, 0, 0, 0);
    let (mut previewed, mut would_change, mut would_fail) = (0, 0, 0);
    for enactment in enactments {
        let Some(status) = enactment.status.as_ref() else {
            continue;
        };
        let node = enactment
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::NODE));
        if status.policy_generation != Some(generation)
            || !node.is_some_and(|n| matching.contains(n.as_str()))
        {
            continue;
        }
        let on_ready_node = node.is_some_and(|n| ready.contains(n.as_str()));
        let preview =
            find_condition(&status.conditions, EnactmentType::Previewed.as_str()).filter(|c| c.is_true());
        if let Some(preview) = preview {
            if on_ready_node {
                previewed += 1;
                match EnactmentReason::from_wire(&preview.reason) {
                    Some(EnactmentReason::WouldChange) => would_change += 1,
                    Some(EnactmentReason::WouldFail) => would_fail += 1,
                    _ => {}
                }
            }
        } else if status.is(EnactmentType::Failing) && !status.is(EnactmentType::Progressing) {
            failed += 1;
        } else if status.is(EnactmentType::Aborted) {
            aborted += 1;
        } else if status.is(EnactmentType::Available) && on_ready_node {
            available += 1;
        } else if status.is(EnactmentType::Pending) {
            pending += 1;
        }
    }
    let not_ready_note = if not_ready > 0 {
        format!(", {not_ready} nodes ignored due to NotReady state")
    } else {
        String::new()
    };
    if failed > 0 || aborted > 0 {
        let mut message = format!("{failed}/{} nodes failed to configure", matching.len());
        if aborted > 0 {
            message += &format!(", {aborted} nodes aborted configuration");
        }
        return PolicyOutcome::Degraded(message);
    }
    let finished = available + previewed;
    if finished < ready.len() || pending > 0 {
        let mut message = format!("Policy is progressing {finished}/{} nodes finished", ready.len());
        if pending > 0 {
            message += &format!(", {pending} pending");
        }
        return PolicyOutcome::Progressing(message + &not_ready_note);
    }
    if previewed > 0 {
        let mut message = format!("{would_change}/{} nodes would change", ready.len());
        if would_fail > 0 {
            message += &format!(", {would_fail} nodes would refuse the policy");
        }
        return PolicyOutcome::Previewed(message + &not_ready_note);
    }
    PolicyOutcome::Available(format!(
        "{available}/{} nodes successfully configured{not_ready_note}",
        ready.len()
    ))
}

impl PolicyOutcome {
    /// The four conditions, as upstream sets them in each situation; a preview adds `Previewed`.
    pub fn conditions(&self, generation: i64) -> Vec<Condition> {
        use ConditionStatus::{False, True, Unknown};
        let rows: [(Type, ConditionStatus, Reason, &str); 4] = match self {
            PolicyOutcome::Ignored => {
                let reason = Reason::NoMatchingNode;
                [
                    (Type::Degraded, False, reason, ""),
                    (Type::Available, False, reason, ""),
                    (Type::Progressing, False, reason, ""),
                    (Type::Ignored, True, reason, "Policy does not match any node"),
                ]
            }
            PolicyOutcome::Progressing(message) => {
                let reason = Reason::ConfigurationProgressing;
                [
                    (Type::Degraded, Unknown, reason, ""),
                    (Type::Available, Unknown, reason, ""),
                    (Type::Progressing, True, reason, message),
                    (Type::Ignored, False, reason, ""),
                ]
            }
            PolicyOutcome::Available(message) => {
                let reason = Reason::SuccessfullyConfigured;
                [
                    (Type::Degraded, False, reason, ""),
                    (Type::Available, True, reason, message),
                    (Type::Progressing, False, reason, ""),
                    (Type::Ignored, False, reason, ""),
                ]
            }
            PolicyOutcome::Degraded(message) => {
                let reason = Reason::FailedToConfigure;
                [
                    (Type::Degraded, True, reason, message),
                    (Type::Available, False, reason, ""),
                    (Type::Progressing, False, Reason::ConfigurationProgressing, ""),
                    (Type::Ignored, False, reason, ""),
                ]
            }
            PolicyOutcome::DependencyCycle(message) => {
                let reason = Reason::DependencyCycle;
                [
                    (Type::Degraded, True, reason, message),
                    (Type::Available, False, reason, ""),
                    (Type::Progressing, False, reason, ""),
                    (Type::Ignored, False, reason, ""),
                ]
            }
            PolicyOutcome::Previewed(_) => {
                let reason = Reason::Previewed;
                [
                    (Type::Degraded, False, reason, ""),
                    (Type::Available, False, reason, ""),
                    (Type::Progressing, False, reason, ""),
                    (Type::Ignored, False, reason, ""),
                ]
            }
        };
        let previewed = match self {
            PolicyOutcome::Previewed(message) => {
                Some((Type::Previewed, True, Reason::Previewed, message.as_str()))
            }
            _ => None,
        };
        rows.into_iter()
            .chain(previewed)
            .map(|(type_, status, reason, message)| Condition {
                observed_generation: Some(generation),
                ..Condition::new(type_.as_str(), status, reason.as_str(), message)
            })
            .collect()
    }

    /// The name of its True condition (`kubernetes_nmstate_policies_status{status}`).
    pub fn status(&self) -> &'static str {
        match self {
            PolicyOutcome::Ignored => Type::Ignored.as_str(),
            PolicyOutcome::Progressing(_) => Type::Progressing.as_str(),
            PolicyOutcome::Available(_) => Type::Available.as_str(),
            PolicyOutcome::Degraded(_) | PolicyOutcome::DependencyCycle(_) => Type::Degraded.as_str(),
            PolicyOutcome::Previewed(_) => Type::Previewed.as_str(),
        }
    }

    /// The conditions to write over `current`: [`Self::conditions`], and a `Previewed` condition
    /// turned False when the policy is no longer a preview.
    pub fn conditions_over(&self, current: &[Condition], generation: i64) -> Vec<Condition> {
        let mut conditions = self.conditions(generation);
        let was_previewed = find_condition(current, Type::Previewed.as_str()).is_some();
        if was_previewed && find_condition(&conditions, Type::Previewed.as_str()).is_none() {
            let reason = conditions.first().map(|c| c.reason.clone()).unwrap_or_default();
            conditions.push(Condition {
                observed_generation: Some(generation),
                ..Condition::new(Type::Previewed.as_str(), ConditionStatus::False, &reason, "")
            });
        }
        conditions
    }
}

#[cfg(test)]
mod tests;
