//! Enacting the repository's example policies on sandbox nodes of their own, and what the
//! node must show afterwards: shared by the examples test and the unsupported-kernel test.

use super::{AVAILABLE, start_handler_with, stdout_of, true_condition};
use kube::{Api, Client, api::PostParams};
use nmstate_api::{NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy};
use nmstate_localenv::testing::{TestNode, eventually, shared_env, unique_name};
use serde_json::{Value, json};
use std::{collections::BTreeMap, time::Duration};

/// What a node must show once a policy is enacted: a command run in it, and text its output
/// must (or must not) contain.
pub struct Shows {
    pub command: &'static [&'static str],
    pub contains: &'static [&'static str],
    pub lacks: &'static [&'static str],
}

pub const fn shows(command: &'static [&'static str], contains: &'static [&'static str]) -> Shows {
    Shows {
        command,
        contains,
        lacks: &[],
    }
}

pub const DHCP_LEASE_ON_ETH1: Shows = shows(&["ip", "-4", "-br", "addr", "show", "eth1"], &["10.77.1."]);
pub const DEFAULT_ROUTE: Shows = shows(&["ip", "route", "show", "default"], &["via 10.77.0.1 dev eth0"]);
pub const SANDBOX_DNS: Shows = Shows {
    command: &["cat", "/etc/resolv.conf"],
    contains: &["nameserver 10.77.0.1", "search sandbox.test"],
    lacks: &["192.0.2.251", "10.77.0.254"],
};

/// `examples/<file>.yaml` as a policy for `node` only, named after both.
pub fn example_for(file: &str, node: &str, edit: fn(&mut Value)) -> NodeNetworkConfigurationPolicy {
    let path = format!("{}/../examples/{file}.yaml", env!("CARGO_MANIFEST_DIR"));
    let mut policy: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    policy["metadata"]["name"] = json!(format!("{node}-{file}"));
    policy["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    edit(&mut policy);
    serde_json::from_value(policy).unwrap()
}

pub fn as_written(_: &mut Value) {}

/// An example file and how this test edits it.
pub type Example = (&'static str, fn(&mut Value));

/// Runs `policy` on a node of its own; returns the enactment once `outcome` is reached, after
/// checking what the node shows.
pub async fn enact(
    client: &Client,
    file: &'static str,
    edit: fn(&mut Value),
    outcome: (&str, &str),
    checks: &[Shows],
) -> NodeNetworkConfigurationEnactment {
    enact_after(client, &[], (file, edit), outcome, checks).await
}

/// As [`enact`], on a node where each of `first` was enacted (Available) before.
pub async fn enact_after(
    client: &Client,
    first: &[Example],
    (file, edit): Example,
    outcome: (&str, &str),
    checks: &[Shows],
) -> NodeNetworkConfigurationEnactment {
    let env = shared_env().await.unwrap();
    let node_name = unique_name("ex");
    let node = TestNode::start(&env, &node_name, &BTreeMap::new()).await.unwrap();
    let log = std::env::temp_dir().join(format!("{node_name}.log"));
    // One attempt: the probes' verdict does not change on a retry.
    let _handler = start_handler_with(&node, &log, &[("NNCP_MAX_RETRIES", "1")]);
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let mut created = Vec::new();
    for (index, (file, edit)) in first.iter().chain([&(file, edit)]).enumerate() {
        let policy = example_for(file, &node_name, *edit);
        let policy_name = policy.metadata.name.clone().unwrap();
        policies.create(&PostParams::default(), &policy).await.unwrap();
        created.push(policy_name);
        let expected = if index < first.len() { AVAILABLE } else { outcome };
        let name = format!("{node_name}.{}", created[index]);
        // A change the kernel cannot do fails only after nmstate's ~127 s activation timeout.
        let ended = eventually(&format!("{name} ended"), Duration::from_secs(300), || async {
            let enactment = enactments.get_opt(&name).await.unwrap()?;
            let ended = true_condition(&enactment).is_some_and(|condition| {
                ["Available", "Failing", "Aborted", "Previewed"].contains(&condition.type_.as_str())
            });
            ended.then_some(enactment)
        })
        .await
        .unwrap();
        let condition = true_condition(&ended).unwrap();
        assert_eq!(
            (condition.type_.as_str(), condition.reason.as_str()),
            expected,
            "{file} on {node_name}: {}",
            condition.message
        );
    }
    let enactment = enactments
        .get(&format!("{node_name}.{}", created[first.len()]))
        .await
        .unwrap();
    for check in checks {
        let description = format!("{file}: `{}` on {node_name}", check.command.join(" "));
        // DHCP leases arrive after the apply returns.
        let shown = eventually(&description, Duration::from_secs(15), || async {
            let text = stdout_of(&node, check.command);
            let right = check.contains.iter().all(|wanted| text.contains(wanted))
                && !check.lacks.iter().any(|unwanted| text.contains(unwanted));
            right.then_some(text)
        })
        .await
        .unwrap_or_else(|error| panic!("{error}\n{}", stdout_of(&node, check.command)));
        eprintln!("{description}:\n{}", shown.trim_end());
    }
    for policy_name in created {
        policies.delete(&policy_name, &Default::default()).await.unwrap();
    }
    let _ = std::fs::remove_file(&log);
    enactment
}
