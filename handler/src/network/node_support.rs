//! What this node cannot do, told before anything is applied.
//!
//! Some policies can only fail on a node: a link type its kernel has no driver for, a property
//! its NetworkManager does not know, bridge VLANs on a kernel without VLAN filtering. nmstate
//! finds out late (a bond fails after NetworkManager's ~130 s activation timeout with
//! `Bug: Device(CreationFailed)`; an `ipv4.forwarding` NetworkManager cannot set is dropped with
//! a log line and fails verification) and in words that hide the reason. The handler asks first
//! and refuses such a policy on this node at once, naming each property or link type, what it
//! needs and what the node has. Nothing is applied and no rollout slot is taken.
//!
//! The decision is pure ([`refusals`]); the facts come from the node: NetworkManager's version
//! and capabilities, the kernel's answers ([`crate::network::link_kinds`], [`crate::network::bridge_vlan`]).

use crate::network::{
    bridge_vlan,
    link_kinds::{self, KernelLinkKinds, LinkKind},
    network_manager::{Capabilities, IPV4_FORWARDING_SINCE},
};
use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

/// What the handler learnt about the node when it started, and the kernel link kinds it asks
/// about as policies need them.
#[derive(Debug)]
pub struct NodeSupport {
    /// NetworkManager's version as it reports it.
    pub network_manager: String,
    pub capabilities: Capabilities,
    /// Whether the kernel can filter VLANs on bridges.
    pub vlan_filtering: bool,
    pub link_kinds: KernelLinkKinds,
}

impl NodeSupport {
    /// Why this node cannot enact `desired`, given its `current` state; empty when it can.
    pub async fn refusals(&self, desired: &Value, current: &nmstate::NetworkState) -> Vec<Refusal> {
        let current = current_interfaces(current);
        let to_create = link_kinds::to_create(desired, |name| current.contains_key(name));
        let kinds: BTreeSet<LinkKind> = to_create.values().map(|(_, kind)| *kind).collect();
        let missing = self.link_kinds.missing(kinds).await;
        let missing_links = to_create
            .into_iter()
            .filter(|(_, (_, kind))| missing.contains(kind))
            .collect();
        let facts = NodeFacts {
            network_manager: &self.network_manager,
            capabilities: &self.capabilities,
            vlan_filtering: self.vlan_filtering,
            default_ipv4_forwarding: default_ipv4_forwarding(),
        };
        refusals(desired, &current, &facts, missing_links)
    }
}

/// What the decisions need of the node's state: each interface, by name, with its
/// `ipv4.forwarding` as the kernel reports it.
pub type CurrentInterfaces = BTreeMap<String, Option<bool>>;

/// Read off the state the reconcile already holds, without serializing it.
fn current_interfaces(state: &nmstate::NetworkState) -> CurrentInterfaces {
    state
        .interfaces
        .iter()
        .map(|interface| {
            let forwarding = interface
                .base_iface()
                .ipv4
                .as_ref()
                .and_then(|ipv4| ipv4.forwarding);
            (interface.name().to_string(), forwarding)
        })
        .collect()
}

/// What a new interface's `ipv4.forwarding` starts as: the kernel's default for new links.
fn default_ipv4_forwarding() -> Option<bool> {
    let value = std::fs::read_to_string("/proc/sys/net/ipv4/conf/default/forwarding").ok()?;
    Some(value.trim() != "0")
}

/// The node's facts [`refusals`] decides by.
#[derive(Clone, Copy, Debug)]
pub struct NodeFacts<'a> {
    pub network_manager: &'a str,
    pub capabilities: &'a Capabilities,
    pub vlan_filtering: bool,
    pub default_ipv4_forwarding: Option<bool>,
}

