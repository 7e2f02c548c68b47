//! What a policy must satisfy to be stored: pure checks, run by the validating webhook on every
//! Kubernetes version (upstream's equivalent CEL rules need 1.30 or later).
//!
//! Messages are upstream's where upstream has one, so scripts that match them keep working.

use super::label_format::{dns1123_subdomain_errors, label_value_errors, qualified_name_errors};
use k8s_openapi::api::core::v1::NodeSelectorTerm;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nmstate::{NetworkCaptureRules, NetworkState, NetworkStateTemplate};
use nmstate_api::policy::{NodeNetworkConfigurationPolicy, PolicyConditionReason, PolicyConditionType};
use nmstate_api::probes::{MAX_TCP_PROBES, MAX_TIMEOUT_SECONDS, PolicyProbes};
use nmstate_api::selection::NODE_NAME_FIELD;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Why a policy is refused; `Forbidden` is a valid change at the wrong time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Invalid(String),
    Forbidden(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::Invalid(message) | Refusal::Forbidden(message) => message,
        }
    }
}

/// Checks a policy being created (`old` is `None`) or updated. Every broken rule is reported,
/// in the order below; a change refused for timing (`still in progress`) comes first.
pub fn validate(
    policy: &NodeNetworkConfigurationPolicy,
    old: Option<&NodeNetworkConfigurationPolicy>,
) -> Result<(), Refusal> {
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    if let Some(old) = old
        && old.spec != policy.spec
        && is_in_progress(old)
    {
        return Err(Refusal::Forbidden(format!("policy {name} is still in progress")));
    }
    let mut errors = Vec::new();
    if old.is_none() && !is_valid_policy_name(name) {
        errors.push(format!(
            "invalid policy name: {name:?}: must be no more than 63 characters or match label value format"
        ));
    }
    if let Some(old) = old
        && old.spec != policy.spec
        && old.spec.capture != policy.spec.capture
    {
        errors.push("invalid policy operation: capture field cannot be modified".to_string());
    }
    errors.extend(node_selector_errors(policy.spec.node_selector.as_ref()));
    if let Some(terms) = &policy.spec.node_selector_terms {
        errors.extend(node_selector_terms_errors(terms));
    }
    errors.extend(max_unavailable_error(policy.spec.max_unavailable.as_ref()));
    if let Some(probes) = &policy.spec.probes {
        errors.extend(probes_errors(probes));
    }
    errors.extend(depends_on_errors(name, policy.spec.dependencies()));
    let capture = policy.spec.capture.clone().unwrap_or_default();
    errors.extend(capture_errors(&capture));
    let variables = policy.spec.variables.clone().unwrap_or_default();
    let desired = policy.spec.desired_state.as_ref().map(|desired| &desired.0);
    errors.extend(nmstate_api::variables::errors(
        &variables,
        desired.unwrap_or(&Value::Null),
    ));
    match desired {
        // A template whose values are only known on each node: checked there, once resolved.
        Some(desired) if !nmstate_api::variables::references(desired).is_empty() => {
            errors.extend(capture_reference_errors(desired, &capture))
        }
        Some(desired) => errors.extend(desired_state_error(desired, &capture)),
        None => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Refusal::Invalid(errors.join("; ")))
    }
}

/// Upstream's rule: a spec may change once the last change settled, i.e. `Available` has a
/// reason other than `ConfigurationProgressing`. A policy without that reason yet is in progress.
fn is_in_progress(policy: &NodeNetworkConfigurationPolicy) -> bool {
    let settled = policy.status.as_ref().is_some_and(|status| {
        status.conditions.iter().any(|condition| {
            condition.type_ == PolicyConditionType::Available.as_str()
                && !condition.reason.is_empty()
                && condition.reason != PolicyConditionReason::ConfigurationProgressing.as_str()
        })
    });
    !settled
}

/// Policy names are label values (`nmstate.io/policy=<name>` on enactments).
fn is_valid_policy_name(name: &str) -> bool {
    !name.is_empty() && label_value_errors(name).is_empty()
}

fn node_selector_errors(selector: Option<&BTreeMap<String, String>>) -> Vec<String> {
    let mut errors = Vec::new();
    for (key, value) in selector.into_iter().flatten() {
        let key_errors = qualified_name_errors(key);
        if !key_errors.is_empty() {
            errors.push(format!("invalid label key: {key:?}: {}", key_errors.join("; ")));
        }
        let value_errors = label_value_errors(value);
        if !value_errors.is_empty() {
            errors.push(format!(
                "invalid label value: {value:?}: at key: {key:?}: {}",
                value_errors.join("; ")
            ));
        }
    }
    errors
}

