//! NetworkManager profiles (keyfiles) for a desired state, generated offline by nmstate
//! (`gen_conf`). Used to check, without touching a node, what a policy would configure, where
//! the node's kernel could not run it (bond, 802.1Q VLAN and Open vSwitch on the test machines).

use std::collections::BTreeMap;

/// The keyfiles nmstate would write for `desired`: file name -> content.
pub fn keyfiles(desired: &serde_json::Value) -> Result<BTreeMap<String, String>, nmstate::NmstateError> {
    let state = nmstate::NetworkState::new_from_json(&desired.to_string())?;
    let generated = state.gen_conf()?;
    Ok(generated
        .get("NetworkManager")
        .into_iter()
        .flatten()
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The desiredState of an example policy in `examples/`.
    fn example(file: &str) -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(file);
        let policy: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        policy["spec"]["desiredState"].clone()
    }

    /// The `key=value` lines of `section` in a keyfile.
    fn section(keyfile: &str, name: &str) -> BTreeMap<String, String> {
        let header = format!("[{name}]");
        keyfile
            .lines()
            .skip_while(|line| line.trim() != header)
            .skip(1)
            .take_while(|line| !line.starts_with('['))
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn profile<'a>(files: &'a BTreeMap<String, String>, interface: &str) -> &'a str {
        files
            .get(&format!("{interface}.nmconnection"))
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no profile for {interface} among {:?}", files.keys()))
    }

    /// A port's controller and its kind, under the keyfile names of any NetworkManager version.
    fn controller(keyfile: &str) -> (String, String) {
        let connection = section(keyfile, "connection");
        let pick = |new: &str, old: &str| {
            connection
                .get(new)
                .or_else(|| connection.get(old))
                .cloned()
                .unwrap_or_default()
        };
        (pick("controller", "master"), pick("port-type", "slave-type"))
    }

    #[test]
    fn bond_example_is_a_round_robin_bond_over_eth1_and_eth2() {
        let mut desired = example("bond.yaml");
        // `copy-mac-from` reads eth1's MAC address from the node, which is not there offline.
        desired["interfaces"][0]
            .as_object_mut()
            .unwrap()
            .remove("copy-mac-from");
        let files = keyfiles(&desired).unwrap();
        let bond = profile(&files, "bond0");
        assert_eq!(section(bond, "connection")["type"], "bond");
        let options = section(bond, "bond");
        assert_eq!(options["mode"], "balance-rr");
        assert_eq!(options["miimon"], "140");
        assert_eq!(section(bond, "ipv4")["method"], "auto");
        for port in ["eth1", "eth2"] {
            assert_eq!(
                controller(profile(&files, port)),
                ("bond0".to_string(), "bond".to_string()),
                "{port}"
            );
        }
    }

    #[test]
    fn vlan_examples_tag_102_on_their_base_interface() {
        let files = keyfiles(&example("vlan.yaml")).unwrap();
        let vlan = section(profile(&files, "eth1.102"), "vlan");
        assert_eq!((vlan["id"].as_str(), vlan["parent"].as_str()), ("102", "eth1"));

        let files = keyfiles(&example("bond-vlan.yaml")).unwrap();
        let vlan = section(profile(&files, "bond0.102"), "vlan");
        assert_eq!((vlan["id"].as_str(), vlan["parent"].as_str()), ("102", "bond0"));
        assert_eq!(section(profile(&files, "bond0"), "bond")["mode"], "balance-rr");
    }

    #[test]
    fn ovs_examples_are_a_bridge_with_its_ports_and_internal_interface() {
        let files = keyfiles(&example("ovs-bridge.yaml")).unwrap();
        let types: Vec<String> = files
            .values()
            .map(|keyfile| section(keyfile, "connection")["type"].clone())
            .collect();
        assert!(types.contains(&"ovs-bridge".to_string()), "{types:?}");
        assert!(types.contains(&"ovs-port".to_string()), "{types:?}");
        let bridge = profile(&files, "br1-br");
        assert_eq!(section(bridge, "ovs-bridge")["stp-enable"], "false");
        assert_eq!(
            controller(profile(&files, "eth1-port")),
            ("br1".to_string(), "ovs-bridge".to_string())
        );
        assert_eq!(controller(profile(&files, "eth1")).1, "ovs-port");

        let files = keyfiles(&example("ovs-bridge-iface.yaml")).unwrap();
        let internal = files
            .values()
            .find(|keyfile| section(keyfile, "connection")["type"] == "ovs-interface")
            .expect("an ovs-interface profile for ovs0");
        assert_eq!(section(internal, "connection")["interface-name"], "ovs0");
        assert_eq!(section(internal, "ovs-interface")["type"], "internal");
        assert_eq!(section(internal, "ipv4")["method"], "auto");
    }
}
