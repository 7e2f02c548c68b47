//! The operator upgraded while a policy rolls out, on two real nodes with real pods: the first
//! node is in the middle of its apply (its `tcp` probe held back by the test) when the next
//! release's CSV replaces the operator. The operator renders the handler DaemonSet with the new
//! image and the kubelets replace its pods one at a time; a handler stopped mid-apply finishes
//! the change before it exits, its successor finds the node in the desired state, and the other
//! node applies in its turn. Each node applies the policy once, never two at once
//! (`maxUnavailable: 1`), and no rollout place is left behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod as_olm;

use as_olm::{WAIT, apply_bundle_crds, install_csv, wait_for_handler_image};
use futures::StreamExt;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, condition::find_condition,
    enactment::EnactmentConditionType, labels, policy::PolicyConditionType,
};
use nmstate_localenv::{
    LocalEnv, SandboxNode, pods,
    testing::{
        POD_NODES, ROLLOUT_TIMEOUT, ReleaseImages, create_namespace, eventually, expect_no_nmstate,
        kubectl_apply, pods_env,
    },
};
use nmstate_packaging::olm;
use serde_json::json;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

const BRIDGE: &str = "brmid0";
/// The port the policy's `tcp` probe connects to on each node's loopback: refused (the apply
/// waits in its probes) until the test listens on it.
const GATE_PORT: u16 = 18_771;
const HANDLER: &str = "nmstate-handler";

/// Every transition of the policy's enactments into Progressing, as a watch sees them.
#[derive(Default)]
struct Applies {
    /// Per node, how many times its enactment turned Progressing.
    started: BTreeMap<String, usize>,
    progressing: BTreeSet<String>,
    most_at_once: usize,
}

fn watch_applies(client: &Client, policy: &str) -> Arc<Mutex<Applies>> {
    let applies = Arc::new(Mutex::new(Applies::default()));
    let api = Api::<NodeNetworkConfigurationEnactment>::all(client.clone());
    let config = watcher::Config::default().labels(&format!("{}={policy}", labels::POLICY));
    let recorded = applies.clone();
    tokio::spawn(async move {
        let mut events = watcher(api, config).applied_objects().boxed();
        while let Some(Ok(enactment)) = events.next().await {
            let node = enactment.labels().get(labels::NODE).cloned().unwrap_or_default();
            let progressing = enactment
                .status
                .as_ref()
                .is_some_and(|status| status.is(EnactmentConditionType::Progressing));
            let mut applies = recorded.lock().unwrap();
            if progressing && applies.progressing.insert(node.clone()) {
                *applies.started.entry(node).or_default() += 1;
                applies.most_at_once = applies.most_at_once.max(applies.progressing.len());
            } else if !progressing {
                applies.progressing.remove(&node);
            }
        }
    });
    applies
}

/// The handler pod on `node`, if one runs there.
async fn handler_pod(pods: &Api<Pod>, node: &str) -> Option<Pod> {
    let list = pods.list(&Default::default()).await.ok()?;
    list.items
        .into_iter()
        .filter(|pod| pod.name_any().starts_with(&format!("{HANDLER}-")))
        .find(|pod| pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref()) == Some(node))
}

fn stopping(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn restarts(pod: &Pod) -> i32 {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|status| status.container_statuses.as_ref());
    statuses.map_or(0, |statuses| statuses.iter().map(|s| s.restart_count).sum())
}

fn bridge_active(node: &SandboxNode) -> bool {
    let output = node
        .command("nmcli")
        .unwrap()
        .args(["-t", "-f", "NAME", "connection", "show", "--active"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|line| line == BRIDGE)
}

/// Removes what the test made, also when it fails.
struct Cleanup {
    env: LocalEnv,
    policy: String,
    namespace: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // The nodes are shared with the other tests on real pods.
        for name in POD_NODES {
            if let Some(Ok(mut nmcli)) = self.env.node(name).map(|node| node.command("nmcli")) {
                let _ = nmcli.args(["connection", "delete", BRIDGE]).output();
            }
        }
        as_olm::clean_up(&self.env, &self.namespace, std::slice::from_ref(&self.policy));
    }
}

