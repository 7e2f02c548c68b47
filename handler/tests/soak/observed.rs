//! What the soak reads from the cluster: a watcher of every enactment of the run, and what
//! a node state and a policy's status say.

use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, NodeNetworkState,
    condition::find_condition, labels,
};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

/// What a watcher of every enactment of this run saw: nodes applying each policy at once
/// (against the limits the generator set), and the applies that ended Available.
#[derive(Debug, Default)]
pub struct Seen {
    pub progressing: BTreeMap<String, BTreeSet<String>>,
    pub limits: BTreeMap<String, usize>,
    pub over_limit: Vec<String>,
    pub applied: BTreeSet<(String, i64)>,
    pub failed: BTreeSet<(String, i64)>,
}

pub fn watch_enactments(
    client: &Client,
    prefix: &str,
    seen: Arc<Mutex<Seen>>,
) -> tokio::task::JoinHandle<()> {
    let api: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let prefix = prefix.to_string();
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let (enactment, deleted) = match event {
                Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) => (e, false),
                Ok(watcher::Event::Delete(e)) => (e, true),
                _ => continue,
            };
            let (Some(policy), Some(node)) = (
                enactment.labels().get(labels::POLICY).cloned(),
                enactment.labels().get(labels::NODE).cloned(),
            ) else {
                continue;
            };
            if !policy.starts_with(&prefix) {
                continue;
            }
            let status = enactment.status.clone().unwrap_or_default();
            let is_true =
                |type_: &str| find_condition(&status.conditions, type_).is_some_and(|c| c.is_true());
            let mut seen = seen.lock().unwrap();
            let generation = status.policy_generation.unwrap_or_default();
            if !deleted && is_true("Available") {
                seen.applied.insert((enactment.name_any(), generation));
            }
            if !deleted && is_true("Failing") {
                seen.failed.insert((enactment.name_any(), generation));
            }
            let applying = seen.progressing.entry(policy.clone()).or_default();
            if !deleted && is_true("Progressing") {
                applying.insert(node);
            } else {
                applying.remove(&node);
            }
            let count = applying.len();
            let limit = seen.limits.get(&policy).copied().unwrap_or(usize::MAX);
            if count > limit {
                let message = format!("{count} nodes applied {policy} at once (maxUnavailable {limit})");
                seen.over_limit.push(message);
            }
        }
    })
}

pub fn interfaces(state: &NodeNetworkState) -> BTreeSet<String> {
    let current = state
        .status
        .as_ref()
        .and_then(|status| status.current_state.as_ref());
    current
        .and_then(|document| document.0["interfaces"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|interface| interface["name"].as_str().map(str::to_string))
        .collect()
}

pub fn eth0_addresses(state: &NodeNetworkState) -> Vec<String> {
    let current = state
        .status
        .as_ref()
        .and_then(|status| status.current_state.as_ref());
    let interfaces = current
        .and_then(|document| document.0["interfaces"].as_array().cloned())
        .unwrap_or_default();
    interfaces
        .iter()
        .filter(|interface| interface["name"] == "eth0")
        .flat_map(|interface| {
            interface["ipv4"]["address"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|address| address["ip"].as_str().map(str::to_string))
        .collect()
}

pub fn policy_outcome(policy: &NodeNetworkConfigurationPolicy) -> Option<&'static str> {
    let conditions = &policy.status.as_ref()?.conditions;
    ["Available", "Degraded"]
        .into_iter()
        .find(|type_| find_condition(conditions, type_).is_some_and(|c| c.is_true()))
}
