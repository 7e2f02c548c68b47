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
//! Each size's two rollouts run `BENCH_ROLLOUT_RUNS` times (default 5), the policy and its bridges
//! removed after each, and the bench prints each run and the median over them.
//!
//! Needs `NMSTATE_LOCALENV_DIR` (a running local control plane).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a harness: failing loudly is the point

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/rollout/fixture.rs"]
mod fixture;

use common::median;
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

async fn rollout(
    fixture: &mut Fixture,
    suffix: &str,
    max_unavailable: Value,
    limit: usize,
    bridge_name: &str,
) -> Figures {
    let name = fixture.policy_name(suffix);
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
        .create_policy(suffix, bridge(bridge_name), max_unavailable)
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

/// Removes what a rollout left, so the next run's nodes start as this run's did: the policy
/// (its enactments and slots go with it), then the bridge it made on every node.
async fn undo(fixture: &Fixture, policy: &str, bridge: &str) {
    fixture.delete_policies(&[policy], Duration::from_secs(60)).await;
    fixture.wait_for_slots_given_back(policy).await;
    for node in &fixture.nodes {
        let deleted = node
            .command("nmcli")
            .unwrap()
            .args(["connection", "delete", bridge])
            .output()
            .unwrap();
        assert!(
            deleted.status.success(),
            "nmcli connection delete {bridge}: {deleted:?}"
        );
    }
}

/// One rollout's row of figures, and the ratios it is summed up by.
struct Row {
    /// Over the time a node is seen Progressing, and over the time it holds its slot.
    ratio: f64,
    slot_ratio: Option<f64>,
    wall: Duration,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let load = nmstate_localenv::testing::MachineLoad::start();
    // BENCH_ROLLOUT_RUNS (default 5): each size's two rollouts, run this many times; one run's
    // ratio swings by a tenth or more with what the two cores run meanwhile.
    let runs: usize = std::env::var("BENCH_ROLLOUT_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(5);
    println!(
        "rollout of one policy over N nodes (a new bridge on each), leases {LEASE_SECONDS} s, {runs} runs of each"
    );
    println!(
        "{:>2} {:>11} {:>3} {:>9} {:>9} {:>15} {:>6} {:>9} {:>6} {:>13} {:>11} {:>13}",
        "N",
        "maxUnavail.",
        "run",
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
    let mut summaries = Vec::new();
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
        let mut rows: BTreeMap<&str, Vec<Row>> = BTreeMap::new();
        for run in 0..runs {
            for (suffix, max_unavailable, label) in [("one", json!(1), "1"), ("half", json!("50%"), "50%")] {
                // Let the handlers' writes of what came before (start-up, the last run's undoing)
                // settle before counting.
                tokio::time::sleep(Duration::from_secs(3)).await;
                let limit = match label {
                    "1" => 1,
                    _ => count.div_ceil(2),
                };
                let bridge_name = format!("br-{suffix}");
                let suffix = format!("{suffix}-{run}");
                let policy = fixture.policy_name(&suffix);
                let figures = rollout(&mut fixture, &suffix, max_unavailable, limit, &bridge_name).await;
                let sum = |prefix: &str| -> usize {
                    figures
                        .writes
                        .iter()
                        .filter(|(kind, _)| kind.starts_with(prefix))
                        .map(|(_, count)| count)
                        .sum()
                };
                // The rollout's own writes: enactments (and their events) and the slots.
                let rollout_writes =
                    sum("nodenetworkconfigurationenactments") + sum("leases") + sum("events");
                let in_slot = figures.in_slot.map_or("none".into(), ms);
                let slot_ratio = figures
                    .in_slot
                    .map(|in_slot| figures.wall.as_secs_f64() / (in_slot * figures.rounds).as_secs_f64());
                let ratio = figures.wall.as_secs_f64() / figures.expected.as_secs_f64();
                println!(
                    "{count:>2} {label:>11} {run:>3} {:>9} {:>9} {:>15} {ratio:>5.2}× {in_slot:>9} {:>6} {:>13.2} {:>11.2} {:>13}",
                    ms(figures.wall),
                    ms(figures.apply),
                    ms(figures.expected),
                    slot_ratio.map_or("none".into(), |ratio| format!("{ratio:.2}×")),
                    rollout_writes as f64 / count as f64,
                    sum("nodenetworkstates") as f64 / count as f64,
                    sum("nodenetworkconfigurationpolicies"),
                );
                let first = figures.first.map_or("never".into(), ms);
                let first_slot = figures.first_slot.map_or("never".into(), ms);
                let handoff = figures.handoff.map_or("none".into(), ms);
                details.push(format!(
                    "N={count} maxUnavailable={label} run {run}: the first node Progressing {first} after the policy's creation (the API server stored the first slot {first_slot} after the policy); a slot from Available to the next Progressing {handoff} (median); nodes that read their state on the apply's path: {} of {count}; {:?}",
                    figures.read_on_the_path,
                    figures.writes
                ));
                rows.entry(label).or_default().push(Row {
                    ratio,
                    slot_ratio,
                    wall: figures.wall,
                });
                undo(&fixture, &policy, &bridge_name).await;
            }
        }
        for (label, rows) in rows {
            summaries.push(summary(count, label, &rows));
        }
        fixture.clean_up().await;
    }
    println!("over the runs (median, and the range):");
    for line in summaries {
        println!("  {line}");
    }
    println!("the first wave, handoffs, and writes by kind (audit log; conflicts included):");
    for line in details {
        println!("  {line}");
    }
    println!("\nmachine during this bench: {}", load.report());
}

/// One size and limit's runs summed up: the median and range of the wall time and of both
/// ratios, and how many runs met 1.2 × over the time in slot.
fn summary(count: usize, label: &str, rows: &[Row]) -> String {
    // (median, lowest, highest); NaN for none.
    let range = |values: Vec<f64>| {
        let low = values.iter().copied().reduce(f64::min);
        let high = values.iter().copied().reduce(f64::max);
        let or_nan = |value: Option<f64>| value.unwrap_or(f64::NAN);
        (or_nan(median(&values)), or_nan(low), or_nan(high))
    };
    let (wall, wall_low, wall_high) = range(rows.iter().map(|row| row.wall.as_secs_f64() * 1000.0).collect());
    let (ratio, ratio_low, ratio_high) = range(rows.iter().map(|row| row.ratio).collect());
    let slot_ratios: Vec<f64> = rows.iter().filter_map(|row| row.slot_ratio).collect();
    let met = slot_ratios.iter().filter(|ratio| **ratio <= 1.2).count();
    let measured = slot_ratios.len();
    let (slot, slot_low, slot_high) = range(slot_ratios);
    format!(
        "N={count} maxUnavailable={label}: wall {wall:.0} ms ({wall_low:.0}–{wall_high:.0}); ratio over the time in slot {slot:.2}× ({slot_low:.2}–{slot_high:.2}; at or under 1.2× in {met} of {measured}); over the time Progressing {ratio:.2}× ({ratio_low:.2}–{ratio_high:.2})"
    )
}
