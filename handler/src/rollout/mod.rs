//! Rolling a policy out across nodes: at most `maxUnavailable` nodes apply a policy at once.
//!
//! Upstream keeps a counter in the policy status that every node increments and decrements; a
//! node that dies mid-apply never decrements it and the rollout stalls. Here each slot is a
//! Lease, `<policy>.rollout-<i>` for `i < maxUnavailable`, held by the node applying and renewed
//! while it does. Taking a slot is an atomic create, or an update at the stored
//! resourceVersion, so two nodes never hold one slot. A node that dies or stalls stops
//! renewing and its slot frees itself when the lease expires; before committing, a node checks
//! that it still holds its slot, so a paused handler that wakes up rolls its change back
//! instead of exceeding the limit.
//!
//! A node that fails a generation for good marks its slot `failed` and keeps it for that
//! generation, as upstream keeps its count: once failures fill every slot, the remaining nodes
//! abort instead of applying a broken policy everywhere. The slot frees itself when the policy
//! changes (new generation) or when the failed enactment goes away.

/// This node's heartbeat Lease.
pub mod heartbeat;

use crate::enactment::conditions::is_final_failure;
use k8s_openapi::{
    api::coordination::v1::Lease,
    apimachinery::pkg::{apis::meta::v1::OwnerReference, util::intstr::IntOrString},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Preconditions},
};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, enactment::enactment_name, labels,
    policy::DEFAULT_MAX_UNAVAILABLE,
};
use nmstate_runtime::{
    heartbeat::{Sight, live_handlers, live_until},
    kube_errors::is_conflict,
    leases,
};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tracing::{info, warn};

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

/// Selects every rollout slot (of every policy).
pub fn slots_selector() -> String {
    format!("{}={}", labels::LEASE, labels::LEASE_ROLLOUT_SLOT)
}

/// Selects a policy's rollout slots.
pub fn slot_selector(policy: &str) -> String {
    format!("{},{}={policy}", slots_selector(), labels::POLICY)
}

