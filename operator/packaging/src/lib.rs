//! Packaging, not part of the operator that runs in the cluster: the operator's own install,
//! written once (its CRDs, ServiceAccount, RBAC and Deployment), and every delivery channel
//! generated from it by the `generate` binary (`make generate`): the Helm chart
//! ([`helm`]), the OLM bundle and catalog ([`olm`]) and the plain `kubectl apply` manifest
//! ([`plain_manifest`]). Pure: no client.
//!
//! The objects are built from [`Slots`], one value per place a channel can set. The plain
//! manifest and the CSV fill them with concrete values; the chart fills them with Helm
//! expressions (see [`helm::Expr`]).

pub mod files;
pub mod helm;
pub mod olm;
pub mod release;
pub mod rules;
pub mod validate;
pub mod values;

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("rendering the operands (to read their RBAC rules): {0}")]
    Render(#[from] nmstate_operator::render::RenderError),
    #[error("cannot serialize a generated object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot read or write YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("bundle/releases.yaml: {0}")]
    History(String),
    #[error("a Helm marker was left in a place it cannot go: {0}")]
    Marker(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Where the images are published.
pub const IMAGE_REGISTRY: &str = "quay.io/nmstate";
pub const OPERATOR_IMAGE: &str = "kubernetes-nmstate-rs-operator";
pub const HANDLER_IMAGE: &str = "kubernetes-nmstate-rs-handler";
/// The operator's ServiceAccount, RBAC and Deployment are all named this.
pub const OPERATOR_NAME: &str = nmstate_api::names::OPERATOR;
/// The namespace of the plain manifest and the one OLM suggests.
pub const DEFAULT_NAMESPACE: &str = nmstate_api::names::DEFAULT_NAMESPACE;
/// The health port (`HEALTH_BIND_ADDRESS`): `/healthz`, `/readyz`, `/metrics`.
pub const HEALTH_PORT: u16 = 8081;

/// `<registry>/<image>:v<version>`.
pub fn image(name: &str, version: &semver::Version) -> String {
    format!("{IMAGE_REGISTRY}/{name}:v{version}")
}

/// The images of release `version`, each with the directory of its Containerfile (`operator`,
/// `handler`): what `make images` builds, and the local environment's nodes import.
pub fn images(version: &semver::Version) -> [(&'static str, String); 2] {
    [
        ("operator", image(OPERATOR_IMAGE, version)),
        ("handler", image(HANDLER_IMAGE, version)),
    ]
}

/// The values a channel sets in the operator's objects.
#[derive(Clone, Debug)]
pub struct Slots {
    /// The namespace of the operator (and, unless `handler_namespace` says otherwise, of the
    /// handler, webhook and certificates).
    pub namespace: Value,
    /// `HANDLER_NAMESPACE`, as an env var entry body (`value` or `valueFrom`).
    pub handler_namespace_env: Value,
    /// The namespace the operand Role goes to (the handler namespace).
    pub handler_namespace: Value,
    /// The labels of every object (a map).
    pub labels: Value,
    /// The pod selector (a map, never changed by an upgrade).
    pub selector: Value,
    pub operator_image: Value,
    pub handler_image: Value,
    pub pull_policy: Value,
    pub handler_pull_policy: Value,
    pub replicas: Value,
    pub resources: Value,
    pub node_selector: Value,
    pub tolerations: Value,
    pub affinity: Value,
    pub log_level: Value,
    pub image_pull_secrets: Value,
    /// `MANAGE_CRDS` (see [`nmstate_operator::config::CrdManagement`]): `false` where the installer
    /// upgrades every CRD, `nmstate` for the Helm chart.
    pub manage_crds: &'static str,
}

impl Slots {
    /// Concrete values for `version` in `namespace`: what the plain manifest and the CSV carry.
    pub fn concrete(version: &semver::Version, namespace: &str) -> Slots {
        Slots {
            namespace: json!(namespace),
            handler_namespace_env: json!({"valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
            handler_namespace: json!(namespace),
            labels: labels(version),
            selector: selector(),
            operator_image: json!(image(OPERATOR_IMAGE, version)),
            handler_image: json!(image(HANDLER_IMAGE, version)),
            pull_policy: json!("IfNotPresent"),
            handler_pull_policy: json!("IfNotPresent"),
            replicas: json!(1),
            resources: default_resources(),
            node_selector: json!({"kubernetes.io/os": "linux"}),
            tolerations: default_tolerations(),
            affinity: json!({}),
            log_level: json!("info"),
            image_pull_secrets: json!([]),
            manage_crds: "false",
        }
    }
}

/// `app.kubernetes.io/*` labels of the operator's objects, plus upstream's pod labels (its
/// NetworkPolicies select `app: kubernetes-nmstate-operator`).
pub fn labels(version: &semver::Version) -> Value {
    json!({
        "app": "kubernetes-nmstate-operator",
        "name": "kubernetes-nmstate-operator",
        "app.kubernetes.io/name": "kubernetes-nmstate",
        "app.kubernetes.io/component": "operator",
        "app.kubernetes.io/part-of": "kubernetes-nmstate",
        "app.kubernetes.io/version": version.to_string(),
    })
}

/// The operator pods' selector: immutable, so only names that never change.
pub fn selector() -> Value {
    json!({"app": "kubernetes-nmstate-operator", "name": "kubernetes-nmstate-operator"})
}

/// Requests sized from `make bench` (about 15 MiB resident); the limit leaves room for large
/// clusters' watch caches.
pub fn default_resources() -> Value {
    json!({"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}})
}

/// The operator runs on control-plane nodes where it may, as upstream's.
pub fn default_tolerations() -> Value {
    json!([
        {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
    ])
}

/// The operator's RBAC and Deployment (no Namespace, no CRDs), in apply order.
pub fn operator_objects(slots: &Slots) -> Result<Vec<Value>, InstallError> {
    let metadata = |name: &str, namespaced: Option<&Value>| {
        let mut metadata = json!({"name": name, "labels": slots.labels});
        if let Some(namespace) = namespaced {
            metadata["namespace"] = namespace.clone();
        }
        metadata
    };
    let subject = json!([{"kind": "ServiceAccount", "name": OPERATOR_NAME, "namespace": slots.namespace}]);
    Ok(vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(OPERATOR_NAME, Some(&slots.namespace))}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": metadata(OPERATOR_NAME, None), "rules": rules::cluster_rules(slots.manage_crds == "nmstate")?}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": metadata(OPERATOR_NAME, None),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR_NAME},
            "subjects": subject}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": metadata(OPERATOR_NAME, Some(&slots.handler_namespace)), "rules": rules::namespace_rules()?}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": metadata(OPERATOR_NAME, Some(&slots.handler_namespace)),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR_NAME},
            "subjects": subject}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": metadata(OPERATOR_NAME, Some(&slots.namespace)),
            "spec": deployment_spec(slots)}),
    ])
}

