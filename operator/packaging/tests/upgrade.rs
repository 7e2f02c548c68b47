//! Upgrades, on a real node with real pods: from upstream kubernetes-nmstate (Go) to this
//! operator, then to the next version through the OLM bundle's upgrade edge. Each time the CRDs
//! are upgraded in place, the operator takes over what its predecessor wrote, the handler
//! DaemonSet rolls (its pod is replaced by the kubelet), and no policy is applied again: the
//! node's NetworkManager is not touched and the enactments are not even rewritten.
//!
//! OLM itself cannot run here (no OLM binaries); the test does what OLM does with a bundle:
//! apply its CRDs, create the RBAC its CSV asks for, and create (then replace) the CSV's
//! Deployment, whose pod runs the image the CSV names (built here and tagged so). Upstream's
//! images are not built here: upstream's objects are written from its API (`data/upstream/`),
//! and its handler DaemonSet's pod cannot pull its image until this operator takes it over.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
};
use nmstate_api::{NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy};
use nmstate_localenv::{
    LocalEnv, SandboxNode, pods,
    testing::{
        POD_NODES, ROLLOUT_TIMEOUT, ReleaseImages, create_namespace, eventually, expect_no_nmstate,
        install_crds, kubectl, pods_env,
    },
};
use nmstate_packaging::olm;
use serde_json::{Value, json};
use std::{path::Path, time::Duration};

mod as_olm;
use as_olm::{WAIT, apply_bundle_crds, install_csv, kubectl_stdin, wait_for_handler_image};

fn fixture(name: &str, substitutions: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/upstream")
        .join(name);
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in substitutions {
        text = text.replace(from, to);
    }
    text
}

fn kubectl_stderr(env: &LocalEnv, args: &[&str]) -> String {
    let output = kubectl(env).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// What an upstream handler left for a policy it enacted on `node`.
fn upstream_enactment(node: &Node, policy: &str, desired: &Value) -> (Value, Value) {
    let time = "2025-06-01T10:00:00Z";
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": time, "lastTransitionTime": time})
    };
    let object = json!({
        "apiVersion": "nmstate.io/v1beta1", "kind": "NodeNetworkConfigurationEnactment",
        "metadata": {
            "name": format!("{}.{policy}", node.name_any()),
            "labels": {"nmstate.io/policy": policy, "nmstate.io/node": node.name_any(),
                       "app.kubernetes.io/component": "network", "app.kubernetes.io/version": "0.84.0"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node.name_any(), "uid": node.uid().unwrap()}],
        },
    });
    let status = json!({"status": {
        "desiredState": desired,
        "policyGeneration": 1,
        "features": ["static-hostname"],
        "conditions": [
            condition("Failing", "False", "SuccessfullyConfigured", ""),
            condition("Available", "True", "SuccessfullyConfigured", "successfully reconciled"),
            condition("Progressing", "False", "SuccessfullyConfigured", ""),
            condition("Pending", "False", "SuccessfullyConfigured", ""),
            condition("Aborted", "False", "SuccessfullyConfigured", ""),
        ],
    }});
    (object, status)
}

fn upstream_policy_status() -> Value {
    let time = "2025-06-01T10:00:00Z";
    let condition = |type_: &str, status: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": "SuccessfullyConfigured", "message": message,
               "lastHeartbeatTime": time, "lastTransitionTime": time})
    };
    json!({"status": {"conditions": [
        condition("Available", "True", "1/1 nodes successfully configured"),
        condition("Degraded", "False", ""),
        condition("Progressing", "False", ""),
        condition("Ignored", "False", ""),
    ], "unavailableNodeCountMap": {}}})
}

