//! The render step, a pure function: the NMState spec, the operator's settings and what was
//! read from the cluster in; the objects to apply out. No client here.
//!
//! Objects come from the handlebars templates in `templates/` (embedded in the binary; strict
//! mode, no HTML escaping) plus the operand CRDs from the API types. Nested values go into the
//! templates through `toJson`, as YAML flow collections, so no indentation can go wrong.

use crate::config::OperatorConfig;
use handlebars::{Handlebars, handlebars_helper};
use k8s_openapi::{
    api::core::v1::Toleration,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use nmstate_api::{NMStateSpec, crd, labels};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The port the webhook listens on unless `WEBHOOK_URL` names another: `nmstate-webhook`'s
/// default `WEBHOOK_BIND_ADDRESS`.
const DEFAULT_WEBHOOK_PORT: u16 = 9443;

/// The templates, in the order their objects are applied (namespace first, workloads last).
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "namespace/namespace.yaml.hbs",
        include_str!("../../templates/namespace/namespace.yaml.hbs"),
    ),
    (
        "rbac/handler.yaml.hbs",
        include_str!("../../templates/rbac/handler.yaml.hbs"),
    ),
    (
        "rbac/cluster.yaml.hbs",
        include_str!("../../templates/rbac/cluster.yaml.hbs"),
    ),
    (
        "rbac/webhook.yaml.hbs",
        include_str!("../../templates/rbac/webhook.yaml.hbs"),
    ),
    (
        "rbac/node-restriction.yaml.hbs",
        include_str!("../../templates/rbac/node-restriction.yaml.hbs"),
    ),
    (
        "webhook/configuration.yaml.hbs",
        include_str!("../../templates/webhook/configuration.yaml.hbs"),
    ),
    (
        "webhook/deployment.yaml.hbs",
        include_str!("../../templates/webhook/deployment.yaml.hbs"),
    ),
    (
        "cluster/deployment.yaml.hbs",
        include_str!("../../templates/cluster/deployment.yaml.hbs"),
    ),
    (
        "handler/daemonset.yaml.hbs",
        include_str!("../../templates/handler/daemonset.yaml.hbs"),
    ),
    (
        "netpol/operands.yaml.hbs",
        include_str!("../../templates/netpol/operands.yaml.hbs"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {template}: {source}")]
    Template {
        template: &'static str,
        source: Box<handlebars::RenderError>,
    },
    #[error("template {template} is not valid: {source}")]
    Compile {
        template: &'static str,
        source: Box<handlebars::TemplateError>,
    },
    #[error("template {template} did not render to Kubernetes objects: {source}")]
    Yaml {
        template: &'static str,
        source: serde_yaml::Error,
    },
    #[error("cannot serialize the NMState spec: {0}")]
    Spec(#[from] serde_json::Error),
}

/// What the render step needs from the cluster (read before it, in the dereference step).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFacts {
    /// The API server's minor version (1.x): which API versions and CRD features exist.
    pub server_minor: u32,
    /// Upstream's rule for webhook replicas: how many (node, taint) pairs the infra
    /// tolerations match among the nodes the infra node selector selects.
    pub tolerated_infra_taints: usize,
}

/// Everything to apply for `spec`, in order: the operand CRDs (when the operator manages them),
/// then the templates' objects.
pub fn render(
    spec: &NMStateSpec,
    config: &OperatorConfig,
    facts: &ClusterFacts,
) -> Result<Vec<Value>, RenderError> {
    let crds = if config.crds == crate::config::CrdManagement::Operands {
        crd::operand_crds()
    } else {
        Vec::new()
    };
    let mut objects: Vec<Value> = crds
        .into_iter()
        .map(|crd: CustomResourceDefinition| serde_json::to_value(crd::for_server(crd, facts.server_minor)))
        .collect::<Result<_, _>>()?;
    let engine = engine()?;
    let context = context(spec, config, facts)?;
    for (template, _) in TEMPLATES {
        let text = engine
            .render(template, &context)
            .map_err(|source| RenderError::Template {
                template,
                source: Box::new(source),
            })?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object: Value = serde::Deserialize::deserialize(document)
                .map_err(|source| RenderError::Yaml { template, source })?;
            if !object.is_null() {
                objects.push(object);
            }
        }
    }
    Ok(objects)
}

handlebars_helper!(to_json: |value: Json| serde_json::to_string(value).unwrap_or_default());