/// Kubernetes' rules for node-selector terms, as the API server applies them to a pod's node
/// affinity.
fn node_selector_terms_errors(terms: &[NodeSelectorTerm]) -> Vec<String> {
    let mut errors = Vec::new();
    if terms.is_empty() {
        errors.push("invalid spec.nodeSelectorTerms: must have at least one term (leave it out to select by nodeSelector alone)".to_string());
    }
    for (index, term) in terms.iter().enumerate() {
        let field = format!("spec.nodeSelectorTerms[{index}]");
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        if expressions.is_empty() && fields.is_empty() {
            errors.push(format!(
                "invalid {field}: an empty term selects no node: give matchExpressions or matchFields"
            ));
        }
        for (at, requirement) in expressions.iter().enumerate() {
            let field = format!("{field}.matchExpressions[{at}]");
            let key_errors = qualified_name_errors(&requirement.key);
            if !key_errors.is_empty() {
                errors.push(format!(
                    "invalid {field}.key: {:?}: {}",
                    requirement.key,
                    key_errors.join("; ")
                ));
            }
            errors.extend(requirement_error(
                &field,
                &requirement.operator,
                requirement.values.as_deref(),
            ));
        }
        for (at, requirement) in fields.iter().enumerate() {
            let field = format!("{field}.matchFields[{at}]");
            if requirement.key != NODE_NAME_FIELD {
                errors.push(format!(
                    "invalid {field}.key: {:?}: the only field is {NODE_NAME_FIELD:?}",
                    requirement.key
                ));
            }
            if !matches!(requirement.operator.as_str(), "In" | "NotIn") {
                errors.push(format!(
                    "invalid {field}.operator: {:?}: must be In or NotIn for a field",
                    requirement.operator
                ));
            } else {
                errors.extend(requirement_error(
                    &field,
                    &requirement.operator,
                    requirement.values.as_deref(),
                ));
            }
        }
    }
    errors
}

/// The values an operator takes: some for `In`/`NotIn`, none for `Exists`/`DoesNotExist`, one
/// integer for `Gt`/`Lt`.
fn requirement_error(field: &str, operator: &str, values: Option<&[String]>) -> Option<String> {
    let values = values.unwrap_or_default();
    let wrong = match operator {
        "In" | "NotIn" if values.is_empty() => "must have at least one value",
        "In" | "NotIn" => return None,
        "Exists" | "DoesNotExist" if !values.is_empty() => "must have no values",
        "Exists" | "DoesNotExist" => return None,
        "Gt" | "Lt" if values.len() != 1 || values[0].parse::<i64>().is_err() => {
            "must have exactly one value, an integer"
        }
        "Gt" | "Lt" => return None,
        _ => {
            return Some(format!(
                "invalid {field}.operator: {operator:?}: must be one of In, NotIn, Exists, DoesNotExist, Gt, Lt"
            ));
        }
    };
    Some(format!("invalid {field}.values: {values:?}: {operator} {wrong}"))
}

/// A count (≥ 0) or a percentage from 0% to 100%. Upstream accepts anything here and falls
/// back to 50% on the nodes; refusing says what is wrong before it matters.
fn max_unavailable_error(value: Option<&IntOrString>) -> Option<String> {
    let accepted = "must be a non-negative integer or a percentage from \"0%\" to \"100%\" such as \"50%\"";
    match value? {
        IntOrString::Int(count) if *count < 0 => {
            Some(format!("invalid spec.maxUnavailable: {count}: {accepted}"))
        }
        IntOrString::Int(_) => None,
        IntOrString::String(text) => {
            let percent = text
                .strip_suffix('%')
                .filter(|digits| !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()))
                .and_then(|digits| digits.parse::<u32>().ok());
            match percent {
                Some(percent) if percent <= 100 => None,
                _ => Some(format!("invalid spec.maxUnavailable: {text:?}: {accepted}")),
            }
        }
    }
}

/// `dependsOn` names other policies, each once. (A longer cycle is reported on the policies by
/// the cluster controller: it may close with a policy created later.)
fn depends_on_errors(name: &str, dependencies: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    for (index, dependency) in dependencies.iter().enumerate() {
        if !is_valid_policy_name(dependency) {
            errors.push(format!(
                "invalid spec.dependsOn[{index}]: {dependency:?}: not a policy name (a label value)"
            ));
        } else if dependency == name {
            errors.push(format!(
                "invalid spec.dependsOn[{index}]: {dependency:?}: a policy cannot depend on itself"
            ));
        } else if dependencies[..index].contains(dependency) {
            errors.push(format!(
                "invalid spec.dependsOn[{index}]: {dependency:?}: listed twice"
            ));
        }
    }
    errors
}

