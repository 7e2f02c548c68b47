//! What of a node's network state goes into its NodeNetworkState.
//!
//! Upstream's rules, kept so reports compare with upstream's: interfaces NetworkManager ignores
//! that are veths (container plumbing, often hundreds) are dropped, and so are values that change
//! without any configuration change (bridge timers, address lifetimes), which would otherwise
//! rewrite the object every refresh. Unlike upstream, every top-level key (`route-rules`,
//! `hostname`, `ovs-db`, ...) is kept.
//!
//! Beyond that, the user may leave out interfaces by name or type
//! (`NMState.spec.stateReporting`), and the state is kept under a size cap ([`super::trim`]).

use glob::Pattern;
use nmstate_api::nmstate::DEFAULT_MAX_STATE_BYTES;
use serde_json::Value;
use std::collections::BTreeSet;

/// What the user asks to leave out of the report, and its size cap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRules {
    /// Interfaces left out by name.
    pub exclude_interfaces: Vec<Pattern>,
    /// Interfaces left out by nmstate type.
    pub exclude_types: Vec<Pattern>,
    /// The most the reported state may take, in bytes of compact JSON.
    pub max_bytes: usize,
}

impl Default for ReportRules {
    fn default() -> Self {
        ReportRules {
            exclude_interfaces: Vec::new(),
            exclude_types: Vec::new(),
            max_bytes: DEFAULT_MAX_STATE_BYTES as usize,
        }
    }
}

impl ReportRules {
    fn excludes(&self, interface: &Value) -> bool {
        let matches = |patterns: &[Pattern], field: &str| {
            interface
                .get(field)
                .and_then(Value::as_str)
                .is_some_and(|value| patterns.iter().any(|pattern| pattern.matches(value)))
        };
        matches(&self.exclude_interfaces, "name") || matches(&self.exclude_types, "type")
    }
}

/// The state to report, from the state nmstate retrieved.
pub fn filter_for_report(mut state: Value, rules: &ReportRules) -> Value {
    let mut kept_names = BTreeSet::new();
    if let Some(interfaces) = state.get_mut("interfaces").and_then(Value::as_array_mut) {
        interfaces.retain(|interface| !is_ignored_veth(interface) && !rules.excludes(interface));
        for interface in interfaces.iter_mut() {
            if let Some(name) = interface.get("name").and_then(Value::as_str) {
                kept_names.insert(name.to_string());
            }
            drop_volatile_values(interface);
        }
    }
    if let Some(routes) = state.get_mut("routes").and_then(Value::as_object_mut) {
        for table in ["running", "config"] {
            if let Some(entries) = routes.get_mut(table).and_then(Value::as_array_mut) {
                entries.retain(
                    |route| match route.get("next-hop-interface").and_then(Value::as_str) {
                        Some(interface) => kept_names.contains(interface),
                        None => true,
                    },
                );
            }
        }
    }
    state
}

/// `state` without the values that change without any configuration change (bridge timers,
/// address lifetimes): what two reads of an unchanged node agree on.
pub fn without_volatile_values(mut state: Value) -> Value {
    if let Some(interfaces) = state.get_mut("interfaces").and_then(Value::as_array_mut) {
        interfaces.iter_mut().for_each(drop_volatile_values);
    }
    state
}

fn is_ignored_veth(interface: &Value) -> bool {
    interface.get("type").and_then(Value::as_str) == Some("veth")
        && interface.get("state").and_then(Value::as_str) == Some("ignore")
}

