//! A rollout test's world: sandbox nodes with handlers, a namespace of their own for the
//! Leases, the cluster controller, and a recorder of every enactment transition.

#![allow(dead_code)] // shared by the rollout tests and the rollout benchmark, each using its part

use crate::common::{HANDLER_ENV, policy};
use futures::StreamExt;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Namespace};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, condition::find_condition, labels,
};
use nmstate_localenv::{
    LocalEnv,
    testing::{NodeProcess, TestNode, create_namespace, eventually, install_crds, shared_env},
};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Seek},
    sync::{Arc, Mutex},
    time::Duration,
};

/// The cluster controller, another package's binary: `cargo test --workspace` (or `make test`)
/// builds it.
pub fn cluster_binary() -> std::path::PathBuf {
    nmstate_localenv::testing::workspace_binary("nmstate-cluster")
}
/// Leases expire quickly here, so a dead handler's slot frees within seconds.
pub const LEASE_SECONDS: &str = "4";
/// A node that cannot revert a deleted policy holds its deletion this long here.
pub const REVERT_TIMEOUT_SECONDS: u64 = 5;
/// The handlers' log filter: the rollout bench counts the applies that read the node on their
/// path (`network::state`), a test looks for the reporter's refreshes (`node_state_reporter`).
pub const HANDLER_LOG: &str =
    "info,nmstate_handler::network::state=debug,nmstate_handler::node_state_reporter=debug";
/// The label every node of one test carries (value: the test's namespace).
pub const GROUP: &str = "nmstate-test/rollout";

/// One cluster controller at a time: each writes every policy's status.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Fixture {
    pub env: LocalEnv,
    pub client: Client,
    pub namespace: String,
    pub nodes: Vec<TestNode>,
    pub handlers: Vec<Option<NodeProcess>>,
    policies: Vec<String>,
    lease_seconds: &'static str,
}

impl Fixture {
    /// `count` nodes labelled [`GROUP`]=<namespace> (when `labelled`), each running a handler.
    pub async fn start(count: usize, labelled: bool) -> Fixture {
        Fixture::start_with_leases(count, labelled, LEASE_SECONDS).await
    }