fn engine() -> Result<Handlebars<'static>, RenderError> {
    let mut engine = Handlebars::new();
    engine.set_strict_mode(true);
    engine.register_escape_fn(handlebars::no_escape);
    engine.register_helper("toJson", Box::new(to_json));
    for (name, text) in TEMPLATES {
        engine
            .register_template_string(name, *text)
            .map_err(|source| RenderError::Compile {
                template: name,
                source: Box::new(source),
            })?;
    }
    Ok(engine)
}

/// A component's pod labels and selector. The selector is upstream's, `name: <prefix>nmstate-<x>`:
/// selectors are immutable, so the operator can take over upstream's workloads only with it.
fn component_labels(prefix: &str, component: &str) -> (Value, Value) {
    let name = format!("{prefix}{component}");
    let selector = json!({"name": name});
    let labels = json!({
        "name": name,
        labels::APP: labels::APP_VALUE,
        labels::COMPONENT: format!("kubernetes-{component}"),
        labels::APP_PART_OF: labels::APP_VALUE,
        labels::APP_MANAGED_BY: "nmstate-operator",
    });
    (labels, selector)
}

/// The webhook's and cluster controller's tolerations: the spec's, else upstream's default
/// (the control-plane and master `NoSchedule` taints).
pub fn infra_tolerations(spec: &NMStateSpec) -> Vec<Toleration> {
    let control_plane = |key: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    };
    spec.infra_tolerations.clone().unwrap_or_else(|| {
        vec![
            control_plane(labels::NODE_ROLE_MASTER),
            control_plane(labels::NODE_ROLE_CONTROL_PLANE),
        ]
    })
}

/// Where the API server calls each webhook: the Service, or `WEBHOOK_URL`.
fn webhook_clients(config: &OperatorConfig, prefix: &str) -> Value {
    let client = |path: &str| match &config.webhook_url {
        Some(url) => json!({"url": url.with_path(path)}),
        None => json!({"service": {"name": format!("{prefix}nmstate-webhook"),
            "namespace": config.handler_namespace, "path": path, "port": 443}}),
    };
    json!({
        "timestamp": client("/nodenetworkconfigurationpolicies-timestamp-mutate"),
        "status": client("/nodenetworkconfigurationpolicies-status-mutate"),
        "validate": client("/nodenetworkconfigurationpolicies-validate"),
    })
}

/// The first Kubernetes minor version (1.x) where a handler is held to its own node's objects.
pub const NODE_RESTRICTION_SINCE_MINOR: u32 = 30;

/// The handler's `NNS_*` settings from `spec.stateReporting`, as environment values (strings);
/// empty ones are left out, so the handler's defaults apply.
fn state_reporting_env(spec: &NMStateSpec) -> Value {
    let reporting = spec.state_reporting.clone().unwrap_or_default();
    let list = |patterns: Vec<String>| Some(patterns.join(",")).filter(|joined| !joined.is_empty());
    json!({
        "excludeInterfaces": list(reporting.exclude_interfaces),
        "excludeTypes": list(reporting.exclude_types),
        "maxBytes": reporting.max_bytes.map(|bytes| bytes.to_string()),
    })
}

/// How long the kubelet lets a stopping handler finish the change it is applying: its probes'
/// timeout (the forwarded `PROBE_TIMEOUT_SECONDS`, else the default) and 30 s to commit and
/// report. A policy's own longer `timeoutSeconds` is not waited for: killed in its probes, the
/// handler's successor rolls the change back and applies it again.
fn handler_grace_period_seconds(config: &OperatorConfig) -> u64 {
    const COMMIT_AND_REPORT_SECONDS: u64 = 30;
    let probes = config
        .handler_env
        .iter()
        .find(|(name, _)| name == crate::config::PROBE_TIMEOUT_SECONDS)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(u64::from(nmstate_api::probes::DEFAULT_TIMEOUT_SECONDS));
    probes + COMMIT_AND_REPORT_SECONDS
}

