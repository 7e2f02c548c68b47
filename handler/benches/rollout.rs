//! `make bench`, rollouts: one policy (a new bridge) rolled out over N sandbox nodes (N = 2, 4,
//! 8), each with its own handler, with `maxUnavailable` 1 and 50%, the cluster controller
//! writing the policy status. For each: the wall time from creating the policy to its last node
//! Available, against ceil(N/k) × one node's apply time, taken two ways: the median time a node
//! is seen Progressing, and the median time a node is seen holding its slot before it is seen
//! Available (the first starts when the Progressing write lands, which goes beside the change
//! and lands later the busier the API server is; the second is the node's whole turn). And the
//! API writes the rollout caused, per node and policy, counted from the API server's audit log:
//! the rollout's own (enactment and slot Leases, write conflicts included), the node states that
//! the change updates, and the policy status (per policy). Figures are printed, never asserted.
//!
//! Needs `NMSTATE_LOCALENV_DIR` (a running local control plane).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a harness: failing loudly is the point

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/rollout/fixture.rs"]
mod fixture;

use fixture::{Fixture, Recorder, audit_size, bridge, completed_since, writes_since};
use k8s_openapi::jiff::Timestamp;
use nmstate_handler::network::state::READ_ON_THE_PATH;
use nmstate_localenv::testing::free_port;
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// Leases long enough that no renewal falls inside a rollout: the writes counted are the
/// rollout's own.
const LEASE_SECONDS: &str = "30";

struct Figures {
    wall: Duration,
    /// From creating the policy to the first node seen Progressing: the first wave, when every
    /// node reconciles at once.
    first: Option<Duration>,
    /// From the API server storing the policy to it storing the first slot (audit log): the
    /// handlers' part of the first wave, whatever the bench's client and watch add.
    first_slot: Option<Duration>,
    /// The median time from a node's Available to the next node's Progressing.
    handoff: Option<Duration>,
    apply: Duration,
    expected: Duration,
    /// The median time a node held its slot before it was seen Available.
    in_slot: Option<Duration>,
    rounds: u32,
    writes: BTreeMap<String, usize>,
    /// The nodes whose apply read the node on its path (no current read kept).
    read_on_the_path: usize,
}

async fn rollout(fixture: &mut Fixture, suffix: &str, max_unavailable: Value, limit: usize) -> Figures {
    let name = format!("{}-{suffix}", fixture.namespace);
    let audit = fixture.env.control_plane().dir().join("audit.log");
    let recorder = Recorder::start(&fixture.client, &name).await;
    let offset = audit_size(&audit);
    // The recorder's watch holds the client's one connection: without a request first, the
    // create opened a new one, and its TLS handshake (about 45 ms here, in 3 runs of 4) was
    // counted as the rollout's. A request answered leaves its connection for the create.
    fixture.policies().get_opt(&name).await.unwrap();
    let started = Instant::now();
    let began = Timestamp::now();
    fixture
        .create_policy(suffix, bridge(&format!("br-{suffix}")), max_unavailable)
        .await;
    let count = fixture.nodes.len();
    fixture.wait_for_rollout(&name, Duration::from_secs(300)).await;
    let ended = Timestamp::now();
    // Let the last status and node-state writes land in the log.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let observed = recorder.observed.lock().unwrap();
    let wall = observed.last_available.unwrap() - started;
    let first = observed
        .progressing_history
        .iter()
        .find(|(_, progressing)| !progressing.is_empty())
        .map(|(seen, _)| *seen - started);
    let median = |times: &[Duration]| {
        let mut times = times.to_vec();
        times.sort();
        times.get(times.len() / 2).copied()
    };
    let apply = median(&observed.apply_times).unwrap();
    let rounds = u32::try_from(count.div_ceil(limit)).unwrap();
    Figures {
        wall,
        first,
        first_slot: first_slot(&audit, offset, &name),
        handoff: median(&observed.handoffs),
        apply,
        expected: apply * rounds,
        in_slot: median(&observed.slot_times),
        rounds,
        writes: writes_since(&audit, offset, &name),
        read_on_the_path: fixture
            .nodes
            .iter()
            .filter(|node| {
                let log = std::fs::read_to_string(fixture.log(&node.name)).unwrap_or_default();
                common::logged_between(&log, READ_ON_THE_PATH, began, ended)
            })
            .count(),
    }
}

