//! Reading the node's network state with the nmstate crate, in-process.
//!
//! nmstate's blocking calls build a runtime of their own (they panic inside a tokio runtime)
//! and its async futures are not `Send`; callers inside tokio use `spawn_blocking`.

use serde_json::Value;

/// The nmstate crate version this handler is built with.
pub const NMSTATE_VERSION: &str = env!("NMSTATE_CRATE_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum NodeStateError {
    #[error("cannot read the network state from NetworkManager: {0}")]
    Retrieve(#[from] nmstate::NmstateError),
    #[error("cannot serialize the network state: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl NodeStateError {
    /// A bounded category, for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            NodeStateError::Retrieve(_) => "retrieve",
            NodeStateError::Serialize(_) => "serialize",
        }
    }
}

/// The node's current network state (secrets hidden), as nmstate reports it. Blocking.
pub fn retrieve() -> Result<Value, NodeStateError> {
    let mut state = retrieve_state()?;
    state.hide_secrets();
    Ok(serde_json::to_value(&state)?)
}

/// The node's current network state as nmstate's type (secrets included), e.g. for captures.
/// Blocking.
pub fn retrieve_state() -> Result<nmstate::NetworkState, nmstate::NmstateError> {
    let mut state = nmstate::NetworkState::new();
    state.retrieve()?;
    Ok(state)
}

/// What the kernel alone reports (links, addresses, routes; no NetworkManager profiles or
/// DNS), without secrets to hide. Blocking; a fraction of [`retrieve`]'s cost.
pub fn retrieve_kernel() -> Result<Value, NodeStateError> {
    let mut state = nmstate::NetworkState::new();
    state.set_kernel_only(true);
    state.retrieve()?;
    Ok(serde_json::to_value(&state)?)
}

/// Keeps only the named interfaces, and the routes through them, like `nmstatectl show IFACE`.
/// The nmstate features `desired` uses on top of `current` (as `nmstatectl statistic` reports
/// them, e.g. `static-dns`), for the enactment status and the `features_applied` metric.
pub fn features_used(desired: &Value, current: &nmstate::NetworkState) -> Option<Vec<String>> {
    let desired = nmstate::NetworkState::new_from_json(&desired.to_string()).ok()?;
    let statistic = desired.statistic(current).ok()?;
    let names: Vec<String> = statistic
        .features
        .iter()
        .filter_map(|feature| serde_json::to_value(feature).ok()?.as_str().map(str::to_string))
        .collect();
    (!names.is_empty()).then_some(names)
}

pub fn only_interfaces(mut state: Value, names: &[String]) -> Value {
    if names.is_empty() {
        return state;
    }
    let wanted = |value: &Value, key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .is_some_and(|name| names.iter().any(|n| n == name))
    };
    if let Some(interfaces) = state.get_mut("interfaces").and_then(Value::as_array_mut) {
        interfaces.retain(|interface| wanted(interface, "name"));
    }
    for table in ["running", "config"] {
        if let Some(routes) = state
            .pointer_mut(&format!("/routes/{table}"))
            .and_then(Value::as_array_mut)
        {
            routes.retain(|route| wanted(route, "next-hop-interface"));
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filtering_keeps_named_interfaces_and_their_routes() {
        let state = json!({
            "interfaces": [{"name": "lo"}, {"name": "eth0"}, {"name": "eth1"}],
            "routes": {"running": [{"next-hop-interface": "eth0"}, {"next-hop-interface": "eth1"}]},
            "dns-resolver": {},
        });
        let filtered = only_interfaces(state.clone(), &["eth1".to_string()]);
        assert_eq!(filtered["interfaces"], json!([{"name": "eth1"}]));
        assert_eq!(
            filtered["routes"]["running"],
            json!([{"next-hop-interface": "eth1"}])
        );
        assert_eq!(filtered["dns-resolver"], json!({}));
        assert_eq!(only_interfaces(state.clone(), &[]), state);
    }

    #[test]
    fn the_nmstate_version_comes_from_the_lock_file() {
        assert!(NMSTATE_VERSION.starts_with("2.2."), "{NMSTATE_VERSION}");
    }
}
