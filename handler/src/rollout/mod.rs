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
//!
//! Nodes take turns ([`turns`]): a free slot goes to the next node waiting, in name order, and a
//! node done with its slot hands it to the next one in the slot's queue ([`handoff`]), so no two
//! nodes race for a slot. The order saves writes and time; the atomic writes keep the limit.

/// Handing a slot on to the next node in its queue, or back.
mod handoff;
/// This node's heartbeat Lease.
pub mod heartbeat;
/// What a slot is to a node: free, busy, its own, kept failed (decisions, no I/O).
pub mod slots;
/// Whose turn it is: the order nodes take free slots in, and whom a slot is handed to.
pub mod turns;

pub use slots::{
    Admission, MaxUnavailable, Slot, handed_over, max_unavailable, slot_name, slot_selector, slot_state,
    slot_state_seen, slots_selector, wakes,
};
use slots::{fence_deadline, slot_index, still_counts};

use crate::enactment::conditions::is_final_failure;
use k8s_openapi::{
    api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::OwnerReference, jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, VersionMatch},
};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationEnactmentStatus,
    NodeNetworkConfigurationPolicy, enactment::enactment_name, labels,
};
use nmstate_runtime::{heartbeat::live_handlers, kube_errors::is_conflict, leases};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tracing::{info, warn};
use turns::Standing;

/// What a node learns before asking for a slot in a policy's rollout, read side by side.
pub struct Survey {
    /// The limit, scaled over the selected nodes that run a handler.
    pub limit: MaxUnavailable,
    /// Those nodes, by name: the order they take turns in.
    order: Vec<String>,
    slots: Vec<Lease>,
    /// The policy is being deleted: its nodes revert.
    deleting: bool,
    /// Each node's enactment of the policy, by node.
    enactments: BTreeMap<String, NodeNetworkConfigurationEnactmentStatus>,
}

/// Where slot `index` of `limit` stands in the order it was taken in: whom to hand it to.
#[derive(Clone)]
struct Place {
    index: Option<usize>,
    limit: usize,
    order: Vec<String>,
}

struct Held {
    generation: i64,
    lease: Arc<Mutex<Lease>>,
    renewal: tokio::task::AbortHandle,
    /// None for a slot found held after a restart: given back, not handed on.
    place: Option<Place>,
}

/// This node's slots in the rollouts of the policies it applies.
pub struct Rollout {
    client: Client,
    leases: Api<Lease>,
    node: String,
    duration: Duration,
    held: Mutex<BTreeMap<String, Held>>,
    /// The resourceVersion of the last slot event this node's watch delivered, or before any,
    /// of the start-up list of slots: its slot lists are at least that recent (see
    /// [`Rollout::saw_slot`], [`Rollout::release_left_over`]).
    slots_seen: Mutex<Option<String>>,
    /// The slots the watch last saw this node hold, by name (see
    /// [`Rollout::release_unclaimed`], [`Rollout::claim_handed`]).
    seen_mine: Mutex<BTreeMap<String, Lease>>,
    /// Per policy, since when this node has seen free slots it let others take in their turn
    /// (and for which generation): after [`turns::GRACE`] it tries them itself.
    deferred: Mutex<BTreeMap<String, (i64, Instant)>>,
    /// Per policy, the place this node queued in for a slot (and for which generation): where
    /// a slot handed to it stands (see [`Rollout::claim_handed`]).
    queued: Mutex<BTreeMap<String, (i64, Place)>>,
}

impl Rollout {
    pub fn new(client: Client, namespace: &str, node: &str, duration: Duration) -> Self {
        Rollout {
            leases: Api::namespaced(client.clone(), namespace),
            client,
            node: node.to_string(),
            duration,
            held: Mutex::new(BTreeMap::new()),
            slots_seen: Mutex::new(None),
            seen_mine: Mutex::new(BTreeMap::new()),
            deferred: Mutex::new(BTreeMap::new()),
            queued: Mutex::new(BTreeMap::new()),
        }
    }

    /// What this node needs to ask for a slot in `policy`'s rollout: the nodes it selects that
    /// run a handler (the limit scales over them), its slots, and its enactments.
    pub async fn survey(
        &self,
        policy: &NodeNetworkConfigurationPolicy,
        selected: impl Fn(&str, &BTreeMap<String, String>) -> bool,
    ) -> Result<Survey, kube::Error> {
        let policy_name = policy.name_any();
        let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(self.client.clone());
        let every_node = ListParams::default().match_any();
        let (live, nodes, slots, enactments) = tokio::try_join!(
            live_handlers(&self.leases),
            nodes.list_metadata(&every_node),
            self.slots(&policy_name),
            self.enactments(&policy_name),
        )?;
        let mut order: Vec<String> = nodes
            .items
            .iter()
            .filter(|node| live.contains(&node.name_any()) && selected(&node.name_any(), node.labels()))
            .map(ResourceExt::name_any)
            .collect();
        order.sort();
        Ok(Survey {
            limit: max_unavailable(policy.spec.max_unavailable.as_ref(), order.len()),
            order,
            slots,
            deleting: policy.metadata.deletion_timestamp.is_some(),
            enactments,
        })
    }