/// One thing a policy asks that this node cannot do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Bridge ports (`<bridge> port <port>`) with VLAN settings, on a kernel without bridge
    /// VLAN filtering.
    BridgeVlans(Vec<String>),
    /// Interfaces whose `ipv4.forwarding` would change, on a NetworkManager that cannot set it.
    Ipv4Forwarding {
        interfaces: Vec<String>,
        network_manager: String,
    },
    /// New interfaces (name, nmstate type, kernel kind) whose link kind the kernel lacks.
    LinkKinds(Vec<(String, String, LinkKind)>),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BridgeVlans(ports) => f.write_str(&bridge_vlan::unsupported_message(ports)),
            Refusal::Ipv4Forwarding {
                interfaces,
                network_manager,
            } => write!(
                f,
                "{} set ipv4.forwarding, which needs NetworkManager {IPV4_FORWARDING_SINCE} or later \
                 (per-interface IPv4 forwarding), but this node runs NetworkManager {network_manager}, \
                 where nmstate drops the setting: remove ipv4.forwarding from the policy, or select \
                 nodes with NetworkManager {}.{} or later",
                interfaces.join(", "),
                IPV4_FORWARDING_SINCE.major,
                IPV4_FORWARDING_SINCE.minor,
            ),
            Refusal::LinkKinds(links) => {
                let links: Vec<String> = links
                    .iter()
                    .map(|(name, interface_type, kind)| {
                        format!(
                            "{name} (type {interface_type}) needs the kernel link type {} (module {})",
                            kind.kind, kind.module
                        )
                    })
                    .collect();
                write!(
                    f,
                    "{}, which this node's kernel does not have, built in or loadable: install or \
                     enable that driver on the node, or select nodes whose kernel has it",
                    links.join(", ")
                )
            }
        }
    }
}

/// The enactment's message for `refusals` (at least one).
pub fn message(refusals: &[Refusal]) -> String {
    let reasons: Vec<String> = refusals.iter().map(ToString::to_string).collect();
    format!(
        "this node cannot do what the policy asks, so nothing was applied: {}",
        reasons.join("; ")
    )
}

/// Why a node with `facts` cannot enact `desired` from `current`; `missing_links` are the new
/// interfaces whose kernel link kind the kernel said it lacks.
pub fn refusals(
    desired: &Value,
    current: &CurrentInterfaces,
    facts: &NodeFacts,
    missing_links: BTreeMap<String, (String, LinkKind)>,
) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    let ports = bridge_vlan::ports_asking_for_vlans(desired);
    if !facts.vlan_filtering && !ports.is_empty() {
        refusals.push(Refusal::BridgeVlans(ports));
    }
    if !facts.capabilities.ipv4_forwarding {
        let interfaces = forwarding_changes(desired, current, facts.default_ipv4_forwarding);
        if !interfaces.is_empty() {
            refusals.push(Refusal::Ipv4Forwarding {
                interfaces,
                network_manager: facts.network_manager.to_string(),
            });
        }
    }
    if !missing_links.is_empty() {
        let links = missing_links
            .into_iter()
            .map(|(name, (interface_type, kind))| (name, interface_type, kind))
            .collect();
        refusals.push(Refusal::LinkKinds(links));
    }
    refusals
}

