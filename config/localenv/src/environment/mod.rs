//! The environment itself: what runs, where, and how it is started and stopped.

/// kube-apiserver, kube-controller-manager and etcd, on free loopback ports.
pub mod control_plane;
/// Daemons spawned detached, stopped by pid only.
pub mod daemon;
/// The API server's HTTP CONNECT proxy into the sandbox (webhooks, kubelets).
pub mod egress;
/// The switch namespace: bridges, dnsmasq, the API server's port for the nodes.
pub mod fabric;
/// A sandbox node as a real Kubernetes node: containerd, kubelet and kube-proxy inside it.
pub mod kube_node;
/// Network namespaces and what runs inside them.
pub(crate) mod netns;
/// A sandbox node: a namespace with its own NetworkManager and dbus-daemon.
pub mod node;
/// The control plane's CA and certificates.
pub(crate) mod pki;
/// Which Kubernetes release the control plane runs.
pub mod release;
