//! The demo's tour: example policies applied with `kubectl`, each watched node by node while it
//! rolls out (so `maxUnavailable` and the rollback are visible), then `kubectl get nncp,nnce`
//! and the part of node02's NodeNetworkState the step changed.

use super::{say, wait_until};
use crate::{LocalEnv, LocalEnvError, Result, daemon::run, testing::kubectl};
use kube::{Api, Client, ResourceExt, api::ListParams};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy,
    condition::{Condition, find_condition},
    enactment::EnactmentConditionType,
    policy::{DEFAULT_MAX_UNAVAILABLE, PolicyConditionType},
};
use serde_json::{Value, json};
use std::{cell::RefCell, collections::BTreeMap, path::Path, time::Instant};

/// The node whose state the tour shows after each step.
const SHOWN_NODE: &str = "node02";

enum Action {
    /// `kubectl apply -f examples/<file>`.
    Apply(&'static str),
    /// `kubectl patch nncp <policy> --type merge -p <patch>`.
    Patch(&'static str),
}

/// A part of a NodeNetworkState's `status.currentState`.
enum Part {
    Interface(&'static str),
    Route(&'static str),
    Dns,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Available,
    Degraded,
}

struct Step {
    title: &'static str,
    why: &'static str,
    action: Action,
    policy: &'static str,
    outcome: Outcome,
    shows: &'static [Part],
}

const STEPS: [Step; 4] = [
    Step {
        title: "A Linux bridge on the workers, one node at a time",
        why: "examples/worker-selector.yaml: br1 over eth1 with DHCP, nodeSelector node-role.kubernetes.io/worker, maxUnavailable 1: node01 (control plane) is not selected, and one worker waits (Pending, MaxUnavailableLimitReached) while the other applies",
        action: Action::Apply("worker-selector.yaml"),
        policy: "worker-selector",
        outcome: Outcome::Available,
        shows: &[Part::Interface("br1"), Part::Interface("eth1")],
    },
    Step {
        title: "A static address and a route on node02",
        why: "examples/route.yaml: 192.0.2.251/24 on eth2 of node02 only (kubernetes.io/hostname), and 198.51.100.0/24 through a neighbour on that subnet",
        action: Action::Apply("route.yaml"),
        policy: "route",
        outcome: Outcome::Available,
        shows: &[Part::Interface("eth2"), Part::Route("198.51.100.0/24")],
    },
    Step {
        title: "A broken policy: DNS servers this network cannot reach",
        why: "examples/dns.yaml names documentation-range servers that answer nowhere here: each node applies it under a NetworkManager checkpoint, its DNS probe fails, and the checkpoint is rolled back. maxUnavailable is 50% (2 of 3 nodes): once 2 nodes failed, the third is Aborted instead of breaking too",
        action: Action::Apply("dns.yaml"),
        policy: "dns",
        outcome: Outcome::Degraded,
        shows: &[Part::Dns],
    },
    Step {
        title: "The DNS policy fixed",
        why: "kubectl patch: the servers become this network's resolver, 10.77.0.1; the new generation rolls out and every node takes it",
        action: Action::Patch(
            r#"{"spec":{"desiredState":{"dns-resolver":{"config":{"server":["10.77.0.1"]}}}}}"#,
        ),
        policy: "dns",
        outcome: Outcome::Available,
        shows: &[Part::Dns],
    },
];

pub async fn run_tour(env: &LocalEnv, client: &Client, workspace: &Path) -> Result<()> {
    for (index, step) in STEPS.iter().enumerate() {
        let outcome = step.outcome;
        say(&format!("\n  ── {}. {} ──", index + 1, step.title));
        say(&format!("  {}", step.why));
        let command = match step.action {
            Action::Apply(file) => {
                let path = workspace.join("examples").join(file);
                run(kubectl(env).args(["apply", "-f"]).arg(&path))?;
                format!("kubectl apply -f examples/{file}")
            }
            Action::Patch(patch) => {
                run(kubectl(env).args(["patch", "nncp", step.policy, "--type", "merge", "-p", patch]))?;
                format!("kubectl patch nncp {} --type merge -p '{patch}'", step.policy)
            }
        };
        say(&format!("  $ {command}"));
        let reached = watch_rollout(env, client, step.policy).await?;
        if reached != outcome {
            return Err(LocalEnvError::Demo(format!(
                "policy {} ended {reached:?}, expected {outcome:?}; see `kubectl get nnce -l nmstate.io/policy={}` and the handlers' logs",
                step.policy, step.policy
            )));
        }
        say("  $ kubectl get nncp,nnce");
        for line in run(kubectl(env).args(["get", "nncp,nnce"]))?.lines() {
            say(&format!("    {line}"));
        }
        if outcome == Outcome::Degraded {
            explain_failure(env, client, step.policy).await?;
        }
        // A handler reports its node's state before it says Available: nothing to wait for.
        show_node_state(env, step.shows)?;
    }
    Ok(())
}

/// Prints each enactment's changes until the policy's current generation is Available or
/// Degraded; returns which.
async fn watch_rollout(env: &LocalEnv, client: &Client, policy: &str) -> Result<Outcome> {
    let policies = Api::<NodeNetworkConfigurationPolicy>::all(client.clone());
    let enactments = Api::<NodeNetworkConfigurationEnactment>::all(client.clone());
    let selector = enactments_of(policy);
    let started = Instant::now();
    // Shared by the polls: what each node showed last, so only changes are printed.
    let seen: RefCell<BTreeMap<String, String>> = RefCell::new(BTreeMap::new());
    let limit = policies.get(policy).await?.spec.max_unavailable.map_or_else(
        || DEFAULT_MAX_UNAVAILABLE.to_string(),
        |value| match value {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(count) => count.to_string(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(text) => text,
        },
    );
    wait_until(env, &format!("policy {policy} Available or Degraded"), || {
        let (policies, enactments, selector, seen) = (&policies, &enactments, &selector, &seen);
        let limit = &limit;
        async move {
            let current = policies.get(policy).await.ok()?;
            let generation = current.metadata.generation?;
            let list = enactments.list(selector).await.ok()?;
            let mut applying = Vec::new();
            let mut waiting = 0;
            let mut finished = Finished::default();
            let mut changes = Vec::new();
            for enactment in &list.items {
                let node = enactment
                    .labels()
                    .get(nmstate_api::labels::NODE)
                    .cloned()
                    .unwrap_or_default();
                let status = enactment.status.clone().unwrap_or_default();
                if status.policy_generation != Some(generation) {
                    continue;
                }
                let Some(condition) = true_condition(&status.conditions) else {
                    continue;
                };
                match EnactmentConditionType::from_wire(&condition.type_) {
                    Some(EnactmentConditionType::Progressing) => applying.push(node.clone()),
                    Some(EnactmentConditionType::Pending) => waiting += 1,
                    Some(EnactmentConditionType::Available) => finished.available += 1,
                    Some(EnactmentConditionType::Failing) => finished.failed += 1,
                    Some(EnactmentConditionType::Aborted) => finished.aborted += 1,
                    _ => {}
                }
                let shown = format!("{} ({})", condition.type_, condition.reason);
                if seen.borrow().get(&node) != Some(&shown) {
                    seen.borrow_mut().insert(node.clone(), shown.clone());
                    changes.push(format!("{node}  {shown}"));
                }
            }
            for change in changes {
                say(&format!(
                    "    {:>5.1} s  {change:<58} applying now: [{}] (maxUnavailable {limit})",
                    started.elapsed().as_secs_f64(),
                    applying.join(", ")
                ));
            }
            let conditions = current.status.map(|status| status.conditions).unwrap_or_default();
            let done = |outcome: Outcome| {
                find_condition(&conditions, outcome.condition().as_str()).is_some_and(|condition| {
                    condition.is_true()
                        && condition.observed_generation == Some(generation)
                        && finished.counted_in(outcome, &condition.message)
                })
            };
            // Settled: the policy's verdict on this generation, counting every node shown, and
            // no node still at it.
            if !applying.is_empty() || waiting > 0 {
                None
            } else {
                [Outcome::Available, Outcome::Degraded]
                    .into_iter()
                    .find(|outcome| done(*outcome))
            }
        }
    })
    .await
}

impl Outcome {
    /// The policy condition that says so.
    fn condition(self) -> PolicyConditionType {
        match self {
            Outcome::Available => PolicyConditionType::Available,
            Outcome::Degraded => PolicyConditionType::Degraded,
        }
    }
}

/// The nodes done with a generation of a policy, as their enactments show them.
#[derive(Clone, Copy, Default)]
struct Finished {
    available: usize,
    failed: usize,
    aborted: usize,
}

impl Finished {
    /// Whether the policy's verdict `message` (the cluster controller's, upstream's wording)
    /// counts these nodes: it is written after the enactments change, so the last node's
    /// outcome can be shown before the policy's status has it ("2/3 nodes failed to configure"
    /// before ", 1 nodes aborted configuration" is added).
    fn counted_in(self, outcome: Outcome, message: &str) -> bool {
        match outcome {
            Outcome::Available => message.starts_with(&format!("{}/", self.available)),
            Outcome::Degraded => {
                let aborted = format!(", {} nodes aborted configuration", self.aborted);
                message.starts_with(&format!("{}/", self.failed))
                    && (self.aborted == 0 || message.contains(&aborted))
            }
        }
    }
}

/// Selects the enactments of `policy`.
fn enactments_of(policy: &str) -> ListParams {
    ListParams::default().labels(&format!("{}={policy}", nmstate_api::labels::POLICY))
}

fn true_condition(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|condition| condition.is_true())
}

/// Where a user looks first when a policy is Degraded: a failing enactment's message.
async fn explain_failure(env: &LocalEnv, client: &Client, policy: &str) -> Result<()> {
    let enactments = Api::<NodeNetworkConfigurationEnactment>::all(client.clone());
    let selector = enactments_of(policy);
    let failing = enactments
        .list(&selector)
        .await?
        .items
        .into_iter()
        .find(|enactment| {
            let conditions = enactment
                .status
                .as_ref()
                .map(|status| status.conditions.as_slice());
            true_condition(conditions.unwrap_or_default())
                .is_some_and(|condition| condition.type_ == "Failing")
        });
    let Some(enactment) = failing else {
        return Ok(());
    };
    let jsonpath = r#"{.status.conditions[?(@.type=="Failing")].message}"#;
    say(&format!(
        "  Why? $ kubectl get nnce {} -o jsonpath='{jsonpath}'   ",
        enactment.name_any()
    ));
    let message = run(kubectl(env)
        .args(["get", "nnce", &enactment.name_any(), "-o"])
        .arg(format!("jsonpath={jsonpath}")))?;
    // The message ends with the node's whole state after the rollback: too long to print here.
    let (reason, state) = message.split_once(" -> currentState: ").unwrap_or((&message, ""));
    say(&format!("    {}", reason.trim()));
    if !state.is_empty() {
        say("    -> currentState: {…the node's state after the rollback…}");
    }
    Ok(())
}

/// The parts of node02's reported state a step changed.
fn show_node_state(env: &LocalEnv, parts: &[Part]) -> Result<()> {
    let text = run(kubectl(env).args(["get", "nns", SHOWN_NODE, "-o", "json"]))?;
    let nns: Value = serde_json::from_str(&text)
        .map_err(|error| LocalEnvError::Demo(format!("nns {SHOWN_NODE}: {error}")))?;
    let excerpt = excerpt(&nns["status"]["currentState"], parts);
    say(&format!(
        "  $ kubectl get nns {SHOWN_NODE} -o yaml   (status.currentState, the parts this step changed)"
    ));
    let yaml = serde_yaml::to_string(&excerpt).unwrap_or_default();
    for line in yaml.lines() {
        say(&format!("    {line}"));
    }
    Ok(())
}

/// The interfaces, routes and DNS of `state` that `parts` name, reduced to what a reader checks.
fn excerpt(state: &Value, parts: &[Part]) -> Value {
    let mut interfaces = Vec::new();
    let mut routes = Vec::new();
    let mut out = serde_json::Map::new();
    for part in parts {
        match part {
            Part::Interface(name) => {
                let found = state["interfaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|iface| iface["name"] == *name);
                interfaces.push(match found {
                    Some(iface) => brief_interface(iface),
                    None => json!({"name": name, "state": "(not reported)"}),
                });
            }
            Part::Route(destination) => routes.extend(
                state["routes"]["config"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|route| route["destination"] == *destination)
                    .cloned(),
            ),
            Part::Dns => {
                out.insert("dns-resolver".into(), state["dns-resolver"].clone());
            }
        }
    }
    if !interfaces.is_empty() {
        out.insert("interfaces".into(), Value::Array(interfaces));
    }
    if !routes.is_empty() {
        out.insert("routes".into(), json!({"config": routes}));
    }
    Value::Object(out)
}

fn brief_interface(iface: &Value) -> Value {
    let mut brief = serde_json::Map::new();
    for key in ["name", "type", "state", "controller"] {
        if !iface[key].is_null() {
            brief.insert(key.into(), iface[key].clone());
        }
    }
    let ipv4 = &iface["ipv4"];
    if !ipv4.is_null() {
        let mut v4 = serde_json::Map::new();
        for key in ["enabled", "dhcp", "address"] {
            if !ipv4[key].is_null() {
                v4.insert(key.into(), ipv4[key].clone());
            }
        }
        brief.insert("ipv4".into(), Value::Object(v4));
    }
    let ports: Vec<Value> = iface["bridge"]["port"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|port| port["name"].clone())
        .collect();
    if !ports.is_empty() {
        brief.insert("bridge".into(), json!({"port": ports}));
    }
    Value::Object(brief)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_is_settled_once_it_counts_every_node_shown() {
        let finished = |available, failed, aborted| Finished {
            available,
            failed,
            aborted,
        };
        let (available, degraded) = (Outcome::Available, Outcome::Degraded);
        let all_configured = "2/2 nodes successfully configured";
        let one_configured = "1/2 nodes successfully configured";
        let two_failed = "2/3 nodes failed to configure";
        let one_failed = "1/3 nodes failed to configure";
        let two_failed_one_aborted = "2/3 nodes failed to configure, 1 nodes aborted configuration";
        for (outcome, message, shown, settled) in [
            (available, all_configured, finished(2, 0, 0), true),
            (available, one_configured, finished(2, 0, 0), false),
            (degraded, two_failed, finished(0, 2, 0), true),
            (degraded, two_failed, finished(0, 2, 1), false),
            (degraded, two_failed_one_aborted, finished(0, 2, 1), true),
            (degraded, one_failed, finished(0, 2, 1), false),
        ] {
            assert_eq!(
                shown.counted_in(outcome, message),
                settled,
                "{outcome:?} {message:?}"
            );
        }
    }

    #[test]
    fn the_excerpt_keeps_only_what_the_step_names() {
        let state = json!({
            "interfaces": [
                {"name": "br1", "type": "linux-bridge", "state": "up", "mtu": 1500,
                 "ipv4": {"enabled": true, "dhcp": true, "address": [{"ip": "10.77.1.120", "prefix-length": 24}], "auto-dns": true},
                 "bridge": {"options": {"stp": {"enabled": false}}, "port": [{"name": "eth1", "stp-priority": 32}]}},
                {"name": "eth0", "type": "ethernet", "state": "up"},
            ],
            "routes": {"config": [{"destination": "198.51.100.0/24", "next-hop-address": "192.0.2.2"},
                                  {"destination": "0.0.0.0/0"}]},
            "dns-resolver": {"config": {"server": ["10.77.0.1"]}},
        });
        let shown = excerpt(
            &state,
            &[
                Part::Interface("br1"),
                Part::Interface("eth9"),
                Part::Route("198.51.100.0/24"),
            ],
        );
        assert_eq!(
            shown,
            json!({
                "interfaces": [
                    {"name": "br1", "type": "linux-bridge", "state": "up",
                     "ipv4": {"enabled": true, "dhcp": true, "address": [{"ip": "10.77.1.120", "prefix-length": 24}]},
                     "bridge": {"port": ["eth1"]}},
                    {"name": "eth9", "state": "(not reported)"},
                ],
                "routes": {"config": [{"destination": "198.51.100.0/24", "next-hop-address": "192.0.2.2"}]},
            })
        );
        assert_eq!(
            excerpt(&state, &[Part::Dns]),
            json!({"dns-resolver": {"config": {"server": ["10.77.0.1"]}}})
        );
    }
}
