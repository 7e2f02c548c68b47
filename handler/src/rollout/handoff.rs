//! Handing a slot on: a node done with its slot gives it to the next node waiting in the
//! slot's queue ([`super::turns`]), one write where a release and a take were two. And giving
//! slots back: to no one, or those this node holds without having taken them.

use super::{
    Place, Rollout, Slot,
    slots::{handed_slot, is_marked_failed, slot_index, slot_state, slots_selector},
    turns,
    turns::Standing,
};
use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use kube::{
    ResourceExt,
    api::{DeleteParams, ListParams, Preconditions},
};
use nmstate_api::{NodeNetworkConfigurationPolicy, labels};
use nmstate_runtime::leases;
use std::collections::BTreeSet;
use tracing::{info, warn};

impl Rollout {
    /// Gives the slot back (the policy no longer applies here, or is gone): to the next node
    /// waiting in its queue (see [`turns`]), or to no one. What this node remembered of waiting
    /// for a slot of `policy` goes too, so a deleted policy leaves nothing behind.
    pub async fn release(&self, policy: &str) {
        self.forget_deferral(policy);
        let next = self.next_in_line(policy).await;
        self.release_to(policy, next).await;
    }

    /// The node this node's slot for `policy` goes to when released, as things stand: read
    /// while the last status is written.
    pub async fn next_in_line(&self, policy: &str) -> Option<String> {
        let (generation, place) = {
            let all = self.held.lock().ok()?;
            let held = all.get(policy)?;
            (held.generation, held.place.clone()?)
        };
        self.successor(policy, generation, &place).await
    }

    /// Gives this node's slot for `policy` to `next` (see [`Rollout::next_in_line`]), or back
    /// to no one.
    pub async fn release_to(&self, policy: &str, next: Option<String>) {
        let Some((lease, generation, _)) = self.forget(policy) else {
            return;
        };
        let slot = lease.name_any();
        if let Some(next) = next {
            match self.hand_over(lease.clone(), &next, generation).await {
                Ok(Some(_)) => return info!(policy, %slot, %next, "handed the slot in the rollout on"),
                Ok(None) => return, // taken over after it expired
                Err(error) => warn!(policy, %slot, %next, "cannot hand the slot in the rollout on: {error}"),
            }
        }
        self.give_back_saying(lease, "the slot in the rollout").await;
    }

    /// The node to hand `place`'s slot to, from the enactments and slots as they are now.
    async fn successor(&self, policy: &str, generation: i64, place: &Place) -> Option<String> {
        let listed = tokio::try_join!(self.enactments(policy), self.slots(policy));
        let (enactments, slots) = match listed {
            Ok(listed) => listed,
            Err(error) => {
                warn!(
                    policy,
                    "cannot tell who waits for the slot in the rollout: {error}"
                );
                return None;
            }
        };
        let now = Timestamp::now();
        let holders: BTreeSet<&str> = slots
            .iter()
            .filter_map(|lease| leases::live_holder(lease, now))
            .collect();
        let order: Vec<(String, Standing)> = place
            .order
            .iter()
            .map(|node| {
                let standing =
                    // Only a Queued node is handed a slot: a missing enactment never is.
                    turns::standing(enactments.get(node), generation, holders.contains(node.as_str()), false);
                (node.clone(), standing)
            })
            .collect();
        turns::successor(&self.node, &order, place.index, place.limit)
    }

    /// Holds the slot of `policy`'s `generation` that was handed to this node, as the watch
    /// delivered it, in the place it queued in: the survey of the rollout that taking a slot
    /// starts with (four lists) was most of the time from one node's Available to the next
    /// one's Progressing. False when it cannot hold one so: none handed, or more than one (one
    /// goes back), or no place remembered (the handler restarted); [`Rollout::acquire`] then
    /// sorts it out.
    pub fn claim_handed(&self, policy: &str, generation: i64) -> bool {
        let place = self.queued.lock().ok().and_then(|queued| {
            let (queued_for, place) = queued.get(policy)?;
            (*queued_for == generation).then(|| place.clone())
        });
        let Some(place) = place else {
            return false;
        };
        let seen = self.seen_held(policy).unwrap_or_default();
        let Some(lease) = handed_slot(&seen, &self.node, generation, Timestamp::now(), self.duration) else {
            return false;
        };
        let slot = lease.name_any();
        let index = slot_index(policy, &slot, place.limit);
        info!(policy, generation, %slot, "holds the slot handed to it in the rollout");
        self.hold(policy, generation, lease.clone(), Some(Place { index, ..place }));
        true
    }

