//! What the node agent does next about one policy on this node, decided without a client, a
//! node or NetworkManager: pure functions of what the reconcile read. The reconcile
//! (`reconcile.rs`) reads, calls them in this order, and does what they say:
//!
//! 1. [`entry`]: whether the policy selects the node, and whether its generation is finished here;
//! 2. [`before_apply`]: once the desired state is resolved and compared with the node's;
//! 3. [`on_admission`]: what the policy's rollout answered when asked for a slot;
//! 4. [`after_apply`]: what the checkpointed apply did.

use crate::{enactment::events, rollout::Admission};
use nmstate_api::{
    NodeNetworkConfigurationEnactmentStatus, condition::find_condition,
    enactment::EnactmentConditionType as Type,
};
use std::time::Duration;

/// Step 1: where the reconcile of a policy starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The policy does not select this node (anymore): give back its slot, remove the enactment.
    Remove,
    /// This generation is finished here: Failing for good, Aborted, or Available and known to
    /// this process as applied. Nothing is written, so nothing churns.
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
    let is_true =
        |type_: Type| find_condition(&status.conditions, type_.as_str()).is_some_and(|c| c.is_true());
    let enacted = is_true(Type::Available);
    let failed = is_true(Type::Failing) && !is_true(Type::Progressing);
    if failed || is_true(Type::Aborted) || (enacted && known_applied) {
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
    Pending(String),
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
}

pub fn before_apply(findings: &Findings) -> BeforeApply {
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
