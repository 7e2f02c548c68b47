//! The cluster controller's Prometheus metrics: upstream's gauges (same names and labels,
//! computed from the watched objects at every scrape, so no series goes stale), beside the
//! runtime's reconcile counter and duration. Only the leader holds the watches, so only the
//! leader reports the gauges: replicas never double-count.

use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, NodeNetworkState,
    ip_pool::NodeNetworkIPPool, labels, nmstate::NETWORK_CONFIGURED, policy::PolicyConditionType,
};
use nmstate_runtime::metrics::Metrics;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};
use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, RwLock},
};

/// Enactment condition types, in upstream's order for `kubernetes_nmstate_enactments_status`,
/// then `Previewed`.
const ENACTMENT_STATUSES: [&str; 6] = [
    "Available",
    "Failing",
    "Progressing",
    "Pending",
    "Aborted",
    "Previewed",
];

/// What the gauges are computed from: the leader's watch caches.
#[derive(Clone)]
pub struct Sources {
    pub policies: kube::runtime::reflector::Store<NodeNetworkConfigurationPolicy>,
    pub enactments: kube::runtime::reflector::Store<NodeNetworkConfigurationEnactment>,
    pub states: kube::runtime::reflector::Store<NodeNetworkState>,
    /// Their conditions: the network-ready gate's.
    pub nodes: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Node>,
    /// Their allocations.
    pub pools: kube::runtime::reflector::Store<NodeNetworkIPPool>,
}

/// The served metrics, and where the gauges come from.
pub struct ClusterMetrics {
    pub served: Arc<Metrics>,
    sources: Arc<RwLock<Option<Sources>>>,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        let sources = Arc::new(RwLock::new(None));
        let gauges = Box::new(Gauges {
            sources: sources.clone(),
        });
        ClusterMetrics {
            served: Arc::new(Metrics::default().with_collector(gauges)),
            sources,
        }
    }
}

impl ClusterMetrics {
    /// Where the gauges come from while this replica leads; `None` when it stops leading.
    pub fn set_sources(&self, sources: Option<Sources>) {
        if let Ok(mut current) = self.sources.write() {
            *current = sources;
        }
    }
}

#[derive(Debug)]
struct Gauges {
    sources: Arc<RwLock<Option<Sources>>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sources")
    }
}

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sources) = self.sources.read().ok().and_then(|sources| sources.clone()) else {
            return Ok(());
        };
        let enactments = sources.enactments.state();
        let states = sources.states.state();
        let policies = sources.policies.state();
        let nodes = sources.nodes.state();
        let features = features_applied(enactments.iter().map(|e| &**e));
        gauge(
            &mut encoder,
            "kubernetes_nmstate_features_applied",
            "Number of nmstate features applied labeled by its name",
            features.iter().map(|name| (vec![("name", name.clone())], 1)),
        )?;
        gauge(
            &mut encoder,
            "kubernetes_nmstate_network_interfaces",
            "Number of network interfaces labeled by its type",
            states.iter().flat_map(|state| interfaces_by_type(state)),
        )?;
        gauge(
            &mut encoder,
            "kubernetes_nmstate_routes",
            "Number of network routes labeled by node, IP stack and type (static or dynamic)",
            states.iter().flat_map(|state| routes(state)),
        )?;
        gauge(
            &mut encoder,
            "kubernetes_nmstate_policies_status",
            "Count of policies by status (Available, Degraded, Progressing, Ignored, Previewed)",
            policies_status(policies.iter().map(|p| &**p)),
        )?;
        gauge(
            &mut encoder,
            "kubernetes_nmstate_enactments_status",
            "Count of enactments per node by status (Available, Failing, Progressing, Pending, Aborted, Previewed)",
            enactments_status(enactments.iter().map(|e| &**e)),
        )?;
        gauge(
            &mut encoder,
            "kubernetes_nmstate_nodes_network_configured",
            "Count of nodes by their NetworkConfigured condition (the network-ready gate; nodes without it are not counted)",
            network_configured(nodes.iter().map(|n| &**n)),
        )?;
        gauge(
            &mut encoder,
            "kubernetes_nmstate_ip_pool_addresses",
            "Addresses of each NodeNetworkIPPool by state (allocated, free)",
            pool_addresses(sources.pools.state().iter().map(|p| &**p)),
        )?;
        gauge(
            &mut encoder,
            "kubernetes_nmstate_enactment_probes",
            "Count of enactments by the result of each probe in their last apply (probe: ping, ping6, dns, tcp, api-server, node-readiness; result: Passed, Failed, NotRun, NotSelected)",
            probe_results(enactments.iter().map(|e| &**e)),
        )
    }
}

