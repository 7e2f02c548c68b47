//! Capture resolution (nmpolicy): a policy's `capture` expressions run against the node's
//! current state, and `"{{ capture.<name>.<path> }}"` references in its `desiredState` are
//! replaced by what they captured. Done in-process with the nmstate crate, as `nmstatectl
//! policy` does.
//!
//! Captures are computed once and then reused from the enactment's `capturedStates`: a policy
//! that moves the default route's NIC under a bridge must keep naming that NIC after the move,
//! when the expression would match something else. This is why `capture` is immutable.

use nmstate::{NetworkCaptureRules, NetworkState, NetworkStateTemplate};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("invalid capture: {0}")]
    InvalidCapture(String),
    #[error("invalid desiredState: {0}")]
    InvalidDesiredState(String),
    #[error("invalid captured state {name:?} in the enactment: {reason}")]
    InvalidCachedState { name: String, reason: String },
    #[error("{0}")]
    Nmstate(#[from] nmstate::NmstateError),
    #[error("cannot serialize the resolved state: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl CaptureError {
    /// A bounded category, for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            CaptureError::InvalidCapture(_) => "invalid-capture",
            CaptureError::InvalidDesiredState(_) => "invalid-desired-state",
            CaptureError::InvalidCachedState { .. } => "invalid-cached-state",
            CaptureError::Nmstate(_) => "nmstate",
            CaptureError::Serialize(_) => "serialize",
        }
    }
}

/// A policy's desired state for one node, and the captures it was resolved with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResolvedState {
    pub desired: Value,
    pub captured: BTreeMap<String, Value>,
}