/// The probes' settings (the schema bounds them too, on every server version).
fn probes_errors(probes: &PolicyProbes) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(seconds) = probes.timeout_seconds
        && !(1..=MAX_TIMEOUT_SECONDS).contains(&seconds)
    {
        errors.push(format!(
            "invalid spec.probes.timeoutSeconds: {seconds}: must be from 1 to {MAX_TIMEOUT_SECONDS} seconds"
        ));
    }
    if let Some(host) = probes.dns_host() {
        errors.extend(host_error("spec.probes.dns.host", host, false));
    }
    let tcp = probes.tcp.as_deref().unwrap_or_default();
    if tcp.len() > MAX_TCP_PROBES {
        errors.push(format!(
            "invalid spec.probes.tcp: {} probes: at most {MAX_TCP_PROBES} are allowed",
            tcp.len()
        ));
    }
    for (index, probe) in tcp.iter().enumerate() {
        errors.extend(host_error(
            &format!("spec.probes.tcp[{index}].host"),
            &probe.host,
            true,
        ));
        if probe.port == 0 {
            errors.push(format!(
                "invalid spec.probes.tcp[{index}].port: 0: must be from 1 to 65535"
            ));
        }
    }
    errors
}

/// A DNS name (any case), or, where `address_allowed`, an IP address.
fn host_error(field: &str, host: &str, address_allowed: bool) -> Option<String> {
    if address_allowed && host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let name_errors = dns1123_subdomain_errors(&host.trim_end_matches('.').to_ascii_lowercase());
    let expected = if address_allowed {
        "must be an IP address or a DNS name"
    } else {
        "must be a DNS name"
    };
    (!name_errors.is_empty()).then(|| {
        format!(
            "invalid {field}: {host:?}: {expected} ({})",
            name_errors.join("; ")
        )
    })
}

fn capture_errors(capture: &BTreeMap<String, String>) -> Vec<String> {
    capture
        .iter()
        .filter_map(|(name, expression)| {
            let single = serde_json::json!({ name: expression });
            serde_json::from_value::<NetworkCaptureRules>(single)
                .err()
                .map(|error| format!("invalid spec.capture.{name}: {error}"))
        })
        .collect()
}

/// The desired state must be an nmstate state. With captures it is a template whose values
/// are only known on the node: its capture references are checked here, the state itself
/// once the node resolved them.
fn desired_state_error(desired: &Value, capture: &BTreeMap<String, String>) -> Option<String> {
    let template: NetworkStateTemplate = match serde_json::from_value(desired.clone()) {
        Ok(template) => template,
        Err(error) => return Some(format!("invalid spec.desiredState: {error}")),
    };
    if capture.is_empty() {
        // Deserialized with the path to what is wrong, as nmstate's own message does not say.
        if let Err(error) = serde_path_to_error::deserialize::<_, NetworkState>(desired.clone()) {
            let path = error.path().to_string();
            let field = if path == "." {
                String::new()
            } else {
                format!(".{path}")
            };
            return Some(format!("invalid spec.desiredState{field}: {}", error.inner()));
        }
        return template
            .fill_with_captured_data(&HashMap::new())
            .err()
            .map(|error| format!("invalid spec.desiredState: {}", error.msg()));
    }
    capture_reference_errors(desired, capture)
}

/// A capture reference to a capture `spec.capture` does not define.
fn capture_reference_errors(desired: &Value, capture: &BTreeMap<String, String>) -> Option<String> {
    let mut unknown = Vec::new();
    capture_references(desired, &mut |reference| {
        if !capture.contains_key(reference) {
            unknown.push(reference.to_string());
        }
    });
    unknown.sort();
    unknown.dedup();
    (!unknown.is_empty()).then(|| {
        format!(
            "invalid spec.desiredState: it refers to {}, which spec.capture does not define",
            unknown
                .iter()
                .map(|name| format!("capture {name:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Calls `found` with the capture name of every `{{ capture.<name>.<path> }}` in `value`.
fn capture_references(value: &Value, found: &mut impl FnMut(&str)) {
    match value {
        Value::String(text) => {
            let mut rest = text.as_str();
            while let Some(start) = rest.find("{{") {
                let inner = &rest[start + 2..];
                let end = inner.find("}}").unwrap_or(inner.len());
                if let Some(path) = inner[..end].trim().strip_prefix("capture.") {
                    found(path.split('.').next().unwrap_or_default());
                }
                rest = &inner[end..];
            }
        }
        Value::Array(items) => items.iter().for_each(|item| capture_references(item, found)),
        Value::Object(map) => map.values().for_each(|item| capture_references(item, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