/// The NetworkManager active connection of each bridge: a re-apply replaces it.
fn active_connections(node: &SandboxNode) -> String {
    let output = node
        .command("nmcli")
        .unwrap()
        .args([
            "-t",
            "-f",
            "NAME,UUID,ACTIVE-PATH",
            "connection",
            "show",
            "--active",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let mut bridges: Vec<&str> = text.lines().filter(|line| line.starts_with("brup")).collect();
    bridges.sort();
    bridges.join("\n")
}

/// What a roll of the handler must leave alone, read before it: NetworkManager's active
/// connections and the enactments' resource versions.
struct Untouched {
    connections: String,
    versions: Vec<String>,
}

impl Untouched {
    async fn read(
        node: &SandboxNode,
        enactments: &Api<NodeNetworkConfigurationEnactment>,
        names: &[String],
    ) -> Self {
        Untouched {
            connections: active_connections(node),
            versions: resource_versions(enactments, names).await,
        }
    }

    /// Once the handler DaemonSet `name` has rolled out with `image`, checks that its new pod
    /// left every policy alone: it found the node in each one's desired state, applied
    /// nothing, NetworkManager untouched, enactments not rewritten.
    async fn check_after_roll(
        &self,
        env: &LocalEnv,
        (namespace, name, image): (&str, &str, &str),
        node: &SandboxNode,
        enactments: &Api<NodeNetworkConfigurationEnactment>,
        names: &[String],
    ) {
        pods::rollout_status(env, namespace, &format!("daemonset/{name}"), ROLLOUT_TIMEOUT)
            .unwrap_or_else(|error| panic!("{error}"));
        let pods = Api::<Pod>::namespaced(env.client().await.unwrap(), namespace);
        let pod = eventually(&format!("a ready {name} pod with {image}"), WAIT, || async {
            let list = pods.list(&Default::default()).await.ok()?;
            list.items.into_iter().find(|pod| {
                let spec = pod.spec.as_ref();
                pod.name_any().starts_with(&format!("{name}-"))
                    && pod.metadata.deletion_timestamp.is_none()
                    && spec.is_some_and(|spec| spec.containers[0].image.as_deref() == Some(image))
                    && pods::is_ready(pod)
            })
        })
        .await
        .unwrap_or_else(|error| panic!("{error}\n{}", pods::report(env, namespace)));
        let log = || {
            let output = kubectl(env)
                .args(["logs", "-n", namespace, &pod.name_any()])
                .output()
                .unwrap();
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        eventually(
            "the handler finds the node in every policy's desired state",
            WAIT,
            || async {
                let found = log().matches("the node is still in the desired state").count();
                (found >= names.len()).then_some(())
            },
        )
        .await
        .unwrap_or_else(|error| panic!("{error}\n{}", log()));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log_text = log();
        assert!(
            !log_text.contains("reconcile: applying"),
            "a policy was applied again:\n{log_text}"
        );
        assert!(
            !log_text.contains("re-applying"),
            "a policy was applied again:\n{log_text}"
        );
        assert_eq!(
            active_connections(node),
            self.connections,
            "NetworkManager's connections changed"
        );
        assert_eq!(
            resource_versions(enactments, names).await,
            self.versions,
            "an enactment was rewritten"
        );
    }
}

async fn resource_versions(
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    names: &[String],
) -> Vec<String> {
    let mut versions = Vec::new();
    for name in names {
        versions.push(enactments.get(name).await.unwrap().resource_version().unwrap());
    }
    versions
}

async fn expect_available(policies: &Api<NodeNetworkConfigurationPolicy>, names: &[String]) {
    for name in names {
        let policy = policies.get(name).await.unwrap();
        let conditions = &policy.status.as_ref().unwrap().conditions;
        let available = conditions.iter().any(|c| c.type_ == "Available" && c.is_true());
        assert!(available, "{name} is not Available: {conditions:?}");
    }
}

/// Removes what the test made, also when it fails: the operator's operands go with the NMState.
struct Cleanup {
    env: LocalEnv,
    policies: Vec<String>,
    /// The test's namespace, also the label of its cluster-wide RBAC.
    namespace: String,
    node: SandboxNode,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // The node is shared with the other tests on real pods.
        if let Ok(mut nmcli) = self.node.command("nmcli") {
            let _ = nmcli.args(["connection", "delete", "brup0", "brup1"]).output();
        }
        as_olm::clean_up(&self.env, &self.namespace, &self.policies);
    }
}

#[tokio::test]
async fn from_upstream_then_to_the_next_version_no_policy_is_applied_again() {
    let env = pods_env().await.unwrap();
    let client = env.client().await.unwrap();
    expect_no_nmstate(&client).await;
    let namespace = create_namespace(&client, "upgrade").await.unwrap();
    let node_name = POD_NODES[0];
    let node = env.node(node_name).unwrap();
    let node_object = Api::<Node>::all(client.clone()).get(node_name).await.unwrap();
    let policies = [format!("{namespace}-beta"), format!("{namespace}-v1")];
    let _cleanup = Cleanup {
        env: env.clone(),
        policies: policies.to_vec(),
        namespace: namespace.clone(),
        node: node.clone(),
    };
    // Upstream's handler DaemonSet has the name this operator's takes over.
    let handler_name = "nmstate-handler";
    let substitutions = [
        ("NODE", node_name),
        ("NAMESPACE", namespace.as_str()),
        ("PREFIX-nmstate-handler", handler_name),
        ("PREFIX", namespace.as_str()),
    ];

    // Upstream's cluster: its CRDs (replacing whatever an earlier test installed), its objects
    // and statuses, and the bridges its handler configured on the node.
    kubectl_stdin(
        &env,
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "upstream",
            "--force-conflicts",
        ],
        &fixture("crds.yaml", &[]),
    );
    kubectl(&env)
        .args([
            "wait",
            "--for",
            "condition=Established",
            "crd",
            "--all",
            "--timeout",
            "30s",
        ])
        .output()
        .unwrap();
    let created = kubectl_stdin(&env, &["create"], &fixture("objects.yaml", &substitutions));
    assert!(
        created.contains("nmstate/v1beta1 deprecated, use nmstate/v1 instead"),
        "{created}"
    );
    for bridge in ["brup0", "brup1"] {
        let output = node
            .command("nmcli")
            .unwrap()
            .args([
                "connection",
                "add",
                "type",
                "bridge",
                "con-name",
                bridge,
                "ifname",
                bridge,
                "bridge.stp",
                "no",
                "ipv4.method",
                "disabled",
                "ipv6.method",
                "disabled",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let dynamic = |version: &str, kind: &str, plural: &str| {
        let resource = kube::api::ApiResource {
            group: "nmstate.io".into(),
            version: version.into(),
            api_version: format!("nmstate.io/{version}"),
            kind: kind.into(),
            plural: plural.into(),
        };
        Api::<DynamicObject>::all_with(client.clone(), &resource)
    };
    let raw_policies = dynamic(
        "v1",
        "NodeNetworkConfigurationPolicy",
        "nodenetworkconfigurationpolicies",
    );
    let raw_enactments = dynamic(
        "v1beta1",
        "NodeNetworkConfigurationEnactment",
        "nodenetworkconfigurationenactments",
    );
    let status_params = PatchParams::default();
    let mut enactment_names = Vec::new();
    for policy in &policies {
        raw_policies
            .patch_status(policy, &status_params, &Patch::Merge(&upstream_policy_status()))
            .await
            .unwrap();
        let stored = raw_policies.get(policy).await.unwrap();
        let (object, status) = upstream_enactment(&node_object, policy, &stored.data["spec"]["desiredState"]);
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        raw_enactments.create(&Default::default(), &object).await.unwrap();
        raw_enactments
            .patch_status(&object.name_any(), &status_params, &Patch::Merge(&status))
            .await
            .unwrap();
        enactment_names.push(object.name_any());
    }
    eventually("the upstream bridges are up", WAIT, || async {
        (active_connections(&node).lines().count() == 2).then_some(())
    })
    .await
    .unwrap();

    // This operator's bundle: CRDs upgraded in place; every object still served, in both
    // versions, with the deprecation warnings.
    let current = as_olm::current_release();
    apply_bundle_crds(&client, &current).await;
    install_crds(&client).await.unwrap(); // waits until they are established
    let beta = kubectl_stderr(
        &env,
        &[
            "get",
            "nodenetworkconfigurationpolicies.v1beta1.nmstate.io",
            &policies[0],
        ],
    );
    assert!(
        beta.contains("nmstate.io/v1beta1 NodeNetworkConfigurationPolicy is deprecated"),
        "{beta}"
    );
    let beta = kubectl_stderr(&env, &["get", "nmstates.v1beta1.nmstate.io", "nmstate"]);
    assert!(
        beta.contains("nmstate/v1beta1 deprecated, use nmstate/v1 instead"),
        "{beta}"
    );
    let typed_policies = Api::<NodeNetworkConfigurationPolicy>::all(client.clone());
    expect_available(&typed_policies, &policies).await;
    let csv = olm::csv(&current).unwrap();
    let enactments = Api::<NodeNetworkConfigurationEnactment>::all(client.clone());
    let untouched = Untouched::read(&node, &enactments, &enactment_names).await;
    let _current_images = ReleaseImages::tag(&env, &nmstate_packaging::images(&current.version)).unwrap();
    let operator = install_csv(&env, &csv, &namespace, &namespace).await;
    let handler_image = nmstate_packaging::image(nmstate_packaging::HANDLER_IMAGE, &current.version);
    let daemonset =
        wait_for_handler_image(&client, &namespace, handler_name, &handler_image, &operator).await;
    let managers: Vec<String> = daemonset
        .managed_fields()
        .iter()
        .filter_map(|f| f.manager.clone())
        .collect();
    assert!(managers.contains(&"nmstate-operator".to_string()), "{managers:?}");
    untouched
        .check_after_roll(
            &env,
            (&namespace, handler_name, &handler_image),
            &node,
            &enactments,
            &enactment_names,
        )
        .await;

    // The next version, through the bundle's upgrade edge.
    let next_release = as_olm::next_release(&current);
    let next = next_release.version.clone();
    let next_csv = olm::csv(&next_release).unwrap();
    let untouched = Untouched::read(&node, &enactments, &enactment_names).await;
    let _next_images = ReleaseImages::tag(&env, &nmstate_packaging::images(&next)).unwrap();
    apply_bundle_crds(&client, &next_release).await;
    drop(operator);
    let operator = install_csv(&env, &next_csv, &namespace, &namespace).await;
    let next_image = nmstate_packaging::image(nmstate_packaging::HANDLER_IMAGE, &next);
    wait_for_handler_image(&client, &namespace, handler_name, &next_image, &operator).await;
    untouched
        .check_after_roll(
            &env,
            (&namespace, handler_name, &next_image),
            &node,
            &enactments,
            &enactment_names,
        )
        .await;
    expect_available(&typed_policies, &policies).await;
    assert!(!operator.log().contains("forbidden"), "{}", operator.log());
}
