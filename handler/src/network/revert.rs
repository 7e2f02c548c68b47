//! The state that undoes a desired state on a node: nmstate's revert generation (what
//! `nmstatectl gr` prints), against the node's state before the change. An interface the change
//! creates becomes `state: absent`; a setting it changes goes back to its current value; routes
//! and DNS likewise.

use nmstate::{NetworkState, NmstateError};
use serde_json::Value;

/// What would undo applying `desired` to a node whose state is `current`.
pub fn revert(desired: &Value, current: &NetworkState) -> Result<Value, NmstateError> {
    let desired = NetworkState::new_from_json(&desired.to_string())?;
    let revert = desired.generate_revert(current)?;
    serde_json::to_value(&revert).map_err(|error| {
        NmstateError::new(
            nmstate::ErrorKind::Bug,
            format!("cannot serialize a network state: {error}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> NetworkState {
        NetworkState::new_from_yaml(include_str!("../../tests/fixtures/node-state-bridge-dhcp.yaml")).unwrap()
    }

    #[test]
    fn a_new_interface_is_reverted_to_absent_and_a_changed_one_to_its_current_settings() {
        let desired = json!({"interfaces": [
            {"name": "br9", "type": "linux-bridge", "state": "up"},
            {"name": "eth2", "type": "ethernet", "state": "up", "mtu": 1400},
        ]});
        let revert = revert(&desired, &node()).unwrap();
        let interfaces = revert["interfaces"].as_array().unwrap();
        let find = |name: &str| interfaces.iter().find(|iface| iface["name"] == name).unwrap();
        assert_eq!(find("br9")["state"], "absent", "{revert}");
        assert_eq!(find("eth2")["mtu"], 1500, "{revert}");
    }
}
