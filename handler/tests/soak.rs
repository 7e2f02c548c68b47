//! Churn soak: five real nodes and the admission webhook while a seeded generator creates,
//! updates and deletes valid and invalid policies, flips node labels, and restarts handlers, the
//! cluster controller and the webhook at random. Every minute it stops, lets the cluster settle
//! and checks what must hold whatever happened: every policy Available or Degraded, every node's
//! network as its policies say, no enactment, slot or finalizer left over, never more nodes
//! applying a policy than its `maxUnavailable`, no policy the webhook must refuse ever stored, no
//! process that died on its own. At the end it prints the operations, the applies and rollbacks,
//! and the resident memory of each process over its longest life: the first node's handler is
//! never restarted, and the cluster controller and the webhook are restarted only in the first
//! two thirds of the run, so that one instance of each lives through the last third.
//!
//! `SOAK_SECONDS` (default 120, `make soak`: 1200) and `SOAK_SEED` (printed, to replay a run).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;
#[path = "rollout/fixture.rs"]
mod fixture;
#[path = "soak/observed.rs"]
mod observed;
#[path = "../webhook/tests/webhook/fixture.rs"]
mod webhook;

use fixture::{Fixture, GROUP, SERIAL};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use nmstate_api::{NodeNetworkConfigurationPolicy, NodeNetworkState, condition::find_condition, labels};
use nmstate_localenv::testing::{NodeProcess, eventually, free_port, proc_status_kib};
use observed::{Seen, eth0_addresses, interfaces, policy_outcome, watch_enactments};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const NODES: usize = 5;
const MAX_POLICIES: usize = 6;
const ROUND: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(180);
/// A port no node has: nmstate refuses the bridge, the policy is Degraded.
const MISSING_PORT: &str = "soak-missing0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A new bridge: Available.
    Bridge,
    /// A bridge with a port no node has: refused by nmstate, Degraded.
    RefusedPort,
    /// Moves eth0 (the way to the API server) to an address of another network: the node is
    /// cut off until it rolls back, Degraded.
    CutsOff,
    /// A desiredState nmstate cannot read: refused by the webhook, never stored.
    Unreadable,
}

/// A policy the generator made and has not deleted.
#[derive(Clone, Debug)]
struct Live {
    kind: Kind,
    bridge: String,
    max_unavailable: usize,
    /// Flipped by updates: the bridge's STP, or the foreign address's last byte.
    stp: bool,
}

impl Live {
    fn valid(&self) -> bool {
        self.kind == Kind::Bridge
    }
}

#[derive(Debug, Default)]
struct Operations {
    created_valid: usize,
    created_invalid: usize,
    updated: usize,
    deleted: usize,
    label_flips: usize,
    handler_restarts: usize,
    writer_restarts: usize,
    webhook_restarts: usize,
    /// Unreadable policies the webhook refused, and writes refused while it was down (naming it).
    refused_by_webhook: usize,
    refused_webhook_down: usize,
}

fn desired(live: &Live) -> Value {
    if live.kind == Kind::Unreadable {
        // The CRD keeps desiredState open: only the webhook refuses the unknown key.
        return json!({"interface": []});
    }
    if live.kind == Kind::CutsOff {
        let address = if live.stp { "10.99.0.2" } else { "10.99.0.3" };
        return json!({"interfaces": [{"name": "eth0", "type": "ethernet", "state": "up",
            "ipv4": {"enabled": true, "dhcp": false, "address": [{"ip": address, "prefix-length": 24}]}}]});
    }
    let ports: Vec<Value> = if live.kind == Kind::Bridge {
        Vec::new()
    } else {
        vec![json!({"name": MISSING_PORT})]
    };
    json!({"interfaces": [{"name": live.bridge, "type": "linux-bridge", "state": "up",
        "bridge": {"options": {"stp": {"enabled": live.stp}}, "port": ports}}]})
}

struct Soak {
    fixture: Fixture,
    webhook: webhook::Fixture,
    writer: NodeProcess,
    writer_port: u16,
    /// Until then the cluster controller and the webhook are restarted at random; after it, their
    /// last instances live on and their memory is measured.
    restarts_until: Instant,
    /// What broke an invariant between two checks.
    broken: Vec<String>,
    rng: fastrand::Rng,
    live: BTreeMap<String, Live>,
    labelled: Vec<bool>,
    counter: usize,
    operations: Operations,
    seen: Arc<Mutex<Seen>>,
}

