//! NMState's conditions from its workloads' status, with upstream's reasons and messages:
//! pure functions of the DaemonSets and Deployments read back.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::ResourceExt;
use nmstate_api::{
    condition::{Condition, ConditionStatus},
    nmstate::{NMStateConditionReason as Reason, NMStateConditionType as Type},
};

/// Why a DaemonSet is not done yet, in upstream's words; `None` when it is.
pub fn daemonset_progress(daemonset: &DaemonSet) -> Option<String> {
    let name = daemonset.name_any();
    let status = daemonset.status.clone().unwrap_or_default();
    let generation = daemonset.metadata.generation.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0);
    let unavailable = status.number_unavailable.unwrap_or(0);
    let updated = status.updated_number_scheduled.unwrap_or(0);
    if unavailable > 0 {
        Some(format!(
            "DaemonSet \"{name}\" is not available (awaiting {unavailable} nodes)"
        ))
    } else if status.number_available.unwrap_or(0) == 0 {
        Some(format!("DaemonSet \"{name}\" is not yet scheduled on any nodes"))
    } else if updated < status.desired_number_scheduled {
        Some(format!(
            "DaemonSet \"{name}\" update is rolling out ({updated} out of {} updated)",
            status.desired_number_scheduled
        ))
    } else if generation > observed {
        Some(format!(
            "DaemonSet \"{name}\" update is being processed (generation {generation}, observed generation {observed})"
        ))
    } else {
        None
    }
}

/// Why a Deployment is not done yet, in upstream's words; `None` when it is.
pub fn deployment_progress(deployment: &Deployment) -> Option<String> {
    let name = deployment.name_any();
    let status = deployment.status.clone().unwrap_or_default();
    let generation = deployment.metadata.generation.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0);
    let unavailable = status.unavailable_replicas.unwrap_or(0);
    if unavailable > 0 {
        Some(format!(
            "Deployment \"{name}\" is not available (awaiting {unavailable} nodes)"
        ))
    } else if status.available_replicas.unwrap_or(0) == 0 {
        Some(format!("Deployment \"{name}\" is not yet scheduled on any nodes"))
    } else if generation > observed {
        Some(format!(
            "Deployment \"{name}\" update is being processed (generation {generation}, observed generation {observed})"
        ))
    } else {
        None
    }
}

/// The three conditions: from what is still in progress, or from the error that stopped the
/// reconcile.
pub fn conditions(outcome: Result<&[String], &str>) -> Vec<Condition> {
    use ConditionStatus::{False, True};
    let rows: [(Type, ConditionStatus, Reason, String); 3] = match outcome {
        Err(error) => [
            (Type::Progressing, False, Reason::InternalError, error.to_string()),
            (Type::Available, False, Reason::InternalError, error.to_string()),
            (Type::Degraded, True, Reason::InternalError, error.to_string()),
        ],
        Ok(waiting) if !waiting.is_empty() => {
            let deploying = "Deploying is in progress".to_string();
            [
                (Type::Progressing, True, Reason::Deploying, waiting.join("\n")),
                (Type::Available, False, Reason::Deploying, deploying.clone()),
                (Type::Degraded, False, Reason::Deploying, deploying),
            ]
        }
        Ok(_) => {
            let ready = "All components are available and ready".to_string();
            [
                (
                    Type::Progressing,
                    False,
                    Reason::SuccessfullyDeployed,
                    ready.clone(),
                ),
                (Type::Available, True, Reason::SuccessfullyDeployed, ready.clone()),
                (Type::Degraded, False, Reason::SuccessfullyDeployed, ready),
            ]
        }
    };
    rows.into_iter()
        .map(|(type_, status, reason, message)| {
            Condition::new(type_.as_str(), status, reason.as_str(), &message)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn daemonset(status: serde_json::Value, generation: i64) -> DaemonSet {
        serde_json::from_value(
            json!({"metadata": {"name": "nmstate-handler", "generation": generation}, "status": status}),
        )
        .unwrap()
    }

    fn deployment(status: serde_json::Value, generation: i64) -> Deployment {
        serde_json::from_value(
            json!({"metadata": {"name": "nmstate-webhook", "generation": generation}, "status": status}),
        )
        .unwrap()
    }

    #[test]
    fn daemonset_messages_follow_upstream() {
        let ready = json!({"desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberMisscheduled": 0,
                           "numberReady": 2, "numberAvailable": 2, "updatedNumberScheduled": 2, "observedGeneration": 1});
        assert_eq!(daemonset_progress(&daemonset(ready.clone(), 1)), None);
        let mut awaiting = ready.clone();
        awaiting["numberUnavailable"] = json!(2);
        awaiting["numberAvailable"] = json!(0);
        assert_eq!(
            daemonset_progress(&daemonset(awaiting, 1)).unwrap(),
            "DaemonSet \"nmstate-handler\" is not available (awaiting 2 nodes)"
        );
        let mut unscheduled = ready.clone();
        unscheduled["numberAvailable"] = json!(0);
        assert_eq!(
            daemonset_progress(&daemonset(unscheduled, 1)).unwrap(),
            "DaemonSet \"nmstate-handler\" is not yet scheduled on any nodes"
        );
        let mut rolling = ready.clone();
        rolling["updatedNumberScheduled"] = json!(1);
        assert_eq!(
            daemonset_progress(&daemonset(rolling, 1)).unwrap(),
            "DaemonSet \"nmstate-handler\" update is rolling out (1 out of 2 updated)"
        );
        assert_eq!(
            daemonset_progress(&daemonset(ready, 2)).unwrap(),
            "DaemonSet \"nmstate-handler\" update is being processed (generation 2, observed generation 1)"
        );
    }

    #[test]
    fn deployment_messages_follow_upstream() {
        let ready = json!({"replicas": 1, "availableReplicas": 1, "observedGeneration": 3});
        assert_eq!(deployment_progress(&deployment(ready.clone(), 3)), None);
        assert_eq!(
            deployment_progress(&deployment(json!({"unavailableReplicas": 1}), 1)).unwrap(),
            "Deployment \"nmstate-webhook\" is not available (awaiting 1 nodes)"
        );
        assert_eq!(
            deployment_progress(&deployment(json!({}), 1)).unwrap(),
            "Deployment \"nmstate-webhook\" is not yet scheduled on any nodes"
        );
        assert_eq!(
            deployment_progress(&deployment(ready, 4)).unwrap(),
            "Deployment \"nmstate-webhook\" update is being processed (generation 4, observed generation 3)"
        );
    }

    #[test]
    fn conditions_follow_upstream() {
        let summary = |conditions: Vec<Condition>| -> Vec<(String, ConditionStatus, String, String)> {
            conditions
                .into_iter()
                .map(|c| (c.type_, c.status, c.reason, c.message))
                .collect()
        };
        let waiting = ["a".to_string(), "b".to_string()];
        let deploying = summary(conditions(Ok(&waiting)));
        assert_eq!(
            deploying[0],
            (
                "Progressing".into(),
                ConditionStatus::True,
                "Deploying".into(),
                "a\nb".into()
            )
        );
        assert_eq!(deploying[1].1, ConditionStatus::False);
        let ready = summary(conditions(Ok(&[])));
        assert_eq!(
            ready[1],
            (
                "Available".into(),
                ConditionStatus::True,
                "SuccessfullyDeployed".into(),
                "All components are available and ready".into()
            )
        );
        let failed = summary(conditions(Err("boom")));
        assert_eq!(
            failed[2],
            (
                "Degraded".into(),
                ConditionStatus::True,
                "InternalError".into(),
                "boom".into()
            )
        );
    }
}
