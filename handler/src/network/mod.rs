//! The node's network, through nmstate, NetworkManager (D-Bus) and the kernel (netlink). Nothing
//! here talks to Kubernetes.

/// VLAN filtering on bridge ports: the kernel's support and nmstate's defaults.
pub mod bridge_vlan;
/// Captures (nmpolicy): values taken from the node's state into a desired state.
pub mod capture;
/// Whether the node already is in a policy's desired state.
pub mod drift;
/// What a node state report leaves out: upstream's filter and the user's exclusions.
pub mod filter;
/// The kernel's notifications of a change to the network (rtnetlink multicast).
pub mod kernel_notifications;
/// The link kinds a desired state creates, and whether the kernel has them.
pub mod link_kinds;
/// NetworkManager's version, capabilities, checkpoints and global DNS, over D-Bus.
pub mod network_manager;
/// What this node can do, and the policies it must refuse before applying anything.
pub mod node_support;
/// The state that undoes a desired state on a node.
pub mod revert;
/// Reading the node's state with nmstate.
pub mod state;
/// A node state report kept under its size cap.
pub mod trim;
