//! Kernel link types a policy needs, asked of the kernel before anything is applied.
//!
//! nmstate creates a bond, VLAN, VRF... through NetworkManager, which asks the kernel for a link
//! of that kind. Where the kernel has no such driver, NetworkManager only gives up after its
//! activation timeout (about 130 s here) and nmstate reports `Bug: Device(CreationFailed)`. The
//! handler asks the kernel first, the way NetworkManager will: a request for a new link of that
//! kind, which makes the kernel load the driver's module on demand (`rtnl-link-<kind>`) exactly
//! as it would for NetworkManager, so a node that loads `bonding` when a bond is created is never
//! refused. The request carries a name the kernel always rejects, so nothing is ever created:
//! the kernel answers "not supported" only when it has no driver for the kind, and rejects the
//! name otherwise.

use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
};

/// A kernel link type: what `ip link add ... type <kind>` names, and the module that brings it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkKind {
    pub kind: &'static str,
    pub module: &'static str,
}

/// The kernel link kind behind each nmstate interface type that NetworkManager creates in the
/// kernel. Ethernet, InfiniBand and loopback are hardware or always there; Open vSwitch types
/// are the OVS daemon's (nmstate says at once when it is missing); team is created by teamd.
const KINDS: &[(&str, LinkKind)] = &[
    (
        "bond",
        LinkKind {
            kind: "bond",
            module: "bonding",
        },
    ),
    (
        "linux-bridge",
        LinkKind {
            kind: "bridge",
            module: "bridge",
        },
    ),
    (
        "dummy",
        LinkKind {
            kind: "dummy",
            module: "dummy",
        },
    ),
    (
        "vlan",
        LinkKind {
            kind: "vlan",
            module: "8021q",
        },
    ),
    (
        "vxlan",
        LinkKind {
            kind: "vxlan",
            module: "vxlan",
        },
    ),
    (
        "mac-vlan",
        LinkKind {
            kind: "macvlan",
            module: "macvlan",
        },
    ),
    (
        "mac-vtap",
        LinkKind {
            kind: "macvtap",
            module: "macvtap",
        },
    ),
    (
        "ipvlan",
        LinkKind {
            kind: "ipvlan",
            module: "ipvlan",
        },
    ),
    (
        "vrf",
        LinkKind {
            kind: "vrf",
            module: "vrf",
        },
    ),
    (
        "veth",
        LinkKind {
            kind: "veth",
            module: "veth",
        },
    ),
    (
        "macsec",
        LinkKind {
            kind: "macsec",
            module: "macsec",
        },
    ),
    (
        "hsr",
        LinkKind {
            kind: "hsr",
            module: "hsr",
        },
    ),
    (
        "xfrm",
        LinkKind {
            kind: "xfrm",
            module: "xfrm_interface",
        },
    ),
];

/// The kernel link kind of nmstate interface type `interface_type`, if it is one the kernel
/// creates.
pub fn of_type(interface_type: &str) -> Option<LinkKind> {
    KINDS
        .iter()
        .find(|(name, _)| *name == interface_type)
        .map(|(_, kind)| *kind)
}

/// The interfaces `desired` brings up that the node does not have yet (`exists` says which it
/// has, by name), with the link kind each needs: what the kernel will be asked to create.
pub fn to_create(desired: &Value, exists: impl Fn(&str) -> bool) -> BTreeMap<String, (String, LinkKind)> {
    interfaces(desired)
        .filter(|interface| {
            // An interface without a state is brought up, as nmstate does.
            matches!(interface.get("state").and_then(Value::as_str), None | Some("up"))
        })
        .filter_map(|interface| {
            let name = interface.get("name").and_then(Value::as_str)?;
            let interface_type = interface.get("type").and_then(Value::as_str)?;
            let kind = of_type(interface_type)?;
            (!exists(name)).then(|| (name.to_string(), (interface_type.to_string(), kind)))
        })
        .collect()
}

