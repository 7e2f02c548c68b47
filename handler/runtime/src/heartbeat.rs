//! The heartbeat contract between the node agent, which holds a Lease per node
//! (`<node>.nmstate-handler`, renewed while it runs, as the kubelet's node leases), and its
//! readers: the nodes with a live heartbeat are the nodes that run a handler, over which a
//! policy's `maxUnavailable` scales and its status counts. A killed or paused handler stops
//! renewing, and its node drops out once the lease expires.

use crate::leases;
use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use kube::{Api, api::ListParams};
use nmstate_api::{labels, names};
use std::collections::BTreeSet;

/// The name of `node`'s heartbeat Lease.
pub fn lease_name(node: &str) -> String {
    leases::object_name(node, names::HANDLER_SUFFIX)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::BTreeMap, time::Duration};

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
