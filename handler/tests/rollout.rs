//! Rolling policies out across several sandbox nodes, each with its own NetworkManager and
//! handler, against the real API server, with the cluster controller writing policy statuses:
//! never more nodes applying than `maxUnavailable`, failures that abort the rest, handlers that
//! are killed or paused mid-apply, a policy that selects no node, a status writer restarted
//! mid-rollout, the metrics, a slot marked failed or given back after a renewal cut off
//! mid-flight moved it on, and a slot handed to a node that no longer applies given back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;
#[path = "rollout/fixture.rs"]
mod fixture;

use fixture::{Fixture, GROUP, Recorder, SERIAL, audit_size, bridge, scrape, value_of, writes_since};
use k8s_openapi::{
    api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp,
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use nix::sys::signal::Signal;
use nmstate_handler::rollout::{Admission, Rollout, Slot, slot_name, slot_state};
use nmstate_localenv::testing::{eventually, free_port, kubectl};
use serde_json::json;
use std::time::Duration;

const ROLLOUT: Duration = Duration::from_secs(120);

/// Rolls `bridge_name` out with `max_unavailable` and checks no instant had more than `limit`
/// nodes applying.
async fn roll_out(
    fixture: &mut Fixture,
    suffix: &str,
    max_unavailable: serde_json::Value,
    limit: usize,
) -> String {
    let name = fixture.policy_name(suffix);
    let recorder = Recorder::start(&fixture.client, &name).await;
    let audit = fixture.env.control_plane().dir().join("audit.log");
    let offset = audit_size(&audit);
    fixture
        .create_policy(suffix, bridge(&format!("br-{suffix}")), max_unavailable)
        .await;
    let count = fixture.nodes.len();
    let outcomes = fixture.wait_for_rollout(&name, ROLLOUT).await;
    assert_eq!(outcomes.len(), count);
    // Each slot freed went to one node waiting its turn: handed on (an update), none of them
    // racing for it (a refused create or update).
    let writes = writes_since(&audit, offset, &name);
    let slot_writes = |kind: &str| writes.get(&format!("leases {kind}")).copied().unwrap_or(0);
    assert_eq!(
        slot_writes("create (409)") + slot_writes("update (409)"),
        0,
        "lost races: {writes:?}"
    );
    assert!(
        slot_writes("create") < count,
        "slots handed on, not given back and created again: {writes:?}"
    );
    let observed = recorder.observed.lock().unwrap();
    println!("{suffix}: {observed:?}");
    assert!(
        observed.max_progressing <= limit,
        "more than {limit} nodes applied at once: {observed:?}"
    );
    assert_eq!(
        observed.ever_progressing.len(),
        count,
        "every node applied: {observed:?}"
    );
    assert!(
        !observed.ever_pending.is_empty(),
        "some node waited for a slot: {observed:?}"
    );
    name
}

#[tokio::test(flavor = "multi_thread")]
async fn rollouts_never_exceed_max_unavailable_and_the_metrics_follow() {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(4, true).await;
    let port = free_port();
    let _cluster = fixture.start_cluster("writer", port);
    let node0 = fixture.node_name(0);
    let bridges = format!("kubernetes_nmstate_network_interfaces{{type=\"linux-bridge\",node=\"{node0}\"}}");
    let before = eventually(
        "metrics served by the leader",
        Duration::from_secs(30),
        || async {
            let text = scrape(port).await;
            text.contains("kubernetes_nmstate_policies_status")
                .then_some(text)
        },
    )
    .await
    .unwrap();
    assert_eq!(value_of(&before, &bridges), None, "no bridge yet: {before}");

    let one = roll_out(&mut fixture, "one", json!(1), 1).await;
    roll_out(&mut fixture, "half", json!("50%"), 2).await;

    let wait = kubectl(&fixture.env)
        .args([
            "wait",
            &format!("nncp/{one}"),
            "--for",
            "condition=Available",
            "--timeout=30s",
        ])
        .output()
        .unwrap();
    assert!(wait.status.success(), "{}", String::from_utf8_lossy(&wait.stderr));
    let listed = kubectl(&fixture.env)
        .args(["get", "nncp", &one])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("4/4 nodes successfully configured"), "{listed}");

    // The node state of node0 shows both bridges, and the gauges follow.
    let after = eventually(
        "the gauges count the new bridges",
        Duration::from_secs(60),
        || async {
            let text = scrape(port).await;
            (value_of(&text, &bridges) == Some(2.0)).then_some(text)
        },
    )
    .await
    .unwrap();
    let available = format!("kubernetes_nmstate_enactments_status{{node=\"{node0}\",status=\"Available\"}}");
    assert_eq!(value_of(&after, &available), Some(2.0), "{after}");
    assert!(value_of(&after, "kubernetes_nmstate_policies_status{status=\"Available\"}").unwrap() >= 2.0);
    let reconciles = "kubernetes_nmstate_reconcile_total{controller=\"policy-status\",result=\"success\"}";
    assert!(value_of(&after, reconciles).unwrap() > 0.0, "{after}");
    assert!(after.contains("kubernetes_nmstate_reconcile_duration_seconds_bucket"));
    // Each of the 8 applies (2 policies, 4 nodes) reported its API-server probe.
    let probes = "kubernetes_nmstate_enactment_probes{probe=\"api-server\",result=\"Passed\"}";
    assert!(value_of(&after, probes).unwrap() >= 8.0, "{after}");
    fixture.clean_up().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn once_failures_use_up_the_budget_the_other_nodes_abort() {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(4, true).await;
    let _cluster = fixture.start_cluster("writer", free_port());
    let name = fixture.policy_name("broken");
    let recorder = Recorder::start(&fixture.client, &name).await;
    let missing = json!({"interfaces": [{"name": "missing0", "type": "ethernet", "state": "up"}]});
    fixture.create_policy("broken", missing, json!(1)).await;

    let outcomes = fixture
        .wait_for_outcomes(&name, &["Failing", "Aborted"], ROLLOUT)
        .await;
    let failing: Vec<_> = outcomes.iter().filter(|(_, o)| *o == "Failing").collect();
    assert_eq!(failing.len(), 1, "{outcomes:?}");
    fixture
        .wait_for_policy(
            &name,
            "Degraded",
            "1/4 nodes failed to configure, 3 nodes aborted configuration",
            ROLLOUT,
        )
        .await;
    {
        let observed = recorder.observed.lock().unwrap();
        assert_eq!(
            observed.ever_progressing.len(),
            1,
            "only the failing node ever applied the policy: {observed:?}"
        );
        assert!(observed.ever_progressing.contains(failing[0].0));
    }
    fixture.clean_up().await;
}

/// Stops (by `signal`) the handler of the first node that starts applying; checks the others
/// go on, then resumes it (restart or SIGCONT) and checks the policy converges.
async fn stall_one_handler(fixture: &mut Fixture, suffix: &str, signal: Signal) {
    let name = fixture.policy_name(suffix);
    let recorder = Recorder::start(&fixture.client, &name).await;
    fixture
        .create_policy(suffix, bridge(&format!("br-{suffix}")), json!(1))
        .await;
    let first = recorder.first_applying().await;
    let stalled = fixture.index_of(&first);
    fixture.handlers[stalled].as_ref().unwrap().signal(signal);
    println!("{signal} sent to the handler of {first}");
    // The others go on once the stalled node's lease expires (4 s).
    let enactments = fixture.enactments();
    let others: Vec<String> = (0..fixture.nodes.len())
        .filter(|i| *i != stalled)
        .map(|i| fixture.node_name(i))
        .collect();
    eventually("the other nodes applied", Duration::from_secs(60), || async {
        for node in &others {
            let enactment = enactments.get_opt(&format!("{node}.{name}")).await.unwrap()?;
            (common::true_condition(&enactment)?.type_ == "Available").then_some(())?;
        }
        Some(())
    })
    .await
    .unwrap();
    match signal {
        Signal::SIGKILL => {
            let restarted = fixture.start_handler(stalled);
            fixture.handlers[stalled] = Some(restarted);
        }
        _ => fixture.handlers[stalled]
            .as_ref()
            .unwrap()
            .signal(Signal::SIGCONT),
    }
    fixture.wait_for_rollout(&name, ROLLOUT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_or_paused_handler_frees_its_slot_and_resumes() {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(3, true).await;
    let _cluster = fixture.start_cluster("writer", free_port());
    stall_one_handler(&mut fixture, "killed", Signal::SIGKILL).await;
    stall_one_handler(&mut fixture, "paused", Signal::SIGSTOP).await;
    fixture.clean_up().await;
}

/// Also: an unusable `maxUnavailable` falls back to the default, and an Event says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_policy_selecting_no_node_is_ignored_until_a_node_matches() {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(1, false).await;
    let _cluster = fixture.start_cluster("writer", free_port());
    let name = fixture
        .create_policy("late", bridge("br-late"), json!(null))
        .await;
    fixture
        .wait_for_policy(&name, "Ignored", "Policy does not match any node", ROLLOUT)
        .await;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(fixture.client.clone());
    let label = json!({"metadata": {"labels": {GROUP: fixture.namespace}}});
    nodes
        .patch(
            &fixture.node_name(0),
            &PatchParams::default(),
            &Patch::Merge(&label),
        )
        .await
        .unwrap();
    fixture
        .wait_for_policy(&name, "Available", "1/1 nodes successfully configured", ROLLOUT)
        .await;
    fixture.clean_up().await;
}

/// A server that runs the CRD's CEL rules (1.25+) refuses `maxUnavailable: asdf` when it is
/// written. Older servers store it (and so may a newer one, for a policy stored before the rule,
/// as upstream's CRD has none): the handler then uses the default and says so in an event.
#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_max_unavailable_is_refused_or_reported_in_an_event() {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(1, true).await;
    let version = fixture.client.apiserver_version().await.unwrap();
    if nmstate_api::crd::server_minor(&version) >= 25 {
        let name = fixture.policy_name("asdf");
        let mut object = common::policy(&name, json!({GROUP: fixture.namespace}), bridge("br-asdf"));
        object.spec.max_unavailable = serde_json::from_value(json!("asdf")).unwrap();
        let refused = fixture
            .policies()
            .create(&PostParams::default(), &object)
            .await
            .expect_err("the CRD's rule refuses it");
        assert!(
            refused.to_string().contains(
                "spec.maxUnavailable: Invalid value: \"asdf\": maxUnavailable must be a non-negative \
                 integer or a percentage from 0% to 100%"
            ),
            "{refused}"
        );
        eprintln!("Kubernetes {} refused it: {refused}", version.git_version);
        fixture.clean_up().await;
        return;
    }
    let _cluster = fixture.start_cluster("writer", free_port());
    let name = fixture
        .create_policy("asdf", bridge("br-asdf"), json!("asdf"))
        .await;
    fixture
        .wait_for_policy(&name, "Available", "1/1 nodes successfully configured", ROLLOUT)
        .await;
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(fixture.client.clone(), "default");
    let about = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let reasons: Vec<(String, String)> = events
        .list(&about)
        .await
        .unwrap()
        .into_iter()
        .map(|event| {
            (
                event.reason.unwrap_or_default(),
                event.message.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|(reason, message)| reason == "InvalidMaxUnavailable"
                && message.contains("\"asdf\"")
                && message.contains("using the default 50%")),
        "{reasons:?}"
    );
    fixture.clean_up().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_status_writer_takes_over_mid_rollout_and_gets_it_right() {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(4, true).await;
    let mut first = fixture.start_cluster("writer-a", free_port());
    let leading = eventually("writer-a leads", Duration::from_secs(30), || async {
        first.log().contains("leading").then_some(())
    })
    .await;
    leading.unwrap();
    let mut second = fixture.start_cluster("writer-b", free_port());
    let name = fixture
        .create_policy("takeover", bridge("br-takeover"), json!(1))
        .await;
    fixture
        .wait_for_policy(&name, "Progressing", "Policy is progressing", ROLLOUT)
        .await;
    first.kill();
    println!("killed writer-a mid-rollout");
    fixture
        .wait_for_policy(&name, "Available", "4/4 nodes successfully configured", ROLLOUT)
        .await;
    let second_log = std::fs::read_to_string(fixture.log("writer-b")).unwrap();
    assert!(
        second_log.contains("leading"),
        "writer-b took over:\n{second_log}"
    );
    // A leader stops on SIGTERM, handing its lease back.
    let status = second
        .terminate(Duration::from_secs(10))
        .expect("writer-b stops on SIGTERM");
    assert!(status.success(), "writer-b exited with {status}");
    fixture.clean_up().await;
}

/// A renewal cut off mid-flight (its task aborted once the API server had stored it) leaves the
/// holder's copy of its slot one version behind. Marking the slot failed and giving it back
/// must still work: once a lost failure mark let the slot expire, and a second node applied a
/// broken policy under `maxUnavailable: 1`.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_is_marked_failed_and_released_after_a_renewal_moved_it_on() {
    let mut fixture = Fixture::start(0, true).await;
    let name = fixture.create_policy("slot", bridge("br-slot"), json!(1)).await;
    let policy = fixture.policies().get(&name).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(fixture.client.clone(), &fixture.namespace);
    let slot = slot_name(&name, 0);
    let rollout = Rollout::new(
        fixture.client.clone(),
        &fixture.namespace,
        "node-a",
        Duration::from_secs(60),
    );
    // What a renewal cut off mid-flight leaves behind: the stored lease moved on.
    let renewed_behind_the_holders_back = async || {
        let renewal = json!({"spec": {"renewTime": MicroTime(Timestamp::now())}});
        leases
            .patch(&slot, &PatchParams::default(), &Patch::Merge(renewal))
            .await
            .unwrap();
    };

    let survey = rollout.survey(&policy, |_, _| true).await.unwrap();
    let granted = rollout.acquire(&policy, 1, &survey).await.unwrap();
    assert_eq!(granted, Admission::Granted);
    renewed_behind_the_holders_back().await;
    rollout.mark_failed(&name).await;
    let lease = leases.get(&slot).await.unwrap();
    let failed = Slot::Failed {
        holder: "node-a".into(),
    };
    let written = (lease.metadata.annotations.as_ref(), lease.spec.as_ref());
    assert_eq!(
        slot_state(&lease, "node-b", 1, Timestamp::now()),
        failed,
        "{written:?}"
    );

    let survey = rollout.survey(&policy, |_, _| true).await.unwrap();
    let granted = rollout.acquire(&policy, 2, &survey).await.unwrap();
    assert_eq!(
        granted,
        Admission::Granted,
        "a new generation frees the failed slot"
    );
    renewed_behind_the_holders_back().await;
    rollout.release(&name).await;
    let left = leases.get_opt(&slot).await.unwrap();
    assert!(left.is_none(), "the slot was given back: {left:?}");
    fixture.clean_up().await;
}

/// A slot handed to a node that then no longer applies the policy (unlabelled while it waited,
/// or already in the desired state) goes back: the soak once found one left over after the node
/// that was handed it was unlabelled before it took it up.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_handed_to_a_node_that_no_longer_applies_goes_back() {
    let mut fixture = Fixture::start(0, true).await;
    let name = fixture
        .create_policy("handed", bridge("br-handed"), json!(1))
        .await;
    let policy = fixture.policies().get(&name).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(fixture.client.clone(), &fixture.namespace);
    let rollout = |node: &str| {
        Rollout::new(
            fixture.client.clone(),
            &fixture.namespace,
            node,
            Duration::from_secs(60),
        )
    };
    let (giver, taker) = (rollout("node-a"), rollout("node-b"));
    let survey = giver.survey(&policy, |_, _| true).await.unwrap();
    assert_eq!(
        giver.acquire(&policy, 1, &survey).await.unwrap(),
        Admission::Granted
    );
    // What a handoff writes: node-b holds the slot, and its watch says so.
    let slot = slot_name(&name, 0);
    let handed = json!({"spec": {"holderIdentity": "node-b", "renewTime": MicroTime(Timestamp::now())}});
    let handed = leases
        .patch(&slot, &PatchParams::default(), &Patch::Merge(handed))
        .await
        .unwrap();
    taker.saw_slot(&handed, false);

    taker.release_unclaimed(&policy, 1).await;
    let left = leases.get_opt(&slot).await.unwrap();
    assert!(left.is_none(), "the slot was given back: {left:?}");
    fixture.clean_up().await;
}