impl Soak {
    fn prefix(&self) -> String {
        format!("{}-", self.fixture.namespace)
    }

    async fn step(&mut self) {
        let roll = self.rng.u32(0..100);
        let room = self.live.len() < MAX_POLICIES;
        let any = !self.live.is_empty();
        if roll < 30 && room {
            self.create().await;
        } else if roll < 50 && any {
            self.update().await;
        } else if roll < 70 && any {
            self.delete().await;
        } else if roll < 80 {
            self.flip_label().await;
        } else if roll < 91 {
            self.restart_handler();
        } else if Instant::now() >= self.restarts_until {
            // The last third: the cluster controller and the webhook live on.
        } else if roll < 96 {
            self.restart_writer();
        } else {
            self.restart_webhook();
        }
    }

    async fn create(&mut self) {
        if self.live.len() >= MAX_POLICIES {
            return;
        }
        self.counter += 1;
        let kind = match self.rng.u32(0..9) {
            0 => Kind::RefusedPort,
            1 => Kind::CutsOff,
            2 => Kind::Unreadable,
            _ => Kind::Bridge,
        };
        let valid = kind == Kind::Bridge;
        let live = Live {
            kind,
            bridge: format!("br-{}{}", if valid { "s" } else { "x" }, self.counter),
            max_unavailable: self.rng.usize(1..=2),
            stp: false,
        };
        let suffix = format!("p{}", self.counter);
        let name = self.fixture.policy_name(&suffix);
        self.seen
            .lock()
            .unwrap()
            .limits
            .insert(name.clone(), live.max_unavailable);
        let spec = json!({"maxUnavailable": live.max_unavailable, "deletionPolicy": "Revert"});
        let labels = json!({webhook::SELECTOR: self.webhook.id});
        let created = self
            .fixture
            .try_create_policy(&suffix, desired(&live), spec, labels)
            .await;
        match (created, kind) {
            (Ok(_), Kind::Unreadable) => {
                self.broken.push(format!(
                    "the webhook admitted {name}, whose desiredState nmstate cannot read"
                ));
                return;
            }
            (Ok(_), _) => {}
            (Err(error), _) if error.to_string().contains(webhook::UNREACHABLE) => {
                self.operations.refused_webhook_down += 1;
                return;
            }
            (Err(error), Kind::Unreadable) => {
                if !error.to_string().contains("desiredState") {
                    self.broken
                        .push(format!("{name} refused without naming desiredState: {error}"));
                }
                self.operations.refused_by_webhook += 1;
                return;
            }
            (Err(error), _) => {
                self.broken.push(format!("creating {name}: {error}"));
                return;
            }
        }
        if valid {
            self.operations.created_valid += 1;
        } else {
            self.operations.created_invalid += 1;
        }
        self.live.insert(name, live);
    }

    fn pick_live(&mut self) -> String {
        let names: Vec<String> = self.live.keys().cloned().collect();
        names[self.rng.usize(0..names.len())].clone()
    }

    async fn update(&mut self) {
        let name = self.pick_live();
        let mut changed = self.live[&name].clone();
        changed.stp = !changed.stp;
        let patch = json!({"spec": {"desiredState": desired(&changed)}});
        let patched = self
            .fixture
            .policies()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        match patched {
            Ok(_) => {
                self.live.insert(name, changed);
                self.operations.updated += 1;
            }
            Err(error) if error.to_string().contains(webhook::UNREACHABLE) => {
                self.operations.refused_webhook_down += 1;
            }
            Err(_) => {}
        }
    }

    async fn delete(&mut self) {
        let name = self.pick_live();
        self.live.remove(&name);
        let _ = self
            .fixture
            .policies()
            .delete(&name, &DeleteParams::default())
            .await;
        self.operations.deleted += 1;
    }

