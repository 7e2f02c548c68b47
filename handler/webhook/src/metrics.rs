//! The webhook's own metrics: admissions per webhook and outcome, and how long they take.

use nmstate_runtime::metrics::Outcomes;
use prometheus_client::{metrics::histogram::exponential_buckets, registry::Registry};
use std::time::Duration;

pub struct AdmissionMetrics {
    registry: Registry,
    admissions: Outcomes,
}

impl Default for AdmissionMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let admissions = Outcomes::register(
            &mut registry,
            (
                "kubernetes_nmstate_webhook_admissions",
                "Admission reviews per webhook and result",
            ),
            (
                "kubernetes_nmstate_webhook_admission_duration_seconds",
                "How long admission reviews take inside the webhook",
                // From 0.1 ms to about 1.6 s.
                exponential_buckets(0.0001, 2.0, 15).collect(),
            ),
            "webhook",
        );
        AdmissionMetrics { registry, admissions }
    }
}

impl AdmissionMetrics {
    /// `result`: `allowed`, `denied` or `error` (a request that could not be reviewed).
    pub fn record(&self, webhook: &'static str, result: &'static str, took: Duration) {
        self.admissions.record(webhook, result, took);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        nmstate_runtime::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admissions_are_counted_by_webhook_and_result() {
        let metrics = AdmissionMetrics::default();
        metrics.record("validate", "denied", Duration::from_micros(300));
        metrics.record("validate", "denied", Duration::from_micros(500));
        metrics.record("timestamp-mutate", "allowed", Duration::from_micros(100));
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                r#"kubernetes_nmstate_webhook_admissions_total{webhook="validate",result="denied"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"kubernetes_nmstate_webhook_admission_duration_seconds_count{webhook="validate"} 2"#
        ));
        assert!(text.contains(r#"webhook="timestamp-mutate",result="allowed"} 1"#));
    }
}