/// The operator Deployment's spec (the CSV carries it as is).
pub fn deployment_spec(slots: &Slots) -> Value {
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let env_var = |name: &str, body: &Value| {
        let mut entry = json!({"name": name});
        for (key, value) in body.as_object().into_iter().flatten() {
            entry[key] = value.clone();
        }
        entry
    };
    let http_probe = |path: &str, period: u32| json!({"httpGet": {"path": path, "port": "health"}, "periodSeconds": period, "timeoutSeconds": 5});
    json!({
        "replicas": slots.replicas,
        "selector": {"matchLabels": slots.selector},
        "template": {
            "metadata": {"labels": slots.labels},
            "spec": {
                "serviceAccountName": OPERATOR_NAME,
                "imagePullSecrets": slots.image_pull_secrets,
                "priorityClassName": "system-cluster-critical",
                "nodeSelector": slots.node_selector,
                "tolerations": slots.tolerations,
                "affinity": slots.affinity,
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": OPERATOR_NAME,
                    "image": slots.operator_image,
                    "imagePullPolicy": slots.pull_policy,
                    "command": ["nmstate-operator"],
                    "args": ["--log-level", slots.log_level],
                    "env": [
                        env_var("HANDLER_NAMESPACE", &slots.handler_namespace_env),
                        env_var("OPERATOR_NAMESPACE", &field("metadata.namespace")),
                        env_var("POD_NAMESPACE", &field("metadata.namespace")),
                        env_var("POD_NAME", &field("metadata.name")),
                        env_var("RELATED_IMAGE_HANDLER_IMAGE", &json!({"value": slots.handler_image})),
                        env_var("HANDLER_IMAGE_PULL_POLICY", &json!({"value": slots.handler_pull_policy})),
                        env_var("HEALTH_BIND_ADDRESS", &json!({"value": format!("0.0.0.0:{HEALTH_PORT}")})),
                        env_var("MANAGE_CRDS", &json!({"value": slots.manage_crds})),
                    ],
                    "ports": [{"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
                    "livenessProbe": http_probe("/healthz", 20),
                    "readinessProbe": http_probe("/readyz", 10),
                    "resources": slots.resources,
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }],
            },
        },
    })
}

/// The five CRDs as a server of version 1.`minor` takes them, ordered by name.
pub fn crds(minor: u32) -> Result<Vec<Value>, serde_json::Error> {
    nmstate_api::crd::all()
        .into_iter()
        .map(|crd| serde_json::to_value(nmstate_api::crd::for_server(crd, minor)))
        .collect()
}

/// The `kubectl apply -f` manifest: CRDs, Namespace, RBAC and Deployment for `version` in
/// [`DEFAULT_NAMESPACE`]. The CRDs carry their CEL rules (Kubernetes 1.25 and later).
pub fn plain_manifest(version: &semver::Version) -> Result<Vec<Value>, InstallError> {
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
    "metadata": {"name": DEFAULT_NAMESPACE, "labels": {
        "pod-security.kubernetes.io/enforce": "privileged",
        "pod-security.kubernetes.io/audit": "privileged",
        "pod-security.kubernetes.io/warn": "privileged",
    }}});
    let mut objects = crds(u32::MAX)?;
    objects.push(namespace);
    objects.extend(operator_objects(&Slots::concrete(version, DEFAULT_NAMESPACE))?);
    Ok(objects)
}

#[cfg(test)]
mod tests;
