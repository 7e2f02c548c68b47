//! Upstream's default VLAN configuration of Linux bridge ports: a port of a bridge that is up
//! and that says nothing about VLANs becomes a trunk of VLANs 2-4094, so a bridge with VLAN
//! filtering passes tagged traffic by default. A port with a `vlan` key (even empty) is left as
//! written.
//!
//! Bridge VLAN filtering needs the kernel's 802.1Q support. Where the kernel lacks it, the
//! default would make every bridge fail, so it is skipped and the enactment says so.

use serde_json::{Value, json};

/// Why no VLAN default was added, for the enactment's message.
pub const SKIPPED_NOTE: &str =
    "bridge port VLAN defaults skipped: the node's kernel does not support bridge VLAN filtering";

/// Adds the default trunk to the ports of every `linux-bridge` that is `up` in `desired` when
/// `kernel_supports_vlan_filtering`; returns how many ports got it.
pub fn apply_default_vlan_filtering(desired: &mut Value, kernel_supports_vlan_filtering: bool) -> usize {
    if !kernel_supports_vlan_filtering {
        return 0;
    }
    let mut defaulted = 0;
    let interfaces = desired.get_mut("interfaces").and_then(Value::as_array_mut);
    for interface in interfaces.into_iter().flatten() {
        let is_bridge_up = interface.get("type").and_then(Value::as_str) == Some("linux-bridge")
            && interface.get("state").and_then(Value::as_str) == Some("up");
        if !is_bridge_up {
            continue;
        }
        let ports = interface
            .pointer_mut("/bridge/port")
            .and_then(Value::as_array_mut);
        for port in ports.into_iter().flatten().filter_map(Value::as_object_mut) {
            if !port.contains_key("vlan") {
                port.insert(
                    "vlan".into(),
                    json!({"mode": "trunk", "trunk-tags": [{"id-range": {"min": 2, "max": 4094}}]}),
                );
                defaulted += 1;
            }
        }
    }
    defaulted
}

/// Whether the kernel can filter VLANs on a bridge, read from an existing bridge's sysfs
/// (`/sys/class/net/<bridge>/bridge/vlan_filtering` exists only with 802.1Q support).
pub fn kernel_supports_vlan_filtering(sysfs_net: &std::path::Path) -> Option<bool> {
    let bridges: Vec<_> = std::fs::read_dir(sysfs_net)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.join("bridge").is_dir())
        .collect();
    let first = bridges.first()?;
    Some(first.join("bridge/vlan_filtering").exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> Value {
        json!({"interfaces": [
            {"name": "br1", "type": "linux-bridge", "state": "up", "bridge": {"port": [
                {"name": "eth1"},
                {"name": "eth2", "vlan": {}},
                {"name": "eth3", "vlan": {"mode": "access", "tag": 100}},
            ]}},
            {"name": "br2", "type": "linux-bridge", "state": "absent", "bridge": {"port": [{"name": "eth4"}]}},
            {"name": "br3", "type": "linux-bridge", "state": "up"},
            {"name": "bond0", "type": "bond", "state": "up"},
        ]})
    }

    #[test]
    fn ports_without_vlan_of_bridges_that_are_up_get_the_default_trunk() {
        let mut state = desired();
        assert_eq!(apply_default_vlan_filtering(&mut state, true), 1);
        let ports = &state["interfaces"][0]["bridge"]["port"];
        assert_eq!(
            ports[0]["vlan"],
            json!({"mode": "trunk", "trunk-tags": [{"id-range": {"min": 2, "max": 4094}}]})
        );
        assert_eq!(
            ports[1]["vlan"],
            json!({}),
            "an empty vlan key means: leave it alone"
        );
        assert_eq!(ports[2]["vlan"]["mode"], "access");
        assert!(
            state["interfaces"][1]["bridge"]["port"][0].get("vlan").is_none(),
            "bridges being removed are left alone"
        );
    }

    #[test]
    fn vlan_filtering_support_is_read_from_a_bridges_sysfs() {
        let sysfs = std::env::temp_dir().join(format!("bridge-vlan-sysfs-{}", std::process::id()));
        std::fs::create_dir_all(sysfs.join("eth0")).unwrap();
        assert_eq!(
            kernel_supports_vlan_filtering(&sysfs),
            None,
            "no bridge to look at"
        );
        std::fs::create_dir_all(sysfs.join("br0/bridge")).unwrap();
        assert_eq!(kernel_supports_vlan_filtering(&sysfs), Some(false));
        std::fs::write(sysfs.join("br0/bridge/vlan_filtering"), "0\n").unwrap();
        assert_eq!(kernel_supports_vlan_filtering(&sysfs), Some(true));
        std::fs::remove_dir_all(&sysfs).unwrap();
    }

    #[test]
    fn nothing_changes_where_the_kernel_cannot_filter_vlans() {
        let mut state = desired();
        assert_eq!(apply_default_vlan_filtering(&mut state, false), 0);
        assert_eq!(state, desired());
    }
}
