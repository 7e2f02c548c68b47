//! Named network namespaces (`ip netns`). Every link command in this crate targets one of
//! these with `ip -n NAME` or `ip netns exec NAME`; none runs in the host's namespace.

use crate::{error::Result, process::run};
use std::{path::Path, process::Command};

pub fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

pub fn add(name: &str) -> Result<()> {
    if !exists(name) {
        run(Command::new("ip").args(["netns", "add", name]))?;
    }
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