    async fn flip_label(&mut self) {
        let index = self.rng.usize(0..NODES);
        let labelled_count = self.labelled.iter().filter(|l| **l).count();
        // At least two nodes stay selected, so every rollout has somewhere to go.
        if self.labelled[index] && labelled_count <= 2 {
            return;
        }
        let value = if self.labelled[index] {
            Value::Null
        } else {
            json!(self.fixture.namespace)
        };
        let patch = json!({"metadata": {"labels": {GROUP: value}}});
        let nodes: Api<Node> = Api::all(self.fixture.client.clone());
        let name = self.fixture.node_name(index);
        if nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .is_ok()
        {
            self.labelled[index] = !self.labelled[index];
            self.operations.label_flips += 1;
        }
    }

    /// Kills and restarts one handler, never the first node's: it lives through the whole run,
    /// so its memory is measured over all of it.
    fn restart_handler(&mut self) {
        let index = self.rng.usize(1..NODES);
        if let Some(mut handler) = self.fixture.handlers[index].take() {
            handler.kill();
        }
        self.fixture.handlers[index] = Some(self.fixture.start_handler(index));
        self.operations.handler_restarts += 1;
    }

    fn restart_writer(&mut self) {
        self.writer.kill();
        self.writer = self.fixture.start_cluster("writer", self.writer_port);
        self.operations.writer_restarts += 1;
    }

    /// Stops the webhook, as a pod's deletion does (SIGTERM) or a crash (SIGKILL), and starts it
    /// again on the same port.
    fn restart_webhook(&mut self) {
        if let Some(mut webhook) = self.webhook.webhook.take() {
            if self.rng.bool() {
                webhook.kill();
            } else {
                webhook.terminate(Duration::from_secs(10));
            }
        }
        self.webhook.start_webhook();
        self.operations.webhook_restarts += 1;
    }

