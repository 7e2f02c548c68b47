//! The five CustomResourceDefinitions, assembled from the types. `manifests/crds/` is
//! generated from here (`make generate`), and a test fails when it is stale.
//!
//! Upstream serves its deprecated versions with the same schema as the stored one and no
//! conversion webhook, so a deprecated version here is a copy of the stored version's schema.

use crate::{
    enactment::NodeNetworkConfigurationEnactment, ip_pool::NodeNetworkIPPool, nmstate::NMState,
    policy::NodeNetworkConfigurationPolicy, state::NodeNetworkState,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSON, JSONSchemaProps, JSONSchemaPropsOrArray,
    JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

/// The warning clients get when they use `nmstate.io/v1beta1` NMState.
pub const NMSTATE_V1BETA1_WARNING: &str = "nmstate/v1beta1 deprecated, use nmstate/v1 instead";

/// `nmstates.nmstate.io`: `v1` stored, `v1beta1` served and deprecated. Installed by Helm or
/// OLM together with the operator, not by the operator itself.
pub fn nmstates() -> CustomResourceDefinition {
    let mut crd = derived::<NMState>();
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
    let mut crd = derived::<NodeNetworkConfigurationPolicy>();
    make_spec_optional(&mut crd);
    let v1beta1 = deprecated_copy(&crd.spec.versions[0], "v1beta1", None);
    crd.spec.versions.push(v1beta1);
    crd
}

/// `nodenetworkconfigurationenactments.nmstate.io`: `v1beta1` only. As upstream, the whole
/// object preserves unknown fields, so enactments written by other versions keep their data.
pub fn enactments() -> CustomResourceDefinition {
    let mut crd = derived::<NodeNetworkConfigurationEnactment>();
    stored_schema(&mut crd).x_kubernetes_preserve_unknown_fields = Some(true);
    crd
}

/// `nodenetworkstates.nmstate.io`: `v1beta1` only.
pub fn node_states() -> CustomResourceDefinition {
    derived::<NodeNetworkState>()
}

/// `nodenetworkippools.nmstate.io`: `v1` only (new here, no upstream counterpart).
pub fn ip_pools() -> CustomResourceDefinition {
    derived::<NodeNetworkIPPool>()
}

/// All five CRDs, ordered by name.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![nmstates(), policies(), enactments(), node_states(), ip_pools()];
    crds.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    crds
}

/// The CRDs the operator installs and keeps up to date (all but NMState's own).
pub fn operand_crds() -> Vec<CustomResourceDefinition> {
    vec![enactments(), policies(), node_states(), ip_pools()]
}

/// The CRD kube-derive generates, without `null` in enums: kube lists `null` among the values
/// of an optional enum, which API servers before 1.2x refuse (the whole CRD is rejected) and
/// upstream's schema does not have. Optional fields are omitted, never sent as `null`.
fn derived<K: CustomResourceExt>() -> CustomResourceDefinition {
    let mut crd = K::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = schema_mut(version) {
            strip_null_enum_values(schema);
            visit_schemas(schema, &mut |schema| {
                kubernetes_integer_format(&mut schema.format)
            });
        }
    }
    crd
}

/// schemars names Rust's unsigned integers `uint16`, `uint32`, ...; the API server knows only
/// `int32` and `int64` and warns on every CRD write ("unrecognized format"). The `minimum: 0`
/// schemars adds beside the format keeps them unsigned.
fn kubernetes_integer_format(format: &mut Option<String>) {
    let known = match format.as_deref() {
        Some("uint8" | "uint16") => "int32",
        Some("uint32" | "uint64" | "uint") => "int64",
        _ => return,
    };
    *format = Some(known.to_string());
}

fn strip_null_enum_values(schema: &mut JSONSchemaProps) {
    visit_schemas(schema, &mut |schema| {
        if let Some(values) = schema.enum_.as_mut() {
            values.retain(|value| !value.0.is_null());
        }
    });
}

/// The first Kubernetes minor version (1.x) that runs CRD validation rules (CEL).
pub const VALIDATION_RULES_SINCE_MINOR: u32 = 25;

