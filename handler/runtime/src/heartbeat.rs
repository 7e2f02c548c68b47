//! The heartbeat contract between the node agent, which holds a Lease per node
//! (`<node>.nmstate-handler`, renewed while it runs, as the kubelet's node leases), and its
//! readers: the nodes with a live heartbeat are the nodes that run a handler, over which a
//! policy's `maxUnavailable` scales and its status counts. A killed or paused handler stops
//! renewing, and its node drops out once the lease expires.

use crate::leases;
use k8s_openapi::{
    api::coordination::v1::Lease,
    jiff::{SignedDuration, Timestamp},
};
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

/// How much a watcher of the heartbeats has seen: an outage of the API server (or of the
/// watcher's connection) is an outage of the observer, not of the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sight {
    /// The watch is down, or has not listed yet: the cache may miss any renewal.
    Lost,
    /// Watching without an error since this instant.
    Since(Timestamp),
}

/// When `lease`'s holder stops counting as live for an observer with `sight`: its expiry, but
/// not before one lease duration after the observer saw again, so a handler that could not
/// renew while the API server was away gets a full lease to show up. `None`: it counts as long
/// as the observer is blind.
pub fn live_until(lease: &Lease, sight: Sight) -> Option<Timestamp> {
    let expiry = leases::expiry(lease)?;
    match sight {
        Sight::Lost => None,
        Sight::Since(since) => {
            let duration = lease.spec.as_ref()?.lease_duration_seconds.unwrap_or(0);
            let grace = since
                .checked_add(SignedDuration::from_secs(i64::from(duration)))
                .unwrap_or(since);
            Some(expiry.max(grace))
        }
    }
}

/// The nodes whose handler counts as live at `now` for an observer with `sight`.
pub fn live_nodes_seen<'a>(
    heartbeats: impl IntoIterator<Item = &'a Lease>,
    now: Timestamp,
    sight: Sight,
) -> BTreeSet<String> {
    heartbeats
        .into_iter()
        .filter(|lease| leases::expiry(lease).is_some())
        .filter(|lease| live_until(lease, sight).is_none_or(|until| until > now))
        .filter_map(leases::holder)
        .map(str::to_string)
        .collect()
}

/// The nodes that run a live handler, read from the API server's cache: a heartbeat is judged
/// by its renewal time, so a list a few milliseconds old tells the same, and a consistent list
/// waits up to 100 ms for the cache to hear from etcd that it is current.
pub async fn live_handlers(leases: &Api<Lease>) -> Result<BTreeSet<String>, kube::Error> {
    let heartbeats = leases
        .list(&ListParams::default().labels(&selector()).match_any())
        .await?;
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

    #[test]
    fn an_observer_that_could_not_see_gives_every_holder_a_lease_to_show_up() {
        let at = |second| Timestamp::from_second(second).unwrap();
        let beat = |node: &str, renewed: i64| {
            leases::held_by(
                &lease_name(node),
                BTreeMap::new(),
                node,
                Duration::from_secs(30),
                at(renewed),
            )
        };
        // node01 renewed after the observer saw again; node02's lease expired at 990 (before
        // the API server came back, say); node03's at 1_050.
        let heartbeats = [beat("node01", 1_005), beat("node02", 960), beat("node03", 1_020)];
        let nodes = |names: &[&str]| names.iter().map(|name| name.to_string()).collect::<BTreeSet<_>>();
        // (now, sight, live)
        let cases = [
            (1_010, Sight::Lost, nodes(&["node01", "node02", "node03"])),
            (
                1_010,
                Sight::Since(at(1_000)),
                nodes(&["node01", "node02", "node03"]),
            ),
            (1_031, Sight::Since(at(1_000)), nodes(&["node01", "node03"])),
            (1_010, Sight::Since(at(900)), nodes(&["node01", "node03"])),
            (1_040, Sight::Since(at(1_000)), nodes(&["node03"])),
            (1_051, Sight::Since(at(1_000)), nodes(&[])),
        ];
        for (index, (now, sight, live)) in cases.into_iter().enumerate() {
            assert_eq!(live_nodes_seen(&heartbeats, at(now), sight), live, "case {index}");
        }
        assert_eq!(
            live_until(&heartbeats[1], Sight::Since(at(1_000))),
            Some(at(1_030))
        );
        assert_eq!(live_until(&heartbeats[1], Sight::Lost), None);
    }
}
