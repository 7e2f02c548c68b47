//! The conditions of an enactment in each of its situations, with upstream's types, reasons
//! and messages (tools and `kubectl wait` scripts match on them). Every situation writes all
//! five of upstream's condition types; a preview adds a sixth, `Previewed`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nmstate_api::{
    Condition, ConditionStatus,
    enactment::{EnactmentConditionReason as Reason, EnactmentConditionType as Type},
};

/// An enactment status of `generation` in `situation` (none: nothing written yet), as the agent
/// writes it: for table tests.
#[cfg(test)]
pub fn status_in(
    generation: i64,
    situation: Option<EnactmentSituation>,
) -> nmstate_api::NodeNetworkConfigurationEnactmentStatus {
    let mut status = nmstate_api::NodeNetworkConfigurationEnactmentStatus {
        policy_generation: Some(generation),
        ..Default::default()
    };
    if let Some(situation) = situation {
        let epoch =
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        situation.apply_to(&mut status.conditions, generation, &epoch);
    }
    status
}

/// Whether an enactment failed for good (Failing, and not retrying).
/// Unresolved variables are not: they are looked at again until they resolve.
pub fn is_final_failure(status: &nmstate_api::NodeNetworkConfigurationEnactmentStatus) -> bool {
    let find = |type_: Type| nmstate_api::condition::find_condition(&status.conditions, type_.as_str());
    let unresolved = [Reason::VariableUnresolved, Reason::IPPoolExhausted];
    let failing = find(Type::Failing)
        .is_some_and(|c| c.is_true() && !unresolved.iter().any(|reason| c.reason == reason.as_str()));
    failing && !find(Type::Progressing).is_some_and(Condition::is_true)
}

/// Where an enactment stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnactmentSituation {
    /// The desired state is being applied.
    Progressing,
    /// Applied and committed; `note` qualifies the result (e.g. defaults that were skipped).
    Succeeded { note: Option<&'static str> },
    /// Failed for good: the apply's error, or why the desired state could not be generated.
    Failed { message: String },
    /// Failed; another attempt follows (`attempt` of `max`).
    Retrying { node: String, attempt: u32, max: u32 },
    /// Waiting for a slot among the nodes that may apply the policy at the same time.
    Pending,
    /// Not applied because too many nodes already failed the policy.
    Aborted { enactment: String },
    /// Waiting for a policy it depends on (`dependsOn`), or, when deleted, for a policy that
    /// depends on it to be reverted first.
    WaitingForDependency { message: String },
    /// The deleted policy is being undone on this node.
    Reverting,
    /// Undoing the deleted policy failed (rolled back); another attempt follows.
    RevertFailed { message: String },
    /// A variable has no value on this node (`VariableUnresolved`, `IPPoolExhausted`); nothing
    /// was applied, and it is looked at again.
    Unresolved { reason: Reason, message: String },
    /// A preview: what an apply would do (`WouldChange`, `NoChange` or `WouldFail`), nothing
    /// applied.
    Previewed { reason: Reason, message: String },
}

impl EnactmentSituation {
    /// The message upstream writes for a desired state it could not generate (captures).
    pub fn failed_generating(error: impl std::fmt::Display) -> Self {
        EnactmentSituation::Failed {
            message: format!("failure generating desiredState and capturedStates: {error}"),
        }
    }

