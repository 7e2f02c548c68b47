//! The Helm chart's values: `values.yaml` is this type's default and `values.schema.json` its
//! JSON schema (draft-07, which Helm 3 and 4 both enforce on install, upgrade, lint and
//! template), so a misspelt or mistyped value fails at install, naming the value.

use k8s_openapi::api::core::v1::{Affinity, LocalObjectReference, ResourceRequirements, Toleration};
use nmstate_api::NMStateSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// kubernetes-nmstate: declarative node network configuration.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Values {
    /// The namespace of the operator, handler, webhook and certificates. Empty: the release
    /// namespace (`helm install -n <namespace> --create-namespace`). It must exist.
    #[schemars(regex(pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"), length(max = 63))]
    pub namespace: String,
    pub operator: OperatorValues,
    pub handler: HandlerValues,
    pub crds: CrdValues,
    pub nmstate: NMStateValues,
    /// Secrets the operator's pod pulls its image with.
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

/// The operator Deployment.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperatorValues {
    pub image: Image,
    /// Replicas; one leads (Lease `nmstate-operator`), the others stand by.
    #[schemars(range(min = 1, max = 5))]
    pub replicas: u32,
    pub log_level: LogLevel,
    pub resources: ResourceRequirements,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub affinity: Affinity,
}

/// The image of the handler, webhook and cluster controller the operator installs.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HandlerValues {
    pub image: Image,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    #[schemars(length(min = 1))]
    pub repository: String,
    /// Empty: `v` + the chart's appVersion.
    pub tag: String,
    pub pull_policy: PullPolicy,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Info,
    Debug,
}

/// The policy, enactment and node-state CRDs. (The NMState CRD is in the chart's crds/, which
/// Helm installs once, `--skip-crds` skips, and the operator keeps current.)
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CrdValues {
    /// Install and upgrade them with the chart. They are kept on uninstall (policies and node
    /// states live in them); delete them by hand to remove everything.
    pub install: bool,
}

/// The NMState resource that makes the operator install the handler.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NMStateValues {
    /// Create it with the chart (and delete it on uninstall, which removes the handler and
    /// webhook; node network configuration stays).
    pub create: bool,
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"), length(max = 253))]
    pub name: String,
    pub spec: NMStateSpec,
}

impl Default for Values {
    fn default() -> Values {
        let image = |name: &str| Image {
            repository: format!("{}/{name}", super::IMAGE_REGISTRY),
            tag: String::new(),
            pull_policy: PullPolicy::IfNotPresent,
        };
        Values {
            namespace: String::new(),
            operator: OperatorValues {
                image: image(super::OPERATOR_IMAGE),
                replicas: 1,
                log_level: LogLevel::Info,
                resources: from_json(super::default_resources()),
                node_selector: from_json(serde_json::json!({"kubernetes.io/os": "linux"})),
                tolerations: from_json(super::default_tolerations()),
                affinity: Affinity::default(),
            },
            handler: HandlerValues {
                image: image(super::HANDLER_IMAGE),
            },
            crds: CrdValues { install: true },
            nmstate: NMStateValues {
                create: false,
                name: "nmstate".into(),
                spec: NMStateSpec::default(),
            },
            image_pull_secrets: Vec::new(),
        }
    }
}

/// A constant default, written as JSON.
fn from_json<T: serde::de::DeserializeOwned + Default>(value: Value) -> T {
    serde_json::from_value(value).unwrap_or_default()
}

/// `values.schema.json`.
pub fn schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<Values>().to_value();
    if let Some(object) = schema.as_object_mut() {
        object.insert("title".into(), "kubernetes-nmstate Helm values".into());
    }
    // The API server would drop a misspelt spec field silently; the chart refuses it.
    if let Some(spec) = schema["definitions"]["NMStateSpec"].as_object_mut() {
        spec.insert("additionalProperties".into(), false.into());
    }
    schema
}
