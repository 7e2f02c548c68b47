//! The handler's heartbeat: a Lease per node, `<node>.nmstate-handler`, renewed while the
//! handler runs (as the kubelet's node leases). The nodes with a live heartbeat are the nodes
//! that run a handler: a policy's `maxUnavailable` scales over them, and its status counts
//! them. A killed or paused handler stops renewing, and its node drops out once the lease
//! expires; it comes back with the handler.

use crate::leases;
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
    jiff::Timestamp,
};
use kube::{Api, Client, Resource, ResourceExt, api::ListParams};
use nmstate_api::labels;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};
use tracing::{info, warn};

pub fn lease_name(node: &str) -> String {
    leases::object_name(node, ".nmstate-handler")
}

/// Selects the heartbeat leases.
pub fn selector() -> String {
    format!("{}={}", labels::LEASE, labels::LEASE_HANDLER)
}

/// The nodes whose handler's heartbeat is live at `now`.
pub fn live_nodes<'a>(heartbeats: impl IntoIterator<Item = &'a Lease>, now: Timestamp) -> BTreeSet<String> {
    heartbeats
        .into_iter()
        .filter_map(|lease| leases::live_holder(lease, now))
        .map(str::to_string)
        .collect()
}

/// The nodes that run a live handler, read from the API.
pub async fn live_handlers(leases: &Api<Lease>) -> Result<BTreeSet<String>, kube::Error> {
    let heartbeats = leases.list(&ListParams::default().labels(&selector())).await?;
    Ok(live_nodes(&heartbeats.items, Timestamp::now()))
}

/// Holds and renews this node's heartbeat until the task is dropped. Owned by the Node, so it
/// goes when the node does.
pub async fn run(client: Client, namespace: String, node: Node, duration: Duration) {
    let leases: Api<Lease> = Api::namespaced(client, &namespace);
    let node_name = node.name_any();
    let name = lease_name(&node_name);
    loop {
        match acquire(&leases, &name, &node, duration).await {
            Ok(lease) => {
                info!(lease = %name, namespace = %namespace, "heartbeat held");
                leases::keep_renewed(leases.clone(), Arc::new(Mutex::new(lease)), duration).await;
            }
            Err(error) => warn!(
                lease = %name,
                "cannot write the handler's heartbeat (the handler needs get, create and update on \
                 leases.coordination.k8s.io in namespace {namespace}); retrying: {error}"
            ),
        }
        tokio::time::sleep(leases::renew_interval(duration)).await;
    }
}

async fn acquire(
    leases: &Api<Lease>,
    name: &str,
    node: &Node,
    duration: Duration,
) -> Result<Lease, kube::Error> {
    let now = Timestamp::now();
    let node_name = node.name_any();
    match leases.get_opt(name).await? {
        Some(mut lease) => {
            leases::take_over(&mut lease, &node_name, duration, now);
            leases::replace(leases, &lease).await
        }
        None => {
            let labels = BTreeMap::from([
                (labels::LEASE.to_string(), labels::LEASE_HANDLER.to_string()),
                (labels::NODE.to_string(), node_name.clone()),
            ]);
            let mut lease = leases::held_by(name, labels, &node_name, duration, now);
            lease.metadata.owner_references = Some(vec![OwnerReference {
                api_version: Node::api_version(&()).into(),
                kind: Node::kind(&()).into(),
                name: node_name.clone(),
                uid: node.uid().unwrap_or_default(),
                ..OwnerReference::default()
            }]);
            leases::create(leases, &lease).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unexpired_heartbeats_count() {
        let now = Timestamp::from_second(1_000).unwrap();
        let beat = |node: &str, renewed: i64| {
            let at = Timestamp::from_second(renewed).unwrap();
            leases::held_by(
                &lease_name(node),
                BTreeMap::new(),
                node,
                Duration::from_secs(30),
                at,
            )
        };
        let heartbeats = [beat("node01", 990), beat("node02", 960), beat("node03", 971)];
        assert_eq!(
            live_nodes(&heartbeats, now),
            BTreeSet::from(["node01".to_string(), "node03".to_string()])
        );
    }
}
