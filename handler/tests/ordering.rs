//! Ordering between policies (`dependsOn`, `examples/depends-on.yaml`) on a sandbox node, with
//! the cluster controller: a route over a bridge, created before the bridge's policy, waits and
//! then applies; a restarted
//! handler re-applies the drifted pair in order; reverts on delete run in reverse order; a cycle
//! is reported on every policy in it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;
#[path = "rollout/fixture.rs"]
mod fixture;

use common::stdout_of;
use fixture::{Fixture, SERIAL};
use k8s_openapi::{
    api::coordination::v1::Lease,
    jiff::{self, Timestamp},
};
use kube::{Api, api::ListParams};
use nmstate_api::{NodeNetworkConfigurationEnactment, condition::find_condition};
use nmstate_handler::rollout::slot_selector;
use nmstate_localenv::testing::{eventually, free_port};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(60);

fn pending_message(enactment: &NodeNetworkConfigurationEnactment) -> Option<(String, String)> {
    let conditions = &enactment.status.as_ref()?.conditions;
    let pending = find_condition(conditions, "Pending").filter(|c| c.is_true())?;
    Some((pending.reason.clone(), pending.message.clone()))
}

/// The order in which the handler's log says it did `what` for each of `policies`.
fn order_in_log(log: &str, what: &str, policies: &[&str]) -> Vec<String> {
    let mut order = Vec::new();
    for line in log.lines().filter(|line| line.contains(what)) {
        for policy in policies {
            if line.contains(&format!("policy={policy}")) && !order.contains(&policy.to_string()) {
                order.push(policy.to_string());
            }
        }
    }
    order
}

/// When the handler's log first says it did `what` for `policy`.
fn logged_at(log: &str, what: &str, policy: &str) -> Option<Timestamp> {
    let line = log
        .lines()
        .find(|line| line.contains(what) && line.contains(&format!("policy={policy}")))?;
    line.split_whitespace().next()?.parse().ok()
}

