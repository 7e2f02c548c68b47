//! Per-node values in one policy (`spec.variables`): what each variable takes its value from,
//! and how `{{ var.<name> }}` references in `desiredState` are replaced by them. Resolved on
//! each node before captures, so captures may use them.
//!
//! A reference is `{{ var.<name> }}`, or for an address from a pool `{{ var.<name>.address }}`,
//! `.prefix`, `.cidr` (address/prefix) or `.gateway`. A string that is exactly one `.prefix`
//! reference becomes a number; every other reference is replaced as text.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::{collections::BTreeMap, net::IpAddr};

/// How many variables a policy may define.
pub const MAX_VARIABLES: usize = 64;

/// Where one variable's value comes from: exactly one of `fromNode`, `perNode`, `fromIPPool`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVariable {
    /// From the node's own object: its name, a label or an annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_node: Option<FromNode>,
    /// A value per node name; a selected node missing here fails with the variable named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 5000))]
    pub per_node: Option<BTreeMap<String, String>>,
    /// An address from a NodeNetworkIPPool, allocated once per node, policy and variable and
    /// kept until the node stops being selected, the node goes or the policy goes.
    #[serde(default, rename = "fromIPPool", skip_serializing_if = "Option::is_none")]
    pub from_ip_pool: Option<FromIPPool>,
}

/// One field of the Node: exactly one of `field`, `label`, `annotation`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FromNode {
    /// `name`: the node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<NodeField>,
    /// The value of this label of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 317))]
    pub label: Option<String>,
    /// The value of this annotation of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 317))]
    pub annotation: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NodeField {
    #[serde(rename = "name")]
    Name,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FromIPPool {
    /// The NodeNetworkIPPool's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A variable's value on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    Text(String),
    Address {
        address: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
    },
}

/// The fields of an address (`{{ var.<name>.<field> }}`).
pub const ADDRESS_FIELDS: [&str; 4] = ["address", "prefix", "cidr", "gateway"];

/// One `{{ var.<name>[.<field>] }}` in a desired state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    pub variable: String,
    pub field: Option<String>,
}

/// Every variable reference in `value`.
pub fn references(value: &Value) -> Vec<Reference> {
    let mut found = Vec::new();
    visit_strings(value, &mut |text| {
        for_each_reference(text, &mut |reference| found.push(reference));
    });
    found
}

