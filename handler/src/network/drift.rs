//! Whether the node already is in a policy's desired state, so that a handler restart or
//! upgrade marks an enacted policy Available without touching NetworkManager, and re-applies it
//! only when the node drifted from it. The comparison is nmstate's own `gen_diff` (what
//! `nmstatectl policy` uses): what applying `desired` would still change on the node.

use nmstate::NetworkState;
use serde_json::Value;

/// What applying `desired` would still change on a node whose state is `current`, or `None`
/// when the node already satisfies it.
///
/// `gen_diff` is exact for routes, route rules and DNS. For interfaces it compares lists
/// whole, so a bridge whose desired ports name only `eth1` differs from a current port list
/// that also carries eth1's STP settings; an interface it lists is dropped from the result when
/// its desired settings are all found in the current interface (see [`is_contained`]).
pub fn pending_changes(
    desired: &Value,
    current: &NetworkState,
) -> Result<Option<Value>, nmstate::NmstateError> {
    let desired_state = NetworkState::new_from_json(&desired.to_string())?;
    let mut diff = to_json(&desired_state.gen_diff(current)?)?;
    let desired_json = to_json(&desired_state)?;
    let current_json = to_json(current)?;
    if let Some(interfaces) = diff.get_mut("interfaces").and_then(Value::as_array_mut) {
        interfaces.retain(|changed| {
            let name = changed.get("name");
            let find = |state: &Value| {
                state["interfaces"]
                    .as_array()
                    .and_then(|list| list.iter().find(|iface| iface.get("name") == name).cloned())
            };
            match (find(&desired_json), find(&current_json)) {
                (Some(wanted), Some(found)) => !is_contained(&wanted, &found),
                _ => true,
            }
        });
    }
    // A purge reads as an empty section: pending, though `is_empty_section` would say nothing is.
    let purge = dns_purge_pending(desired, &current_json);
    if purge {
        diff["dns-resolver"] = desired["dns-resolver"].clone();
    }
    Ok((purge || !is_empty_section(&diff)).then_some(diff))
}

/// Whether `desired` removes DNS settings the node still has: `dns-resolver.config: {}` removes
/// every server and search domain, an empty `server` or `search` list all of those. `gen_diff`
/// sees nothing to change there, as nothing is asked for.
fn dns_purge_pending(desired: &Value, current: &Value) -> bool {
    let Some(config) = desired.pointer("/dns-resolver/config").and_then(Value::as_object) else {
        return false;
    };
    ["server", "search"].into_iter().any(|key| {
        let removed = config.is_empty()
            || config
                .get(key)
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty);
        let present = current
            .pointer(&format!("/dns-resolver/config/{key}"))
            .and_then(Value::as_array)
            .is_some_and(|entries| !entries.is_empty());
        removed && present
    })
}

/// A state as JSON; nmstate's states always serialize, so a failure is a bug.
pub fn to_json(state: &NetworkState) -> Result<Value, nmstate::NmstateError> {
    serde_json::to_value(state).map_err(|error| {
        nmstate::NmstateError::new(
            nmstate::ErrorKind::Bug,
            format!("cannot serialize a network state: {error}"),
        )
    })
}

/// Whether every setting in `desired` is in `current`. Lists of named entries (bridge or bond
/// ports) must name the same entries, each contained; in other lists (addresses, servers) each
/// desired entry must be found, and entries the node adds itself (DHCP or link-local addresses)
/// do not count as drift. An ethernet interface may be reported as `veth`.
pub fn is_contained(desired: &Value, current: &Value) -> bool {
    match (desired, current) {
        (Value::Object(wanted), Value::Object(found)) => wanted.iter().all(|(key, value)| {
            let present = found.get(key).unwrap_or(&Value::Null);
            is_contained(value, present) || (key == "type" && value == "ethernet" && present == "veth")
        }),
        (Value::Array(wanted), Value::Array(found)) => {
            let name = |entry: &Value| entry.get("name").cloned();
            if !wanted.is_empty() && wanted.iter().all(|entry| name(entry).is_some()) {
                wanted.len() == found.len()
                    && wanted.iter().all(|entry| {
                        found
                            .iter()
                            .any(|present| name(present) == name(entry) && is_contained(entry, present))
                    })
            } else {
                wanted
                    .iter()
                    .all(|entry| found.iter().any(|present| is_contained(entry, present)))
            }
        }
        (Value::String(wanted), Value::String(found)) => wanted.eq_ignore_ascii_case(found),
        (wanted, Value::Null) => is_empty_section(wanted),
        (wanted, found) => wanted == found,
    }
}

