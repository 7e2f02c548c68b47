//! The health and metrics server every long-running program serves (`/metrics` in OpenMetrics
//! text, `/healthz`, `/readyz`), with a reconcile counter and duration per controller. A program
//! adds its own series as a [`Collector`].

use prometheus_client::{
    collector::Collector,
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use std::{sync::Arc, time::Duration};

/// How many times each subject (a controller, a webhook) ended with each result, and how long
/// it took: a counter `{<label>, result}` and a histogram `{<label>}`.
pub struct Outcomes {
    label: &'static str,
    counts: Family<[(&'static str, &'static str); 2], Counter>,
    durations: Family<[(&'static str, &'static str); 1], Histogram, Buckets>,
}

/// Makes each subject's histogram, with the same upper bounds.
#[derive(Clone)]
struct Buckets(Vec<f64>);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

impl Outcomes {
    /// Registers both series in `registry`, each as (name, help); `buckets` are the histogram's
    /// upper bounds.
    pub fn register(
        registry: &mut Registry,
        (name, help): (&str, &str),
        (duration_name, duration_help, buckets): (&str, &str, Vec<f64>),
        label: &'static str,
    ) -> Self {
        let counts = Family::default();
        registry.register(name, help, counts.clone());
        let durations = Family::new_with_constructor(Buckets(buckets));
        registry.register(duration_name, duration_help, durations.clone());
        Outcomes {
            label,
            counts,
            durations,
        }
    }

    pub fn record(&self, subject: &'static str, result: &'static str, took: Duration) {
        self.counts
            .get_or_create(&[(self.label, subject), ("result", result)])
            .inc();
        self.durations
            .get_or_create(&[(self.label, subject)])
            .observe(took.as_secs_f64());
    }
}

/// The registry, and the reconciles of each controller.
pub struct Metrics {
    registry: Registry,
    reconciles: Outcomes,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconciles = Outcomes::register(
            &mut registry,
            (
                "kubernetes_nmstate_reconcile",
                "Reconciles per controller and result",
            ),
            (
                "kubernetes_nmstate_reconcile_duration_seconds",
                "How long reconciles take, per controller",
                exponential_buckets(0.001, 2.0, 14).collect(),
            ),
            "controller",
        );
        Metrics { registry, reconciles }
    }
}

impl Metrics {
    /// These metrics and what `collector` reports at every scrape.
    pub fn with_collector(mut self, collector: Box<dyn Collector>) -> Self {
        self.registry.register_collector(collector);
        self
    }

    pub fn record_reconcile(&self, controller: &'static str, succeeded: bool, took: Duration) {
        let result = if succeeded { "success" } else { "error" };
        self.reconciles.record(controller, result, took);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        encode(&self.registry)
    }
}

/// `registry` in OpenMetrics text.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_are_counted_per_controller_and_result() {
        let metrics = Metrics::default();
        metrics.record_reconcile("policy-status", true, Duration::from_millis(3));
        metrics.record_reconcile("policy-status", false, Duration::from_millis(3));
        metrics.record_reconcile("policy-status", true, Duration::from_millis(3));
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                "kubernetes_nmstate_reconcile_total{controller=\"policy-status\",result=\"success\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "kubernetes_nmstate_reconcile_duration_seconds_count{controller=\"policy-status\"} 3"
            )
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
