use super::*;
use std::collections::BTreeMap;

#[test]
fn a_holder_stops_counting_on_its_slot_a_quarter_of_the_lease_before_it_lapses() {
    let at = |seconds: f64| Timestamp::from_millisecond((seconds * 1000.0) as i64).unwrap();
    for (duration, renewed, deadline) in [(4, 100.0, 103.0), (30, 100.0, 122.5), (2, 10.0, 11.5)] {
        let duration = Duration::from_secs(duration);
        let lease = leases::held_by("p.rollout-0", BTreeMap::new(), "node01", duration, at(renewed));
        assert_eq!(
            fence_deadline(&lease, duration),
            Some(at(deadline)),
            "{duration:?}"
        );
        // Before the others could take it: they wait for the expiry.
        assert_eq!(leases::live_holder(&lease, at(deadline)), Some("node01"));
    }
    let mut released = leases::held_by(
        "p.rollout-0",
        BTreeMap::new(),
        "",
        Duration::from_secs(4),
        at(1.0),
    );
    released.spec.as_mut().unwrap().holder_identity = None;
    assert_eq!(fence_deadline(&released, Duration::from_secs(4)), None);
}

#[test]
fn a_holder_counts_on_its_slot_while_it_renews_it_until_the_fence_deadline() {
    let at = |seconds: f64| Timestamp::from_millisecond((seconds * 1000.0) as i64).unwrap();
    let duration = Duration::from_secs(4);
    let lease = leases::held_by("p.rollout-0", BTreeMap::new(), "node01", duration, at(100.0));
    let mut released = lease.clone();
    released.spec.as_mut().unwrap().holder_identity = None;
    for (lease, renewing, now, counts) in [
        (&lease, true, 100.5, true),
        (&lease, true, 102.9, true),
        (&lease, false, 100.5, false), // lost: someone else wrote it
        (&lease, true, 103.0, false),  // renewing in vain through an outage
        (&lease, true, 120.0, false),
        (&released, true, 100.5, false),
    ] {
        assert_eq!(
            still_counts(lease, renewing, duration, at(now)),
            counts,
            "renewing {renewing}, at {now}"
        );
    }
}

fn percent(text: &str) -> IntOrString {
    IntOrString::String(text.into())
}

#[test]
fn max_unavailable_scales_as_upstream() {
    let limit = |value: Option<IntOrString>, nodes| max_unavailable(value.as_ref(), nodes).limit;
    assert_eq!(limit(Some(percent("50%")), 5), 3);
    assert_eq!(limit(Some(percent("50%")), 6), 3);
    assert_eq!(limit(Some(IntOrString::Int(3)), 6), 3);
    assert_eq!(limit(Some(percent("0%")), 6), 1);
    assert_eq!(limit(Some(IntOrString::Int(0)), 6), 1);
    assert_eq!(limit(None, 4), 2);
    assert_eq!(limit(None, 0), 1);
    assert_eq!(limit(Some(IntOrString::Int(-2)), 4), 1);
}

#[test]
fn an_unparsable_max_unavailable_falls_back_to_the_default_and_says_why() {
    let result = max_unavailable(Some(&percent("asdf")), 4);
    assert_eq!(result.limit, 2);
    assert!(result.invalid.unwrap().contains("\"asdf\""));
    assert!(max_unavailable(Some(&percent("42")), 4).invalid.is_some());
}

fn slot(holder: &str, renewed: i64, generation: i64, failed: bool) -> Lease {
    let at = Timestamp::from_second(renewed).unwrap();
    let mut lease = leases::held_by(
        "web.rollout-0",
        BTreeMap::new(),
        holder,
        Duration::from_secs(10),
        at,
    );
    lease
        .annotations_mut()
        .insert(labels::POLICY_GENERATION.into(), generation.to_string());
    if failed {
        lease
            .annotations_mut()
            .insert(labels::ROLLOUT_OUTCOME.into(), "failed".into());
    }
    lease
}

#[test]
fn slots_are_busy_until_they_expire_and_failed_ones_only_for_their_generation() {
    let now = Timestamp::from_second(1_000).unwrap();
    // A lease of 10 s renewed at 995 expires at 1005; the slot is free a second later.
    let until = Timestamp::from_second(1_006).unwrap();
    assert_eq!(
        slot_state(&slot("node02", 995, 3, false), "node01", 3, now),
        Slot::Busy { until }
    );
    assert_eq!(
        slot_state(&slot("node02", 990, 3, false), "node01", 3, now),
        Slot::Busy {
            until: Timestamp::from_second(1_001).unwrap()
        },
        "expired at 1000: its holder may still be saying it stopped"
    );
    assert_eq!(
        slot_state(&slot("node02", 989, 3, false), "node01", 3, now),
        Slot::Free
    );
    assert_eq!(
        slot_state(&slot("node02", 985, 3, false), "node01", 3, now),
        Slot::Free
    );
    assert_eq!(
        slot_state(&slot("node01", 985, 2, false), "node01", 3, now),
        Slot::Mine
    );
    assert_eq!(
        slot_state(&slot("node02", 100, 3, true), "node01", 3, now),
        Slot::Failed {
            holder: "node02".into()
        }
    );
    assert_eq!(
        slot_state(&slot("node02", 100, 2, true), "node01", 3, now),
        Slot::Free
    );
    let mut released = slot("node02", 995, 3, false);
    released.spec.as_mut().unwrap().holder_identity = None;
    assert_eq!(slot_state(&released, "node01", 3, now), Slot::Free);
}

