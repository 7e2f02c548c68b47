//! The state that undoes a desired state on a node: nmstate's revert generation (what
//! `nmstatectl gr` prints), against the node's state before the change. An interface the change
//! creates becomes `state: absent`; a setting it changes goes back to its current value; routes
//! and DNS likewise.
//!
//! A policy's revert accumulates over its generations ([`merge_earliest`]), so it goes back to
//! before the first; when it is applied, what other policies on the node still declare is set
//! as they declare it ([`with_declared`]).

use nmstate::{NetworkState, NmstateError};
use serde_json::{Map, Value};

/// What would undo applying `desired` to a node whose state is `current`.
pub fn revert(desired: &Value, current: &NetworkState) -> Result<Value, NmstateError> {
    let desired = NetworkState::new_from_json(&desired.to_string())?;
    super::drift::to_json(&desired.generate_revert(current)?)
}

/// One entity of a state section: an interface by name, a route or route rule by what it
/// matches (its state and metric aside), or the whole section (DNS, hostname, ...).
fn entity_key(section: &str, entry: &Value) -> Value {
    match section {
        "interfaces" => entry.get("name").cloned().unwrap_or(Value::Null),
        _ => match entry.as_object() {
            Some(fields) => Value::Object(
                fields
                    .iter()
                    .filter(|(key, _)| !matches!(key.as_str(), "state" | "metric"))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect(),
            ),
            None => entry.clone(),
        },
    }
}

/// A section's entities: the `interfaces` list, the `config` list of `routes` and
/// `route-rules`; `None` for a section that is one entity.
fn entries<'a>(section: &str, value: &'a Value) -> Option<&'a Vec<Value>> {
    match section {
        "interfaces" => value.as_array(),
        "routes" | "route-rules" => value.get("config")?.as_array(),
        _ => None,
    }
}

fn with_entries(section: &str, entries: Vec<Value>) -> Value {
    match section {
        "interfaces" => Value::Array(entries),
        _ => serde_json::json!({ "config": entries }),
    }
}

/// `kept` (the revert of earlier generations) with what `newer` reverts besides: for each
/// entity the earliest revert wins, so the result goes back to before the first generation.
pub fn merge_earliest(kept: Option<&Value>, newer: &Value) -> Value {
    let Some(Value::Object(kept)) = kept else {
        return newer.clone();
    };
    let mut merged = kept.clone();
    for (section, value) in newer.as_object().into_iter().flatten() {
        let Some(earlier) = kept.get(section) else {
            merged.insert(section.clone(), value.clone());
            continue;
        };
        if let (Some(earlier_entries), Some(newer_entries)) =
            (entries(section, earlier), entries(section, value))
        {
            let mut all = earlier_entries.clone();
            for entry in newer_entries {
                let key = entity_key(section, entry);
                if !earlier_entries
                    .iter()
                    .any(|kept| entity_key(section, kept) == key)
                {
                    all.push(entry.clone());
                }
            }
            merged.insert(section.clone(), with_entries(section, all));
        }
    }
    Value::Object(merged)
}

/// `revert` with each entity another policy Available on the node declares set as that policy
/// declares it (the first of `declared` that does): those entities end as the other policies
/// want them, not as they were before this one. A port of a removed bridge that another policy
/// puts on DHCP gets DHCP; a bridge that another policy declares stays.
pub fn with_declared(revert: &Value, declared: &[&Value]) -> Value {
    let mut result = Map::new();
    for (section, value) in revert.as_object().into_iter().flatten() {
        let declared_here: Vec<&Value> = declared.iter().filter_map(|state| state.get(section)).collect();
        match entries(section, value) {
            Some(own) => {
                let claimed: Vec<&Value> = declared_here
                    .iter()
                    .filter_map(|other| entries(section, other))
                    .flatten()
                    .collect();
                let entries: Vec<Value> = own
                    .iter()
                    .map(|entry| {
                        let key = entity_key(section, entry);
                        let declared = claimed.iter().find(|other| entity_key(section, other) == key);
                        (*declared.unwrap_or(&entry)).clone()
                    })
                    .collect();
                result.insert(section.clone(), with_entries(section, entries));
            }
            None => {
                let declared = declared_here.first().copied().unwrap_or(value);
                result.insert(section.clone(), declared.clone());
            }
        }
    }
    Value::Object(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_earliest_revert_of_each_entity_wins() {
        // Generation 1 created br1 and set a route; generation 2 changed br1's MTU, set eth2's
        // address and DNS.
        let first = json!({
            "interfaces": [{"name": "br1", "state": "absent"}],
            "routes": {"config": [{"destination": "198.51.100.0/24", "next-hop-interface": "br1", "state": "absent"}]},
        });
        let second = json!({
            "interfaces": [{"name": "br1", "mtu": 1500}, {"name": "eth2", "ipv4": {"dhcp": true}}],
            "routes": {"config": [
                {"destination": "198.51.100.0/24", "next-hop-interface": "br1", "metric": 5},
                {"destination": "203.0.113.0/24", "next-hop-interface": "eth2", "state": "absent"},
            ]},
            "dns-resolver": {"config": {"server": ["10.77.0.1"]}},
        });
        let merged = merge_earliest(Some(&first), &second);
        assert_eq!(
            merged,
            json!({
                "interfaces": [{"name": "br1", "state": "absent"}, {"name": "eth2", "ipv4": {"dhcp": true}}],
                "routes": {"config": [
                    {"destination": "198.51.100.0/24", "next-hop-interface": "br1", "state": "absent"},
                    {"destination": "203.0.113.0/24", "next-hop-interface": "eth2", "state": "absent"},
                ]},
                "dns-resolver": {"config": {"server": ["10.77.0.1"]}},
            })
        );
        // DNS, one entity: the earlier stays.
        let third = json!({"dns-resolver": {"config": {"server": ["192.0.2.1"]}}});
        assert_eq!(
            merge_earliest(Some(&merged), &third)["dns-resolver"],
            merged["dns-resolver"]
        );
        assert_eq!(merge_earliest(None, &third), third);
    }

    #[test]
    fn what_another_policy_declares_is_set_as_it_declares_it() {
        let revert = json!({
            "interfaces": [{"name": "br1", "state": "absent"}, {"name": "eth1", "ipv4": {"dhcp": false}}],
            "routes": {"config": [
                {"destination": "198.51.100.0/24", "next-hop-interface": "br1", "state": "absent"},
                {"destination": "203.0.113.0/24", "next-hop-interface": "eth2", "state": "absent"},
            ]},
            "dns-resolver": {"config": {"server": []}},
        });
        let bridge = json!({"name": "br1", "type": "linux-bridge", "state": "up"});
        let route = json!({"destination": "198.51.100.0/24", "next-hop-interface": "br1", "metric": 7});
        let other = json!({
            "interfaces": [bridge, {"name": "eth9", "state": "up"}],
            "routes": {"config": [route]},
        });
        let dns = json!({"dns-resolver": {"config": {"server": ["10.77.0.1"]}}});
        assert_eq!(
            with_declared(&revert, &[&other, &dns]),
            json!({
                "interfaces": [bridge, {"name": "eth1", "ipv4": {"dhcp": false}}],
                "routes": {"config": [
                    route,
                    {"destination": "203.0.113.0/24", "next-hop-interface": "eth2", "state": "absent"},
                ]},
                "dns-resolver": {"config": {"server": ["10.77.0.1"]}},
            })
        );
        assert_eq!(with_declared(&revert, &[]), revert);
    }

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
