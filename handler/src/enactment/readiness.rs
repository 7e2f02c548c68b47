//! The network-ready gate (`NMState.spec.networkReadiness`): this node's condition
//! `NetworkConfigured` says whether every policy selecting it is Available here for its current
//! generation, naming the ones that are not; once it is True, the startup taint (if one is
//! named) is removed from the node. The handler never adds the taint. [`evaluate`] decides;
//! [`update`] reads and writes, and only writes what changed.

use super::Context;
use futures::FutureExt;
use k8s_openapi::{
    api::core::v1::{Node, NodeCondition},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::reflector::Store,
};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy,
    enactment::EnactmentConditionType,
    labels,
    nmstate::{NETWORK_CONFIGURED, NetworkConfiguredReason},
    selection::selects,
};
use serde_json::json;
use std::collections::BTreeMap;
use tracing::info;

/// A policy as the gate sees it on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    pub name: String,
    pub generation: i64,
}

/// The condition's status, reason and message, from the policies that select this node and
/// the generation each enactment here is Available for.
pub fn evaluate(
    selected: &[Selected],
    available: &BTreeMap<String, i64>,
) -> (bool, NetworkConfiguredReason, String) {
    let pending: Vec<&str> = selected
        .iter()
        .filter(|policy| available.get(&policy.name) != Some(&policy.generation))
        .map(|policy| policy.name.as_str())
        .collect();
    if pending.is_empty() {
        let message = format!(
            "{} policies selecting this node are Available here",
            selected.len()
        );
        (true, NetworkConfiguredReason::PoliciesAvailable, message)
    } else {
        let message = format!("not Available here yet: {}", pending.join(", "));
        (false, NetworkConfiguredReason::PoliciesPending, message)
    }
}

/// Brings the node's condition, and its startup taint, up to date.
pub async fn update(
    context: &Context,
    policies: &Store<NodeNetworkConfigurationPolicy>,
) -> Result<(), kube::Error> {
    let Some(gate) = &context.config.network_readiness else {
        return Ok(());
    };
    // Before the policies are listed, none would seem to select the node: it would seem ready,
    // and lose its taint too early. Asked, not awaited (the store wakes one waiter only).
    if !matches!(policies.wait_until_ready().now_or_never(), Some(Ok(()))) {
        return Ok(());
    }
    let node_name = &context.config.node_name;
    let nodes: Api<Node> = Api::all(context.client.clone());
    let node = nodes.get(node_name).await?;
    // Previews are never applied, and deleted policies are on their way out: neither counts.
    let selected: Vec<Selected> = policies
        .state()
        .iter()
        .filter(|policy| {
            policy.metadata.deletion_timestamp.is_none()
                && !policy.spec.is_preview()
                && selects(&policy.spec, node_name, node.labels())
        })
        .map(|policy| Selected {
            name: policy.name_any(),
            generation: policy.metadata.generation.unwrap_or_default(),
        })
        .collect();
    let mine = ListParams::default().labels(&format!("{}={node_name}", labels::NODE));
    let available: BTreeMap<String, i64> =
        Api::<NodeNetworkConfigurationEnactment>::all(context.client.clone())
            .list(&mine)
            .await?
            .into_iter()
            .filter_map(|enactment| {
                let policy = enactment.labels().get(labels::POLICY)?.clone();
                let status = enactment.status?;
                let available = status.is(EnactmentConditionType::Available);
                Some((policy, status.policy_generation.filter(|_| available)?))
            })
            .collect();
    let (ready, reason, message) = evaluate(&selected, &available);
    let status = if ready { "True" } else { "False" };
    let current = node
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == NETWORK_CONFIGURED));
    let unchanged = current.is_some_and(|c| {
        c.status == status
            && c.reason.as_deref() == Some(reason.as_str())
            && c.message.as_deref() == Some(&message)
    });
    if !unchanged {
        let now = Time(Timestamp::now());
        let transition = match current {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
        let condition = NodeCondition {
            type_: NETWORK_CONFIGURED.into(),
            status: status.into(),
            reason: Some(reason.as_str().into()),
            message: Some(message.clone()),
            last_heartbeat_time: Some(now),
            last_transition_time: transition,
        };
        // Node conditions merge by type: the kubelet's are left alone.
        let patch = json!({"status": {"conditions": [condition]}});
        nodes
            .patch_status(node_name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
        info!(ready, "{NETWORK_CONFIGURED}: {message}");
    }
    if let (true, Some(key)) = (ready, &gate.startup_taint) {
        let taints = node
            .spec
            .as_ref()
            .and_then(|spec| spec.taints.clone())
            .unwrap_or_default();
        if taints.iter().any(|taint| &taint.key == key) {
            let kept: Vec<_> = taints.iter().filter(|taint| &taint.key != key).collect();
            // Tested first, so a taint changed meanwhile by someone else is never overwritten.
            let operations: json_patch::Patch = serde_json::from_value(json!([
                {"op": "test", "path": "/spec/taints", "value": taints},
                {"op": "replace", "path": "/spec/taints", "value": kept},
            ]))
            .map_err(kube::Error::SerdeError)?;
            nodes
                .patch(node_name, &PatchParams::default(), &Patch::Json::<()>(operations))
                .await?;
            info!(taint = %key, "removed the startup taint: the node's network is configured");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, generation: i64) -> Selected {
        Selected {
            name: name.into(),
            generation,
        }
    }

    #[test]
    fn configured_once_every_selecting_policy_is_available_for_its_generation() {
        let available = BTreeMap::from([("bridge".to_string(), 2), ("dns".to_string(), 1)]);
        let (ready, reason, message) = evaluate(&[policy("bridge", 2), policy("dns", 1)], &available);
        assert!(ready);
        assert_eq!(reason, NetworkConfiguredReason::PoliciesAvailable);
        assert_eq!(message, "2 policies selecting this node are Available here");
        let (ready, reason, message) = evaluate(
            &[policy("bridge", 3), policy("dns", 1), policy("vlan", 1)],
            &available,
        );
        assert!(!ready);
        assert_eq!(reason, NetworkConfiguredReason::PoliciesPending);
        assert_eq!(message, "not Available here yet: bridge, vlan");
        assert!(
            evaluate(&[], &BTreeMap::new()).0,
            "no policy: nothing to wait for"
        );
    }
}