    /// As [`Fixture::start`], with leases of `lease_seconds`.
    pub async fn start_with_leases(count: usize, labelled: bool, lease_seconds: &'static str) -> Fixture {
        let env = shared_env().await.unwrap();
        let client = env.client().await.unwrap();
        install_crds(&client).await.unwrap();
        let namespace = create_namespace(&client, "rollout").await.unwrap();
        let node_labels: BTreeMap<String, String> = if labelled {
            BTreeMap::from([(GROUP.to_string(), namespace.clone())])
        } else {
            BTreeMap::new()
        };
        let names: Vec<String> = (0..count).map(|index| format!("{namespace}-n{index}")).collect();
        let nodes =
            futures::future::join_all(names.iter().map(|name| TestNode::start(&env, name, &node_labels)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let mut fixture = Fixture {
            env,
            client,
            namespace,
            nodes,
            handlers: Vec::new(),
            policies: Vec::new(),
            lease_seconds,
        };
        for index in 0..count {
            let handler = fixture.start_handler(index);
            fixture.handlers.push(Some(handler));
        }
        fixture
    }

    pub fn node_name(&self, index: usize) -> String {
        self.nodes[index].name.clone()
    }

    pub fn index_of(&self, node: &str) -> usize {
        self.nodes.iter().position(|n| n.name == node).unwrap()
    }

    pub fn log(&self, name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}-{name}.log", self.namespace))
    }

    pub fn start_handler(&self, index: usize) -> NodeProcess {
        let env: Vec<(&str, &str)> = HANDLER_ENV
            .iter()
            .copied()
            .chain([
                ("POD_NAMESPACE", self.namespace.as_str()),
                ("LEASE_DURATION_SECONDS", self.lease_seconds),
                ("RUST_LOG", HANDLER_LOG),
            ])
            .collect();
        let log = self.log(&self.nodes[index].name);
        NodeProcess::start(
            &self.nodes[index],
            crate::common::HANDLER.as_ref(),
            &["run"],
            &env,
            log,
        )
        .unwrap()
    }

    /// A cluster controller named `identity`, serving metrics on `port`.
    pub fn start_cluster(&self, identity: &str, port: u16) -> NodeProcess {
        let address = format!("127.0.0.1:{port}");
        let revert_timeout = REVERT_TIMEOUT_SECONDS.to_string();
        let variables = [
            ("POD_NAMESPACE", self.namespace.as_str()),
            ("POD_NAME", identity),
            ("LEASE_DURATION_SECONDS", self.lease_seconds),
            ("METRICS_BIND_ADDRESS", address.as_str()),
            ("REVERT_TIMEOUT_SECONDS", revert_timeout.as_str()),
            ("RUST_LOG", "info"),
        ];
        NodeProcess::start_on_host(&self.env, &cluster_binary(), &[], &variables, self.log(identity)).unwrap()
    }

    /// The name of this test's policy `suffix`: what [`Fixture::create_policy`] creates, known
    /// before it is created (a recorder watches for it from the start).
    pub fn policy_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.namespace)
    }

    /// Creates a policy for this test's nodes: a new bridge `bridge`, `max_unavailable` at once.
    pub async fn create_policy(&mut self, suffix: &str, desired: Value, max_unavailable: Value) -> String {
        self.create_policy_with(suffix, desired, json!({"maxUnavailable": max_unavailable}))
            .await
    }

    /// Creates a policy for this test's nodes with `desired`, and `spec`'s other fields.
    pub async fn create_policy_with(&mut self, suffix: &str, desired: Value, spec: Value) -> String {
        self.try_create_policy(suffix, desired, spec, json!({}))
            .await
            .unwrap()
    }

    /// As [`Fixture::create_policy_with`], the policy labelled `labels`; what the API server
    /// (or an admission webhook) refused as the error.
    pub async fn try_create_policy(
        &mut self,
        suffix: &str,
        desired: Value,
        spec: Value,
        labels: Value,
    ) -> Result<String, kube::Error> {
        let name = self.policy_name(suffix);
        let mut object =
            serde_json::to_value(policy(&name, json!({GROUP: self.namespace}), desired)).unwrap();
        for (field, value) in spec.as_object().unwrap() {
            object["spec"][field] = value.clone();
        }
        object["metadata"]["labels"] = labels;
        let object: NodeNetworkConfigurationPolicy = serde_json::from_value(object).unwrap();
        self.policies().create(&PostParams::default(), &object).await?;
        self.policies.push(name.clone());
        Ok(name)
    }

    pub fn policies(&self) -> Api<NodeNetworkConfigurationPolicy> {
        Api::all(self.client.clone())
    }

    pub fn enactments(&self) -> Api<NodeNetworkConfigurationEnactment> {
        Api::all(self.client.clone())
    }

    /// Waits until the policy's condition `type_` is True with a message starting with `message`.
    pub async fn wait_for_policy(&self, name: &str, type_: &str, message: &str, timeout: Duration) {
        let policies = self.policies();
        eventually(&format!("policy {name} {type_}: {message}"), timeout, || async {
            let policy = policies.get_opt(name).await.unwrap()?;
            let conditions = &policy.status.as_ref()?.conditions;
            find_condition(conditions, type_)
                .is_some_and(|c| c.is_true() && c.message.starts_with(message))
                .then_some(())
        })
        .await
        .unwrap();
    }

    /// Each node's enactment outcome (its True condition type), once every node has one of
    /// `outcomes`.
    pub async fn wait_for_outcomes(
        &self,
        policy: &str,
        outcomes: &[&str],
        timeout: Duration,
    ) -> BTreeMap<String, String> {
        let enactments = self.enactments();
        let expected = self.nodes.len();
        eventually(
            &format!("every enactment of {policy} in {outcomes:?}"),
            timeout,
            || async {
                let selector = format!("{}={policy}", labels::POLICY);
                let list = enactments
                    .list(&kube::api::ListParams::default().labels(&selector))
                    .await
                    .unwrap();
                let settled: BTreeMap<String, String> = list
                    .iter()
                    .filter_map(|enactment| {
                        let node = enactment.labels().get(labels::NODE)?.clone();
                        let outcome = crate::common::true_condition(enactment)?.type_;
                        outcomes.contains(&outcome.as_str()).then_some((node, outcome))
                    })
                    .collect();
                (settled.len() == expected).then_some(settled)
            },
        )
        .await
        .unwrap()
    }

    /// Waits until every node's enactment of `policy` is Available and the policy says
    /// `<n>/<n> nodes successfully configured`; the outcomes by node.
    pub async fn wait_for_rollout(&self, policy: &str, timeout: Duration) -> BTreeMap<String, String> {
        let outcomes = self.wait_for_outcomes(policy, &["Available"], timeout).await;
        let count = self.nodes.len();
        let message = format!("{count}/{count} nodes successfully configured");
        self.wait_for_policy(policy, "Available", &message, timeout).await;
        outcomes
    }

    /// Deletes `policies` at once and waits until every one is gone (with `deletionPolicy:
    /// Revert`, once each node reverted it); how long that took.
    pub async fn delete_policies(&self, policies: &[&str], timeout: Duration) -> Duration {
        let started = std::time::Instant::now();
        for policy in policies {
            self.policies()
                .delete(policy, &DeleteParams::default())
                .await
                .unwrap();
        }
        let api = self.policies();
        eventually(&format!("policies {policies:?} gone"), timeout, || async {
            for policy in policies {
                if api.get_opt(policy).await.unwrap().is_some() {
                    return None;
                }
            }
            Some(())
        })
        .await
        .unwrap();
        started.elapsed()
    }

    /// Waits until no rollout slot Lease of `policy` is left.
    pub async fn wait_for_slots_given_back(&self, policy: &str) {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let slots = format!("{policy}.rollout-");
        eventually(
            "every rollout slot given back",
            Duration::from_secs(30),
            || async {
                let left = leases.list(&ListParams::default()).await.ok()?.items;
                (!left.iter().any(|lease| lease.name_any().starts_with(&slots))).then_some(())
            },
        )
        .await
        .unwrap();
    }

    /// Removes the policies and the namespace (the nodes go when dropped).
    pub async fn clean_up(self) {
        for name in &self.policies {
            let _ = self.policies().delete(name, &DeleteParams::default()).await;
        }
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

/// A bridge with no ports: every node applies it (none has it before).
pub fn bridge(name: &str) -> Value {
    json!({"interfaces": [{"name": name, "type": "linux-bridge", "state": "up",
        "bridge": {"options": {"stp": {"enabled": false}}, "port": []}}]})
}

/// What a watcher saw of a policy's enactments, transition by transition.
#[derive(Debug, Default)]
pub struct Observed {
    progressing_now: BTreeSet<String>,
    /// The most nodes Progressing at one instant.
    pub max_progressing: usize,
    /// The nodes Progressing after each transition, and when it was seen.
    pub progressing_history: Vec<(std::time::Instant, BTreeSet<String>)>,
    pub ever_progressing: BTreeSet<String>,
    pub ever_pending: BTreeSet<String>,
    pub transitions: usize,
    progressing_since: BTreeMap<String, std::time::Instant>,
    /// How long each node was Progressing before it became Available.
    pub apply_times: Vec<Duration>,
    /// When the last node became Available.
    pub last_available: Option<std::time::Instant>,
    /// For each node that started applying after another became Available: how long after.
    pub handoffs: Vec<Duration>,
    /// When each node was first seen holding a slot of the policy's rollout.
    slot_since: BTreeMap<String, std::time::Instant>,
    /// How long each node held its slot before it was seen Available: its apply as the rollout
    /// sees it, whenever its Progressing status lands (it is written beside the change).
    pub slot_times: Vec<Duration>,
}

/// Records every transition of `policy`'s enactments until dropped.
pub struct Recorder {
    pub observed: Arc<Mutex<Observed>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// The first node seen applying the policy, once there is one (within 60 s).
    pub async fn first_applying(&self) -> String {
        eventually("a node applying", Duration::from_secs(60), || async {
            self.observed
                .lock()
                .unwrap()
                .ever_progressing
                .iter()
                .next()
                .cloned()
        })
        .await
        .unwrap()
    }

    /// Watches the enactments of `policy` and its rollout's slots (started before the policy
    /// exists).
    pub async fn start(client: &Client, policy: &str) -> Recorder {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let api: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
        let config = watcher::Config::default().labels(&format!("{}={policy}", labels::POLICY));
        let slots = watcher(Api::<Lease>::all(client.clone()), config.clone())
            .default_backoff()
            .boxed();
        let (ready, ready_rx) = tokio::sync::oneshot::channel();
        let seen = observed.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready);
            // Ready once both watches have listed what there is.
            let mut listing = 2;
            let enactments = watcher(api, config)
                .default_backoff()
                .map(|event| Watched::Enactment(Box::new(event)));
            let slots = slots.map(|event| Watched::Slot(Box::new(event)));
            let mut events = futures::stream::select(enactments, slots).boxed();
            while let Some(event) = events.next().await {
                let event = match event {
                    Watched::Enactment(event) => *event,
                    Watched::Slot(slot) => match *slot {
                        Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => {
                            if let Some(holder) = nmstate_runtime::leases::holder(&lease) {
                                let mut seen = seen.lock().unwrap();
                                let now = std::time::Instant::now();
                                seen.slot_since.entry(holder.to_string()).or_insert(now);
                            }
                            continue;
                        }
                        Ok(watcher::Event::InitDone) => Ok(watcher::Event::InitDone),
                        _ => continue,
                    },
                };
                let Ok(event) = event else { continue };
                match event {
                    watcher::Event::InitDone => {
                        listing -= 1;
                        if listing == 0
                            && let Some(ready) = ready.take()
                        {
                            let _ = ready.send(());
                        }
                    }
                    watcher::Event::Apply(enactment) | watcher::Event::InitApply(enactment) => {
                        record(&mut seen.lock().unwrap(), &enactment);
                    }
                    // Its node deleted (the garbage collector) or the policy: it applies nothing.
                    watcher::Event::Delete(enactment) => {
                        if let Some(node) = enactment.labels().get(labels::NODE) {
                            let mut seen = seen.lock().unwrap();
                            seen.progressing_now.remove(node);
                            let now = seen.progressing_now.clone();
                            seen.progressing_history.push((std::time::Instant::now(), now));
                        }
                    }
                    _ => {}
                }
            }
        });
        ready_rx.await.unwrap();
        Recorder { observed, task }
    }
}

