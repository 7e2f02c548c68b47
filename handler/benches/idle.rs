//! `make bench`: what the handler (release build) costs while nothing happens on its node, in two
//! windows of `BENCH_IDLE_SECONDS` each (default 180): with no policy, once its start-up is
//! over, and with one policy applied (the usual state of a node), once the periodic check that
//! follows the change has passed. For each: CPU seconds per hour
//! and wake-ups per minute (voluntary context switches of its threads), the wake-ups by thread,
//! and what it logged meanwhile at debug level (by target and message), which says what woke
//! it. Figures are printed, never asserted.
//!
//! `BENCH_IDLE_BASELINE`, the path of another handler binary (an earlier commit's release
//! build), runs it on a second sandbox node over the same windows: the machine's speed varies
//! from one hour to the next by more than a change gains, so a comparison needs both side by
//! side.
//!
//! Needs `NMSTATE_LOCALENV_DIR` (a running local control plane).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a harness: failing loudly is the point

#[path = "../tests/common/mod.rs"]
mod common;

use common::{AVAILABLE, HANDLER, bridge_over_eth1, policy, start_handler_binary, wait_for_condition};
use kube::{Api, api::PostParams};
use nmstate_api::{NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, NodeNetworkState};
use nmstate_localenv::testing::{
    MachineLoad, NodeProcess, ProcessUsage, TestNode, eventually, install_crds, shared_env, unique_name,
};
use serde_json::json;
use std::{collections::BTreeMap, time::Duration};

/// What the handler logs while idle, to say what woke it.
const LOG_LEVEL: &str = "info,nmstate_handler=debug,nmstate_runtime=debug";

/// A log line's target and message, without its time and fields' values.
fn gist(line: &str) -> Option<String> {
    let (_, rest) = line.split_once(' ')?;
    let rest = rest.trim_start();
    let (_level, rest) = rest.split_once(' ')?;
    let message: String = rest.split('=').next()?.chars().take(90).collect();
    Some(message.trim().to_string())
}

/// A handler under measurement, on its own sandbox node.
struct Subject {
    /// Which binary: "this build", or the baseline's path.
    label: String,
    node_name: String,
    /// Stopped when dropped, before its node goes.
    handler: NodeProcess,
    /// Its sandbox node, removed when dropped.
    _node: TestNode,
    log: std::path::PathBuf,
}

impl Subject {
    async fn start(env: &nmstate_localenv::LocalEnv, binary: Option<&str>, label: String) -> Subject {
        let node_name = unique_name("idle");
        let node = TestNode::start(env, &node_name, &BTreeMap::new()).await.unwrap();
        let log = std::env::temp_dir().join(format!("{node_name}.log"));
        let overrides = [("RUST_LOG", LOG_LEVEL)];
        let handler = start_handler_binary(binary.unwrap_or(HANDLER), &node, &log, &overrides);
        Subject {
            label,
            node_name,
            _node: node,
            handler,
            log,
        }
    }

    /// The policy applied on its node for the second window.
    fn policy_name(&self) -> String {
        format!("{}-bridge", self.node_name)
    }
}

/// Prints what each subject costs over the same `seconds` from now.
async fn idle(subjects: &[Subject], seconds: u64, what: &str) {
    let before: Vec<_> = subjects
        .iter()
        .map(|subject| {
            let logged = subject.handler.log().lines().count();
            (logged, ProcessUsage::of(subject.handler.pid()).unwrap())
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    for (subject, (logged_before, from)) in subjects.iter().zip(before) {
        usage(subject, logged_before, &from, seconds, what);
    }
}

/// Prints what `subject` cost since `from`.
fn usage(subject: &Subject, logged_before: usize, from: &ProcessUsage, seconds: u64, what: &str) {
    let handler = &subject.handler;
    let to = ProcessUsage::of(handler.pid()).unwrap();
    let per_minute = 60.0 / seconds as f64;
    println!(
        "{:<44} {:.2} s CPU per hour, {:.0} wake-ups per minute   (goal <= 1 s per hour)",
        format!("idle, {what}, {}", subject.label),
        (to.cpu_seconds - from.cpu_seconds) * per_minute * 60.0,
        to.wakeups_since(from) as f64 * per_minute
    );
    println!("  wake-ups per minute by thread:");
    for (thread, wakeups) in to.wakeups_by_thread_since(from) {
        println!("    {thread:<40} {:>7.1}", wakeups as f64 * per_minute);
    }
    let mut logged: BTreeMap<String, usize> = BTreeMap::new();
    for line in handler.log().lines().skip(logged_before) {
        if let Some(gist) = gist(line) {
            *logged.entry(gist).or_default() += 1;
        }
    }
    println!("  what it logged meanwhile (debug), per minute:");
    if logged.is_empty() {
        println!("    nothing");
    }
    for (gist, count) in logged {
        println!("    {:>6.2}  {gist}", count as f64 * per_minute);
    }
}

#[tokio::main]
async fn main() {
    let load = MachineLoad::start();
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let mut subjects = vec![Subject::start(&env, None, "this build".into()).await];
    if let Ok(baseline) = std::env::var("BENCH_IDLE_BASELINE") {
        subjects.push(Subject::start(&env, Some(&baseline), baseline.clone()).await);
    }
    let states: Api<NodeNetworkState> = Api::all(client.clone());
    for subject in &subjects {
        eventually("the node state is reported", Duration::from_secs(30), || async {
            states
                .get_opt(&subject.node_name)
                .await
                .unwrap()?
                .status?
                .current_state
        })
        .await
        .unwrap();
    }
    let idle_seconds: u64 = std::env::var("BENCH_IDLE_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(180);
    // Start-up's own work (the first reports, the blocking threads it started) settles first.
    tokio::time::sleep(Duration::from_secs(15)).await;
    println!();
    println!("handler (release build) idle on one sandbox node each, over {idle_seconds} s each");
    idle(&subjects, idle_seconds, "no policy").await;

    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    for subject in &subjects {
        let node_name = &subject.node_name;
        let name = subject.policy_name();
        let selector = json!({"kubernetes.io/hostname": node_name});
        let bridge = policy(&name, selector, bridge_over_eth1());
        policies.create(&PostParams::default(), &bridge).await.unwrap();
        let enactment = format!("{node_name}.{name}");
        wait_for_condition(&enactments, &enactment, AVAILABLE, Duration::from_secs(60)).await;
    }
    // The first periodic check after the change sees the kernel moved and refreshes once (a
    // minute at most): steady state begins after it.
    tokio::time::sleep(Duration::from_secs(75)).await;
    idle(&subjects, idle_seconds, "one policy applied").await;
    for subject in subjects {
        policies
            .delete(&subject.policy_name(), &Default::default())
            .await
            .unwrap();
        let _ = std::fs::remove_file(&subject.log);
    }
    println!("\nmachine during this bench: {}", load.report());
}
