//! Whose turn it is in a rollout.
//!
//! When every waiting node raced for each freed slot, all but one lost: each lost race was a
//! refused write, and the slot stayed free until the winner's write went through. Here the
//! nodes agree on an order, by name over the selected nodes that run a handler, so each free
//! slot has one taker: the k-th node still wanting a slot takes the k-th free one. A node done
//! with its slot hands it to the next node waiting in that slot's queue (the nodes whose place
//! in the order falls on the slot, as the first wave took them), one write where a release and
//! a take were two, and no one else wakes up to race for it.
//!
//! The order only saves writes and time: two nodes that see it differently (one saw a
//! heartbeat the other did not yet) still take a slot only by an atomic write, so at worst one
//! of them loses a race as before.

use crate::enactment::conditions::is_final_failure;
use nmstate_api::{
    NodeNetworkConfigurationEnactmentStatus,
    enactment::{EnactmentConditionReason, EnactmentConditionType},
};
use std::time::Duration;

/// How long free slots may wait for the nodes whose turn it is before any waiting node may take
/// them. The node whose turn it is may never ask: it went away, or found nothing to apply.
pub const GRACE: Duration = Duration::from_secs(2);

/// Where a node stands in the rollout of one generation of a policy, from its enactment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Waits for a slot at this generation: a slot can be handed to it.
    Queued,
    /// Will ask for a slot: it has not started on this generation yet, or retries.
    Coming,
    /// Takes no turn: it holds a slot, applied or failed for good at this generation, or waits
    /// for something else first (a policy it depends on, a variable's value).
    Out,
}

/// `status` is the node's enactment's, `None` when it has none: while the policy is deleted
/// (`deleting`), a node without one has reverted, or had nothing to revert.
pub fn standing(
    status: Option<&NodeNetworkConfigurationEnactmentStatus>,
    generation: i64,
    holds_slot: bool,
    deleting: bool,
) -> Standing {
    if holds_slot || (status.is_none() && deleting) {
        return Standing::Out;
    }
    let Some(status) = status.filter(|status| status.policy_generation == Some(generation)) else {
        return Standing::Coming;
    };
    let pending_reason =
        nmstate_api::condition::find_condition(&status.conditions, EnactmentConditionType::Pending.as_str())
            .filter(|condition| condition.is_true())
            .map(|condition| condition.reason.clone());
    if status.is(EnactmentConditionType::Available) || is_final_failure(status) {
        Standing::Out
    } else if let Some(reason) = pending_reason {
        if reason == EnactmentConditionReason::MaxUnavailableLimitReached.as_str() {
            Standing::Queued
        } else {
            Standing::Out
        }
    } else {
        Standing::Coming
    }
}

/// The free slot `me` takes, if it is its turn: the k-th node wanting a slot, in `order`, takes
/// the k-th of `free` (slot indexes, lowest first). `me` wants one whatever its enactment says.
pub fn turn(me: &str, order: &[(String, Standing)], free: &[usize]) -> Option<usize> {
    let ahead = order
        .iter()
        .filter(|(node, standing)| node.as_str() < me && *standing != Standing::Out)
        .count();
    free.get(ahead).copied()
}