fn drop_volatile_values(interface: &mut Value) {
    if interface.get("type").and_then(Value::as_str) == Some("linux-bridge")
        && let Some(options) = interface
            .pointer_mut("/bridge/options")
            .and_then(Value::as_object_mut)
    {
        options.remove("gc-timer");
        options.remove("hello-timer");
    }
    for family in ["ipv4", "ipv6"] {
        let addresses = interface
            .get_mut(family)
            .and_then(|ip| ip.get_mut("address"))
            .and_then(Value::as_array_mut);
        for address in addresses.into_iter().flatten().filter_map(Value::as_object_mut) {
            address.remove("valid-life-time");
            address.remove("preferred-life-time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn captured() -> Value {
        serde_yaml::from_str(include_str!("../../tests/fixtures/node-state-bridge-dhcp.yaml")).unwrap()
    }

    fn names(state: &Value) -> Vec<&str> {
        state["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect()
    }

    fn contains_key(value: &Value, key: &str) -> bool {
        match value {
            Value::Object(map) => map.contains_key(key) || map.values().any(|child| contains_key(child, key)),
            Value::Array(items) => items.iter().any(|child| contains_key(child, key)),
            _ => false,
        }
    }

    #[test]
    fn ignored_veths_go_and_everything_else_stays() {
        let original = captured();
        assert!(
            names(&original).contains(&"vethx"),
            "the fixture has an ignored veth"
        );
        let filtered = filter_for_report(original.clone(), &ReportRules::default());
        assert_eq!(names(&filtered), ["br1", "eth0", "eth1", "eth2", "lo", "vethy"]);
        for key in ["hostname", "dns-resolver", "route-rules", "routes"] {
            assert_eq!(filtered[key], original[key], "{key} must be reported unchanged");
        }
    }

    #[test]
    fn timers_and_lifetimes_go_and_the_values_around_them_stay() {
        let original = captured();
        for key in [
            "gc-timer",
            "hello-timer",
            "valid-life-time",
            "preferred-life-time",
        ] {
            assert!(contains_key(&original, key), "the fixture has {key}");
        }
        let filtered = filter_for_report(original, &ReportRules::default());
        for key in [
            "gc-timer",
            "hello-timer",
            "valid-life-time",
            "preferred-life-time",
        ] {
            assert!(!contains_key(&filtered, key), "{key} is still reported");
        }
        let bridge = &filtered["interfaces"][0];
        assert_eq!(bridge["bridge"]["options"]["stp"]["enabled"], false);
        assert_eq!(bridge["ipv4"]["address"][0]["prefix-length"], 24);
        assert!(
            bridge["ipv4"]["address"][0]["ip"]
                .as_str()
                .unwrap()
                .starts_with("10.77.1.")
        );
    }

    #[test]
    fn routes_through_dropped_interfaces_go() {
        let state = json!({
            "interfaces": [
                {"name": "eth0", "type": "ethernet", "state": "up"},
                {"name": "cali1", "type": "veth", "state": "ignore"},
            ],
            "routes": {
                "running": [
                    {"destination": "0.0.0.0/0", "next-hop-interface": "eth0"},
                    {"destination": "10.244.1.5/32", "next-hop-interface": "cali1"},
                    {"destination": "192.0.2.0/24", "route-type": "blackhole"},
                ],
                "config": [{"destination": "10.244.1.5/32", "next-hop-interface": "cali1"}],
            },
        });
        let filtered = filter_for_report(state, &ReportRules::default());
        assert_eq!(
            filtered["routes"]["running"],
            json!([
                {"destination": "0.0.0.0/0", "next-hop-interface": "eth0"},
                {"destination": "192.0.2.0/24", "route-type": "blackhole"},
            ])
        );
        assert_eq!(filtered["routes"]["config"], json!([]));
    }

    #[test]
    fn filtering_is_idempotent() {
        let rules = ReportRules {
            exclude_interfaces: vec![Pattern::new("eth?").unwrap()],
            ..ReportRules::default()
        };
        let once = filter_for_report(captured(), &rules);
        assert_eq!(filter_for_report(once.clone(), &rules), once);
    }

    #[test]
    fn interfaces_go_by_name_or_type_pattern_and_routes_through_them_too() {
        let state = json!({
            "interfaces": [
                {"name": "eth0", "type": "ethernet", "state": "up"},
                {"name": "mv-1", "type": "mac-vlan", "state": "ignore"},
                {"name": "storage.100", "type": "vlan", "state": "up"},
                {"name": "vxlan7", "type": "vxlan", "state": "up"},
            ],
            "routes": {"running": [
                {"destination": "0.0.0.0/0", "next-hop-interface": "eth0"},
                {"destination": "192.0.2.0/24", "next-hop-interface": "storage.100"},
            ]},
        });
        let rules = ReportRules {
            exclude_interfaces: vec![Pattern::new("mv-*").unwrap(), Pattern::new("*.100").unwrap()],
            exclude_types: vec![Pattern::new("vx*").unwrap()],
            ..ReportRules::default()
        };
        let filtered = filter_for_report(state.clone(), &rules);
        assert_eq!(names(&filtered), ["eth0"]);
        assert_eq!(
            filtered["routes"]["running"],
            json!([{"destination": "0.0.0.0/0", "next-hop-interface": "eth0"}])
        );
        let by_type = ReportRules {
            exclude_types: vec![Pattern::new("mac-vlan").unwrap()],
            ..ReportRules::default()
        };
        assert_eq!(
            names(&filter_for_report(state, &by_type)),
            ["eth0", "storage.100", "vxlan7"],
            "a pattern without wildcards matches the whole value only"
        );
    }
}