    /// Notes a slot the watch of slots delivered.
    pub fn saw_slot(&self, lease: &Lease, deleted: bool) {
        if let (Some(version), Ok(mut seen)) = (lease.resource_version(), self.slots_seen.lock()) {
            *seen = Some(version);
        }
        if let Ok(mut mine) = self.seen_mine.lock() {
            if !deleted && leases::holder(lease) == Some(self.node.as_str()) {
                mine.insert(lease.name_any(), lease.clone());
            } else {
                mine.remove(&lease.name_any());
            }
        }
    }

    /// The slots of `policy` the watch last saw this node hold; `None` when that cannot be told.
    fn seen_held(&self, policy: &str) -> Option<Vec<Lease>> {
        let mine = self.seen_mine.lock().ok()?;
        let of_policy =
            |lease: &&Lease| lease.labels().get(labels::POLICY).map(String::as_str) == Some(policy);
        Some(mine.values().filter(of_policy).cloned().collect())
    }

    /// `policy`'s slots, at least as recent as the last one the watch delivered (a slot handed
    /// to this node is seen held by it), or the list of every slot at start-up
    /// ([`Rollout::release_left_over`]). Served from the API server's cache: a consistent list
    /// waits up to 100 ms for the cache to hear from etcd that it is current.
    async fn slots(&self, policy: &str) -> Result<Vec<Lease>, kube::Error> {
        let seen = self.slots_seen.lock().ok().and_then(|seen| seen.clone());
        let params = ListParams::default().labels(&slot_selector(policy));
        let params = match &seen {
            Some(version) => params.at(version).matching(VersionMatch::NotOlderThan),
            None => params,
        };
        Ok(self.leases.list(&params).await?.items)
    }

    /// The status of each node's enactment of `policy`, by node.
    async fn enactments(
        &self,
        policy: &str,
    ) -> Result<BTreeMap<String, NodeNetworkConfigurationEnactmentStatus>, kube::Error> {
        let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(self.client.clone());
        // From the API server's cache: a standing a moment old only changes whose turn it is.
        let params = ListParams::default()
            .labels(&format!("{}={policy}", labels::POLICY))
            .match_any();
        let listed = enactments.list(&params).await?;
        Ok(listed
            .into_iter()
            .filter_map(|enactment| {
                let node = enactment.labels().get(labels::NODE)?.clone();
                Some((node, enactment.status.unwrap_or_default()))
            })
            .collect())
    }

