//! What a rollout slot is to a node, from the Lease alone: decisions, table-tested in
//! `tests.rs`; the reads and writes around them are in [`super::Rollout`].

use k8s_openapi::{
    api::coordination::v1::Lease,
    apimachinery::pkg::util::intstr::IntOrString,
    jiff::{SignedDuration, Timestamp},
};
use kube::ResourceExt;
use nmstate_api::{labels, policy::DEFAULT_MAX_UNAVAILABLE};
use nmstate_runtime::{
    heartbeat::{Sight, live_until},
    leases,
};
use std::time::Duration;

/// How many nodes may apply a policy at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaxUnavailable {
    pub limit: usize,
    /// Why the policy's own value was not usable (the default was used instead).
    pub invalid: Option<String>,
}

/// `maxUnavailable` (a number, or a percentage of `nodes` rounded up; default 50%), at least 1,
/// as upstream scales it.
pub fn max_unavailable(value: Option<&IntOrString>, nodes: usize) -> MaxUnavailable {
    let scaled = |value: &IntOrString| -> Result<usize, String> {
        match value {
            IntOrString::Int(count) => Ok(usize::try_from(*count).unwrap_or(0)),
            IntOrString::String(text) => {
                let percent: usize = text
                    .strip_suffix('%')
                    .and_then(|number| number.trim().parse().ok())
                    .ok_or_else(|| format!("maxUnavailable {text:?} is neither a number nor a percentage"))?;
                Ok((percent.saturating_mul(nodes)).div_ceil(100))
            }
        }
    };
    let default = IntOrString::String(DEFAULT_MAX_UNAVAILABLE.into());
    let (limit, invalid) = match scaled(value.unwrap_or(&default)) {
        Ok(limit) => (limit, None),
        Err(error) => (scaled(&default).unwrap_or(1), Some(error)),
    };
    MaxUnavailable {
        limit: limit.max(1),
        invalid,
    }
}

pub fn slot_name(policy: &str, index: usize) -> String {
    leases::object_name(policy, &format!(".rollout-{index}"))
}

/// Which of `policy`'s `limit` slots `name` is, if any.
pub fn slot_index(policy: &str, name: &str, limit: usize) -> Option<usize> {
    (0..limit).find(|index| slot_name(policy, *index) == name)
}

/// Selects every rollout slot (of every policy).
pub fn slots_selector() -> String {
    format!("{}={}", labels::LEASE, labels::LEASE_ROLLOUT_SLOT)
}

/// Selects a policy's rollout slots.
pub fn slot_selector(policy: &str) -> String {
    format!("{},{}={policy}", slots_selector(), labels::POLICY)
}

/// Whether a node marked `lease` failed (kept for its generation, against the budget).
pub(super) fn is_marked_failed(lease: &Lease) -> bool {
    lease
        .annotations()
        .get(labels::ROLLOUT_OUTCOME)
        .map(String::as_str)
        == Some("failed")
}

/// Whether a change of `lease`, a slot, concerns `me`: the slot was handed to `me`, or, while
/// `me` waits for one of its policy's slots (`waiting`), it was given back, deleted or kept
/// failed (the failures may now fill every slot). Nodes that do not wait are not woken: at the
/// end of a rollout each slot given back woke every node to read the policy again, while the
/// last nodes still applied.
pub fn wakes(lease: &Lease, me: &str, deleted: bool, waiting: bool) -> bool {
    let holder = leases::holder(lease).filter(|holder| !holder.is_empty());
    if !deleted && holder == Some(me) {
        return true;
    }
    waiting && (deleted || holder.is_none() || is_marked_failed(lease))
}

/// What a slot is to a node that wants to apply generation `generation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// This node holds it.
    Mine,
    /// Nobody holds it: released, expired, or failed at an older generation.
    Free,
    /// Another node applies with it until `until` (unless it renews).
    Busy { until: Timestamp },
    /// `holder` failed this generation for good.
    Failed { holder: String },
}

pub fn slot_state(lease: &Lease, me: &str, generation: i64, now: Timestamp) -> Slot {
    slot_state_seen(lease, me, generation, now, Sight::Since(Timestamp::UNIX_EPOCH))
}