type Series = (Vec<(&'static str, String)>, i64);

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = Series>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Each pool's allocated and free addresses (a pool whose spec is invalid has none free).
pub fn pool_addresses<'a>(pools: impl Iterator<Item = &'a NodeNetworkIPPool>) -> Vec<Series> {
    let mut series = Vec::new();
    for pool in pools {
        let name = pool.metadata.name.clone().unwrap_or_default();
        let allocated = pool.status.as_ref().map_or(0, |status| status.allocations.len());
        let size = pool.spec.range().map_or(0, |range| range.size());
        let allocated = i64::try_from(allocated).unwrap_or(i64::MAX);
        let free = i64::try_from(size)
            .unwrap_or(i64::MAX)
            .saturating_sub(allocated)
            .max(0);
        series.push((
            vec![("pool", name.clone()), ("state", "allocated".to_string())],
            allocated,
        ));
        series.push((vec![("pool", name), ("state", "free".to_string())], free));
    }
    series
}

/// Nodes by the status of their `NetworkConfigured` condition, both statuses reported.
pub fn network_configured<'a>(
    nodes: impl Iterator<Item = &'a k8s_openapi::api::core::v1::Node>,
) -> Vec<Series> {
    let mut counts = BTreeMap::from([("False", 0), ("True", 0)]);
    for node in nodes {
        let condition = node
            .status
            .as_ref()
            .and_then(|status| status.conditions.as_ref())
            .and_then(|conditions| conditions.iter().find(|c| c.type_ == NETWORK_CONFIGURED));
        if let Some(count) = condition.and_then(|c| counts.get_mut(c.status.as_str())) {
            *count += 1;
        }
    }
    counts
        .into_iter()
        .map(|(status, count)| (vec![("status", status.to_string())], count))
        .collect()
}

/// Enactments by the result of each probe of their last apply. TCP probes count as one kind,
/// so the series stay few whatever the policies name.
pub fn probe_results<'a>(
    enactments: impl Iterator<Item = &'a NodeNetworkConfigurationEnactment>,
) -> Vec<Series> {
    let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    let reports = enactments
        .filter_map(|enactment| enactment.status.as_ref()?.probes.as_ref())
        .flatten();
    for report in reports {
        let kind = report
            .name
            .split_once(' ')
            .map_or(report.name.as_str(), |(kind, _)| kind);
        let result = match (&report.result, report.selected) {
            (Some(result), _) => result.clone(),
            (None, false) => "NotSelected".to_string(),
            (None, true) => continue,
        };
        *counts.entry((kind.to_string(), result)).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((probe, result), count)| (vec![("probe", probe), ("result", result)], count))
        .collect()
}

/// Every nmstate feature some enactment uses.
pub fn features_applied<'a>(
    enactments: impl Iterator<Item = &'a NodeNetworkConfigurationEnactment>,
) -> BTreeSet<String> {
    enactments
        .filter_map(|enactment| enactment.status.as_ref()?.features.clone())
        .flatten()
        .collect()
}

fn current_state(state: &NodeNetworkState) -> Option<&Value> {
    Some(&state.status.as_ref()?.current_state.as_ref()?.0)
}

/// Interfaces of one node state by type.
pub fn interfaces_by_type(state: &NodeNetworkState) -> Vec<Series> {
    let node = kube::ResourceExt::name_any(state);
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for interface in current_state(state)
        .and_then(|current| current["interfaces"].as_array())
        .into_iter()
        .flatten()
    {
        let kind = interface["type"].as_str().unwrap_or("unknown").to_string();
        *counts.entry(kind).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(kind, count)| (vec![("type", kind), ("node", node.clone())], count))
        .collect()
}

/// Running routes of one node state by IP stack and by whether they are configured (static).
pub fn routes(state: &NodeNetworkState) -> Vec<Series> {
    let node = kube::ResourceExt::name_any(state);
    let Some(current) = current_state(state) else {
        return Vec::new();
    };
    let destinations = |section: &str| -> Vec<String> {
        current["routes"][section]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|route| route["destination"].as_str().map(str::to_string))
            .collect()
    };
    let configured: BTreeSet<String> = destinations("config").into_iter().collect();
    let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for destination in destinations("running") {
        let stack = if destination.contains(':') { "ipv6" } else { "ipv4" };
        let kind = if configured.contains(&destination) {
            "static"
        } else {
            "dynamic"
        };
        *counts.entry((stack, kind)).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((stack, kind), count)| {
            let labels = vec![
                ("node", node.clone()),
                ("ip_stack", stack.into()),
                ("type", kind.into()),
            ];
            (labels, count)
        })
        .collect()
}

/// Policies by their first True condition; every status is reported, zero included.
pub fn policies_status<'a>(
    policies: impl Iterator<Item = &'a NodeNetworkConfigurationPolicy>,
) -> Vec<Series> {
    let mut counts: BTreeMap<&str, i64> = PolicyConditionType::ALL.iter().map(|t| (t.as_str(), 0)).collect();
    for policy in policies {
        let first_true = policy
            .status
            .as_ref()
            .and_then(|status| status.conditions.iter().find(|condition| condition.is_true()));
        if let Some(count) = first_true.and_then(|condition| counts.get_mut(condition.type_.as_str())) {
            *count += 1;
        }
    }
    counts
        .into_iter()
        .map(|(status, count)| (vec![("status", status.to_string())], count))
        .collect()
}

/// Enactments per node by their first True condition; every status of a node is reported.
pub fn enactments_status<'a>(
    enactments: impl Iterator<Item = &'a NodeNetworkConfigurationEnactment>,
) -> Vec<Series> {
    let mut counts: BTreeMap<(String, &str), i64> = BTreeMap::new();
    for enactment in enactments {
        let Some(node) = enactment
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::NODE))
        else {
            continue;
        };
        for status in ENACTMENT_STATUSES {
            counts.entry((node.clone(), status)).or_default();
        }
        let first_true = enactment
            .status
            .as_ref()
            .and_then(|status| status.conditions.iter().find(|condition| condition.is_true()));
        if let Some(status) = first_true.and_then(|c| ENACTMENT_STATUSES.iter().find(|s| **s == c.type_)) {
            *counts.entry((node.clone(), status)).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|((node, status), count)| (vec![("node", node), ("status", status.to_string())], count))
        .collect()
}

#[cfg(test)]
mod tests;