/// The interfaces of `desired` whose `ipv4.forwarding` differs from what they have now (a new
/// interface starts with the kernel's default). Where it is already as asked there is nothing
/// to set, and nmstate's verification passes; where IPv4 is disabled nmstate ignores it.
fn forwarding_changes(desired: &Value, current: &CurrentInterfaces, default: Option<bool>) -> Vec<String> {
    let now = |name: &str| current.get(name).copied().unwrap_or(default);
    link_kinds::interfaces(desired)
        .filter(|interface| interface.pointer("/ipv4/enabled").and_then(Value::as_bool) != Some(false))
        .filter_map(|interface| {
            let name = interface.get("name").and_then(Value::as_str)?;
            let wanted = interface.pointer("/ipv4/forwarding").and_then(Value::as_bool)?;
            (now(name) != Some(wanted)).then(|| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NM_1_42: &str = "1.42.4";

    fn facts(capabilities: &Capabilities, vlan_filtering: bool) -> NodeFacts<'_> {
        NodeFacts {
            network_manager: NM_1_42,
            capabilities,
            vlan_filtering,
            default_ipv4_forwarding: Some(false),
        }
    }

    fn forwarding(name: &str, ipv4: Value) -> Value {
        json!({"interfaces": [{"name": name, "type": "ethernet", "state": "up", "ipv4": ipv4}]})
    }

    #[test]
    fn ipv4_forwarding_is_refused_only_where_it_would_change_and_networkmanager_cannot_set_it() {
        let old = Capabilities::default();
        let new = Capabilities {
            ipv4_forwarding: true,
        };
        let current = CurrentInterfaces::from([
            ("eth1".to_string(), Some(false)),
            ("eth2".to_string(), Some(true)),
        ]);
        let on = json!({"enabled": true, "dhcp": true, "forwarding": true});
        let off = json!({"enabled": true, "forwarding": false});
        let disabled = json!({"enabled": false, "forwarding": true});
        let refused = |desired: &Value, capabilities: &Capabilities| {
            refusals(desired, &current, &facts(capabilities, true), BTreeMap::new())
        };
        let eth1_on = Refusal::Ipv4Forwarding {
            interfaces: vec!["eth1".into()],
            network_manager: NM_1_42.into(),
        };
        for (desired, capabilities, expected, why) in [
            (
                forwarding("eth1", on.clone()),
                &old,
                vec![eth1_on],
                "a change NetworkManager cannot make",
            ),
            (
                forwarding("eth1", on.clone()),
                &new,
                vec![],
                "NetworkManager 1.54 sets it",
            ),
            (
                forwarding("eth2", on.clone()),
                &old,
                vec![],
                "eth2 forwards already",
            ),
            (
                forwarding("eth1", off),
                &old,
                vec![],
                "eth1 does not forward already",
            ),
            (
                forwarding("eth1", disabled),
                &old,
                vec![],
                "nmstate ignores it where IPv4 is off",
            ),
            (
                forwarding("eth1", json!({"enabled": true})),
                &old,
                vec![],
                "not asked",
            ),
        ] {
            assert_eq!(refused(&desired, capabilities), expected, "{why}");
        }
        let new_bridge = json!({"interfaces": [{"name": "br0", "type": "linux-bridge", "ipv4": on}]});
        assert_eq!(
            refused(&new_bridge, &old).len(),
            1,
            "a new interface starts with the default, off here"
        );
    }

    #[test]
    fn every_refusal_is_named_with_what_it_needs_and_what_to_do() {
        let bond = LinkKind {
            kind: "bond",
            module: "bonding",
        };
        let vlan = LinkKind {
            kind: "vlan",
            module: "8021q",
        };
        let desired = json!({"interfaces": [
            {"name": "br1", "type": "linux-bridge", "state": "up",
             "bridge": {"port": [{"name": "eth1", "vlan": {"mode": "access", "tag": 5}}]}},
            {"name": "eth2", "type": "ethernet", "ipv4": {"enabled": true, "forwarding": true}},
        ]});
        let missing = BTreeMap::from([
            ("bond0".to_string(), ("bond".to_string(), bond)),
            ("bond0.102".to_string(), ("vlan".to_string(), vlan)),
        ]);
        let capabilities = Capabilities::default();
        let refused = refusals(
            &desired,
            &CurrentInterfaces::new(),
            &facts(&capabilities, false),
            missing,
        );
        assert_eq!(refused.len(), 3, "{refused:?}");
        let text = message(&refused);
        for part in [
            "this node cannot do what the policy asks, so nothing was applied: ",
            "br1 port eth1 set VLANs, but this node's kernel does not support bridge VLAN filtering",
            "eth2 set ipv4.forwarding, which needs NetworkManager 1.54.0 or later",
            "this node runs NetworkManager 1.42.4",
            "remove ipv4.forwarding from the policy",
            "bond0 (type bond) needs the kernel link type bond (module bonding), \
             bond0.102 (type vlan) needs the kernel link type vlan (module 8021q), \
             which this node's kernel does not have",
        ] {
            assert!(text.contains(part), "{part:?} in {text}");
        }
        assert!(
            refusals(
                &desired,
                &CurrentInterfaces::new(),
                &facts(
                    &Capabilities {
                        ipv4_forwarding: true
                    },
                    true
                ),
                BTreeMap::new()
            )
            .is_empty()
        );
    }
}
