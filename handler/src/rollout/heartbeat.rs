//! The handler's heartbeat: holds this node's Lease and renews it while the handler runs
//! (`nmstate_runtime::heartbeat` says what readers make of it). A killed or paused handler stops
//! renewing, and its node drops out once the lease expires; it comes back with the handler.

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
    jiff::Timestamp,
};
use kube::{Api, Client, Resource, ResourceExt};
use nmstate_api::labels;
use nmstate_runtime::{heartbeat::lease_name, leases};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tracing::{info, warn};

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