    /// Waits until every policy settled (and every deleted one is gone), then checks the
    /// invariants; the failures found, empty when all hold.
    async fn settle_and_check(&mut self) -> Vec<String> {
        let policies = self.fixture.policies();
        let enactments = self.fixture.enactments();
        let prefix = self.prefix();
        let live = self.live.clone();
        let settled = eventually("every policy settled", SETTLE, || async {
            let all = policies.list(&ListParams::default()).await.ok()?.items;
            let ours: Vec<&NodeNetworkConfigurationPolicy> =
                all.iter().filter(|p| p.name_any().starts_with(&prefix)).collect();
            // Deleted ones gone (their nodes reverted), the rest settled.
            if ours.len() != live.len() || ours.iter().any(|p| policy_outcome(p).is_none()) {
                return None;
            }
            let listed = enactments.list(&ListParams::default()).await.ok()?.items;
            let ours = listed.into_iter().filter(|e| {
                e.labels()
                    .get(labels::POLICY)
                    .is_some_and(|p| p.starts_with(&prefix))
            });
            let busy = ours.into_iter().any(|e| {
                let conditions = e.status.map(|s| s.conditions).unwrap_or_default();
                ["Progressing", "Pending"]
                    .iter()
                    .any(|type_| find_condition(&conditions, type_).is_some_and(|c| c.is_true()))
            });
            (!busy).then_some(())
        })
        .await;
        let mut failures = Vec::new();
        if let Err(error) = settled {
            failures.push(format!("{error:?}"));
        }
        // The node states follow within seconds (a rollback's report comes after the status).
        failures.extend(
            until_none(
                "the node states as the policies say",
                Duration::from_secs(30),
                || self.node_state_failures(),
            )
            .await,
        );

        let all_policies: BTreeMap<String, NodeNetworkConfigurationPolicy> = policies
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.name_any().starts_with(&prefix))
            .map(|p| (p.name_any(), p))
            .collect();
        for (name, live) in &self.live {
            let outcome = all_policies.get(name).and_then(policy_outcome);
            let expected = if live.valid() { "Available" } else { "Degraded" };
            if outcome != Some(expected) {
                failures.push(format!("{name} ({live:?}) is {outcome:?}, not {expected}"));
            }
        }
        // What a deleted policy leaves goes with it, by its handlers or the garbage collector
        // (its owner references), seconds after the policy itself may be gone.
        failures.extend(until_none("nothing left over", Duration::from_secs(30), || self.leftovers()).await);
        failures.append(&mut self.seen.lock().unwrap().over_limit);
        for handler in self.fixture.handlers.iter_mut().flatten() {
            if !handler.is_running() {
                failures.push(format!("a handler exited on its own: {}", handler.log()));
            }
        }
        if !self.writer.is_running() {
            failures.push(format!("the cluster controller exited: {}", self.writer.log()));
        }
        if !self.webhook.webhook.as_mut().is_some_and(NodeProcess::is_running) {
            failures.push(format!("the webhook exited: {}", self.webhook.log()));
        }
        failures.append(&mut self.broken);
        failures
    }

    /// What no live policy accounts for: an enactment of a deleted policy or of an unselected
    /// node, a rollout slot of a policy that is not Degraded (only failed slots stay).
    async fn leftovers(&self) -> Vec<String> {
        let prefix = self.prefix();
        let mut failures = Vec::new();
        let selected: BTreeSet<String> = (0..NODES)
            .filter(|index| self.labelled[*index])
            .map(|index| self.fixture.node_name(index))
            .collect();
        for enactment in self
            .fixture
            .enactments()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
        {
            let (Some(policy), Some(node)) = (
                enactment.labels().get(labels::POLICY),
                enactment.labels().get(labels::NODE),
            ) else {
                continue;
            };
            if policy.starts_with(&prefix) && (!self.live.contains_key(policy) || !selected.contains(node)) {
                failures.push(format!("enactment {} left over", enactment.name_any()));
            }
        }
        let leases: Api<Lease> = Api::namespaced(self.fixture.client.clone(), &self.fixture.namespace);
        let slots =
            ListParams::default().labels(&format!("{}={}", labels::LEASE, labels::LEASE_ROLLOUT_SLOT));
        for lease in leases.list(&slots).await.unwrap().items {
            let policy = lease.labels().get(labels::POLICY).cloned().unwrap_or_default();
            let degraded = self.live.get(&policy).is_some_and(|live| !live.valid());
            if !degraded {
                failures.push(format!("slot {} left over", lease.name_any()));
            }
        }
        failures
    }

    /// What the node states contradict: a management address gone from eth0 (a change that
    /// cut a node off and stayed), a valid policy's bridge missing on a selected node, a
    /// refused policy's bridge present anywhere.
    async fn node_state_failures(&self) -> Vec<String> {
        let states: Api<NodeNetworkState> = Api::all(self.fixture.client.clone());
        let mut failures = Vec::new();
        let mut bridges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for index in 0..NODES {
            let node = self.fixture.node_name(index);
            let state = states.get_opt(&node).await.ok().flatten();
            let eth0 = state.as_ref().map(eth0_addresses).unwrap_or_default();
            if !eth0.iter().any(|address| address.starts_with("10.77.0.")) {
                failures.push(format!("{node}'s eth0 has {eth0:?}, not its management address"));
            }
            bridges.insert(node, state.as_ref().map(interfaces).unwrap_or_default());
        }
        for (name, live) in &self.live {
            for (index, selected) in self.labelled.iter().enumerate() {
                let node = self.fixture.node_name(index);
                let present = bridges[&node].contains(&live.bridge);
                if live.valid() && *selected && !present {
                    failures.push(format!("{} of {name} missing on {node}", live.bridge));
                }
                if live.kind == Kind::RefusedPort && present {
                    failures.push(format!("{} of refused {name} left on {node}", live.bridge));
                }
            }
        }
        failures
    }

    fn memory(&self) -> BTreeMap<String, (u32, u64)> {
        let mut all: BTreeMap<String, (u32, u64)> = (0..NODES)
            .filter_map(|index| {
                let pid = self.fixture.handlers[index].as_ref()?.pid();
                Some((
                    self.fixture.node_name(index),
                    (pid, proc_status_kib(pid, "VmRSS:")),
                ))
            })
            .collect();
        let pid = self.writer.pid();
        all.insert("cluster controller".into(), (pid, proc_status_kib(pid, "VmRSS:")));
        if let Some(webhook) = &self.webhook.webhook {
            let pid = webhook.pid();
            all.insert("webhook".into(), (pid, proc_status_kib(pid, "VmRSS:")));
        }
        all
    }
}

