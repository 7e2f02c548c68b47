//! Prometheus metrics of the cluster controller, in OpenMetrics text: upstream's gauges (same
//! names and labels, computed from the watched objects at every scrape, so no series goes
//! stale) and a reconcile counter and duration per controller. Only the leader holds the
//! watches, so only the leader reports the gauges: replicas never double-count.

use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, NodeNetworkState, labels,
    policy::PolicyConditionType,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::Counter,
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, RwLock},
    time::Duration,
};

/// Enactment condition types, in upstream's order for `kubernetes_nmstate_enactments_status`.
const ENACTMENT_STATUSES: [&str; 5] = ["Available", "Failing", "Progressing", "Pending", "Aborted"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

/// What the gauges are computed from: the leader's watch caches.
#[derive(Clone)]
pub struct Sources {
    pub policies: kube::runtime::reflector::Store<NodeNetworkConfigurationPolicy>,
    pub enactments: kube::runtime::reflector::Store<NodeNetworkConfigurationEnactment>,
    pub states: kube::runtime::reflector::Store<NodeNetworkState>,
}

/// The registry, and handles to record reconciles.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    durations: Family<ControllerLabels, Histogram>,
    sources: Arc<RwLock<Option<Sources>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "kubernetes_nmstate_reconcile",
            "Reconciles per controller and result",
            reconciles.clone(),
        );
        let durations = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "kubernetes_nmstate_reconcile_duration_seconds",
            "How long reconciles take, per controller",
            durations.clone(),
        );
        let sources = Arc::new(RwLock::new(None));
        registry.register_collector(Box::new(Gauges {
            sources: sources.clone(),
        }));
        Metrics {
            registry,
            reconciles,
            durations,
            sources,
        }
    }
}

impl Metrics {
    pub fn record_reconcile(&self, controller: &'static str, succeeded: bool, took: Duration) {
        let result = if succeeded { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
        self.durations
            .get_or_create(&ControllerLabels { controller })
            .observe(took.as_secs_f64());
    }

    /// Where the gauges come from while this replica leads; `None` when it stops leading.
    pub fn set_sources(&self, sources: Option<Sources>) {
        if let Ok(mut current) = self.sources.write() {
            *current = sources;
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Serves `/metrics` (OpenMetrics), `/healthz` and `/readyz` on `address` (plain HTTP), on a
/// task of its own; fails only when the address cannot be bound.
pub async fn serve(
    address: std::net::SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(address).await?;
    let routes = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { exposition(metrics.encode()) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    Ok(tokio::spawn(async move { axum::serve(listener, routes).await }))
}

/// The HTTP answer to a scrape: the OpenMetrics text, or 500 when it cannot be encoded.
pub fn exposition(encoded: Result<String, std::fmt::Error>) -> axum::response::Response {
    use axum::{http::StatusCode, http::header, response::IntoResponse};
    match encoded {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics").into_response(),
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
            "Count of policies by status (Available, Degraded, Progressing, Ignored)",
            policies_status(policies.iter().map(|p| &**p)),
        )?;
        gauge(
            &mut encoder,
            "kubernetes_nmstate_enactments_status",
            "Count of enactments per node by status (Available, Failing, Progressing, Pending, Aborted)",
            enactments_status(enactments.iter().map(|e| &**e)),
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
#[path = "metrics_tests.rs"]
mod tests;
