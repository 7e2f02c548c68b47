//! Revert on delete (`deletionPolicy: Revert`, `examples/revert-on-delete.yaml`) on a sandbox
//! node, with the cluster controller holding the finalizer: deleting a policy undoes it on the
//! node, back to before its first apply, with what another policy still declares set as it
//! declares it, and the policy goes once the node is done; a node that cannot revert holds the
//! deletion only for the revert timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;
#[path = "rollout/fixture.rs"]
mod fixture;

use common::stdout_of;
use fixture::{Fixture, REVERT_TIMEOUT_SECONDS, SERIAL};
use k8s_openapi::api::core::v1::Event;
use kube::{Api, api::ListParams};
use nmstate_api::labels::REVERT_FINALIZER;
use nmstate_localenv::testing::{eventually, free_port};
use serde_json::{Value, json};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(60);

fn revert() -> Value {
    json!({"deletionPolicy": "Revert"})
}

/// Waits until `command` in the node prints text with `wanted` and without `unwanted`.
async fn node_shows(fixture: &Fixture, command: &[&str], wanted: &str, unwanted: &str) -> String {
    eventually(
        &format!("`{}` shows {wanted:?}", command.join(" ")),
        SETTLE,
        || async {
            let text = stdout_of(&fixture.nodes[0], command);
            (text.contains(wanted) && (unwanted.is_empty() || !text.contains(unwanted))).then_some(text)
        },
    )
    .await
    .unwrap()
}

/// Deletes `policy` and waits until it is gone (the node reverted, the finalizer removed);
/// how long that took.
async fn delete(fixture: &Fixture, policy: &str) -> Duration {
    fixture.delete_policies(&[policy], SETTLE).await
}

