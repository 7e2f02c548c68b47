//! The local environment's own life cycle, on a private environment (not the shared one): a
//! crashed run does not block the next, and teardown stops exactly what was started.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use nix::{sys::signal, unistd::Pid};
use nmstate_localenv::{LocalEnv, daemon::is_running};
use std::collections::BTreeMap;

fn pids(env: &LocalEnv) -> Vec<(String, u32)> {
    env.control_plane()
        .status()
        .into_iter()
        .map(|(name, pid)| (name, pid.expect("running")))
        .collect()
}

#[tokio::test]
async fn a_crashed_environment_is_replaced_and_teardown_leaves_nothing() {
    let dir = std::env::temp_dir().join(format!("localenv-lifecycle-{}", std::process::id()));
    let env = LocalEnv::new(&dir);
    let first = env.up().await.unwrap();
    eprintln!(
        "control plane ready {:.1} s after start",
        first.startup.expect("a fresh start").as_secs_f64()
    );
    let node = env.node_up("crash", &BTreeMap::new()).await.unwrap();
    let node_manager = node.network_manager_pid().unwrap();

    // A crash: the API server and etcd die without cleaning up; everything else is left over.
    let before = pids(&env);
    for (name, pid) in &before {
        if name == "etcd" || name == "kube-apiserver" {
            signal::kill(Pid::from_raw(*pid as i32), signal::Signal::SIGKILL).unwrap();
        }
    }
    let second = env.up().await.unwrap();
    assert_ne!(second.apiserver_port, 0);
    env.client()
        .await
        .unwrap()
        .apiserver_version()
        .await
        .expect("a working API server after the crash");
    for (name, pid) in &before {
        assert!(
            !is_running(*pid, if name == "api-socket" { "socat" } else { name }),
            "{name} ({pid}) of the crashed run still runs"
        );
    }
    assert!(
        !is_running(node_manager, "NetworkManager"),
        "the crashed run's node was not stopped"
    );
    assert!(!std::path::Path::new("/run/netns").join(&node.netns).exists());

    // Teardown stops what the second run started and removes its data.
    let after = pids(&env);
    env.down().await.unwrap();
    for (name, pid) in &after {
        assert!(
            !is_running(*pid, if name == "api-socket" { "socat" } else { name }),
            "{name} ({pid}) still runs after down"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [".lock"],
        "only the lock file may stay behind in {}",
        dir.display()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The host's `net.ipv4.ip_forward`, set for the life of this value and put back when dropped
/// (even when the test fails).
struct HostForwarding {
    before: String,
}

const HOST_IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl HostForwarding {
    fn set(value: &str) -> HostForwarding {
        let before = std::fs::read_to_string(HOST_IP_FORWARD)
            .unwrap()
            .trim()
            .to_string();
        std::fs::write(HOST_IP_FORWARD, value).unwrap();
        HostForwarding { before }
    }
}

impl Drop for HostForwarding {
    fn drop(&mut self) {
        if let Err(error) = std::fs::write(HOST_IP_FORWARD, &self.before) {
            eprintln!(
                "could not put back the host's ip_forward {}: {error}",
                self.before
            );
        }
    }
}

/// A new namespace inherits the host's IPv4 settings, so without the node's own settings a
/// host that forwards makes every node forward: tests then pass or fail by the machine's past.
#[tokio::test]
async fn a_new_node_starts_without_forwarding_on_a_host_that_forwards() {
    let env = nmstate_localenv::testing::shared_env().await.unwrap();
    let name = nmstate_localenv::testing::unique_name("fwd");
    let node = {
        let _forwarding = HostForwarding::set("1");
        nmstate_localenv::testing::TestNode::start(&env, &name, &BTreeMap::new())
            .await
            .unwrap()
    };
    for setting in [
        "ipv4/ip_forward",
        "ipv4/conf/all/forwarding",
        "ipv4/conf/default/forwarding",
        "ipv4/conf/eth0/forwarding",
        "ipv4/conf/eth1/forwarding",
        "ipv6/conf/all/forwarding",
        "ipv6/conf/eth1/forwarding",
        "ipv4/conf/all/rp_filter",
    ] {
        let output = node
            .command("cat")
            .unwrap()
            .arg(format!("/proc/sys/net/{setting}"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{setting}: {output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "0",
            "{setting} in node {name}"
        );
    }
}