/// An event of one of the recorder's two watches.
enum Watched {
    Enactment(Box<Result<watcher::Event<NodeNetworkConfigurationEnactment>, watcher::Error>>),
    Slot(Box<Result<watcher::Event<Lease>, watcher::Error>>),
}

fn record(observed: &mut Observed, enactment: &NodeNetworkConfigurationEnactment) {
    let Some(node) = enactment.labels().get(labels::NODE).cloned() else {
        return;
    };
    let conditions = enactment
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let is_true = |type_: &str| find_condition(&conditions, type_).is_some_and(|c| c.is_true());
    observed.transitions += 1;
    let now = std::time::Instant::now();
    if is_true("Progressing") {
        observed.progressing_now.insert(node.clone());
        observed.ever_progressing.insert(node.clone());
        if !observed.progressing_since.contains_key(&node)
            && let Some(available) = observed.last_available
        {
            observed.handoffs.push(now - available);
        }
        observed.progressing_since.entry(node.clone()).or_insert(now);
    } else {
        observed.progressing_now.remove(&node);
        if let Some(since) = observed.progressing_since.remove(&node)
            && is_true("Available")
        {
            observed.apply_times.push(now - since);
        }
    }
    if is_true("Available") {
        observed.last_available = Some(now);
        if let Some(since) = observed.slot_since.remove(&node) {
            observed.slot_times.push(now - since);
        }
    }
    if is_true("Pending") {
        observed.ever_pending.insert(node);
    }
    observed.max_progressing = observed.max_progressing.max(observed.progressing_now.len());
    let progressing = observed.progressing_now.clone();
    observed.progressing_history.push((now, progressing));
}