    /// The five conditions, as `(type, status, reason, message)`.
    fn conditions(&self) -> [(Type, ConditionStatus, Reason, String); 5] {
        use ConditionStatus::{False, True, Unknown};
        let none = String::new;
        match self {
            EnactmentSituation::Progressing => {
                let reason = Reason::ConfigurationProgressing;
                [
                    (Type::Available, Unknown, reason, none()),
                    (Type::Failing, Unknown, reason, none()),
                    (Type::Progressing, True, reason, "Applying desired state".into()),
                    (Type::Pending, False, reason, none()),
                    (Type::Aborted, False, reason, none()),
                ]
            }
            EnactmentSituation::Succeeded { note } => {
                let reason = Reason::SuccessfullyConfigured;
                [
                    (
                        Type::Available,
                        True,
                        reason,
                        match note {
                            Some(note) => format!("successfully reconciled; {note}"),
                            None => "successfully reconciled".into(),
                        },
                    ),
                    (Type::Failing, False, reason, none()),
                    (Type::Progressing, False, reason, none()),
                    (Type::Pending, False, reason, none()),
                    (Type::Aborted, False, reason, none()),
                ]
            }
            EnactmentSituation::Failed { message } => {
                let reason = Reason::FailedToConfigure;
                [
                    (Type::Available, False, reason, none()),
                    (Type::Failing, True, reason, message.clone()),
                    (Type::Progressing, False, reason, none()),
                    (Type::Pending, False, reason, none()),
                    (Type::Aborted, False, Reason::SuccessfullyConfigured, none()),
                ]
            }
            EnactmentSituation::Retrying { node, attempt, max } => {
                let reason = Reason::Retrying;
                let message = format!(
                    "failed to reconcile NodeNetworkConfigurationPolicy on node {node}. Retrying {attempt}/{max}"
                );
                [
                    (Type::Available, False, reason, none()),
                    (Type::Failing, True, reason, message.clone()),
                    (Type::Progressing, True, reason, message),
                    (Type::Pending, False, reason, none()),
                    (Type::Aborted, False, Reason::SuccessfullyConfigured, none()),
                ]
            }
            EnactmentSituation::Pending => {
                let reason = Reason::MaxUnavailableLimitReached;
                let message = "Waiting for progressing nodes to finish".to_string();
                [
                    (Type::Available, False, reason, none()),
                    (Type::Failing, False, reason, none()),
                    (Type::Progressing, False, reason, message.clone()),
                    (Type::Pending, True, reason, message),
                    (Type::Aborted, False, reason, none()),
                ]
            }
            EnactmentSituation::WaitingForDependency { message } => {
                let reason = Reason::WaitingForDependency;
                [
                    (Type::Available, False, reason, none()),
                    (Type::Failing, False, reason, none()),
                    (Type::Progressing, False, reason, none()),
                    (Type::Pending, True, reason, message.clone()),
                    (Type::Aborted, False, reason, none()),
                ]
            }
            EnactmentSituation::Reverting => {
                let reason = Reason::Reverting;
                [
                    (Type::Available, False, reason, none()),
                    (Type::Failing, False, reason, none()),
                    (
                        Type::Progressing,
                        True,
                        reason,
                        "Reverting the deleted policy".into(),
                    ),
                    (Type::Pending, False, reason, none()),
                    (Type::Aborted, False, reason, none()),
                ]
            }
            EnactmentSituation::RevertFailed { message } => {
                let reason = Reason::FailedToRevert;
                [
                    (Type::Available, False, reason, none()),
                    (Type::Failing, True, reason, message.clone()),
                    (Type::Progressing, True, reason, message.clone()),
                    (Type::Pending, False, reason, none()),
                    (Type::Aborted, False, reason, none()),
                ]
            }
            EnactmentSituation::Unresolved { reason, message } => [
                (Type::Available, False, *reason, none()),
                (Type::Failing, True, *reason, message.clone()),
                (Type::Progressing, False, *reason, none()),
                (Type::Pending, False, *reason, none()),
                (Type::Aborted, False, *reason, none()),
            ],
            EnactmentSituation::Previewed { reason, .. } => [
                (Type::Available, False, *reason, none()),
                (Type::Failing, False, *reason, none()),
                (Type::Progressing, False, *reason, none()),
                (Type::Pending, False, *reason, none()),
                (Type::Aborted, False, *reason, none()),
            ],
            EnactmentSituation::Aborted { enactment } => {
                let reason = Reason::ConfigurationAborted;
                [
                    (Type::Available, False, reason, none()),
                    (Type::Failing, False, reason, none()),
                    (Type::Progressing, False, reason, none()),
                    (Type::Pending, False, reason, none()),
                    (
                        Type::Aborted,
                        True,
                        reason,
                        format!("reconciliation of enactment \"{enactment}\" has aborted"),
                    ),
                ]
            }
        }
    }