/// The `interfaces` of a state document.
pub(crate) fn interfaces(state: &Value) -> impl Iterator<Item = &Value> {
    state
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Asks the kernel which link kinds it has, remembering those it has: a driver does not go
/// away, while one that is missing may be installed later, so a refusal is asked again.
#[derive(Debug, Default)]
pub struct KernelLinkKinds {
    supported: Mutex<BTreeSet<&'static str>>,
}

impl KernelLinkKinds {
    /// Those of `kinds` the kernel has no driver for.
    pub async fn missing(&self, kinds: BTreeSet<LinkKind>) -> BTreeSet<LinkKind> {
        let mut missing = BTreeSet::new();
        for kind in kinds {
            let known = self
                .supported
                .lock()
                .is_ok_and(|supported| supported.contains(kind.kind));
            if known {
                continue;
            }
            match kernel_has(kind.kind).await {
                Ok(true) => {
                    if let Ok(mut supported) = self.supported.lock() {
                        supported.insert(kind.kind);
                    }
                }
                Ok(false) => {
                    missing.insert(kind);
                }
                // Unknown: NetworkManager will find out, as it did before this check.
                Err(error) => {
                    tracing::warn!(
                        kind = kind.kind,
                        "cannot ask the kernel for this link kind: {error}"
                    )
                }
            }
        }
        missing
    }
}

/// A name the kernel refuses for any link (`/` is never valid in an interface name), checked
/// only after the kernel found, or loaded, the driver for the requested kind.
const NEVER_CREATED: &str = "nmst/probe";

/// Whether the kernel has a driver for link `kind`, loading its module if the node has one.
/// The kernel answers EOPNOTSUPP ("Unknown device type") only when, after trying to load
/// `rtnl-link-<kind>`, it still has no driver; any other answer means the driver is there.
pub async fn kernel_has(kind: &str) -> std::io::Result<bool> {
    use rtnetlink::{LinkMessageBuilder, LinkUnspec, packet_route::link::InfoKind};
    const EOPNOTSUPP: i32 = 95;
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let connection = tokio::spawn(connection);
    let request = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Other(kind.to_string()))
        .name(NEVER_CREATED.to_string())
        .build();
    let answer = handle.link().add(request).execute().await;
    connection.abort();
    match answer {
        Err(rtnetlink::Error::NetlinkError(message)) => {
            Ok(message.to_io().raw_os_error() != Some(EOPNOTSUPP))
        }
        Ok(()) => Err(std::io::Error::other(format!(
            "the kernel accepted the link name {NEVER_CREATED:?}, which it should refuse"
        ))),
        Err(error) => Err(std::io::Error::other(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_new_interfaces_of_kernel_link_types_that_are_brought_up_need_a_kind() {
        let exists = |name: &str| ["eth1", "bond9"].contains(&name);
        let desired = json!({"interfaces": [
            {"name": "eth1", "type": "ethernet", "state": "up"},
            {"name": "bond0", "type": "bond", "state": "up"},
            {"name": "bond9", "type": "bond", "state": "up"},
            {"name": "eth1.102", "type": "vlan", "vlan": {"base-iface": "eth1", "id": 102}},
            {"name": "vrf1", "type": "vrf", "state": "absent"},
            {"name": "br1", "type": "linux-bridge", "state": "down"},
            {"name": "ovs0", "type": "ovs-interface", "state": "up"},
            {"name": "br9", "type": "linux-bridge", "state": "up"},
        ]});
        let needed: Vec<(String, String, &str, &str)> = to_create(&desired, exists)
            .into_iter()
            .map(|(name, (interface_type, kind))| (name, interface_type, kind.kind, kind.module))
            .collect();
        let row = |name: &str, interface_type: &str, kind, module| {
            (name.to_string(), interface_type.to_string(), kind, module)
        };
        assert_eq!(
            needed,
            [
                row("bond0", "bond", "bond", "bonding"),
                row("br9", "linux-bridge", "bridge", "bridge"),
                row("eth1.102", "vlan", "vlan", "8021q"),
            ]
        );
        assert!(to_create(&json!({"dns-resolver": {}}), exists).is_empty());
    }

    #[test]
    fn every_kernel_link_type_names_its_kind_and_module() {
        for (interface_type, expected) in [
            ("bond", ("bond", "bonding")),
            ("vlan", ("vlan", "8021q")),
            ("vrf", ("vrf", "vrf")),
            ("mac-vlan", ("macvlan", "macvlan")),
            ("xfrm", ("xfrm", "xfrm_interface")),
        ] {
            let kind = of_type(interface_type).unwrap();
            assert_eq!((kind.kind, kind.module), expected, "{interface_type}");
        }
        for not_the_kernels in [
            "ethernet",
            "ovs-bridge",
            "ovs-interface",
            "team",
            "loopback",
            "unknown",
        ] {
            assert_eq!(of_type(not_the_kernels), None, "{not_the_kernels}");
        }
    }
}