/// Resolves `desired` for a node whose state is `current`. Captures found in `cached` are
/// reused; when any is missing, all are computed afresh and the cached ones take precedence.
/// Without captures the desired state is returned as written.
pub fn resolve(
    capture: &BTreeMap<String, String>,
    desired: &Value,
    current: &NetworkState,
    cached: &BTreeMap<String, Value>,
) -> Result<ResolvedState, CaptureError> {
    let empty = match desired {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        _ => false,
    };
    if empty {
        return Ok(ResolvedState::default());
    }
    let template: NetworkStateTemplate = serde_json::from_value(desired.clone())
        .map_err(|error| CaptureError::InvalidDesiredState(error.to_string()))?;
    if capture.is_empty() {
        // Still parsed, so a reference to a capture that does not exist fails here.
        template.fill_with_captured_data(&HashMap::new())?;
        return Ok(ResolvedState {
            desired: desired.clone(),
            captured: BTreeMap::new(),
        });
    }

    let rules: NetworkCaptureRules = serde_json::to_value(capture)
        .and_then(serde_json::from_value)
        .map_err(|error| CaptureError::InvalidCapture(error.to_string()))?;
    let mut captured: HashMap<String, NetworkState> = HashMap::new();
    if !capture.keys().all(|name| cached.contains_key(name)) {
        captured = rules.execute(current)?;
    }
    for (name, state) in cached.iter().filter(|(name, _)| capture.contains_key(*name)) {
        let state: NetworkState =
            serde_json::from_value(state.clone()).map_err(|error| CaptureError::InvalidCachedState {
                name: name.clone(),
                reason: error.to_string(),
            })?;
        captured.insert(name.clone(), state);
    }

    // As `nmstatectl policy`: what is left to change relative to the current state.
    let filled = template.fill_with_captured_data(&captured)?.gen_diff(current)?;
    let captured = captured
        .into_iter()
        .map(|(name, state)| Ok((name, serde_json::to_value(state)?)))
        .collect::<Result<_, serde_json::Error>>()?;
    Ok(ResolvedState {
        desired: serde_json::to_value(filled)?,
        captured,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn current() -> NetworkState {
        NetworkState::new_from_yaml(include_str!("../../tests/fixtures/node-state-bridge-dhcp.yaml")).unwrap()
    }

    fn interface<'a>(state: &'a Value, name: &str) -> &'a Value {
        state["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap()
    }

    /// upstream's "default bridged network" policy: put the NIC with the default route under a
    /// new bridge, keeping its MAC address.
    fn default_bridge() -> (BTreeMap<String, String>, Value) {
        let capture = BTreeMap::from([
            (
                "default-gw".to_string(),
                r#"routes.running.destination=="0.0.0.0/0""#.to_string(),
            ),
            (
                "base-iface".to_string(),
                "interfaces.name==capture.default-gw.routes.running.0.next-hop-interface".to_string(),
            ),
        ]);
        let desired = json!({"interfaces": [{
            "name": "brext", "type": "linux-bridge", "state": "up",
            "mac-address": "{{ capture.base-iface.interfaces.0.mac-address }}",
            "bridge": {"options": {"stp": {"enabled": false}}, "port": [{"name": "{{ capture.base-iface.interfaces.0.name }}"}]},
        }]});
        (capture, desired)
    }

    #[test]
    fn captures_fill_the_desired_state_from_the_current_one() {
        let (capture, desired) = default_bridge();
        let resolved = resolve(&capture, &desired, &current(), &BTreeMap::new()).unwrap();
        let bridge = interface(&resolved.desired, "brext");
        assert_eq!(
            bridge["bridge"]["port"][0]["name"], "eth0",
            "the NIC with the default route"
        );
        let eth0_mac = interface(&serde_json::to_value(current()).unwrap(), "eth0")["mac-address"].clone();
        assert_eq!(bridge["mac-address"], eth0_mac);
        assert_eq!(
            resolved.captured.keys().collect::<Vec<_>>(),
            ["base-iface", "default-gw"]
        );
    }

    #[test]
    fn cached_captures_are_reused_instead_of_recomputed() {
        let (capture, desired) = default_bridge();
        let first = resolve(&capture, &desired, &current(), &BTreeMap::new()).unwrap();
        // Pretend the capture was taken when eth2 held the default route.
        let mut cached = first.captured.clone();
        let mut base = cached["base-iface"].clone();
        base["interfaces"][0]["name"] = json!("eth2");
        cached.insert("base-iface".into(), base);
        let again = resolve(&capture, &desired, &current(), &cached).unwrap();
        assert_eq!(
            interface(&again.desired, "brext")["bridge"]["port"][0]["name"],
            "eth2"
        );
        assert_eq!(again.captured["base-iface"]["interfaces"][0]["name"], "eth2");
    }

    #[test]
    fn a_policy_without_captures_is_kept_as_written() {
        let desired = json!({"interfaces": [{"name": "eth1", "type": "ethernet", "state": "up"}]});
        let resolved = resolve(&BTreeMap::new(), &desired, &current(), &BTreeMap::new()).unwrap();
        assert_eq!(
            resolved,
            ResolvedState {
                desired,
                captured: BTreeMap::new()
            }
        );
        assert_eq!(
            resolve(&BTreeMap::new(), &json!({}), &current(), &BTreeMap::new()).unwrap(),
            ResolvedState::default()
        );
    }

    #[test]
    fn bad_expressions_and_references_fail_with_nmstates_message() {
        let desired = json!({"interfaces": [{"name": "{{ capture.nic.interfaces.0.name }}", "state": "up"}]});
        let bad_expression = BTreeMap::from([("nic".to_string(), "interfaces.name==".to_string())]);
        let error = resolve(&bad_expression, &desired, &current(), &BTreeMap::new()).unwrap_err();
        assert!(matches!(error, CaptureError::InvalidCapture(_)), "{error}");

        let error = resolve(&BTreeMap::new(), &desired, &current(), &BTreeMap::new()).unwrap_err();
        assert!(
            error.to_string().contains("nic"),
            "a reference to a missing capture names it: {error}"
        );
    }
}
