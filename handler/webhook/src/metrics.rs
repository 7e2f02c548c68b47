//! The webhook's own metrics: admissions per webhook and outcome, and how long they take.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    webhook: &'static str,
    /// `allowed`, `denied` or `error` (a request that could not be reviewed).
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: &'static str,
}

pub struct AdmissionMetrics {
    registry: Registry,
    admissions: Family<AdmissionLabels, Counter>,
    durations: Family<WebhookLabels, Histogram>,
}

impl Default for AdmissionMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "kubernetes_nmstate_webhook_admissions",
            "Admission reviews per webhook and result",
            admissions.clone(),
        );
        // From 0.1 ms to about 1.6 s.
        let durations = Family::<WebhookLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 15))
        });
        registry.register(
            "kubernetes_nmstate_webhook_admission_duration_seconds",
            "How long admission reviews take inside the webhook",
            durations.clone(),
        );
        AdmissionMetrics {
            registry,
            admissions,
            durations,
        }
    }
}

impl AdmissionMetrics {
    pub fn record(&self, webhook: &'static str, result: &'static str, took: Duration) {
        self.admissions
            .get_or_create(&AdmissionLabels { webhook, result })
            .inc();
        self.durations
            .get_or_create(&WebhookLabels { webhook })
            .observe(took.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
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
