//! The environment itself: what runs, where, and how it is started and stopped.

/// kube-apiserver, kube-controller-manager and etcd, on free loopback ports.
pub mod control_plane;
/// Daemons spawned detached, stopped by pid only.
pub mod daemon;
/// The switch namespace: bridges, dnsmasq, the API server's port for the nodes.
pub mod fabric;
/// Network namespaces and what runs inside them.
pub(crate) mod netns;
/// A sandbox node: a namespace with its own NetworkManager and dbus-daemon.
pub mod node;
/// The control plane's CA and certificates.
pub(crate) mod pki;
/// Which Kubernetes release the control plane runs.
pub mod release;