#[tokio::test]
async fn an_upgrade_mid_rollout_rolls_the_handlers_and_each_node_applies_once() {
    let env = pods_env().await.unwrap();
    let client = env.client().await.unwrap();
    expect_no_nmstate(&client).await;
    assert!(POD_NODES.len() >= 2, "a rollout needs two nodes");
    let namespace = create_namespace(&client, "midroll").await.unwrap();
    let policy = format!("{namespace}-bridge");
    let _cleanup = Cleanup {
        env: env.clone(),
        policy: policy.clone(),
        namespace: namespace.clone(),
    };
    let nodes: Vec<SandboxNode> = POD_NODES.iter().map(|name| env.node(name).unwrap()).collect();

    // The current release, installed as OLM would, with an NMState for every node.
    let current = as_olm::current_release();
    let _current_images = ReleaseImages::tag(&env, &nmstate_packaging::images(&current.version)).unwrap();
    apply_bundle_crds(&client, &current).await;
    nmstate_localenv::testing::install_crds(&client).await.unwrap();
    let operator = install_csv(&env, &olm::csv(&current).unwrap(), &namespace, &namespace).await;
    kubectl_apply(
        &env,
        &json!({"apiVersion": "nmstate.io/v1", "kind": "NMState", "metadata": {"name": "nmstate"}}),
    )
    .unwrap();
    let image = nmstate_packaging::image(nmstate_packaging::HANDLER_IMAGE, &current.version);
    wait_for_handler_image(&client, &namespace, HANDLER, &image, &operator).await;
    for workload in [
        format!("daemonset/{HANDLER}"),
        "deployment/nmstate-webhook".into(),
    ] {
        pods::rollout_status(&env, &namespace, &workload, ROLLOUT_TIMEOUT)
            .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    }

    // The policy: one node at a time, each held in its probes until the test opens the gate.
    let applies = watch_applies(&client, &policy);
    kubectl_apply(
        &env,
        &json!({
            "apiVersion": "nmstate.io/v1", "kind": "NodeNetworkConfigurationPolicy",
            "metadata": {"name": policy},
            "spec": {
                "nodeSelector": {"node-role.kubernetes.io/worker": ""},
                "maxUnavailable": 1,
                "probes": {"tcp": [{"host": "127.0.0.1", "port": GATE_PORT}]},
                "desiredState": {"interfaces": [{
                    "name": BRIDGE, "type": "linux-bridge", "state": "up",
                    "bridge": {"options": {"stp": {"enabled": false}}, "port": []},
                }]},
            },
        }),
    )
    .unwrap();
    let first = eventually("a node applies the policy", WAIT, || async {
        applies.lock().unwrap().progressing.first().cloned()
    })
    .await
    .unwrap();

    // The next release while the first node is in its probes: the operator's Deployment is
    // replaced, the new operator renders the handler DaemonSet with the next image.
    let upgraded = std::time::Instant::now();
    let next = as_olm::next_release(&current);
    let _next_images = ReleaseImages::tag(&env, &nmstate_packaging::images(&next.version)).unwrap();
    apply_bundle_crds(&client, &next).await;
    drop(operator);
    let operator = install_csv(&env, &olm::csv(&next).unwrap(), &namespace, &namespace).await;
    let next_image = nmstate_packaging::image(nmstate_packaging::HANDLER_IMAGE, &next.version);
    wait_for_handler_image(&client, &namespace, HANDLER, &next_image, &operator).await;

    // Once the kubelet is stopping the applying node's handler, the probes may pass: the stopping
    // handler finishes the change (rather than leave it to its successor to roll back and apply
    // again).
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    eventually(
        &format!("the handler on {first} is stopping"),
        ROLLOUT_TIMEOUT,
        || async {
            handler_pod(&pods, &first)
                .await
                .and_then(|pod| stopping(&pod).then_some(()))
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", pods::report(&env, &namespace)));
    assert_eq!(
        applies.lock().unwrap().progressing.iter().collect::<Vec<_>>(),
        [&first],
        "the upgrade did not land mid-apply"
    );
    let stopping_after = upgraded.elapsed();
    let _gates: Vec<_> = nodes
        .iter()
        .map(|node| node.listen_tcp(GATE_PORT).unwrap())
        .collect();

    // The DaemonSet rolls to the end and the rollout completes.
    pods::rollout_status(&env, &namespace, &format!("daemonset/{HANDLER}"), ROLLOUT_TIMEOUT)
        .unwrap_or_else(|error| panic!("{error}\n{}", pods::report(&env, &namespace)));
    let rolled_after = upgraded.elapsed();
    let policies = Api::<NodeNetworkConfigurationPolicy>::all(client.clone());
    eventually(&format!("{policy} is Available"), ROLLOUT_TIMEOUT, || async {
        let status = policies.get(&policy).await.ok()?.status?;
        find_condition(&status.conditions, PolicyConditionType::Available.as_str())
            .is_some_and(|c| c.is_true())
            .then_some(())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", pods::report(&env, &namespace)));
    eprintln!(
        "upgrade started at 0 s: {first}'s handler stopping at {:.1} s (probes let pass), \
         the DaemonSet rolled at {:.1} s, the policy Available at {:.1} s",
        stopping_after.as_secs_f64(),
        rolled_after.as_secs_f64(),
        upgraded.elapsed().as_secs_f64()
    );

    for node in &nodes {
        assert!(bridge_active(node), "{BRIDGE} is not active on {}", node.name);
    }
    // Every operand rolled and serves: a pod started on a node mid-apply keeps its network.
    eventually(
        "every pod of the namespace ready, none restarted",
        WAIT,
        || async {
            let list = pods.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .all(|pod| !stopping(pod) && pods::is_ready(pod) && restarts(pod) == 0)
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", pods::report(&env, &namespace)));
    // The old pods gone: each node's handler is the new one.
    for name in POD_NODES {
        let pod = handler_pod(&pods, name).await.unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.containers[0].image.as_deref(), Some(next_image.as_str()));
        assert!(!stopping(&pod));
        assert_eq!(restarts(&pod), 0, "the handler on {name} restarted");
    }
    let (started, most_at_once) = {
        let applies = applies.lock().unwrap();
        (applies.started.clone(), applies.most_at_once)
    };
    let expected: BTreeMap<String, usize> = POD_NODES.iter().map(|name| (name.to_string(), 1)).collect();
    assert_eq!(started, expected, "each node applies the policy once");
    assert_eq!(most_at_once, 1, "never more nodes applying than maxUnavailable");
    let leases = Api::<Lease>::namespaced(client.clone(), &namespace);
    let slots = format!("{}={}", labels::LEASE, labels::LEASE_ROLLOUT_SLOT);
    let left = leases
        .list(&kube::api::ListParams::default().labels(&slots))
        .await
        .unwrap();
    assert!(
        left.items.is_empty(),
        "rollout places left: {:?}",
        left.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
    );
    assert!(!operator.log().contains("forbidden"), "{}", operator.log());
}