#[tokio::test]
async fn dependent_policies_wait_apply_in_order_and_revert_in_reverse() {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(1, true).await;
    let _cluster = fixture.start_cluster("writer", free_port());
    let node = fixture.node_name(0);
    let namespace = fixture.namespace.clone();
    // examples/depends-on.yaml: the route's policy, then the bridge's it depends on, named
    // for this test.
    let example = format!("{}/../examples/depends-on.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(example).unwrap();
    let mut documents: Vec<(String, Value, Value)> = serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            let mut policy = Value::deserialize(document).unwrap();
            let name = policy["metadata"]["name"].as_str().unwrap().to_string();
            let spec = policy["spec"].as_object_mut().unwrap();
            let desired = spec.remove("desiredState").unwrap();
            if let Some(Value::Array(names)) = spec.get_mut("dependsOn") {
                for dependency in names {
                    *dependency = json!(format!("{namespace}-{}", dependency.as_str().unwrap()));
                }
            }
            (name, desired, Value::Object(spec.clone()))
        })
        .collect();
    let (bridge_suffix, bridge, bridge_spec) = documents.pop().unwrap();
    let (route_suffix, route, route_spec) = documents.pop().unwrap();
    let bridge_name = format!("{namespace}-{bridge_suffix}");

    // The route first: it waits for the bridge's policy, which does not exist yet.
    let route_policy = fixture.create_policy_with(&route_suffix, route, route_spec).await;
    let enactments = fixture.enactments();
    let route_enactment = format!("{node}.{route_policy}");
    let (reason, message) = eventually("the route waits", SETTLE, || async {
        pending_message(&enactments.get_opt(&route_enactment).await.unwrap()?)
    })
    .await
    .unwrap();
    assert_eq!(reason, "WaitingForDependency");
    assert_eq!(
        message,
        format!("waiting for policy {bridge_name}, which it depends on: no such policy")
    );
    let slots: Api<Lease> = Api::namespaced(fixture.client.clone(), &namespace);
    let held = slots
        .list(&ListParams::default().labels(&slot_selector(&route_policy)))
        .await
        .unwrap();
    assert!(held.items.is_empty(), "a wait holds no slot: {:?}", held.items);

    // The bridge's policy: applied, then the route's, without a failed attempt.
    let created = fixture
        .create_policy_with(&bridge_suffix, bridge, bridge_spec)
        .await;
    assert_eq!(created, bridge_name);
    fixture.wait_for_rollout(&route_policy, SETTLE).await;
    let routed = enactments.get(&route_enactment).await.unwrap().status.unwrap();
    assert_eq!(
        routed.retry_count, None,
        "the route was never tried before the bridge"
    );
    let shown = stdout_of(&fixture.nodes[0], &["ip", "route", "show", "198.51.100.0/24"]);
    assert!(shown.contains("via 192.0.2.254 dev br-dep"), "{shown}");
    let log = std::fs::read_to_string(fixture.log(&node)).unwrap();
    assert_eq!(
        order_in_log(&log, "applying", &[&route_policy, &bridge_name]),
        [bridge_name.clone(), route_policy.clone()]
    );

    // A restarted handler finds the bridge taken down (and the route with it): the bridge's
    // policy is re-applied first (its profile brings the route back), and the route's policy,
    // Available all along, is checked once the bridge's is.
    let mut handler = fixture.handlers[0].take().unwrap();
    handler.terminate(Duration::from_secs(20)).unwrap();
    let log_before = std::fs::read_to_string(fixture.log(&node)).unwrap().len();
    stdout_of(&fixture.nodes[0], &["nmcli", "connection", "down", "br-dep"]);
    let gone = stdout_of(&fixture.nodes[0], &["ip", "route", "show", "198.51.100.0/24"]);
    assert!(gone.is_empty(), "the route went with the bridge: {gone}");
    fixture.handlers[0] = Some(fixture.start_handler(0));
    eventually("the route is back", SETTLE, || async {
        let shown = stdout_of(&fixture.nodes[0], &["ip", "route", "show", "198.51.100.0/24"]);
        shown.contains("dev br-dep").then_some(())
    })
    .await
    .unwrap();
    let log = std::fs::read_to_string(fixture.log(&node)).unwrap();
    let drifted = order_in_log(
        &log[log_before..],
        "drifted from the policy",
        &[&route_policy, &bridge_name],
    );
    assert_eq!(
        drifted.first(),
        Some(&bridge_name),
        "re-applied in order: {drifted:?}"
    );
    fixture.wait_for_rollout(&route_policy, SETTLE).await;
    fixture.wait_for_rollout(&bridge_name, SETTLE).await;

    // A cycle: reported on both policies, never applied.
    let first = format!("{namespace}-first");
    let second = format!("{namespace}-second");
    let empty_bridge =
        |name: &str| json!({"interfaces": [{"name": name, "type": "linux-bridge", "state": "up"}]});
    fixture
        .create_policy_with("first", empty_bridge("br-first"), json!({"dependsOn": [second]}))
        .await;
    fixture
        .create_policy_with("second", empty_bridge("br-second"), json!({"dependsOn": [first]}))
        .await;
    for policy in [&first, &second] {
        fixture
            .wait_for_policy(policy, "Degraded", "the policies depend on each other (", SETTLE)
            .await;
    }
    let conditions = fixture
        .policies()
        .get(&first)
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions;
    let degraded = find_condition(&conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "DependencyCycle");
    assert!(
        degraded
            .message
            .contains(&format!("{first} → {second} → {first}")),
        "{degraded:?}"
    );
    let first_enactment = format!("{node}.{first}");
    let message = eventually("the wait names the cycle", SETTLE, || async {
        let (_, message) = pending_message(&enactments.get_opt(&first_enactment).await.unwrap()?)?;
        message.contains("it never will").then_some(message)
    })
    .await
    .unwrap();
    assert!(
        message.contains(&format!("{first} → {second} → {first}")),
        "{message}"
    );
    let links = stdout_of(&fixture.nodes[0], &["ip", "-br", "link"]);
    assert!(
        !links.contains("br-first") && !links.contains("br-second"),
        "{links}"
    );

    // Both deleted at once: the route is reverted before the bridge it depends on.
    let log_before = std::fs::read_to_string(fixture.log(&node)).unwrap().len();
    fixture
        .delete_policies(&[&bridge_name, &route_policy], SETTLE)
        .await;
    // The handler says a policy was reverted after it removed the enactment, which is what
    // lets the policy go: the line may come a moment after the policy is gone.
    let reverted = || {
        let log = std::fs::read_to_string(fixture.log(&node)).unwrap();
        order_in_log(
            &log[log_before..],
            "deleted: reverted on this node",
            &[&route_policy, &bridge_name],
        )
    };
    let _ = eventually("both reverts logged", Duration::from_secs(10), || async {
        (reverted().len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        reverted(),
        [route_policy.clone(), bridge_name.clone()],
        "reverted in reverse order"
    );
    // The route's revert wakes the bridge's at once, not its own recheck 10 s later.
    let log = std::fs::read_to_string(fixture.log(&node)).unwrap();
    let route_reverted = logged_at(
        &log[log_before..],
        "deleted: reverted on this node",
        &route_policy,
    )
    .unwrap();
    let bridge_reverting = logged_at(&log[log_before..], "deleted: reverting", &bridge_name).unwrap();
    let waited = route_reverted.duration_until(bridge_reverting);
    assert!(
        waited < jiff::SignedDuration::from_secs(5),
        "the bridge's revert began {waited:#} after the route's ended"
    );
    assert!(!stdout_of(&fixture.nodes[0], &["ip", "-br", "link"]).contains("br-dep"));
    fixture.clean_up().await;
}