/// `desired` with every reference replaced by its value in `values`. Errors name the first
/// reference that cannot be replaced.
pub fn substitute(desired: &Value, values: &BTreeMap<String, Resolved>) -> Result<Value, String> {
    match desired {
        Value::String(text) => substitute_text(text, values),
        Value::Array(items) => items.iter().map(|item| substitute(item, values)).collect(),
        Value::Object(map) => map
            .iter()
            .map(|(key, item)| Ok((key.clone(), substitute(item, values)?)))
            .collect::<Result<serde_json::Map<_, _>, String>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

fn substitute_text(text: &str, values: &BTreeMap<String, Resolved>) -> Result<Value, String> {
    let mut output = String::new();
    let mut rest = text;
    let mut whole_prefix = None;
    while let Some(start) = rest.find("{{") {
        let Some(length) = rest[start..].find("}}") else {
            break;
        };
        let inner = &rest[start + 2..start + length];
        let Some(reference) = parse_reference(inner) else {
            // Not a variable (e.g. a capture, resolved later): kept as written.
            output.push_str(&rest[..start + length + 2]);
            rest = &rest[start + length + 2..];
            continue;
        };
        let value = value_of(&reference, values)?;
        if start == 0
            && start + length + 2 == rest.len()
            && output.is_empty()
            && reference.field.as_deref() == Some("prefix")
        {
            whole_prefix = value.parse::<u64>().ok();
        }
        output.push_str(&rest[..start]);
        output.push_str(&value);
        rest = &rest[start + length + 2..];
    }
    output.push_str(rest);
    Ok(match whole_prefix {
        Some(prefix) => Value::from(prefix),
        None => Value::String(output),
    })
}

fn value_of(reference: &Reference, values: &BTreeMap<String, Resolved>) -> Result<String, String> {
    let name = &reference.variable;
    let value = values
        .get(name)
        .ok_or_else(|| format!("it refers to variable {name:?}, which spec.variables does not define"))?;
    match (value, reference.field.as_deref()) {
        (Resolved::Text(text), None) => Ok(text.clone()),
        (Resolved::Text(_), Some(field)) => Err(format!(
            "{{{{ var.{name}.{field} }}}}: variable {name:?} is a value, not an address; refer to it as {{{{ var.{name} }}}}"
        )),
        (Resolved::Address { address, .. }, None | Some("address")) => Ok(address.to_string()),
        (Resolved::Address { prefix, .. }, Some("prefix")) => Ok(prefix.to_string()),
        (Resolved::Address { address, prefix, .. }, Some("cidr")) => Ok(format!("{address}/{prefix}")),
        (
            Resolved::Address {
                gateway: Some(gateway),
                ..
            },
            Some("gateway"),
        ) => Ok(gateway.to_string()),
        (Resolved::Address { .. }, Some("gateway")) => Err(format!(
            "{{{{ var.{name}.gateway }}}}: the pool of variable {name:?} has no spec.gateway"
        )),
        (Resolved::Address { .. }, Some(field)) => Err(format!(
            "{{{{ var.{name}.{field} }}}}: an address has {}",
            ADDRESS_FIELDS.join(", ")
        )),
    }
}

/// `var.<name>[.<field>]` (with the braces' inner spaces trimmed) as a reference.
fn parse_reference(inner: &str) -> Option<Reference> {
    let path = inner.trim().strip_prefix("var.")?;
    let (variable, field) = match path.split_once('.') {
        Some((variable, field)) => (variable, Some(field.to_string())),
        None => (path, None),
    };
    Some(Reference {
        variable: variable.to_string(),
        field,
    })
}

fn for_each_reference(text: &str, found: &mut impl FnMut(Reference)) {
    let mut offset = 0;
    while let Some(start) = text[offset..].find("{{") {
        let start = offset + start;
        let Some(length) = text[start..].find("}}") else {
            return;
        };
        if let Some(reference) = parse_reference(&text[start + 2..start + length]) {
            found(reference);
        }
        offset = start + length + 2;
    }
}

fn visit_strings(value: &Value, visit: &mut impl FnMut(&str)) {
    match value {
        Value::String(text) => visit(text),
        Value::Array(items) => items.iter().for_each(|item| visit_strings(item, visit)),
        Value::Object(map) => map.values().for_each(|item| visit_strings(item, visit)),
        _ => {}
    }
}

/// What is wrong with a policy's variables, field by field, for the webhook.
pub fn errors(variables: &BTreeMap<String, PolicyVariable>, desired: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    for (name, variable) in variables {
        let valid_name = name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            errors.push(format!(
                "invalid spec.variables.{name}: a variable name starts with a letter and has only letters, digits and _ (at most 63)"
            ));
        }
        let sources = [
            variable.from_node.is_some(),
            variable.per_node.is_some(),
            variable.from_ip_pool.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() != 1 {
            errors.push(format!(
                "invalid spec.variables.{name}: set exactly one of fromNode, perNode, fromIPPool"
            ));
        }
        if let Some(from_node) = &variable.from_node {
            let fields = [
                from_node.field.is_some(),
                from_node.label.is_some(),
                from_node.annotation.is_some(),
            ];
            if fields.iter().filter(|set| **set).count() != 1 {
                errors.push(format!(
                    "invalid spec.variables.{name}.fromNode: set exactly one of field, label, annotation"
                ));
            }
        }
    }
    // Each reference is checked by replacing it with a stand-in of its variable's kind, so the
    // webhook and the nodes say the same thing about it. A pool's gateway is only known once
    // the pool is read, on the node.
    let stand_ins: BTreeMap<String, Resolved> = variables
        .iter()
        .map(|(name, variable)| {
            let value = match variable.from_ip_pool {
                Some(_) => Resolved::Address {
                    address: IpAddr::from([0, 0, 0, 0]),
                    prefix: 0,
                    gateway: Some(IpAddr::from([0, 0, 0, 0])),
                },
                None => Resolved::Text(String::new()),
            };
            (name.clone(), value)
        })
        .collect();
    let mut references = references(desired);
    references.sort();
    references.dedup();
    errors.extend(references.iter().filter_map(|reference| {
        value_of(reference, &stand_ins)
            .err()
            .map(|problem| format!("invalid spec.desiredState: {problem}"))
    }));
    errors
}

#[cfg(test)]
mod tests;