#[test]
fn after_an_outage_of_writes_an_expired_slot_stays_busy_for_one_lease() {
    let now = Timestamp::from_second(1_000).unwrap();
    let expired = slot("node02", 985, 3, false); // lease of 10 s, expired at 995
    let seen = |since: i64| Sight::Since(Timestamp::from_second(since).unwrap());
    assert_eq!(slot_state_seen(&expired, "node01", 3, now, seen(500)), Slot::Free);
    // This node's writes went through again at 998: the holder gets until 1008 to renew (and
    // a second to say it stopped).
    let until = Timestamp::from_second(1_009).unwrap();
    assert_eq!(
        slot_state_seen(&expired, "node01", 3, now, seen(998)),
        Slot::Busy { until }
    );
    // While its own writes fail, it judges no one.
    assert!(matches!(
        slot_state_seen(&expired, "node01", 3, now, Sight::Lost),
        Slot::Busy { .. }
    ));
}

#[test]
fn a_slot_handed_over_moments_ago_is_held_without_a_write() {
    let now = Timestamp::from_second(1_000).unwrap();
    let lease = Duration::from_secs(10); // renewed every 3.3 s: fresh for 1.6 s
    let handed = |holder: &str, renewed: i64, generation: i64, failed: bool| {
        handed_over(
            &slot(holder, renewed, generation, failed),
            "node01",
            3,
            now,
            lease,
        )
    };
    assert!(handed("node01", 1_000, 3, false));
    assert!(handed("node01", 999, 3, false));
    assert!(
        !handed("node01", 998, 3, false),
        "renewed too long ago: taken with a write"
    );
    assert!(!handed("node02", 1_000, 3, false), "someone else's");
    assert!(!handed("node01", 1_000, 2, false), "for another generation");
    assert!(!handed("node01", 1_000, 3, true), "kept failed");
}

#[test]
fn a_node_handed_one_slot_holds_it_as_the_watch_delivered_it() {
    let now = Timestamp::from_second(1_000).unwrap();
    let lease = Duration::from_secs(10);
    let named = |name: &str, mut lease: Lease| {
        lease.metadata.name = Some(name.into());
        lease
    };
    let handed = named("web.rollout-0", slot("node01", 1_000, 3, false));
    let second = named("web.rollout-1", slot("node01", 1_000, 3, false));
    let stale = named("web.rollout-1", slot("node01", 990, 3, false));
    let other = named("web.rollout-1", slot("node02", 1_000, 3, false));
    let older = named("web.rollout-1", slot("node01", 1_000, 2, false));
    let name = |seen: &[&Lease]| {
        handed_slot(seen.iter().copied(), "node01", 3, now, lease).map(ResourceExt::name_any)
    };
    assert_eq!(name(&[]), None);
    assert_eq!(name(&[&handed]), Some("web.rollout-0".into()));
    assert_eq!(name(&[&other, &handed]), Some("web.rollout-0".into()));
    assert_eq!(name(&[&handed, &older]), Some("web.rollout-0".into()));
    assert_eq!(name(&[&stale]), None, "held since before: taken with a write");
    assert_eq!(
        name(&[&handed, &second]),
        None,
        "two handed at once: one goes back, after a survey"
    );
}

#[test]
fn a_slot_wakes_a_waiting_node_when_freed_handed_to_it_or_kept_failed() {
    let held = |holder: &str, failed: bool| slot(holder, 995, 3, failed);
    let mut released = held("node02", false);
    released.spec.as_mut().unwrap().holder_identity = None;
    let mut emptied = held("node02", false);
    emptied.spec.as_mut().unwrap().holder_identity = Some(String::new());
    for (lease, deleted, waiting, expected, what) in [
        (held("node01", false), false, false, true, "handed to it"),
        (
            held("node01", false),
            false,
            true,
            true,
            "handed to it while it waits",
        ),
        (
            held("node02", false),
            false,
            true,
            false,
            "taken, handed on or renewed",
        ),
        (held("node02", true), false, true, true, "kept failed"),
        (
            held("node02", true),
            false,
            false,
            false,
            "kept failed, nobody waiting here",
        ),
        (released.clone(), false, true, true, "given back"),
        (emptied, false, true, true, "given back (empty holder)"),
        (released, false, false, false, "given back, nobody waiting here"),
        (held("node02", false), true, true, true, "deleted"),
        (
            held("node01", false),
            true,
            true,
            true,
            "its own, deleted, while it waits",
        ),
        (
            held("node02", false),
            true,
            false,
            false,
            "deleted, nobody waiting here",
        ),
    ] {
        assert_eq!(wakes(&lease, "node01", deleted, waiting), expected, "{what}");
    }
}