/// Checks again with `check` until it finds nothing, for at most `timeout`; what it found at
/// the last check (nothing when it came to nothing in time).
async fn until_none<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Vec<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let nothing = eventually(what, timeout, || {
        let found = check();
        async { found.await.is_empty().then_some(()) }
    })
    .await;
    match nothing {
        Ok(()) => Vec::new(),
        Err(_) => check().await,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn churn_soak_keeps_every_invariant() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("soak: seed {seed} (SOAK_SEED={seed} replays the choices), {seconds} s, {NODES} nodes");
    let _serial = SERIAL.lock().await;
    let fixture = Fixture::start(NODES, true).await;
    let webhook = webhook::Fixture::start(&[]).await;
    let writer_port = free_port();
    let writer = fixture.start_cluster("writer", writer_port);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watch = watch_enactments(&fixture.client, &format!("{}-", fixture.namespace), seen.clone());
    let started = Instant::now();
    let mut soak = Soak {
        fixture,
        webhook,
        writer,
        writer_port,
        restarts_until: started + Duration::from_secs(seconds * 2 / 3),
        broken: Vec::new(),
        rng: fastrand::Rng::with_seed(seed),
        live: BTreeMap::new(),
        labelled: vec![true; NODES],
        counter: 0,
        operations: Operations::default(),
        seen,
    };

    // Every process instance's resident memory at each round: (process, pid) -> (round, KiB).
    let mut memory: BTreeMap<(String, u32), Vec<(usize, u64)>> = BTreeMap::new();
    let mut rounds = 0;
    let mut failures = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        let round = Instant::now();
        while round.elapsed() < ROUND && started.elapsed() < Duration::from_secs(seconds) {
            soak.step().await;
            tokio::time::sleep(Duration::from_millis(soak.rng.u64(300..2_500))).await;
        }
        let settling = Instant::now();
        let found = soak.settle_and_check().await;
        rounds += 1;
        println!(
            "soak: round {rounds} at {:.0} s: {} policies, settled and checked in {:.1} s, {} failures; {:?}",
            started.elapsed().as_secs_f64(),
            soak.live.len(),
            settling.elapsed().as_secs_f64(),
            found.len(),
            soak.operations
        );
        for (process, (pid, kib)) in soak.memory() {
            memory.entry((process, pid)).or_default().push((rounds, kib));
        }
        failures.extend(
            found
                .into_iter()
                .map(|failure| format!("round {rounds}: {failure}")),
        );
        if !failures.is_empty() {
            break;
        }
    }
    watch.abort();

    let (applied, failed) = {
        let seen = soak.seen.lock().unwrap();
        (seen.applied.len(), seen.failed.len())
    };
    let mut rollbacks = 0;
    for index in 0..NODES {
        let log =
            std::fs::read_to_string(soak.fixture.log(&soak.fixture.node_name(index))).unwrap_or_default();
        rollbacks += log.lines().filter(|line| line.contains("rolling back")).count();
    }
    println!(
        "soak: {rounds} rounds in {:.0} s; {:?}; {} applies Available, {} failed for good, {rollbacks} rollbacks",
        started.elapsed().as_secs_f64(),
        soak.operations,
        applied,
        failed
    );
    // Per process, its longest-lived instance: memory at its first round and at its last.
    let mut longest: BTreeMap<String, &Vec<(usize, u64)>> = BTreeMap::new();
    for ((process, _), samples) in &memory {
        let best = longest.entry(process.clone()).or_insert(samples);
        if samples.len() > best.len() {
            *best = samples;
        }
    }
    for (process, samples) in longest {
        let (Some((first_round, first)), Some((last_round, last))) = (samples.first(), samples.last()) else {
            continue;
        };
        let growth = *last as f64 - *first as f64;
        println!(
            "soak: memory of {process} (its longest-lived process, rounds {first_round}-{last_round}): {first} KiB -> {last} KiB ({growth:+.0} KiB)"
        );
    }
    assert!(failures.is_empty(), "seed {seed}: {failures:#?}");
    soak.fixture.clean_up().await;
}
