//! The revert finalizer ([`labels::REVERT_FINALIZER`]) of policies with `deletionPolicy:
//! Revert`: added as soon as such a policy exists (its handlers apply nothing before), removed
//! once every node undid the deleted policy and removed its enactment, or when the policy no
//! longer asks for a revert. A node that cannot revert (NotReady, or no live handler) holds the
//! deletion for at most the revert timeout; then it is skipped, with a Warning event naming it.
//! [`decide`] is pure; [`patch`] writes its decision.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use nmstate_api::{NodeNetworkConfigurationPolicy, labels::REVERT_FINALIZER};
use serde_json::json;
use std::time::Duration;

/// Default of `REVERT_TIMEOUT_SECONDS`: how long a node that cannot revert holds a deletion.
pub const DEFAULT_REVERT_TIMEOUT: Duration = Duration::from_secs(600);

/// An enactment of a deleted policy still waiting for its node's revert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remaining {
    pub node: String,
    /// The node is Ready and its handler live, so it can revert.
    pub able: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Nothing,
    Add,
    /// Remove the finalizer; `skipped` nodes did not revert.
    Remove {
        skipped: Vec<String>,
    },
    /// Nodes still revert; look again after `recheck` (when the timeout would end the wait).
    Wait {
        recheck: Option<Duration>,
    },
}

pub fn decide(
    policy: &NodeNetworkConfigurationPolicy,
    remaining: &[Remaining],
    now: Timestamp,
    timeout: Duration,
) -> Step {
    let held = policy.holds_revert_finalizer();
    let reverts = policy.spec.reverts_on_deletion();
    let deleted_at = policy.metadata.deletion_timestamp.as_ref().map(|Time(at)| *at);
    match (deleted_at, held, reverts) {
        (None, false, true) => Step::Add,
        (_, true, false) => Step::Remove { skipped: Vec::new() },
        (Some(_), true, true) if remaining.is_empty() => Step::Remove { skipped: Vec::new() },
        (Some(deleted_at), true, true) if remaining.iter().all(|r| !r.able) => {
            let waited = Duration::try_from(now.duration_since(deleted_at)).unwrap_or_default();
            match timeout.checked_sub(waited) {
                Some(left) if !left.is_zero() => Step::Wait { recheck: Some(left) },
                _ => Step::Remove {
                    skipped: remaining.iter().map(|r| r.node.clone()).collect(),
                },
            }
        }
        (Some(_), true, true) => Step::Wait { recheck: None },
        _ => Step::Nothing,
    }
}

/// Adds or removes the finalizer, with a test of the list it changes, so a concurrent writer
/// of finalizers is never overwritten (the patch then fails, and is retried).
pub async fn patch(
    client: &Client,
    policy: &NodeNetworkConfigurationPolicy,
    add: bool,
) -> Result<(), kube::Error> {
    let current = policy.finalizers().to_vec();
    let operations = if add {
        if policy.metadata.finalizers.is_none() {
            json!([{"op": "add", "path": "/metadata/finalizers", "value": [REVERT_FINALIZER]}])
        } else {
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": current},
                {"op": "add", "path": "/metadata/finalizers/-", "value": REVERT_FINALIZER},
            ])
        }
    } else {
        let kept: Vec<&String> = current.iter().filter(|f| *f != REVERT_FINALIZER).collect();
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "replace", "path": "/metadata/finalizers", "value": kept},
        ])
    };
    let operations: json_patch::Patch =
        serde_json::from_value(operations).map_err(kube::Error::SerdeError)?;
    Api::<NodeNetworkConfigurationPolicy>::all(client.clone())
        .patch(
            &policy.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(operations),
        )
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nmstate_api::policy::DeletionPolicy;

    fn policy(
        deletion: Option<DeletionPolicy>,
        held: bool,
        deleted_at: Option<i64>,
    ) -> NodeNetworkConfigurationPolicy {
        let mut policy = NodeNetworkConfigurationPolicy::new("p", Default::default());
        policy.spec.deletion_policy = deletion;
        if held {
            policy.metadata.finalizers = Some(vec!["other".into(), REVERT_FINALIZER.into()]);
        }
        policy.metadata.deletion_timestamp =
            deleted_at.map(|second| Time(Timestamp::from_second(second).unwrap()));
        policy
    }

    fn remaining(node: &str, able: bool) -> Remaining {
        Remaining {
            node: node.into(),
            able,
        }
    }

    #[test]
    fn the_finalizer_follows_the_deletion_policy_and_the_nodes_reverts() {
        let revert = Some(DeletionPolicy::Revert);
        let orphan = Some(DeletionPolicy::Orphan);
        let timeout = Duration::from_secs(600);
        let now = Timestamp::from_second(1000).unwrap();
        let removed = |skipped: &[&str]| Step::Remove {
            skipped: skipped.iter().map(|n| n.to_string()).collect(),
        };
        let one_able = [remaining("n1", true), remaining("n2", false)];
        let none_able = [remaining("n2", false)];
        let cases = [
            (policy(revert, false, None), &[][..], Step::Add),
            (policy(revert, true, None), &[][..], Step::Nothing),
            (policy(None, false, None), &[][..], Step::Nothing),
            (policy(orphan, true, None), &[][..], removed(&[])),
            (policy(orphan, true, Some(990)), &one_able[..], removed(&[])),
            (policy(revert, true, Some(990)), &[][..], removed(&[])),
            (
                policy(revert, true, Some(990)),
                &one_able[..],
                Step::Wait { recheck: None },
            ),
            (
                policy(revert, true, Some(990)),
                &none_able[..],
                Step::Wait {
                    recheck: Some(Duration::from_secs(590)),
                },
            ),
            (policy(revert, true, Some(400)), &none_able[..], removed(&["n2"])),
            (policy(revert, false, Some(400)), &none_able[..], Step::Nothing),
        ];
        for (index, (policy, remaining, expected)) in cases.into_iter().enumerate() {
            assert_eq!(decide(&policy, remaining, now, timeout), expected, "case {index}");
        }
    }
}
