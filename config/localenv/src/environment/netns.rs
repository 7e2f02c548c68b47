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
