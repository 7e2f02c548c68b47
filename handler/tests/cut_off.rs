//! A node cut off from the API server (its management link down at the switch) while it holds
//! a place in a rollout and applies: unable to renew its place, it rolls its change back on
//! the node itself before the place lapses (sooner than its probes would give up), so no other
//! node starts applying while the change is still there; the other nodes finish; once the link
//! is back it converges like the rest. No slot is left, no handler exits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;
#[path = "rollout/fixture.rs"]
mod fixture;

use fixture::{Fixture, Recorder, SERIAL, bridge};
use nmstate_handler::node_state_reporter::REFRESHING;
use nmstate_localenv::SandboxNode;
use nmstate_localenv::testing::{eventually, free_port};
use serde_json::json;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

const ROLLOUT: Duration = Duration::from_secs(120);

/// Whether `interface` exists on the node, asked of its kernel (not of the API, out of reach).
fn has_link(fixture: &Fixture, index: usize, interface: &str) -> bool {
    link_present(&fixture.nodes[index], interface)
}

fn link_present(node: &SandboxNode, interface: &str) -> bool {
    // A node already torn down (a failing test) has no links.
    node.command("ip").is_ok_and(|mut command| {
        command
            .args(["link", "show", interface])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_cut_off_while_applying_rolls_back_frees_its_place_and_converges_when_back() {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(3, true).await;
    let _cluster = fixture.start_cluster("writer", free_port());
    let name = format!("{}-cut", fixture.namespace);
    let recorder = Recorder::start(&fixture.client, &name).await;
    fixture.create_policy("cut", bridge("br-cut"), json!(1)).await;

    // Cut off once it holds its place and nmstate has changed nothing yet but the checkpoint:
    // the probes, after the change, are what must notice.
    let deadline = Instant::now() + Duration::from_secs(60);
    let cut = loop {
        let in_checkpoint = fixture.handlers.iter().position(|handler| {
            handler
                .as_ref()
                .is_some_and(|h| h.log().contains("Created checkpoint"))
        });
        if let Some(index) = in_checkpoint {
            break index;
        }
        assert!(Instant::now() < deadline, "no node took a checkpoint");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    fixture.nodes[cut].set_management_link(false).unwrap();
    let cut_at = Instant::now();
    // When the bridge was last seen on the cut-off node, sampled every 20 ms while it is away.
    let watching = Arc::new(AtomicBool::new(true));
    let last_present: Arc<Mutex<Option<Instant>>> = Arc::default();
    let sampler = {
        let (node, watching, last_present) = (
            fixture.nodes[cut].node.clone(),
            watching.clone(),
            last_present.clone(),
        );
        std::thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                if link_present(&node, "br-cut") {
                    *last_present.lock().unwrap() = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let cut_name = fixture.node_name(cut);
    println!("{cut_name} cut off while applying");

    // On the node itself: the bridge comes, the place cannot be renewed, and it goes again.
    let mut applied = false;
    eventually(
        "the bridge applied and rolled back on the cut-off node",
        Duration::from_secs(60),
        || {
            let present = has_link(&fixture, cut, "br-cut");
            applied |= present;
            let rolled_back = applied && !present;
            async move { rolled_back.then_some(()) }
        },
    )
    .await
    .unwrap();
    let rolled_back = cut_at.elapsed();

    // Its place lapses: the others apply while it is still away.
    let enactments = fixture.enactments();
    let others: Vec<String> = (0..fixture.nodes.len())
        .filter(|index| *index != cut)
        .map(|index| fixture.node_name(index))
        .collect();
    eventually("the other nodes applied", ROLLOUT, || async {
        for node in &others {
            let enactment = enactments.get_opt(&format!("{node}.{name}")).await.ok()??;
            (common::true_condition(&enactment)?.type_ == "Available").then_some(())?;
        }
        Some(())
    })
    .await
    .unwrap();
    // The cut-off node writes nothing: the last Available the recorder saw is theirs.
    let others_done = recorder
        .observed
        .lock()
        .unwrap()
        .last_available
        .map(|at| at.saturating_duration_since(cut_at))
        .unwrap_or_default();
    assert!(
        !has_link(&fixture, cut, "br-cut"),
        "the cut-off node applied while away"
    );

    watching.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let last_present = last_present
        .lock()
        .unwrap()
        .expect("the bridge was seen on the cut-off node");
    fixture.nodes[cut].set_management_link(true).unwrap();
    let back = Instant::now();
    fixture.wait_for_rollout(&name, ROLLOUT).await;
    let converged = back.elapsed();
    assert!(
        has_link(&fixture, cut, "br-cut"),
        "the bridge on the node once back"
    );

    // No other node applied while the cut-off node's change was still in place. Its enactment
    // keeps saying Progressing while it cannot write: that is the last status it reported, not
    // a change still there.
    let history = recorder.observed.lock().unwrap().progressing_history.clone();
    let others_started = history
        .iter()
        .find(|(_, nodes)| nodes.iter().any(|node| *node != cut_name))
        .map(|(at, _)| *at)
        .expect("the other nodes applied");
    assert!(
        others_started > last_present,
        "another node applied {:.2} s before the cut-off node's change was gone",
        last_present.duration_since(others_started).as_secs_f64()
    );
    let reachable_at_once = history
        .iter()
        .map(|(_, nodes)| nodes.iter().filter(|node| **node != cut_name).count())
        .max()
        .unwrap_or(0);
    assert!(
        reachable_at_once <= 1,
        "{reachable_at_once} nodes applied at once: {history:?}"
    );
    let log = fixture.handlers[cut].as_ref().unwrap().log();
    assert!(
        log.contains("the rollout slot could not be renewed and is about to lapse; rolling back"),
        "rolled back because its place was about to lapse: {log}"
    );
    fixture.wait_for_slots_given_back(&name).await;
    for handler in fixture.handlers.iter_mut().flatten() {
        assert!(handler.is_running(), "a handler exited: {}", handler.log());
    }
    println!(
        "cut off while applying -> rolled back on the node: {:.1} s (bridge last seen {:.2} s); -> another node applying: {:.2} s; -> the other nodes Available: {:.1} s; link back -> all Available: {:.1} s",
        rolled_back.as_secs_f64(),
        last_present.duration_since(cut_at).as_secs_f64(),
        others_started.saturating_duration_since(cut_at).as_secs_f64(),
        others_done.as_secs_f64(),
        converged.as_secs_f64()
    );
    fixture.clean_up().await;
}

/// A policy that cuts its own node off (eth0 moved to another network): the node cannot renew
/// its place, rolls back before it lapses, finds the API server again, and counts that as a
/// failed attempt (a failed `api-server` probe) while it still holds its place: the policy ends
/// Degraded like upstream's after a failed probe, instead of being retried for ever as a lost
/// place, and eth0 keeps its address.
#[tokio::test(flavor = "multi_thread")]
async fn a_policy_that_cuts_its_node_off_is_rolled_back_and_fails() {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(1, true).await;
    let _cluster = fixture.start_cluster("writer", free_port());
    let name = format!("{}-self", fixture.namespace);
    let elsewhere = json!({"interfaces": [{"name": "eth0", "type": "ethernet", "state": "up",
        "ipv4": {"enabled": true, "dhcp": false, "address": [{"ip": "10.99.0.2", "prefix-length": 24}]}}]});
    fixture.create_policy("self", elsewhere, json!(1)).await;
    let started = Instant::now();
    let outcomes = fixture.wait_for_outcomes(&name, &["Failing"], ROLLOUT).await;
    let failed = started.elapsed();
    fixture
        .wait_for_policy(&name, "Degraded", "1/1 nodes failed to configure", ROLLOUT)
        .await;
    let enactment = fixture
        .enactments()
        .get(&format!("{}.{name}", fixture.node_name(0)))
        .await
        .unwrap();
    let failing = common::true_condition(&enactment).unwrap();
    assert!(
        failing.message.contains("failed running probe 'api-server'"),
        "{failing:?}"
    );
    let address = fixture.nodes[0].address();
    let eth0 = common::stdout_of(&fixture.nodes[0], &["ip", "-4", "-o", "address", "show", "eth0"]);
    assert!(eth0.contains(&address), "eth0 keeps {address}: {eth0}");
    // NetworkManager signalled the change seconds before the rollback: the node state was
    // refreshed in between only as the apply asked (with the state nmstate verified), not for
    // the signals, while the change was not yet decided.
    let log = fixture.handlers[0].as_ref().unwrap().log();
    let attempts = undecided_changes(&log);
    assert!(!attempts.is_empty(), "no change found in the log: {log}");
    for attempt in &attempts {
        assert!(
            !attempt
                .iter()
                .any(|line| line.contains(REFRESHING) && line.contains("asked=false")),
            "the node state was refreshed while the change was undecided:\n{}",
            attempt.join("\n")
        );
    }
    println!(
        "a policy that cut its node off: Failing after {:.1} s ({outcomes:?})",
        failed.as_secs_f64()
    );
    fixture.clean_up().await;
}

/// The log lines of each change from its checkpoint to the decision to roll it back.
fn undecided_changes(log: &str) -> Vec<Vec<&str>> {
    let mut attempts = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in log.lines() {
        if line.contains("Created checkpoint") {
            current = Some(Vec::new());
        } else if line.contains("is about to lapse; rolling back")
            && let Some(attempt) = current.take()
        {
            attempts.push(attempt);
        } else if let Some(attempt) = current.as_mut() {
            attempt.push(line);
        }
    }
    attempts
}
