//! The four CustomResourceDefinitions, assembled from the types. `manifests/crds/` is
//! generated from here (`make crds`), and a test fails when it is stale.
//!
//! Upstream serves its deprecated versions with the same schema as the stored one and no
//! conversion webhook, so a deprecated version here is a copy of the stored version's schema.

use crate::{
    enactment::NodeNetworkConfigurationEnactment, nmstate::NMState, policy::NodeNetworkConfigurationPolicy,
    state::NodeNetworkState,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSON, JSONSchemaProps,
};
use kube::CustomResourceExt;

/// The warning clients get when they use `nmstate.io/v1beta1` NMState.
pub const NMSTATE_V1BETA1_WARNING: &str = "nmstate/v1beta1 deprecated, use nmstate/v1 instead";

/// `nmstates.nmstate.io`: `v1` stored, `v1beta1` served and deprecated. Installed by Helm or
/// OLM together with the operator, not by the operator itself.
pub fn nmstates() -> CustomResourceDefinition {
    let mut crd = NMState::crd();
    make_spec_optional(&mut crd);

    let mut v1beta1 = deprecated_copy(&crd.spec.versions[0], "v1beta1", Some(NMSTATE_V1BETA1_WARNING));
    // Upstream's v1beta1 has no `{}` default for the (unused) metrics configuration.
    if let Some(metrics) = schema_mut(&mut v1beta1)
        .and_then(|root| root.properties.as_mut())
        .and_then(|properties| properties.get_mut("spec"))
        .and_then(|spec| spec.properties.as_mut())
        .and_then(|properties| properties.get_mut("metricsConfiguration"))
    {
        metrics.default = None;
    }
    crd.spec.versions.push(v1beta1);
    crd
}

/// `nodenetworkconfigurationpolicies.nmstate.io`: `v1` stored, `v1beta1` served and deprecated.
pub fn policies() -> CustomResourceDefinition {
    let mut crd = NodeNetworkConfigurationPolicy::crd();
    make_spec_optional(&mut crd);
    let v1beta1 = deprecated_copy(&crd.spec.versions[0], "v1beta1", None);
    crd.spec.versions.push(v1beta1);
    crd
}

/// `nodenetworkconfigurationenactments.nmstate.io`: `v1beta1` only. As upstream, the whole
/// object preserves unknown fields, so enactments written by other versions keep their data.
pub fn enactments() -> CustomResourceDefinition {
    let mut crd = NodeNetworkConfigurationEnactment::crd();
    stored_schema(&mut crd).x_kubernetes_preserve_unknown_fields = Some(true);
    crd
}

/// `nodenetworkstates.nmstate.io`: `v1beta1` only.
pub fn node_states() -> CustomResourceDefinition {
    NodeNetworkState::crd()
}

/// All four CRDs, ordered by name.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![nmstates(), policies(), enactments(), node_states()];
    crds.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    crds
}

/// The CRDs the operator installs and keeps up to date (all but NMState's own).
pub fn operand_crds() -> Vec<CustomResourceDefinition> {
    vec![enactments(), policies(), node_states()]
}

/// Upstream accepts objects without `spec`; kube-derive marks it required. Instead the server
/// fills in `spec: {}`, so every object read back has one.
fn make_spec_optional(crd: &mut CustomResourceDefinition) {
    let root = stored_schema(crd);
    if let Some(required) = root.required.as_mut() {
        required.retain(|field| field != "spec");
        if required.is_empty() {
            root.required = None;
        }
    }
    if let Some(spec) = root
        .properties
        .as_mut()
        .and_then(|properties| properties.get_mut("spec"))
    {
        spec.default = Some(JSON(serde_json::json!({})));
    }
}

/// A served, not stored, deprecated copy of `stored` named `name`.
fn deprecated_copy(
    stored: &CustomResourceDefinitionVersion,
    name: &str,
    warning: Option<&str>,
) -> CustomResourceDefinitionVersion {
    CustomResourceDefinitionVersion {
        name: name.to_string(),
        served: true,
        storage: false,
        deprecated: Some(true),
        deprecation_warning: warning.map(str::to_string),
        ..stored.clone()
    }
}

fn schema_mut(version: &mut CustomResourceDefinitionVersion) -> Option<&mut JSONSchemaProps> {
    version.schema.as_mut()?.open_api_v3_schema.as_mut()
}

/// The root schema of the first (stored) version. kube-derive always generates one; a CRD
/// without it would be refused by the API server, so its absence is a programming error that
/// the unit tests catch.
fn stored_schema(crd: &mut CustomResourceDefinition) -> &mut JSONSchemaProps {
    let version = &mut crd.spec.versions[0];
    version
        .schema
        .get_or_insert_with(Default::default)
        .open_api_v3_schema
        .get_or_insert_with(Default::default)
}
