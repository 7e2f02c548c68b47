//! Named network namespaces (`ip netns`). Every link command in this crate targets one of
//! these with `ip -n NAME` or `ip netns exec NAME`; none runs in the host's namespace.

use crate::{daemon::run, error::Result};
use std::{path::Path, process::Command};

pub fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// The kernel settings every namespace of the environment starts with, whatever the host has.
/// A new namespace takes its IPv4 `all` and `default` settings from the host's
/// (`net.core.devconf_inherit_init_net = 0`, the usual default), so a host that forwards (podman
/// turns `ip_forward` on, for one) would make every node forward on every interface, and tests
/// pass or fail by what ran on the machine before. These are the kernel's own defaults: no
/// forwarding, no reverse-path filter.
pub const KERNEL_SETTINGS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "0"),
    ("net.ipv4.conf.all.forwarding", "0"),
    ("net.ipv4.conf.default.forwarding", "0"),
    ("net.ipv6.conf.all.forwarding", "0"),
    ("net.ipv6.conf.default.forwarding", "0"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
];

/// Creates the namespace with [`KERNEL_SETTINGS`] (set again on one that exists).
pub fn add(name: &str) -> Result<()> {
    if !exists(name) {
        run(Command::new("ip").args(["netns", "add", name]))?;
    }
    let settings = KERNEL_SETTINGS
        .iter()
        .map(|(key, value)| format!("{key}={value}"));
    run(Command::new("ip")
        .args(["netns", "exec", name, "sysctl", "-q", "-w"])
        .args(settings))?;
    Ok(())
}

/// Deletes the namespace; its virtual links (and their veth peers elsewhere) go with it.
pub fn delete(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    let leftover = run(Command::new("ip").args(["netns", "pids", name])).unwrap_or_default();
    if !leftover.trim().is_empty() {
        tracing::warn!(netns = name, pids = %leftover.split_whitespace().collect::<Vec<_>>().join(" "),
            "processes not started by localenv are still in the namespace; they are not killed");
    }
    run(Command::new("ip").args(["netns", "del", name]))?;
    Ok(())
}

/// A TCP listener on `address` inside the namespace `name`: bound from a thread that enters the
/// namespace alone (the calling process stays in its own), so connections made inside the
/// namespace reach it and none from the host's does. The kernel completes their handshakes
/// without an `accept`, which is all a connect check needs.
pub fn listen_tcp(name: &str, address: std::net::SocketAddr) -> Result<std::net::TcpListener> {
    let path = Path::new("/run/netns").join(name);
    let bind = move || -> Result<std::net::TcpListener> {
        let namespace = std::fs::File::open(&path).map_err(crate::LocalEnvError::io("open", &path))?;
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|error| crate::LocalEnvError::io("enter", &path)(error.into()))?;
        std::net::TcpListener::bind(address).map_err(crate::LocalEnvError::io("bind", address.to_string()))
    };
    std::thread::spawn(bind).join().unwrap_or_else(|_| {
        Err(crate::LocalEnvError::Usage(format!(
            "binding {address} in {name} panicked"
        )))
    })
}