/// The metrics text served on `port` (empty while nothing listens there).
pub async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The value of the series `series` (name and labels, as printed) in `text`.
pub fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// API writes per kind of object, from the audit log since `offset`, on objects of `policy`
/// (enactments, slots, events) and node states, heartbeats and the election left out.
///
/// Keys are `<resource>[/<subresource>] <verb>`, with ` (409)` or ` (refused)` when the API
/// server refused the write.
pub fn writes_since(audit: &std::path::Path, offset: u64, policy: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in completed_since(audit, offset) {
        let object = &entry["objectRef"];
        let resource = object["resource"].as_str().unwrap_or_default();
        let name = object["name"].as_str().unwrap_or_default();
        let subresource = object["subresource"]
            .as_str()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        let related = match resource {
            "nodenetworkconfigurationenactments" | "leases" => name.contains(policy),
            "nodenetworkconfigurationpolicies" => name == policy && !subresource.is_empty(),
            "events" => name.starts_with(policy),
            "nodenetworkstates" => true,
            _ => false,
        };
        if related {
            // A refused write (a lost race for a slot, a stale status) is counted, and named.
            let refused = match entry["responseStatus"]["code"].as_u64() {
                Some(409) => " (409)",
                Some(code) if code >= 400 => " (refused)",
                _ => "",
            };
            let verb = entry["verb"].as_str().unwrap_or_default();
            *counts
                .entry(format!("{resource}{subresource} {verb}{refused}"))
                .or_default() += 1;
        }
    }
    counts
}

/// The requests the API server completed, from the audit log since `offset` (one entry each).
pub fn completed_since(audit: &std::path::Path, offset: u64) -> Vec<Value> {
    let mut file = std::fs::File::open(audit).unwrap();
    file.seek(std::io::SeekFrom::Start(offset)).unwrap();
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["stage"] == "ResponseComplete")
        .collect()
}

/// Where the audit log ends now: [`writes_since`] and [`completed_since`] read from there.
pub fn audit_size(audit: &std::path::Path) -> u64 {
    std::fs::metadata(audit).map(|m| m.len()).unwrap_or(0)
}