/// Whether `value` holds nothing: `gen_diff` leaves unchanged sections present but empty
/// (`routes: {}`, `interfaces: []`).
pub fn is_empty_section(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.values().all(is_empty_section),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> NetworkState {
        NetworkState::new_from_yaml(include_str!("../../tests/fixtures/node-state-bridge-dhcp.yaml")).unwrap()
    }

    fn bridge(stp: bool) -> Value {
        json!({"interfaces": [{
            "name": "br1", "type": "linux-bridge", "state": "up", "ipv4": {"enabled": true, "dhcp": true},
            "bridge": {"options": {"stp": {"enabled": stp}}, "port": [{"name": "eth1"}]},
        }]})
    }

    #[test]
    fn a_node_in_the_desired_state_has_nothing_pending() {
        assert_eq!(pending_changes(&bridge(false), &node()).unwrap(), None);
        let dns = json!({"dns-resolver": {"config": {"server": ["10.77.0.1"], "search": ["sandbox.test"]}}});
        assert_eq!(pending_changes(&dns, &node()).unwrap(), None);
        // The sandbox's NICs are veths; a policy calls them ethernet.
        let eth0 = json!({"interfaces": [{"name": "eth0", "type": "ethernet", "state": "up"}]});
        assert_eq!(pending_changes(&eth0, &node()).unwrap(), None);
    }

    #[test]
    fn containment_reads_lists_as_nmstate_means_them() {
        let found =
            json!({"mac": "AA:BB", "port": [{"name": "a", "cost": 1}, {"name": "b"}], "addr": [1, 2]});
        assert!(is_contained(&json!({"mac": "aa:bb", "addr": [2]}), &found));
        assert!(is_contained(
            &json!({"port": [{"name": "b"}, {"name": "a"}]}),
            &found
        ));
        assert!(
            !is_contained(&json!({"port": [{"name": "a"}]}), &found),
            "b would be detached"
        );
        assert!(!is_contained(
            &json!({"port": [{"name": "a", "cost": 2}, {"name": "b"}]}),
            &found
        ));
        assert!(!is_contained(&json!({"addr": [3]}), &found));
        assert!(
            is_contained(&json!({"vlan": {}, "extra": []}), &found),
            "empty means unset"
        );
        assert!(!is_contained(&json!({"extra": false}), &found));
    }

    #[test]
    fn a_node_that_drifted_has_the_difference_pending() {
        let pending = pending_changes(&bridge(true), &node()).unwrap().unwrap();
        assert_eq!(pending["interfaces"][0]["name"], "br1", "{pending}");

        let more_ports = json!({"interfaces": [{
            "name": "br1", "type": "linux-bridge", "bridge": {"port": [{"name": "eth1"}, {"name": "eth2"}]},
        }]});
        assert!(pending_changes(&more_ports, &node()).unwrap().is_some());

        let static_address = json!({"interfaces": [{
            "name": "eth2", "type": "ethernet", "state": "up",
            "ipv4": {"enabled": true, "dhcp": false, "address": [{"ip": "10.77.2.50", "prefix-length": 24}]},
        }]});
        assert!(pending_changes(&static_address, &node()).unwrap().is_some());

        let gone = json!({"interfaces": [{"name": "br7", "type": "linux-bridge", "state": "up"}]});
        assert!(pending_changes(&gone, &node()).unwrap().is_some());

        let dns = json!({"dns-resolver": {"config": {"server": ["10.77.0.9"]}}});
        assert!(pending_changes(&dns, &node()).unwrap().is_some());

        // dns-cleanup.yaml: the node's servers and search domains are to go.
        let purge = json!({"dns-resolver": {"config": {}}});
        let pending = pending_changes(&purge, &node()).unwrap().unwrap();
        assert_eq!(pending["dns-resolver"], purge["dns-resolver"], "{pending}");
        let no_search = json!({"dns-resolver": {"config": {"search": [], "server": ["10.77.0.1"]}}});
        assert!(pending_changes(&no_search, &node()).unwrap().is_some());

        let route = json!({"routes": {"config": [{
            "destination": "198.51.100.0/24", "next-hop-address": "10.77.0.1", "next-hop-interface": "eth0",
        }]}});
        assert!(pending_changes(&route, &node()).unwrap().is_some());
    }
}