/// The minor version (1.x) of an API server from its `/version` (`"20"`, or `"20+"` on some
/// distributions); 0 when it does not read as a number.
pub fn server_minor(version: &k8s_openapi::apimachinery::pkg::version::Info) -> u32 {
    version.minor.trim_end_matches('+').parse().unwrap_or(0)
}

/// `crd` as a server of version 1.`minor` takes it: older servers do not know
/// `x-kubernetes-validations` and refuse it under server-side apply (and `kubectl apply`
/// refuses it before sending), so the rules are left out for them. The admission webhook
/// enforces the same rules on every version.
pub fn for_server(mut crd: CustomResourceDefinition, minor: u32) -> CustomResourceDefinition {
    if minor < VALIDATION_RULES_SINCE_MINOR {
        for version in &mut crd.spec.versions {
            if let Some(schema) = schema_mut(version) {
                visit_schemas(schema, &mut |schema| schema.x_kubernetes_validations = None);
            }
        }
    }
    crd
}

/// Calls `visit` on `schema` and every schema nested in it.
fn visit_schemas(schema: &mut JSONSchemaProps, visit: &mut impl FnMut(&mut JSONSchemaProps)) {
    visit(schema);
    let nested = schema
        .properties
        .iter_mut()
        .flat_map(|properties| properties.values_mut())
        .chain(schema.items.iter_mut().flat_map(|items| match items {
            JSONSchemaPropsOrArray::Schema(schema) => std::slice::from_mut(schema.as_mut()),
            JSONSchemaPropsOrArray::Schemas(schemas) => schemas.as_mut_slice(),
        }))
        .chain(
            schema
                .additional_properties
                .iter_mut()
                .filter_map(|additional| match additional {
                    JSONSchemaPropsOrBool::Schema(schema) => Some(schema.as_mut()),
                    JSONSchemaPropsOrBool::Bool(_) => None,
                }),
        )
        .chain(schema.all_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten());
    for child in nested {
        visit_schemas(child, visit);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of every `key` anywhere in `value`.
    fn values_of(value: &serde_json::Value, key: &str, found: &mut Vec<serde_json::Value>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(values) = map.get(key) {
                    found.push(values.clone());
                }
                map.values().for_each(|child| values_of(child, key, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|child| values_of(child, key, found)),
            _ => {}
        }
    }

    #[test]
    fn enums_hold_no_null_and_keep_their_values() {
        let mut found = Vec::new();
        for crd in all() {
            values_of(&serde_json::to_value(&crd).unwrap(), "enum", &mut found);
        }
        assert!(
            found
                .iter()
                .all(|values| values.as_array().unwrap().iter().all(|value| !value.is_null())),
            "{found:?}"
        );
        assert!(
            found.contains(&serde_json::json!(["info", "debug"])),
            "logLevel keeps its values: {found:?}"
        );
    }

    #[test]
    fn integer_formats_are_the_ones_the_api_server_knows() {
        let mut found = Vec::new();
        for crd in all() {
            values_of(&serde_json::to_value(&crd).unwrap(), "format", &mut found);
        }
        let known = ["date-time", "double", "int32", "int64"].map(serde_json::Value::from);
        let unknown: Vec<_> = found.iter().filter(|format| !known.contains(format)).collect();
        assert!(
            unknown.is_empty(),
            "formats the API server does not know: {unknown:?}"
        );
    }

    #[test]
    fn versions_are_as_upstream() {
        let describe = |version: &CustomResourceDefinitionVersion| match (version.storage, version.deprecated)
        {
            (true, _) => format!("{} stored", version.name),
            (false, Some(true)) => format!("{} deprecated", version.name),
            (false, _) => format!("{} served", version.name),
        };
        let versions: Vec<String> = all()
            .iter()
            .map(|crd| {
                let versions: Vec<String> = crd.spec.versions.iter().map(describe).collect();
                format!("{}: {}", crd.spec.names.plural, versions.join(", "))
            })
            .collect();
        assert_eq!(
            versions,
            [
                "nmstates: v1 stored, v1beta1 deprecated",
                "nodenetworkconfigurationenactments: v1beta1 stored",
                "nodenetworkconfigurationpolicies: v1 stored, v1beta1 deprecated",
                "nodenetworkippools: v1 stored",
                "nodenetworkstates: v1beta1 stored",
            ]
        );
    }
}