/// Whether a node marked `lease` failed (kept for its generation, against the budget).
fn is_marked_failed(lease: &Lease) -> bool {
    lease
        .annotations()
        .get(labels::ROLLOUT_OUTCOME)
        .map(String::as_str)
        == Some("failed")
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

struct Held {
    generation: i64,
    lease: Arc<Mutex<Lease>>,
    renewal: tokio::task::AbortHandle,
}

/// This node's slots in the rollouts of the policies it applies.
pub struct Rollout {
    client: Client,
    leases: Api<Lease>,
    node: String,
    duration: Duration,
    held: Mutex<BTreeMap<String, Held>>,
}

impl Rollout {
    pub fn new(client: Client, namespace: &str, node: &str, duration: Duration) -> Self {
        Rollout {
            leases: Api::namespaced(client.clone(), namespace),
            client,
            node: node.to_string(),
            duration,
            held: Mutex::new(BTreeMap::new()),
        }
    }

    /// The limit for `policy`, scaled over the nodes it selects that run a handler.
    pub async fn limit(
        &self,
        policy: &NodeNetworkConfigurationPolicy,
        selected: impl Fn(&str, &BTreeMap<String, String>) -> bool,
    ) -> Result<MaxUnavailable, kube::Error> {
        let live = live_handlers(&self.leases).await?;
        let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(self.client.clone())
            .list_metadata(&ListParams::default())
            .await?;
        let count = nodes
            .items
            .iter()
            .filter(|node| live.contains(&node.name_any()) && selected(&node.name_any(), node.labels()))
            .count();
        Ok(max_unavailable(policy.spec.max_unavailable.as_ref(), count))
    }

    /// Whether this node holds, and still renews, a slot in the rollout of `policy`'s
    /// `generation` (e.g. between retries): nothing to read or take then.
    pub fn holds(&self, policy: &str, generation: i64) -> bool {
        self.held.lock().ok().and_then(|all| {
            let held = all.get(policy)?;
            (!held.renewal.is_finished()).then_some(held.generation)
        }) == Some(generation)
    }

    /// Whether this node still renews its slot for `policy` (it has not lost it).
    fn renewing(&self, policy: &str) -> bool {
        self.held
            .lock()
            .ok()
            .and_then(|all| Some(!all.get(policy)?.renewal.is_finished()))
            .unwrap_or(false)
    }

    /// Takes a slot in the rollout of `policy`'s `generation`, among `limit` slots (a slot
    /// this node already holds included, see [`Rollout::holds`]).
    pub async fn acquire(
        &self,
        policy: &NodeNetworkConfigurationPolicy,
        generation: i64,
        limit: usize,
    ) -> Result<Admission, kube::Error> {
        let policy_name = policy.name_any();
        let now = Timestamp::now();
        let existing: BTreeMap<String, Lease> = self
            .leases
            .list(&ListParams::default().labels(&slot_selector(&policy_name)))
            .await?
            .into_iter()
            .map(|lease| (lease.name_any(), lease))
            .collect();
        // A slot this node already holds (e.g. taken before a restart) is kept.
        let mut candidates: Vec<(String, Option<Lease>)> = existing
            .values()
            .filter(|lease| slot_state(lease, &self.node, generation, now) == Slot::Mine)
            .map(|lease| (lease.name_any(), Some(lease.clone())))
            .collect();
        // Each node tries the slots in its own order, so nodes woken together rarely race
        // for the same one.
        let first = usize::try_from(leases::stable_hash(&self.node)).unwrap_or(0) % limit.max(1);
        candidates.extend((0..limit).map(|offset| {
            let name = slot_name(&policy_name, (first + offset) % limit);
            let lease = existing.get(&name).cloned();
            (name, lease)
        }));
        let mut failed = 0;
        let mut next_expiry: Option<Timestamp> = None;
        for (name, lease) in candidates {
            let taken = match &lease {
                None => self.create_slot(policy, &name, generation, now).await,
                Some(lease) => {
                    match slot_state_seen(lease, &self.node, generation, now, leases::write_sight(now)) {
                        Slot::Mine | Slot::Free => self.take_slot(lease.clone(), generation, now).await,
                        Slot::Failed { holder } => {
                            if self.still_failing(&policy_name, &holder, generation).await? {
                                failed += 1;
                                continue;
                            }
                            self.take_slot(lease.clone(), generation, now).await
                        }
                        Slot::Busy { until } => {
                            next_expiry = Some(next_expiry.map_or(until, |next| next.min(until)));
                            continue;
                        }
                    }
                }
            };
            match taken {
                Ok(lease) => {
                    info!(policy = %policy_name, generation, slot = %name, "took a slot in the rollout");
                    self.hold(&policy_name, generation, lease);
                    return Ok(Admission::Granted);
                }
                Err(error) if is_conflict(&error) => continue, // another node was faster
                Err(error) => return Err(error),
            }
        }
        if failed >= limit {
            return Ok(Admission::Abort);
        }
        let retry_after = next_expiry
            .and_then(|until| Duration::try_from(until.duration_since(now)).ok())
            .map_or(self.duration, |left| left + Duration::from_secs(1))
            .min(self.duration);
        Ok(Admission::Wait { retry_after })
    }

    /// Whether this node still holds its slot for `policy`: checked right before committing,
    /// so a handler that was paused past its lease rolls back instead.
    pub async fn still_held(&self, policy: &str) -> bool {
        let Some(name) = self.held_lease(policy).map(|lease| lease.name_any()) else {
            return false;
        };
        let margin = k8s_openapi::jiff::SignedDuration::from_secs(1);
        match self.leases.get_opt(&name).await {
            Ok(Some(lease)) => {
                let now = Timestamp::now()
                    .checked_add(margin)
                    .unwrap_or_else(|_| Timestamp::now());
                leases::live_holder(&lease, now) == Some(self.node.as_str())
            }
            Ok(None) => false,
            Err(error) => {
                warn!(policy, "cannot check the rollout slot: {error}");
                false
            }
        }
    }

    /// Completes once this node can no longer count on its slot for `policy`: a quarter of the
    /// lease before the others would see it lapse, counted from the last renewal that went
    /// through (at once when it holds none). A node cut off from the API server stops
    /// renewing; it must have rolled its change back before another node takes its place, not
    /// only when its probes give up (120 s by default, against a 30-s lease).
    pub async fn lapsing(&self, policy: &str) {
        loop {
            let Some(deadline) = self
                .held_lease(policy)
                .and_then(|lease| fence_deadline(&lease, self.duration))
            else {
                return;
            };
            let left = deadline.duration_since(Timestamp::now());
            match Duration::try_from(left) {
                Ok(left) if !left.is_zero() => tokio::time::sleep(left).await,
                _ => return,
            }
        }
    }

    /// Whether this node's slot for `policy` is renewed after `since` before it lapses: after a
    /// change that cut the node off was rolled back, the renewals go through again and the
    /// node keeps its place (and reports its failure) as after any failed probe.
    pub async fn renewed_after(&self, policy: &str, since: Timestamp) -> bool {
        loop {
            let Some(lease) = self.held_lease(policy) else {
                return false;
            };
            let renewed = lease.spec.as_ref().and_then(|spec| spec.renew_time.as_ref());
            if renewed.is_some_and(|renewed| renewed.0 >= since) {
                return true;
            }
            let lapsed = leases::expiry(&lease).is_none_or(|expiry| expiry <= Timestamp::now());
            if lapsed || !self.renewing(policy) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Gives the slot back (the apply finished, or the policy no longer applies here).
    pub async fn release(&self, policy: &str) {
        let Some(lease) = self.forget(policy) else { return };
        let slot = lease.name_any();
        match self.give_back(lease).await {
            Ok(Some(())) => info!(policy, %slot, "released the slot in the rollout"),
            Ok(None) => {} // already gone, or taken over after it expired
            Err(error) => warn!(
                policy,
                %slot,
                "cannot release the slot in the rollout (it expires by itself): {error}"
            ),
        }
    }

    /// Releases a slot this node holds for `policy` though it does not remember taking it
    /// (taken before a restart).
    pub async fn release_any(&self, policy: &NodeNetworkConfigurationPolicy, generation: i64) {
        let policy_name = policy.name_any();
        if self.held_lease(&policy_name).is_none() {
            let Ok(existing) = self
                .leases
                .list(&ListParams::default().labels(&slot_selector(&policy_name)))
                .await
            else {
                return;
            };
            let now = Timestamp::now();
            let Some(mine) = existing
                .into_iter()
                .find(|lease| slot_state(lease, &self.node, generation, now) == Slot::Mine)
            else {
                return;
            };
            self.hold(&policy_name, generation, mine);
        }
        self.release(&policy_name).await;
    }

    /// Gives back the places an earlier handler on this node held (it stopped mid-apply, and
    /// nothing applies here now): the other nodes need not wait for them to lapse, and none is
    /// left behind when this node no longer applies the policy. Places marked failed stay: they
    /// count against the policy's budget.
    pub async fn release_left_over(&self) {
        let listed = match self
            .leases
            .list(&ListParams::default().labels(&slots_selector()))
            .await
        {
            Ok(listed) => listed,
            Err(error) => return warn!("cannot list the rollout slots: {error}"),
        };
        for lease in listed {
            if leases::holder(&lease) != Some(self.node.as_str()) || is_marked_failed(&lease) {
                continue;
            }
            let slot = lease.name_any();
            match self.give_back(lease).await {
                Ok(Some(())) => info!(%slot, "gave back a place in a rollout the last handler held"),
                Ok(None) => {} // already gone, or taken over after it expired
                Err(error) => warn!(%slot, "cannot give back a place the last handler held: {error}"),
            }
        }
    }

    /// Deletes `lease`, a slot this node holds, at the version it holds (again on a fresh copy
    /// while it still holds it); `Ok(None)` when it is gone or another node took it.
    async fn give_back(&self, lease: Lease) -> Result<Option<()>, kube::Error> {
        let api = &self.leases;
        let delete = move |lease: Lease| async move {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: lease.resource_version(),
                    uid: lease.uid(),
                }),
                ..DeleteParams::default()
            };
            api.delete(&lease.name_any(), &params).await.map(drop)
        };
        leases::write_while_held(&self.leases, lease, &self.node, delete).await
    }

    /// Keeps the slot for this generation, marked failed: it counts against the budget.
    pub async fn mark_failed(&self, policy: &str) {
        let Some(lease) = self.forget(policy) else {
            return;
        };
        let slot = lease.name_any();
        let api = &self.leases;
        let mark = move |mut lease: Lease| async move {
            lease
                .annotations_mut()
                .insert(labels::ROLLOUT_OUTCOME.into(), "failed".into());
            leases::replace(api, &lease).await
        };
        match leases::write_while_held(&self.leases, lease, &self.node, mark).await {
            Ok(Some(_)) => info!(policy, %slot, "kept the slot in the rollout, marked failed"),
            Ok(None) => warn!(
                policy,
                %slot,
                "cannot mark the rollout slot failed: it is gone, or expired and another node took it"
            ),
            Err(error) => warn!(policy, %slot, "cannot mark the rollout slot failed: {error}"),
        }
    }

    async fn create_slot(
        &self,
        policy: &NodeNetworkConfigurationPolicy,
        name: &str,
        generation: i64,
        now: Timestamp,
    ) -> Result<Lease, kube::Error> {
        let policy_name = policy.name_any();
        let labels = BTreeMap::from([
            (labels::LEASE.to_string(), labels::LEASE_ROLLOUT_SLOT.to_string()),
            (labels::POLICY.to_string(), policy_name),
        ]);
        let mut lease = leases::held_by(name, labels, &self.node, self.duration, now);
        lease
            .annotations_mut()
            .insert(labels::POLICY_GENERATION.into(), generation.to_string());
        // Collected with the policy.
        lease.metadata.owner_references = Some(vec![OwnerReference {
            api_version: NodeNetworkConfigurationPolicy::api_version(&()).into(),
            kind: NodeNetworkConfigurationPolicy::kind(&()).into(),
            name: policy.name_any(),
            uid: policy.uid().unwrap_or_default(),
            ..OwnerReference::default()
        }]);
        leases::create(&self.leases, &lease).await
    }

    async fn take_slot(
        &self,
        mut lease: Lease,
        generation: i64,
        now: Timestamp,
    ) -> Result<Lease, kube::Error> {
        leases::take_over(&mut lease, &self.node, self.duration, now);
        let annotations = lease.annotations_mut();
        annotations.insert(labels::POLICY_GENERATION.into(), generation.to_string());
        annotations.remove(labels::ROLLOUT_OUTCOME);
        leases::replace(&self.leases, &lease).await
    }

    /// Whether `holder`'s enactment of `policy` is still failed at `generation` (a node that
    /// went away, or no longer selected, does not keep its slot).
    async fn still_failing(&self, policy: &str, holder: &str, generation: i64) -> Result<bool, kube::Error> {
        let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(self.client.clone());
        let enactment = enactments.get_opt(&enactment_name(holder, policy)).await?;
        Ok(enactment
            .and_then(|enactment| enactment.status)
            .is_some_and(|status| status.policy_generation == Some(generation) && is_final_failure(&status)))
    }

    fn hold(&self, policy: &str, generation: i64, lease: Lease) {
        let lease = Arc::new(Mutex::new(lease));
        let renewal = tokio::spawn(leases::keep_renewed(
            self.leases.clone(),
            lease.clone(),
            self.duration,
        ))
        .abort_handle();
        let held = Held {
            generation,
            lease,
            renewal,
        };
        if let Ok(mut all) = self.held.lock()
            && let Some(previous) = all.insert(policy.to_string(), held)
        {
            previous.renewal.abort();
        }
    }

    fn forget(&self, policy: &str) -> Option<Lease> {
        let held = self.held.lock().ok()?.remove(policy)?;
        held.renewal.abort();
        held.lease.lock().ok().map(|lease| lease.clone())
    }

    fn held_lease(&self, policy: &str) -> Option<Lease> {
        let all = self.held.lock().ok()?;
        all.get(policy)?.lease.lock().ok().map(|lease| lease.clone())
    }
}

/// When the holder of `lease` must stop counting on it: a quarter of `duration` (the time to
/// roll back, and more than one renewal interval) before its expiry.
fn fence_deadline(lease: &Lease, duration: Duration) -> Option<Timestamp> {
    let margin = SignedDuration::try_from(duration / 4).ok()?;
    leases::expiry(lease)?.checked_sub(margin).ok()
}

#[cfg(test)]
mod tests;