    /// Whether this node holds, renews and can still count on a slot in the rollout of
    /// `policy`'s `generation` (e.g. between retries): nothing to read or take then.
    pub fn holds(&self, policy: &str, generation: i64) -> bool {
        let now = Timestamp::now();
        self.held.lock().ok().and_then(|all| {
            let held = all.get(policy)?;
            let lease = held.lease.lock().ok()?;
            still_counts(&lease, !held.renewal.is_finished(), self.duration, now).then_some(held.generation)
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

    /// Takes a slot in the rollout of `policy`'s `generation`, among `survey`'s limit (a slot
    /// this node already holds included, see [`Rollout::holds`]), in its turn (see [`turns`]).
    pub async fn acquire(
        &self,
        policy: &NodeNetworkConfigurationPolicy,
        generation: i64,
        survey: &Survey,
    ) -> Result<Admission, kube::Error> {
        let policy_name = policy.name_any();
        let limit = survey.limit.limit;
        let now = Timestamp::now();
        let existing: BTreeMap<String, &Lease> = survey
            .slots
            .iter()
            .map(|lease| (lease.name_any(), lease))
            .collect();
        let place = |index: Option<usize>| Place {
            index,
            limit,
            order: survey.order.clone(),
        };
        // A slot this node holds already (handed to it, or taken before a restart) is kept; a
        // second one (handed to it while it took another) goes back.
        let mine: Vec<&Lease> = existing
            .values()
            .copied()
            .filter(|lease| slot_state(lease, &self.node, generation, now) == Slot::Mine)
            .collect();
        for (kept, lease) in mine.iter().enumerate() {
            let index = slot_index(&policy_name, &lease.name_any(), limit);
            if kept > 0 {
                self.give_back_saying((*lease).clone(), "a second slot handed to it")
                    .await;
                continue;
            }
            let taken = if handed_over(lease, &self.node, generation, now, self.duration) {
                Ok((*lease).clone())
            } else {
                self.take_slot((*lease).clone(), generation, now).await
            };
            match taken {
                Ok(lease) => {
                    info!(policy = %policy_name, generation, slot = %lease.name_any(), "holds a slot in the rollout");
                    self.hold(&policy_name, generation, lease, Some(place(index)));
                }
                Err(error) if is_conflict(&error) => {}
                Err(error) => return Err(error),
            }
        }
        if self.holds(&policy_name, generation) {
            return Ok(Admission::Granted);
        }
        let mut free = Vec::new();
        let mut holders = BTreeSet::new();
        let mut failed = 0;
        let mut next_expiry: Option<Timestamp> = None;
        for index in 0..limit {
            let Some(lease) = existing.get(&slot_name(&policy_name, index)) else {
                free.push(index);
                continue;
            };
            match slot_state_seen(lease, &self.node, generation, now, leases::write_sight(now)) {
                Slot::Mine | Slot::Free => free.push(index),
                Slot::Failed { holder } => {
                    if self.still_failing(&policy_name, &holder, generation).await? {
                        failed += 1;
                    } else {
                        free.push(index);
                    }
                }
                Slot::Busy { until } => {
                    holders.extend(leases::holder(lease).map(str::to_string));
                    next_expiry = Some(next_expiry.map_or(until, |next| next.min(until)));
                }
            }
        }
        let order: Vec<(String, Standing)> = survey
            .order
            .iter()
            .map(|node| {
                let standing = turns::standing(
                    survey.enactments.get(node),
                    generation,
                    holders.contains(node),
                    survey.deleting,
                );
                (node.clone(), standing)
            })
            .collect();
        let tries = if self.overdue(&policy_name, generation, !free.is_empty()) {
            free.clone()
        } else {
            turns::turn(&self.node, &order, &free).into_iter().collect()
        };
        for index in tries {
            let name = slot_name(&policy_name, index);
            let taken = match existing.get(&name) {
                None => self.create_slot(policy, &name, generation, now).await,
                Some(lease) => self.take_slot((*lease).clone(), generation, now).await,
            };
            match taken {
                Ok(lease) => {
                    info!(policy = %policy_name, generation, slot = %name, "took a slot in the rollout");
                    self.hold(&policy_name, generation, lease, Some(place(Some(index))));
                    return Ok(Admission::Granted);
                }
                Err(error) if is_conflict(&error) => continue, // another node saw another order
                Err(error) => return Err(error),
            }
        }
        if failed >= limit {
            return Ok(Admission::Abort);
        }
        if let Ok(mut queued) = self.queued.lock() {
            queued.insert(policy_name.clone(), (generation, place(None)));
        }
        let retry_after = if free.is_empty() {
            next_expiry
                .and_then(|until| Duration::try_from(until.duration_since(now)).ok())
                .map_or(self.duration, |left| left + Duration::from_secs(1))
                .min(self.duration)
        } else {
            turns::GRACE
        };
        Ok(Admission::Wait { retry_after })
    }

    /// Whether this node waits for a slot in `policy`'s rollout: it was told to wait and has
    /// not taken one or given up on one since. True when that cannot be told.
    pub fn waits_for_slot(&self, policy: &str) -> bool {
        self.queued
            .lock()
            .map_or(true, |queued| queued.contains_key(policy))
    }

    /// Whether this node has let free slots of `policy`'s `generation` go to others for
    /// [`turns::GRACE`] (it sees some now: `free`), so it may try them itself.
    fn overdue(&self, policy: &str, generation: i64, free: bool) -> bool {
        let Ok(mut deferred) = self.deferred.lock() else {
            return free;
        };
        if !free {
            deferred.remove(policy);
            return false;
        }
        match deferred.get(policy) {
            Some((seen, since)) if *seen == generation => since.elapsed() >= turns::GRACE,
            _ => {
                deferred.insert(policy.to_string(), (generation, Instant::now()));
                false
            }
        }
    }

    /// Forgets that this node waited for a slot for `policy`: it holds one, or no longer wants one.
    fn forget_deferral(&self, policy: &str) {
        if let Ok(mut deferred) = self.deferred.lock() {
            deferred.remove(policy);
        }
        if let Ok(mut queued) = self.queued.lock() {
            queued.remove(policy);
        }
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

    /// Keeps the slot for this generation, marked failed: it counts against the budget.
    pub async fn mark_failed(&self, policy: &str) {
        let Some((lease, _, _)) = self.forget(policy) else {
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

    /// Holds `lease` as this node's slot for `policy` and keeps it renewed; the node no longer
    /// waits for one.
    fn hold(&self, policy: &str, generation: i64, lease: Lease, place: Option<Place>) {
        self.forget_deferral(policy);
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
            place,
        };
        if let Ok(mut all) = self.held.lock()
            && let Some(previous) = all.insert(policy.to_string(), held)
        {
            previous.renewal.abort();
        }
    }

    /// Stops renewing this node's slot for `policy`: the slot as last written, the generation
    /// it was taken for, and its place.
    fn forget(&self, policy: &str) -> Option<(Lease, i64, Option<Place>)> {
        let held = self.held.lock().ok()?.remove(policy)?;
        held.renewal.abort();
        let lease = held.lease.lock().ok().map(|lease| lease.clone())?;
        Some((lease, held.generation, held.place))
    }

    fn held_lease(&self, policy: &str) -> Option<Lease> {
        let all = self.held.lock().ok()?;
        all.get(policy)?.lease.lock().ok().map(|lease| lease.clone())
    }
}