    /// Hands `lease`, a slot this node holds, to `next` for `generation`; `Ok(None)` when it is
    /// gone or another node took it.
    async fn hand_over(
        &self,
        lease: Lease,
        next: &str,
        generation: i64,
    ) -> Result<Option<Lease>, kube::Error> {
        let api = &self.leases;
        let duration = self.duration;
        let hand = move |mut lease: Lease| async move {
            leases::take_over(&mut lease, next, duration, Timestamp::now());
            lease
                .annotations_mut()
                .insert(labels::POLICY_GENERATION.into(), generation.to_string());
            leases::replace(api, &lease).await
        };
        leases::write_while_held(&self.leases, lease, &self.node, hand).await
    }

    /// Gives back the slots of `policy` this node holds without having taken them, when it no
    /// longer applies it (not selected, applied already, …): one was handed to it while it
    /// waited. Read only when the watch last saw this node hold one it does not remember.
    pub async fn release_unclaimed(&self, policy: &NodeNetworkConfigurationPolicy, generation: i64) {
        let policy_name = policy.name_any();
        if self.held_lease(&policy_name).is_some() {
            return;
        }
        let suspected = self.seen_held(&policy_name).is_none_or(|held| !held.is_empty());
        if suspected {
            self.release_any(policy, generation).await;
        }
    }

    /// Releases the slot this node holds for `policy`; or, when it remembers none, gives back
    /// every slot of `policy` it holds all the same (taken before a restart, or handed to it).
    pub async fn release_any(&self, policy: &NodeNetworkConfigurationPolicy, generation: i64) {
        let policy_name = policy.name_any();
        if self.held_lease(&policy_name).is_some() {
            return self.release(&policy_name).await;
        }
        let Ok(existing) = self.slots(&policy_name).await else {
            return;
        };
        let now = Timestamp::now();
        let mine = existing
            .into_iter()
            .filter(|lease| slot_state(lease, &self.node, generation, now) == Slot::Mine);
        for lease in mine {
            self.give_back_saying(lease, "a slot it held but did not use")
                .await;
        }
    }

    /// Gives back the places an earlier handler on this node held (it stopped mid-apply, and
    /// nothing applies here now): the other nodes need not wait for them to lapse, and none is
    /// left behind when this node no longer applies the policy. Places marked failed stay: they
    /// count against the policy's budget.
    ///
    /// The list is consistent, and its version bounds the slot lists after it (see
    /// [`Rollout::slots`]): the first survey after start-up need not make a consistent list of
    /// its own, one per node at once in a rollout's first wave.
    pub async fn release_left_over(&self) {
        let listed = match self
            .leases
            .list(&ListParams::default().labels(&slots_selector()))
            .await
        {
            Ok(listed) => listed,
            Err(error) => return warn!("cannot list the rollout slots: {error}"),
        };
        if let (Some(version), Ok(mut seen)) =
            (listed.metadata.resource_version.clone(), self.slots_seen.lock())
        {
            seen.get_or_insert(version);
        }
        for lease in listed {
            if leases::holder(&lease) != Some(self.node.as_str()) || is_marked_failed(&lease) {
                continue;
            }
            self.give_back_saying(lease, "a place in a rollout the last handler held")
                .await;
        }
    }

    /// Gives `lease` back and logs it: `what` names the slot, in "gave back {what}" and, when
    /// the API refuses, "cannot give back {what}" (it then expires by itself). A slot already
    /// gone, or taken over after it expired, is not logged.
    pub(super) async fn give_back_saying(&self, lease: Lease, what: &str) {
        let slot = lease.name_any();
        match self.give_back(lease).await {
            Ok(Some(())) => info!(%slot, "gave back {what}"),
            Ok(None) => {}
            Err(error) => warn!(%slot, "cannot give back {what} (it expires by itself): {error}"),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn place() -> Place {
        Place {
            index: None,
            limit: 1,
            order: vec!["n0".into()],
        }
    }

    #[tokio::test]
    async fn releasing_a_policy_forgets_that_this_node_waited_for_it() {
        // Nothing held, so no request is sent: the client points nowhere.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let rollout = Rollout::new(client, "default", "n0", Duration::from_secs(30));
        assert!(!rollout.overdue("gone", 1, true), "a deferral starts");
        rollout.queued.lock().unwrap().insert("gone".into(), (1, place()));
        rollout.queued.lock().unwrap().insert("kept".into(), (1, place()));

        rollout.release("gone").await;

        assert!(rollout.deferred.lock().unwrap().is_empty());
        let queued: Vec<String> = rollout.queued.lock().unwrap().keys().cloned().collect();
        assert_eq!(queued, ["kept"]);
    }
}