/// [`slot_state`] for a node whose own writes have gone through since `sight`: a slot whose
/// holder could not renew while nothing could be written stays busy until the holder has had a
/// full lease to renew (two nodes would otherwise apply at once after an etcd outage).
pub fn slot_state_seen(lease: &Lease, me: &str, generation: i64, now: Timestamp, sight: Sight) -> Slot {
    let Some(holder) = leases::holder(lease).filter(|holder| !holder.is_empty()) else {
        return Slot::Free;
    };
    let failed = is_marked_failed(lease);
    let slot_generation = lease
        .annotations()
        .get(labels::POLICY_GENERATION)
        .and_then(|value| value.parse::<i64>().ok());
    if failed {
        if slot_generation == Some(generation) {
            return Slot::Failed {
                holder: holder.into(),
            };
        }
        return if holder == me { Slot::Mine } else { Slot::Free };
    }
    if holder == me {
        return Slot::Mine;
    }
    if leases::expiry(lease).is_none() {
        return Slot::Free;
    }
    match live_until(lease, sight) {
        // Blind: nobody's renewals can be judged; retried shortly.
        None => Slot::Busy {
            until: now.checked_add(SignedDuration::from_secs(1)).unwrap_or(now),
        },
        Some(until) => {
            let until = until.checked_add(AFTER_LAPSE).unwrap_or(until);
            if until > now {
                Slot::Busy { until }
            } else {
                Slot::Free
            }
        }
    }
}

/// How long a lapsed slot stays busy after its lease expired. Its holder learns of the lapse
/// when its lease expires ([`Rollout::renewed_after`]), its change already rolled back, and
/// then says so in its enactment: the next holder takes the slot only after that, so no one
/// sees two nodes applying at once for a moment.
const AFTER_LAPSE: SignedDuration = SignedDuration::from_secs(1);

/// Whether `lease` was handed to `me` for `generation` moments ago (see [`turns`]): it is held
/// as it stands, without a write of its own, and first renewed a renewal interval later, still
/// well within the lease.
pub fn handed_over(lease: &Lease, me: &str, generation: i64, now: Timestamp, duration: Duration) -> bool {
    let fresh =
        SignedDuration::try_from(leases::renew_interval(duration) / 2).unwrap_or(SignedDuration::ZERO);
    let renewed = lease.spec.as_ref().and_then(|spec| spec.renew_time.as_ref());
    leases::holder(lease) == Some(me)
        && !is_marked_failed(lease)
        && lease.annotations().get(labels::POLICY_GENERATION) == Some(&generation.to_string())
        && renewed.is_some_and(|renewed| {
            let age = now.duration_since(renewed.0);
            age >= -fresh && age <= fresh
        })
}

/// The one slot among `seen` (slots as a watch last delivered them) handed to `me` moments ago
/// for `generation`, held without a write (see [`handed_over`]); none when there is none, or
/// more than one: a second one goes back, which takes a survey of the rollout.
pub fn handed_slot<'a>(
    seen: impl IntoIterator<Item = &'a Lease>,
    me: &str,
    generation: i64,
    now: Timestamp,
    duration: Duration,
) -> Option<&'a Lease> {
    let mut handed = seen
        .into_iter()
        .filter(|lease| handed_over(lease, me, generation, now, duration));
    let first = handed.next()?;
    handed.next().is_none().then_some(first)
}

/// Whether this node may apply now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Granted,
    /// Every slot is taken; try again after `retry_after` (or when a slot frees up).
    Wait {
        retry_after: Duration,
    },
    /// Every slot is taken by a node that failed this generation.
    Abort,
}

/// When the holder of `lease` must stop counting on it: a quarter of `duration` (the time to
/// roll back, and more than one renewal interval) before its expiry.
pub(super) fn fence_deadline(lease: &Lease, duration: Duration) -> Option<Timestamp> {
    let margin = SignedDuration::try_from(duration / 4).ok()?;
    leases::expiry(lease)?.checked_sub(margin).ok()
}

/// Whether the holder of `lease`, which it renews or not (`renewing`), may still count on it at
/// `now`: only before its fence deadline. A renewal that kept trying through an outage of the
/// API server does not make the slot its holder's again: it lapsed meanwhile, and another node
/// may have taken it (two nodes applied at once after an etcd restart).
pub(super) fn still_counts(lease: &Lease, renewing: bool, duration: Duration, now: Timestamp) -> bool {
    renewing && fence_deadline(lease, duration).is_some_and(|deadline| now < deadline)
}

#[cfg(test)]
mod tests;
