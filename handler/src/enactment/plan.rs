//! What the node agent does next about one policy on this node, decided without a client, a
//! node or NetworkManager: pure functions of what the reconcile read. The reconcile
//! (`reconcile.rs`) reads, calls them in this order, and does what they say:
//!
//! 1. [`entry`]: whether the policy selects the node, and whether its generation is finished here;
//! 2. [`before_apply`]: once the desired state is resolved and compared with the node's;
//! 3. [`on_admission`]: what the policy's rollout answered when asked for a slot;
//! 4. [`after_apply`]: what the checkpointed apply did.

use crate::{enactment::events, network::drift::is_empty_section, rollout::Admission};
use nmstate_api::{
    NodeNetworkConfigurationEnactmentStatus,
    enactment::{EnactmentConditionReason, EnactmentConditionType as Type},
};
use serde_json::Value;
use std::time::Duration;

/// Step 1: where the reconcile of a policy starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The policy does not select this node (anymore): give back its slot, remove the enactment.
    Remove,
    /// This generation is finished here: Failing for good, Aborted, Previewed, or Available and
    /// known to this process as applied. Nothing is written, so nothing churns.
    Done,
    /// Work on this generation. `fresh`: the enactment has not seen it yet, so its conditions
    /// start over (upstream #1442). `enacted`: it was Available (a restarted agent then checks
    /// for drift).
    Enact { fresh: bool, enacted: bool },
}

pub fn entry(
    selected: bool,
    generation: i64,
    status: &NodeNetworkConfigurationEnactmentStatus,
    known_applied: bool,
) -> Entry {
    if !selected {
        return Entry::Remove;
    }
    if status.policy_generation != Some(generation) {
        return Entry::Enact {
            fresh: true,
            enacted: false,
        };
    }
    let enacted = status.is(Type::Available);
    if super::conditions::is_final_failure(status)
        || status.is(Type::Aborted)
        || status.is(Type::Previewed)
        || (enacted && known_applied)
    {
        Entry::Done
    } else {
        Entry::Enact {
            fresh: false,
            enacted,
        }
    }
}

/// How the node stands against the resolved desired state (nmstate's diff).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    InDesiredState,
    /// What still differs, as nmstate reports it.
    Pending(Value),
    /// nmstate could not compare; its apply reports the same error better.
    Unknown,
}

/// What the reconcile found out once the desired state was resolved.
#[derive(Clone, Debug)]
pub struct Findings {
    /// Why this node cannot apply the state at all (its kernel or NetworkManager).
    pub refusal: Option<String>,
    /// The resolved desired state says nothing.
    pub empty: bool,
    pub drift: Drift,
    /// The enactment was Available for this generation.
    pub enacted: bool,
    /// What qualifies a success (defaults the node could not take).
    pub note: Option<&'static str>,
    /// The policy is a preview: work out what it would do, apply nothing.
    pub preview: bool,
}

/// Step 2: apply, or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeforeApply {
    /// Failing for good without applying, and without taking a slot.
    Refuse { reason: String },
    /// Upstream's "Ignoring empty desired state": Available without applying.
    IgnoreEmpty,
    /// Available, still in the desired state: nothing to write.
    StillApplied,
    /// In the desired state without an apply (for example applied before a restart, but not
    /// reported): Available, and a slot held from before is given back.
    AlreadyApplied { note: Option<&'static str> },
    /// Take a slot in the rollout, then apply. `drifted`: it had been applied, and the node
    /// moved away from it since.
    Apply { drifted: bool },
    /// A preview: report what an apply would do, take no slot, apply nothing.
    Preview(Preview),
}

/// What an apply would do on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Preview {
    /// Change what the diff says (`None`: nmstate could not compare, so it may change anything
    /// the desired state names).
    WouldChange {
        diff: Option<Value>,
    },
    NoChange,
    /// The node would refuse it, for `reason`.
    WouldFail {
        reason: String,
    },
}

pub fn before_apply(findings: &Findings) -> BeforeApply {
    if findings.preview {
        return BeforeApply::Preview(preview(findings));
    }
    if let Some(reason) = &findings.refusal {
        return BeforeApply::Refuse {
            reason: reason.clone(),
        };
    }
    if findings.empty {
        return BeforeApply::IgnoreEmpty;
    }
    match (&findings.drift, findings.enacted) {
        (Drift::InDesiredState, true) => BeforeApply::StillApplied,
        (Drift::InDesiredState, false) => BeforeApply::AlreadyApplied { note: findings.note },
        (Drift::Pending(_), enacted) => BeforeApply::Apply { drifted: enacted },
        (Drift::Unknown, _) => BeforeApply::Apply { drifted: false },
    }
}