    /// Writes this situation into `conditions` (heartbeat always, transition time only where a
    /// status changed), for policy generation `generation`.
    pub fn apply_to(&self, conditions: &mut Vec<Condition>, generation: i64, now: &Time) {
        let previewed = match self {
            EnactmentSituation::Previewed { reason, message } => {
                Some((Type::Previewed, ConditionStatus::True, *reason, message.clone()))
            }
            _ => None,
        };
        for (type_, status, reason, message) in self.conditions().into_iter().chain(previewed) {
            let mut condition = Condition::new(type_.as_str(), status, reason.as_str(), message);
            condition.observed_generation = Some(generation);
            nmstate_api::condition::set_condition(conditions, condition, now);
        }
        if !matches!(self, EnactmentSituation::Previewed { .. }) {
            // A generation that is no preview (the enactment's conditions start over with each
            // generation, so this only guards against a status written by hand).
            conditions.retain(|condition| condition.type_ != Type::Previewed.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nmstate_api::condition::find_condition;

    fn now(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    /// `(type, status, reason)` of each condition, and the message of the one that is True.
    fn summary(situation: &EnactmentSituation) -> (Vec<String>, String) {
        let mut conditions = Vec::new();
        situation.apply_to(&mut conditions, 1, &now(0));
        let rows = conditions
            .iter()
            .map(|c| format!("{} {:?} {}", c.type_, c.status, c.reason))
            .collect();
        let message = conditions
            .iter()
            .find(|c| c.is_true())
            .map(|c| c.message.clone())
            .unwrap_or_default();
        (rows, message)
    }

    #[test]
    fn situations_write_upstreams_conditions_and_messages() {
        let (rows, message) = summary(&EnactmentSituation::Progressing);
        assert_eq!(
            rows,
            [
                "Available Unknown ConfigurationProgressing",
                "Failing Unknown ConfigurationProgressing",
                "Progressing True ConfigurationProgressing",
                "Pending False ConfigurationProgressing",
                "Aborted False ConfigurationProgressing",
            ]
        );
        assert_eq!(message, "Applying desired state");

        let (rows, message) = summary(&EnactmentSituation::Succeeded { note: None });
        assert_eq!(rows[0], "Available True SuccessfullyConfigured");
        assert!(
            rows[1..]
                .iter()
                .all(|row| row.ends_with("False SuccessfullyConfigured"))
        );
        assert_eq!(message, "successfully reconciled");
        let (_, message) = summary(&EnactmentSituation::Succeeded {
            note: Some("defaults skipped"),
        });
        assert_eq!(message, "successfully reconciled; defaults skipped");

        let (rows, message) = summary(&EnactmentSituation::failed_generating(
            "PolicyError: Failed to find capture nic",
        ));
        assert_eq!(rows[1], "Failing True FailedToConfigure");
        assert_eq!(rows[4], "Aborted False SuccessfullyConfigured");
        assert_eq!(
            message,
            "failure generating desiredState and capturedStates: PolicyError: Failed to find capture nic"
        );

        let (rows, message) = summary(&EnactmentSituation::Retrying {
            node: "node01".into(),
            attempt: 2,
            max: 5,
        });
        assert_eq!(
            &rows[..3],
            [
                "Available False Retrying",
                "Failing True Retrying",
                "Progressing True Retrying"
            ]
        );
        assert_eq!(
            message,
            "failed to reconcile NodeNetworkConfigurationPolicy on node node01. Retrying 2/5"
        );

        let (rows, message) = summary(&EnactmentSituation::Pending);
        assert_eq!(rows[3], "Pending True MaxUnavailableLimitReached");
        assert_eq!(message, "Waiting for progressing nodes to finish");

        let (rows, message) = summary(&EnactmentSituation::Aborted {
            enactment: "node01.br1".into(),
        });
        assert_eq!(rows[4], "Aborted True ConfigurationAborted");
        assert_eq!(message, "reconciliation of enactment \"node01.br1\" has aborted");

        let (rows, message) = summary(&EnactmentSituation::Previewed {
            reason: Reason::WouldChange,
            message: "would change br1".into(),
        });
        assert_eq!(
            rows,
            [
                "Available False WouldChange",
                "Failing False WouldChange",
                "Progressing False WouldChange",
                "Pending False WouldChange",
                "Aborted False WouldChange",
                "Previewed True WouldChange",
            ]
        );
        assert_eq!(message, "would change br1");
    }

    #[test]
    fn a_wait_for_a_dependency_is_pending_with_its_reason() {
        let (rows, message) = summary(&EnactmentSituation::WaitingForDependency {
            message: "waiting for policy br".into(),
        });
        assert_eq!(rows[3], "Pending True WaitingForDependency");
        assert_eq!(rows[2], "Progressing False WaitingForDependency");
        assert_eq!(message, "waiting for policy br");
    }

    #[test]
    fn a_revert_progresses_and_a_failed_one_keeps_progressing() {
        let (rows, message) = summary(&EnactmentSituation::Reverting);
        assert_eq!(rows[2], "Progressing True Reverting");
        assert_eq!(message, "Reverting the deleted policy");
        let (rows, message) = summary(&EnactmentSituation::RevertFailed {
            message: "failed to revert".into(),
        });
        assert_eq!(
            &rows[..3],
            [
                "Available False FailedToRevert",
                "Failing True FailedToRevert",
                "Progressing True FailedToRevert"
            ]
        );
        assert_eq!(message, "failed to revert");
    }

    #[test]
    fn leaving_a_preview_drops_its_condition() {
        let mut conditions = Vec::new();
        let previewed = EnactmentSituation::Previewed {
            reason: Reason::NoChange,
            message: String::new(),
        };
        previewed.apply_to(&mut conditions, 1, &now(10));
        assert_eq!(conditions.len(), 6);
        EnactmentSituation::Progressing.apply_to(&mut conditions, 2, &now(20));
        assert_eq!(conditions.len(), 5);
        assert!(find_condition(&conditions, "Previewed").is_none());
    }

    #[test]
    fn transition_times_move_only_for_conditions_whose_status_changed() {
        let mut conditions = Vec::new();
        EnactmentSituation::Progressing.apply_to(&mut conditions, 3, &now(10));
        EnactmentSituation::Succeeded { note: None }.apply_to(&mut conditions, 3, &now(20));
        let available = find_condition(&conditions, "Available").unwrap();
        assert_eq!(available.last_transition_time, Some(now(20)), "Unknown -> True");
        let pending = find_condition(&conditions, "Pending").unwrap();
        assert_eq!(pending.last_transition_time, Some(now(10)), "False -> False");
        assert_eq!(pending.last_heartbeat_time, Some(now(20)));
        assert!(
            conditions
                .iter()
                .all(|condition| condition.observed_generation == Some(3))
        );
        assert_eq!(conditions.len(), 5);
    }
}