/// The node `me` hands slot `index` (of `limit`) to when it is done with it: the first node
/// queued for a slot in that slot's queue (the nodes at `index`, `index + limit`, … in `order`),
/// or else the first queued anywhere; none when no one waits.
pub fn successor(
    me: &str,
    order: &[(String, Standing)],
    index: Option<usize>,
    limit: usize,
) -> Option<String> {
    let queued = || {
        order
            .iter()
            .enumerate()
            .filter(|(_, (node, standing))| node != me && *standing == Standing::Queued)
    };
    let in_queue =
        index.and_then(|index| queued().find(|(place, _)| place % limit.max(1) == index % limit.max(1)));
    in_queue
        .or_else(|| queued().next())
        .map(|(_, (node, _))| node.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enactment::conditions::{EnactmentSituation, status_in};
    use Standing::{Coming, Out, Queued};

    #[test]
    fn a_node_stands_by_its_enactment_at_this_generation() {
        let failed = EnactmentSituation::Failed { message: "no".into() };
        let waiting = EnactmentSituation::WaitingForDependency {
            message: "first".into(),
        };
        for (situation, generation, holds, expected) in [
            (None, 3, false, Coming), // created, nothing written yet
            (Some(EnactmentSituation::Pending), 3, false, Queued),
            (Some(EnactmentSituation::Pending), 3, true, Out), // handed a slot, not started yet
            (Some(EnactmentSituation::Pending), 2, false, Coming), // waited for the last generation
            (Some(EnactmentSituation::Succeeded { note: None }), 3, false, Out),
            (
                Some(EnactmentSituation::Succeeded { note: None }),
                2,
                false,
                Coming,
            ),
            (Some(failed.clone()), 3, false, Out),
            (Some(failed), 2, false, Coming),
            (Some(waiting), 3, false, Out),
            (Some(EnactmentSituation::Progressing), 3, false, Coming), // its handler restarted
            (Some(EnactmentSituation::Progressing), 3, true, Out),
        ] {
            let status = status_in(generation, situation.clone());
            assert_eq!(
                standing(Some(&status), 3, holds, false),
                expected,
                "{situation:?} at {generation}"
            );
        }
        assert_eq!(standing(None, 3, false, false), Coming, "no enactment yet");
        assert_eq!(standing(None, 3, true, false), Out);
        assert_eq!(
            standing(None, 3, false, true),
            Out,
            "reverted: its enactment went"
        );
        let waiting = status_in(3, Some(EnactmentSituation::Pending));
        assert_eq!(
            standing(Some(&waiting), 3, false, true),
            Queued,
            "waits to revert"
        );
    }

    fn order(nodes: &[(&str, Standing)]) -> Vec<(String, Standing)> {
        nodes
            .iter()
            .map(|(node, standing)| (node.to_string(), *standing))
            .collect()
    }

    #[test]
    fn the_kth_node_wanting_a_slot_takes_the_kth_free_one() {
        let all_coming = order(&[("a", Coming), ("b", Coming), ("c", Coming), ("d", Coming)]);
        // The first wave: two slots, none taken yet.
        assert_eq!(turn("a", &all_coming, &[0, 1]), Some(0));
        assert_eq!(turn("b", &all_coming, &[0, 1]), Some(1));
        assert_eq!(turn("c", &all_coming, &[0, 1]), None);
        // Slot 1 freed while a holds 0: b applied, c is next.
        let second = order(&[("a", Out), ("b", Out), ("c", Queued), ("d", Queued)]);
        assert_eq!(turn("c", &second, &[1]), Some(1));
        assert_eq!(turn("d", &second, &[1]), None);
        assert_eq!(turn("d", &second, &[]), None);
        // A node missing from the order (its heartbeat not seen yet) counts by its name.
        assert_eq!(turn("bb", &second, &[1]), Some(1));
        assert_eq!(turn("e", &second, &[1]), None);
    }

    #[test]
    fn a_done_node_hands_its_slot_to_the_next_queued_in_its_queue() {
        let nodes = order(&[
            ("a", Out),
            ("b", Out),
            ("c", Queued),
            ("d", Queued),
            ("e", Queued),
        ]);
        // Two slots: slot 0 serves a, c, e; slot 1 serves b, d.
        assert_eq!(successor("a", &nodes, Some(0), 2), Some("c".into()));
        assert_eq!(successor("b", &nodes, Some(1), 2), Some("d".into()));
        // Its queue empty: the first queued anywhere.
        let late = order(&[("a", Out), ("b", Out), ("c", Out), ("d", Out), ("e", Queued)]);
        assert_eq!(successor("b", &late, Some(1), 2), Some("e".into()));
        // One slot: everyone's queue.
        assert_eq!(successor("a", &nodes, Some(0), 1), Some("c".into()));
        // Coming nodes are not handed a slot: they may never ask (nothing to apply).
        let coming = order(&[("a", Out), ("b", Coming)]);
        assert_eq!(successor("a", &coming, Some(0), 1), None);
        assert_eq!(successor("a", &nodes, None, 2), Some("c".into()));
        assert_eq!(
            successor("c", &nodes, Some(0), 2),
            Some("e".into()),
            "not to itself"
        );
    }
}