/// From the policy's create to the first create of one of its slots, as the API server
/// completed each (the audit log's `stageTimestamp`).
fn first_slot(audit: &std::path::Path, offset: u64, policy: &str) -> Option<Duration> {
    let entries = completed_since(audit, offset);
    let created = |resource: &str, name: &dyn Fn(&str) -> bool| {
        entries
            .iter()
            .find(|entry| {
                entry["verb"] == "create"
                    && entry["responseStatus"]["code"] == 201
                    && entry["objectRef"]["resource"] == resource
                    && name(entry["objectRef"]["name"].as_str().unwrap_or_default())
            })
            .and_then(|entry| entry["stageTimestamp"].as_str()?.parse::<Timestamp>().ok())
    };
    let policy_created = created("nodenetworkconfigurationpolicies", &|name| name == policy)?;
    let slot_prefix = format!("{policy}.");
    let slot_created = created("leases", &|name| name.starts_with(&slot_prefix))?;
    Duration::try_from(slot_created.duration_since(policy_created)).ok()
}

fn ms(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let load = nmstate_localenv::testing::MachineLoad::start();
    println!("rollout of one policy over N nodes (a new bridge on each), leases {LEASE_SECONDS} s");
    println!(
        "{:>2} {:>11} {:>9} {:>9} {:>15} {:>6} {:>9} {:>6} {:>13} {:>11} {:>13}",
        "N",
        "maxUnavail.",
        "wall",
        "1 apply",
        "ceil(N/k)×apply",
        "ratio",
        "in slot",
        "ratio",
        "rollout w/node",
        "nns w/node",
        "policy status"
    );
    let mut details = Vec::new();
    // BENCH_ROLLOUT_NODES=8 (a comma-separated list) runs only those sizes.
    let sizes: Vec<usize> = std::env::var("BENCH_ROLLOUT_NODES")
        .ok()
        .map(|sizes| {
            sizes
                .split(',')
                .filter_map(|size| size.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![2, 4, 8]);
    for count in sizes {
        let mut fixture = Fixture::start_with_leases(count, true, LEASE_SECONDS).await;
        let _cluster = fixture.start_cluster("writer", free_port());
        // Let the handlers' start-up writes (node states) settle before counting.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for (suffix, max_unavailable, label) in [("one", json!(1), "1"), ("half", json!("50%"), "50%")] {
            let limit = match label {
                "1" => 1,
                _ => count.div_ceil(2),
            };
            let figures = rollout(&mut fixture, suffix, max_unavailable, limit).await;
            let sum = |prefix: &str| -> usize {
                figures
                    .writes
                    .iter()
                    .filter(|(kind, _)| kind.starts_with(prefix))
                    .map(|(_, count)| count)
                    .sum()
            };
            // The rollout's own writes: enactments (and their events) and the slots.
            let rollout_writes = sum("nodenetworkconfigurationenactments") + sum("leases") + sum("events");
            let in_slot = figures.in_slot.map_or("none".into(), ms);
            let slot_ratio = figures.in_slot.map_or("none".into(), |in_slot| {
                let expected = in_slot * figures.rounds;
                format!("{:.2}×", figures.wall.as_secs_f64() / expected.as_secs_f64())
            });
            println!(
                "{count:>2} {label:>11} {:>9} {:>9} {:>15} {:>5.2}× {in_slot:>9} {slot_ratio:>6} {:>13.2} {:>11.2} {:>13}",
                ms(figures.wall),
                ms(figures.apply),
                ms(figures.expected),
                figures.wall.as_secs_f64() / figures.expected.as_secs_f64(),
                rollout_writes as f64 / count as f64,
                sum("nodenetworkstates") as f64 / count as f64,
                sum("nodenetworkconfigurationpolicies"),
            );
            let first = figures.first.map_or("never".into(), ms);
            let first_slot = figures.first_slot.map_or("never".into(), ms);
            let handoff = figures.handoff.map_or("none".into(), ms);
            details.push(format!(
                "N={count} maxUnavailable={label}: the first node Progressing {first} after the policy's creation (the API server stored the first slot {first_slot} after the policy); a slot from Available to the next Progressing {handoff} (median); nodes that read their state on the apply's path: {} of {count}; {:?}",
                figures.read_on_the_path,
                figures.writes
            ));
        }
        fixture.clean_up().await;
    }
    println!("the first wave, handoffs, and writes by kind (audit log; conflicts included):");
    for line in details {
        println!("  {line}");
    }
    println!("\nmachine during this bench: {}", load.report());
}