#[tokio::test]
async fn deleting_a_policy_that_reverts_undoes_it_on_the_node() {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(1, true).await;
    let _cluster = fixture.start_cluster("writer", free_port());
    let addresses =
        |interface: &'static str| -> [&'static str; 6] { ["ip", "-4", "-br", "addr", "show", interface] };

    // Before: eth1 on DHCP, by a policy that stays; eth2 on DHCP, by a policy deleted at once
    // (`Orphan`, the default: the node keeps it).
    let dhcp = |name: &str| json!({"interfaces": [{"name": name, "type": "ethernet", "state": "up", "ipv4": {"enabled": true, "dhcp": true}}]});
    let base = fixture.create_policy_with("base", dhcp("eth1"), json!({})).await;
    let orphaned = fixture
        .create_policy_with("orphaned", dhcp("eth2"), json!({}))
        .await;
    fixture.wait_for_rollout(&base, SETTLE).await;
    fixture.wait_for_rollout(&orphaned, SETTLE).await;
    delete(&fixture, &orphaned).await;
    node_shows(&fixture, &addresses("eth1"), "10.77.1.", "").await;
    node_shows(&fixture, &addresses("eth2"), "10.77.2.", "").await;

    // examples/revert-on-delete.yaml, a bridge over eth1 with a static address: the cluster
    // controller adds the finalizer before the node applies it.
    let example = format!("{}/../examples/revert-on-delete.yaml", env!("CARGO_MANIFEST_DIR"));
    let example: Value = serde_yaml::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    let mut spec = example["spec"].clone();
    let desired = spec.as_object_mut().unwrap().remove("desiredState").unwrap();
    let bridge = fixture.create_policy_with("bridge", desired, spec).await;
    fixture.wait_for_rollout(&bridge, SETTLE).await;
    let finalizers = fixture.policies().get(&bridge).await.unwrap().metadata.finalizers;
    assert_eq!(finalizers, Some(vec![REVERT_FINALIZER.to_string()]));
    node_shows(
        &fixture,
        &["ip", "-br", "link", "show", "master", "br-test"],
        "eth1",
        "",
    )
    .await;
    let enactment = fixture
        .enactments()
        .get(&format!("{}.{bridge}", fixture.node_name(0)))
        .await
        .unwrap();
    let kept = enactment.status.unwrap().revert_state.unwrap().0;
    eprintln!("revert state kept: {kept}");

    // Deleted: br-test is gone, eth1 is back on DHCP.
    let took = delete(&fixture, &bridge).await;
    eprintln!(
        "bridge reverted and its policy gone in {:.2} s",
        took.as_secs_f64()
    );
    let links = stdout_of(&fixture.nodes[0], &["ip", "-br", "link"]);
    assert!(!links.contains("br-test"), "{links}");
    let eth1 = node_shows(&fixture, &addresses("eth1"), "10.77.1.", "192.0.2.250").await;
    eprintln!("eth1 after the revert: {}", eth1.trim());

    // DHCP to static on eth2, which no other policy declares, twice (two generations); deleted:
    // back to DHCP, not to the first generation's address.
    let static_ip = |ip: &str| {
        json!({"interfaces": [{"name": "eth2", "type": "ethernet", "state": "up",
            "ipv4": {"enabled": true, "dhcp": false, "address": [{"ip": ip, "prefix-length": 24}]}}]})
    };
    let fixed = fixture
        .create_policy_with("static", static_ip("10.77.2.50"), revert())
        .await;
    fixture.wait_for_rollout(&fixed, SETTLE).await;
    node_shows(&fixture, &addresses("eth2"), "10.77.2.50/24", "").await;
    let patch = json!({"spec": {"desiredState": static_ip("10.77.2.51")}});
    fixture
        .policies()
        .patch(&fixed, &Default::default(), &kube::api::Patch::Merge(&patch))
        .await
        .unwrap();
    fixture.wait_for_rollout(&fixed, SETTLE).await;
    node_shows(&fixture, &addresses("eth2"), "10.77.2.51/24", "10.77.2.50/").await;
    let took = delete(&fixture, &fixed).await;
    eprintln!("static address reverted in {:.2} s", took.as_secs_f64());
    let eth2 = node_shows(&fixture, &addresses("eth2"), "10.77.2.1", "10.77.2.5").await;
    eprintln!("eth2 after the revert: {}", eth2.trim());

    // Two policies on one bridge: deleting the one that reverts leaves the bridge to the other.
    let shared = json!({"interfaces": [{"name": "br-shared", "type": "linux-bridge", "state": "up",
        "bridge": {"options": {"stp": {"enabled": false}}, "port": []}}]});
    let first = fixture
        .create_policy_with("first", shared.clone(), revert())
        .await;
    fixture.wait_for_rollout(&first, SETTLE).await;
    let second = fixture.create_policy_with("second", shared, json!({})).await;
    fixture.wait_for_rollout(&second, SETTLE).await;
    delete(&fixture, &first).await;
    let links = stdout_of(&fixture.nodes[0], &["ip", "-br", "link", "show", "br-shared"]);
    assert!(links.starts_with("br-shared"), "the bridge stays: {links}");

    // A node that cannot revert (its handler stopped) holds the deletion only for the revert
    // timeout; then it is skipped, with a Warning event naming it, and keeps what it has.
    let stuck = fixture
        .create_policy_with(
            "stuck",
            json!({"interfaces": [{"name": "br-stuck", "type": "linux-bridge", "state": "up"}]}),
            revert(),
        )
        .await;
    fixture.wait_for_rollout(&stuck, SETTLE).await;
    let mut handler = fixture.handlers[0].take().unwrap();
    handler.terminate(Duration::from_secs(20)).unwrap();
    let took = delete(&fixture, &stuck).await;
    eprintln!(
        "deletion held {:.2} s by a node without a handler",
        took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_secs(REVERT_TIMEOUT_SECONDS - 1),
        "held for the timeout: {took:?}"
    );
    let events: Api<Event> = Api::namespaced(fixture.client.clone(), "default");
    let about = ListParams::default().fields(&format!("involvedObject.name={stuck}"));
    let skipped: Vec<Event> = events
        .list(&about)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|event| event.reason.as_deref() == Some("RevertSkipped"))
        .collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].type_.as_deref(), Some("Warning"));
    let message = skipped[0].message.clone().unwrap_or_default();
    assert!(
        message.starts_with(&format!("not reverted on {}: ", fixture.node_name(0))),
        "{message}"
    );
    let links = stdout_of(&fixture.nodes[0], &["ip", "-br", "link", "show", "br-stuck"]);
    assert!(links.starts_with("br-stuck"), "not reverted: {links}");

    fixture.clean_up().await;
}