fn preview(findings: &Findings) -> Preview {
    if let Some(reason) = &findings.refusal {
        return Preview::WouldFail {
            reason: reason.clone(),
        };
    }
    if findings.empty {
        return Preview::NoChange;
    }
    match &findings.drift {
        Drift::InDesiredState => Preview::NoChange,
        Drift::Pending(diff) => Preview::WouldChange {
            diff: Some(diff.clone()),
        },
        Drift::Unknown => Preview::WouldChange { diff: None },
    }
}

impl Preview {
    /// The reason and message of the enactment's `Previewed` condition.
    pub fn condition(&self) -> (EnactmentConditionReason, String) {
        match self {
            Preview::WouldChange { diff: Some(diff) } => (
                EnactmentConditionReason::WouldChange,
                format!("would change {}", changed_parts(diff).join(", ")),
            ),
            Preview::WouldChange { diff: None } => (
                EnactmentConditionReason::WouldChange,
                "would apply the desired state (nmstate cannot compare it with the node's)".into(),
            ),
            Preview::NoChange => (
                EnactmentConditionReason::NoChange,
                "would change nothing: the node already is in the desired state".into(),
            ),
            Preview::WouldFail { reason } => (
                EnactmentConditionReason::WouldFail,
                format!("would not be applied: {reason}"),
            ),
        }
    }
}

/// What a diff changes: each interface by name, and every other section by its key.
fn changed_parts(diff: &Value) -> Vec<String> {
    let Some(sections) = diff.as_object() else {
        return Vec::new();
    };
    let mut parts = Vec::new();
    for (key, section) in sections {
        match section.as_array() {
            Some(interfaces) if key == "interfaces" => parts.extend(
                interfaces
                    .iter()
                    .filter_map(|interface| interface.get("name")?.as_str())
                    .map(|name| format!("interface {name}")),
            ),
            _ if is_empty_section(section) => {}
            _ => parts.push(key.clone()),
        }
    }
    parts
}

/// Step 3: what to do with the rollout's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnAdmission {
    Apply,
    /// Wait for a slot; `report` when the enactment does not say Pending yet.
    Wait {
        retry_after: Duration,
        report: bool,
    },
    /// Too many nodes failed this generation: Aborted, with a Warning event.
    Abort,
}

pub fn on_admission(admission: &Admission, already_pending: bool) -> OnAdmission {
    match admission {
        Admission::Granted => OnAdmission::Apply,
        Admission::Wait { retry_after } => OnAdmission::Wait {
            retry_after: *retry_after,
            report: !already_pending,
        },
        Admission::Abort => OnAdmission::Abort,
    }
}

/// What the checkpointed apply did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied, probed and committed.
    Applied,
    /// Rolled back because the slot was lost during the apply.
    LostSlot,
    /// Rolled back, or refused by nmstate; `permanent` when retrying cannot help.
    Failed { permanent: bool },
}

/// How many times, and how patiently, a failed apply is tried again.
#[derive(Clone, Copy, Debug)]
pub struct Retries {
    pub max: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// Step 4: after the apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterApply {
    /// Available (once the node state is reported), then the slot is given back.
    Succeeded { note: Option<&'static str> },
    /// Pending again, for another try after `retry_after`.
    Pending { retry_after: Duration },
    /// Failing with "another attempt follows", the slot kept; again after `after`.
    Retry { attempt: u32, after: Duration },
    /// Failing for good, the slot kept and marked failed, and `event` on the policy.
    FailForGood { event: String },
}

/// `attempt` counts the applies of this generation, this one included.
pub fn after_apply(
    outcome: &Outcome,
    attempt: u32,
    retries: &Retries,
    enactment: &str,
    note: Option<&'static str>,
) -> AfterApply {
    match outcome {
        Outcome::Applied => AfterApply::Succeeded { note },
        Outcome::LostSlot => AfterApply::Pending {
            retry_after: retries.initial_backoff,
        },
        Outcome::Failed { permanent: true } => AfterApply::FailForGood {
            event: events::failed_without_retries(enactment),
        },
        Outcome::Failed { permanent: false } if attempt >= retries.max => AfterApply::FailForGood {
            event: events::failed_after_retries(enactment, attempt),
        },
        Outcome::Failed { permanent: false } => AfterApply::Retry {
            attempt,
            after: backoff(attempt, retries.initial_backoff, retries.max_backoff),
        },
    }
}

/// How long to wait before attempt `attempt + 1`: doubling from `initial`, at most `max`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    initial
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(max)
}

#[cfg(test)]
mod tests;
