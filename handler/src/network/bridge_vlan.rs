//! Upstream's default VLAN configuration of Linux bridge ports: a port of a bridge that is up
//! and that says nothing about VLANs becomes a trunk of VLANs 2-4094, so a bridge with VLAN
//! filtering passes tagged traffic by default. A port with a `vlan` key (even empty) is left as
//! written.
//!
//! Bridge VLAN filtering needs the kernel's 802.1Q support. Where the kernel lacks it, the
//! default would make every bridge fail, so it is skipped and the enactment says so. Support is
//! asked of the kernel itself, once, when the handler starts.

use serde_json::{Value, json};

/// Why no VLAN default was added, for the enactment's message.
pub const SKIPPED_NOTE: &str =
    "bridge port VLAN defaults skipped: the node's kernel does not support bridge VLAN filtering";

/// Adds the default trunk to the ports of every `linux-bridge` that is `up` in `desired` when
/// `kernel_supports_vlan_filtering`; returns how many ports get it (or would, where the kernel
/// lacks support and `desired` is left unchanged).
pub fn apply_default_vlan_filtering(desired: &mut Value, kernel_supports_vlan_filtering: bool) -> usize {
    let mut defaulted = 0;
    let interfaces = desired.get_mut("interfaces").and_then(Value::as_array_mut);
    for interface in interfaces
        .into_iter()
        .flatten()
        .filter(|interface| is_bridge_up(interface))
    {
        let ports = interface
            .pointer_mut("/bridge/port")
            .and_then(Value::as_array_mut);
        for port in ports.into_iter().flatten().filter_map(Value::as_object_mut) {
            if !port.contains_key("vlan") {
                if kernel_supports_vlan_filtering {
                    let trunk =
                        json!({"mode": "trunk", "trunk-tags": [{"id-range": {"min": 2, "max": 4094}}]});
                    port.insert("vlan".into(), trunk);
                }
                defaulted += 1;
            }
        }
    }
    defaulted
}

/// Whether `interface` (of a desired state) is a Linux bridge that is to be up.
fn is_bridge_up(interface: &Value) -> bool {
    interface.get("type").and_then(Value::as_str) == Some("linux-bridge")
        && interface.get("state").and_then(Value::as_str) == Some("up")
}

/// The ports of bridges that are `up` in `desired` whose `vlan` settings ask for VLAN filtering,
/// as `<bridge> port <port>`. Where the kernel cannot filter VLANs, nmstate would create no
/// bridge and fail after its verification (about 20 s) with "Failed to find desired
/// interface"; the handler says why at once instead.
pub fn ports_asking_for_vlans(desired: &Value) -> Vec<String> {
    let interfaces = desired.get("interfaces").and_then(Value::as_array);
    let bridges_up = interfaces
        .into_iter()
        .flatten()
        .filter(|interface| is_bridge_up(interface));
    bridges_up
        .flat_map(|bridge| {
            let name = bridge.get("name").and_then(Value::as_str).unwrap_or_default();
            let ports = bridge.pointer("/bridge/port").and_then(Value::as_array);
            ports
                .into_iter()
                .flatten()
                .filter(|port| {
                    port.get("vlan")
                        .and_then(Value::as_object)
                        .is_some_and(|vlan| !vlan.is_empty())
                })
                .map(move |port| {
                    let port = port.get("name").and_then(Value::as_str).unwrap_or_default();
                    format!("{name} port {port}")
                })
        })
        .collect()
}

/// The enactment's message when `ports` ask for VLANs on a kernel without VLAN filtering.
pub fn unsupported_message(ports: &[String]) -> String {
    format!(
        "{} set VLANs, but this node's kernel does not support bridge VLAN filtering \
         (CONFIG_BRIDGE_VLAN_FILTERING): remove the ports' vlan settings, or select nodes whose \
         kernel filters VLANs",
        ports.join(", ")
    )
}

/// Asks the kernel whether it can filter VLANs on a bridge: creates a bridge with VLAN filtering
/// in this network namespace and deletes it again. `Ok(false)` when the kernel refuses it as
/// unsupported.
pub async fn kernel_supports_vlan_filtering() -> std::io::Result<bool> {
    const PROBE: &str = "nmst-vfprobe";
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let connection = tokio::spawn(connection);
    let created = handle
        .link()
        .add(rtnetlink::LinkBridge::new(PROBE).vlan_filtering(true).build())
        .execute()
        .await;
    let result = match created {
        Ok(()) => {
            let mut links = handle.link().get().match_name(PROBE.to_string()).execute();
            if let Ok(Some(link)) = futures::TryStreamExt::try_next(&mut links).await {
                let _ = handle.link().del(link.header.index).execute().await;
            }
            Ok(true)
        }
        Err(rtnetlink::Error::NetlinkError(message)) if message.to_io().raw_os_error() == Some(95) => {
            Ok(false)
        }
        Err(error) => Err(std::io::Error::other(error.to_string())),
    };
    connection.abort();
    result
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
    fn only_ports_with_vlan_settings_of_bridges_that_are_up_ask_for_vlans() {
        assert_eq!(ports_asking_for_vlans(&desired()), ["br1 port eth3"]);
        let mut defaulted = desired();
        apply_default_vlan_filtering(&mut defaulted, true);
        assert_eq!(
            ports_asking_for_vlans(&defaulted),
            ["br1 port eth1", "br1 port eth3"],
            "the default trunk asks for VLANs too (only added where the kernel has them)"
        );
        assert!(ports_asking_for_vlans(&json!({"dns-resolver": {}})).is_empty());
    }

    #[test]
    fn nothing_changes_where_the_kernel_cannot_filter_vlans() {
        let mut state = desired();
        assert_eq!(
            apply_default_vlan_filtering(&mut state, false),
            1,
            "one port would have been defaulted"
        );
        assert_eq!(state, desired());
    }
}