/// The templates' input: the spec with upstream's defaults filled in.
fn context(spec: &NMStateSpec, config: &OperatorConfig, facts: &ClusterFacts) -> Result<Value, RenderError> {
    let linux = BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())]);
    let prefix = config.name_prefix();
    let self_sign = spec.self_sign_configuration.clone().unwrap_or_default();
    let dns_host = spec
        .probe_configuration
        .as_ref()
        .and_then(|probes| probes.dns.as_ref())
        .and_then(|dns| dns.host.clone())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| nmstate_api::nmstate::DEFAULT_DNS_PROBE_HOST.to_string());
    let debug = spec.log_level == Some(nmstate_api::nmstate::LogLevel::Debug);
    let replicas = if facts.tolerated_infra_taints > 1 { 2 } else { 1 };
    let (handler_labels, handler_selector) = component_labels(&prefix, "nmstate-handler");
    let (webhook_labels, webhook_selector) = component_labels(&prefix, "nmstate-webhook");
    let (cluster_labels, cluster_selector) = component_labels(&prefix, "nmstate-metrics");
    Ok(json!({
        "namespace": config.handler_namespace,
        "monitoringNamespace": config.monitoring_namespace,
        "prefix": prefix,
        "image": config.handler_image,
        "imagePullPolicy": config.handler_image_pull_policy,
        "version": env!("CARGO_PKG_VERSION"),
        "labels": {labels::APP: labels::APP_VALUE, labels::APP_MANAGED_BY: "nmstate-operator"},
        "pdbApiVersion": if facts.server_minor >= 21 { "policy/v1" } else { "policy/v1beta1" },
        "handler": {
            "labels": handler_labels,
            "selector": handler_selector,
            "nodeSelector": spec.node_selector.clone().unwrap_or(linux.clone()),
            "tolerations": match &spec.tolerations {
                Some(tolerations) => serde_json::to_value(tolerations)?,
                None => json!([{"operator": "Exists"}]),
            },
            "affinity": spec.affinity.as_ref().map(serde_json::to_value).transpose()?,
            "probeDnsHost": dns_host,
            "networkReadiness": spec.network_readiness.is_some(),
            "startupTaint": spec.network_readiness.as_ref().and_then(|gate| gate.startup_taint.clone()),
            "stateReporting": state_reporting_env(spec),
            // Servers from 1.30 put the node's name in a pod's token, and serve
            // ValidatingAdmissionPolicy as v1.
            "nodeRestriction": facts.server_minor >= NODE_RESTRICTION_SINCE_MINOR,
            "terminationGracePeriodSeconds": handler_grace_period_seconds(config),
            "logFilter": if debug { "debug" } else { "info" },
            "env": config.handler_env.iter().map(|(name, value)| json!({"name": name, "value": value})).collect::<Vec<_>>(),
        },
        "infra": {
            "nodeSelector": spec.infra_node_selector.clone().unwrap_or(linux),
            "tolerations": serde_json::to_value(infra_tolerations(spec))?,
            "affinity": match &spec.infra_affinity {
                Some(affinity) => serde_json::to_value(affinity)?,
                None => json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 10, "preference": {"matchExpressions": [{"key": labels::NODE_ROLE_CONTROL_PLANE, "operator": "Exists"}]}},
                    {"weight": 1, "preference": {"matchExpressions": [{"key": labels::NODE_ROLE_MASTER, "operator": "Exists"}]}},
                ]}}),
            },
        },
        "webhook": {
            "labels": webhook_labels,
            "selector": webhook_selector,
            "replicas": replicas,
            "minAvailable": replicas - 1,
            // What it listens on: the Service's target, the probes' and NetworkPolicy's port.
            "port": config.webhook_url.as_ref().map_or(DEFAULT_WEBHOOK_PORT, |url| url.port),
            // Empty means the webhook's default (it defaults each missing field by itself).
            "caRotateInterval": self_sign.ca_rotate_interval.unwrap_or_default(),
            "caOverlapInterval": self_sign.ca_overlap_interval.unwrap_or_default(),
            "certRotateInterval": self_sign.cert_rotate_interval.unwrap_or_default(),
            "certOverlapInterval": self_sign.cert_overlap_interval.unwrap_or_default(),
        },
        "cluster": {"labels": cluster_labels, "selector": cluster_selector},
        "webhookClients": webhook_clients(config, &prefix),
        "webhookExtraEnv": match &config.webhook_url {
            Some(url) => json!([
                {"name": "WEBHOOK_EXTRA_NAMES", "value": url.host},
                {"name": "WEBHOOK_BIND_ADDRESS", "value": format!("0.0.0.0:{}", url.port)},
            ]),
            None => json!([]),
        },
    }))
}

#[cfg(test)]
mod tests;
