//! `make demo`'s entry point, `localenv demo up`, run in an environment of its own: the tour's
//! outcomes as printed, checked again in the API and on the nodes; the pods real and where they
//! belong (a handler per node reporting that node, the webhook called through its Service,
//! logs through the API server); a second run that starts over; `localenv demo down` that
//! leaves no process behind, containers included.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Pod};
use kube::{Api, ResourceExt};
use nmstate_api::{
    NMState, NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, NodeNetworkState,
};
use nmstate_localenv::{
    LocalEnv, images,
    kube_node::KubeNode,
    testing::{eventually, helm, kubectl},
};
use std::{path::PathBuf, process::Command};

const LOCALENV: &str = env!("CARGO_BIN_EXE_localenv");

/// Stops the demo's environment however the test ends.
struct DemoEnv(PathBuf);

impl Drop for DemoEnv {
    fn drop(&mut self) {
        let _ = Command::new(LOCALENV)
            .arg("--dir")
            .arg(&self.0)
            .args(["demo", "down"])
            .output();
    }
}

fn demo(dir: &PathBuf, action: &str) -> String {
    let output = Command::new(LOCALENV)
        .arg("--dir")
        .arg(dir)
        .args(["demo", action])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "localenv demo {action} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The tour's lines for step `number`, up to the next step.
fn step(output: &str, number: usize) -> &str {
    let start = output
        .find(&format!("── {number}. "))
        .unwrap_or_else(|| panic!("no step {number} in:\n{output}"));
    let rest = &output[start..];
    let end = rest.find("\n  ── ").unwrap_or(rest.len());
    &rest[..end]
}

/// The "applying now: [...]" lists of a step's rollout lines.
fn applying(lines: &str) -> Vec<usize> {
    lines
        .lines()
        .filter_map(|line| line.split_once("applying now: [")?.1.split_once(']'))
        .map(|(nodes, _)| nodes.split(", ").filter(|node| !node.is_empty()).count())
        .collect()
}

/// Every process in the nodes' cgroup roots (containerd, kubelet, kube-proxy, shims, the
/// containers): what `demo down` must stop.
fn node_processes(env: &LocalEnv) -> Vec<(u32, String)> {
    let roots: Vec<String> = env
        .nodes()
        .iter()
        .map(|node| format!(":{}/", KubeNode::new(node).cgroup_root()))
        .collect();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if roots.iter().any(|root| cgroups.contains(root.as_str())) {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map(|exe| exe.display().to_string());
            found.push((pid, exe.unwrap_or_default()));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn make_demo_tours_the_examples_starts_over_and_stops_everything() {
    let dir = nmstate_localenv::workspace_dir().join("target/localenv-demo-test");
    let _down = DemoEnv(dir.clone());
    let env = LocalEnv::new(&dir);

    let output = demo(&dir, "up");
    for line in ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"] {
        assert!(output.contains(line), "no progress line {line}:\n{output}");
    }
    assert!(output.contains(&format!("export KUBECONFIG={}", env.kubeconfig().display())));

    // 1: the workers only, never both at once.
    let bridge = step(&output, 1);
    assert!(bridge.contains("worker-selector   Available"), "{bridge}");
    assert!(bridge.contains("2/2 nodes successfully configured"), "{bridge}");
    let rollout_lines = bridge.lines().filter(|line| line.contains("applying now"));
    assert!(
        !bridge.contains("node01.worker-selector")
            && !rollout_lines.clone().any(|line| line.contains("node01")),
        "the control-plane node is not selected:\n{bridge}"
    );
    let counts = applying(bridge);
    assert!(
        !counts.is_empty() && counts.iter().all(|&count| count <= 1),
        "maxUnavailable 1: {counts:?}\n{bridge}"
    );
    assert!(
        bridge.contains("- eth1") && bridge.contains("controller: br1"),
        "{bridge}"
    );
    // 2: static address and route on node02.
    let route = step(&output, 2);
    assert!(route.contains("1/1 nodes successfully configured"), "{route}");
    assert!(
        route.contains("192.0.2.251") && route.contains("198.51.100.0/24"),
        "{route}"
    );
    // 3: rolled back on two nodes, the third aborted, and the reason shown.
    let broken = step(&output, 3);
    assert!(
        broken.contains("2/3 nodes failed to configure, 1 nodes aborted configuration"),
        "{broken}"
    );
    assert!(
        applying(broken).iter().all(|&count| count <= 2),
        "maxUnavailable 50% of 3"
    );
    assert!(
        broken.contains("failed running probe 'dns' after network changes"),
        "{broken}"
    );
    assert!(broken.contains("Aborted (ConfigurationAborted)"), "{broken}");
    // 4: fixed.
    let fixed = step(&output, 4);
    assert!(fixed.contains("3/3 nodes successfully configured"), "{fixed}");

    // What the output said, in the API.
    let client = env.client().await.unwrap();
    let nmstate = Api::<NMState>::all(client.clone()).get("nmstate").await.unwrap();
    let available = nmstate.status.unwrap().conditions;
    assert!(
        available
            .iter()
            .any(|c| c.type_ == "Available" && c.reason == "SuccessfullyDeployed"),
        "{available:?}"
    );
    let daemonset = Api::<DaemonSet>::namespaced(client.clone(), "nmstate")
        .get("nmstate-handler")
        .await
        .unwrap();
    assert_eq!(daemonset.status.unwrap().number_ready, 3);
    let enactments = Api::<NodeNetworkConfigurationEnactment>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    let mut names: Vec<String> = enactments.items.iter().map(|e| e.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "node01.dns",
            "node02.dns",
            "node02.route",
            "node02.worker-selector",
            "node03.dns",
            "node03.worker-selector"
        ]
    );
    let policies = Api::<NodeNetworkConfigurationPolicy>::all(client.clone());
    assert_eq!(policies.get("dns").await.unwrap().metadata.generation, Some(2));

    // Real pods: every one Running and ready on a node; a handler on each node, in its
    // network namespace, reporting that node's own interfaces.
    let pods = Api::<Pod>::namespaced(client.clone(), "nmstate")
        .list(&Default::default())
        .await
        .unwrap();
    let mut handlers = Vec::new();
    for pod in &pods.items {
        let status = pod.status.clone().unwrap();
        assert!(
            nmstate_localenv::pods::is_ready(pod) && status.phase.as_deref() == Some("Running"),
            "{} is not ready: {status:?}",
            pod.name_any()
        );
        if pod.name_any().starts_with("nmstate-handler-") {
            handlers.push((
                pod.spec.clone().unwrap().node_name.unwrap(),
                status.pod_ip.unwrap(),
            ));
        }
    }
    handlers.sort();
    let expected: Vec<(String, String)> = env
        .nodes()
        .iter()
        .map(|node| (node.name.clone(), node.address()))
        .collect();
    assert_eq!(
        handlers, expected,
        "one handler pod per node, on the node's network"
    );
    let states = Api::<NodeNetworkState>::all(client.clone());
    for node in env.nodes() {
        let state = states.get(&node.name).await.unwrap();
        let current = &state.status.unwrap().current_state.unwrap().0;
        let eth0 = current["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "eth0")
            .unwrap();
        assert_eq!(
            eth0["ipv4"]["address"][0]["ip"],
            node.address(),
            "{}'s node state is its own (its handler talks to its NetworkManager)",
            node.name
        );
    }
    // The webhook, reached through its Service, refuses what nmstate cannot parse; its pod's
    // logs come through the API server.
    let refused = kubectl(&env)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(
                b"apiVersion: nmstate.io/v1\nkind: NodeNetworkConfigurationPolicy\nmetadata: {name: refused}\nspec:\n  desiredState: {interfaces: [{name: br9, type: linux-bridge, mtu: not-a-number}]}\n",
            )?;
            child.wait_with_output()
        })
        .unwrap();
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && message.contains("admission webhook")
            && message.contains("nmstate.io\" denied"),
        "{message}"
    );
    let logs = kubectl(&env)
        .args(["logs", "-n", "nmstate", "deployment/nmstate-webhook"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("nmstate_webhook"),
        "{logs:?}"
    );

    let node02 = env.node("node02").unwrap();
    let shell = |script: &str| {
        let output = node02
            .command("sh")
            .unwrap()
            .args(["-c", script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(shell("ip -br link show master br1").contains("eth1"));
    assert!(shell("ip -4 -br addr show eth2").contains("192.0.2.251/24"));
    assert!(shell("ip route show 198.51.100.0/24").contains("via 192.0.2.2 dev eth2"));
    let resolv = shell("cat /etc/resolv.conf");
    assert!(
        resolv.contains("nameserver 10.77.0.1") && resolv.contains("example.com"),
        "{resolv}"
    );

    // An upgrade to a new handler image rolls the handlers for real: the operator's pod is
    // replaced, it renders the new image, the DaemonSet replaces every handler pod, and no
    // policy is applied again (no enactment changes its conditions).
    let enactments = Api::<NodeNetworkConfigurationEnactment>::all(client.clone());
    let conditions = |list: kube::core::ObjectList<NodeNetworkConfigurationEnactment>| {
        let mut all: Vec<_> = list
            .items
            .into_iter()
            .map(|e| {
                (
                    e.name_any(),
                    serde_json::to_string(&e.status.unwrap().conditions).unwrap(),
                )
            })
            .collect();
        all.sort();
        all
    };
    let before = conditions(enactments.list(&Default::default()).await.unwrap());
    let pods_api = Api::<Pod>::namespaced(client.clone(), "nmstate");
    let old_handlers: Vec<String> = pods_api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|pod| pod.name_any().starts_with("nmstate-handler-"))
        .filter_map(|pod| pod.uid())
        .collect();
    assert_eq!(old_handlers.len(), 3);
    let next = format!("{}/handler:next", images::REPOSITORY);
    env.tag_image(&images::reference("handler"), &next).unwrap();
    let upgraded = helm(&env)
        .args(["upgrade", "nmstate", "--namespace", "nmstate", "--reuse-values"])
        .arg(nmstate_localenv::workspace_dir().join("manifests/helm/kubernetes-nmstate"))
        .args(["--set", "handler.image.tag=next"])
        .output()
        .unwrap();
    assert!(upgraded.status.success(), "{upgraded:?}");
    // (A container's status names the image by whichever of its tags the runtime lists first,
    // here the older one: the pods' specs and UIDs say what was replaced.)
    eventually(
        "every handler pod replaced by one with the new image, ready",
        std::time::Duration::from_secs(180),
        || async {
            let pods = pods_api.list(&Default::default()).await.ok()?;
            let handlers: Vec<_> = pods
                .items
                .iter()
                .filter(|pod| pod.name_any().starts_with("nmstate-handler-"))
                .collect();
            let upgraded = handlers.iter().all(|pod| {
                let ready = pod
                    .status
                    .clone()
                    .unwrap_or_default()
                    .container_statuses
                    .iter()
                    .flatten()
                    .all(|c| c.ready);
                let image = pod
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.containers[0].image.clone())
                    .unwrap_or_default();
                ready
                    && image.ends_with("handler:next")
                    && !old_handlers.contains(&pod.uid().unwrap_or_default())
                    && pod.metadata.deletion_timestamp.is_none()
            });
            (handlers.len() == 3 && upgraded).then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(
        conditions(enactments.list(&Default::default()).await.unwrap()),
        before,
        "no policy is applied again by the upgrade"
    );

    // A second run starts over on fresh nodes and tours the same way.
    let again = demo(&dir, "up");
    assert!(again.contains("starting over"), "{again}");
    assert!(
        step(&again, 3).contains("2/3 nodes failed to configure"),
        "{again}"
    );
    assert!(
        step(&again, 4).contains("3/3 nodes successfully configured"),
        "{again}"
    );

    // Down: every process the nodes ran is gone, containers and shims included.
    let processes = node_processes(&env);
    assert!(
        processes
            .iter()
            .any(|(_, exe)| exe.ends_with("/containerd-shim-runc-v2")),
        "{processes:?}"
    );
    demo(&dir, "down");
    let left: Vec<_> = processes
        .iter()
        // (a zombie has no executable: it is gone, only not yet reaped)
        .filter(|(pid, _)| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok())
        .collect();
    assert!(left.is_empty(), "still running after demo down: {left:?}");
    assert!(!env.control_plane().is_running());
    assert!(env.nodes().is_empty());
}
